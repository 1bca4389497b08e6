//! `DirectoryStore` on Cassandra: direct conversations (row first, pair claimed by LWT),
//! members with watermarks, a user's conversations (driver-paged), posters; groups delegate to
//! `groups.rs`.

use super::*;

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
        let outcome = lwt_outcome(result)?;
        let id = if outcome.applied {
            conversation.id
        } else {
            match outcome.uuid("conversation_id") {
                Some(id) => ConversationId(id),
                None => return Err(StoreError::Corrupt("direct pair without a conversation id".into())),
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
        let Some((id, kind, title, members, wrapped_key, created_at)) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut conversation = Conversation {
            id: ConversationId(id),
            kind: if kind == "group" { ConversationKind::Group } else { ConversationKind::Direct },
            title,
            members: members.unwrap_or_default().into_iter().map(UserId).collect(),
            wrapped_key,
            created_at,
            rotated_keys: Vec::new(),
            deleted: false,
        };
        if conversation.kind == ConversationKind::Group {
            c.fill_group_fields(&mut conversation).await?;
        }
        Ok(Some(conversation))
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
        self.c()?.group_members(id).await
    }

    async fn member(&self, id: ConversationId, user: UserId) -> StoreResult<Option<Member>> {
        self.c()?.group_member(id, user).await
    }

    async fn create_group(&self, conversation: &Conversation, members: &[MemberRecord]) -> StoreResult<()> {
        self.c()?.create_group(conversation, members).await
    }

    async fn begin_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        self.c()?.begin_group_update(id, update).await
    }

    async fn pending_group_updates(&self, id: ConversationId) -> StoreResult<Vec<GroupUpdate>> {
        self.c()?.pending_group_updates(id).await
    }

    async fn apply_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        self.c()?.apply_group_update(id, update).await
    }

    async fn discard_group_update(&self, id: ConversationId, update: &GroupUpdate) -> StoreResult<()> {
        self.c()?.discard_group_update(id, update).await
    }

    async fn user_conversations(&self, user: UserId) -> StoreResult<Vec<ConversationId>> {
        let c = self.c()?;
        Ok(c.paged_rows::<(Uuid,)>(&c.st.user_conversations, (user.0,))
            .await?
            .into_iter()
            .map(|(id,)| ConversationId(id))
            .collect())
    }

    async fn mark_posted(&self, conversation: ConversationId, user: UserId) -> StoreResult<()> {
        let c = self.c()?;
        c.run(&c.st.mark_posted, (conversation.0, user.0)).await
    }

    async fn has_posted(&self, conversation: ConversationId, user: UserId) -> StoreResult<bool> {
        let c = self.c()?;
        Ok(!c.rows::<(Uuid,)>(&c.st.has_posted, (conversation.0, user.0)).await?.is_empty())
    }
}
