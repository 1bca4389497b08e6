//! The Cassandra schema: its version (`SCHEMA_VERSION`), the text of `schema.cql`, and
//! applying it (`apply_schema`, and `switchboard schema apply` through `apply_schema_cli`).

use super::{CassandraConfig, connect, unavailable};
use crate::model::now_millis;
use crate::store::StoreResult;
use scylla::client::session::Session;

/// The schema version `schema.cql` creates; the node refuses to serve with another.
/// 2 added `device_seen` and `meta`; every table is `CREATE ... IF NOT EXISTS`, so applying
/// the schema again upgrades a version 1 keyspace. 3 added the owner epochs (`messages.epoch`,
/// the static `messages.owner_epoch`, `conversation_owners`) for cluster fencing. 4 added
/// groups: member records on `members`, `conversations.deleted`, `conversation_keys`,
/// `group_pending`.
pub const SCHEMA_VERSION: i32 = 4;
const SCHEMA: &str = include_str!("../../../schema.cql");

/// Applies `schema.cql` (idempotent) and records its version.
pub async fn apply_schema(session: &Session, config: &CassandraConfig) -> StoreResult<()> {
    let text = SCHEMA.replace("{keyspace}", &config.keyspace).replace("{replication}", &config.replication);
    let without_comments: String =
        text.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    for statement in without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        session.query_unpaged(statement, &[]).await.map_err(|e| unavailable(format!("{statement}: {e}")))?;
        // Every node must know a keyspace or table before the next statement uses it (on a
        // fresh multi-node cluster the next one may go to a node that has not seen it yet).
        session.await_schema_agreement().await.map_err(unavailable)?;
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
