//! The conversation owners: the single writer of every conversation this node owns (in the
//! embedded default, all of them), sharded by conversation id (`storage.owner_shards`, default
//! one per core). A shard checks membership and idempotency, assigns the next gapless `seq`,
//! seals the body, appends durably with group commit, answers `sent` only after the append,
//! and then publishes the batch to the Router (awaiting its bounded mailbox). Receipts go
//! through the shard of their conversation too: merged per (conversation, member) within a
//! batch and written with one store call after the batch's append.
//!
//! Each shard is a task-actor: one task owns its state and drains an mpsc queue; every drained
//! batch becomes one durable append (many messages per fsync). A shard whose batch panics is
//! restarted in place — its caches are dropped, the batch's callers get `unavailable` (they
//! retry with the same client_msg_id), and `owner_restarts_total` counts it.
//!
//! In a cluster (`Placement::is_clustered`), a conversation is owned by one node at a time
//! (rendezvous placement). `handle::OwnerHandle` forwards a send or receipt for a conversation
//! owned elsewhere over the peer link and relays the answer; a shard takes a conversation over with
//! `MessageLog::claim` (a new epoch, the log fenced) before its first append, and stamps every
//! append with that epoch, so a paused former owner's late writes are refused by the store
//! (`Fenced`): its callers get a retryable `unavailable`, never a false `sent`.

mod group;
mod handle;
mod receipts;

pub use group::{ChangeRequest, Changed, TITLE_MAX_CHARS, valid_title};
pub use handle::{OwnerHandle, shard_of};
use receipts::GroupReceipts;

use crate::account::Identity;
use crate::cluster::link::Links;
use crate::cluster::peer::PeerMsg;
use crate::cluster::placement::Placement;
use crate::conversation::directory::{self, ConversationInfo, Conversations};
use crate::delivery::SessionEvent;
use crate::delivery::{Audience, Publish, PublishBatch, Router};
use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    ConversationId, MessageId, MessageKind, Millis, StoredMessage, UserId, Watermarks, now_millis,
};
use crate::protocol::{AttachmentView, MessageView, ServerFrame};
use crate::store::ChatStore;
use crate::telemetry::Metrics;
use actix::Addr;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// How many requests may wait for the owner before new ones are refused as `unavailable`.
const QUEUE_CAPACITY: usize = 65_536;

/// The answer to a stored (or already stored) send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub conversation_id: ConversationId,
    pub client_msg_id: String,
    pub seq: u64,
    pub message_id: MessageId,
    pub ts: Millis,
}

impl Sent {
    fn of(m: &StoredMessage) -> Sent {
        Sent {
            conversation_id: m.conversation_id,
            client_msg_id: m.client_msg_id.clone(),
            seq: m.seq,
            message_id: m.message_id,
            ts: m.ts,
        }
    }
}

pub struct SendRequest {
    pub from: Identity,
    pub conversation_id: ConversationId,
    pub client_msg_id: String,
    pub body: String,
    pub attachments: Vec<String>,
}

enum Request {
    Send(SendRequest, oneshot::Sender<Result<Sent>>),
    Watermark {
        user: UserId,
        conversation_id: ConversationId,
        to: Watermarks,
        reply: oneshot::Sender<Result<()>>,
    },
    Change(ChangeRequest, oneshot::Sender<Result<Changed>>),
    Flush(oneshot::Sender<()>),
}

/// How the owner shards batch and what groups may do.
#[derive(Clone, Debug)]
pub struct OwnerSettings {
    /// Most requests in one batch (one durable append).
    pub max_batch: usize,
    pub group_max_members: usize,
    /// Receipt changes of a group are pushed together at most this often.
    pub receipt_flush: std::time::Duration,
}

impl OwnerSettings {
    pub fn from_config(config: &crate::config::Config) -> OwnerSettings {
        OwnerSettings {
            max_batch: config.storage.group_commit_max as usize,
            group_max_members: config.limits.group_max_members as usize,
            receipt_flush: std::time::Duration::from_millis(config.limits.group_receipt_flush_ms),
        }
    }
}

impl Default for OwnerSettings {
    fn default() -> Self {
        OwnerSettings::from_config(&crate::config::Config::default())
    }
}

/// Why this shard will not write a conversation now.
fn not_owner() -> Error {
    Error::new(ErrorCode::Unavailable, "the conversation is moving to another node; retry")
}

pub struct Owner {
    store: Arc<dyn ChatStore>,
    placement: Arc<Placement>,
    /// The owner epoch this shard holds per conversation it took over (cluster mode).
    epochs: HashMap<ConversationId, u64>,
    /// Conversations whose append was fenced, with `Placement::refreshes` at that time: not
    /// claimed again before a fresher view (so two nodes that disagree do not take a
    /// conversation from each other in a loop).
    lost: HashMap<ConversationId, u64>,
    /// `Placement::refreshes` when the held conversations were last checked against the view.
    checked_view: u64,
    conversations: Arc<Conversations>,
    router: Addr<Router>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    group_max_members: usize,
    receipt_flush: std::time::Duration,
    /// Group receipt changes not yet pushed, and when they are due.
    group_receipts: HashMap<ConversationId, GroupReceipts>,
    receipts_due: Option<Instant>,
    /// The shard's own view of each group it has loaded: filled only by the shard itself (on
    /// load and after each change), so a stale read elsewhere on the node (the shared cache is
    /// reloaded by readers) can never make it accept a removed member or seal with an old key.
    views: HashMap<ConversationId, Arc<ConversationInfo>>,
    /// The highest seq durably stored per conversation, loaded on first use.
    last_seq: HashMap<ConversationId, u64>,
    /// (conversation, author) pairs known to be recorded as posters (bounded; see `POSTED_MAX`).
    posted: std::collections::HashSet<MemberKey>,
}

/// Posters remembered per shard before the set starts over (a re-record is idempotent).
const POSTED_MAX: usize = 100_000;

type ClientKey = (ConversationId, UserId, String);
/// One member of one conversation.
pub(super) type MemberKey = (ConversationId, UserId);

/// A send from a member, not yet checked against the store.
struct Candidate {
    send: SendRequest,
    info: Arc<ConversationInfo>,
    /// The request's reply, then those of retries of the same client_msg_id in the batch.
    replies: Vec<oneshot::Sender<Result<Sent>>>,
}

impl Candidate {
    fn answer(self, result: Result<Sent>) {
        for reply in self.replies {
            let _ = reply.send(result.clone());
        }
    }
}

/// A new message, sealed and with its seq reserved, awaiting the batch append.
struct Accepted {
    message: StoredMessage,
    body: String,
    /// The message's attachments as readers see them (the stored entries are sealed).
    attachments: Vec<AttachmentView>,
    audience: Arc<[UserId]>,
    replies: Vec<oneshot::Sender<Result<Sent>>>,
}

/// What the owner shards need besides the store: where they are (placement) and the link to
/// the other nodes (`None` on a single node).
#[derive(Clone)]
pub struct OwnerCluster {
    pub placement: Arc<Placement>,
    pub peers: Option<Links<PeerMsg>>,
}

impl OwnerCluster {
    /// A single node: it owns every conversation.
    pub fn single(node: &str) -> OwnerCluster {
        OwnerCluster { placement: Arc::new(Placement::single(node)), peers: None }
    }
}

impl Owner {
    /// Starts `shards` owner tasks on the current arbiter and returns their handle.
    pub fn start(
        store: Arc<dyn ChatStore>,
        conversations: Arc<Conversations>,
        router: Addr<Router>,
        metrics: Arc<Metrics>,
        settings: OwnerSettings,
        shards: usize,
        cluster: OwnerCluster,
    ) -> OwnerHandle {
        let senders: Vec<_> = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE_CAPACITY / shards.max(1));
                let owner = Owner {
                    store: store.clone(),
                    placement: cluster.placement.clone(),
                    epochs: HashMap::new(),
                    lost: HashMap::new(),
                    checked_view: 0,
                    conversations: conversations.clone(),
                    router: router.clone(),
                    metrics: metrics.clone(),
                    max_batch: settings.max_batch,
                    group_max_members: settings.group_max_members,
                    receipt_flush: settings.receipt_flush,
                    group_receipts: HashMap::new(),
                    receipts_due: None,
                    views: HashMap::new(),
                    last_seq: HashMap::new(),
                    posted: Default::default(),
                };
                actix::spawn(owner.run(rx));
                tx
            })
            .collect();
        OwnerHandle { shards: senders.into(), placement: cluster.placement, peers: cluster.peers }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        use futures_util::FutureExt;
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let first = match self.receipts_due {
                None => rx.recv().await,
                Some(due) => tokio::select! {
                    next = rx.recv() => next,
                    _ = tokio::time::sleep_until(due.into()) => {
                        self.flush_group_receipts().await;
                        continue;
                    }
                },
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let outcome = std::panic::AssertUnwindSafe(self.process(&mut batch)).catch_unwind().await;
            if outcome.is_err() {
                // Replies not yet sent are dropped with the batch: those callers get
                // `unavailable` and retry. Reservations may be half-made: start from the store.
                tracing::error!("owner shard panicked; restarting it with empty caches");
                Metrics::inc(&self.metrics.owner_restarts_total);
                batch.clear();
                self.last_seq.clear();
                self.epochs.clear();
                self.views.clear();
            }
        }
    }

    async fn process(&mut self, batch: &mut Vec<Request>) {
        self.forget_moved();
        let mut flushes = Vec::new();
        let mut receipts = Vec::new();
        let mut changes = Vec::new();
        // 1. Membership, and retries of one client_msg_id within the batch (twins).
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut index: HashMap<ClientKey, usize> = HashMap::new();
        for request in batch.drain(..) {
            match request {
                Request::Flush(reply) => flushes.push(reply),
                Request::Change(change, reply) => changes.push((change, reply)),
                Request::Watermark { user, conversation_id, to, reply } => {
                    receipts.push((user, conversation_id, to, reply));
                }
                Request::Send(send, reply) => {
                    let key = (send.conversation_id, send.from.user_id, send.client_msg_id.clone());
                    if let Some(&i) = index.get(&key) {
                        candidates[i].replies.push(reply);
                        continue;
                    }
                    // Loaded first: a group's pending change is finished before its members
                    // are checked.
                    if let Err(e) = self.last_seq_of(send.conversation_id).await {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    match self.for_member(send.conversation_id, send.from.user_id).await {
                        Ok(info) => {
                            index.insert(key, candidates.len());
                            candidates.push(Candidate { send, info, replies: vec![reply] });
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
        }
        // 2. Ownership before idempotency. Taking a conversation over (cluster) completes any
        // append a previous attempt left in flight (the claim is a Paxos round on the
        // partitions that append could reach), so the lookup below sees it; looking up first
        // could miss a timed-out append that did land and store its retry a second time.
        let mut refused: HashMap<ConversationId, Error> = HashMap::new();
        for c in &candidates {
            let conversation = c.send.conversation_id;
            if !refused.contains_key(&conversation)
                && let Err(e) = self.last_seq_of(conversation).await
            {
                refused.insert(conversation, e);
            }
        }
        if !refused.is_empty() {
            let (failed, ok): (Vec<Candidate>, Vec<Candidate>) =
                candidates.into_iter().partition(|c| refused.contains_key(&c.send.conversation_id));
            for candidate in failed {
                let e = refused[&candidate.send.conversation_id].clone();
                candidate.answer(Err(e));
            }
            candidates = ok;
        }
        // 3. Idempotency against the store, one lookup for the whole batch.
        if !candidates.is_empty() {
            let keys: Vec<ClientKey> = candidates
                .iter()
                .map(|c| (c.send.conversation_id, c.send.from.user_id, c.send.client_msg_id.clone()))
                .collect();
            match self.store.messages_by_client_ids(&keys).await {
                Ok(found) => {
                    let mut accepted = Vec::with_capacity(candidates.len());
                    for (candidate, stored) in candidates.into_iter().zip(found) {
                        match stored {
                            Some(stored) => {
                                Metrics::inc(&self.metrics.messages_duplicate_total);
                                candidate.answer(Ok(Sent::of(&stored)));
                            }
                            None => match self.accept(candidate).await {
                                Ok(a) => accepted.push(a),
                                Err((candidate, e)) => candidate.answer(Err(e)),
                            },
                        }
                    }
                    // 4. One durable append for everything new.
                    if !accepted.is_empty() {
                        self.commit(accepted).await;
                    }
                }
                Err(e) => {
                    let e: Error = e.into();
                    for candidate in candidates {
                        candidate.answer(Err(e.clone()));
                    }
                }
            }
        }
        // After the commit, so a receipt is checked against stored seqs only.
        self.advance_all(receipts).await;
        // Group changes one at a time, each its own system message, after the batch's sends.
        for (change, reply) in changes {
            let _ = reply.send(self.change(change).await);
        }
        if self.receipts_due.is_some_and(|due| due <= Instant::now()) {
            self.flush_group_receipts().await;
        }
        for reply in flushes {
            let _ = reply.send(());
        }
    }

    /// Reserves the next seq and seals the body of a new message.
    async fn accept(&mut self, c: Candidate) -> std::result::Result<Accepted, (Candidate, Error)> {
        let seq = match self.last_seq_of(c.send.conversation_id).await {
            Ok(last) => last + 1,
            Err(e) => return Err((c, e)),
        };
        let epoch = self.epochs.get(&c.send.conversation_id).copied().unwrap_or(0);
        // Reserve the seq; `commit` rolls back reservations of a failed batch.
        self.last_seq.insert(c.send.conversation_id, seq);
        let Candidate { send, info, replies } = c;
        let message = StoredMessage {
            conversation_id: send.conversation_id,
            seq,
            message_id: MessageId::generate(),
            author_id: send.from.user_id,
            device_id: send.from.device_id,
            client_msg_id: send.client_msg_id,
            kind: MessageKind::Text,
            sealed_body: info.key_for(seq).seal(send.body.as_bytes(), &info.body_aad(seq)),
            ts: now_millis(),
            attachments: crate::conversation::sealed_attachments::seal(&info, seq, &send.attachments),
            epoch,
        };
        let attachments = crate::conversation::sealed_attachments::open_plain(&info, &send.attachments);
        Ok(Accepted { message, body: send.body, attachments, audience: info.members.clone(), replies })
    }

    /// The conversation's highest seq: stored, or reserved by the batch being built. In a
    /// cluster, the first use takes the conversation over (a new epoch, the log fenced) if this
    /// node owns it; otherwise the request is refused as retryable.
    async fn last_seq_of(&mut self, conversation: ConversationId) -> Result<u64> {
        if let Some(seq) = self.last_seq.get(&conversation) {
            return Ok(*seq);
        }
        if !self.placement.is_clustered() {
            let seq = self.store.last_seq(conversation).await?;
            self.after_load(conversation, seq).await?;
            self.last_seq.insert(conversation, seq);
            return Ok(seq);
        }
        let refreshes = self.placement.refreshes();
        if !self.placement.is_local(conversation)
            || !self.placement.lease_held()
            || self.lost.get(&conversation).is_some_and(|&at| at >= refreshes)
        {
            return Err(not_owner());
        }
        let claim = self.store.claim(conversation, self.placement.me()).await?;
        Metrics::inc(&self.metrics.ownership_claims_total);
        self.after_load(conversation, claim.last_seq).await?;
        tracing::debug!(%conversation, epoch = claim.epoch, last_seq = claim.last_seq, "took the conversation over");
        self.lost.remove(&conversation);
        self.epochs.insert(conversation, claim.epoch);
        self.last_seq.insert(conversation, claim.last_seq);
        Ok(claim.last_seq)
    }

    /// The conversation as this shard sees it: its own view of a group it loaded, otherwise the
    /// node's (a direct conversation never changes).
    async fn view(&self, conversation: ConversationId) -> Result<Option<Arc<ConversationInfo>>> {
        if let Some(view) = self.views.get(&conversation) {
            return Ok(Some(view.clone()));
        }
        self.conversations.get(conversation).await
    }

    /// `Conversations::for_member`, against the shard's own view.
    async fn for_member(&self, conversation: ConversationId, user: UserId) -> Result<Arc<ConversationInfo>> {
        directory::with_member(self.view(conversation).await?, user)
    }

    /// Drops what the shard holds of a conversation; its next request loads it afresh (a
    /// group's pending changes finished, its view read again; in a cluster, claimed again).
    fn forget(&mut self, conversation: ConversationId) {
        self.last_seq.remove(&conversation);
        self.epochs.remove(&conversation);
        self.views.remove(&conversation);
    }

    /// A group loaded by this shard (first use, or taken over): its pending change is finished
    /// or dropped and its members read afresh, so sends are checked against the current ones.
    async fn after_load(&mut self, conversation: ConversationId, last_seq: u64) -> Result<()> {
        match self.conversations.get(conversation).await? {
            Some(info) if info.is_group() => self.finish_pending(conversation, last_seq).await,
            _ => Ok(()),
        }
    }

    /// Drops what this shard holds of conversations the current view gives to another node,
    /// so that if one comes back it is claimed again (the other node has fenced it).
    fn forget_moved(&mut self) {
        if !self.placement.is_clustered() || self.placement.refreshes() == self.checked_view {
            return;
        }
        self.checked_view = self.placement.refreshes();
        let placement = &self.placement;
        self.epochs.retain(|c, _| placement.is_local(*c));
        let epochs = &self.epochs;
        self.last_seq.retain(|c, _| epochs.contains_key(c));
        self.views.retain(|c, _| epochs.contains_key(c));
        if self.lost.len() > 100_000 {
            self.lost.clear();
        }
    }

    async fn commit(&mut self, accepted: Vec<Accepted>) {
        let messages: Vec<StoredMessage> = accepted.iter().map(|a| a.message.clone()).collect();
        let started = Instant::now();
        let result = self.store.append(&messages).await;
        self.metrics.store_append_seconds.observe(started.elapsed());
        let stored: Vec<bool> = match &result {
            Ok(()) => vec![true; accepted.len()],
            Err(failure) => {
                let mut stored = vec![false; accepted.len()];
                for &i in &failure.stored {
                    if let Some(slot) = stored.get_mut(i) {
                        *slot = true;
                    }
                }
                tracing::warn!(error = %failure.error, batch = messages.len(), stored = failure.stored.len(),
                    "durable append failed; only what was stored is acked");
                stored
            }
        };
        if result.is_ok() {
            Metrics::inc(&self.metrics.group_commits_total);
        }
        let fenced = matches!(&result, Err(f) if matches!(f.error, crate::store::StoreError::Fenced(_)));
        let error: Option<Error> = result.err().map(|f| f.error.into());
        // First messages of authors are recorded before `sent`, so whoever the author writes to
        // may watch their presence as soon as the message is acknowledged.
        let mut new_posters: Vec<MemberKey> = Vec::new();
        for (a, _) in accepted.iter().zip(&stored).filter(|(_, stored)| **stored) {
            let poster = (a.message.conversation_id, a.message.author_id);
            if !self.posted.contains(&poster) && !new_posters.contains(&poster) {
                new_posters.push(poster);
            }
        }
        self.record_posters(&new_posters).await;
        let mut events = Vec::with_capacity(accepted.len());
        for (a, stored) in accepted.into_iter().zip(stored) {
            if stored {
                Metrics::inc(&self.metrics.messages_stored_total);
                let sent = Sent::of(&a.message);
                for reply in a.replies {
                    let _ = reply.send(Ok(sent.clone()));
                }
                events.push(message_event(a.message, a.body, a.attachments, a.audience));
            } else {
                // Forget the reservation: the next send reloads last_seq from the store (in a
                // cluster: claims the conversation again, unless another node fenced it).
                self.forget(a.message.conversation_id);
                if fenced {
                    Metrics::inc(&self.metrics.appends_fenced_total);
                    self.lost.insert(a.message.conversation_id, self.placement.refreshes());
                }
                let error = error.clone().unwrap_or_else(|| Error::internal("append outcome missing"));
                for reply in a.replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        self.publish(events).await;
    }

    /// Records first messages of authors in conversations (who may see whose presence). A
    /// failure only delays presence sharing until the author's next message.
    async fn record_posters(&mut self, new: &[MemberKey]) {
        let store = &self.store;
        let writes = new.iter().map(|&(c, u)| async move { (c, u, store.mark_posted(c, u).await) });
        for (c, u, result) in futures_util::future::join_all(writes).await {
            match result {
                Ok(()) => {
                    if self.posted.len() >= POSTED_MAX {
                        self.posted.clear();
                    }
                    self.posted.insert((c, u));
                }
                Err(e) => tracing::warn!(error = %e, "could not record a poster"),
            }
        }
    }

    /// Hands a batch's events to the Router, waiting while its mailbox is full.
    async fn publish(&self, events: Vec<Publish>) {
        if events.is_empty() {
            return;
        }
        if self.router.send(PublishBatch(events)).await.is_err() {
            tracing::warn!("router stopped; events not delivered live (clients sync)");
        }
    }
}

/// The live event of a stored message: its frame, encoded once for every recipient.
fn message_event(
    m: StoredMessage,
    body: String,
    attachments: Vec<AttachmentView>,
    audience: Arc<[UserId]>,
) -> Publish {
    let frame = ServerFrame::Message(MessageView {
        conversation_id: m.conversation_id,
        seq: m.seq,
        message_id: m.message_id,
        author_id: m.author_id,
        client_msg_id: m.client_msg_id,
        body,
        ts: m.ts,
        attachments,
        kind: m.kind,
    });
    Publish {
        audience,
        except: Audience::AllButDevice(m.device_id),
        event: SessionEvent::Message { conversation_id: m.conversation_id, seq: m.seq, text: frame.encode() },
    }
}
