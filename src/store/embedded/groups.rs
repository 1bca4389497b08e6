//! The embedded store's group tables: member records (role and readable window), rotated
//! keys, the pending update of a group change and deleted groups. Each write is one atomic,
//! synced fjall batch under the read-modify-write lock.

use super::{Inner, encode, key2, unavailable};
use crate::model::{
    Conversation, ConversationId, GroupUpdate, KeyEpoch, Member, MemberRecord, UserId, Watermarks,
};
use crate::store::{StoreError, StoreResult};
use fjall::PersistMode;

fn key_epoch_key(conversation: ConversationId, from_seq: u64) -> [u8; 24] {
    super::message_key(conversation, from_seq)
}

/// A pending update's key: conversation, seq, message id (so records sort by seq).
fn pending_key(conversation: ConversationId, update: &GroupUpdate) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..24].copy_from_slice(&super::message_key(conversation, update.seq));
    k[24..].copy_from_slice(update.message_id.as_bytes());
    k
}

impl Inner {
    /// The record of a member whose `members` key is `key` (a direct member has none stored).
    pub(super) fn member_record(&self, key: &[u8], user_id: UserId) -> StoreResult<MemberRecord> {
        Ok(self.get::<MemberRecord>(&self.member_records, key)?.unwrap_or(MemberRecord::direct(user_id)))
    }

    pub(super) fn one_member(&self, id: ConversationId, user: UserId) -> StoreResult<Option<Member>> {
        let key = key2(id.as_bytes(), user.as_bytes());
        let Some(watermarks) = self.get::<Watermarks>(&self.members, &key)? else { return Ok(None) };
        Ok(Some(Member { user_id: user, watermarks, record: self.member_record(&key, user)? }))
    }

    /// Adds what `Conversation` keeps apart: rotated keys and the deleted flag.
    pub(super) fn fill_group_fields(&self, conversation: &mut Conversation) -> StoreResult<()> {
        let id = conversation.id;
        for guard in self.conversation_keys.prefix(id.as_bytes()) {
            let (key, value) = guard.into_inner().map_err(unavailable)?;
            let seq: [u8; 8] = key
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("key row".into()))?;
            conversation
                .rotated_keys
                .push(KeyEpoch { from_seq: u64::from_be_bytes(seq), wrapped_key: value.to_vec() });
        }
        conversation.deleted = self.groups_deleted.contains_key(id.as_bytes()).map_err(unavailable)?;
        Ok(())
    }

    pub(super) fn create_group(
        &self,
        conversation: &Conversation,
        members: &[MemberRecord],
    ) -> StoreResult<()> {
        let _guard = self.lock();
        let id = conversation.id.as_bytes();
        if self.conversations.contains_key(id).map_err(unavailable)? {
            return Err(StoreError::Conflict("the conversation exists".into()));
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.conversations, id, encode(conversation));
        for record in members {
            let key = key2(id, record.user_id.as_bytes());
            batch.insert(&self.members, key, encode(&Watermarks::default()));
            batch.insert(&self.member_records, key, encode(record));
            batch.insert(&self.user_conversations, key2(record.user_id.as_bytes(), id), []);
        }
        batch.commit().map_err(unavailable)
    }

    pub(super) fn begin_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.group_pending, pending_key(id, update), encode(update));
        batch.commit().map_err(unavailable)
    }

    pub(super) fn pending_group_updates(&self, id: ConversationId) -> StoreResult<Vec<GroupUpdate>> {
        let mut out = Vec::new();
        for guard in self.group_pending.prefix(id.as_bytes()) {
            let value = guard.value().map_err(unavailable)?;
            out.push(super::decode::<GroupUpdate>(&value)?);
        }
        Ok(out)
    }

    pub(super) fn apply_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        let _guard = self.lock();
        let cid = id.as_bytes();
        let Some(mut conversation) = self.get::<Conversation>(&self.conversations, cid)? else {
            return Err(StoreError::Corrupt("an update for a missing group".into()));
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for record in &update.members {
            let key = key2(cid, record.user_id.as_bytes());
            let current = self.get::<MemberRecord>(&self.member_records, &key)?;
            // A replayed older update never undoes a later one.
            if current.is_some_and(|c| c.at_seq > update.seq) {
                continue;
            }
            if self.get::<Watermarks>(&self.members, &key)?.is_none() {
                batch.insert(&self.members, key, encode(&Watermarks::default()));
            }
            batch.insert(&self.member_records, key, encode(record));
            batch.insert(&self.user_conversations, key2(record.user_id.as_bytes(), cid), []);
        }
        if let Some(title) = &update.title {
            conversation.title = Some(title.clone());
            batch.insert(&self.conversations, cid, encode(&conversation));
        }
        if let Some(key) = &update.key {
            batch.insert(&self.conversation_keys, key_epoch_key(id, key.from_seq), key.wrapped_key.clone());
        }
        if update.deleted {
            batch.insert(&self.groups_deleted, cid, []);
        }
        batch.remove(&self.group_pending, pending_key(id, update));
        batch.commit().map_err(unavailable)
    }

    pub(super) fn discard_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.remove(&self.group_pending, pending_key(id, update));
        batch.commit().map_err(unavailable)
    }
}
