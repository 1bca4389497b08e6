//! The membership loop: every `renew` it renews this node in the directory (a key with a TTL),
//! reads the live nodes, installs them as the placement view and as the link's peer set, and
//! clears the user marks of nodes that left (their sessions are gone). If the directory cannot
//! be reached the last view is kept: conversations this node holds stay writable (their epochs
//! fence them in the store), but after `lease` without a renewal it takes no new ones over.
//! When a renewal finds the membership had lapsed (this node was paused past its TTL, or Redis
//! lost its data), `on_lapse` runs: the node marks its connected users again.

use super::link::Links;
use super::peer::PeerMsg;
use super::placement::Placement;
use crate::model::now_millis;
use crate::store::presence::{ClusterDirectory, NodeInfo};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Membership {
    pub directory: Arc<dyn ClusterDirectory>,
    pub placement: Arc<Placement>,
    pub links: Links<PeerMsg>,
    pub me: NodeInfo,
    pub ttl: Duration,
    pub renew: Duration,
    /// Called when a renewal finds the membership had lapsed.
    pub on_lapse: Box<dyn Fn() + Send + Sync>,
}

impl Membership {
    /// One round: renew, read the view, apply it. Answers whether the view was read.
    pub async fn round(&self, known: &mut BTreeSet<String>) -> bool {
        match self.directory.renew_node(&self.me, self.ttl.as_millis() as u64).await {
            Ok(lapsed) => {
                self.placement.renewed();
                if lapsed {
                    tracing::info!("membership had lapsed; marking this node's users again");
                    (self.on_lapse)();
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew this node's membership"),
        }
        let nodes = match self.directory.live_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the live nodes; keeping the last view");
                return false;
            }
        };
        let ids: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let mut peers = HashMap::new();
        for node in nodes.iter().filter(|n| n.id != self.me.id) {
            match node.peer_addr.parse::<SocketAddr>() {
                Ok(addr) => {
                    peers.insert(node.id.clone(), addr);
                }
                Err(_) => {
                    tracing::warn!(node = %node.id, addr = %node.peer_addr, "bad peer address in the directory")
                }
            }
        }
        self.links.set_peers(peers);
        if self.placement.update(ids.iter().cloned().collect()) {
            tracing::info!(nodes = ?ids, "cluster view changed");
        }
        // Nodes that left: their sessions are gone. The first live node clears their marks
        // (idempotent, so a race between two nodes is harmless).
        let departed: Vec<String> = known.difference(&ids).cloned().collect();
        if ids.iter().next() == Some(&self.me.id) {
            for node in &departed {
                match self.directory.clear_node(node, now_millis()).await {
                    Ok(n) => tracing::info!(%node, users = n, "node left; cleared its sessions"),
                    Err(e) => tracing::warn!(%node, error = %e, "could not clear a departed node"),
                }
            }
        }
        *known = ids;
        true
    }

    /// Runs the loop until the task is dropped.
    pub async fn run(self) {
        let mut known = BTreeSet::new();
        let mut tick = tokio::time::interval(self.renew);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.round(&mut known).await;
        }
    }
}
