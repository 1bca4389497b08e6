//! Presence port: `PresenceStore`, where the Registry mirrors which node holds each online user
//! and the heartbeats of users and nodes (the seeds' `user | node | heartbeat` table), and
//! `MemoryPresence`, its in-process backend for the single-node default.

use super::StoreResult;
use crate::model::{Millis, UserId};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// What the presence backend knows of one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRecord {
    /// The node holding the user's sessions while online.
    pub node: Option<String>,
    pub online: bool,
    /// When the user was last seen online (set when going offline; refreshed by heartbeats).
    pub last_seen: Option<Millis>,
}

#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// The user has a session on `node`.
    async fn set_online(&self, user: UserId, node: &str, at: Millis) -> StoreResult<()>;
    /// The user's last session on this node closed at `at`.
    async fn set_offline(&self, user: UserId, at: Millis) -> StoreResult<()>;
    /// Refreshes the node's liveness and the heartbeat of each online user it holds. A user
    /// whose node stops heartbeating counts as offline once `ttl_ms` has passed.
    async fn heartbeat(&self, node: &str, users: &[UserId], at: Millis, ttl_ms: u64) -> StoreResult<()>;
    /// The user's presence as of `now`; `None` if never seen.
    async fn get(&self, user: UserId, now: Millis) -> StoreResult<Option<PresenceRecord>>;
    /// Nodes whose heartbeat has not expired at `now`.
    async fn live_nodes(&self, now: Millis) -> StoreResult<Vec<String>>;
}

#[derive(Clone, Debug)]
struct Entry {
    node: Option<String>,
    online: bool,
    heartbeat_at: Millis,
    expires_at: Millis,
}

/// Presence in this process's memory: complete for a single node, lost on restart (users are
/// then shown offline with no last-seen until they connect again).
#[derive(Default)]
pub struct MemoryPresence {
    users: Mutex<HashMap<UserId, Entry>>,
    nodes: Mutex<HashMap<String, Millis>>,
}

/// How long an online mark lives without a heartbeat when first set.
const INITIAL_TTL_MS: Millis = 60_000;

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn set_online(&self, user: UserId, node: &str, at: Millis) -> StoreResult<()> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.insert(
            user,
            Entry {
                node: Some(node.to_owned()),
                online: true,
                heartbeat_at: at,
                expires_at: at + INITIAL_TTL_MS,
            },
        );
        Ok(())
    }

    async fn set_offline(&self, user: UserId, at: Millis) -> StoreResult<()> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.insert(user, Entry { node: None, online: false, heartbeat_at: at, expires_at: at });
        Ok(())
    }

    async fn heartbeat(&self, node: &str, online: &[UserId], at: Millis, ttl_ms: u64) -> StoreResult<()> {
        let expires_at = at + ttl_ms as Millis;
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_owned(), expires_at);
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for user in online {
            users.insert(
                *user,
                Entry { node: Some(node.to_owned()), online: true, heartbeat_at: at, expires_at },
            );
        }
        Ok(())
    }

    async fn get(&self, user: UserId, now: Millis) -> StoreResult<Option<PresenceRecord>> {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        Ok(users.get(&user).map(|e| {
            let online = e.online && e.expires_at > now;
            PresenceRecord {
                node: if online { e.node.clone() } else { None },
                online,
                last_seen: Some(e.heartbeat_at),
            }
        }))
    }

    async fn live_nodes(&self, now: Millis) -> StoreResult<Vec<String>> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<String> =
            nodes.iter().filter(|(_, exp)| **exp > now).map(|(n, _)| n.clone()).collect();
        live.sort();
        Ok(live)
    }
}
