//! What this node answers to its peers on the link: forwarded sends, receipts and group
//! changes go to this node's owner shards (never forwarded again: a shard that does not own the
//! conversation in its view refuses with a retryable error), and delivered events go to this
//! node's sessions through the Registry, in the order they arrived.

use super::owner::{ChangeRequest, OwnerHandle, SendRequest};
use crate::account::Identity;
use crate::cluster::link::Handler;
use crate::cluster::peer::PeerMsg;
use crate::delivery::registry::{Deliver, Registry};
use crate::delivery::remote::from_wire;
use crate::error::{Error, ErrorCode};
use crate::model::Watermarks;
use crate::telemetry::Metrics;
use actix::Addr;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

pub struct PeerService {
    /// Set once the owner shards run (they need the link, which needs this service).
    owners: OnceLock<OwnerHandle>,
    registry: Addr<Registry>,
    metrics: Arc<Metrics>,
}

impl PeerService {
    pub fn new(registry: Addr<Registry>, metrics: Arc<Metrics>) -> PeerService {
        PeerService { owners: OnceLock::new(), registry, metrics }
    }

    pub fn set_owners(&self, owners: OwnerHandle) {
        let _ = self.owners.set(owners);
    }
}

fn failed(e: Error) -> PeerMsg {
    PeerMsg::Failed { code: e.code, message: e.message }
}

fn dropped() -> PeerMsg {
    failed(Error::new(ErrorCode::Unavailable, "the owner shard stopped; retry"))
}

impl Handler<PeerMsg> for PeerService {
    fn request(&self, peer: &str, body: PeerMsg) -> Pin<Box<dyn Future<Output = PeerMsg> + Send>> {
        Metrics::inc(&self.metrics.peer_requests_total);
        let Some(owners) = self.owners.get() else {
            return Box::pin(async {
                failed(Error::new(ErrorCode::Unavailable, "the node is starting; retry"))
            });
        };
        match body {
            PeerMsg::Send { user, device, conversation, client_msg_id, body, attachments } => {
                let request = SendRequest {
                    from: Identity { user_id: user, device_id: device },
                    conversation_id: conversation,
                    client_msg_id,
                    body,
                    attachments,
                };
                let queued = owners.send_local(request);
                Box::pin(async move {
                    match queued {
                        Err(e) => failed(e),
                        Ok(rx) => match rx.await {
                            Ok(Ok(sent)) => PeerMsg::Sent {
                                conversation: sent.conversation_id,
                                client_msg_id: sent.client_msg_id,
                                seq: sent.seq,
                                message_id: sent.message_id,
                                ts: sent.ts,
                            },
                            Ok(Err(e)) => failed(e),
                            Err(_) => dropped(),
                        },
                    }
                })
            }
            PeerMsg::Advance { user, conversation, delivered, read } => {
                let to = Watermarks { delivered_seq: delivered, read_seq: read };
                let queued = owners.advance_local(user, conversation, to);
                Box::pin(async move {
                    match queued {
                        Err(e) => failed(e),
                        Ok(rx) => match rx.await {
                            Ok(Ok(())) => PeerMsg::Done,
                            Ok(Err(e)) => failed(e),
                            Err(_) => dropped(),
                        },
                    }
                })
            }
            PeerMsg::Change { user, device, conversation, action } => {
                let request = ChangeRequest {
                    from: Identity { user_id: user, device_id: device },
                    conversation_id: conversation,
                    action,
                };
                let queued = owners.change_local(request);
                Box::pin(async move {
                    match queued {
                        Err(e) => failed(e),
                        Ok(rx) => match rx.await {
                            Ok(Ok(c)) => PeerMsg::Changed { seq: c.seq, message_id: c.message_id, ts: c.ts },
                            Ok(Err(e)) => failed(e),
                            Err(_) => dropped(),
                        },
                    }
                })
            }
            other => {
                tracing::warn!(%peer, message = ?other, "a peer sent a reply as a request");
                Box::pin(async { failed(Error::new(ErrorCode::BadRequest, "not a request")) })
            }
        }
    }

    fn cast(&self, peer: &str, body: PeerMsg) {
        match body {
            PeerMsg::Deliver(events) => self.registry.do_send(Deliver(from_wire(events))),
            other => tracing::warn!(%peer, message = ?other, "unexpected one-way message from a peer"),
        }
    }
}
