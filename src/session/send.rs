//! A client's `send`: checked (size, client id), its attachments bound to the message when it
//! names any, handed to the conversation's owner shard, answered with `sent` once stored.

use super::{CLIENT_MSG_ID_MAX, Session};
use crate::conversation::owner::SendRequest;
use crate::error::{Error, ErrorCode};
use crate::protocol::ServerFrame;
use actix::prelude::*;

impl Session {
    pub(super) fn on_send(&mut self, id: Option<String>, send: SendRequest, ctx: &mut Context<Self>) {
        let limit = self.deps.limits.max_body_bytes as usize;
        let invalid = if send.body.len() > limit {
            Some(Error::new(
                ErrorCode::TooLarge,
                format!("body is {} bytes; the limit is {limit}", send.body.len()),
            ))
        } else if send.client_msg_id.is_empty() || send.client_msg_id.len() > CLIENT_MSG_ID_MAX {
            Some(Error::new(
                ErrorCode::BadFrame,
                format!("client_msg_id must be 1-{CLIENT_MSG_ID_MAX} bytes"),
            ))
        } else {
            None
        };
        if let Some(e) = invalid {
            self.push_error(id, &e, ctx);
            return;
        }
        if send.attachments.is_empty() {
            return self.dispatch_send(id, send, ctx);
        }
        // Binding the attachments to this message asks the blob store; the session handles
        // nothing else meanwhile, so its sends reach the owner in the order they came.
        let attachments = self.deps.attachments.clone();
        let fut = async move {
            let plain = attachments
                .claim(send.from.user_id, send.conversation_id, &send.client_msg_id, &send.attachments)
                .await?;
            Ok::<_, Error>(SendRequest { attachments: plain, ..send })
        };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(send) => act.dispatch_send(id, send, ctx),
            Err(e) => act.push_error(id, &e, ctx),
        }));
    }

    /// Hands a checked send to its owner shard and answers `sent` once it is stored.
    fn dispatch_send(&mut self, id: Option<String>, send: SendRequest, ctx: &mut Context<Self>) {
        let rx = match self.deps.owners.send(send) {
            Ok(rx) => rx,
            Err(e) => {
                self.push_error(id, &e, ctx);
                return;
            }
        };
        ctx.spawn(rx.into_actor(self).map(move |res, act, ctx| {
            match res.unwrap_or_else(|_| Err(Error::new(ErrorCode::Unavailable, "the owner stopped; retry")))
            {
                Ok(sent) => {
                    act.tracker.borrow_mut().sent(sent.conversation_id, sent.seq);
                    let frame = ServerFrame::Sent {
                        id,
                        client_msg_id: sent.client_msg_id,
                        conversation_id: sent.conversation_id,
                        seq: sent.seq,
                        message_id: sent.message_id,
                        ts: sent.ts,
                    };
                    act.push_frame(&frame, ctx);
                }
                Err(e) => act.push_error(id, &e, ctx),
            }
        }));
    }
}
