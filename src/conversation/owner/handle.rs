//! `OwnerHandle`: the cloneable address of the owner shards. It routes each request to the
//! shard of its conversation on this node, or, in a cluster, forwards it over the peer link to
//! the node that owns the conversation and relays the answer.

use super::{ChangeRequest, Changed, Request, SendRequest, Sent};
use crate::cluster::link::Links;
use crate::cluster::peer::PeerMsg;
use crate::cluster::placement::Placement;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{ConversationId, UserId, Watermarks};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The cloneable address of the owner shards: routes each request to its conversation's shard,
/// or, in a cluster, to the node that owns the conversation.
#[derive(Clone)]
pub struct OwnerHandle {
    pub(super) shards: Arc<[mpsc::Sender<Request>]>,
    pub(super) placement: Arc<Placement>,
    pub(super) peers: Option<Links<PeerMsg>>,
}

/// Where a request for a conversation goes.
enum Route {
    Local,
    Peer(String),
}

fn overloaded() -> Error {
    Error::new(ErrorCode::Unavailable, "the node is overloaded or shutting down; retry")
}

/// The shard owning a conversation: a stable hash of its id.
pub fn shard_of(conversation: ConversationId, shards: usize) -> usize {
    let b = conversation.as_bytes();
    // UUIDv7: the last 8 bytes are random.
    let tail = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    (tail % shards.max(1) as u64) as usize
}

impl OwnerHandle {
    fn shard(&self, conversation: ConversationId) -> &mpsc::Sender<Request> {
        &self.shards[shard_of(conversation, self.shards.len())]
    }

    fn route(&self, conversation: ConversationId) -> Result<Route> {
        if self.placement.is_local(conversation) {
            return Ok(Route::Local);
        }
        match (self.placement.owner_of(conversation), &self.peers) {
            (Some(node), Some(_)) => Ok(Route::Peer(node)),
            _ => Err(Error::new(ErrorCode::Unavailable, "the cluster view is not ready yet; retry")),
        }
    }

    /// Queues a send; the receiver yields `sent` once the message is durable (on this node's
    /// shard, or on the owner node's, the answer relayed).
    pub fn send(&self, request: SendRequest) -> Result<oneshot::Receiver<Result<Sent>>> {
        match self.route(request.conversation_id)? {
            Route::Local => self.send_local(request),
            Route::Peer(node) => {
                let message = PeerMsg::Send {
                    user: request.from.user_id,
                    device: request.from.device_id,
                    conversation: request.conversation_id,
                    client_msg_id: request.client_msg_id,
                    body: request.body,
                    attachments: request.attachments,
                };
                Ok(self.forward(node, message, |reply| match reply {
                    PeerMsg::Sent { conversation, client_msg_id, seq, message_id, ts } => {
                        Ok(Sent { conversation_id: conversation, client_msg_id, seq, message_id, ts })
                    }
                    other => Err(peer_failure(other)),
                }))
            }
        }
    }

    /// Queues a send on this node's shard (a peer forwarded it: never forwarded again).
    pub fn send_local(&self, request: SendRequest) -> Result<oneshot::Receiver<Result<Sent>>> {
        let (reply, rx) = oneshot::channel();
        let shard = self.shard(request.conversation_id);
        shard.try_send(Request::Send(request, reply)).map_err(|_| overloaded())?;
        Ok(rx)
    }

    /// Queues a receipt (`read` implies `delivered`).
    pub fn advance(
        &self,
        user: UserId,
        conversation_id: ConversationId,
        to: Watermarks,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        match self.route(conversation_id)? {
            Route::Local => self.advance_local(user, conversation_id, to),
            Route::Peer(node) => {
                let message = PeerMsg::Advance {
                    user,
                    conversation: conversation_id,
                    delivered: to.delivered_seq,
                    read: to.read_seq,
                };
                Ok(self.forward(node, message, |reply| match reply {
                    PeerMsg::Done => Ok(()),
                    other => Err(peer_failure(other)),
                }))
            }
        }
    }

    /// Queues a receipt on this node's shard (forwarded by a peer).
    pub fn advance_local(
        &self,
        user: UserId,
        conversation_id: ConversationId,
        to: Watermarks,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply, rx) = oneshot::channel();
        self.shard(conversation_id)
            .try_send(Request::Watermark { user, conversation_id, to, reply })
            .map_err(|_| overloaded())?;
        Ok(rx)
    }

    /// Queues a group change; the receiver yields once its system message is stored (on this
    /// node's shard, or on the owner node's, the answer relayed).
    pub fn change(&self, request: ChangeRequest) -> Result<oneshot::Receiver<Result<Changed>>> {
        match self.route(request.conversation_id)? {
            Route::Local => self.change_local(request),
            Route::Peer(node) => {
                let message = PeerMsg::Change {
                    user: request.from.user_id,
                    device: request.from.device_id,
                    conversation: request.conversation_id,
                    action: request.action,
                };
                Ok(self.forward(node, message, |reply| match reply {
                    PeerMsg::Changed { seq, message_id, ts } => Ok(Changed { seq, message_id, ts }),
                    other => Err(peer_failure(other)),
                }))
            }
        }
    }

    /// Queues a group change on this node's shard (forwarded by a peer).
    pub fn change_local(&self, request: ChangeRequest) -> Result<oneshot::Receiver<Result<Changed>>> {
        let (reply, rx) = oneshot::channel();
        self.shard(request.conversation_id)
            .try_send(Request::Change(request, reply))
            .map_err(|_| overloaded())?;
        Ok(rx)
    }

    /// Sends a request to the owner node and relays its answer.
    fn forward<T: Send + 'static>(
        &self,
        node: String,
        message: PeerMsg,
        answer: impl FnOnce(PeerMsg) -> Result<T> + Send + 'static,
    ) -> oneshot::Receiver<Result<T>> {
        let (reply, rx) = oneshot::channel();
        let links = self.peers.clone();
        tokio::spawn(async move {
            let result = match links {
                Some(links) => match links.call(&node, message).await {
                    Ok(response) => answer(response),
                    Err(e) => {
                        tracing::debug!(peer = %node, error = %e, "forwarding to the owner node failed");
                        Err(Error::new(
                            ErrorCode::Unavailable,
                            "the node owning this conversation cannot be reached; retry",
                        ))
                    }
                },
                None => Err(Error::internal("no peer link")),
            };
            let _ = reply.send(result);
        });
        rx
    }

    /// Resolves once everything queued before it, on every shard, has been processed.
    pub async fn flush(&self) {
        let waits = self.shards.iter().map(|shard| async move {
            let (reply, rx) = oneshot::channel();
            if shard.send(Request::Flush(reply)).await.is_ok() {
                let _ = rx.await;
            }
        });
        futures_util::future::join_all(waits).await;
    }
}

/// A peer's refusal (or an unexpected reply) as the client's error.
fn peer_failure(reply: PeerMsg) -> Error {
    match reply {
        PeerMsg::Failed { code, message } => Error::new(code, message),
        other => Error::internal(format!("unexpected peer reply {other:?}")),
    }
}
