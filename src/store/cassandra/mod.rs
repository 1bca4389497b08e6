//! The Cassandra backend of `AccountStore` and `ChatStore` (tables in `schema.cql`), on the
//! `scylla` driver: prepared statements, token-aware routing in the local DC, configurable
//! consistency (default LOCAL_QUORUM), timeouts, and driver retries only for statements marked
//! idempotent. LWT only for username claims, direct-pair creation and `init_meta`. The node
//! connects in the background with backoff; until connected and the schema matches, every call
//! answers `Unavailable` (so `/readyz` is false and sends get `store_unavailable`).
//!
//! Submodules: `schema` (the schema text, its version, applying it) and `statements` (every
//! prepared statement). This file holds the connection, the store and the trait impls.

mod accounts;
mod directory;
mod groups;
mod messages;
mod schema;
mod statements;

pub use schema::{SCHEMA_VERSION, apply_schema, apply_schema_cli};
use statements::Statements;

use super::{
    AccountStore, AppendError, DirectoryStore, MessageLog, MetaStore, ReceiptStore, StoreError, StoreResult,
};
use crate::config::StorageConfig;
use crate::model::{
    Conversation, ConversationId, ConversationKind, Device, DeviceId, GroupUpdate, Member, MemberRecord,
    MessageId, MessageKind, Millis, StoredMessage, User, UserId, Watermarks,
};
use async_trait::async_trait;
use futures_util::future::{join_all, try_join_all};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::frame::types::{Consistency, SerialConsistency};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use uuid::Uuid;

/// Messages per bucket (partition) of a conversation.
pub const BUCKET_SIZE: u64 = 4096;
/// Largest batch written at once (Cassandra's default batch_size_fail_threshold is 50 KiB).
const BATCH_BYTES: usize = 32 * 1024;

fn bucket_of(seq: u64) -> i64 {
    (seq / BUCKET_SIZE) as i64
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Connection settings, from `[storage]`.
#[derive(Clone, Debug)]
pub struct CassandraConfig {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub local_dc: String,
    pub consistency: Consistency,
    pub replication: String,
    pub timeout: Duration,
}

impl CassandraConfig {
    /// Defaults, with these contact points and keyspace and replication factor 1
    /// (SimpleStrategy): a throwaway keyspace on a single test node.
    pub fn single_replica(nodes: &str, keyspace: &str) -> Result<CassandraConfig, String> {
        CassandraConfig::from_storage(&StorageConfig {
            cassandra_nodes: nodes.to_owned(),
            cassandra_keyspace: keyspace.to_owned(),
            cassandra_replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            ..StorageConfig::default()
        })
    }

    pub fn from_storage(s: &StorageConfig) -> Result<CassandraConfig, String> {
        let consistency = match s.cassandra_consistency.to_ascii_lowercase().as_str() {
            "one" => Consistency::One,
            "local_one" => Consistency::LocalOne,
            "quorum" => Consistency::Quorum,
            "local_quorum" => Consistency::LocalQuorum,
            "all" => Consistency::All,
            other => {
                return Err(format!(
                    "unknown consistency {other:?} ({})",
                    crate::config::CASSANDRA_CONSISTENCIES.join(", ")
                ));
            }
        };
        let keyspace = s.cassandra_keyspace.clone();
        if keyspace.is_empty() || !keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("keyspace must be [A-Za-z0-9_]+".into());
        }
        Ok(CassandraConfig {
            nodes: s
                .cassandra_nodes
                .split(',')
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            keyspace,
            local_dc: s.cassandra_local_dc.clone(),
            consistency,
            replication: s.cassandra_replication.clone(),
            timeout: Duration::from_millis(s.cassandra_timeout_ms),
        })
    }
}

/// Opens a driver session with the configured routing, consistency and timeout.
pub async fn connect(config: &CassandraConfig) -> StoreResult<Session> {
    let policy =
        DefaultPolicy::builder().prefer_datacenter(config.local_dc.clone()).token_aware(true).build();
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy)
        .consistency(config.consistency)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(config.timeout))
        .build();
    SessionBuilder::new()
        .known_nodes(&config.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(config.timeout)
        .build()
        .await
        .map_err(|e| unavailable(format!("cannot connect to Cassandra at {}: {e}", config.nodes.join(","))))
}

struct Connected {
    session: Session,
    st: Statements,
    gst: groups::GroupStatements,
    /// Buckets this process has recorded in `conversation_buckets`: the (idempotent) insert is
    /// skipped for them, saving a round trip per append. Bounded; cleared when full.
    known_buckets: Mutex<std::collections::HashSet<(Uuid, i64)>>,
}

/// How many (conversation, bucket) pairs `known_buckets` holds before it starts over.
const KNOWN_BUCKETS_MAX: usize = 100_000;

/// The Cassandra store. Cheap to clone.
#[derive(Clone)]
pub struct CassandraStore {
    connected: Arc<OnceLock<Arc<Connected>>>,
    last_error: Arc<Mutex<String>>,
}

type MessageRow = (Uuid, i64, Uuid, Uuid, Uuid, String, String, Vec<u8>, i64, Option<Vec<String>>);

fn message_from_row(r: MessageRow) -> StoredMessage {
    let (conversation, seq, message_id, author, device, client_msg_id, kind, sealed_body, ts, attachments) =
        r;
    StoredMessage {
        conversation_id: ConversationId(conversation),
        seq: seq as u64,
        message_id: MessageId(message_id),
        author_id: UserId(author),
        device_id: DeviceId(device),
        client_msg_id,
        kind: if kind == "system" { MessageKind::System } else { MessageKind::Text },
        sealed_body,
        ts,
        attachments: attachments.unwrap_or_default(),
        epoch: 0,
    }
}

fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text => "text",
        MessageKind::System => "system",
    }
}

/// The answer to an LWT: whether it applied, and the current row when it did not.
struct Lwt {
    applied: bool,
    names: Vec<String>,
    row: Row,
}

impl Lwt {
    /// The current value of a column (when not applied), by name.
    fn column(&self, name: &str) -> Option<&CqlValue> {
        let i = self.names.iter().position(|n| n == name)?;
        self.row.columns.get(i)?.as_ref()
    }

    fn uuid(&self, name: &str) -> Option<Uuid> {
        match self.column(name) {
            Some(CqlValue::Uuid(id)) => Some(*id),
            _ => None,
        }
    }
}

fn lwt_outcome(result: scylla::response::query_result::QueryResult) -> StoreResult<Lwt> {
    let rows = result.into_rows_result().map_err(unavailable)?;
    let names = rows.column_specs().iter().map(|spec| spec.name().to_owned()).collect();
    let row: Row = rows.first_row().map_err(unavailable)?;
    let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
    Ok(Lwt { applied, names, row })
}

/// Splits one conversation's messages (in seq order) into the batches `write_chunk` writes:
/// consecutive runs in one bucket (one partition) of at most `BATCH_BYTES`, a message larger
/// than that alone. Returns the chunk lengths.
fn chunk_lengths(messages: &[&StoredMessage]) -> Vec<usize> {
    let mut lengths = Vec::new();
    let (mut len, mut bytes, mut bucket) = (0, 0, None);
    for m in messages {
        let size = m.sealed_body.len() + m.client_msg_id.len() + 128;
        if len > 0 && (bucket != Some(bucket_of(m.seq)) || bytes + size > BATCH_BYTES) {
            lengths.push(len);
            (len, bytes) = (0, 0);
        }
        bucket = Some(bucket_of(m.seq));
        len += 1;
        bytes += size;
    }
    if len > 0 {
        lengths.push(len);
    }
    lengths
}

/// The outcome of an append over several conversations, from each conversation's messages'
/// indices (into the appended slice, in the order they were written) with how many of them
/// (a prefix) were stored and the error that stopped the rest, if any.
fn append_outcome(parts: Vec<(Vec<usize>, usize, Option<StoreError>)>) -> Result<(), AppendError> {
    let mut stored = Vec::new();
    let mut error = None;
    for (indices, stored_count, failure) in parts {
        stored.extend_from_slice(&indices[..stored_count.min(indices.len())]);
        if let Some(e) = failure {
            error.get_or_insert(e);
        }
    }
    match error {
        None => Ok(()),
        Some(error) => {
            stored.sort_unstable();
            Err(AppendError { error, stored })
        }
    }
}

impl CassandraStore {
    /// A store that connects in the background, retrying with backoff (1 s doubling to 30 s)
    /// and logging why until it succeeds and finds the expected schema.
    pub fn start(config: CassandraConfig) -> CassandraStore {
        let store = CassandraStore {
            connected: Arc::new(OnceLock::new()),
            last_error: Arc::new(Mutex::new("connecting to Cassandra".into())),
        };
        let background = store.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                match CassandraStore::connect_checked(&config).await {
                    Ok(c) => {
                        let _ = background.connected.set(Arc::new(c));
                        tracing::info!(nodes = ?config.nodes, keyspace = %config.keyspace, "connected to Cassandra");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "Cassandra not ready");
                        *background.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        store
    }

    /// Connects now (tests, `schema apply`): fails if Cassandra or the schema is not there.
    pub async fn connect(config: &CassandraConfig) -> StoreResult<CassandraStore> {
        let c = CassandraStore::connect_checked(config).await?;
        let store = CassandraStore {
            connected: Arc::new(OnceLock::new()),
            last_error: Arc::new(Mutex::new(String::new())),
        };
        let _ = store.connected.set(Arc::new(c));
        Ok(store)
    }

    async fn connect_checked(config: &CassandraConfig) -> StoreResult<Connected> {
        let session = connect(config).await?;
        let version: Option<(i32,)> = session
            .query_unpaged(
                format!("SELECT version FROM {}.schema_version WHERE id = 1", config.keyspace),
                &[],
            )
            .await
            .ok()
            .and_then(|r| r.into_rows_result().ok())
            .and_then(|r| r.maybe_first_row::<(i32,)>().ok().flatten());
        match version {
            Some((v,)) if v == SCHEMA_VERSION => {}
            Some((v,)) => {
                return Err(unavailable(format!(
                    "keyspace {} has schema version {v}, this build needs {SCHEMA_VERSION}: run `switchboard schema apply`",
                    config.keyspace
                )));
            }
            None => {
                return Err(unavailable(format!(
                    "keyspace {} has no switchboard schema: run `switchboard schema apply`",
                    config.keyspace
                )));
            }
        }
        let st = Statements::prepare(&session, &config.keyspace).await?;
        let gst = groups::GroupStatements::prepare(&session, &config.keyspace).await?;
        Ok(Connected { session, st, gst, known_buckets: Mutex::new(std::collections::HashSet::new()) })
    }

    fn c(&self) -> StoreResult<Arc<Connected>> {
        self.connected.get().cloned().ok_or_else(|| {
            StoreError::Unavailable(self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone())
        })
    }
}

impl Connected {
    async fn rows<R>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self.session.execute_unpaged(st, values).await.map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        rows.rows::<R>()
            .map_err(unavailable)?
            .collect::<Result<Vec<R>, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// All rows of a query that may be long (a member list, a user's conversations), fetched
    /// page by page by the driver.
    async fn paged_rows<R>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Unpin,
    {
        use futures_util::TryStreamExt;
        let pager = self.session.execute_iter(st.clone(), values).await.map_err(unavailable)?;
        pager.rows_stream::<R>().map_err(unavailable)?.try_collect().await.map_err(unavailable)
    }

    async fn run(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<()> {
        self.session.execute_unpaged(st, values).await.map_err(unavailable)?;
        Ok(())
    }

    /// The highest stored seq: the last message of the highest non-empty recorded bucket. A
    /// bucket is recorded before its first message is written, so an append that failed on the
    /// first message of a bucket leaves the newest recorded bucket empty; the walk goes down
    /// past such buckets (in practice at most one) instead of answering 0.
    async fn last_seq(&self, id: ConversationId) -> StoreResult<u64> {
        let mut below: Option<i64> = None;
        loop {
            let bucket = match below {
                None => self.rows::<(i64,)>(&self.st.newest_bucket, (id.0,)).await?,
                Some(b) => self.rows::<(i64,)>(&self.st.bucket_below, (id.0, b)).await?,
            };
            let Some((bucket,)) = bucket.into_iter().next() else { return Ok(0) };
            // A bucket fenced by a takeover but not written yet holds only its static column:
            // its row has no seq.
            let last = self.rows::<(Option<i64>,)>(&self.st.last_in_bucket, (id.0, bucket)).await?;
            if let Some((Some(seq),)) = last.first() {
                return Ok(*seq as u64);
            }
            below = Some(bucket);
        }
    }

    async fn message_at(&self, conversation: ConversationId, seq: u64) -> StoreResult<Option<StoredMessage>> {
        let rows = self
            .rows::<MessageRow>(&self.st.message_at, (conversation.0, bucket_of(seq), seq as i64))
            .await?;
        Ok(rows.into_iter().next().map(message_from_row))
    }

    async fn by_client_id(
        &self,
        conversation: ConversationId,
        author: UserId,
        client_msg_id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        let rows = self.rows::<(i64,)>(&self.st.client_id, (conversation.0, author.0, client_msg_id)).await?;
        let Some((seq,)) = rows.into_iter().next() else { return Ok(None) };
        // The id row is written before the message: it counts only if that message is stored.
        Ok(self
            .message_at(conversation, seq as u64)
            .await?
            .filter(|m| m.author_id == author && m.client_msg_id == client_msg_id))
    }

    /// One conversation's part of an append: client ids first, then the messages in seq order
    /// as single-partition batches (atomic within a partition; `chunk_lengths`), one after
    /// another. A failure stops the rest, so what is stored is always a gapless prefix: returns
    /// its length (the messages of the chunks that succeeded) and the error, if any. A chunk
    /// that failed ambiguously (a timeout) may be stored all the same; it is not counted, and a
    /// retry with the same client ids or a reload of `last_seq` finds it.
    async fn append_conversation(&self, messages: &[&StoredMessage]) -> (usize, Option<StoreError>) {
        let ids = try_join_all(messages.iter().map(|m| {
            self.run(
                &self.st.insert_client_id,
                (
                    m.conversation_id.0,
                    m.author_id.0,
                    m.client_msg_id.as_str(),
                    m.seq as i64,
                    client_id_timestamp(m),
                ),
            )
        }))
        .await;
        if let Err(e) = ids {
            return (0, Some(e));
        }
        let mut stored = 0;
        for len in chunk_lengths(messages) {
            if let Err(e) = self.write_chunk(&messages[stored..stored + len]).await {
                return (stored, Some(e));
            }
            stored += len;
        }
        (stored, None)
    }

    /// Messages of one partition in one batch. The bucket is recorded first, so every bucket
    /// holding a message is recorded (`last_seq` relies on it); recording it after the batch
    /// could hide stored messages from `last_seq` if that second write failed.
    async fn write_chunk(&self, rows: &[&StoredMessage]) -> StoreResult<()> {
        let bucket = bucket_of(rows[0].seq);
        let conversation = rows[0].conversation_id.0;
        let known =
            self.known_buckets.lock().unwrap_or_else(|p| p.into_inner()).contains(&(conversation, bucket));
        if !known {
            self.run(&self.st.insert_bucket, (conversation, bucket)).await?;
            let mut known_buckets = self.known_buckets.lock().unwrap_or_else(|p| p.into_inner());
            if known_buckets.len() >= KNOWN_BUCKETS_MAX {
                known_buckets.clear();
            }
            known_buckets.insert((conversation, bucket));
        }
        let epoch = rows[0].epoch;
        if epoch > 0 {
            return self.write_fenced_chunk(rows, bucket).await;
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let mut values = Vec::with_capacity(rows.len());
        for m in rows {
            batch.append_statement(self.st.insert_message.clone());
            values.push(message_values(bucket, m));
        }
        self.session.batch(&batch, values).await.map_err(unavailable)?;
        Ok(())
    }

    /// A chunk written only while its epoch owns the partition: one conditional batch (a
    /// Paxos round in the messages partition) whose condition is the static `owner_epoch`. The
    /// first write into a bucket nobody has fenced claims it (`owner_epoch = null`).
    async fn write_fenced_chunk(&self, rows: &[&StoredMessage], bucket: i64) -> StoreResult<()> {
        let epoch = rows[0].epoch as i64;
        let conversation = rows[0].conversation_id.0;
        let mut expect_empty = false;
        loop {
            let mut batch = Batch::new(BatchType::Unlogged);
            let condition = if expect_empty { &self.st.fence_empty } else { &self.st.hold_epoch };
            batch.append_statement(condition.clone());
            let mut values: Vec<Box<dyn scylla::serialize::row::SerializeRow + Send + Sync + '_>> =
                Vec::with_capacity(rows.len() + 1);
            if expect_empty {
                values.push(Box::new((epoch, conversation, bucket)));
            } else {
                values.push(Box::new((epoch, conversation, bucket, epoch)));
            }
            for m in rows {
                batch.append_statement(self.st.insert_message.clone());
                values.push(Box::new(message_values(bucket, m)));
            }
            let result = self.session.batch(&batch, values).await.map_err(unavailable)?;
            let outcome = lwt_outcome(result)?;
            if outcome.applied {
                return Ok(());
            }
            match outcome.column("owner_epoch") {
                None if !expect_empty => expect_empty = true,
                current => {
                    return Err(StoreError::Fenced(format!(
                        "conversation {conversation} bucket {bucket}: owner epoch is {current:?}, this write has {epoch}"
                    )));
                }
            }
        }
    }

    /// The conversation's current owner epoch (a serial read), if it was ever claimed.
    async fn owner_epoch(&self, conversation: ConversationId) -> StoreResult<Option<i64>> {
        let rows = self.rows::<(Option<i64>,)>(&self.st.owner_epoch, (conversation.0,)).await?;
        Ok(rows.into_iter().next().and_then(|(e,)| e))
    }

    /// Raises the conversation's owner epoch by one with a conditional write; retries when
    /// another claim won the race (it then bumps past that one).
    async fn bump_owner(&self, conversation: ConversationId, node: &str) -> StoreResult<i64> {
        for _ in 0..16 {
            let now = crate::model::now_millis();
            let (applied, epoch) = match self.owner_epoch(conversation).await? {
                None => {
                    let result = self
                        .session
                        .execute_unpaged(&self.st.insert_owner, (conversation.0, node, now))
                        .await;
                    (lwt_outcome(result.map_err(unavailable)?)?.applied, 1)
                }
                Some(e) => {
                    let values = (e + 1, node, now, conversation.0, e);
                    let result = self.session.execute_unpaged(&self.st.bump_owner, values).await;
                    (lwt_outcome(result.map_err(unavailable)?)?.applied, e + 1)
                }
            };
            if applied {
                return Ok(epoch);
            }
        }
        Err(unavailable(format!("conversation {conversation}: too many concurrent ownership claims")))
    }

    /// Sets `owner_epoch` of one bucket to `epoch` unless a newer epoch holds it.
    async fn fence_bucket(&self, conversation: ConversationId, bucket: i64, epoch: i64) -> StoreResult<()> {
        loop {
            let older = (epoch, conversation.0, bucket, epoch);
            let result =
                self.session.execute_unpaged(&self.st.fence_older, older).await.map_err(unavailable)?;
            let outcome = lwt_outcome(result)?;
            if outcome.applied {
                return Ok(());
            }
            match outcome.column("owner_epoch") {
                None => {
                    let empty = (epoch, conversation.0, bucket);
                    let result = self
                        .session
                        .execute_unpaged(&self.st.fence_empty, empty)
                        .await
                        .map_err(unavailable)?;
                    if lwt_outcome(result)?.applied {
                        return Ok(());
                    }
                    // Someone fenced it between our two writes: look again.
                }
                Some(CqlValue::BigInt(e)) if *e == epoch => return Ok(()),
                current => {
                    return Err(StoreError::Fenced(format!(
                        "conversation {conversation}: a newer owner holds bucket {bucket} ({current:?} > {epoch})"
                    )));
                }
            }
        }
    }

    /// Takeover: a new epoch, then the buckets a previous owner could still write (the bucket
    /// of the last stored seq and the next one) fenced with it, until `last_seq` is stable
    /// across a fence. A previous owner's next write carries a seq right after the last one it
    /// stored, so it falls into a fenced bucket and is refused.
    async fn claim(&self, conversation: ConversationId, node: &str) -> StoreResult<super::Claim> {
        let epoch = self.bump_owner(conversation, node).await?;
        let mut fenced: Vec<i64> = Vec::new();
        let mut last = self.last_seq(conversation).await?;
        loop {
            for bucket in [bucket_of(last), bucket_of(last + 1)] {
                if !fenced.contains(&bucket) {
                    self.fence_bucket(conversation, bucket, epoch).await?;
                    fenced.push(bucket);
                }
            }
            let now = self.last_seq(conversation).await?;
            if now == last {
                return Ok(super::Claim { epoch: epoch as u64, last_seq: last });
            }
            last = now;
        }
    }
}

/// The write timestamp of a client-id row: later epochs win, then higher seqs.
fn client_id_timestamp(m: &StoredMessage) -> i64 {
    ((m.epoch as i64) << 40) | (m.seq as i64 & ((1 << 40) - 1))
}

/// The bound values of `insert_message` for one message.
#[allow(clippy::type_complexity)]
fn message_values(
    bucket: i64,
    m: &StoredMessage,
) -> (i64, Option<i64>, Uuid, i64, Uuid, Uuid, Uuid, &str, &'static str, &[u8], i64, &Vec<String>) {
    (
        bucket,
        (m.epoch > 0).then_some(m.epoch as i64),
        m.conversation_id.0,
        m.seq as i64,
        m.message_id.0,
        m.author_id.0,
        m.device_id.0,
        m.client_msg_id.as_str(),
        kind_str(m.kind),
        m.sealed_body.as_slice(),
        m.ts,
        &m.attachments,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConversationId, DeviceId, MessageId};

    fn message(seq: u64, body: usize) -> StoredMessage {
        StoredMessage {
            conversation_id: ConversationId(Uuid::nil()),
            seq,
            message_id: MessageId(Uuid::nil()),
            author_id: UserId(Uuid::nil()),
            device_id: DeviceId(Uuid::nil()),
            client_msg_id: "c".into(),
            kind: MessageKind::Text,
            sealed_body: vec![0; body],
            ts: 0,
            attachments: vec![],
            epoch: 0,
        }
    }

    #[test]
    fn chunks_split_at_buckets_and_size_and_keep_large_messages_alone() {
        let ms: Vec<StoredMessage> = (BUCKET_SIZE - 2..BUCKET_SIZE + 2).map(|s| message(s, 10)).collect();
        let refs: Vec<&StoredMessage> = ms.iter().collect();
        assert_eq!(chunk_lengths(&refs), [2, 2]);
        let ms = [message(1, 10), message(2, BATCH_BYTES), message(3, 10), message(4, 10)];
        let refs: Vec<&StoredMessage> = ms.iter().collect();
        assert_eq!(chunk_lengths(&refs), [1, 1, 2]);
        let ms: Vec<StoredMessage> = (1..=100).map(|s| message(s, 1024)).collect();
        let refs: Vec<&StoredMessage> = ms.iter().collect();
        let lengths = chunk_lengths(&refs);
        assert_eq!(lengths.iter().sum::<usize>(), 100);
        assert!(lengths.iter().all(|&n| n * (1024 + 1 + 128) <= BATCH_BYTES), "{lengths:?}");
        assert_eq!(chunk_lengths(&[]), Vec::<usize>::new());
    }

    #[test]
    fn an_append_reports_the_stored_prefix_of_every_conversation() {
        let fail = || Some(StoreError::Unavailable("down".into()));
        assert!(append_outcome(vec![(vec![0, 2], 2, None), (vec![1], 1, None)]).is_ok());
        let e = append_outcome(vec![(vec![0, 3, 4], 1, fail()), (vec![1, 2], 2, None), (vec![5], 0, fail())])
            .unwrap_err();
        assert_eq!(e.stored, [0, 1, 2]);
        assert!(matches!(e.error, StoreError::Unavailable(_)));
        let e = append_outcome(vec![(vec![0, 1], 0, fail())]).unwrap_err();
        assert!(e.stored.is_empty());
    }
}
