//! Every CQL statement the Cassandra store runs, prepared once per session (`Statements`),
//! with whether the driver may retry it (idempotent).

use super::unavailable;
use crate::store::{StoreError, StoreResult};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

/// Every statement the store runs, prepared once per session.
pub(super) struct Statements {
    pub(super) schema_version: PreparedStatement,
    pub(super) claim_username: PreparedStatement,
    pub(super) reclaim_username: PreparedStatement,
    pub(super) user_exists: PreparedStatement,
    pub(super) delete_user: PreparedStatement,
    pub(super) delete_credentials: PreparedStatement,
    pub(super) touch_device: PreparedStatement,
    pub(super) mark_posted: PreparedStatement,
    pub(super) has_posted: PreparedStatement,
    pub(super) device_seen: PreparedStatement,
    pub(super) meta: PreparedStatement,
    pub(super) init_meta: PreparedStatement,
    pub(super) insert_user: PreparedStatement,
    pub(super) insert_credentials: PreparedStatement,
    pub(super) user: PreparedStatement,
    pub(super) username: PreparedStatement,
    pub(super) credentials: PreparedStatement,
    pub(super) insert_device: PreparedStatement,
    pub(super) insert_token: PreparedStatement,
    pub(super) token: PreparedStatement,
    pub(super) device: PreparedStatement,
    pub(super) revoke_device: PreparedStatement,
    pub(super) delete_token: PreparedStatement,
    pub(super) insert_conversation: PreparedStatement,
    pub(super) claim_pair: PreparedStatement,
    pub(super) pair: PreparedStatement,
    pub(super) conversation: PreparedStatement,
    pub(super) insert_member: PreparedStatement,
    pub(super) insert_user_conversation: PreparedStatement,
    pub(super) member: PreparedStatement,
    pub(super) user_conversations: PreparedStatement,
    pub(super) newest_bucket: PreparedStatement,
    pub(super) last_in_bucket: PreparedStatement,
    pub(super) bucket_below: PreparedStatement,
    pub(super) insert_bucket: PreparedStatement,
    pub(super) insert_message: PreparedStatement,
    pub(super) insert_client_id: PreparedStatement,
    pub(super) client_id: PreparedStatement,
    pub(super) message_at: PreparedStatement,
    pub(super) after_in_bucket: PreparedStatement,
    pub(super) before_in_bucket: PreparedStatement,
    pub(super) set_delivered: PreparedStatement,
    pub(super) set_read: PreparedStatement,
    pub(super) owner_epoch: PreparedStatement,
    pub(super) insert_owner: PreparedStatement,
    pub(super) bump_owner: PreparedStatement,
    pub(super) fence_older: PreparedStatement,
    pub(super) fence_empty: PreparedStatement,
    pub(super) hold_epoch: PreparedStatement,
}

pub(super) const MESSAGE_COLUMNS: &str = "conversation_id, seq, message_id, author_id, device_id, client_msg_id, kind, sealed_body, ts, attachments";

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> StoreResult<Statements> {
        let p = |cql: String, idempotent: bool| async move {
            let mut s =
                session.prepare(cql.clone()).await.map_err(|e| unavailable(format!("prepare {cql}: {e}")))?;
            s.set_is_idempotent(idempotent);
            Ok::<_, StoreError>(s)
        };
        Ok(Statements {
            schema_version: p(format!("SELECT version FROM {ks}.schema_version WHERE id = 1"), true).await?,
            claim_username: p(format!("INSERT INTO {ks}.usernames (username, user_id) VALUES (?, ?) IF NOT EXISTS"), false).await?,
            reclaim_username: p(
                format!("UPDATE {ks}.usernames SET user_id = ? WHERE username = ? IF user_id = ?"),
                false,
            )
            .await?,
            user_exists: p(format!("SELECT user_id FROM {ks}.users WHERE user_id = ?"), true).await?,
            delete_user: p(format!("DELETE FROM {ks}.users WHERE user_id = ?"), true).await?,
            delete_credentials: p(format!("DELETE FROM {ks}.credentials WHERE user_id = ?"), true).await?,
            touch_device: p(
                format!("INSERT INTO {ks}.device_seen (device_id, at) VALUES (?, ?) USING TIMESTAMP ?"),
                true,
            )
            .await?,
            device_seen: p(format!("SELECT at FROM {ks}.device_seen WHERE device_id = ?"), true).await?,
            mark_posted: p(format!("INSERT INTO {ks}.posters (conversation_id, user_id) VALUES (?, ?)"), true).await?,
            has_posted: p(
                format!("SELECT user_id FROM {ks}.posters WHERE conversation_id = ? AND user_id = ?"),
                true,
            )
            .await?,
            meta: p(format!("SELECT value FROM {ks}.meta WHERE key = ?"), true).await?,
            init_meta: p(format!("INSERT INTO {ks}.meta (key, value) VALUES (?, ?) IF NOT EXISTS"), false).await?,
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
            bucket_below: p(
                format!("SELECT bucket FROM {ks}.conversation_buckets WHERE conversation_id = ? AND bucket < ? LIMIT 1"),
                true,
            )
            .await?,
            insert_bucket: p(format!("INSERT INTO {ks}.conversation_buckets (conversation_id, bucket) VALUES (?, ?)"), true).await?,
            insert_message: p(
                format!("INSERT INTO {ks}.messages (bucket, epoch, {MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                true,
            )
            .await?,
            // Timestamped (epoch << 40 | seq): a stale owner's late write never replaces the
            // id a newer owner recorded, and a retry's newer seq wins over a failed attempt's.
            insert_client_id: p(
                format!("INSERT INTO {ks}.client_ids (conversation_id, author_id, client_msg_id, seq) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
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
            owner_epoch: {
                // A serial read sees every conditional write that was accepted, even one whose
                // commit is still in flight.
                let mut s = p(format!("SELECT epoch FROM {ks}.conversation_owners WHERE conversation_id = ?"), true).await?;
                s.set_consistency(scylla::frame::types::Consistency::LocalSerial);
                s
            },
            insert_owner: p(
                format!("INSERT INTO {ks}.conversation_owners (conversation_id, epoch, node, at) VALUES (?, 1, ?, ?) IF NOT EXISTS"),
                false,
            )
            .await?,
            bump_owner: p(
                format!("UPDATE {ks}.conversation_owners SET epoch = ?, node = ?, at = ? WHERE conversation_id = ? IF epoch = ?"),
                false,
            )
            .await?,
            fence_older: p(
                format!("UPDATE {ks}.messages SET owner_epoch = ? WHERE conversation_id = ? AND bucket = ? IF owner_epoch < ?"),
                false,
            )
            .await?,
            fence_empty: p(
                format!("UPDATE {ks}.messages SET owner_epoch = ? WHERE conversation_id = ? AND bucket = ? IF owner_epoch = null"),
                false,
            )
            .await?,
            hold_epoch: p(
                format!("UPDATE {ks}.messages SET owner_epoch = ? WHERE conversation_id = ? AND bucket = ? IF owner_epoch = ?"),
                false,
            )
            .await?,
        })
    }
}
