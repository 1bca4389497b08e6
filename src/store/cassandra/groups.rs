//! Groups on Cassandra: member records (role, readable window) as columns of `members`, rotated
//! keys in `conversation_keys`, the title and deletion on the conversation row, pending updates
//! in `group_pending` (one row per attempt).
//! Every group write carries `USING TIMESTAMP` derived from the seq of its change
//! (`change_ts`), so last-write-wins orders them by seq: a replayed or late older change never
//! overwrites a newer one, and each write is idempotent.

use super::{Connected, unavailable};
use crate::model::{
    Conversation, ConversationId, GroupUpdate, KeyEpoch, Member, MemberRecord, Role, UserId, Watermarks,
};
use crate::store::{StoreError, StoreResult};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

/// Member rows written per (single-partition, unlogged) batch: keeps a batch under Cassandra's
/// size warning whatever the group's size.
const RECORDS_PER_BATCH: usize = 50;

/// The write timestamp of the change at `seq` (creation is seq 0).
fn change_ts(seq: u64) -> i64 {
    ((seq + 1) * 2) as i64
}

pub(super) struct GroupStatements {
    insert_group: PreparedStatement,
    set_title: PreparedStatement,
    set_deleted: PreparedStatement,
    insert_pending: PreparedStatement,
    delete_pending: PreparedStatement,
    pending: PreparedStatement,
    deleted: PreparedStatement,
    keys: PreparedStatement,
    insert_key: PreparedStatement,
    write_record: PreparedStatement,
    members: PreparedStatement,
    member: PreparedStatement,
    insert_user_conversation: PreparedStatement,
}

impl GroupStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> StoreResult<GroupStatements> {
        let p = |cql: String| async move {
            let mut s =
                session.prepare(cql.clone()).await.map_err(|e| unavailable(format!("prepare {cql}: {e}")))?;
            s.set_is_idempotent(true);
            Ok::<_, StoreError>(s)
        };
        Ok(GroupStatements {
            insert_group: p(format!(
                "INSERT INTO {ks}.conversations (conversation_id, kind, wrapped_key, created_at) VALUES (?, 'group', ?, ?)"
            ))
            .await?,
            set_title: p(format!("UPDATE {ks}.conversations USING TIMESTAMP ? SET title = ? WHERE conversation_id = ?"))
                .await?,
            set_deleted: p(format!(
                "UPDATE {ks}.conversations USING TIMESTAMP ? SET deleted = true WHERE conversation_id = ?"
            ))
            .await?,
            insert_pending: p(format!(
                "INSERT INTO {ks}.group_pending (conversation_id, seq, message_id, payload) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            delete_pending: p(format!(
                "DELETE FROM {ks}.group_pending WHERE conversation_id = ? AND seq = ? AND message_id = ?"
            ))
            .await?,
            pending: p(format!("SELECT payload FROM {ks}.group_pending WHERE conversation_id = ?")).await?,
            deleted: p(format!("SELECT deleted FROM {ks}.conversations WHERE conversation_id = ?")).await?,
            keys: p(format!("SELECT from_seq, wrapped_key FROM {ks}.conversation_keys WHERE conversation_id = ?"))
                .await?,
            insert_key: p(format!(
                "INSERT INTO {ks}.conversation_keys (conversation_id, from_seq, wrapped_key) VALUES (?, ?, ?)"
            ))
            .await?,
            write_record: p(format!(
                "UPDATE {ks}.members USING TIMESTAMP ? SET role = ?, since_seq = ?, until_seq = ?, at_seq = ? WHERE conversation_id = ? AND user_id = ?"
            ))
            .await?,
            members: p(format!(
                "SELECT user_id, delivered_seq, read_seq, role, since_seq, until_seq FROM {ks}.members WHERE conversation_id = ?"
            ))
            .await?,
            member: p(format!(
                "SELECT user_id, delivered_seq, read_seq, role, since_seq, until_seq FROM {ks}.members WHERE conversation_id = ? AND user_id = ?"
            ))
            .await?,
            insert_user_conversation: p(format!(
                "INSERT INTO {ks}.user_conversations (user_id, conversation_id) VALUES (?, ?)"
            ))
            .await?,
        })
    }
}

/// A `members` row: user, watermarks, and the record columns (null for a direct member).
type MemberRow = (Uuid, Option<i64>, Option<i64>, Option<String>, Option<i64>, Option<i64>);

fn member_of(row: MemberRow) -> Member {
    let (user, delivered, read, role, since, until) = row;
    let user_id = UserId(user);
    let record = match role.as_deref().and_then(Role::parse) {
        None => MemberRecord::direct(user_id),
        Some(role) => MemberRecord {
            user_id,
            role,
            since_seq: since.unwrap_or(0) as u64,
            until_seq: until.map(|u| u as u64),
            at_seq: 0,
        },
    };
    Member {
        user_id,
        watermarks: Watermarks {
            delivered_seq: delivered.unwrap_or(0) as u64,
            read_seq: read.unwrap_or(0) as u64,
        },
        record,
    }
}

impl Connected {
    pub(super) async fn group_members(&self, id: ConversationId) -> StoreResult<Vec<Member>> {
        Ok(self
            .paged_rows::<MemberRow>(&self.gst.members, (id.0,))
            .await?
            .into_iter()
            .map(member_of)
            .collect())
    }

    pub(super) async fn group_member(&self, id: ConversationId, user: UserId) -> StoreResult<Option<Member>> {
        Ok(self.rows::<MemberRow>(&self.gst.member, (id.0, user.0)).await?.into_iter().next().map(member_of))
    }

    /// Adds what a group keeps apart from its row's first columns: rotated keys, deletion.
    pub(super) async fn fill_group_fields(&self, conversation: &mut Conversation) -> StoreResult<()> {
        let id = conversation.id.0;
        let keys = self.paged_rows::<(i64, Vec<u8>)>(&self.gst.keys, (id,)).await?;
        conversation.rotated_keys = keys
            .into_iter()
            .map(|(from_seq, wrapped_key)| KeyEpoch { from_seq: from_seq as u64, wrapped_key })
            .collect();
        conversation.rotated_keys.sort_by_key(|k| k.from_seq);
        let deleted = self.rows::<(Option<bool>,)>(&self.gst.deleted, (id,)).await?;
        conversation.deleted = deleted.into_iter().next().and_then(|(d,)| d).unwrap_or(false);
        Ok(())
    }

    /// Member records, written in single-partition batches, then the members' conversation
    /// lists (other partitions, concurrently).
    async fn write_records(&self, id: ConversationId, seq: u64, records: &[MemberRecord]) -> StoreResult<()> {
        for chunk in records.chunks(RECORDS_PER_BATCH) {
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_is_idempotent(true);
            let mut values = Vec::with_capacity(chunk.len());
            for r in chunk {
                batch.append_statement(self.gst.write_record.clone());
                values.push((
                    change_ts(seq),
                    r.role.as_str(),
                    r.since_seq as i64,
                    r.until_seq.map(|u| u as i64),
                    r.at_seq as i64,
                    id.0,
                    r.user_id.0,
                ));
            }
            self.session.batch(&batch, values).await.map_err(unavailable)?;
        }
        let lists = records.iter().map(|r| self.run(&self.gst.insert_user_conversation, (r.user_id.0, id.0)));
        futures_util::future::try_join_all(lists).await?;
        Ok(())
    }

    pub(super) async fn create_group(
        &self,
        conversation: &Conversation,
        members: &[MemberRecord],
    ) -> StoreResult<()> {
        let id = conversation.id;
        self.run(
            &self.gst.insert_group,
            (id.0, conversation.wrapped_key.as_slice(), conversation.created_at),
        )
        .await?;
        self.run(&self.gst.set_title, (change_ts(0), conversation.title.as_deref(), id.0)).await?;
        self.write_records(id, 0, members).await
    }

    pub(super) async fn begin_group_update(
        &self,
        id: ConversationId,
        update: &GroupUpdate,
    ) -> StoreResult<()> {
        let bytes = postcard::to_stdvec(update).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.run(&self.gst.insert_pending, (id.0, update.seq as i64, update.message_id.0, bytes)).await
    }

    pub(super) async fn pending_group_updates(&self, id: ConversationId) -> StoreResult<Vec<GroupUpdate>> {
        let rows = self.paged_rows::<(Vec<u8>,)>(&self.gst.pending, (id.0,)).await?;
        rows.into_iter()
            .map(|(bytes,)| postcard::from_bytes(&bytes).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    pub(super) async fn apply_group_update(
        &self,
        id: ConversationId,
        update: &GroupUpdate,
    ) -> StoreResult<()> {
        self.write_records(id, update.seq, &update.members).await?;
        if let Some(title) = &update.title {
            self.run(&self.gst.set_title, (change_ts(update.seq), Some(title.as_str()), id.0)).await?;
        }
        if let Some(key) = &update.key {
            self.run(&self.gst.insert_key, (id.0, key.from_seq as i64, key.wrapped_key.as_slice())).await?;
        }
        if update.deleted {
            self.run(&self.gst.set_deleted, (change_ts(update.seq), id.0)).await?;
        }
        self.discard_group_update(id, update).await
    }

    /// Removes exactly this update's pending row (never another attempt's).
    pub(super) async fn discard_group_update(
        &self,
        id: ConversationId,
        update: &GroupUpdate,
    ) -> StoreResult<()> {
        self.run(&self.gst.delete_pending, (id.0, update.seq as i64, update.message_id.0)).await
    }
}
