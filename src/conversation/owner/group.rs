//! Group changes in the owner shard: each is a system message in the group's seq, written by
//! the group's single writer, so members see joins, leaves, removals, renames and role changes
//! in order with the messages around them.
//!
//! A change is three durable writes: the update is recorded as the group's pending update, the
//! system message is appended (fenced like any append), then the update is applied (member
//! records, title, a new key, deletion) and the pending record cleared. A crash between the
//! last two is finished by whoever loads the group next (`finish_pending`): the update is
//! applied if its message is stored, dropped otherwise. So the records never disagree with
//! the log for longer than one load.
//!
//! Removal and leaving rotate the key: messages from the next seq on are sealed with a new
//! one; the former member's records end at the removal message, and every read checks them.

use super::Owner;
use super::append::message_event;
use crate::account::Identity;
use crate::conversation::directory::{self, ConversationInfo};
use crate::conversation::permissions;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    ConversationId, GroupAction, GroupUpdate, KeyEpoch, MemberRecord, MessageId, MessageKind, Millis, Role,
    StoredMessage, UserId, now_millis,
};
use crate::telemetry::Metrics;
use std::sync::Arc;

/// Longest group title, in characters.
pub const TITLE_MAX_CHARS: usize = 100;

pub struct ChangeRequest {
    pub from: Identity,
    pub conversation_id: ConversationId,
    pub action: GroupAction,
}

/// A change made: its system message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub seq: u64,
    pub message_id: MessageId,
    pub ts: Millis,
}

/// A group title as stored: trimmed, 1 to `TITLE_MAX_CHARS` characters.
pub fn valid_title(title: &str) -> Result<String> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > TITLE_MAX_CHARS {
        return Err(Error::bad_request(format!("a group title has 1 to {TITLE_MAX_CHARS} characters")));
    }
    Ok(title.to_owned())
}

impl Owner {
    /// Makes one change to a group; answers once its system message is stored.
    pub(super) async fn change(&mut self, request: ChangeRequest) -> Result<Changed> {
        let conversation = request.conversation_id;
        let last = self.last_seq_of(conversation).await?;
        let info = directory::existing(self.view(conversation).await?)?;
        if !info.is_group() {
            return Err(Error::bad_request("a direct conversation has no members to change"));
        }
        let actor = request.from.user_id;
        let actor_role =
            info.role(actor).ok_or_else(|| Error::forbidden("you are not a member of this group"))?;
        let target_role = match &request.action {
            GroupAction::Remove { user } | GroupAction::SetRole { user, .. } => info.role(*user),
            _ => None,
        };
        permissions::check(actor, actor_role, &request.action, target_role)?;
        let seq = last + 1;
        let update = self.plan(&info, actor, &request.action, seq)?;
        let event = event_body(actor, &request.action, &info);
        self.write_change(&info, request.from, update, event).await
    }

    /// The update a permitted action makes, as of its message at `seq`.
    fn plan(
        &self,
        info: &ConversationInfo,
        actor: UserId,
        action: &GroupAction,
        seq: u64,
    ) -> Result<GroupUpdate> {
        let mut update = GroupUpdate {
            seq,
            message_id: MessageId::generate(),
            members: Vec::new(),
            title: None,
            key: None,
            deleted: false,
        };
        let joined = |user| MemberRecord {
            user_id: user,
            role: Role::Member,
            since_seq: seq,
            until_seq: None,
            at_seq: seq,
        };
        let current = |user: UserId| info.record(user).filter(|r| r.is_active());
        let ended = |user: UserId| -> Result<MemberRecord> {
            let record =
                current(user).ok_or_else(|| Error::not_found("that user is not a member of the group"))?;
            Ok(MemberRecord { until_seq: Some(seq), at_seq: seq, ..record })
        };
        let with_role = |user: UserId, role: Role| -> Result<MemberRecord> {
            let record =
                current(user).ok_or_else(|| Error::not_found("that user is not a member of the group"))?;
            Ok(MemberRecord { role, at_seq: seq, ..record })
        };
        match action {
            GroupAction::Create => {}
            GroupAction::Rename { title } => update.title = Some(valid_title(title)?),
            GroupAction::Add { users } => {
                let mut new: Vec<UserId> = users.iter().copied().filter(|u| current(*u).is_none()).collect();
                new.sort();
                new.dedup();
                if new.is_empty() {
                    return Err(Error::new(ErrorCode::Conflict, "they are members already"));
                }
                let max = self.group_max_members;
                if info.members.len() + new.len() > max {
                    return Err(Error::new(
                        ErrorCode::TooLarge,
                        format!("a group has at most {max} members; it has {}", info.members.len()),
                    ));
                }
                update.members = new.into_iter().map(joined).collect();
            }
            GroupAction::Remove { user } => update.members.push(ended(*user)?),
            GroupAction::Leave => update.members.push(ended(actor)?),
            GroupAction::SetRole { user, role: Role::Owner } => {
                update.members.push(with_role(*user, Role::Owner)?);
                update.members.push(with_role(actor, Role::Admin)?);
            }
            GroupAction::SetRole { user, role } => {
                if current(*user).is_some_and(|r| r.role == *role) {
                    return Err(Error::new(
                        ErrorCode::Conflict,
                        format!("they are {} already", role.as_str()),
                    ));
                }
                update.members.push(with_role(*user, *role)?);
            }
            GroupAction::Delete => update.deleted = true,
        }
        if matches!(action, GroupAction::Remove { .. } | GroupAction::Leave) {
            let wrapped_key = self.conversations.new_group_key(info.id)?;
            update.key = Some(KeyEpoch { from_seq: seq + 1, wrapped_key });
        }
        Ok(update)
    }

    /// Pending record, system message, application; then the message is published to the
    /// members before and after the change (a removed member sees their removal).
    async fn write_change(
        &mut self,
        info: &Arc<ConversationInfo>,
        from: Identity,
        update: GroupUpdate,
        event: String,
    ) -> Result<Changed> {
        let conversation = info.id;
        let seq = update.seq;
        let has_effect =
            !update.members.is_empty() || update.title.is_some() || update.key.is_some() || update.deleted;
        if has_effect {
            self.store.begin_group_update(conversation, &update).await?;
        }
        let message = StoredMessage {
            conversation_id: conversation,
            seq,
            message_id: update.message_id,
            author_id: from.user_id,
            device_id: from.device_id,
            client_msg_id: format!("system-{}", update.message_id),
            kind: MessageKind::System,
            sealed_body: info.key_for(seq).seal(event.as_bytes(), &info.body_aad(seq)),
            ts: now_millis(),
            attachments: Vec::new(),
            epoch: self.epochs.get(&conversation).copied().unwrap_or(0),
        };
        if let Err(failure) = self.store.append(std::slice::from_ref(&message)).await {
            // The outcome may be unknown (a timed-out write can still land): the pending record
            // stays, and the next load of the group (`finish_pending`, after a claim that
            // completes any write in flight) applies it if its message is stored, drops it if not.
            self.forget(conversation);
            if matches!(failure.error, crate::store::StoreError::Fenced(_)) {
                Metrics::inc(&self.metrics.appends_fenced_total);
                self.lost.insert(conversation, self.placement.refreshes());
            }
            return Err(failure.error.into());
        }
        self.last_seq.insert(conversation, seq);
        Metrics::inc(&self.metrics.messages_stored_total);
        if has_effect && let Err(e) = self.store.apply_group_update(conversation, &update).await {
            // The message is stored, so the change happened: the next load of the group applies
            // it (`finish_pending`). Forget the group so that load comes first.
            tracing::warn!(%conversation, error = %e, "group update stored but not yet applied");
            self.forget(conversation);
        }
        // The shard's own view of the group after the change; if it cannot be read, the shard
        // forgets the group and loads it afresh before its next request.
        let after = match self.conversations.reload(conversation).await {
            Ok(Some(after)) if self.last_seq.contains_key(&conversation) => {
                self.views.insert(conversation, after.clone());
                Some(after)
            }
            _ => {
                self.forget(conversation);
                None
            }
        };
        let mut audience: Vec<UserId> = info.members.to_vec();
        audience.extend(update.members.iter().map(|r| r.user_id));
        if let Some(after) = &after {
            audience.extend(after.members.iter().copied());
        }
        audience.sort();
        audience.dedup();
        if let Some(waiting) = self.group_receipts.get_mut(&conversation) {
            // Receipts queued before the change go to the members after it.
            waiting.audience =
                after.as_ref().map(|a| a.members.clone()).unwrap_or_else(|| audience.clone().into());
        }
        let changed = Changed { seq, message_id: message.message_id, ts: message.ts };
        // Every device gets it, the acting one too: the change came over REST, not as a `send`.
        let mut publish = message_event(message, event, Vec::new(), audience.into());
        publish.except = crate::delivery::Audience::All;
        self.publish(vec![publish]).await;
        Ok(changed)
    }

    /// Finishes or drops the group's pending updates (see the module doc), then reads the group
    /// afresh into the shard's own view. Called when a shard loads a group's last seq (first
    /// use, after a failure, or a takeover — whose claim completes any append left in flight).
    pub(super) async fn finish_pending(&mut self, conversation: ConversationId, last_seq: u64) -> Result<()> {
        for pending in self.store.pending_group_updates(conversation).await? {
            let stored = pending.seq <= last_seq
                && self
                    .store
                    .messages_after(conversation, pending.seq - 1, 1)
                    .await?
                    .first()
                    .is_some_and(|m| m.seq == pending.seq && m.message_id == pending.message_id);
            if stored {
                tracing::info!(%conversation, seq = pending.seq, "finishing a group change left pending");
                self.store.apply_group_update(conversation, &pending).await?;
            } else {
                self.store.discard_group_update(conversation, &pending).await?;
            }
        }
        let view = self
            .conversations
            .reload(conversation)
            .await?
            .ok_or_else(|| Error::not_found("no such conversation"))?;
        self.views.insert(conversation, view);
        Ok(())
    }
}

/// The system message's body: what happened, as JSON (documented in docs/protocol.md).
fn event_body(actor: UserId, action: &GroupAction, info: &ConversationInfo) -> String {
    let value = match action {
        GroupAction::Create => serde_json::json!({
            "event": "group_created", "actor": actor, "title": info.title, "members": info.members.to_vec(),
        }),
        GroupAction::Rename { title } => {
            serde_json::json!({ "event": "renamed", "actor": actor, "title": title.trim() })
        }
        GroupAction::Add { users } => {
            serde_json::json!({ "event": "members_added", "actor": actor, "users": users })
        }
        GroupAction::Remove { user } => {
            serde_json::json!({ "event": "member_removed", "actor": actor, "user": user })
        }
        GroupAction::Leave => serde_json::json!({ "event": "member_left", "actor": actor }),
        GroupAction::SetRole { user, role: Role::Owner } => {
            serde_json::json!({ "event": "ownership_transferred", "actor": actor, "user": user })
        }
        GroupAction::SetRole { user, role } => {
            serde_json::json!({ "event": "role_changed", "actor": actor, "user": user, "role": role })
        }
        GroupAction::Delete => serde_json::json!({ "event": "group_deleted", "actor": actor }),
    };
    value.to_string()
}
