//! `DirectoryStore` on the embedded store: direct conversations (one per pair, under the
//! read-modify-write lock), members with watermarks and records, a user's conversations,
//! posters; group writes delegate to `groups.rs`.

use super::*;

#[async_trait]
impl DirectoryStore for EmbeddedStore {
    async fn create_direct(&self, conversation: &Conversation) -> StoreResult<Conversation> {
        let conversation = conversation.clone();
        self.blocking(move |s| {
            let [a, b] = conversation.members[..] else {
                return Err(StoreError::Conflict("a direct conversation has two members".into()));
            };
            let _guard = s.lock();
            let pair = pair_key(a, b);
            if let Some(existing) = s.pairs.get(pair).map_err(unavailable)? {
                return s
                    .get::<Conversation>(&s.conversations, &existing)?
                    .ok_or_else(|| StoreError::Corrupt("pair points to a missing conversation".into()));
            }
            let id = conversation.id.as_bytes();
            let mut batch = s.db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&s.conversations, id, encode(&conversation));
            batch.insert(&s.pairs, pair, id);
            for member in &conversation.members {
                batch.insert(&s.members, key2(id, member.as_bytes()), encode(&Watermarks::default()));
                batch.insert(&s.user_conversations, key2(member.as_bytes(), id), []);
            }
            batch.commit().map_err(unavailable)?;
            Ok(conversation)
        })
        .await
    }

    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<Conversation>> {
        self.blocking(move |s| {
            let Some(mut conversation) = s.get::<Conversation>(&s.conversations, id.as_bytes())? else {
                return Ok(None);
            };
            s.fill_group_fields(&mut conversation)?;
            Ok(Some(conversation))
        })
        .await
    }

    async fn direct_between(&self, a: UserId, b: UserId) -> StoreResult<Option<ConversationId>> {
        self.blocking(move |s| {
            Ok(s.pairs
                .get(pair_key(a, b))
                .map_err(unavailable)?
                .and_then(|v| <[u8; 16]>::try_from(&v[..]).ok())
                .map(ConversationId::from_bytes))
        })
        .await
    }

    async fn members(&self, id: ConversationId) -> StoreResult<Vec<Member>> {
        self.blocking(move |s| {
            let mut out = Vec::new();
            for guard in s.members.prefix(id.as_bytes()) {
                let (key, value) = guard.into_inner().map_err(unavailable)?;
                let user_id = UserId::from_bytes(id_suffix(&key)?);
                out.push(Member {
                    user_id,
                    watermarks: decode(&value)?,
                    record: s.member_record(&key, user_id)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn member(&self, id: ConversationId, user: UserId) -> StoreResult<Option<Member>> {
        self.blocking(move |s| s.one_member(id, user)).await
    }

    async fn create_group(&self, conversation: &Conversation, members: &[MemberRecord]) -> StoreResult<()> {
        let (conversation, members) = (conversation.clone(), members.to_vec());
        self.blocking(move |s| s.create_group(&conversation, &members)).await
    }

    async fn begin_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        let update = update.clone();
        self.blocking(move |s| s.begin_group_update(id, &update)).await
    }

    async fn pending_group_updates(&self, id: ConversationId) -> StoreResult<Vec<GroupUpdate>> {
        self.blocking(move |s| s.pending_group_updates(id)).await
    }

    async fn apply_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        let update = update.clone();
        self.blocking(move |s| s.apply_group_update(id, &update)).await
    }

    async fn discard_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        let update = update.clone();
        self.blocking(move |s| s.discard_group_update(id, &update)).await
    }

    async fn user_conversations(&self, user: UserId) -> StoreResult<Vec<ConversationId>> {
        self.blocking(move |s| {
            let mut out = Vec::new();
            for guard in s.user_conversations.prefix(user.as_bytes()) {
                let key = guard.key().map_err(unavailable)?;
                out.push(ConversationId::from_bytes(id_suffix(&key)?));
            }
            Ok(out)
        })
        .await
    }

    async fn mark_posted(&self, conversation: ConversationId, user: UserId) -> StoreResult<()> {
        self.blocking(move |s| {
            s.posters.insert(key2(conversation.as_bytes(), user.as_bytes()), []).map_err(unavailable)
        })
        .await
    }

    async fn has_posted(&self, conversation: ConversationId, user: UserId) -> StoreResult<bool> {
        self.blocking(move |s| {
            s.posters.contains_key(key2(conversation.as_bytes(), user.as_bytes())).map_err(unavailable)
        })
        .await
    }
}
