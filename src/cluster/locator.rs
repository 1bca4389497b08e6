//! Locator: which nodes hold sessions of a user, for delivering an event once per node. A
//! bounded cache in front of `ClusterDirectory::nodes_of`, kept current by the directory's
//! `Located` events and dropped whole on `Resync`; entries also expire, so a lost event costs
//! at most `TTL` of stale routing (and a session that misses a live event fills the gap from
//! the store at the next one, or at its next sync).

use crate::model::UserId;
use crate::store::presence::{ClusterDirectory, ClusterEvent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a cached location is trusted without an event.
const TTL: Duration = Duration::from_secs(10);
/// Users cached before the cache starts over.
const CAPACITY: usize = 200_000;

pub struct Locator {
    directory: Arc<dyn ClusterDirectory>,
    cache: Mutex<HashMap<UserId, (Vec<String>, Instant)>>,
}

impl Locator {
    pub fn new(directory: Arc<dyn ClusterDirectory>) -> Locator {
        Locator { directory, cache: Mutex::new(HashMap::new()) }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (Vec<String>, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one directory event to the cache.
    pub fn apply(&self, event: &ClusterEvent) {
        let mut cache = self.cache();
        match event {
            ClusterEvent::Located { user, node, present } => {
                if let Some((nodes, _)) = cache.get_mut(user) {
                    nodes.retain(|n| n != node);
                    if *present {
                        nodes.push(node.clone());
                    }
                }
            }
            ClusterEvent::Resync => cache.clear(),
            ClusterEvent::Presence { .. } => {}
        }
    }

    /// The nodes holding sessions of each user; `None` if the directory cannot answer (the
    /// caller then sends to every live node).
    pub async fn nodes_of(&self, users: &[UserId]) -> Option<Vec<Vec<String>>> {
        let mut out: Vec<Option<Vec<String>>> = Vec::with_capacity(users.len());
        let mut missing = Vec::new();
        {
            let cache = self.cache();
            for user in users {
                match cache.get(user).filter(|(_, at)| at.elapsed() < TTL) {
                    Some((nodes, _)) => out.push(Some(nodes.clone())),
                    None => {
                        missing.push(*user);
                        out.push(None);
                    }
                }
            }
        }
        if !missing.is_empty() {
            let found = self.directory.nodes_of(&missing).await.ok()?;
            let mut cache = self.cache();
            if cache.len() + found.len() > CAPACITY {
                cache.clear();
            }
            let mut found = missing.iter().zip(found);
            for slot in out.iter_mut().filter(|s| s.is_none()) {
                if let Some((user, nodes)) = found.next() {
                    cache.insert(*user, (nodes.clone(), Instant::now()));
                    *slot = Some(nodes);
                }
            }
        }
        Some(out.into_iter().map(Option::unwrap_or_default).collect())
    }
}
