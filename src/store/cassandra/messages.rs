//! `MessageLog` and `ReceiptStore` on Cassandra: appends as per-partition batches with a
//! per-message outcome, the client-id index, paging across buckets, and watermarks written
//! `USING TIMESTAMP <seq>`.

use super::*;

#[async_trait]
impl MessageLog for CassandraStore {
    async fn last_seq(&self, id: ConversationId) -> StoreResult<u64> {
        self.c()?.last_seq(id).await
    }

    async fn append(&self, messages: &[StoredMessage]) -> Result<(), AppendError> {
        let c = self.c()?;
        // Per conversation, the indices of its messages in seq order.
        let mut by_conversation: BTreeMap<ConversationId, Vec<usize>> = BTreeMap::new();
        for (i, m) in messages.iter().enumerate() {
            by_conversation.entry(m.conversation_id).or_default().push(i);
        }
        let parts: Vec<Vec<usize>> = by_conversation
            .into_values()
            .map(|mut indices| {
                indices.sort_by_key(|&i| messages[i].seq);
                indices
            })
            .collect();
        // Every conversation runs to its own end: one failing does not hide what the others
        // stored.
        let c = &*c;
        let outcomes = join_all(parts.iter().map(|indices| {
            let ms: Vec<&StoredMessage> = indices.iter().map(|&i| &messages[i]).collect();
            async move { c.append_conversation(&ms).await }
        }))
        .await;
        append_outcome(
            parts
                .into_iter()
                .zip(outcomes)
                .map(|(indices, (stored, error))| (indices, stored, error))
                .collect(),
        )
    }

    async fn claim(&self, conversation: ConversationId, node: &str) -> StoreResult<crate::store::Claim> {
        self.c()?.claim(conversation, node).await
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
