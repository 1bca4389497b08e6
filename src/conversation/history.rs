//! `HistoryReader`: every read of stored messages a client can ask for — history pages,
//! sync after cursors, the conversation list with unread counts — with membership checked
//! and bodies decrypted. Sessions and REST handlers read through it, never through a store.

use crate::conversation::directory::Conversations;
use crate::error::Result;
use crate::model::{ConversationId, ConversationKind, UserId, Watermarks};
use crate::protocol::{MessageView, SyncState};
use crate::store::ChatStore;
use serde::Serialize;
use std::sync::Arc;

/// The most messages one history page may hold.
pub const HISTORY_LIMIT_MAX: u32 = 200;
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// Most body bytes of one history or sync page; a page ends early (has_more) past it.
pub const PAGE_BYTES_MAX: usize = 512 * 1024;
/// Messages read from the store at once while a page is built.
const READ_CHUNK: usize = 32;
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
    /// older ones exist. A page also ends once its bodies reach `PAGE_BYTES_MAX`, so one reply
    /// stays small whatever the messages hold; the store is read in small chunks.
    pub async fn history(
        &self,
        user: UserId,
        conversation: ConversationId,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(Vec<MessageView>, bool)> {
        let info = self.conversations.for_member(conversation, user).await?;
        let limit = limit.unwrap_or(HISTORY_LIMIT_DEFAULT).clamp(1, HISTORY_LIMIT_MAX) as usize;
        let mut cursor = before.unwrap_or(u64::MAX);
        let mut newest_first: Vec<MessageView> = Vec::new();
        let mut bytes = 0;
        let has_more = loop {
            let take = (limit - newest_first.len()).min(READ_CHUNK);
            let chunk = self.store.messages_before(conversation, cursor, take + 1).await?;
            let exhausted = chunk.len() <= take;
            for m in chunk.iter().rev().take(take) {
                let view = info.open(m)?;
                if !newest_first.is_empty() && bytes + view.body.len() > PAGE_BYTES_MAX {
                    newest_first.reverse();
                    return Ok((newest_first, true));
                }
                bytes += view.body.len();
                cursor = m.seq;
                newest_first.push(view);
            }
            if exhausted {
                break false;
            }
            if newest_first.len() == limit {
                break true;
            }
        };
        newest_first.reverse();
        Ok((newest_first, has_more))
    }

    /// The user's conversations (a sync round visits them in this order).
    pub async fn conversation_ids(&self, user: UserId) -> Result<Vec<ConversationId>> {
        Ok(self.store.user_conversations(user).await?)
    }

    /// One page of a sync: up to `limit` messages after `after`, ending early once the bodies
    /// reach `PAGE_BYTES_MAX`, with the state the client should record. `not_found` or
    /// `forbidden` when the user is not in the conversation.
    pub async fn sync_page(
        &self,
        user: UserId,
        conversation: ConversationId,
        after: u64,
        limit: usize,
    ) -> Result<SyncPage> {
        let info = self.conversations.for_member(conversation, user).await?;
        let take = limit.clamp(1, READ_CHUNK);
        let page = self.store.messages_after(conversation, after, take + 1).await?;
        let mut has_more = page.len() > take;
        let mut messages = Vec::with_capacity(page.len().min(take));
        let mut bytes = 0;
        for m in page.iter().take(take) {
            let view = info.open(m)?;
            if !messages.is_empty() && bytes + view.body.len() > PAGE_BYTES_MAX {
                has_more = true;
                break;
            }
            bytes += view.body.len();
            messages.push(view);
        }
        let last_seq = self.store.last_seq(conversation).await?;
        let mine = self.watermarks(conversation, user).await?;
        Ok(SyncPage {
            conversation_id: conversation,
            messages,
            state: SyncState {
                last_seq,
                delivered_seq: mine.delivered_seq,
                read_seq: mine.read_seq,
                has_more,
            },
        })
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
