//! actor Router: delivers a conversation event to every connected device of its audience. It
//! resolves where each user is connected through the Registry; in the single-node default
//! every session is local, and the cluster issue adds the hand-off to the peer link of the
//! node holding the rest.
//!
//! Ordering: the owner publishes each conversation's events in seq order, and the Router and
//! Registry mailboxes are FIFO, so every session receives them in seq order.

use super::registry::{Deliver, Registry};
use crate::delivery::{Audience, SessionEvent};
use crate::model::UserId;
use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use std::sync::Arc;

/// Deliver `event` to the connected devices of `audience`.
#[derive(Message)]
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
}

impl Router {
    pub fn new(registry: Addr<Registry>) -> Router {
        Router { registry }
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
        // Every user's node is this node in the single-node default.
        if self.registry.try_send(Deliver(vec![msg])).is_err() {
            tracing::debug!("registry busy: an ephemeral event was dropped");
        }
    }
}

impl Handler<PublishBatch> for Router {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: PublishBatch, _: &mut Context<Self>) -> Self::Result {
        // Every user's node is this node in the single-node default. The reply resolves once
        // the Registry has handed the batch to the sessions, in order.
        let delivered = self.registry.send(Deliver(msg.0));
        Box::pin(async move {
            let _ = delivered.await;
        })
    }
}
