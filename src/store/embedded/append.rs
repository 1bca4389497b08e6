//! The message append path of the embedded store: a batch encoded off the writer thread
//! (`AppendRows`), then on it the fences checked, the client ids looked up (`append_new`) and
//! one fjall batch written and synced (fdatasync), with a warning when the commit is slow.

use super::{Inner, client_id_key, encode, message_key, unavailable};
use crate::model::{ConversationId, StoredMessage};
use crate::store::{NewAppend, StoreError, StoreResult};
use fjall::PersistMode;
use std::time::{Duration, Instant};

/// A batch of messages encoded for `append`: each row's keys and value, and the fences
/// (conversation, epoch) the batch must still hold.
pub(super) struct AppendRows {
    rows: Vec<AppendRow>,
    fences: Vec<(ConversationId, u64)>,
}

struct AppendRow {
    conversation: ConversationId,
    key: [u8; 24],
    value: Vec<u8>,
    client_key: Vec<u8>,
    seq: u64,
}

impl AppendRows {
    pub(super) fn of(messages: &[StoredMessage]) -> AppendRows {
        let rows = messages
            .iter()
            .map(|m| AppendRow {
                conversation: m.conversation_id,
                key: message_key(m.conversation_id, m.seq),
                value: encode(m),
                client_key: client_id_key(m.conversation_id, m.author_id, &m.client_msg_id),
                seq: m.seq,
            })
            .collect();
        let mut fences: Vec<(ConversationId, u64)> =
            messages.iter().filter(|m| m.epoch > 0).map(|m| (m.conversation_id, m.epoch)).collect();
        fences.dedup();
        AppendRows { rows, fences }
    }
}

/// A message append's fjall commit that takes this long is logged, with the state of the
/// message tables (memtables waiting for a flush, tables in L0).
const SLOW_COMMIT: Duration = Duration::from_millis(30);

impl Inner {
    /// Writes the rows in one batch synced to disk, after checking their fences. Fenced
    /// messages: their conversations' epochs must still be current; checked and written under
    /// the lock `claim` takes, so a claim cannot slip in between.
    pub(super) fn write_rows(&self, rows: AppendRows) -> StoreResult<()> {
        let _guard = (!rows.fences.is_empty()).then(|| self.lock());
        for (conversation, epoch) in &rows.fences {
            let current = self.owner_epoch(*conversation)?;
            if current != *epoch {
                return Err(StoreError::Fenced(format!(
                    "conversation {conversation}: owner epoch is {current}, this write has {epoch}"
                )));
            }
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let count = rows.rows.len();
        for row in rows.rows {
            batch.insert(&self.messages, row.key, row.value);
            batch.insert(&self.client_ids, row.client_key, row.seq.to_be_bytes());
        }
        let started = Instant::now();
        let result = batch.commit().map_err(unavailable);
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            tracing::warn!(
                messages = count,
                took_ms = took.as_millis() as u64,
                sealed_memtables =
                    self.messages.sealed_memtable_count() + self.client_ids.sealed_memtable_count(),
                l0_tables = self.messages.l0_table_count() + self.client_ids.l0_table_count(),
                "slow store commit"
            );
        }
        result
    }

    /// `write_rows` unless a client id of the batch is stored already: then nothing is written
    /// and the stored messages are returned. The conversation's single writer calls this, so
    /// nothing can store one of these client ids between the lookup and the write.
    pub(super) fn append_if_new(&self, rows: AppendRows) -> StoreResult<NewAppend> {
        let found = rows
            .rows
            .iter()
            .map(|row| self.by_client_key(row.conversation, &row.client_key))
            .collect::<StoreResult<Vec<_>>>()?;
        if found.iter().any(Option::is_some) {
            return Ok(NewAppend::Known(found));
        }
        self.write_rows(rows).map(|()| NewAppend::Appended)
    }
}
