//! `Conversations`: the node's view of conversations — who is a member, the unwrapped key —
//! cached over the `ChatStore`, plus creation of direct conversations and decryption of
//! stored messages into `MessageView`s.

use crate::crypto::{ConversationKey, MasterKey};
use crate::error::{Error, Result};
use crate::model::{Conversation, ConversationId, ConversationKind, StoredMessage, UserId, now_millis};
use crate::protocol::MessageView;
use crate::store::ChatStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the node needs to know of a conversation on every message.
pub struct ConversationInfo {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: Option<String>,
    pub members: Arc<[UserId]>,
    key: ConversationKey,
}

impl ConversationInfo {
    pub fn is_member(&self, user: UserId) -> bool {
        self.members.contains(&user)
    }

    pub fn key(&self) -> &ConversationKey {
        &self.key
    }

    /// The additional data a body is sealed with: it binds the ciphertext to its place.
    pub fn body_aad(&self, seq: u64) -> [u8; 24] {
        let mut aad = [0u8; 24];
        aad[..16].copy_from_slice(self.id.as_bytes());
        aad[16..].copy_from_slice(&seq.to_be_bytes());
        aad
    }

    /// Decrypts a stored message of this conversation.
    pub fn open(&self, m: &StoredMessage) -> Result<MessageView> {
        let body = self
            .key
            .open(&m.sealed_body, &self.body_aad(m.seq))
            .map_err(|e| {
                tracing::error!(conversation = %self.id, seq = m.seq, error = %e, "cannot decrypt a stored message");
                Error::internal("a stored message could not be decrypted")
            })?;
        Ok(MessageView {
            conversation_id: m.conversation_id,
            seq: m.seq,
            message_id: m.message_id,
            author_id: m.author_id,
            client_msg_id: m.client_msg_id.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            ts: m.ts,
            attachments: m.attachments.clone(),
            kind: m.kind,
        })
    }
}

/// Bound on cached conversations; past it the cache starts over (entries are cheap to reload).
const CACHE_LIMIT: usize = 100_000;

pub struct Conversations {
    store: Arc<dyn ChatStore>,
    /// Set once the key has been checked against the store (`node::Node::start`); until then
    /// nothing is sealed or opened.
    master: std::sync::OnceLock<MasterKey>,
    cache: Mutex<HashMap<ConversationId, Arc<ConversationInfo>>>,
}

impl Conversations {
    /// A directory whose master key, if not given now, comes later through `set_master`.
    pub fn new(store: Arc<dyn ChatStore>, master: Option<MasterKey>) -> Conversations {
        let cell = std::sync::OnceLock::new();
        if let Some(key) = master {
            let _ = cell.set(key);
        }
        Conversations { store, master: cell, cache: Mutex::new(HashMap::new()) }
    }

    /// The checked master key from now on (once; later calls change nothing).
    pub fn set_master(&self, key: MasterKey) {
        let _ = self.master.set(key);
    }

    /// Whether the master key is there (checked against the store).
    pub fn has_master(&self) -> bool {
        self.master.get().is_some()
    }

    fn master(&self) -> Result<&MasterKey> {
        self.master.get().ok_or_else(|| {
            Error::new(
                crate::error::ErrorCode::Unavailable,
                "the node is starting: its master key is not yet checked against the store; retry",
            )
        })
    }

    fn cached(&self, id: ConversationId) -> Option<Arc<ConversationInfo>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    fn remember(&self, conversation: Conversation) -> Result<Arc<ConversationInfo>> {
        let key = self
            .master()?
            .unwrap_conversation_key(&conversation.wrapped_key, conversation.id.as_bytes())
            .map_err(|e| {
                tracing::error!(conversation = %conversation.id, error = %e, "cannot unwrap a conversation key (wrong master key?)");
                Error::internal("conversation key unavailable")
            })?;
        let info = Arc::new(ConversationInfo {
            id: conversation.id,
            kind: conversation.kind,
            title: conversation.title,
            members: conversation.members.into(),
            key,
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(info.id, info.clone());
        Ok(info)
    }

    pub async fn get(&self, id: ConversationId) -> Result<Option<Arc<ConversationInfo>>> {
        if let Some(info) = self.cached(id) {
            return Ok(Some(info));
        }
        match self.store.conversation(id).await? {
            Some(c) => self.remember(c).map(Some),
            None => Ok(None),
        }
    }

    /// The conversation, if `user` is a member: `not_found` if it does not exist, `forbidden`
    /// if the user is not in it.
    pub async fn for_member(&self, id: ConversationId, user: UserId) -> Result<Arc<ConversationInfo>> {
        let info = self.get(id).await?.ok_or_else(|| Error::not_found("no such conversation"))?;
        if !info.is_member(user) {
            return Err(Error::forbidden("you are not a member of this conversation"));
        }
        Ok(info)
    }

    /// The one direct conversation of two users, created with its own key on first use.
    pub async fn open_direct(&self, a: UserId, b: UserId) -> Result<Arc<ConversationInfo>> {
        if a == b {
            return Err(Error::bad_request("a direct conversation needs two different users"));
        }
        if let Some(id) = self.store.direct_between(a, b).await?
            && let Some(info) = self.get(id).await?
        {
            return Ok(info);
        }
        let id = ConversationId::generate();
        let (_, wrapped_key) = self.master()?.new_conversation_key(id.as_bytes());
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let stored = self
            .store
            .create_direct(&Conversation {
                id,
                kind: ConversationKind::Direct,
                title: None,
                members: vec![lo, hi],
                wrapped_key,
                created_at: now_millis(),
            })
            .await?;
        self.remember(stored)
    }

    /// Which of `candidates` `watcher` may see the presence of: those who have sent a message
    /// in a conversation they share with `watcher`. Opening a direct conversation with a
    /// stranger is not enough to watch when they are online; their first message there is.
    /// Reads the watcher's conversations once, whatever the number of candidates.
    pub async fn watchable(&self, watcher: UserId, candidates: &[UserId]) -> Result<Vec<UserId>> {
        let mut shared: Vec<Arc<ConversationInfo>> = Vec::new();
        for id in self.store.user_conversations(watcher).await? {
            if let Some(info) = self.get(id).await? {
                shared.push(info);
            }
        }
        let mut out = Vec::new();
        for &user in candidates {
            if user == watcher || out.contains(&user) {
                continue;
            }
            for info in shared.iter().filter(|info| info.is_member(user)) {
                if self.store.has_posted(info.id, user).await? {
                    out.push(user);
                    break;
                }
            }
        }
        Ok(out)
    }
}
