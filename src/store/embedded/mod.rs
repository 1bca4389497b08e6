//! The embedded backend of `AccountStore` and `ChatStore`: one fjall (LSM) database under the
//! data dir. Message appends are one atomic batch synced with `PersistMode::SyncData`
//! (fdatasync: the data and what is needed to read it back; group commit), run on the store's
//! writer thread (`writer.rs`); other calls run on the blocking pool. Read-modify-write rules
//! (unique usernames, one direct conversation per pair, monotonic watermarks) are serialised by
//! one mutex. Memory is bounded by `EmbeddedOptions` (memtable and block cache sizes).

mod append;
mod directory;
mod groups;
mod options;
mod reopen;
mod writer;

use super::{
    AccountStore, AppendError, Claim, DirectoryStore, MessageLog, MetaStore, NewAppend, ReceiptStore,
    StoreError, StoreResult,
};
use crate::model::{
    Conversation, ConversationId, Device, DeviceId, GroupUpdate, Member, MemberRecord, Millis, StoredMessage,
    User, UserId, Watermarks,
};
use append::AppendRows;
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
pub use options::EmbeddedOptions;
use options::FLUSH_THREADS;
use reopen::{PROBE_EVERY, Shared, lock};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The on-disk layout: one keyspace per table; keys are fixed-width ids and big-endian seqs,
/// so prefix and range scans follow id and seq order.
struct Inner {
    db: Database,
    /// user_id → User
    users: Keyspace,
    /// lower(username) → user_id
    usernames: Keyspace,
    /// user_id → argon2id PHC string
    credentials: Keyspace,
    /// device_id → DeviceRow
    devices: Keyspace,
    /// sha256(token) → device_id
    tokens: Keyspace,
    /// conversation_id → Conversation
    conversations: Keyspace,
    /// user_lo ++ user_hi → conversation_id (the seeds' user-pair table)
    pairs: Keyspace,
    /// conversation_id ++ user_id → Watermarks (the seeds' read/unread tables)
    members: Keyspace,
    /// user_id ++ conversation_id → ()
    user_conversations: Keyspace,
    /// conversation_id ++ seq(BE) → StoredMessage
    messages: Keyspace,
    /// conversation_id ++ author_id ++ client_msg_id → seq(BE)
    client_ids: Keyspace,
    /// device_id → last use of its token, millis (BE)
    device_seen: Keyspace,
    /// name → value: node-wide settings (the master key check)
    meta: Keyspace,
    /// conversation_id ++ user_id → (): who has sent a message there
    posters: Keyspace,
    /// conversation_id → owner epoch (u64 BE), raised by `claim`
    owners: Keyspace,
    /// conversation_id ++ user_id → MemberRecord (groups only; a direct member has none)
    member_records: Keyspace,
    /// conversation_id ++ from_seq(BE) → wrapped key (keys after the first)
    conversation_keys: Keyspace,
    /// conversation_id ++ seq(BE) ++ message_id → GroupUpdate: written before its system
    /// message, removed once applied or discarded
    group_pending: Keyspace,
    /// conversation_id → (): deleted groups
    groups_deleted: Keyspace,
    /// Serialises read-modify-write operations.
    rmw: Mutex<()>,
}

#[derive(Serialize, Deserialize)]
struct DeviceRow {
    device: Device,
    token_hash: [u8; 32],
}

/// The embedded store. Cheap to clone.
///
/// A failed write (a full disk, an I/O error) poisons a fjall database for good. The store
/// then reports itself unavailable (`ping`, so `/readyz` is 503), and every later call, at most
/// once per `REOPEN_EVERY`, tries to reopen the database (recovering from its journal) and to
/// write a synced probe; once that works it serves again — no restart needed. Nothing acked is
/// lost: acked batches were synced before the failure.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    /// Runs the message appends (`writer.rs`).
    writer: Arc<writer::Writer>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("in-memory encoding cannot fail")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn key2(a: &[u8; 16], b: &[u8; 16]) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(a);
    k[16..].copy_from_slice(b);
    k
}

fn message_key(conversation: ConversationId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(conversation.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn client_id_key(conversation: ConversationId, author: UserId, client_msg_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + client_msg_id.len());
    k.extend_from_slice(conversation.as_bytes());
    k.extend_from_slice(author.as_bytes());
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

fn pair_key(a: UserId, b: UserId) -> [u8; 32] {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    key2(lo.as_bytes(), hi.as_bytes())
}

fn id_suffix(key: &[u8]) -> StoreResult<[u8; 16]> {
    key.get(16..32).and_then(|s| s.try_into().ok()).ok_or_else(|| StoreError::Corrupt("short key".into()))
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path` with the default memory bounds.
    pub fn open(path: &Path) -> StoreResult<EmbeddedStore> {
        EmbeddedStore::open_with(path, EmbeddedOptions::default())
    }

    /// Opens (or creates) the database at `path`.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> StoreResult<EmbeddedStore> {
        let inner = Inner::open(path, &options)?;
        Ok(EmbeddedStore {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                options,
                current: RwLock::new(Some(Arc::new(inner))),
                retired: Mutex::new(None),
                failed: AtomicBool::new(false),
                reopening: Mutex::new(()),
                last_attempt: Mutex::new(None),
                probed: Mutex::new(None),
            }),
            writer: Arc::new(writer::Writer::start().map_err(unavailable)?),
        })
    }

    /// Runs `f` on the blocking pool: fjall calls may touch the disk (and `SyncAll` does).
    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || call(&shared, f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// `blocking`, on the writer thread: for message appends.
    async fn on_writer<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        self.writer
            .run(move || call(&shared, f))
            .await
            .unwrap_or_else(|| Err(StoreError::Unavailable("the store writer failed".into())))
    }
}

/// Runs `f` on the current database. An `Unavailable` error marks the store failed (see
/// `EmbeddedStore`'s doc).
fn call<T>(shared: &Shared, f: impl FnOnce(&Inner) -> StoreResult<T>) -> StoreResult<T> {
    let inner = shared.current()?;
    let result = f(&inner);
    if let Err(StoreError::Unavailable(e)) = &result
        && !shared.failed.swap(true, Ordering::Relaxed)
    {
        tracing::error!(error = %e, "embedded store write failed; refusing writes until it can be reopened");
    }
    result
}

impl Inner {
    fn open(path: &Path, options: &EmbeddedOptions) -> StoreResult<Inner> {
        let db = Database::builder(path)
            .cache_size(options.cache_bytes)
            .worker_threads(FLUSH_THREADS)
            .open()
            .map_err(unavailable)?;
        let memtable = options.memtable_bytes;
        let ks = |name: &str| {
            db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(memtable))
                .map_err(unavailable)
        };
        Ok(Inner {
            users: ks("users")?,
            usernames: ks("usernames")?,
            credentials: ks("credentials")?,
            devices: ks("devices")?,
            tokens: ks("tokens")?,
            conversations: ks("conversations")?,
            pairs: ks("pairs")?,
            members: ks("members")?,
            user_conversations: ks("user_conversations")?,
            messages: ks("messages")?,
            client_ids: ks("client_ids")?,
            device_seen: ks("device_seen")?,
            meta: ks("meta")?,
            posters: ks("posters")?,
            owners: ks("owners")?,
            member_records: ks("member_records")?,
            conversation_keys: ks("conversation_keys")?,
            group_pending: ks("group_pending")?,
            groups_deleted: ks("groups_deleted")?,
            rmw: Mutex::new(()),
            db,
        })
    }

    /// A synced write: proves the database can write now.
    fn probe(&self) -> StoreResult<()> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.meta, "probe", crate::model::now_millis().to_be_bytes());
        batch.commit().map_err(unavailable)
    }

    fn last_seq(&self, id: ConversationId) -> StoreResult<u64> {
        match self.messages.prefix(id.as_bytes()).next_back() {
            None => Ok(0),
            Some(guard) => {
                let key = guard.key().map_err(unavailable)?;
                let seq: [u8; 8] = key
                    .get(16..24)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| StoreError::Corrupt("short message key".into()))?;
                Ok(u64::from_be_bytes(seq))
            }
        }
    }

    /// The conversation's owner epoch (0 if never claimed).
    fn owner_epoch(&self, id: ConversationId) -> StoreResult<u64> {
        match self.owners.get(id.as_bytes()).map_err(unavailable)? {
            None => Ok(0),
            Some(bytes) => {
                let b: [u8; 8] =
                    bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt("owner epoch".into()))?;
                Ok(u64::from_be_bytes(b))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.rmw.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get<T: DeserializeOwned>(&self, ks: &Keyspace, key: &[u8]) -> StoreResult<Option<T>> {
        match ks.get(key).map_err(unavailable)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn message(&self, conversation: ConversationId, seq: u64) -> StoreResult<Option<StoredMessage>> {
        self.get(&self.messages, &message_key(conversation, seq))
    }

    fn by_client_id(&self, key: &(ConversationId, UserId, String)) -> StoreResult<Option<StoredMessage>> {
        let (conversation, author, client_msg_id) = key;
        self.by_client_key(*conversation, &client_id_key(*conversation, *author, client_msg_id))
    }

    /// The message stored under a client-id key (`client_id_key`) of `conversation`, if any.
    fn by_client_key(&self, conversation: ConversationId, key: &[u8]) -> StoreResult<Option<StoredMessage>> {
        let Some(seq) = self.client_ids.get(key).map_err(unavailable)? else {
            return Ok(None);
        };
        let seq: [u8; 8] = seq[..].try_into().map_err(|_| StoreError::Corrupt("bad client id row".into()))?;
        self.message(conversation, u64::from_be_bytes(seq))
    }

    fn scan_messages(
        &self,
        range: (std::ops::Bound<[u8; 24]>, std::ops::Bound<[u8; 24]>),
        newest_first: bool,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let iter = self.messages.range::<[u8; 24], _>(range);
        let mut out = Vec::with_capacity(limit.min(256));
        let mut push = |guard: fjall::Guard| -> StoreResult<()> {
            let value = guard.value().map_err(unavailable)?;
            out.push(decode::<StoredMessage>(&value)?);
            Ok(())
        };
        if newest_first {
            for guard in iter.rev().take(limit) {
                push(guard)?;
            }
            out.reverse();
        } else {
            for guard in iter.take(limit) {
                push(guard)?;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl AccountStore for EmbeddedStore {
    async fn create_user(&self, user: &User, password_hash: &str) -> StoreResult<()> {
        let user = user.clone();
        let password_hash = password_hash.to_owned();
        self.blocking(move |s| {
            let _guard = s.lock();
            let name_key = user.username.to_lowercase();
            if s.usernames.contains_key(&name_key).map_err(unavailable)? {
                return Err(StoreError::Conflict(format!("username {} is taken", user.username)));
            }
            let mut batch = s.db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&s.users, user.id.as_bytes(), encode(&user));
            batch.insert(&s.usernames, name_key, user.id.as_bytes());
            batch.insert(&s.credentials, user.id.as_bytes(), password_hash.into_bytes());
            batch.commit().map_err(unavailable)
        })
        .await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.blocking(move |s| s.get(&s.users, id.as_bytes())).await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        let name_key = username.to_lowercase();
        self.blocking(move |s| {
            let Some(id) = s.usernames.get(&name_key).map_err(unavailable)? else {
                return Ok(None);
            };
            s.get(&s.users, &id)
        })
        .await
    }

    async fn password_hash(&self, id: UserId) -> StoreResult<Option<String>> {
        self.blocking(move |s| {
            Ok(s.credentials
                .get(id.as_bytes())
                .map_err(unavailable)?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        })
        .await
    }

    async fn create_device(&self, device: &Device, token_hash: &[u8; 32]) -> StoreResult<()> {
        let row = DeviceRow { device: device.clone(), token_hash: *token_hash };
        self.blocking(move |s| {
            let mut batch = s.db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&s.tokens, row.token_hash, row.device.id.as_bytes());
            batch.insert(&s.devices, row.device.id.as_bytes(), encode(&row));
            batch.commit().map_err(unavailable)
        })
        .await
    }

    async fn device_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Device>> {
        let token_hash = *token_hash;
        self.blocking(move |s| {
            let Some(device_id) = s.tokens.get(token_hash).map_err(unavailable)? else {
                return Ok(None);
            };
            let row: Option<DeviceRow> = s.get(&s.devices, &device_id)?;
            Ok(row.map(|r| r.device).filter(|d| !d.revoked))
        })
        .await
    }

    async fn revoke_device(&self, id: DeviceId) -> StoreResult<()> {
        self.blocking(move |s| {
            let _guard = s.lock();
            let Some(mut row) = s.get::<DeviceRow>(&s.devices, id.as_bytes())? else {
                return Ok(());
            };
            row.device.revoked = true;
            let mut batch = s.db.batch().durability(Some(PersistMode::SyncAll));
            batch.remove(&s.tokens, row.token_hash);
            batch.insert(&s.devices, id.as_bytes(), encode(&row));
            batch.commit().map_err(unavailable)
        })
        .await
    }

    async fn touch_device(&self, id: DeviceId, at: Millis) -> StoreResult<()> {
        self.blocking(move |s| {
            let _guard = s.lock();
            let current = s.device_seen.get(id.as_bytes()).map_err(unavailable)?;
            let current = current.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map(i64::from_be_bytes);
            if current.is_none_or(|c| c < at) {
                s.device_seen.insert(id.as_bytes(), at.to_be_bytes()).map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn device_last_used(&self, id: DeviceId) -> StoreResult<Option<Millis>> {
        self.blocking(move |s| {
            let v = s.device_seen.get(id.as_bytes()).map_err(unavailable)?;
            Ok(v.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map(i64::from_be_bytes))
        })
        .await
    }
}

#[async_trait]
impl MessageLog for EmbeddedStore {
    async fn last_seq(&self, id: ConversationId) -> StoreResult<u64> {
        self.blocking(move |s| s.last_seq(id)).await
    }

    async fn append(&self, messages: &[StoredMessage]) -> Result<(), AppendError> {
        let rows = AppendRows::of(messages);
        self.on_writer(move |s| s.write_rows(rows)).await.map_err(AppendError::from)
    }

    async fn append_new(&self, messages: &[StoredMessage]) -> Result<NewAppend, AppendError> {
        let rows = AppendRows::of(messages);
        self.on_writer(move |s| s.append_if_new(rows)).await.map_err(AppendError::from)
    }

    async fn claim(&self, conversation: ConversationId, _node: &str) -> StoreResult<Claim> {
        self.blocking(move |s| {
            let _guard = s.lock();
            let epoch = s.owner_epoch(conversation)? + 1;
            let mut batch = s.db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&s.owners, conversation.as_bytes(), epoch.to_be_bytes());
            batch.commit().map_err(unavailable)?;
            Ok(Claim { epoch, last_seq: s.last_seq(conversation)? })
        })
        .await
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        author: UserId,
        client_msg_id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        let key = (conversation, author, client_msg_id.to_owned());
        self.blocking(move |s| s.by_client_id(&key)).await
    }

    async fn messages_by_client_ids(
        &self,
        keys: &[(ConversationId, UserId, String)],
    ) -> StoreResult<Vec<Option<StoredMessage>>> {
        let keys = keys.to_vec();
        self.blocking(move |s| keys.iter().map(|k| s.by_client_id(k)).collect()).await
    }

    async fn messages_after(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        use std::ops::Bound::Included;
        self.blocking(move |s| {
            if after == u64::MAX {
                return Ok(Vec::new());
            }
            let from = Included(message_key(conversation, after + 1));
            let to = Included(message_key(conversation, u64::MAX));
            s.scan_messages((from, to), false, limit)
        })
        .await
    }

    async fn messages_before(
        &self,
        conversation: ConversationId,
        before: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        use std::ops::Bound::{Excluded, Included};
        self.blocking(move |s| {
            let from = Included(message_key(conversation, 0));
            let to = Excluded(message_key(conversation, before));
            s.scan_messages((from, to), true, limit)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        let shared = self.shared.clone();
        let due = lock(&shared.probed).is_none_or(|t| t.elapsed() >= PROBE_EVERY);
        if !due && !shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.blocking(|s| s.probe()).await?;
        *lock(&shared.probed) = Some(Instant::now());
        Ok(())
    }
}

#[async_trait]
impl ReceiptStore for EmbeddedStore {
    async fn advance_watermarks(
        &self,
        conversation: ConversationId,
        user: UserId,
        to: Watermarks,
    ) -> StoreResult<Option<(Watermarks, bool)>> {
        Ok(self.advance_many(&[(conversation, user, to)]).await?.pop().flatten())
    }

    async fn advance_many(
        &self,
        updates: &[(ConversationId, UserId, Watermarks)],
    ) -> StoreResult<Vec<Option<(Watermarks, bool)>>> {
        let updates = updates.to_vec();
        self.blocking(move |s| {
            let _guard = s.lock();
            let mut batch = s.db.batch();
            let mut out = Vec::with_capacity(updates.len());
            for (conversation, user, to) in updates {
                let key = key2(conversation.as_bytes(), user.as_bytes());
                let Some(current) = s.get::<Watermarks>(&s.members, &key)? else {
                    out.push(None);
                    continue;
                };
                let target =
                    Watermarks { delivered_seq: to.delivered_seq.max(to.read_seq), read_seq: to.read_seq };
                let next = current.merge(target);
                if next != current {
                    batch.insert(&s.members, key, encode(&next));
                }
                out.push(Some((next, next != current)));
            }
            // Receipts are not acknowledged as durable: they reach the OS at once (safe from a
            // process crash) and the disk with the next sync.
            batch.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.blocking(move |s| Ok(s.meta.get(&key).map_err(unavailable)?.map(|v| v.to_vec()))).await
    }

    async fn init_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.blocking(move |s| {
            let _guard = s.lock();
            if let Some(existing) = s.meta.get(&key).map_err(unavailable)? {
                return Ok(existing.to_vec());
            }
            let mut batch = s.db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&s.meta, key.as_bytes(), value.clone());
            batch.commit().map_err(unavailable)?;
            Ok(value)
        })
        .await
    }
}
