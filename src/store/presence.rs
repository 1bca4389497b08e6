//! Presence and cluster directory port: `ClusterDirectory` — which nodes are alive (membership
//! with a TTL), which nodes hold sessions of each user (the seeds' `user | node | heartbeat`
//! table), last seen, and the cluster-wide event stream of presence and location changes —
//! and `MemoryDirectory`, its in-process backend for the single-node default. The Redis backend
//! is `store::redis_directory`.

use super::StoreResult;
use crate::model::{Millis, UserId};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::broadcast;

/// A live node and the address its peers dial (the inter-node link).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub peer_addr: String,
}

/// What the directory knows of one user's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRecord {
    pub online: bool,
    /// When the user's last session anywhere closed (set when going offline).
    pub last_seen: Option<Millis>,
}

/// Published to every node when something changes anywhere in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// The user's first session anywhere opened, or the last one anywhere closed.
    Presence { user: UserId, online: bool, last_seen: Option<Millis> },
    /// A node gained its first session of the user (`present`) or lost its last one.
    Located { user: UserId, node: String, present: bool },
    /// The event stream was interrupted: caches built from events must be dropped.
    Resync,
}

#[async_trait]
pub trait ClusterDirectory: Send + Sync + 'static {
    /// Renews this node's membership for `ttl_ms`. `Ok` only if the backend confirmed it;
    /// `Ok(true)` if the membership had lapsed (expired, or lost with the backend's data): other
    /// nodes may have cleared this node's user marks, so the caller marks its users again.
    async fn renew_node(&self, node: &NodeInfo, ttl_ms: u64) -> StoreResult<bool>;
    /// Nodes whose membership has not expired, sorted by id.
    async fn live_nodes(&self) -> StoreResult<Vec<NodeInfo>>;
    /// Graceful leave: drops the membership and every user mark of the node.
    async fn leave(&self, node: &str, at: Millis) -> StoreResult<()>;
    /// The user's first session on `node` opened (one round trip).
    async fn user_connected(&self, user: UserId, node: &str, at: Millis) -> StoreResult<()>;
    /// The user's last session on `node` closed; if no node holds them any more, `at` becomes
    /// their last seen (one round trip).
    async fn user_disconnected(&self, user: UserId, node: &str, at: Millis) -> StoreResult<()>;
    /// For each user, the live nodes holding sessions of them (one round trip for the slice).
    async fn nodes_of(&self, users: &[UserId]) -> StoreResult<Vec<Vec<String>>>;
    /// Online iff a live node holds the user; `None` if never seen.
    async fn presence(&self, user: UserId) -> StoreResult<Option<PresenceRecord>>;
    /// Removes every user mark of a node whose membership has expired; idempotent. A live
    /// node's marks are current and stay (it may have renewed and marked its users again since
    /// the caller saw it gone). Returns how many users it cleared.
    async fn clear_node(&self, node: &str, at: Millis) -> StoreResult<usize>;
    /// The cluster's events, this node's own included.
    fn events(&self) -> broadcast::Receiver<ClusterEvent>;
    /// Whether the backend answers now.
    async fn ping(&self) -> StoreResult<()>;
}

/// The directory in this process's memory: complete for a single node, empty after a restart
/// (users are shown offline with no last-seen until they connect again).
pub struct MemoryDirectory {
    state: Mutex<MemoryState>,
    events: broadcast::Sender<ClusterEvent>,
}

#[derive(Default)]
struct MemoryState {
    nodes: BTreeMap<String, (String, Instant)>,
    users: HashMap<UserId, BTreeSet<String>>,
    last_seen: HashMap<UserId, Millis>,
}

impl Default for MemoryDirectory {
    fn default() -> Self {
        MemoryDirectory { state: Mutex::default(), events: broadcast::channel(1024).0 }
    }
}

impl MemoryDirectory {
    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, event: ClusterEvent) {
        // No receiver is fine.
        let _ = self.events.send(event);
    }

    /// Removes `node` from the user's nodes; publishes what changed.
    fn unmark(&self, state: &mut MemoryState, user: UserId, node: &str, at: Millis) {
        let Some(nodes) = state.users.get_mut(&user) else { return };
        if !nodes.remove(node) {
            return;
        }
        self.publish(ClusterEvent::Located { user, node: node.to_owned(), present: false });
        if nodes.is_empty() {
            state.users.remove(&user);
            state.last_seen.insert(user, at);
            self.publish(ClusterEvent::Presence { user, online: false, last_seen: Some(at) });
        }
    }

    fn live(state: &MemoryState, node: &str) -> bool {
        state.nodes.get(node).is_none_or(|(_, expires)| *expires > Instant::now())
    }
}

#[async_trait]
impl ClusterDirectory for MemoryDirectory {
    async fn renew_node(&self, node: &NodeInfo, ttl_ms: u64) -> StoreResult<bool> {
        let now = Instant::now();
        let expires = now + std::time::Duration::from_millis(ttl_ms);
        let before = self.state().nodes.insert(node.id.clone(), (node.peer_addr.clone(), expires));
        Ok(before.is_none_or(|(_, expired)| expired <= now))
    }

    async fn live_nodes(&self) -> StoreResult<Vec<NodeInfo>> {
        let now = Instant::now();
        Ok(self
            .state()
            .nodes
            .iter()
            .filter(|(_, (_, expires))| *expires > now)
            .map(|(id, (addr, _))| NodeInfo { id: id.clone(), peer_addr: addr.clone() })
            .collect())
    }

    async fn leave(&self, node: &str, at: Millis) -> StoreResult<()> {
        self.state().nodes.remove(node);
        self.clear_node(node, at).await?;
        Ok(())
    }

    async fn user_connected(&self, user: UserId, node: &str, _at: Millis) -> StoreResult<()> {
        let mut state = self.state();
        let nodes = state.users.entry(user).or_default();
        let first = nodes.is_empty();
        if nodes.insert(node.to_owned()) {
            self.publish(ClusterEvent::Located { user, node: node.to_owned(), present: true });
        }
        if first {
            self.publish(ClusterEvent::Presence { user, online: true, last_seen: None });
        }
        Ok(())
    }

    async fn user_disconnected(&self, user: UserId, node: &str, at: Millis) -> StoreResult<()> {
        let mut state = self.state();
        self.unmark(&mut state, user, node, at);
        Ok(())
    }

    async fn nodes_of(&self, users: &[UserId]) -> StoreResult<Vec<Vec<String>>> {
        let state = self.state();
        Ok(users
            .iter()
            .map(|u| {
                state
                    .users
                    .get(u)
                    .map(|nodes| nodes.iter().filter(|n| Self::live(&state, n)).cloned().collect())
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn presence(&self, user: UserId) -> StoreResult<Option<PresenceRecord>> {
        let state = self.state();
        let online = state.users.get(&user).is_some_and(|nodes| nodes.iter().any(|n| Self::live(&state, n)));
        let last_seen = state.last_seen.get(&user).copied();
        Ok((online || last_seen.is_some()).then_some(PresenceRecord { online, last_seen }))
    }

    async fn clear_node(&self, node: &str, at: Millis) -> StoreResult<usize> {
        let mut state = self.state();
        if state.nodes.get(node).is_some_and(|(_, expires)| *expires > Instant::now()) {
            return Ok(0);
        }
        let users: Vec<UserId> =
            state.users.iter().filter(|(_, nodes)| nodes.contains(node)).map(|(u, _)| *u).collect();
        for user in &users {
            self.unmark(&mut state, *user, node, at);
        }
        Ok(users.len())
    }

    fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
