//! Criterion bench of the owner shard's batch path without the disk: membership check,
//! idempotency lookup, seq reservation, sealing, the append to an in-memory message log
//! (`MemoryLog` below: no fsync) and the hand-off of the batch's live events to the Router and
//! Registry (no session is connected, so nothing is written to a socket). Each iteration
//! submits `batch` sends (100-byte bodies, spread over 100 direct conversations) to one shard
//! and waits for every `sent`; throughput is messages per second. It tracks the owner's own
//! cost apart from the store's fsync (`store_append` measures that).

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard::account::Identity;
use switchboard::conversation::directory::Conversations;
use switchboard::conversation::owner::{Owner, OwnerCluster, OwnerHandle, OwnerSettings, SendRequest};
use switchboard::crypto::MasterKey;
use switchboard::delivery::{Registry, Router};
use switchboard::model::*;
use switchboard::store::embedded::EmbeddedStore;
use switchboard::store::presence::MemoryDirectory;
use switchboard::store::{
    AppendError, Claim, DirectoryStore, MessageLog, NewAppend, ReceiptStore, StoreResult,
};
use switchboard::telemetry::Metrics;

const CONVERSATIONS: usize = 100;

/// The message log in memory; conversations and receipts in an embedded store (read once,
/// then cached by `Conversations`).
struct MemoryLog {
    directory: EmbeddedStore,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    messages: HashMap<(ConversationId, u64), StoredMessage>,
    client_ids: HashMap<(ConversationId, UserId, String), u64>,
    last: HashMap<ConversationId, u64>,
}

impl Log {
    fn by_client_id(&self, key: &(ConversationId, UserId, String)) -> Option<StoredMessage> {
        self.client_ids.get(key).and_then(|seq| self.messages.get(&(key.0, *seq))).cloned()
    }

    fn insert(&mut self, messages: &[StoredMessage]) {
        for m in messages {
            self.client_ids.insert((m.conversation_id, m.author_id, m.client_msg_id.clone()), m.seq);
            let last = self.last.entry(m.conversation_id).or_default();
            *last = (*last).max(m.seq);
            self.messages.insert((m.conversation_id, m.seq), m.clone());
        }
    }
}

#[async_trait]
impl DirectoryStore for MemoryLog {
    async fn create_direct(&self, c: &Conversation) -> StoreResult<Conversation> {
        self.directory.create_direct(c).await
    }
    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<Conversation>> {
        self.directory.conversation(id).await
    }
    async fn direct_between(&self, a: UserId, b: UserId) -> StoreResult<Option<ConversationId>> {
        self.directory.direct_between(a, b).await
    }
    async fn members(&self, id: ConversationId) -> StoreResult<Vec<Member>> {
        self.directory.members(id).await
    }
    async fn member(&self, id: ConversationId, user: UserId) -> StoreResult<Option<Member>> {
        self.directory.member(id, user).await
    }
    async fn create_group(&self, c: &Conversation, members: &[MemberRecord]) -> StoreResult<()> {
        self.directory.create_group(c, members).await
    }
    async fn begin_group_update(&self, id: ConversationId, u: &GroupUpdate) -> StoreResult<()> {
        self.directory.begin_group_update(id, u).await
    }
    async fn pending_group_updates(&self, id: ConversationId) -> StoreResult<Vec<GroupUpdate>> {
        self.directory.pending_group_updates(id).await
    }
    async fn apply_group_update(&self, id: ConversationId, u: &GroupUpdate) -> StoreResult<()> {
        self.directory.apply_group_update(id, u).await
    }
    async fn discard_group_update(&self, id: ConversationId, u: &GroupUpdate) -> StoreResult<()> {
        self.directory.discard_group_update(id, u).await
    }
    async fn user_conversations(&self, user: UserId) -> StoreResult<Vec<ConversationId>> {
        self.directory.user_conversations(user).await
    }
    async fn mark_posted(&self, c: ConversationId, u: UserId) -> StoreResult<()> {
        self.directory.mark_posted(c, u).await
    }
    async fn has_posted(&self, c: ConversationId, u: UserId) -> StoreResult<bool> {
        self.directory.has_posted(c, u).await
    }
}

#[async_trait]
impl ReceiptStore for MemoryLog {
    async fn advance_watermarks(
        &self,
        c: ConversationId,
        u: UserId,
        to: Watermarks,
    ) -> StoreResult<Option<(Watermarks, bool)>> {
        self.directory.advance_watermarks(c, u, to).await
    }
}

#[async_trait]
impl MessageLog for MemoryLog {
    async fn last_seq(&self, id: ConversationId) -> StoreResult<u64> {
        Ok(self.log.lock().unwrap().last.get(&id).copied().unwrap_or(0))
    }
    async fn append(&self, messages: &[StoredMessage]) -> Result<(), AppendError> {
        self.log.lock().unwrap().insert(messages);
        Ok(())
    }
    async fn append_new(&self, messages: &[StoredMessage]) -> Result<NewAppend, AppendError> {
        let mut log = self.log.lock().unwrap();
        let found: Vec<Option<StoredMessage>> = messages
            .iter()
            .map(|m| log.by_client_id(&(m.conversation_id, m.author_id, m.client_msg_id.clone())))
            .collect();
        if found.iter().any(Option::is_some) {
            return Ok(NewAppend::Known(found));
        }
        log.insert(messages);
        Ok(NewAppend::Appended)
    }
    async fn claim(&self, c: ConversationId, node: &str) -> StoreResult<Claim> {
        self.directory.claim(c, node).await
    }
    async fn message_by_client_id(
        &self,
        c: ConversationId,
        a: UserId,
        id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        Ok(self.log.lock().unwrap().by_client_id(&(c, a, id.to_string())))
    }
    async fn messages_after(&self, _: ConversationId, _: u64, _: usize) -> StoreResult<Vec<StoredMessage>> {
        unreachable!("the owner does not read history")
    }
    async fn messages_before(&self, _: ConversationId, _: u64, _: usize) -> StoreResult<Vec<StoredMessage>> {
        unreachable!("the owner does not read history")
    }
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// One owner shard over a `MemoryLog`, with its conversations created.
struct Setup {
    owners: OwnerHandle,
    senders: Vec<(Identity, ConversationId)>,
    next_id: u64,
    body: String,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        use actix::Actor;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryLog {
            directory: EmbeddedStore::open(dir.path()).unwrap(),
            log: Default::default(),
        });
        let conversations = Arc::new(Conversations::new(store.clone(), Some(MasterKey::generate())));
        let registry = Registry::new("bench".into(), Arc::new(MemoryDirectory::default()), false).start();
        let router = Router::new(registry, None).start();
        let owners = Owner::start(
            store,
            conversations.clone(),
            router,
            Arc::new(Metrics::default()),
            OwnerSettings::default(),
            1,
            OwnerCluster::single("bench"),
        );
        let mut senders = Vec::new();
        for _ in 0..CONVERSATIONS {
            let (a, b) = (UserId::generate(), UserId::generate());
            let conversation = conversations.open_direct(a, b).await.unwrap().id;
            senders.push((Identity { user_id: a, device_id: DeviceId::generate() }, conversation));
        }
        Setup { owners, senders, next_id: 0, body: "x".repeat(100), _dir: dir }
    }

    /// Submits `batch` sends at once and waits for every `sent`.
    async fn round(&mut self, batch: usize) {
        let mut replies = Vec::with_capacity(batch);
        for _ in 0..batch {
            self.next_id += 1;
            let (from, conversation_id) = self.senders[self.next_id as usize % self.senders.len()];
            let request = SendRequest {
                from,
                conversation_id,
                client_msg_id: format!("c{}", self.next_id),
                body: self.body.clone(),
                attachments: Vec::new(),
            };
            replies.push(self.owners.send(request).unwrap());
        }
        for reply in replies {
            reply.await.unwrap().unwrap();
        }
    }
}

fn owner_batch(c: &mut Criterion) {
    let system = actix::System::new();
    let mut setup = system.block_on(Setup::new());
    let mut group = c.benchmark_group("owner_batch");
    group.measurement_time(Duration::from_secs(5));
    for batch in [1usize, 16, 128] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("in_memory_batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        setup.round(batch).await;
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, owner_batch);
criterion_main!(benches);
