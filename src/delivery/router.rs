//! actor Router: delivers a conversation event to every connected device of its audience:
//! this node's sessions through the Registry, and in a cluster each other node holding
//! sessions of the audience once, over the peer link (`remote`).
//!
//! Ordering: the owner publishes each conversation's events in seq order and awaits each
//! batch; the Registry mailbox and each peer link are FIFO, so every session receives them in
//! seq order.

use super::registry::{Deliver, Registry};
use super::remote::RemoteDelivery;
use crate::delivery::{Audience, SessionEvent};
use crate::model::UserId;
use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use std::sync::Arc;

/// Deliver `event` to the connected devices of `audience`.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Publish {
    pub audience: Arc<[UserId]>,
    pub except: Audience,
    pub event: SessionEvent,
}

/// The events of one group commit, in order. The sender awaits it: the Router's and the
/// Registry's mailboxes are bounded, so a flood waits at the owner instead of piling up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PublishBatch(pub Vec<Publish>);

/// Mailbox bound of the Router (batches, not single events).
const MAILBOX: usize = 1024;

pub struct Router {
    registry: Addr<Registry>,
    remote: Option<RemoteDelivery>,
}

impl Router {
    pub fn new(registry: Addr<Registry>, remote: Option<RemoteDelivery>) -> Router {
        Router { registry, remote }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Publish> for Router {
    type Result = ();

    /// Ephemeral events from sessions (typing): best effort, never waited for.
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        if let Some(remote) = self.remote.clone() {
            let event = msg.clone();
            actix::spawn(async move { remote.deliver_ephemeral(&[event]).await });
        }
        if self.registry.try_send(Deliver(vec![msg])).is_err() {
            tracing::debug!("registry busy: an ephemeral event was dropped");
        }
    }
}

impl Handler<PublishBatch> for Router {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: PublishBatch, _: &mut Context<Self>) -> Self::Result {
        // The reply resolves once the Registry has handed the batch to this node's sessions and
        // every other node concerned has it queued on its link, in order.
        let remote = self.remote.clone().map(|remote| (remote, msg.0.clone()));
        let delivered = self.registry.send(Deliver(msg.0));
        Box::pin(async move {
            let _ = delivered.await;
            if let Some((remote, events)) = remote {
                remote.deliver(&events).await;
            }
        })
    }
}
