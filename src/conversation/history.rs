//! `HistoryReader`: every read of stored messages a client can ask for — history pages,
//! sync after cursors, the conversation list with unread counts — with membership checked
//! and bodies decrypted. Sessions and REST handlers read through it, never through a store.

use crate::conversation::directory::Conversations;
use crate::error::Result;
use crate::model::{ConversationId, ConversationKind, UserId, Watermarks};
use crate::protocol::{MessageView, SyncState};
use crate::store::ChatStore;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The most messages one history page may hold.
pub const HISTORY_LIMIT_MAX: u32 = 200;
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// Longest preview of the last message in the conversation list, in characters.
const PREVIEW_CHARS: usize = 100;

#[derive(Clone)]
pub struct HistoryReader {
    store: Arc<dyn ChatStore>,
    conversations: Arc<Conversations>,
}

/// One conversation of the `GET /v1/conversations` list.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationSummary {
    pub conversation_id: ConversationId,
    pub kind: ConversationKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub members: Vec<UserId>,
    pub last_seq: u64,
    pub delivered_seq: u64,
    pub read_seq: u64,
    pub unread: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessageView>,
}

/// One conversation's part of a sync.
pub struct SyncPage {
    pub conversation_id: ConversationId,
    pub messages: Vec<MessageView>,
    pub state: SyncState,
}

impl HistoryReader {
    pub fn new(store: Arc<dyn ChatStore>, conversations: Arc<Conversations>) -> HistoryReader {
        HistoryReader { store, conversations }
    }

    /// Up to `limit` messages before `before` (default: the newest), ascending, and whether
    /// older ones exist.
    pub async fn history(
        &self,
        user: UserId,
        conversation: ConversationId,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(Vec<MessageView>, bool)> {
        let info = self.conversations.for_member(conversation, user).await?;
        let limit = limit.unwrap_or(HISTORY_LIMIT_DEFAULT).clamp(1, HISTORY_LIMIT_MAX) as usize;
        let before = before.unwrap_or(u64::MAX);
        let mut page = self.store.messages_before(conversation, before, limit + 1).await?;
        let has_more = page.len() > limit;
        if has_more {
            page.remove(0);
        }
        let views = page.iter().map(|m| info.open(m)).collect::<Result<Vec<_>>>()?;
        Ok((views, has_more))
    }

    /// For each of the user's conversations, the messages after its cursor (0 when absent),
    /// at most `limit` each, with the state the client should record. Cursors of
    /// conversations the user is not in are ignored.
    pub async fn sync(
        &self,
        user: UserId,
        cursors: &BTreeMap<ConversationId, u64>,
        limit: u32,
    ) -> Result<Vec<SyncPage>> {
        let limit = limit.max(1) as usize;
        let mut out = Vec::new();
        for id in self.store.user_conversations(user).await? {
            let info = self.conversations.for_member(id, user).await?;
            let after = cursors.get(&id).copied().unwrap_or(0);
            let mut page = self.store.messages_after(id, after, limit + 1).await?;
            let has_more = page.len() > limit;
            page.truncate(limit);
            let messages = page.iter().map(|m| info.open(m)).collect::<Result<Vec<_>>>()?;
            let last_seq = self.store.last_seq(id).await?;
            let mine = self.watermarks(id, user).await?;
            out.push(SyncPage {
                conversation_id: id,
                messages,
                state: SyncState {
                    last_seq,
                    delivered_seq: mine.delivered_seq,
                    read_seq: mine.read_seq,
                    has_more,
                },
            });
        }
        Ok(out)
    }

    async fn watermarks(&self, conversation: ConversationId, user: UserId) -> Result<Watermarks> {
        Ok(self
            .store
            .members(conversation)
            .await?
            .into_iter()
            .find(|m| m.user_id == user)
            .map(|m| m.watermarks)
            .unwrap_or_default())
    }

    /// The user's conversations, most recently active first.
    pub async fn summaries(&self, user: UserId) -> Result<Vec<ConversationSummary>> {
        let mut out = Vec::new();
        for id in self.store.user_conversations(user).await? {
            let info = self.conversations.for_member(id, user).await?;
            let last = self.store.messages_before(id, u64::MAX, 1).await?;
            let last_seq = last.last().map(|m| m.seq).unwrap_or(0);
            let last_message = match last.last() {
                Some(m) => {
                    let mut view = info.open(m)?;
                    if let Some((cut, _)) = view.body.char_indices().nth(PREVIEW_CHARS) {
                        view.body.truncate(cut);
                    }
                    Some(view)
                }
                None => None,
            };
            let mine = self.watermarks(id, user).await?;
            out.push(ConversationSummary {
                conversation_id: id,
                kind: info.kind,
                title: info.title.clone(),
                members: info.members.to_vec(),
                last_seq,
                delivered_seq: mine.delivered_seq,
                read_seq: mine.read_seq,
                unread: last_seq.saturating_sub(mine.read_seq),
                last_message,
            });
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.last_message.as_ref().map(|m| m.ts).unwrap_or(0)));
        Ok(out)
    }
}
