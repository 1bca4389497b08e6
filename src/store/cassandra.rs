//! The Cassandra backend of `AccountStore` and `ChatStore` (tables in `schema.cql`), on the
//! `scylla` driver: prepared statements, token-aware routing in the local DC, configurable
//! consistency (default LOCAL_QUORUM), timeouts, and driver retries only for statements marked
//! idempotent. LWT only for username claims and direct-pair creation. The node connects in the
//! background with backoff; until connected and the schema matches, every call answers
//! `Unavailable` (so `/readyz` is false and sends get `store_unavailable`).

use super::{
    AccountStore, AppendError, DirectoryStore, MessageLog, MetaStore, ReceiptStore, StoreError, StoreResult,
};
use crate::config::StorageConfig;
use crate::model::{
    Conversation, ConversationId, ConversationKind, Device, DeviceId, Member, MessageId, MessageKind,
    StoredMessage, User, UserId, Watermarks, now_millis,
};
use async_trait::async_trait;
use futures_util::future::try_join_all;
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

/// The schema version `schema.cql` creates; the node refuses to serve with another.
pub const SCHEMA_VERSION: i32 = 1;
/// Messages per bucket (partition) of a conversation.
pub const BUCKET_SIZE: u64 = 4096;
/// Largest batch written at once (Cassandra's default batch_size_fail_threshold is 50 KiB).
const BATCH_BYTES: usize = 32 * 1024;
const SCHEMA: &str = include_str!("../../schema.cql");

fn bucket_of(seq: u64) -> i64 {
    (seq / BUCKET_SIZE) as i64
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
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
                    "unknown consistency {other:?} (one, local_one, quorum, local_quorum, all)"
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

/// Applies `schema.cql` (idempotent) and records its version.
pub async fn apply_schema(session: &Session, config: &CassandraConfig) -> StoreResult<()> {
    let text = SCHEMA.replace("{keyspace}", &config.keyspace).replace("{replication}", &config.replication);
    let without_comments: String =
        text.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    for statement in without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        session.query_unpaged(statement, &[]).await.map_err(|e| unavailable(format!("{statement}: {e}")))?;
    }
    session.await_schema_agreement().await.map_err(unavailable)?;
    session
        .query_unpaged(
            format!(
                "INSERT INTO {}.schema_version (id, version, applied_at) VALUES (1, ?, ?)",
                config.keyspace
            ),
            (SCHEMA_VERSION, now_millis()),
        )
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// `switchboard schema apply`: connects with the configured settings and applies the schema.
pub fn apply_schema_cli(config: &crate::config::Config) -> Result<String, String> {
    let c = CassandraConfig::from_storage(&config.storage)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let session = connect(&c).await.map_err(|e| e.to_string())?;
        apply_schema(&session, &c).await.map_err(|e| e.to_string())?;
        Ok(format!(
            "schema version {SCHEMA_VERSION} applied to keyspace {} on {}",
            c.keyspace,
            c.nodes.join(",")
        ))
    })
}

/// Every statement the store runs, prepared once per session.
struct Statements {
    schema_version: PreparedStatement,
    claim_username: PreparedStatement,
    insert_user: PreparedStatement,
    insert_credentials: PreparedStatement,
    user: PreparedStatement,
    username: PreparedStatement,
    credentials: PreparedStatement,
    insert_device: PreparedStatement,
    insert_token: PreparedStatement,
    token: PreparedStatement,
    device: PreparedStatement,
    revoke_device: PreparedStatement,
    delete_token: PreparedStatement,
    insert_conversation: PreparedStatement,
    claim_pair: PreparedStatement,
    pair: PreparedStatement,
    conversation: PreparedStatement,
    insert_member: PreparedStatement,
    insert_user_conversation: PreparedStatement,
    members: PreparedStatement,
    member: PreparedStatement,
    user_conversations: PreparedStatement,
    newest_bucket: PreparedStatement,
    last_in_bucket: PreparedStatement,
    insert_bucket: PreparedStatement,
    insert_message: PreparedStatement,
    insert_client_id: PreparedStatement,
    client_id: PreparedStatement,
    message_at: PreparedStatement,
    after_in_bucket: PreparedStatement,
    before_in_bucket: PreparedStatement,
    set_delivered: PreparedStatement,
    set_read: PreparedStatement,
}

const MESSAGE_COLUMNS: &str = "conversation_id, seq, message_id, author_id, device_id, client_msg_id, kind, sealed_body, ts, attachments";

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> StoreResult<Statements> {
        let p = |cql: String, idempotent: bool| async move {
            let mut s =
                session.prepare(cql.clone()).await.map_err(|e| unavailable(format!("prepare {cql}: {e}")))?;
            s.set_is_idempotent(idempotent);
            Ok::<_, StoreError>(s)
        };
        Ok(Statements {
            schema_version: p(format!("SELECT version FROM {ks}.schema_version WHERE id = 1"), true).await?,
            claim_username: p(format!("INSERT INTO {ks}.usernames (username, user_id) VALUES (?, ?) IF NOT EXISTS"), false).await?,
            insert_user: p(format!("INSERT INTO {ks}.users (user_id, username, created_at) VALUES (?, ?, ?)"), true).await?,
            insert_credentials: p(format!("INSERT INTO {ks}.credentials (user_id, password_hash) VALUES (?, ?)"), true).await?,
            user: p(format!("SELECT user_id, username, created_at FROM {ks}.users WHERE user_id = ?"), true).await?,
            username: p(format!("SELECT user_id FROM {ks}.usernames WHERE username = ?"), true).await?,
            credentials: p(format!("SELECT password_hash FROM {ks}.credentials WHERE user_id = ?"), true).await?,
            insert_device: p(
                format!("INSERT INTO {ks}.devices (device_id, user_id, name, created_at, revoked, token_hash) VALUES (?, ?, ?, ?, ?, ?)"),
                true,
            )
            .await?,
            insert_token: p(format!("INSERT INTO {ks}.tokens (token_hash, device_id) VALUES (?, ?)"), true).await?,
            token: p(format!("SELECT device_id FROM {ks}.tokens WHERE token_hash = ?"), true).await?,
            device: p(
                format!("SELECT device_id, user_id, name, created_at, revoked, token_hash FROM {ks}.devices WHERE device_id = ?"),
                true,
            )
            .await?,
            revoke_device: p(format!("UPDATE {ks}.devices SET revoked = true WHERE device_id = ?"), true).await?,
            delete_token: p(format!("DELETE FROM {ks}.tokens WHERE token_hash = ?"), true).await?,
            insert_conversation: p(
                format!("INSERT INTO {ks}.conversations (conversation_id, kind, title, members, wrapped_key, created_at) VALUES (?, ?, ?, ?, ?, ?)"),
                true,
            )
            .await?,
            claim_pair: p(
                format!("INSERT INTO {ks}.direct_pairs (user_lo, user_hi, conversation_id) VALUES (?, ?, ?) IF NOT EXISTS"),
                false,
            )
            .await?,
            pair: p(format!("SELECT conversation_id FROM {ks}.direct_pairs WHERE user_lo = ? AND user_hi = ?"), true).await?,
            conversation: p(
                format!("SELECT conversation_id, kind, title, members, wrapped_key, created_at FROM {ks}.conversations WHERE conversation_id = ?"),
                true,
            )
            .await?,
            insert_member: p(format!("INSERT INTO {ks}.members (conversation_id, user_id) VALUES (?, ?)"), true).await?,
            insert_user_conversation: p(
                format!("INSERT INTO {ks}.user_conversations (user_id, conversation_id) VALUES (?, ?)"),
                true,
            )
            .await?,
            members: p(format!("SELECT user_id, delivered_seq, read_seq FROM {ks}.members WHERE conversation_id = ?"), true).await?,
            member: p(
                format!("SELECT delivered_seq, read_seq FROM {ks}.members WHERE conversation_id = ? AND user_id = ?"),
                true,
            )
            .await?,
            user_conversations: p(format!("SELECT conversation_id FROM {ks}.user_conversations WHERE user_id = ?"), true).await?,
            newest_bucket: p(format!("SELECT bucket FROM {ks}.conversation_buckets WHERE conversation_id = ? LIMIT 1"), true).await?,
            last_in_bucket: p(
                format!("SELECT seq FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? ORDER BY seq DESC LIMIT 1"),
                true,
            )
            .await?,
            insert_bucket: p(format!("INSERT INTO {ks}.conversation_buckets (conversation_id, bucket) VALUES (?, ?)"), true).await?,
            insert_message: p(
                format!("INSERT INTO {ks}.messages (bucket, {MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                true,
            )
            .await?,
            insert_client_id: p(
                format!("INSERT INTO {ks}.client_ids (conversation_id, author_id, client_msg_id, seq) VALUES (?, ?, ?, ?)"),
                true,
            )
            .await?,
            client_id: p(
                format!("SELECT seq FROM {ks}.client_ids WHERE conversation_id = ? AND author_id = ? AND client_msg_id = ?"),
                true,
            )
            .await?,
            message_at: p(
                format!("SELECT {MESSAGE_COLUMNS} FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq = ?"),
                true,
            )
            .await?,
            after_in_bucket: p(
                format!("SELECT {MESSAGE_COLUMNS} FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq > ? ORDER BY seq ASC LIMIT ?"),
                true,
            )
            .await?,
            before_in_bucket: p(
                format!("SELECT {MESSAGE_COLUMNS} FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq < ? ORDER BY seq DESC LIMIT ?"),
                true,
            )
            .await?,
            set_delivered: p(
                format!("UPDATE {ks}.members USING TIMESTAMP ? SET delivered_seq = ? WHERE conversation_id = ? AND user_id = ?"),
                true,
            )
            .await?,
            set_read: p(
                format!("UPDATE {ks}.members USING TIMESTAMP ? SET read_seq = ? WHERE conversation_id = ? AND user_id = ?"),
                true,
            )
            .await?,
        })
    }
}

struct Connected {
    session: Session,
    st: Statements,
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
    }
}

fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text => "text",
        MessageKind::System => "system",
    }
}

/// Whether an LWT applied, and the existing row's values when it did not.
fn lwt_outcome(result: scylla::response::query_result::QueryResult) -> StoreResult<(bool, Row)> {
    let rows = result.into_rows_result().map_err(unavailable)?;
    let row: Row = rows.first_row().map_err(unavailable)?;
    let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
    Ok((applied, row))
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
        Ok(Connected { session, st, known_buckets: Mutex::new(std::collections::HashSet::new()) })
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

    async fn last_seq(&self, id: ConversationId) -> StoreResult<u64> {
        let Some((bucket,)) = self.rows::<(i64,)>(&self.st.newest_bucket, (id.0,)).await?.into_iter().next()
        else {
            return Ok(0);
        };
        let last = self.rows::<(i64,)>(&self.st.last_in_bucket, (id.0, bucket)).await?;
        Ok(last.first().map(|(s,)| *s as u64).unwrap_or(0))
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
    /// as single-partition batches (atomic within a partition), one after another, each at most
    /// `BATCH_BYTES` (Cassandra refuses large batches). A failure stops the rest, so what is
    /// stored is always a gapless prefix.
    async fn append_conversation(&self, messages: &[&StoredMessage]) -> StoreResult<()> {
        try_join_all(messages.iter().map(|m| {
            self.run(
                &self.st.insert_client_id,
                (m.conversation_id.0, m.author_id.0, m.client_msg_id.as_str(), m.seq as i64),
            )
        }))
        .await?;
        let mut chunk: Vec<&StoredMessage> = Vec::new();
        let mut chunk_bytes = 0;
        for m in messages {
            let size = m.sealed_body.len() + m.client_msg_id.len() + 128;
            let same_bucket = chunk.first().is_none_or(|first| bucket_of(first.seq) == bucket_of(m.seq));
            if !chunk.is_empty() && (!same_bucket || chunk_bytes + size > BATCH_BYTES) {
                self.write_chunk(&chunk).await?;
                chunk.clear();
                chunk_bytes = 0;
            }
            chunk.push(m);
            chunk_bytes += size;
        }
        if !chunk.is_empty() {
            self.write_chunk(&chunk).await?;
        }
        Ok(())
    }

    /// Messages of one partition in one batch; the bucket is recorded first.
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
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let mut values = Vec::with_capacity(rows.len());
        for m in rows {
            batch.append_statement(self.st.insert_message.clone());
            values.push((
                bucket,
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
            ));
        }
        self.session.batch(&batch, values).await.map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl AccountStore for CassandraStore {
    async fn create_user(&self, user: &User, password_hash: &str) -> StoreResult<()> {
        let c = self.c()?;
        let result = c
            .session
            .execute_unpaged(&c.st.claim_username, (user.username.to_lowercase(), user.id.0))
            .await
            .map_err(unavailable)?;
        let (applied, _) = lwt_outcome(result)?;
        if !applied {
            return Err(StoreError::Conflict(format!("username {} is taken", user.username)));
        }
        c.run(&c.st.insert_credentials, (user.id.0, password_hash)).await?;
        c.run(&c.st.insert_user, (user.id.0, user.username.as_str(), user.created_at)).await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        let c = self.c()?;
        let rows = c.rows::<(Uuid, String, i64)>(&c.st.user, (id.0,)).await?;
        Ok(rows.into_iter().next().map(|(id, username, created_at)| User {
            id: UserId(id),
            username,
            created_at,
        }))
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        let c = self.c()?;
        let rows = c.rows::<(Uuid,)>(&c.st.username, (username.to_lowercase(),)).await?;
        match rows.into_iter().next() {
            Some((id,)) => self.user(UserId(id)).await,
            None => Ok(None),
        }
    }

    async fn password_hash(&self, id: UserId) -> StoreResult<Option<String>> {
        let c = self.c()?;
        Ok(c.rows::<(String,)>(&c.st.credentials, (id.0,)).await?.into_iter().next().map(|(h,)| h))
    }

    async fn create_device(&self, device: &Device, token_hash: &[u8; 32]) -> StoreResult<()> {
        let c = self.c()?;
        c.run(
            &c.st.insert_device,
            (
                device.id.0,
                device.user_id.0,
                device.name.as_str(),
                device.created_at,
                device.revoked,
                token_hash.as_slice(),
            ),
        )
        .await?;
        c.run(&c.st.insert_token, (token_hash.as_slice(), device.id.0)).await
    }

    async fn device_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Device>> {
        let c = self.c()?;
        let Some((device_id,)) =
            c.rows::<(Uuid,)>(&c.st.token, (token_hash.as_slice(),)).await?.into_iter().next()
        else {
            return Ok(None);
        };
        let rows = c.rows::<(Uuid, Uuid, String, i64, bool, Vec<u8>)>(&c.st.device, (device_id,)).await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(id, user_id, name, created_at, revoked, _)| Device {
                id: DeviceId(id),
                user_id: UserId(user_id),
                name,
                created_at,
                revoked,
            })
            .filter(|d| !d.revoked))
    }

    async fn revoke_device(&self, id: DeviceId) -> StoreResult<()> {
        let c = self.c()?;
        let rows = c.rows::<(Uuid, Uuid, String, i64, bool, Vec<u8>)>(&c.st.device, (id.0,)).await?;
        let Some((_, _, _, _, _, token_hash)) = rows.into_iter().next() else { return Ok(()) };
        c.run(&c.st.revoke_device, (id.0,)).await?;
        c.run(&c.st.delete_token, (token_hash,)).await
    }

    async fn touch_device(&self, _id: DeviceId, _at: crate::model::Millis) -> StoreResult<()> {
        // TODO(store helper): device_seen table
        Ok(())
    }

    async fn device_last_used(&self, _id: DeviceId) -> StoreResult<Option<crate::model::Millis>> {
        Ok(None)
    }
}

#[async_trait]
impl DirectoryStore for CassandraStore {
    async fn create_direct(&self, conversation: &Conversation) -> StoreResult<Conversation> {
        let [a, b] = conversation.members[..] else {
            return Err(StoreError::Conflict("a direct conversation has two members".into()));
        };
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let c = self.c()?;
        // The conversation row first: whichever claim wins, its row is complete.
        c.run(
            &c.st.insert_conversation,
            (
                conversation.id.0,
                "direct",
                conversation.title.as_deref(),
                conversation.members.iter().map(|m| m.0).collect::<Vec<Uuid>>(),
                conversation.wrapped_key.as_slice(),
                conversation.created_at,
            ),
        )
        .await?;
        let result = c
            .session
            .execute_unpaged(&c.st.claim_pair, (lo.0, hi.0, conversation.id.0))
            .await
            .map_err(unavailable)?;
        let (applied, row) = lwt_outcome(result)?;
        let id = if applied {
            conversation.id
        } else {
            // Not applied: the row holds [applied], user_lo, user_hi, conversation_id.
            match row.columns.get(3) {
                Some(Some(CqlValue::Uuid(id))) => ConversationId(*id),
                _ => return Err(StoreError::Corrupt("direct pair without a conversation id".into())),
            }
        };
        // Idempotent, and done by every caller: a winner that died after its claim is completed
        // by the next one.
        for member in [lo, hi] {
            c.run(&c.st.insert_member, (id.0, member.0)).await?;
            c.run(&c.st.insert_user_conversation, (member.0, id.0)).await?;
        }
        self.conversation(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("claimed pair without its conversation".into()))
    }

    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<Conversation>> {
        let c = self.c()?;
        let rows = c
            .rows::<(Uuid, String, Option<String>, Option<Vec<Uuid>>, Vec<u8>, i64)>(
                &c.st.conversation,
                (id.0,),
            )
            .await?;
        Ok(rows.into_iter().next().map(|(id, kind, title, members, wrapped_key, created_at)| Conversation {
            id: ConversationId(id),
            kind: if kind == "group" { ConversationKind::Group } else { ConversationKind::Direct },
            title,
            members: members.unwrap_or_default().into_iter().map(UserId).collect(),
            wrapped_key,
            created_at,
        }))
    }

    async fn direct_between(&self, a: UserId, b: UserId) -> StoreResult<Option<ConversationId>> {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let c = self.c()?;
        Ok(c.rows::<(Uuid,)>(&c.st.pair, (lo.0, hi.0))
            .await?
            .into_iter()
            .next()
            .map(|(id,)| ConversationId(id)))
    }

    async fn members(&self, id: ConversationId) -> StoreResult<Vec<Member>> {
        let c = self.c()?;
        let rows = c.paged_rows::<(Uuid, Option<i64>, Option<i64>)>(&c.st.members, (id.0,)).await?;
        Ok(rows
            .into_iter()
            .map(|(user, delivered, read)| Member {
                user_id: UserId(user),
                watermarks: Watermarks {
                    delivered_seq: delivered.unwrap_or(0) as u64,
                    read_seq: read.unwrap_or(0) as u64,
                },
            })
            .collect())
    }

    async fn user_conversations(&self, user: UserId) -> StoreResult<Vec<ConversationId>> {
        let c = self.c()?;
        Ok(c.paged_rows::<(Uuid,)>(&c.st.user_conversations, (user.0,))
            .await?
            .into_iter()
            .map(|(id,)| ConversationId(id))
            .collect())
    }
}

#[async_trait]
impl MessageLog for CassandraStore {
    async fn last_seq(&self, id: ConversationId) -> StoreResult<u64> {
        self.c()?.last_seq(id).await
    }

    async fn append(&self, messages: &[StoredMessage]) -> Result<(), AppendError> {
        let c = self.c()?;
        let mut by_conversation: BTreeMap<ConversationId, Vec<&StoredMessage>> = BTreeMap::new();
        for m in messages {
            by_conversation.entry(m.conversation_id).or_default().push(m);
        }
        try_join_all(by_conversation.values().map(|ms| c.append_conversation(ms))).await?;
        Ok(())
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        author: UserId,
        client_msg_id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        self.c()?.by_client_id(conversation, author, client_msg_id).await
    }

    async fn messages_by_client_ids(
        &self,
        keys: &[(ConversationId, UserId, String)],
    ) -> StoreResult<Vec<Option<StoredMessage>>> {
        let c = self.c()?;
        try_join_all(keys.iter().map(|(conv, author, id)| c.by_client_id(*conv, *author, id))).await
    }

    async fn messages_after(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let c = self.c()?;
        let last = c.last_seq(conversation).await?;
        let mut out = Vec::new();
        let mut bucket = bucket_of(after.saturating_add(1));
        let mut cursor = after as i64;
        while out.len() < limit && bucket <= bucket_of(last) && after < last {
            let want = (limit - out.len()) as i32;
            let rows =
                c.rows::<MessageRow>(&c.st.after_in_bucket, (conversation.0, bucket, cursor, want)).await?;
            for r in rows {
                let m = message_from_row(r);
                cursor = m.seq as i64;
                out.push(m);
            }
            bucket += 1;
        }
        Ok(out)
    }

    async fn messages_before(
        &self,
        conversation: ConversationId,
        before: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let c = self.c()?;
        let last = c.last_seq(conversation).await?;
        if before <= 1 || last == 0 {
            return Ok(Vec::new());
        }
        let top = before.saturating_sub(1).min(last);
        let mut out = Vec::new();
        let mut bucket = bucket_of(top);
        let cursor = (top + 1) as i64;
        while out.len() < limit && bucket >= 0 {
            let want = (limit - out.len()) as i32;
            let rows =
                c.rows::<MessageRow>(&c.st.before_in_bucket, (conversation.0, bucket, cursor, want)).await?;
            out.extend(rows.into_iter().map(message_from_row));
            bucket -= 1;
        }
        out.reverse();
        Ok(out)
    }

    async fn ping(&self) -> StoreResult<()> {
        let c = self.c()?;
        let rows = c.rows::<(i32,)>(&c.st.schema_version, ()).await?;
        match rows.first() {
            Some((v,)) if *v == SCHEMA_VERSION => Ok(()),
            _ => Err(unavailable("schema missing or old: run `switchboard schema apply`")),
        }
    }
}

#[async_trait]
impl ReceiptStore for CassandraStore {
    async fn advance_watermarks(
        &self,
        conversation: ConversationId,
        user: UserId,
        to: Watermarks,
    ) -> StoreResult<Option<(Watermarks, bool)>> {
        let c = self.c()?;
        let rows = c.rows::<(Option<i64>, Option<i64>)>(&c.st.member, (conversation.0, user.0)).await?;
        let Some((delivered, read)) = rows.into_iter().next() else { return Ok(None) };
        let current =
            Watermarks { delivered_seq: delivered.unwrap_or(0) as u64, read_seq: read.unwrap_or(0) as u64 };
        let target = Watermarks { delivered_seq: to.delivered_seq.max(to.read_seq), read_seq: to.read_seq };
        let next = current.merge(target);
        // The write timestamp is the seq itself: last-write-wins then keeps the highest value
        // whatever order concurrent or retried updates arrive in.
        if next.delivered_seq > current.delivered_seq {
            let v = next.delivered_seq as i64;
            c.run(&c.st.set_delivered, (v, v, conversation.0, user.0)).await?;
        }
        if next.read_seq > current.read_seq {
            let v = next.read_seq as i64;
            c.run(&c.st.set_read, (v, v, conversation.0, user.0)).await?;
        }
        Ok(Some((next, next != current)))
    }
}

#[async_trait]
impl MetaStore for CassandraStore {
    async fn meta(&self, _key: &str) -> StoreResult<Option<Vec<u8>>> {
        // TODO(store helper): meta table
        Ok(None)
    }

    async fn init_meta(&self, _key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        Ok(value.to_vec())
    }
}
