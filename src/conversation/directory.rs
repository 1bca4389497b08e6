//! `Conversations`: the node's view of conversations — who is a member and in what role, the
//! unwrapped keys — cached over the `ChatStore`, plus creation of direct conversations and
//! groups and decryption of stored messages into `MessageView`s.
//!
//! Groups change; the cache holds a group for `GROUP_TTL` at most. The group's owner shard
//! replaces its entry after every change it applies (and reloads it when it takes the group
//! over), so sends are always checked against the current members; readers on other nodes
//! check their own window against the store on every read (`reader`).

use crate::crypto::{ConversationKey, MasterKey};
use crate::error::{Error, Result};
use crate::model::{
    Conversation, ConversationId, ConversationKind, MemberRecord, Role, StoredMessage, UserId, now_millis,
};
use crate::protocol::MessageView;
use crate::store::ChatStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the node needs to know of a conversation on every message.
pub struct ConversationInfo {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: Option<String>,
    /// The current members (the audience of a new message).
    pub members: Arc<[UserId]>,
    /// Every member record of a group, former members included (empty for a direct one).
    pub records: HashMap<UserId, MemberRecord>,
    pub deleted: bool,
    /// How long the attachment links of opened messages stay valid, in seconds.
    link_ttl_s: u64,
    /// The keys by the first seq they seal, ascending (the first from 0).
    keys: Vec<(u64, ConversationKey)>,
    loaded: std::time::Instant,
}

impl ConversationInfo {
    pub fn is_member(&self, user: UserId) -> bool {
        !self.deleted && self.members.contains(&user)
    }

    pub fn is_group(&self) -> bool {
        self.kind == ConversationKind::Group
    }

    /// A current member's record (a direct conversation's members: `MemberRecord::direct`).
    pub fn record(&self, user: UserId) -> Option<MemberRecord> {
        match self.kind {
            ConversationKind::Direct => self.members.contains(&user).then(|| MemberRecord::direct(user)),
            ConversationKind::Group => self.records.get(&user).copied(),
        }
    }

    /// A current member's role.
    pub fn role(&self, user: UserId) -> Option<Role> {
        self.record(user).filter(|r| r.is_active()).map(|r| r.role)
    }

    /// The key that seals (and opens) the message at `seq`.
    pub fn key_for(&self, seq: u64) -> &ConversationKey {
        let at = self.keys.partition_point(|(from, _)| *from <= seq);
        &self.keys[at.saturating_sub(1)].1
    }

    /// The key attachment files and their signed links are derived from (the first key: a
    /// file is checked and opened knowing only its conversation).
    pub fn link_key(&self) -> &ConversationKey {
        &self.keys[0].1
    }

    /// How long the attachment links of opened messages stay valid, in seconds.
    pub fn link_ttl_s(&self) -> u64 {
        self.link_ttl_s
    }

    /// The newest key's first seq (0 until a group rotates its key).
    pub fn newest_key_from(&self) -> u64 {
        self.keys.last().map(|(from, _)| *from).unwrap_or(0)
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
            .key_for(m.seq)
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
            attachments: super::sealed_attachments::open(self, m.seq, &m.attachments)?,
            kind: m.kind,
        })
    }
}

/// A conversation that exists (not a deleted group), or `not_found`.
pub fn existing(info: Option<Arc<ConversationInfo>>) -> Result<Arc<ConversationInfo>> {
    info.filter(|i| !i.deleted).ok_or_else(|| Error::not_found("no such conversation"))
}

/// `existing`, with `user` among its current members, or `forbidden`.
pub fn with_member(info: Option<Arc<ConversationInfo>>, user: UserId) -> Result<Arc<ConversationInfo>> {
    let info = existing(info)?;
    if !info.is_member(user) {
        return Err(Error::forbidden("you are not a member of this conversation"));
    }
    Ok(info)
}

/// Bound on cached conversations; past it the cache starts over (entries are cheap to reload).
const CACHE_LIMIT: usize = 100_000;
/// How long a group's cached view serves before it is read again (its owner node replaces it
/// at once after a change; other nodes' typing and presence checks may lag this much).
const GROUP_TTL: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Conversations {
    store: Arc<dyn ChatStore>,
    /// Set once the key has been checked against the store (`node::Node::start`); until then
    /// nothing is sealed or opened.
    master: std::sync::OnceLock<MasterKey>,
    cache: Mutex<HashMap<ConversationId, Arc<ConversationInfo>>>,
    link_ttl_s: std::sync::atomic::AtomicU64,
}

impl Conversations {
    /// A directory whose master key, if not given now, comes later through `set_master`.
    pub fn new(store: Arc<dyn ChatStore>, master: Option<MasterKey>) -> Conversations {
        let cell = std::sync::OnceLock::new();
        if let Some(key) = master {
            let _ = cell.set(key);
        }
        Conversations {
            store,
            master: cell,
            cache: Mutex::new(HashMap::new()),
            link_ttl_s: std::sync::atomic::AtomicU64::new(3600),
        }
    }

    /// How long attachment links in opened messages stay valid (`attachments.link_ttl_s`).
    pub fn set_link_ttl(&self, seconds: u64) {
        self.link_ttl_s.store(seconds, std::sync::atomic::Ordering::Relaxed);
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
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&id).filter(|info| !info.is_group() || info.loaded.elapsed() < GROUP_TTL).cloned()
    }

    fn unwrap(&self, conversation: ConversationId, wrapped: &[u8]) -> Result<ConversationKey> {
        self.master()?.unwrap_conversation_key(wrapped, conversation.as_bytes()).map_err(|e| {
            tracing::error!(%conversation, error = %e, "cannot unwrap a conversation key (wrong master key?)");
            Error::internal("conversation key unavailable")
        })
    }

    /// Builds the node's view of a stored conversation (a group's members read from the store)
    /// and caches it.
    async fn remember(&self, conversation: Conversation) -> Result<Arc<ConversationInfo>> {
        let mut keys = vec![(0, self.unwrap(conversation.id, &conversation.wrapped_key)?)];
        for epoch in &conversation.rotated_keys {
            keys.push((epoch.from_seq, self.unwrap(conversation.id, &epoch.wrapped_key)?));
        }
        let (members, records): (Arc<[UserId]>, HashMap<UserId, MemberRecord>) = match conversation.kind {
            ConversationKind::Direct => (conversation.members.into(), HashMap::new()),
            ConversationKind::Group => {
                let records: HashMap<UserId, MemberRecord> = self
                    .store
                    .members(conversation.id)
                    .await?
                    .into_iter()
                    .map(|m| (m.user_id, m.record))
                    .collect();
                let mut active: Vec<UserId> =
                    records.values().filter(|r| r.is_active()).map(|r| r.user_id).collect();
                active.sort();
                (active.into(), records)
            }
        };
        let info = Arc::new(ConversationInfo {
            id: conversation.id,
            kind: conversation.kind,
            title: conversation.title,
            members,
            records,
            deleted: conversation.deleted,
            link_ttl_s: self.link_ttl_s.load(std::sync::atomic::Ordering::Relaxed),
            keys,
            loaded: std::time::Instant::now(),
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
        self.reload(id).await
    }

    /// Reads the conversation from the store again, replacing the cached view (a group's owner
    /// after a change, or when it takes the group over).
    pub async fn reload(&self, id: ConversationId) -> Result<Option<Arc<ConversationInfo>>> {
        match self.store.conversation(id).await? {
            Some(c) => self.remember(c).await.map(Some),
            None => Ok(None),
        }
    }

    /// The conversation, if `user` is a member: `not_found` if it does not exist (or is a
    /// deleted group), `forbidden` if the user is not in it.
    pub async fn for_member(&self, id: ConversationId, user: UserId) -> Result<Arc<ConversationInfo>> {
        with_member(self.get(id).await?, user)
    }

    /// The conversation and the seqs `user` may read in it: all of a direct conversation; in a
    /// group, from the message that added them to the one that removed them (read from the
    /// store, so a removal made on another node counts at once). `forbidden` for a user who was
    /// never a member.
    pub async fn reader(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<(Arc<ConversationInfo>, MemberRecord)> {
        let info = existing(self.get(id).await?)?;
        let record = match info.kind {
            ConversationKind::Direct => info.record(user),
            ConversationKind::Group => self.store.member(id, user).await?.map(|m| m.record),
        };
        let record = record.ok_or_else(|| Error::forbidden("you are not a member of this conversation"))?;
        Ok((info, record))
    }

    /// Creates a group of `creator` (its owner) and `members`, with its own key. Its first
    /// message (seq 1, the creation) is written by the group's owner shard.
    pub async fn create_group(
        &self,
        creator: UserId,
        title: String,
        members: &[UserId],
    ) -> Result<Arc<ConversationInfo>> {
        let id = ConversationId::generate();
        let (_, wrapped_key) = self.master()?.new_conversation_key(id.as_bytes());
        let mut records = vec![MemberRecord {
            user_id: creator,
            role: Role::Owner,
            since_seq: 1,
            until_seq: None,
            at_seq: 0,
        }];
        for &user in members.iter().filter(|&&u| u != creator) {
            if !records.iter().any(|r| r.user_id == user) {
                records.push(MemberRecord {
                    user_id: user,
                    role: Role::Member,
                    since_seq: 1,
                    until_seq: None,
                    at_seq: 0,
                });
            }
        }
        let conversation = Conversation {
            id,
            kind: ConversationKind::Group,
            title: Some(title),
            members: Vec::new(),
            wrapped_key,
            created_at: now_millis(),
            rotated_keys: Vec::new(),
            deleted: false,
        };
        self.store.create_group(&conversation, &records).await?;
        self.reload(id).await?.ok_or_else(|| Error::internal("a created group is missing"))
    }

    /// A new key for a group, wrapped for storage.
    pub fn new_group_key(&self, id: ConversationId) -> Result<Vec<u8>> {
        Ok(self.master()?.new_conversation_key(id.as_bytes()).1)
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
        let (rotated_keys, deleted) = (Vec::new(), false);
        let stored = self
            .store
            .create_direct(&Conversation {
                id,
                kind: ConversationKind::Direct,
                title: None,
                members: vec![lo, hi],
                wrapped_key,
                created_at: now_millis(),
                rotated_keys,
                deleted,
            })
            .await?;
        self.remember(stored).await
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
