//! `HistoryReader`: every read of stored messages a client can ask for — history pages,
//! sync after cursors, the conversation list with unread counts — with membership checked
//! and bodies decrypted. Sessions and REST handlers read through it, never through a store.

use crate::conversation::directory::{ConversationInfo, Conversations};
use crate::error::{ErrorCode, Result};
use crate::model::{ConversationId, ConversationKind, Role, StoredMessage, UserId, Watermarks};
use crate::protocol::{MessageView, SyncState};
use crate::store::ChatStore;
use serde::Serialize;
use std::sync::Arc;

/// The most messages one history page may hold.
pub const HISTORY_LIMIT_MAX: u32 = 200;
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// Most body bytes (as encoded in JSON) of one history or sync page; a page ends early
/// (has_more) past it.
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
    /// The current members.
    pub members: Vec<UserId>,
    /// The caller's role in a group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The caller left the group or was removed (they read it up to then).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
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
        let (mut info, window) = self.conversations.reader(conversation, user).await?;
        let limit = limit.unwrap_or(HISTORY_LIMIT_DEFAULT).clamp(1, HISTORY_LIMIT_MAX) as usize;
        // A former member reads up to the message that removed them; a member from the one
        // that added them.
        let mut cursor = before.unwrap_or(u64::MAX).min(window.until_seq.map_or(u64::MAX, |u| u + 1));
        let mut newest_first: Vec<MessageView> = Vec::new();
        let mut bytes = 0;
        // Small first reads, growing: a page of large messages ends after a few of them.
        let mut chunk_len = 8;
        loop {
            let take = (limit - newest_first.len()).min(chunk_len);
            chunk_len = (chunk_len * 2).min(READ_CHUNK);
            let mut chunk = self.store.messages_before(conversation, cursor, take + 1).await?;
            let mut exhausted = chunk.len() <= take;
            if chunk.first().is_some_and(|m| m.seq < window.since_seq) {
                chunk.retain(|m| m.seq >= window.since_seq);
                exhausted = true;
            }
            // Newest first, cut where the bodies reach the page's byte cap (sealed sizes are
            // the bodies plus a fixed overhead), so only what is returned is decrypted.
            let mut picked = Vec::with_capacity(take);
            let mut full = false;
            for m in chunk.into_iter().rev().take(take) {
                let size = m.sealed_body.len();
                if !(newest_first.is_empty() && picked.is_empty()) && bytes + size > PAGE_BYTES_MAX {
                    full = true;
                    break;
                }
                bytes += size;
                cursor = m.seq;
                picked.push(m);
            }
            picked.reverse();
            let mut views = self.open_page(&mut info, picked).await?;
            views.reverse();
            newest_first.extend(views);
            if full || (!exhausted && newest_first.len() == limit) {
                cut_to_json_cap(&mut newest_first);
                newest_first.reverse();
                return Ok((newest_first, true));
            }
            if exhausted {
                let cut = cut_to_json_cap(&mut newest_first);
                newest_first.reverse();
                return Ok((newest_first, cut));
            }
        }
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
        let (mut info, window) = self.conversations.reader(conversation, user).await?;
        let take = limit.clamp(1, READ_CHUNK);
        let after = after.max(window.since_seq.saturating_sub(1));
        let mut page = self.store.messages_after(conversation, after, take + 1).await?;
        let mut has_more = page.len() > take;
        page.truncate(take);
        if let Some(until) = window.until_seq
            && page.last().is_some_and(|m| m.seq > until)
        {
            page.retain(|m| m.seq <= until);
            has_more = false;
        }
        // Cut where the bodies reach the page's byte cap, before decrypting.
        let mut bytes = 0;
        let mut keep = 0;
        for m in &page {
            if keep > 0 && bytes + m.sealed_body.len() > PAGE_BYTES_MAX {
                has_more = true;
                break;
            }
            bytes += m.sealed_body.len();
            keep += 1;
        }
        page.truncate(keep);
        let mut messages = self.open_page(&mut info, page).await?;
        has_more |= cut_to_json_cap(&mut messages);
        let mut last_seq = self.store.last_seq(conversation).await?;
        if let Some(until) = window.until_seq {
            last_seq = last_seq.min(until);
        }
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
        Ok(self.store.member(conversation, user).await?.map(|m| m.watermarks).unwrap_or_default())
    }

    /// Decrypts a page; a group whose key was rotated on another node since it was cached is
    /// read again once.
    async fn open_page(
        &self,
        info: &mut Arc<ConversationInfo>,
        page: Vec<StoredMessage>,
    ) -> Result<Vec<MessageView>> {
        let newest = page.last().map(|m| m.seq).unwrap_or(0);
        let page: Arc<[StoredMessage]> = page.into();
        if info.is_group() && newest > info.newest_key_from() {
            // Cheap check first: only a page past the cached newest key can need a newer one.
            match open_all(info, page.clone()).await {
                Ok(views) => return Ok(views),
                Err(_) => {
                    if let Some(fresh) = self.conversations.reload(info.id).await? {
                        *info = fresh;
                    }
                }
            }
        }
        open_all(info, page).await
    }

    /// The user's conversations, most recently active first (a group they left or were
    /// removed from up to their removal; deleted groups not at all).
    pub async fn summaries(&self, user: UserId) -> Result<Vec<ConversationSummary>> {
        let mut out = Vec::new();
        for id in self.store.user_conversations(user).await? {
            let (mut info, window) = match self.conversations.reader(id, user).await {
                Ok(found) => found,
                Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::Forbidden) => continue,
                Err(e) => return Err(e),
            };
            let before = window.until_seq.map_or(u64::MAX, |u| u + 1);
            let last = self.store.messages_before(id, before, 1).await?;
            let last_seq = last.last().map(|m| m.seq).unwrap_or(0);
            let last_message = match self.open_page(&mut info, last).await?.pop() {
                Some(mut view) => {
                    if let Some((cut, _)) = view.body.char_indices().nth(PREVIEW_CHARS) {
                        view.body.truncate(cut);
                    }
                    Some(view)
                }
                None => None,
            };
            let mine = self.watermarks(id, user).await?;
            let left = window.until_seq.is_some();
            out.push(ConversationSummary {
                conversation_id: id,
                kind: info.kind,
                // A former member learns nothing of the group after their removal: not its
                // members, not a later title (the history up to the removal names both).
                title: if left { None } else { info.title.clone() },
                members: if left { Vec::new() } else { info.members.to_vec() },
                role: info.is_group().then_some(window.role),
                left,
                last_seq,
                delivered_seq: mine.delivered_seq,
                read_seq: mine.read_seq,
                // Nothing before the member joined counts as unread.
                unread: last_seq.saturating_sub(mine.read_seq.max(window.since_seq.saturating_sub(1))),
                last_message,
            });
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.last_message.as_ref().map(|m| m.ts).unwrap_or(0)));
        Ok(out)
    }
}

/// Bytes a body takes in a JSON frame: control characters are escaped as `\u00XX` (six bytes;
/// a few as two), quotes and backslashes as two.
fn json_size(body: &str) -> usize {
    body.bytes()
        .map(|b| {
            if b < 0x20 {
                6
            } else if b == b'"' || b == b'\\' {
                2
            } else {
                1
            }
        })
        .sum()
}

/// Keeps the longest prefix whose bodies, JSON-encoded, fit `PAGE_BYTES_MAX` (at least one
/// message); returns whether it cut. Pages are first cut by stored size, which escaping can
/// inflate up to six times.
fn cut_to_json_cap(views: &mut Vec<MessageView>) -> bool {
    let mut bytes = 0;
    for (i, view) in views.iter().enumerate() {
        bytes += json_size(&view.body);
        if i > 0 && bytes > PAGE_BYTES_MAX {
            views.truncate(i);
            return true;
        }
    }
    false
}

/// Sealed bytes above which decryption leaves the async worker for the blocking pool (so a
/// page of large messages cannot hold up the other sessions of its thread).
const OFF_THREAD_BYTES: usize = 64 * 1024;

/// Decrypts stored messages of one conversation, in order.
async fn open_all(info: &Arc<ConversationInfo>, messages: Arc<[StoredMessage]>) -> Result<Vec<MessageView>> {
    let sealed: usize = messages.iter().map(|m| m.sealed_body.len()).sum();
    if sealed < OFF_THREAD_BYTES {
        return messages.iter().map(|m| info.open(m)).collect();
    }
    let info = info.clone();
    tokio::task::spawn_blocking(move || messages.iter().map(|m| info.open(m)).collect())
        .await
        .map_err(|e| crate::error::Error::internal(format!("decrypt task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MessageId, MessageKind};

    fn view(seq: u64, body: String) -> MessageView {
        MessageView {
            conversation_id: ConversationId::generate(),
            seq,
            message_id: MessageId::generate(),
            author_id: UserId::generate(),
            client_msg_id: format!("c{seq}"),
            body,
            ts: 0,
            attachments: Vec::new(),
            kind: MessageKind::Text,
        }
    }

    #[test]
    fn json_size_counts_escapes() {
        assert_eq!(json_size("abc"), 3);
        assert_eq!(json_size("a\"b\\"), 6);
        assert_eq!(json_size("\u{1}"), 6);
        // Matches what serde_json writes for control characters (within the quotes).
        let body = "\u{1}\u{2}x";
        assert!(serde_json::to_string(body).unwrap().len() - 2 <= json_size(body));
    }

    #[test]
    fn a_page_of_escaped_bodies_is_cut_by_its_encoded_size() {
        // 64 KiB of control characters is 384 KiB of JSON: two of them pass 512 KiB.
        let hostile = "\u{1}".repeat(64 * 1024);
        let mut views: Vec<MessageView> = (1..=4).map(|i| view(i, hostile.clone())).collect();
        assert!(cut_to_json_cap(&mut views));
        assert_eq!(views.len(), 1);
        // A single message always fits, whatever its size.
        let mut one = vec![view(1, "\u{1}".repeat(200 * 1024))];
        assert!(!cut_to_json_cap(&mut one));
        assert_eq!(one.len(), 1);
    }
}
