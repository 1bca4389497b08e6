//! `Node`: one running switchboard node — its stores, actors and services, created and wired
//! in one place (`Node::start`). The HTTP edge holds the node; each session gets only
//! `SessionDeps`, the parts it uses.

use crate::account::Accounts;
use crate::config::Config;
use crate::conversation::directory::Conversations;
use crate::conversation::history::HistoryReader;
use crate::conversation::owner::{Owner, OwnerHandle};
use crate::crypto::MasterKey;
use crate::delivery::registry::Drain;
use crate::delivery::{Registry, Router};
use crate::session::SessionDeps;
use crate::store::{MetaStore, StoreError, Stores};
use crate::telemetry::Metrics;
use actix::{Actor, Addr};
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
    draining: AtomicBool,
    /// The master key matched the store's check value (Cassandra checks in the background).
    key_checked: Arc<AtomicBool>,
}

/// Compares the key with the store's check value, recording it on first use. `Ok(false)`
/// while the store cannot answer yet.
async fn check_key(meta: &dyn MetaStore, key: &MasterKey, path: &Path) -> Result<bool, StartError> {
    match meta.init_meta(KEY_CHECK, &key.check_value()).await {
        Ok(stored) if stored == key.check_value() => Ok(true),
        Ok(_) => Err(StartError::KeyMismatch { path: path.display().to_string() }),
        Err(StoreError::Unavailable(_)) => Ok(false),
        Err(e) => Err(StartError::Store { dir: path.display().to_string(), source: e }),
    }
}

impl Node {
    /// Opens the stores, checks the master key against them, and starts the Registry, Router
    /// and owner shards on the current arbiter.
    pub async fn start(config: Config) -> Result<Arc<Node>, StartError> {
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(StartError::MasterKey)?;
        let stores = Stores::open(&config)
            .map_err(|source| StartError::Store { dir: data_dir.display().to_string(), source })?;
        let key_path = MasterKey::file(&data_dir);
        let loaded =
            MasterKey::load(&config.security.master_key, &data_dir).map_err(StartError::MasterKey)?;
        let key_checked = Arc::new(AtomicBool::new(false));
        let (master, generated) = match loaded {
            Some(key) => (key, false),
            None => {
                // A first start, unless the store already has a check value (the key was lost).
                match stores.meta.meta(KEY_CHECK).await {
                    Ok(Some(_)) => {
                        return Err(StartError::KeyMissing { path: key_path.display().to_string() });
                    }
                    Ok(None) | Err(StoreError::Unavailable(_)) => {}
                    Err(e) => {
                        return Err(StartError::Store { dir: data_dir.display().to_string(), source: e });
                    }
                }
                let key = MasterKey::generate();
                key.write_file(&data_dir).map_err(StartError::MasterKey)?;
                (key, true)
            }
        };
        // A key generated here that the store refuses means the real one was lost: remove ours.
        let verdict = move |result: Result<bool, StartError>, path: &Path| match result {
            Err(StartError::KeyMismatch { .. }) if generated => {
                let _ = std::fs::remove_file(path);
                Err(StartError::KeyMissing { path: path.display().to_string() })
            }
            other => other,
        };
        if verdict(check_key(stores.meta.as_ref(), &master, &key_path).await, &key_path)? {
            key_checked.store(true, Ordering::Relaxed);
        } else {
            // The store connects in the background (Cassandra): check once it answers; a
            // mismatch then stops the process, since nothing it stores would be readable.
            let (meta, key, flag, path) =
                (stores.meta.clone(), master.clone(), key_checked.clone(), key_path.clone());
            actix::spawn(async move {
                loop {
                    match verdict(check_key(meta.as_ref(), &key, &path).await, &path) {
                        Ok(true) => {
                            flag.store(true, Ordering::Relaxed);
                            return;
                        }
                        Ok(false) => actix::clock::sleep(Duration::from_millis(500)).await,
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
        let heartbeat = Duration::from_millis(config.websocket.heartbeat_ms);
        let registry =
            Registry::new(config.server.node_id.clone(), stores.presence.clone(), heartbeat).start();
        let router = Router::new(registry.clone()).start();
        let conversations = Arc::new(Conversations::new(stores.chat.clone(), master));
        let owner = Owner::start(
            stores.chat.clone(),
            conversations.clone(),
            router.clone(),
            metrics.clone(),
            config.storage.group_commit_max as usize,
            config.owner_shards(),
        );
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
        });
        Ok(Arc::new(Node {
            accounts,
            reader,
            conversations,
            owner,
            router,
            registry,
            metrics,
            sessions,
            stores,
            config: Arc::new(config),
            draining: AtomicBool::new(false),
            key_checked,
        }))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the master key has been checked against the store.
    pub fn key_checked(&self) -> bool {
        self.key_checked.load(Ordering::Relaxed)
    }

    /// Closes every session with 1001 and waits until every queued send has been stored or
    /// refused. New connections are refused from the first step on.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let closed = self.registry.send(Drain).await.unwrap_or(0);
        self.owner.flush().await;
        tracing::info!(sessions = closed, "drained: sessions closed, pending writes flushed");
    }
}
