//! Placement: which node owns each conversation. The owner is the live node with the highest
//! rendezvous hash of (conversation, node) — when a node leaves, only its conversations move —
//! over the view of live nodes that the membership loop keeps fresh. Also the node's lease:
//! whether its own membership was renewed recently enough for it to take conversations over.
//! In single-node mode this node owns everything and always holds the lease.

use crate::model::ConversationId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub struct Placement {
    me: String,
    clustered: bool,
    /// Live node ids, sorted (this node included while its membership is renewed).
    view: RwLock<Arc<[String]>>,
    /// When this node's membership was last renewed.
    renewed: Mutex<Option<Instant>>,
    /// How long after a renewal this node may still take conversations over.
    lease: Duration,
    /// Successful reads of the live nodes so far (a fresh view, even if unchanged).
    refreshes: AtomicU64,
}

impl Placement {
    /// This node alone: it owns every conversation.
    pub fn single(me: &str) -> Placement {
        Placement {
            me: me.to_owned(),
            clustered: false,
            view: RwLock::new(Arc::from(vec![me.to_owned()])),
            renewed: Mutex::new(None),
            lease: Duration::MAX,
            refreshes: AtomicU64::new(0),
        }
    }

    /// A cluster member whose lease lasts `lease` after each renewal. Owns nothing until the
    /// first view arrives.
    pub fn clustered(me: &str, lease: Duration) -> Placement {
        Placement {
            me: me.to_owned(),
            clustered: true,
            view: RwLock::new(Arc::from(Vec::<String>::new())),
            renewed: Mutex::new(None),
            lease,
            refreshes: AtomicU64::new(0),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// The node that owns the conversation in the current view (`None` before the first view).
    pub fn owner_of(&self, conversation: ConversationId) -> Option<String> {
        let view = self.view();
        rendezvous(conversation, &view).map(str::to_owned)
    }

    /// Whether this node owns the conversation in the current view.
    pub fn is_local(&self, conversation: ConversationId) -> bool {
        !self.clustered || rendezvous(conversation, &self.view()) == Some(self.me.as_str())
    }

    /// Whether this node may take conversations over now (its membership is fresh).
    pub fn lease_held(&self) -> bool {
        if !self.clustered {
            return true;
        }
        let renewed = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        renewed.is_some_and(|at| at.elapsed() < self.lease)
    }

    pub fn view(&self) -> Arc<[String]> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many fresh views have arrived (a conversation lost to a fence is claimed again only
    /// after a newer one).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Acquire)
    }

    /// Records a renewal of this node's membership.
    pub fn renewed(&self) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Installs a fresh view of the live nodes; answers whether it differs from the last one.
    pub fn update(&self, mut nodes: Vec<String>) -> bool {
        nodes.sort();
        nodes.dedup();
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        let changed = view.as_ref() != nodes.as_slice();
        if changed {
            *view = Arc::from(nodes);
        }
        self.refreshes.fetch_add(1, Ordering::AcqRel);
        changed
    }
}

/// The node with the highest hash of (conversation, node): highest random weight hashing.
pub fn rendezvous(conversation: ConversationId, nodes: &[String]) -> Option<&str> {
    nodes.iter().max_by_key(|node| (weight(conversation, node), node.as_str())).map(String::as_str)
}

/// A stable 64-bit hash (FNV-1a, then the splitmix64 finaliser): every node, whatever its
/// build, must compute the same owner.
fn weight(conversation: ConversationId, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in conversation.as_bytes().iter().chain([0xffu8].iter()).chain(node.as_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node{i}")).collect()
    }

    #[test]
    fn owners_spread_and_only_the_leaving_nodes_conversations_move() {
        let three = nodes(3);
        let two: Vec<String> = vec!["node1".into(), "node3".into()];
        let mut per_node = std::collections::HashMap::new();
        let mut moved = 0;
        for _ in 0..3000 {
            let c = ConversationId::generate();
            let before = rendezvous(c, &three).unwrap();
            *per_node.entry(before.to_owned()).or_insert(0) += 1;
            let after = rendezvous(c, &two).unwrap();
            if before != "node2" {
                assert_eq!(before, after, "a conversation of a staying node moved");
            } else {
                moved += 1;
            }
        }
        assert_eq!(per_node.len(), 3);
        assert!(per_node.values().all(|&n| n > 800), "{per_node:?}");
        assert_eq!(moved, per_node["node2"]);
    }

    #[test]
    fn a_clustered_node_owns_nothing_until_its_first_view_and_lease() {
        let p = Placement::clustered("node1", Duration::from_secs(3));
        let c = ConversationId::generate();
        assert_eq!(p.owner_of(c), None);
        assert!(!p.is_local(c));
        assert!(!p.lease_held());
        p.renewed();
        assert!(p.update(vec!["node1".into()]));
        assert!(!p.update(vec!["node1".into()]));
        assert!(p.is_local(c) && p.lease_held());
        assert_eq!(p.refreshes(), 2);
        assert!(Placement::single("x").is_local(c));
    }
}
