//! An owner shard whose batch panics is restarted in place: the callers of that batch get an
//! error they retry, `owner_restarts_total` counts it, and the next send is stored with the
//! right seq. Runs the owner in-process over the embedded store with a wrapper whose first
//! append panics.

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use switchboard::account::Identity;
use switchboard::conversation::directory::Conversations;
use switchboard::conversation::owner::{Owner, OwnerCluster, OwnerHandle, OwnerSettings, SendRequest};
use switchboard::crypto::MasterKey;
use switchboard::delivery::{Registry, Router};
use switchboard::model::*;
use switchboard::store::embedded::EmbeddedStore;
use switchboard::store::presence::MemoryDirectory;
use switchboard::store::{
    AppendError, ChatStore, Claim, DirectoryStore, MessageLog, ReceiptStore, StoreResult,
};
use switchboard::telemetry::Metrics;

/// The embedded store with injected faults: the first append panics (`armed`), or a system
/// message's append is stored and then reported failed, as a timed-out write that landed
/// (`lose_system_ack`; used by `group_keys`).
pub(crate) struct PanicsOnce {
    pub(crate) inner: EmbeddedStore,
    pub(crate) armed: AtomicBool,
    pub(crate) lose_system_ack: AtomicBool,
}

#[async_trait]
impl DirectoryStore for PanicsOnce {
    async fn create_direct(&self, c: &Conversation) -> StoreResult<Conversation> {
        self.inner.create_direct(c).await
    }
    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<Conversation>> {
        self.inner.conversation(id).await
    }
    async fn direct_between(&self, a: UserId, b: UserId) -> StoreResult<Option<ConversationId>> {
        self.inner.direct_between(a, b).await
    }
    async fn members(&self, id: ConversationId) -> StoreResult<Vec<Member>> {
        self.inner.members(id).await
    }
    async fn member(&self, id: ConversationId, user: UserId) -> StoreResult<Option<Member>> {
        self.inner.member(id, user).await
    }
    async fn create_group(&self, c: &Conversation, members: &[MemberRecord]) -> StoreResult<()> {
        self.inner.create_group(c, members).await
    }
    async fn begin_group_update(&self, id: ConversationId, u: &GroupUpdate) -> StoreResult<()> {
        self.inner.begin_group_update(id, u).await
    }
    async fn pending_group_updates(&self, id: ConversationId) -> StoreResult<Vec<GroupUpdate>> {
        self.inner.pending_group_updates(id).await
    }
    async fn apply_group_update(&self, id: ConversationId, u: &GroupUpdate) -> StoreResult<()> {
        self.inner.apply_group_update(id, u).await
    }
    async fn discard_group_update(&self, id: ConversationId, u: &GroupUpdate) -> StoreResult<()> {
        self.inner.discard_group_update(id, u).await
    }
    async fn user_conversations(&self, user: UserId) -> StoreResult<Vec<ConversationId>> {
        self.inner.user_conversations(user).await
    }
    async fn mark_posted(&self, c: ConversationId, u: UserId) -> StoreResult<()> {
        self.inner.mark_posted(c, u).await
    }
    async fn has_posted(&self, c: ConversationId, u: UserId) -> StoreResult<bool> {
        self.inner.has_posted(c, u).await
    }
}

#[async_trait]
impl MessageLog for PanicsOnce {
    async fn last_seq(&self, id: ConversationId) -> StoreResult<u64> {
        self.inner.last_seq(id).await
    }
    async fn append(&self, messages: &[StoredMessage]) -> Result<(), AppendError> {
        assert!(!self.armed.swap(false, Ordering::SeqCst), "injected panic in append");
        self.inner.append(messages).await?;
        if messages.iter().any(|m| m.kind == MessageKind::System)
            && self.lose_system_ack.swap(false, Ordering::SeqCst)
        {
            return Err(
                switchboard::store::StoreError::Unavailable("injected: stored, answer lost".into()).into()
            );
        }
        Ok(())
    }
    async fn claim(&self, c: ConversationId, node: &str) -> StoreResult<Claim> {
        self.inner.claim(c, node).await
    }
    async fn message_by_client_id(
        &self,
        c: ConversationId,
        a: UserId,
        id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        self.inner.message_by_client_id(c, a, id).await
    }
    async fn messages_after(
        &self,
        c: ConversationId,
        after: u64,
        n: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.inner.messages_after(c, after, n).await
    }
    async fn messages_before(
        &self,
        c: ConversationId,
        before: u64,
        n: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.inner.messages_before(c, before, n).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

#[async_trait]
impl ReceiptStore for PanicsOnce {
    async fn advance_watermarks(
        &self,
        c: ConversationId,
        u: UserId,
        to: Watermarks,
    ) -> StoreResult<Option<(Watermarks, bool)>> {
        self.inner.advance_watermarks(c, u, to).await
    }
}

fn send(from: Identity, conversation_id: ConversationId, client_msg_id: &str) -> SendRequest {
    SendRequest {
        from,
        conversation_id,
        client_msg_id: client_msg_id.into(),
        body: "hello".into(),
        attachments: Vec::new(),
    }
}

/// `shards` owner shards over `store` on the current arbiter, with a Registry and Router.
fn start_owners<S: ChatStore>(
    store: Arc<S>,
    shards: usize,
) -> (OwnerHandle, Arc<Conversations>, Arc<Metrics>) {
    use actix::Actor;
    let conversations = Arc::new(Conversations::new(store.clone(), Some(MasterKey::generate())));
    let registry = Registry::new("n1".into(), Arc::new(MemoryDirectory::default()), false).start();
    let router = Router::new(registry, None).start();
    let metrics = Arc::new(Metrics::default());
    let settings = OwnerSettings { max_batch: 64, ..OwnerSettings::default() };
    let owners = Owner::start(
        store,
        conversations.clone(),
        router,
        metrics.clone(),
        settings,
        shards,
        OwnerCluster::single("node-1"),
    );
    (owners, conversations, metrics)
}

#[actix_rt::test]
async fn a_panicking_shard_is_restarted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PanicsOnce {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        armed: AtomicBool::new(true),
        lose_system_ack: AtomicBool::new(false),
    });
    let (owners, conversations, metrics) = start_owners(store, 2);
    let (alice, bob) = (UserId::generate(), UserId::generate());
    let conversation = conversations.open_direct(alice, bob).await.unwrap().id;
    let from = Identity { user_id: alice, device_id: DeviceId::generate() };

    let first = owners.send(send(from, conversation, "c1")).unwrap().await;
    assert!(first.is_err(), "the panicked batch's caller must not get `sent`");
    assert_eq!(metrics.owner_restarts_total.load(Ordering::Relaxed), 1);
    assert!(metrics.render().contains("switchboard_owner_restarts_total 1"));

    // The retry (same client id) and a new send are stored, gapless from 1.
    let retry = owners.send(send(from, conversation, "c1")).unwrap().await.unwrap().unwrap();
    assert_eq!(retry.seq, 1);
    let next = owners.send(send(from, conversation, "c2")).unwrap().await.unwrap().unwrap();
    assert_eq!(next.seq, 2);
}

#[actix_rt::test]
async fn a_batch_mixing_a_retry_and_new_sends_stays_gapless() {
    // `append_new` refuses a batch holding a client id stored before: the shard answers the
    // retry from the store and stores the new sends under the next seqs, with no gap.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let (owners, conversations, metrics) = start_owners(store.clone(), 1);
    let (alice, bob) = (UserId::generate(), UserId::generate());
    let conversation = conversations.open_direct(alice, bob).await.unwrap().id;
    let from = Identity { user_id: alice, device_id: DeviceId::generate() };
    let first = owners.send(send(from, conversation, "c1")).unwrap().await.unwrap().unwrap();
    assert_eq!(first.seq, 1);
    // Queued before the shard runs again, so they form one batch: new, retry, new.
    let pending: Vec<_> =
        ["c2", "c1", "c3"].iter().map(|id| owners.send(send(from, conversation, id)).unwrap()).collect();
    let mut answers = Vec::new();
    for reply in pending {
        answers.push(reply.await.unwrap().unwrap());
    }
    assert_eq!(answers.iter().map(|s| s.seq).collect::<Vec<_>>(), [2, 1, 3]);
    assert_eq!(answers[1].message_id, first.message_id, "the retry is the stored message");
    assert_eq!(metrics.messages_duplicate_total.load(Ordering::Relaxed), 1);
    let stored = store.messages_after(conversation, 0, 10).await.unwrap();
    assert_eq!(stored.iter().map(|m| m.client_msg_id.as_str()).collect::<Vec<_>>(), ["c1", "c2", "c3"]);
}
