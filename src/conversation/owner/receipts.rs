//! Receipts in the owner shard: a batch's `delivered`/`read` watermarks checked, clamped to
//! stored seqs, merged per (conversation, member) and written with one store call; direct
//! conversations push a `receipt` per change, groups collect their changes and push one
//! `receipts` frame per group at most every `group_receipt_flush_ms`.

use super::{MemberKey, Owner};
use crate::delivery::{Audience, Publish, SessionEvent};
use crate::error::{Error, Result};
use crate::model::{ConversationId, UserId, Watermarks};
use crate::protocol::{ReceiptEntry, ServerFrame};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// A receipt waiting for its batch: who, where, up to what, and its reply.
pub(super) type Receipt = (UserId, ConversationId, Watermarks, oneshot::Sender<Result<()>>);
/// Who hears of a receipt (the conversation's members), and whether it is a group's.
type ReceiptAudience = (Arc<[UserId]>, bool);

/// Receipt changes of one group waiting to be pushed together.
pub(super) struct GroupReceipts {
    pub(super) audience: Arc<[UserId]>,
    changes: HashMap<UserId, Watermarks>,
}

impl Owner {
    /// Applies a batch's receipts: checked, clamped to stored seqs, merged per (conversation,
    /// member) and written with one store call; each caller gets its own answer.
    pub(super) async fn advance_all(&mut self, receipts: Vec<Receipt>) {
        if receipts.is_empty() {
            return;
        }
        let mut merged: HashMap<MemberKey, (Watermarks, ReceiptAudience)> = HashMap::new();
        let mut waiting: Vec<(MemberKey, oneshot::Sender<Result<()>>)> = Vec::new();
        for (user, conversation, to, reply) in receipts {
            let checked = async {
                let last = self.last_seq_of(conversation).await?;
                let info = self.for_member(conversation, user).await?;
                // Nobody can have received what is not stored yet.
                Ok::<_, Error>((
                    Watermarks { delivered_seq: to.delivered_seq.min(last), read_seq: to.read_seq.min(last) },
                    (info.members.clone(), info.is_group()),
                ))
            }
            .await;
            match checked {
                Ok((to, _)) if to == Watermarks::default() => {
                    let _ = reply.send(Ok(()));
                }
                Ok((to, members)) => {
                    let key = (conversation, user);
                    let entry = merged.entry(key).or_insert((Watermarks::default(), members));
                    entry.0 = entry.0.merge(to);
                    waiting.push((key, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        let keys: Vec<(ConversationId, UserId)> = merged.keys().copied().collect();
        let updates: Vec<(ConversationId, UserId, Watermarks)> =
            keys.iter().map(|k| (k.0, k.1, merged[k].0)).collect();
        let outcome = self.store.advance_many(&updates).await;
        let mut answers: HashMap<(ConversationId, UserId), Result<()>> = HashMap::new();
        let mut events = Vec::new();
        match outcome {
            Ok(results) => {
                for (key, result) in keys.into_iter().zip(results) {
                    let answer = match result {
                        None => Err(Error::forbidden("you are not a member of this conversation")),
                        Some((now, changed)) => {
                            let (audience, is_group) = merged[&key].1.clone();
                            if changed && is_group {
                                self.queue_group_receipt(key.0, key.1, now, audience);
                            } else if changed {
                                let frame = ServerFrame::Receipt {
                                    conversation_id: key.0,
                                    user_id: key.1,
                                    delivered_seq: now.delivered_seq,
                                    read_seq: now.read_seq,
                                };
                                events.push(Publish {
                                    audience,
                                    except: Audience::All,
                                    event: SessionEvent::Frame(frame.encode()),
                                });
                            }
                            Ok(())
                        }
                    };
                    answers.insert(key, answer);
                }
            }
            Err(e) => {
                let e: Error = e.into();
                for key in keys {
                    answers.insert(key, Err(e.clone()));
                }
            }
        }
        for (key, reply) in waiting {
            let answer =
                answers.get(&key).cloned().unwrap_or_else(|| Err(Error::internal("receipt outcome missing")));
            let _ = reply.send(answer);
        }
        self.publish(events).await;
    }

    /// Holds a group member's new watermarks for the group's next `receipts` push.
    fn queue_group_receipt(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        now: Watermarks,
        audience: Arc<[UserId]>,
    ) {
        let entry = self
            .group_receipts
            .entry(conversation)
            .or_insert_with(|| GroupReceipts { audience: audience.clone(), changes: HashMap::new() });
        entry.audience = audience;
        let slot = entry.changes.entry(user).or_default();
        *slot = slot.merge(now);
        if self.receipts_due.is_none() {
            self.receipts_due = Some(Instant::now() + self.receipt_flush);
        }
    }

    /// Pushes each group's waiting receipt changes as one `receipts` frame to its members.
    pub(super) async fn flush_group_receipts(&mut self) {
        self.receipts_due = None;
        let events: Vec<Publish> = self
            .group_receipts
            .drain()
            .map(|(conversation_id, group)| {
                let mut receipts: Vec<ReceiptEntry> = group
                    .changes
                    .into_iter()
                    .map(|(user_id, w)| ReceiptEntry {
                        user_id,
                        delivered_seq: w.delivered_seq,
                        read_seq: w.read_seq,
                    })
                    .collect();
                receipts.sort_by_key(|r| r.user_id);
                let frame = ServerFrame::Receipts { conversation_id, receipts };
                Publish {
                    audience: group.audience,
                    except: Audience::All,
                    event: SessionEvent::Frame(frame.encode()),
                }
            })
            .collect();
        self.publish(events).await;
    }
}
