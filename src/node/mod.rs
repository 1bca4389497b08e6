//! `Node`: one running switchboard node — its stores, actors and services, created and wired
//! in one place (`Node::start`). The HTTP edge holds the node; each session gets only
//! `SessionDeps`, the parts it uses. The Registry, Router and owner shards run on the HTTP
//! workers, beside the sessions (`on_workers`).

mod on_workers;
pub use on_workers::OnWorkers;

use crate::account::Accounts;
use crate::attachment::Attachments;
use crate::cluster::link::{LinkConfig, Links};
use crate::cluster::locator::Locator;
use crate::cluster::membership::Membership;
use crate::cluster::peer::PeerMsg;
use crate::cluster::placement::Placement;
use crate::config::Config;
use crate::conversation::directory::Conversations;
use crate::conversation::history::HistoryReader;
use crate::conversation::owner::{Owner, OwnerCluster, OwnerHandle, OwnerSettings};
use crate::conversation::peer_service::PeerService;
use crate::crypto::MasterKey;
use crate::delivery::registry::{Drain, PresenceChanged, PresenceView, Remark};
use crate::delivery::remote::RemoteDelivery;
use crate::delivery::{Registry, Router};
use crate::model::now_millis;
use crate::session::SessionDeps;
use crate::store::presence::{ClusterDirectory, ClusterEvent, NodeInfo};
use crate::store::redis_directory::RedisDirectory;
use crate::store::{MetaStore, StoreError, Stores};
use crate::telemetry::Metrics;
use actix::Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the master key's check value is kept (`MetaStore`).
const KEY_CHECK: &str = "master_key_check";

/// Why a node could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("master key: {0}")]
    MasterKey(std::io::Error),
    #[error("cannot open the message store under {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error(
        "master key missing: this store holds data encrypted with a master key, but {path} does not exist \
         and security.master_key is empty. Restore master.key from your backup into the data dir \
         (or set security.master_key / SWITCHBOARD_MASTER_KEY); a new key would make every stored \
         conversation unreadable, so none is generated"
    )]
    KeyMissing { path: String },
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("attachment storage ({backend}): {source}")]
    Blob { backend: String, source: crate::store::blob::BlobError },
    #[error(
        "wrong master key: the configured key (security.master_key or {path}) is not the key this store \
         was written with (its check value differs). Restore the original master.key or \
         security.master_key from your backup"
    )]
    KeyMismatch { path: String },
}

pub struct Node {
    pub config: Arc<Config>,
    pub stores: Stores,
    pub accounts: Accounts,
    pub conversations: Arc<Conversations>,
    pub reader: HistoryReader,
    pub owner: OwnerHandle,
    pub router: Addr<Router>,
    pub registry: Addr<Registry>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<SessionDeps>,
    pub attachments: Arc<Attachments>,
    pub placement: Arc<Placement>,
    /// The inter-node link (cluster mode).
    pub peers: Option<Links<PeerMsg>>,
    /// The Registry, Router and owner shards until the HTTP workers start them.
    pub on_workers: OnWorkers,
    draining: AtomicBool,
}

/// Settles the master key against the store: `Ok(Some(key))` once checked (generating and
/// recording one on a first start), `Ok(None)` while the store cannot answer yet, an error when
/// the key is missing or different. A key is generated only when the store says it has no
/// check value, so a node never encrypts with a key the data was not written with.
async fn settle_key(
    meta: &dyn MetaStore,
    loaded: Option<&MasterKey>,
    data_dir: &Path,
) -> Result<Option<MasterKey>, StartError> {
    let path = MasterKey::file(data_dir);
    let store_error = |e| StartError::Store { dir: data_dir.display().to_string(), source: e };
    let key = match loaded {
        Some(key) => key.clone(),
        None => match meta.meta(KEY_CHECK).await {
            Ok(Some(_)) => return Err(StartError::KeyMissing { path: path.display().to_string() }),
            Ok(None) => {
                let key = MasterKey::generate();
                key.write_file(data_dir).map_err(StartError::MasterKey)?;
                key
            }
            Err(StoreError::Unavailable(_)) => return Ok(None),
            Err(e) => return Err(store_error(e)),
        },
    };
    match meta.init_meta(KEY_CHECK, &key.check_value()).await {
        Ok(stored) if stored == key.check_value() => Ok(Some(key)),
        Ok(_) if loaded.is_none() => {
            // Another node recorded a different key meanwhile: ours protects nothing.
            let _ = std::fs::remove_file(&path);
            Err(StartError::KeyMissing { path: path.display().to_string() })
        }
        Ok(_) => Err(StartError::KeyMismatch { path: path.display().to_string() }),
        Err(StoreError::Unavailable(_)) => Ok(None),
        Err(e) => Err(store_error(e)),
    }
}

impl Node {
    /// Opens the stores and checks the master key against them. The Registry, Router and
    /// owner shards take requests at once and run once the HTTP workers adopt them
    /// (`on_workers`).
    pub async fn start(config: Config) -> Result<Arc<Node>, StartError> {
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(StartError::MasterKey)?;
        let stores = Stores::open(&config)
            .map_err(|source| StartError::Store { dir: data_dir.display().to_string(), source })?;
        let loaded =
            MasterKey::load(&config.security.master_key, &data_dir).map_err(StartError::MasterKey)?;
        let settled = settle_key(stores.meta.as_ref(), loaded.as_ref(), &data_dir).await?;
        let pending = settled.is_none();
        let conversations = Arc::new(Conversations::new(stores.chat.clone(), settled));
        conversations.set_link_ttl(config.attachments.link_ttl_s);
        let blob = crate::store::blob::open(&config).map_err(|source| StartError::Blob {
            backend: config.attachments.blob_backend.clone(),
            source,
        })?;
        let attachments = Arc::new(Attachments::new(
            blob,
            conversations.clone(),
            stores.chat.clone(),
            config.attachments.clone(),
        ));
        attachments.start_sweeper();
        if pending {
            // The store connects in the background (Cassandra): settle the key once it answers.
            // Until then nothing is sealed or opened (`unavailable`), and a mismatch stops the
            // process, since nothing it stored would be readable.
            let (meta, directory, dir) = (stores.meta.clone(), conversations.clone(), data_dir.clone());
            actix::spawn(async move {
                loop {
                    match settle_key(meta.as_ref(), loaded.as_ref(), &dir).await {
                        Ok(Some(key)) => {
                            directory.set_master(key);
                            return;
                        }
                        Ok(None) => actix::clock::sleep(Duration::from_millis(500)).await,
                        Err(e) => {
                            tracing::error!("{e}");
                            #[allow(clippy::print_stderr)]
                            {
                                eprintln!("switchboard: {e}");
                            }
                            std::process::exit(2);
                        }
                    }
                }
            });
        }
        let metrics = Arc::new(Metrics::default());
        let mut stores = stores;
        let node_id = config.server.node_id.clone();
        let clustered = config.cluster.cluster_enabled;
        if config.storage.presence_backend == "redis" {
            let directory = RedisDirectory::connect(&config.cluster.redis_url, &config.cluster.redis_prefix)
                .await
                .map_err(|e| StartError::Cluster(format!("redis at {}: {e}", config.cluster.redis_url)))?;
            stores.presence = Arc::new(directory);
        }
        let directory = stores.presence.clone();
        // Marks of this node's previous run are stale (its membership may not have expired yet
        // after a quick restart): leave, clearing them, before any session connects.
        if let Err(e) = directory.leave(&node_id, now_millis()).await {
            tracing::warn!(error = %e, "could not clear this node's sessions of a previous run");
        }
        let (registry, registry_mailbox) = on_workers::mailbox::<Registry>();
        let registry_actor = Registry::new(node_id.clone(), directory.clone(), clustered);
        let locator = Arc::new(Locator::new(directory.clone()));
        Node::forward_directory_events(directory.as_ref(), registry.clone(), locator.clone());
        let service = Arc::new(PeerService::new(registry.clone(), metrics.clone()));
        let (placement, peers) = if clustered {
            let c = &config.cluster;
            let ttl = Duration::from_millis(c.membership_ttl_ms);
            // Take no conversation over once 3/5 of the TTL passed without a renewal: by the
            // time others see this node expire, it has stopped claiming.
            let placement = Arc::new(Placement::clustered(&node_id, ttl * 3 / 5));
            let listen = c.peer_addr.parse().map_err(|e| StartError::Cluster(format!("peer_addr: {e}")))?;
            let links = Links::start(
                LinkConfig {
                    node_id: node_id.clone(),
                    secret: c.cluster_secret.as_bytes().to_vec(),
                    listen,
                    queue_frames: 4096,
                    heartbeat: Duration::from_millis(1_000),
                    dead_after: Duration::from_millis(5_000),
                    call_timeout: Duration::from_millis(c.peer_timeout_ms),
                    handshake_timeout: Duration::from_secs(5),
                },
                service.clone(),
            )
            .await
            .map_err(|e| StartError::Cluster(format!("cannot listen for peers on {listen}: {e}")))?;
            let advertise = if c.peer_advertise.is_empty() {
                links.local_addr().to_string()
            } else {
                c.peer_advertise.clone()
            };
            let membership = Membership {
                directory: directory.clone(),
                placement: placement.clone(),
                links: links.clone(),
                me: NodeInfo { id: node_id.clone(), peer_addr: advertise },
                ttl,
                renew: Duration::from_millis(c.membership_renew_ms),
                on_lapse: {
                    let registry = registry.clone();
                    Box::new(move || registry.do_send(Remark))
                },
            };
            // The first round before serving, so a healthy cluster is usable at once.
            membership.round(&mut Default::default()).await;
            actix::spawn(membership.run());
            (placement, Some(links))
        } else {
            (Arc::new(Placement::single(&node_id)), None)
        };
        let remote = peers.clone().map(|links| RemoteDelivery {
            links,
            locator: locator.clone(),
            placement: placement.clone(),
            metrics: metrics.clone(),
        });
        let (router, router_mailbox) = on_workers::mailbox::<Router>();
        let router_actor = Router::new(registry.clone(), remote);
        let (owner, shards) = Owner::prepare(
            stores.chat.clone(),
            conversations.clone(),
            router.clone(),
            metrics.clone(),
            OwnerSettings::from_config(&config),
            config.owner_shards(),
            OwnerCluster { placement: placement.clone(), peers: peers.clone() },
        );
        service.set_owners(owner.clone());
        let on_workers =
            OnWorkers::new((registry_mailbox, registry_actor), (router_mailbox, router_actor), shards);
        let accounts = Accounts::from_config(stores.accounts.clone(), &config.security);
        let reader = HistoryReader::new(stores.chat.clone(), conversations.clone());
        let sessions = Arc::new(SessionDeps {
            node_id: config.server.node_id.clone(),
            websocket: config.websocket.clone(),
            limits: config.limits.clone(),
            accounts: accounts.clone(),
            owners: owner.clone(),
            history: reader.clone(),
            directory: conversations.clone(),
            registry: registry.clone(),
            router: router.clone(),
            metrics: metrics.clone(),
            attachments: attachments.clone(),
        });
        Ok(Arc::new(Node {
            attachments,
            accounts,
            reader,
            conversations,
            owner,
            router,
            registry,
            metrics,
            sessions,
            stores,
            placement,
            peers,
            on_workers,
            config: Arc::new(config),
            draining: AtomicBool::new(false),
        }))
    }

    /// Feeds the directory's cluster-wide events to the Registry (presence pushes) and the
    /// Locator (where users are).
    fn forward_directory_events(
        directory: &dyn ClusterDirectory,
        registry: Addr<Registry>,
        locator: Arc<Locator>,
    ) {
        let mut events = directory.events();
        actix::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(event) => {
                        locator.apply(&event);
                        if let ClusterEvent::Presence { user, online, last_seen } = event {
                            registry.do_send(PresenceChanged(PresenceView {
                                user_id: user,
                                online,
                                last_seen,
                            }));
                        }
                    }
                    Err(RecvError::Lagged(_)) => locator.apply(&ClusterEvent::Resync),
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// Whether this node can route: in a cluster, it must have seen the live nodes once. (Not
    /// the lease: while Redis is down every node keeps its last view and keeps serving, so a
    /// Redis outage does not empty the load balancer.)
    pub fn cluster_ready(&self) -> bool {
        !self.placement.view().is_empty()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the master key has been checked against the store.
    pub fn key_checked(&self) -> bool {
        self.conversations.has_master()
    }

    /// Closes every session with 1001 and waits until every queued send has been stored or
    /// refused. New connections are refused from the first step on.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let closed = self.registry.send(Drain).await.unwrap_or(0);
        self.owner.flush().await;
        if self.placement.is_clustered() {
            // Leave at once, so the others take this node's conversations over without waiting
            // for its membership to expire.
            if let Err(e) = self.stores.presence.leave(self.placement.me(), now_millis()).await {
                tracing::warn!(error = %e, "could not leave the cluster cleanly (membership expires)");
            }
        }
        tracing::info!(sessions = closed, "drained: sessions closed, pending writes flushed");
    }
}
