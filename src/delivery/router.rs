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
use actix::{Actor, Addr, Context, Handler, Message};
use std::sync::Arc;

/// Deliver `event` to the connected devices of `audience`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub audience: Arc<[UserId]>,
    pub except: Audience,
    pub event: SessionEvent,
}

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
}

impl Handler<Publish> for Router {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        // Every user's node is this node in the single-node default.
        self.registry.do_send(Deliver { audience: msg.audience, except: msg.except, event: msg.event });
    }
}
