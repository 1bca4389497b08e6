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

/// How many times a statement refused for an unknown keyspace or table is tried again, 1 s apart.
const SCHEMA_RETRIES: u32 = 30;

/// A refusal that means "this node has not seen the keyspace or table yet", or a schema change
/// that took longer than the request timeout on a ring still settling. Every statement of the
/// schema is idempotent (`IF NOT EXISTS`), so trying again is safe.
fn not_yet_known(error: &str) -> bool {
    ["doesn't exist", "unconfigured table", "does not exist", "timeout", "timed out"]
        .iter()
        .any(|m| error.contains(m))
}

/// Applies `schema.cql` (idempotent) and records its version.
pub async fn apply_schema(session: &Session, config: &CassandraConfig) -> StoreResult<()> {
    let text = SCHEMA.replace("{keyspace}", &config.keyspace).replace("{replication}", &config.replication);
    let without_comments: String =
        text.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    for statement in without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        // Every node must know a keyspace or table before the next statement uses it (on a
        // fresh multi-node cluster the next one may go to a node that has not seen it yet).
        // Agreement is only among the nodes the coordinator knows: on a ring still forming
        // (a node just started, gossip not settled) a statement may reach a node that has not
        // heard of the keyspace, so such a refusal is retried while the ring converges.
        let mut attempt = 0;
        loop {
            match session.query_unpaged(statement, &[]).await {
                Ok(_) => break,
                Err(e) if attempt < SCHEMA_RETRIES && not_yet_known(&e.to_string()) => {
                    attempt += 1;
                    tracing::info!(attempt, error = %e, "schema not yet known everywhere; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    session.await_schema_agreement().await.map_err(unavailable)?;
                }
                Err(e) => return Err(unavailable(format!("{statement}: {e}"))),
            }
        }
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
