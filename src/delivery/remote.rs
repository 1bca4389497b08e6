//! Remote delivery: the part of the Router that hands events to other nodes — once per node
//! holding sessions of an event's audience (found by the `Locator`), never once per remote
//! session; the receiving node fans out locally. Events to one node travel in order on its
//! link. If the directory cannot say where users are, events go to every live node.

use super::event::{Audience, SessionEvent};
use super::router::Publish;
use crate::cluster::link::Links;
use crate::cluster::locator::Locator;
use crate::cluster::peer::{PeerMsg, WireEvent, WireExcept};
use crate::cluster::placement::Placement;
use crate::model::UserId;
use crate::telemetry::Metrics;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Clone)]
pub struct RemoteDelivery {
    pub links: Links<PeerMsg>,
    pub locator: Arc<Locator>,
    pub placement: Arc<Placement>,
    pub metrics: Arc<Metrics>,
}

impl RemoteDelivery {
    /// The events for each other node that holds sessions of their audiences, in order.
    async fn by_node(&self, events: &[Publish]) -> BTreeMap<String, Vec<WireEvent>> {
        let me = self.placement.me();
        let users: Vec<UserId> = events
            .iter()
            .flat_map(|e| e.audience.iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let located: Option<HashMap<UserId, Vec<String>>> =
            self.locator.nodes_of(&users).await.map(|nodes| users.iter().copied().zip(nodes).collect());
        let everyone: Vec<String> = self.placement.view().iter().filter(|n| *n != me).cloned().collect();
        let mut out: BTreeMap<String, Vec<WireEvent>> = BTreeMap::new();
        for event in events {
            let Some(wire) = to_wire(event) else { continue };
            let nodes: BTreeSet<&String> = match &located {
                Some(located) => event
                    .audience
                    .iter()
                    .flat_map(|u| located.get(u).into_iter().flatten())
                    .filter(|n| *n != me)
                    .collect(),
                None => everyone.iter().collect(),
            };
            for node in nodes {
                out.entry(node.clone()).or_default().push(wire.clone());
            }
        }
        out
    }

    /// Sends a batch of stored events, waiting for room in each link's queue (back-pressure
    /// reaches the owner), in order per node.
    pub async fn deliver(&self, events: &[Publish]) {
        for (node, batch) in self.by_node(events).await {
            Metrics::inc(&self.metrics.peer_deliveries_total);
            if let Err(e) = self.links.cast(&node, PeerMsg::Deliver(batch)).await {
                tracing::debug!(peer = %node, error = %e, "events not delivered to a node (its clients sync)");
            }
        }
    }

    /// Ephemeral events (typing): best effort, never waited for.
    pub async fn deliver_ephemeral(&self, events: &[Publish]) {
        for (node, batch) in self.by_node(events).await {
            let _ = self.links.try_cast(&node, PeerMsg::Deliver(batch));
        }
    }
}

fn to_wire(event: &Publish) -> Option<WireEvent> {
    let except = match event.except {
        Audience::All => WireExcept::All,
        Audience::AllButDevice(d) => WireExcept::AllButDevice(d),
        Audience::AllButUser(u) => WireExcept::AllButUser(u),
    };
    let (message, text) = match &event.event {
        SessionEvent::Message { conversation_id, seq, text } => {
            (Some((*conversation_id, *seq)), text.to_string())
        }
        SessionEvent::Frame(text) => (None, text.to_string()),
        // Closes are local (a logout closes that node's sessions).
        SessionEvent::Close { .. } => return None,
    };
    Some(WireEvent { audience: event.audience.to_vec(), except, message, text })
}

/// Events received from another node, for this node's sessions.
pub fn from_wire(events: Vec<WireEvent>) -> Vec<Publish> {
    events
        .into_iter()
        .map(|e| Publish {
            audience: e.audience.into(),
            except: match e.except {
                WireExcept::All => Audience::All,
                WireExcept::AllButDevice(d) => Audience::AllButDevice(d),
                WireExcept::AllButUser(u) => Audience::AllButUser(u),
            },
            event: match e.message {
                Some((conversation_id, seq)) => {
                    SessionEvent::Message { conversation_id, seq, text: e.text.into() }
                }
                None => SessionEvent::Frame(e.text.into()),
            },
        })
        .collect()
}
