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

mod append;
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
use crate::delivery::Router;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    ConversationId, MessageId, MessageKind, Millis, StoredMessage, UserId, Watermarks, now_millis,
};
use crate::protocol::AttachmentView;
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

/// A batch that takes this long is logged with where the time went.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(50);

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
    /// The attachment ids as sent, and the view it was sealed with: to accept it again under
    /// another seq (`append::store_new`'s slow path).
    attachment_ids: Vec<String>,
    info: Arc<ConversationInfo>,
    replies: Vec<oneshot::Sender<Result<Sent>>>,
}

impl Accepted {
    /// Back to a candidate, its reservation to be made again.
    fn into_candidate(self) -> Candidate {
        let m = self.message;
        Candidate {
            send: SendRequest {
                from: Identity { user_id: m.author_id, device_id: m.device_id },
                conversation_id: m.conversation_id,
                client_msg_id: m.client_msg_id,
                body: self.body,
                attachments: self.attachment_ids,
            },
            info: self.info,
            replies: self.replies,
        }
    }
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

/// An owner shard ready to run, not yet started: `spawn` it on the thread that should run it
/// (the node puts each beside the sessions, on an HTTP worker: `node::on_workers`).
pub struct ShardTask {
    owner: Owner,
    rx: mpsc::Receiver<Request>,
}

impl ShardTask {
    /// Runs the shard on the current arbiter.
    pub fn spawn(self) {
        actix::spawn(self.owner.run(self.rx));
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
        let (handle, tasks) =
            Owner::prepare(store, conversations, router, metrics, settings, shards, cluster);
        tasks.into_iter().for_each(ShardTask::spawn);
        handle
    }

    /// `start`, leaving the shards to be spawned by the caller: their handle takes requests at
    /// once (they wait in the shards' queues).
    pub fn prepare(
        store: Arc<dyn ChatStore>,
        conversations: Arc<Conversations>,
        router: Addr<Router>,
        metrics: Arc<Metrics>,
        settings: OwnerSettings,
        shards: usize,
        cluster: OwnerCluster,
    ) -> (OwnerHandle, Vec<ShardTask>) {
        let mut tasks = Vec::with_capacity(shards.max(1));
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
                tasks.push(ShardTask { owner, rx });
                tx
            })
            .collect();
        (OwnerHandle { shards: senders.into(), placement: cluster.placement, peers: cluster.peers }, tasks)
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
        let started = Instant::now();
        let requests = batch.len();
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
        // 3. Idempotency and the durable append, in one store call for the whole batch.
        let checked = started.elapsed();
        if !candidates.is_empty() {
            self.store_new(candidates).await;
        }
        let stored = started.elapsed();
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
        let total = started.elapsed();
        if total >= SLOW_BATCH {
            tracing::warn!(
                requests,
                total_ms = total.as_millis() as u64,
                checks_ms = checked.as_millis() as u64,
                store_and_publish_ms = (stored - checked).as_millis() as u64,
                receipts_and_changes_ms = (total - stored).as_millis() as u64,
                "slow owner batch"
            );
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
        Ok(Accepted {
            message,
            body: send.body,
            attachments,
            attachment_ids: send.attachments,
            info,
            replies,
        })
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
}
