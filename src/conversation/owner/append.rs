//! The owner shard's write path for new messages: seal under the next seq, one durable append
//! per batch that also checks idempotency (`MessageLog::append_new`), `sent` only for what was
//! stored, then the batch's live events to the Router.

use super::{Accepted, Candidate, MemberKey, Owner, POSTED_MAX, Sent};
use crate::delivery::{Audience, Publish, PublishBatch, SessionEvent};
use crate::error::Error;
use crate::model::{ConversationId, StoredMessage, UserId};
use crate::protocol::{AttachmentView, MessageView, ServerFrame};
use crate::store::{AppendError, NewAppend};
use crate::telemetry::Metrics;
use std::sync::Arc;
use std::time::Instant;

impl Owner {
    /// Seals the candidates under the next seqs and stores them with one call that also
    /// checks their client ids (`MessageLog::append_new`). When some were stored before (a
    /// retry whose `sent` was lost), the reservations are undone, those are answered from the
    /// store, and the rest are sealed again and appended.
    pub(super) async fn store_new(&mut self, candidates: Vec<Candidate>) {
        let before: Vec<(ConversationId, Option<u64>)> = {
            let mut seen: Vec<ConversationId> = candidates.iter().map(|c| c.send.conversation_id).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.into_iter().map(|c| (c, self.last_seq.get(&c).copied())).collect()
        };
        let accepted = self.accept_all(candidates).await;
        if accepted.is_empty() {
            return;
        }
        let messages: Vec<StoredMessage> = accepted.iter().map(|a| a.message.clone()).collect();
        let started = Instant::now();
        let result = self.store.append_new(&messages).await;
        self.metrics.store_append_seconds.observe(started.elapsed());
        let found = match result {
            Ok(NewAppend::Appended) => return self.settle(accepted, Ok(())).await,
            Err(failure) => return self.settle(accepted, Err(failure)).await,
            Ok(NewAppend::Known(found)) => found,
        };
        for (conversation, seq) in before {
            match seq {
                Some(seq) => self.last_seq.insert(conversation, seq),
                None => self.last_seq.remove(&conversation),
            };
        }
        let mut again = Vec::new();
        for (a, stored) in accepted.into_iter().zip(found) {
            match stored {
                Some(stored) => {
                    Metrics::inc(&self.metrics.messages_duplicate_total);
                    a.into_candidate().answer(Ok(Sent::of(&stored)));
                }
                None => again.push(a.into_candidate()),
            }
        }
        let accepted = self.accept_all(again).await;
        if !accepted.is_empty() {
            self.commit(accepted).await;
        }
    }

    /// `accept` for each candidate; the refused ones are answered.
    async fn accept_all(&mut self, candidates: Vec<Candidate>) -> Vec<Accepted> {
        let mut accepted = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            match self.accept(candidate).await {
                Ok(a) => accepted.push(a),
                Err((candidate, e)) => candidate.answer(Err(e)),
            }
        }
        accepted
    }

    /// Appends accepted messages whose client ids are known to be new.
    async fn commit(&mut self, accepted: Vec<Accepted>) {
        let messages: Vec<StoredMessage> = accepted.iter().map(|a| a.message.clone()).collect();
        let started = Instant::now();
        let result = self.store.append(&messages).await;
        self.metrics.store_append_seconds.observe(started.elapsed());
        self.settle(accepted, result).await;
    }

    /// After the append: `sent` for what was stored (first posters recorded before it), the
    /// reservations of what was not undone with the error as its answer, then the batch's
    /// events to the Router.
    async fn settle(&mut self, accepted: Vec<Accepted>, result: std::result::Result<(), AppendError>) {
        let batch = accepted.len();
        let stored: Vec<bool> = match &result {
            Ok(()) => vec![true; accepted.len()],
            Err(failure) => {
                let mut stored = vec![false; accepted.len()];
                for &i in &failure.stored {
                    if let Some(slot) = stored.get_mut(i) {
                        *slot = true;
                    }
                }
                tracing::warn!(error = %failure.error, batch, stored = failure.stored.len(),
                    "durable append failed; only what was stored is acked");
                stored
            }
        };
        if result.is_ok() {
            Metrics::inc(&self.metrics.group_commits_total);
        }
        let fenced = matches!(&result, Err(f) if matches!(f.error, crate::store::StoreError::Fenced(_)));
        let error: Option<Error> = result.err().map(|f| f.error.into());
        // First messages of authors are recorded before `sent`, so whoever the author writes to
        // may watch their presence as soon as the message is acknowledged.
        let mut new_posters: Vec<MemberKey> = Vec::new();
        for (a, _) in accepted.iter().zip(&stored).filter(|(_, stored)| **stored) {
            let poster = (a.message.conversation_id, a.message.author_id);
            if !self.posted.contains(&poster) && !new_posters.contains(&poster) {
                new_posters.push(poster);
            }
        }
        let posting = Instant::now();
        self.record_posters(&new_posters).await;
        let posters_took = posting.elapsed();
        let mut events = Vec::with_capacity(accepted.len());
        for (a, stored) in accepted.into_iter().zip(stored) {
            if stored {
                Metrics::inc(&self.metrics.messages_stored_total);
                let sent = Sent::of(&a.message);
                for reply in a.replies {
                    let _ = reply.send(Ok(sent.clone()));
                }
                events.push(message_event(a.message, a.body, a.attachments, a.info.members.clone()));
            } else {
                // Forget the reservation: the next send reloads last_seq from the store (in a
                // cluster: claims the conversation again, unless another node fenced it).
                self.forget(a.message.conversation_id);
                if fenced {
                    Metrics::inc(&self.metrics.appends_fenced_total);
                    self.lost.insert(a.message.conversation_id, self.placement.refreshes());
                }
                let error = error.clone().unwrap_or_else(|| Error::internal("append outcome missing"));
                for reply in a.replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        let publishing = Instant::now();
        self.publish(events).await;
        let published = publishing.elapsed();
        if posters_took + published >= super::SLOW_BATCH {
            tracing::warn!(
                posters = new_posters.len(),
                posters_ms = posters_took.as_millis() as u64,
                publish_ms = published.as_millis() as u64,
                "slow owner batch: recording posters or handing the events to the Router"
            );
        }
    }

    /// Records first messages of authors in conversations (who may see whose presence). A
    /// failure only delays presence sharing until the author's next message.
    async fn record_posters(&mut self, new: &[MemberKey]) {
        let store = &self.store;
        let writes = new.iter().map(|&(c, u)| async move { (c, u, store.mark_posted(c, u).await) });
        for (c, u, result) in futures_util::future::join_all(writes).await {
            match result {
                Ok(()) => {
                    if self.posted.len() >= POSTED_MAX {
                        self.posted.clear();
                    }
                    self.posted.insert((c, u));
                }
                Err(e) => tracing::warn!(error = %e, "could not record a poster"),
            }
        }
    }

    /// Hands a batch's events to the Router, waiting while its mailbox is full.
    pub(super) async fn publish(&self, events: Vec<Publish>) {
        if events.is_empty() {
            return;
        }
        if self.router.send(PublishBatch(events)).await.is_err() {
            tracing::warn!("router stopped; events not delivered live (clients sync)");
        }
    }
}

/// The live event of a stored message: its frame, encoded once for every recipient.
pub(super) fn message_event(
    m: StoredMessage,
    body: String,
    attachments: Vec<AttachmentView>,
    audience: Arc<[UserId]>,
) -> Publish {
    let frame = ServerFrame::Message(MessageView {
        conversation_id: m.conversation_id,
        seq: m.seq,
        message_id: m.message_id,
        author_id: m.author_id,
        client_msg_id: m.client_msg_id,
        body,
        ts: m.ts,
        attachments,
        kind: m.kind,
    });
    Publish {
        audience,
        except: Audience::AllButDevice(m.device_id),
        event: SessionEvent::Message { conversation_id: m.conversation_id, seq: m.seq, text: frame.encode() },
    }
}
