//! Persistence ports, one trait per role — `AccountStore`, `DirectoryStore`, `MessageLog`,
//! `ReceiptStore`, `ClusterDirectory` (`ChatStore` is the union a chat backend provides) — the
//! contract every backend meets (proven by `tests/it/store_conformance.rs`), their error
//! types, and `Stores::open`, the one place a backend is chosen from config.

pub mod blob;
pub mod cassandra;
pub mod embedded;
pub mod presence;
pub mod redis_directory;

use crate::config::Config;
use crate::model::{
    Conversation, ConversationId, Device, DeviceId, GroupUpdate, Member, MemberRecord, Millis, StoredMessage,
    User, UserId, Watermarks,
};
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule stopped the write (e.g. the username exists); nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend could not be reached or could not make the write durable; nothing the
    /// caller may rely on was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The write carried an owner epoch that is no longer the conversation's: another node has
    /// taken the conversation over (cluster fencing). Nothing was written.
    #[error("fenced: {0}")]
    Fenced(String),
}

/// What taking over a conversation's log gives its new owner: the epoch every append must
/// carry, and the highest seq stored when the log was fenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub epoch: u64,
    pub last_seq: u64,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Users, their password hashes and devices (with token hashes).
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates the user; `Conflict` if the username (case-insensitively) exists. Durable on
    /// return.
    async fn create_user(&self, user: &User, password_hash: &str) -> StoreResult<()>;
    async fn user(&self, id: UserId) -> StoreResult<Option<User>>;
    /// Case-insensitive lookup.
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>>;
    async fn password_hash(&self, id: UserId) -> StoreResult<Option<String>>;
    /// Adds a device whose bearer token hashes to `token_hash`. Durable on return.
    async fn create_device(&self, device: &Device, token_hash: &[u8; 32]) -> StoreResult<()>;
    /// The device a token belongs to, unless it was revoked.
    async fn device_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Device>>;
    /// Marks the device revoked and forgets its token. Durable on return.
    async fn revoke_device(&self, id: DeviceId) -> StoreResult<()>;
    /// Records that the device's token was used at `at` (sliding token expiry). Need not be
    /// durable at once; never moves the time backwards.
    async fn touch_device(&self, id: DeviceId, at: Millis) -> StoreResult<()>;
    /// When the device's token was last used, if recorded (otherwise its `created_at` counts).
    async fn device_last_used(&self, id: DeviceId) -> StoreResult<Option<Millis>>;
}

/// Node-wide settings that must travel with the data, such as the master key's check value.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// The value stored under `key`, if any.
    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Stores `value` under `key` unless a value is there (a conditional insert), and returns
    /// the value stored now: `value` if it was absent, the existing one otherwise. Durable on
    /// return.
    async fn init_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>>;
}

/// Conversations and who is in them (the directory). Membership changes are rare; reads are
/// cached above this trait (`conversation::Directory`).
#[async_trait]
pub trait DirectoryStore: Send + Sync + 'static {
    /// Creates the direct conversation of a pair once: if the pair already has one, returns
    /// that one and ignores `conversation` (a conditional insert). Durable on return.
    async fn create_direct(&self, conversation: &Conversation) -> StoreResult<Conversation>;
    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<Conversation>>;
    /// The direct conversation of two users, if one exists.
    async fn direct_between(&self, a: UserId, b: UserId) -> StoreResult<Option<ConversationId>>;
    /// Members with their receipt watermarks and records, former group members included.
    async fn members(&self, id: ConversationId) -> StoreResult<Vec<Member>>;
    /// One member (current or former), if the user was ever in the conversation.
    async fn member(&self, id: ConversationId, user: UserId) -> StoreResult<Option<Member>>;
    /// Creates a group with its first members (their conversation lists include it). Durable on
    /// return. Later changes go through `begin_group_update` / `apply_group_update`.
    async fn create_group(&self, conversation: &Conversation, members: &[MemberRecord]) -> StoreResult<()>;
    /// Records `update` as a pending update of the group, before its system message is
    /// appended; each is its own record (by seq and message id), so a stale writer's or an
    /// abandoned attempt's record never hides another's. Durable on return.
    async fn begin_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()>;
    /// The group's pending updates (begun, neither applied nor discarded), ascending by seq.
    async fn pending_group_updates(&self, id: ConversationId) -> StoreResult<Vec<GroupUpdate>>;
    /// Applies `update` once its system message is stored: writes its member records (an added
    /// member's conversation list gains the group; watermarks start at 0 for a new member), its
    /// title, key and deletion, and removes its pending record. Idempotent; a record never
    /// replaces one written by a later update (higher `seq`). Durable on return.
    async fn apply_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()>;
    /// Removes `update`'s pending record (its message was never stored). Idempotent.
    async fn discard_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()>;
    async fn user_conversations(&self, user: UserId) -> StoreResult<Vec<ConversationId>>;
    /// Records that `user` has sent a message in the conversation (idempotent).
    async fn mark_posted(&self, conversation: ConversationId, user: UserId) -> StoreResult<()>;
    /// Whether `user` has sent a message in the conversation.
    async fn has_posted(&self, conversation: ConversationId, user: UserId) -> StoreResult<bool>;
}

/// An append that did not fully succeed. `stored` lists the indices (into the appended slice)
/// of messages that are durably stored all the same — a backend without cross-partition
/// atomicity may store a gapless prefix of a conversation's messages before failing. Those
/// must be acknowledged and delivered; every other message of the batch is not stored (or its
/// outcome is unknown, which a retry with the same client id resolves).
#[derive(Debug, Clone)]
pub struct AppendError {
    pub error: StoreError,
    pub stored: Vec<usize>,
}

impl From<StoreError> for AppendError {
    fn from(error: StoreError) -> Self {
        AppendError { error, stored: Vec::new() }
    }
}

/// What `MessageLog::append_new` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewAppend {
    /// Every message is stored (durably).
    Appended,
    /// Nothing was written: some client ids were stored before (their messages, by index).
    Known(Vec<Option<StoredMessage>>),
}

/// The message log: each conversation's messages by gapless seq, and the client-id index that
/// makes a send idempotent. One writer per conversation (its owner shard) appends.
#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// The highest stored seq of the conversation (0 when empty). Never lower than a seq that
    /// an `append` reported stored, whatever failed in between.
    async fn last_seq(&self, id: ConversationId) -> StoreResult<u64>;
    /// Stores the messages and their client-id index durably (one sync for the whole batch:
    /// group commit). Seqs are assigned by the caller, the conversation's single writer. On
    /// error, `AppendError::stored` says which messages are stored anyway.
    ///
    /// Fencing: a message with `epoch > 0` is stored only while that epoch is the
    /// conversation's current owner epoch (set by `claim`); otherwise that conversation's
    /// messages get `Fenced` and none of them is stored. `epoch == 0` appends unconditionally
    /// (single node: the one process is the only writer).
    async fn append(&self, messages: &[StoredMessage]) -> Result<(), AppendError>;
    /// `append`, unless a message of the batch has a client id already stored: then nothing is
    /// written and the answer is `Known`, with the stored message for each such client id (in
    /// the batch's order, `None` for the new ones). The owner's fast path: one call, where a
    /// lookup and an append would take two. Backends that cannot do both at once keep this
    /// default (the lookup, then the append).
    async fn append_new(&self, messages: &[StoredMessage]) -> Result<NewAppend, AppendError> {
        let keys: Vec<(ConversationId, UserId, String)> =
            messages.iter().map(|m| (m.conversation_id, m.author_id, m.client_msg_id.clone())).collect();
        let found = self.messages_by_client_ids(&keys).await?;
        if found.iter().any(Option::is_some) {
            return Ok(NewAppend::Known(found));
        }
        self.append(messages).await.map(|()| NewAppend::Appended)
    }
    /// Takes the conversation's log over for `node`: bumps its owner epoch (a conditional
    /// write), fences the log so appends under any older epoch are refused from now on, and
    /// returns the new epoch with the highest seq stored. Linearizable with `append`: every
    /// append under an older epoch either is included in `last_seq` or is refused.
    async fn claim(&self, conversation: ConversationId, node: &str) -> StoreResult<Claim>;
    /// The message an author stored with this client id, if any (idempotency).
    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        author: UserId,
        client_msg_id: &str,
    ) -> StoreResult<Option<StoredMessage>>;
    /// `message_by_client_id` for many keys at once, answers in the same order. Backends
    /// override it to look them up in one round trip.
    async fn messages_by_client_ids(
        &self,
        keys: &[(ConversationId, UserId, String)],
    ) -> StoreResult<Vec<Option<StoredMessage>>> {
        let mut out = Vec::with_capacity(keys.len());
        for (conversation, author, client_msg_id) in keys {
            out.push(self.message_by_client_id(*conversation, *author, client_msg_id).await?);
        }
        Ok(out)
    }
    /// Up to `limit` messages with seq > `after`, ascending.
    async fn messages_after(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>>;
    /// The `limit` newest messages with seq < `before`, ascending.
    async fn messages_before(
        &self,
        conversation: ConversationId,
        before: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>>;
    /// Whether the log can take writes now (for `/readyz`): `Unavailable` while the backend is
    /// unreachable or cannot write (e.g. a full disk).
    async fn ping(&self) -> StoreResult<()>;
}

/// Receipt watermarks per (conversation, member).
#[async_trait]
pub trait ReceiptStore: Send + Sync + 'static {
    /// Raises the member's watermarks to at least `to` (a read raises delivered too) and
    /// returns the result and whether anything changed. Never lowers a watermark. `None` if
    /// the user is not a member.
    async fn advance_watermarks(
        &self,
        conversation: ConversationId,
        user: UserId,
        to: Watermarks,
    ) -> StoreResult<Option<(Watermarks, bool)>>;
    /// `advance_watermarks` for many (conversation, member) pairs at once, answers in order;
    /// each pair appears at most once. Backends override it to write them together.
    async fn advance_many(
        &self,
        updates: &[(ConversationId, UserId, Watermarks)],
    ) -> StoreResult<Vec<Option<(Watermarks, bool)>>> {
        let mut out = Vec::with_capacity(updates.len());
        for (conversation, user, to) in updates {
            out.push(self.advance_watermarks(*conversation, *user, *to).await?);
        }
        Ok(out)
    }
}

/// Everything a chat backend provides; each component takes only the role it uses.
pub trait ChatStore: DirectoryStore + MessageLog + ReceiptStore {}

impl<T: DirectoryStore + MessageLog + ReceiptStore> ChatStore for T {}

/// The backends of one node, chosen from config.
#[derive(Clone)]
pub struct Stores {
    pub meta: Arc<dyn MetaStore>,
    pub accounts: Arc<dyn AccountStore>,
    pub chat: Arc<dyn ChatStore>,
    pub presence: Arc<dyn presence::ClusterDirectory>,
}

impl Stores {
    /// Opens the configured backends. Cassandra connects in the background (must be called
    /// inside a tokio runtime); until it is reachable with the right schema, calls answer
    /// `Unavailable`.
    pub fn open(config: &Config) -> StoreResult<Stores> {
        let presence: Arc<dyn presence::ClusterDirectory> = Arc::new(presence::MemoryDirectory::default());
        // `Config::validate` admits only the backends this build has.
        if config.storage.store_backend == "cassandra" {
            let cassandra_config =
                cassandra::CassandraConfig::from_storage(&config.storage).map_err(StoreError::Unavailable)?;
            let store = Arc::new(cassandra::CassandraStore::start(cassandra_config));
            return Ok(Stores { meta: store.clone(), accounts: store.clone(), chat: store, presence });
        }
        let embedded = Arc::new(embedded::EmbeddedStore::open_with(
            &config.data_dir().join("store"),
            embedded::EmbeddedOptions::from_config(&config.storage),
        )?);
        Ok(Stores { meta: embedded.clone(), accounts: embedded.clone(), chat: embedded, presence })
    }
}
