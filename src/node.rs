//! `Node`: one running switchboard node — its stores, actors and services, created and wired
//! in one place (`Node::start`), and shared with the HTTP edge and every Session.

use crate::account::Accounts;
use crate::config::Config;
use crate::conversation::directory::Conversations;
use crate::conversation::history::HistoryReader;
use crate::conversation::owner::{Owner, OwnerHandle};
use crate::crypto::MasterKey;
use crate::delivery::Router;
use crate::delivery::registry::{Drain, Registry};
use crate::store::Stores;
use crate::telemetry::Metrics;
use actix::{Actor, Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why a node could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("master key: {0}")]
    MasterKey(std::io::Error),
    #[error("cannot open the message store under {dir}: {source}")]
    Store { dir: String, source: crate::store::StoreError },
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
    draining: AtomicBool,
}

impl Node {
    /// Opens the stores and starts the Registry, Router and owner on the current arbiter.
    pub fn start(config: Config) -> Result<Arc<Node>, StartError> {
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(StartError::MasterKey)?;
        let master = MasterKey::load_or_create(&config.security.master_key, &data_dir)
            .map_err(StartError::MasterKey)?;
        let stores = Stores::open(&config)
            .map_err(|source| StartError::Store { dir: data_dir.display().to_string(), source })?;
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
        );
        Ok(Arc::new(Node {
            accounts: Accounts::new(stores.accounts.clone(), config.security.min_password_len as usize),
            reader: HistoryReader::new(stores.chat.clone(), conversations.clone()),
            conversations,
            owner,
            router,
            registry,
            metrics,
            stores,
            config: Arc::new(config),
            draining: AtomicBool::new(false),
        }))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
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
