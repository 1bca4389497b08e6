//! Authenticated, multiplexed TCP links between cluster nodes.
//!
//! Owns every node-to-node connection of one node ([`Links`]): dialing, accepting, the mutual
//! HMAC-SHA256 handshake, heartbeats and dead-peer detection, reconnection with backoff, one
//! bounded outbound queue per peer, and request/reply multiplexing over a single connection.
//! The byte format lives in [`super::frame`]; what a message means is the [`Handler`]'s business.
//!
//! Rules this module keeps:
//! - One TCP connection per pair of nodes: the node whose id sorts lower dials, the higher one
//!   accepts (and refuses a dial from a higher id). Both sides call and cast over it.
//! - Each peer has one bounded FIFO queue (`queue_frames`) that outlives connections: frames queued
//!   while disconnected are sent when a connection comes up. Frames already handed to a socket
//!   that then dies are lost, so casts are at-most-once across a reconnect; casts still queued are
//!   delivered, in order, on the next connection.
//! - A call whose request was written to a connection that dies fails with [`LinkError::Closed`]
//!   (the caller may retry; the peer may or may not have run it). A call still queued when a
//!   connection dies stays queued until its own deadline. A request is never written after its
//!   caller gave up, and a reply is only ever written on the connection its request came on.
//! - A newer authenticated connection from a peer supersedes the older one (the peer restarted).
//! - Nothing is unbounded: peer queues, the heartbeat reply queue, requests being served per
//!   connection and handshakes in progress all have fixed limits. Bad input from the network
//!   closes that connection; it never panics.
//!
//! Everything runs as `tokio::spawn`ed `Send` tasks on the runtime that called [`Links::start`]
//! (actix-rt's current-thread runtimes included); nothing blocks a thread.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::{MissedTickBehavior, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::frame::{
    self, Envelope, FrameError, MAC_LEN, MAX_FRAME_LEN, NONCE_LEN, PROTOCOL_VERSION, encode_frame,
    read_frame, write_frame,
};

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 32;
/// Longest node id accepted (bytes).
pub const MAX_NODE_ID_LEN: usize = 255;

/// Largest frame accepted before a peer has authenticated.
const HANDSHAKE_FRAME_MAX: usize = 1024;
/// Handshakes (inbound, unauthenticated) in progress at once; more connections are dropped.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Requests from one connection being served at once; past this the reader stops reading.
const MAX_INFLIGHT_REQUESTS: usize = 1024;
/// Pongs waiting to be written; when full, a Pong is dropped (the peer just misses one RTT sample).
const CONTROL_QUEUE: usize = 16;
/// The writer stops adding queued frames to a batch once it holds this many bytes.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
const READ_BUFFER_BYTES: usize = 64 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that lived this long resets the dialer's backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);
/// How long `shutdown` waits for connection tasks to wind down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const ACCEPT_LABEL: &[u8] = b"sb-accept";
const DIAL_LABEL: &[u8] = b"sb-dial";

type HmacSha256 = Hmac<Sha256>;

/// Configuration of one node's links.
#[derive(Clone)]
pub struct LinkConfig {
    /// This node's id; ids order who dials whom.
    pub node_id: String,
    /// Cluster secret (HMAC-SHA256 key), at least [`MIN_SECRET_LEN`] bytes. Never logged.
    pub secret: Vec<u8>,
    /// Where to listen; port 0 picks a free port (see [`Links::local_addr`]).
    pub listen: SocketAddr,
    /// Capacity of each peer's outbound queue, in frames.
    pub queue_frames: usize,
    /// Ping interval.
    pub heartbeat: Duration,
    /// A connection on which nothing arrived for this long is dropped.
    pub dead_after: Duration,
    /// Deadline of [`Links::call`], and how long [`Links::cast`] waits for queue space.
    pub call_timeout: Duration,
    /// Limit on connect + handshake.
    pub handshake_timeout: Duration,
}

impl LinkConfig {
    /// A configuration with the default limits: 4096 queued frames, 1 s heartbeat, 5 s dead
    /// peer, 5 s call timeout, 5 s handshake.
    pub fn new(node_id: impl Into<String>, secret: impl Into<Vec<u8>>, listen: SocketAddr) -> Self {
        LinkConfig {
            node_id: node_id.into(),
            secret: secret.into(),
            listen,
            queue_frames: 4096,
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
        }
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_string()));
        if !valid_node_id(&self.node_id) {
            return invalid("cluster link: node_id must be 1..=255 bytes");
        }
        if self.secret.len() < MIN_SECRET_LEN {
            return invalid("cluster link: secret must be at least 32 bytes");
        }
        if self.queue_frames == 0 {
            return invalid("cluster link: queue_frames must be at least 1");
        }
        if self.heartbeat.is_zero() || self.dead_after <= self.heartbeat {
            return invalid("cluster link: need 0 < heartbeat < dead_after");
        }
        if self.call_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return invalid("cluster link: timeouts must be non-zero");
        }
        Ok(())
    }
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .field("listen", &self.listen)
            .field("queue_frames", &self.queue_frames)
            .field("heartbeat", &self.heartbeat)
            .field("dead_after", &self.dead_after)
            .field("call_timeout", &self.call_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// What a link message type must be.
pub trait LinkMessage: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> LinkMessage for T {}

/// The application side of the links: serves what peers send.
pub trait Handler<T>: Send + Sync + 'static {
    /// A request from `peer`; the returned future's output is sent back as the reply. Each
    /// request runs in its own task, so a slow one does not hold up the connection.
    fn request(&self, peer: &str, body: T) -> Pin<Box<dyn Future<Output = T> + Send>>;
    /// A one-way message from `peer`, delivered in the order the peer cast them. Called inline
    /// by the connection's reader: it must not block.
    fn cast(&self, peer: &str, body: T);
}

/// Why a call or cast failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer is not in the peer set (and not connected to us).
    #[error("unknown cluster peer {0:?}")]
    UnknownPeer(String),
    /// No connection to the peer came up before the deadline.
    #[error("cluster peer {0:?} not connected")]
    NotConnected(String),
    /// The peer's outbound queue stayed full.
    #[error("outbound queue to cluster peer {0:?} is full")]
    Full(String),
    /// Connected, but no reply before the deadline.
    #[error("call to cluster peer {0:?} timed out")]
    Timeout(String),
    /// The connection carrying the call died, or the peer was removed, or the links shut down.
    #[error("link to cluster peer {0:?} closed")]
    Closed(String),
    /// The message could not be encoded (or is over the frame size limit).
    #[error("cannot encode message for cluster peer {peer:?}: {reason}")]
    Encode { peer: String, reason: String },
}

/// Counters of one peer, from [`Links::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub peer: String,
    /// In the peer set (false: known only because it connected to us).
    pub listed: bool,
    pub connected: bool,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections established with this peer so far.
    pub connections: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// Frames waiting in the outbound queue.
    pub queue_len: usize,
    /// Calls waiting for a reply (or for their request to be sent).
    pub pending_calls: usize,
    /// Round-trip time of the latest heartbeat, microseconds (0: none yet).
    pub last_rtt_us: u64,
}

/// One node's links to its cluster peers. Cheap to clone; dropping the last clone (or
/// [`Links::shutdown`]) closes everything.
pub struct Links<T> {
    handle: Arc<Handle<T>>,
}

impl<T> Clone for Links<T> {
    fn clone(&self) -> Self {
        Links { handle: self.handle.clone() }
    }
}

/// Owned by the `Links` clones only (tasks hold `Shared`), so its drop means "no users left".
struct Handle<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.shared.close_all();
    }
}

impl<T: LinkMessage> Links<T> {
    /// Binds the listener and starts accepting. Peers are added with [`Links::set_peers`].
    pub async fn start(config: LinkConfig, handler: Arc<dyn Handler<T>>) -> io::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            runtime: tokio::runtime::Handle::current(),
            local_addr,
            epoch: Instant::now(),
            next_request_id: AtomicU64::new(getrandom::u64().unwrap_or(1) >> 1),
            next_conn_id: AtomicU64::new(1),
            peers: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
            alive: Mutex::new(Some(alive_tx.clone())),
            all_done: tokio::sync::Mutex::new(Some(alive_rx)),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            config,
            handler,
        });
        info!(node = %shared.config.node_id, %local_addr, "cluster links listening");
        shared.runtime.spawn(accept_loop(shared.clone(), listener, alive_tx));
        Ok(Links { handle: Arc::new(Handle { shared }) })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.handle.shared.config.node_id
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.shared.local_addr
    }

    /// Replaces the peer set (id -> address), from cluster membership. Peers that left are
    /// disconnected and their calls fail with `Closed`; new ones are connected (dialed by the
    /// lower id). A changed address of a peer we dial drops its connection and redials at once.
    /// This node's own id is ignored.
    pub fn set_peers(&self, peers: HashMap<String, SocketAddr>) {
        let shared = &self.handle.shared;
        if shared.is_shutting_down() {
            return;
        }
        let me = shared.config.node_id.as_str();
        let mut removed = Vec::new();
        let mut to_dial = Vec::new();
        {
            let mut map = lock(&shared.peers);
            map.retain(|id, peer| {
                let keep = peers.contains_key(id) || !peer.is_listed();
                if !keep {
                    removed.push(peer.clone());
                }
                keep
            });
            for (id, addr) in peers {
                if id == me {
                    continue;
                }
                if !valid_node_id(&id) {
                    warn!(peer = ?id, "cluster link: ignoring invalid peer id");
                    continue;
                }
                let we_dial = me < id.as_str();
                match map.get(&id) {
                    Some(peer) => peer.set_addr(addr, we_dial),
                    None => {
                        let peer = Arc::new(Peer::new(id.clone(), Some(addr), shared.config.queue_frames));
                        if we_dial {
                            to_dial.push(peer.clone());
                        }
                        map.insert(id, peer);
                    }
                }
            }
        }
        for peer in removed {
            info!(peer = %peer.id, "cluster peer removed");
            peer.close();
        }
        for peer in to_dial {
            if let Some(alive) = shared.alive_token() {
                shared.runtime.spawn(dial_loop(shared.clone(), peer, alive));
            }
        }
    }

    /// Request/response with the configured `call_timeout`.
    pub async fn call(&self, peer: &str, body: T) -> Result<T, LinkError> {
        self.call_within(peer, body, self.handle.shared.config.call_timeout).await
    }

    /// Request/response with an explicit deadline. Errors: `UnknownPeer`; `NotConnected` (no
    /// connection by the deadline); `Full` (queue stayed full); `Timeout` (connected, no reply);
    /// `Closed` (the connection carrying it died, or the peer was removed); `Encode`.
    pub async fn call_within(&self, peer_id: &str, body: T, limit: Duration) -> Result<T, LinkError> {
        let deadline = tokio::time::Instant::now() + limit;
        let shared = &self.handle.shared;
        let peer = shared.peer(peer_id)?;
        let id = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&Envelope::Request { id, body }).map_err(|e| peer.encode_error(e))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        peer.register_call(id, reply_tx)?;
        let _pending = PendingCallGuard { peer: &peer, id };
        match timeout_at(deadline, peer.enqueue(Outbound::Request { id, frame })).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) if peer.is_connected() => return Err(LinkError::Full(peer.id.clone())),
            Err(_) => return Err(LinkError::NotConnected(peer.id.clone())),
        }
        match timeout_at(deadline, reply_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(LinkError::Closed(peer.id.clone())),
            Err(_) if peer.is_connected() => Err(LinkError::Timeout(peer.id.clone())),
            Err(_) => Err(LinkError::NotConnected(peer.id.clone())),
        }
    }

    /// One-way message, FIFO per peer. Waits while the peer's queue is full, up to
    /// `call_timeout`, then fails with `Full`. Queued while disconnected; see the module docs for
    /// what a reconnect does to queued casts.
    pub async fn cast(&self, peer_id: &str, body: T) -> Result<(), LinkError> {
        let shared = &self.handle.shared;
        let peer = shared.peer(peer_id)?;
        let frame = encode_frame(&Envelope::Cast { body }).map_err(|e| peer.encode_error(e))?;
        match timeout(shared.config.call_timeout, peer.enqueue(Outbound::Cast(frame))).await {
            Ok(result) => result,
            Err(_) => Err(LinkError::Full(peer.id.clone())),
        }
    }

    /// Like [`Links::cast`] but never waits: `Full` when the queue is full.
    pub fn try_cast(&self, peer_id: &str, body: T) -> Result<(), LinkError> {
        let peer = self.handle.shared.peer(peer_id)?;
        let frame = encode_frame(&Envelope::Cast { body }).map_err(|e| peer.encode_error(e))?;
        if peer.is_closed() {
            return Err(LinkError::Closed(peer.id.clone()));
        }
        peer.queue_tx.try_send(Outbound::Cast(frame)).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => LinkError::Full(peer.id.clone()),
            mpsc::error::TrySendError::Closed(_) => LinkError::Closed(peer.id.clone()),
        })
    }

    /// Counters of every known peer, sorted by id.
    pub fn stats(&self) -> Vec<PeerStats> {
        let peers: Vec<_> = lock(&self.handle.shared.peers).values().cloned().collect();
        let mut stats: Vec<_> = peers.iter().map(|peer| peer.stats()).collect();
        stats.sort_by(|a, b| a.peer.cmp(&b.peer));
        stats
    }

    /// Whether an authenticated connection to `peer` is up.
    pub fn is_connected(&self, peer: &str) -> bool {
        lock(&self.handle.shared.peers).get(peer).is_some_and(|p| p.is_connected())
    }

    /// Closes the listener and every connection, fails pending calls with `Closed`, and waits
    /// (bounded) for the connection tasks to finish. Calls made afterwards fail.
    pub async fn shutdown(&self) {
        let shared = &self.handle.shared;
        shared.close_all();
        let all_done = shared.all_done.lock().await.take();
        if let Some(mut all_done) = all_done {
            // Resolves once every task holding an alive token has ended.
            let _ = timeout(SHUTDOWN_GRACE, all_done.recv()).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct Shared<T> {
    config: LinkConfig,
    handler: Arc<dyn Handler<T>>,
    runtime: tokio::runtime::Handle,
    local_addr: SocketAddr,
    /// Zero point of heartbeat timestamps.
    epoch: Instant,
    next_request_id: AtomicU64,
    /// Connection ids start at 1; 0 marks "not sent on any connection".
    next_conn_id: AtomicU64,
    peers: Mutex<HashMap<String, Arc<Peer<T>>>>,
    shutdown: watch::Sender<bool>,
    /// Every long-lived task holds a clone; `all_done` yields `None` once all are gone.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_done: tokio::sync::Mutex<Option<mpsc::Receiver<()>>>,
    handshakes: Arc<Semaphore>,
}

impl<T> Shared<T> {
    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn alive_token(&self) -> Option<mpsc::Sender<()>> {
        lock(&self.alive).clone()
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn peer(&self, id: &str) -> Result<Arc<Peer<T>>, LinkError> {
        lock(&self.peers).get(id).cloned().ok_or_else(|| LinkError::UnknownPeer(id.to_string()))
    }

    /// The entry for a peer that authenticated on an inbound connection; created (unlisted) if
    /// membership has not told us about it yet.
    fn peer_for_inbound(&self, id: &str) -> Option<Arc<Peer<T>>> {
        if self.is_shutting_down() {
            return None;
        }
        let mut map = lock(&self.peers);
        let peer = map
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Peer::new(id.to_string(), None, self.config.queue_frames)));
        Some(peer.clone())
    }

    /// Drops an unlisted peer whose (only) connection ended.
    fn forget_if_unlisted(&self, peer: &Arc<Peer<T>>) {
        let forgotten = {
            let mut map = lock(&self.peers);
            let unused = map.get(&peer.id).is_some_and(|current| {
                Arc::ptr_eq(current, peer) && {
                    let state = peer.state();
                    state.addr.is_none() && state.conn.is_none()
                }
            });
            unused && map.remove(&peer.id).is_some()
        };
        if forgotten {
            peer.close();
        }
    }

    fn close_all(&self) {
        self.shutdown.send_replace(true);
        let peers: Vec<_> = lock(&self.peers).drain().map(|(_, peer)| peer).collect();
        for peer in peers {
            peer.close();
        }
        lock(&self.alive).take();
    }
}

/// What a peer's outbound queue holds: complete, encoded frames.
enum Outbound {
    Cast(Bytes),
    /// Written only while the call is still waiting (its pending entry exists).
    Request {
        id: u64,
        frame: Bytes,
    },
    /// Written only on the connection the request came in on.
    Reply {
        conn: u64,
        frame: Bytes,
    },
}

struct Peer<T> {
    id: String,
    queue_tx: mpsc::Sender<Outbound>,
    /// Held by the writer of the current connection.
    queue_rx: tokio::sync::Mutex<mpsc::Receiver<Outbound>>,
    state: Mutex<PeerState<T>>,
    /// Set once when the peer is removed or the links shut down.
    closed: watch::Sender<bool>,
    /// Wakes the dialer out of its backoff (the address changed).
    redial: Notify,
    counters: Counters,
}

struct PeerState<T> {
    /// `None`: not in the peer set, known only from an inbound connection.
    addr: Option<SocketAddr>,
    conn: Option<ConnSlot>,
    pending: HashMap<u64, PendingCall<T>>,
}

/// The current connection; dropping the slot stops that connection's task.
struct ConnSlot {
    id: u64,
    _stop: oneshot::Sender<()>,
}

struct PendingCall<T> {
    reply: oneshot::Sender<Result<T, LinkError>>,
    /// Connection the request was written to; 0 while still queued.
    sent_on: u64,
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    connections: AtomicU64,
    last_rtt_us: AtomicU64,
}

impl<T> Peer<T> {
    fn new(id: String, addr: Option<SocketAddr>, queue_frames: usize) -> Self {
        let (queue_tx, queue_rx) = mpsc::channel(queue_frames);
        Peer {
            id,
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            state: Mutex::new(PeerState { addr, conn: None, pending: HashMap::new() }),
            closed: watch::Sender::new(false),
            redial: Notify::new(),
            counters: Counters::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, PeerState<T>> {
        lock(&self.state)
    }

    fn is_listed(&self) -> bool {
        self.state().addr.is_some()
    }

    fn is_connected(&self) -> bool {
        self.state().conn.is_some()
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn is_current(&self, conn_id: u64) -> bool {
        self.state().conn.as_ref().is_some_and(|c| c.id == conn_id)
    }

    fn encode_error(&self, err: FrameError) -> LinkError {
        LinkError::Encode { peer: self.id.clone(), reason: err.to_string() }
    }

    /// Records the address from membership. If we dial this peer and the address changed, the
    /// current connection is dropped and the dialer redials at once.
    fn set_addr(&self, addr: SocketAddr, we_dial: bool) {
        let (changed, stale_conn) = {
            let mut state = self.state();
            let changed = state.addr.replace(addr) != Some(addr);
            (changed, if changed && we_dial { state.conn.take() } else { None })
        };
        if changed && we_dial {
            info!(peer = %self.id, %addr, "cluster peer address changed; redialing");
            drop(stale_conn);
            self.redial.notify_one();
        }
    }

    /// Installs a new connection, superseding (stopping) the previous one. False if closed.
    fn attach(&self, conn_id: u64, stop: oneshot::Sender<()>) -> bool {
        let previous = {
            let mut state = self.state();
            if self.is_closed() {
                return false;
            }
            state.conn.replace(ConnSlot { id: conn_id, _stop: stop })
        };
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        if let Some(previous) = previous {
            info!(peer = %self.id, old = previous.id, new = conn_id, "cluster link superseded by a newer connection");
        }
        true
    }

    /// A connection ended: clear it if current, fail the calls whose requests it carried.
    fn detach(&self, conn_id: u64) {
        let failed: Vec<_> = {
            let mut state = self.state();
            if state.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                state.conn = None;
            }
            state.pending.extract_if(|_, call| call.sent_on == conn_id).map(|(_, call)| call.reply).collect()
        };
        for reply in failed {
            let _ = reply.send(Err(LinkError::Closed(self.id.clone())));
        }
    }

    /// Removed from the peer set or shutting down: stop everything, fail every call.
    fn close(&self) {
        self.closed.send_replace(true);
        let (conn, failed): (_, Vec<_>) = {
            let mut state = self.state();
            (state.conn.take(), state.pending.drain().map(|(_, call)| call.reply).collect())
        };
        drop(conn);
        for reply in failed {
            let _ = reply.send(Err(LinkError::Closed(self.id.clone())));
        }
        self.redial.notify_one();
    }

    fn register_call(&self, id: u64, reply: oneshot::Sender<Result<T, LinkError>>) -> Result<(), LinkError> {
        let mut state = self.state();
        if self.is_closed() {
            return Err(LinkError::Closed(self.id.clone()));
        }
        state.pending.insert(id, PendingCall { reply, sent_on: 0 });
        Ok(())
    }

    fn complete_call(&self, id: u64, body: T) {
        let call = self.state().pending.remove(&id);
        match call {
            Some(call) => {
                let _ = call.reply.send(Ok(body));
            }
            None => debug!(peer = %self.id, id, "cluster link: reply for a call no longer waiting"),
        }
    }

    /// Waits for queue space (async back-pressure) unless the peer gets closed meanwhile.
    async fn enqueue(&self, item: Outbound) -> Result<(), LinkError> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow_and_update() {
            return Err(LinkError::Closed(self.id.clone()));
        }
        tokio::select! {
            sent = self.queue_tx.send(item) => sent.map_err(|_| LinkError::Closed(self.id.clone())),
            _ = closed.wait_for(|closed| *closed) => Err(LinkError::Closed(self.id.clone())),
        }
    }

    /// Adds a dequeued item to the writer's batch if it is still wanted; returns frames added.
    fn admit(&self, conn_id: u64, item: Outbound, batch: &mut BytesMut) -> u64 {
        let frame = match item {
            Outbound::Cast(frame) => frame,
            Outbound::Request { id, frame } => {
                let mut state = self.state();
                match state.pending.get_mut(&id) {
                    Some(call) => call.sent_on = conn_id,
                    None => return 0, // the caller gave up
                }
                frame
            }
            Outbound::Reply { conn, frame } if conn == conn_id => frame,
            Outbound::Reply { .. } => return 0, // its request came on a connection now gone
        };
        batch.extend_from_slice(&frame);
        1
    }

    fn stats(&self) -> PeerStats {
        let (listed, connected, pending_calls) = {
            let state = self.state();
            (state.addr.is_some(), state.conn.is_some(), state.pending.len())
        };
        let counters = &self.counters;
        let connections = counters.connections.load(Ordering::Relaxed);
        PeerStats {
            peer: self.id.clone(),
            listed,
            connected,
            frames_sent: counters.frames_sent.load(Ordering::Relaxed),
            frames_received: counters.frames_received.load(Ordering::Relaxed),
            bytes_sent: counters.bytes_sent.load(Ordering::Relaxed),
            bytes_received: counters.bytes_received.load(Ordering::Relaxed),
            connections,
            reconnects: connections.saturating_sub(1),
            queue_len: self.queue_tx.max_capacity() - self.queue_tx.capacity(),
            pending_calls,
            last_rtt_us: counters.last_rtt_us.load(Ordering::Relaxed),
        }
    }
}

/// Removes a call's pending entry however `call_within` ends (reply, error, or being dropped).
struct PendingCallGuard<'a, T> {
    peer: &'a Peer<T>,
    id: u64,
}

impl<T> Drop for PendingCallGuard<'_, T> {
    fn drop(&mut self) {
        self.peer.state().pending.remove(&self.id);
    }
}

fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    // No code path panics while holding these locks; recover the data regardless.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_NODE_ID_LEN
}

// ---------------------------------------------------------------------------------------------
// Accepting and dialing

async fn accept_loop<T: LinkMessage>(
    shared: Arc<Shared<T>>,
    listener: TcpListener,
    _alive: mpsc::Sender<()>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|down| *down) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
                    warn!(%remote, "cluster link: too many handshakes in progress; dropping connection");
                    continue;
                };
                let Some(alive) = shared.alive_token() else { return };
                shared.runtime.spawn(serve_inbound(shared.clone(), stream, remote, permit, alive));
            }
            Err(err) => {
                warn!(error = %err, "cluster link: accept failed");
                tokio::select! {
                    _ = shutdown.wait_for(|down| *down) => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

async fn serve_inbound<T: LinkMessage>(
    shared: Arc<Shared<T>>,
    mut stream: TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
    _alive: mpsc::Sender<()>,
) {
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.shutdown.subscribe();
    let handshake = tokio::select! {
        _ = shutdown.wait_for(|down| *down) => return,
        result = timeout(shared.config.handshake_timeout, accept_handshake::<T>(&shared.config.node_id, &shared.config.secret, &mut stream)) => result,
    };
    drop(permit);
    let peer_id = match handshake {
        Ok(Ok(peer_id)) => peer_id,
        Ok(Err(err)) => {
            warn!(%remote, error = %err, "cluster link: inbound handshake failed");
            return;
        }
        Err(_) => {
            warn!(%remote, "cluster link: inbound handshake timed out");
            return;
        }
    };
    let Some(peer) = shared.peer_for_inbound(&peer_id) else { return };
    run_connection(&shared, &peer, stream).await;
    shared.forget_if_unlisted(&peer);
}

/// Keeps one connection to a peer we dial, redialing with exponential backoff and jitter,
/// until the peer is removed or the links shut down.
async fn dial_loop<T: LinkMessage>(shared: Arc<Shared<T>>, peer: Arc<Peer<T>>, _alive: mpsc::Sender<()>) {
    let mut closed = peer.closed.subscribe();
    let mut backoff = BACKOFF_MIN;
    loop {
        let addr = peer.state().addr;
        let Some(addr) = addr else { return };
        if peer.is_closed() {
            return;
        }
        let dialed = tokio::select! {
            _ = closed.wait_for(|closed| *closed) => return,
            // The address changed while this attempt hung: start over with the new one.
            _ = peer.redial.notified() => {
                backoff = BACKOFF_MIN;
                continue;
            }
            dialed = timeout(shared.config.handshake_timeout, dial(&shared, addr, &peer.id)) => dialed,
        };
        match dialed {
            Ok(Ok(stream)) => {
                let up_since = Instant::now();
                run_connection(&shared, &peer, stream).await;
                if up_since.elapsed() >= STABLE_CONNECTION {
                    backoff = BACKOFF_MIN;
                }
            }
            Ok(Err(HandshakeError::Connect(err))) => {
                debug!(peer = %peer.id, %addr, error = %err, "cluster link: connect failed");
            }
            Ok(Err(err)) => {
                warn!(peer = %peer.id, %addr, error = %err, "cluster link: outbound handshake failed")
            }
            Err(_) => warn!(peer = %peer.id, %addr, "cluster link: connect/handshake timed out"),
        }
        let delay = with_jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = closed.wait_for(|closed| *closed) => return,
            _ = peer.redial.notified() => backoff = BACKOFF_MIN,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Somewhere in [backoff/2, backoff].
fn with_jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_micros(getrandom::u64().unwrap_or(0) % span)
}

async fn dial<T: LinkMessage>(
    shared: &Shared<T>,
    addr: SocketAddr,
    peer_id: &str,
) -> Result<TcpStream, HandshakeError> {
    let mut stream = TcpStream::connect(addr).await.map_err(HandshakeError::Connect)?;
    let _ = stream.set_nodelay(true);
    dial_handshake::<T>(&shared.config.node_id, &shared.config.secret, &mut stream, peer_id).await?;
    Ok(stream)
}

// ---------------------------------------------------------------------------------------------
// Handshake

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("expected a {0} frame")]
    Unexpected(&'static str),
    #[error("peer identifies as {got:?}, expected {expected:?}")]
    WrongPeer { expected: String, got: String },
    #[error("invalid peer id {0:?}")]
    BadNodeId(String),
    #[error("peer {0:?} sorts above this node, so this node dials it, not the other way round")]
    WrongDirection(String),
    #[error("authentication failed (MAC mismatch: wrong cluster secret?)")]
    BadMac,
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

/// Acceptor side; returns the authenticated dialer's id.
async fn accept_handshake<T: LinkMessage>(
    me: &str,
    secret: &[u8],
    stream: &mut TcpStream,
) -> Result<String, HandshakeError> {
    let mut read_buf = Vec::new();
    let mut write_buf = BytesMut::new();
    let (hello, _) = read_frame::<_, T>(stream, &mut read_buf, HANDSHAKE_FRAME_MAX).await?;
    let Envelope::Hello { version, node: dialer, nonce: dialer_nonce } = hello else {
        return Err(HandshakeError::Unexpected("Hello"));
    };
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version(version));
    }
    if !valid_node_id(&dialer) || dialer == me {
        return Err(HandshakeError::BadNodeId(dialer));
    }
    if dialer.as_str() > me {
        return Err(HandshakeError::WrongDirection(dialer));
    }
    let my_nonce = random_nonce()?;
    let mac = handshake_mac(secret, ACCEPT_LABEL, me, &dialer, &dialer_nonce, &my_nonce)?.finalize();
    let challenge = Envelope::<T>::Challenge {
        version: PROTOCOL_VERSION,
        node: me.to_string(),
        nonce: my_nonce,
        mac: mac.into_bytes().into(),
    };
    write_frame(stream, &challenge, &mut write_buf).await?;
    let (proof, _) = read_frame::<_, T>(stream, &mut read_buf, HANDSHAKE_FRAME_MAX).await?;
    let Envelope::Proof { mac } = proof else {
        return Err(HandshakeError::Unexpected("Proof"));
    };
    handshake_mac(secret, DIAL_LABEL, &dialer, me, &my_nonce, &dialer_nonce)?
        .verify_slice(&mac)
        .map_err(|_| HandshakeError::BadMac)?;
    Ok(dialer)
}

/// Dialer side; succeeds only if the acceptor proves the secret and is `expected`.
async fn dial_handshake<T: LinkMessage>(
    me: &str,
    secret: &[u8],
    stream: &mut TcpStream,
    expected: &str,
) -> Result<(), HandshakeError> {
    let mut read_buf = Vec::new();
    let mut write_buf = BytesMut::new();
    let my_nonce = random_nonce()?;
    let hello = Envelope::<T>::Hello { version: PROTOCOL_VERSION, node: me.to_string(), nonce: my_nonce };
    write_frame(stream, &hello, &mut write_buf).await?;
    let (challenge, _) = read_frame::<_, T>(stream, &mut read_buf, HANDSHAKE_FRAME_MAX).await?;
    let Envelope::Challenge { version, node: acceptor, nonce: acceptor_nonce, mac } = challenge else {
        return Err(HandshakeError::Unexpected("Challenge"));
    };
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version(version));
    }
    if acceptor != expected {
        return Err(HandshakeError::WrongPeer { expected: expected.to_string(), got: acceptor });
    }
    handshake_mac(secret, ACCEPT_LABEL, &acceptor, me, &my_nonce, &acceptor_nonce)?
        .verify_slice(&mac)
        .map_err(|_| HandshakeError::BadMac)?;
    let proof = handshake_mac(secret, DIAL_LABEL, me, &acceptor, &acceptor_nonce, &my_nonce)?.finalize();
    write_frame(stream, &Envelope::<T>::Proof { mac: proof.into_bytes().into() }, &mut write_buf).await?;
    Ok(())
}

/// HMAC(secret, label | len16(first_id) first_id | len16(second_id) second_id | nonce1 | nonce2).
/// Ids are length-prefixed so that no two (first, second) pairs give the same input.
fn handshake_mac(
    secret: &[u8],
    label: &[u8],
    first_id: &str,
    second_id: &str,
    first_nonce: &[u8; NONCE_LEN],
    second_nonce: &[u8; NONCE_LEN],
) -> Result<HmacSha256, HandshakeError> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).map_err(|_| HandshakeError::BadMac)?;
    mac.update(label);
    for id in [first_id, second_id] {
        // Ids are at most MAX_NODE_ID_LEN (255) bytes, validated before this point.
        mac.update(&(id.len() as u16).to_be_bytes());
        mac.update(id.as_bytes());
    }
    mac.update(first_nonce);
    mac.update(second_nonce);
    Ok(mac)
}

fn random_nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|err| HandshakeError::Random(err.to_string()))?;
    Ok(nonce)
}

const _: () = assert!(MAC_LEN == 32, "HMAC-SHA256 tags are 32 bytes");

// ---------------------------------------------------------------------------------------------
// An established connection

/// Why a connection ended.
enum LinkDown {
    Stopped,
    PeerClosed,
    Silent,
    Protocol(String),
    Io(io::Error),
}

/// Runs an authenticated connection until it dies or is stopped (superseded, address changed,
/// peer removed, shutdown). Registers it as the peer's current connection for its lifetime.
async fn run_connection<T: LinkMessage>(shared: &Arc<Shared<T>>, peer: &Arc<Peer<T>>, stream: TcpStream) {
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    if !peer.attach(conn_id, stop_tx) {
        return;
    }
    info!(peer = %peer.id, conn = conn_id, "cluster link up");
    let (read_half, write_half) = stream.into_split();
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let down = tokio::select! {
        down = read_loop(shared, peer, conn_id, read_half, control_tx) => down,
        down = write_loop(shared, peer, conn_id, write_half, control_rx) => down,
        _ = &mut stop_rx => LinkDown::Stopped,
    };
    peer.detach(conn_id);
    match down {
        LinkDown::Stopped => info!(peer = %peer.id, conn = conn_id, "cluster link closed"),
        LinkDown::PeerClosed => info!(peer = %peer.id, conn = conn_id, "cluster link closed by peer"),
        LinkDown::Silent => warn!(
            peer = %peer.id, conn = conn_id, dead_after = ?shared.config.dead_after,
            "cluster link dropped: peer silent"
        ),
        LinkDown::Protocol(why) => {
            warn!(peer = %peer.id, conn = conn_id, error = %why, "cluster link dropped: bad frame")
        }
        LinkDown::Io(err) => info!(peer = %peer.id, conn = conn_id, error = %err, "cluster link lost"),
    }
}

async fn read_loop<T: LinkMessage>(
    shared: &Arc<Shared<T>>,
    peer: &Arc<Peer<T>>,
    conn_id: u64,
    read_half: OwnedReadHalf,
    control_tx: mpsc::Sender<Bytes>,
) -> LinkDown {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut buf = Vec::new();
    let requests = Arc::new(Semaphore::new(MAX_INFLIGHT_REQUESTS));
    loop {
        let read =
            timeout(shared.config.dead_after, read_frame::<_, T>(&mut reader, &mut buf, MAX_FRAME_LEN));
        let (envelope, size) = match read.await {
            Ok(Ok(frame)) => frame,
            Ok(Err(FrameError::Closed)) => return LinkDown::PeerClosed,
            Ok(Err(FrameError::Io(err))) => return LinkDown::Io(err),
            Ok(Err(err)) => return LinkDown::Protocol(err.to_string()),
            Err(_) => return LinkDown::Silent,
        };
        peer.counters.frames_received.fetch_add(1, Ordering::Relaxed);
        peer.counters.bytes_received.fetch_add(size as u64, Ordering::Relaxed);
        match envelope {
            Envelope::Request { id, body } => {
                let Ok(permit) = requests.clone().acquire_owned().await else { return LinkDown::Stopped };
                shared.runtime.spawn(serve_request(shared.clone(), peer.clone(), conn_id, id, body, permit));
            }
            Envelope::Reply { id, body } => peer.complete_call(id, body),
            Envelope::Cast { body } => shared.handler.cast(&peer.id, body),
            Envelope::Ping { at } => {
                if let Ok(pong) = encode_frame(&Envelope::<T>::Pong { at }) {
                    // Full means pongs are already waiting; skipping one only costs an RTT sample.
                    let _ = control_tx.try_send(pong);
                }
            }
            Envelope::Pong { at } => {
                let rtt = shared.now_us().saturating_sub(at).max(1);
                peer.counters.last_rtt_us.store(rtt, Ordering::Relaxed);
            }
            Envelope::Hello { .. } | Envelope::Challenge { .. } | Envelope::Proof { .. } => {
                return LinkDown::Protocol("handshake frame on an established link".into());
            }
        }
    }
}

async fn serve_request<T: LinkMessage>(
    shared: Arc<Shared<T>>,
    peer: Arc<Peer<T>>,
    conn_id: u64,
    id: u64,
    body: T,
    _permit: OwnedSemaphorePermit,
) {
    let reply = shared.handler.request(&peer.id, body).await;
    let frame = match encode_frame(&Envelope::Reply { id, body: reply }) {
        Ok(frame) => frame,
        Err(err) => {
            warn!(peer = %peer.id, id, error = %err, "cluster link: cannot encode reply; dropped");
            return;
        }
    };
    if !peer.is_current(conn_id) {
        debug!(peer = %peer.id, id, "cluster link: request's connection is gone; reply dropped");
        return;
    }
    match timeout(shared.config.call_timeout, peer.enqueue(Outbound::Reply { conn: conn_id, frame })).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => debug!(peer = %peer.id, id, "cluster link: peer closed; reply dropped"),
        Err(_) => warn!(peer = %peer.id, id, "cluster link: outbound queue full; reply dropped"),
    }
}

async fn write_loop<T: LinkMessage>(
    shared: &Shared<T>,
    peer: &Peer<T>,
    conn_id: u64,
    mut writer: OwnedWriteHalf,
    mut control_rx: mpsc::Receiver<Bytes>,
) -> LinkDown {
    // Waits until a superseded connection's writer has let go of the queue.
    let mut queue = peer.queue_rx.lock().await;
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = BytesMut::with_capacity(WRITE_BATCH_BYTES);
    loop {
        let mut frames = 0u64;
        tokio::select! {
            biased;
            Some(pong) = control_rx.recv() => {
                batch.extend_from_slice(&pong);
                frames += 1;
            }
            _ = heartbeat.tick() => {
                if frame::encode_into(&Envelope::<T>::Ping { at: shared.now_us() }, &mut batch).is_ok() {
                    frames += 1;
                }
            }
            item = queue.recv() => match item {
                Some(item) => frames += peer.admit(conn_id, item, &mut batch),
                None => return LinkDown::Stopped,
            },
        }
        // Batch whatever else is ready into the same write.
        while batch.len() < WRITE_BATCH_BYTES {
            if let Ok(pong) = control_rx.try_recv() {
                batch.extend_from_slice(&pong);
                frames += 1;
                continue;
            }
            match queue.try_recv() {
                Ok(item) => frames += peer.admit(conn_id, item, &mut batch),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(err) = writer.write_all(&batch).await {
            return LinkDown::Io(err);
        }
        peer.counters.frames_sent.fetch_add(frames, Ordering::Relaxed);
        peer.counters.bytes_sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
        if batch.capacity() > 4 * WRITE_BATCH_BYTES {
            batch = BytesMut::with_capacity(WRITE_BATCH_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::join_all;
    use serde::Deserialize;
    use tokio::io::AsyncReadExt;

    const SECRET: &[u8] = b"switchboard-test-secret-0123456789abcdef";
    const OTHER_SECRET: &[u8] = b"some-other-cluster-secret-0123456789abcdef";

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Echo(u64),
        /// Replies after this many milliseconds.
        Slow(u64),
        /// Replies with "<callee> <- <caller>".
        Who,
        Text(String),
        Seq(u64),
        Blob(Vec<u8>),
    }

    struct TestHandler {
        name: String,
        casts: Mutex<Vec<u64>>,
    }

    impl Handler<Msg> for TestHandler {
        fn request(&self, peer: &str, body: Msg) -> Pin<Box<dyn Future<Output = Msg> + Send>> {
            let me = self.name.clone();
            let peer = peer.to_string();
            Box::pin(async move {
                match body {
                    Msg::Slow(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Msg::Echo(ms)
                    }
                    Msg::Who => Msg::Text(format!("{me} <- {peer}")),
                    other => other,
                }
            })
        }

        fn cast(&self, _peer: &str, body: Msg) {
            if let Msg::Seq(n) = body {
                lock(&self.casts).push(n);
            }
        }
    }

    impl TestHandler {
        fn casts(&self) -> Vec<u64> {
            lock(&self.casts).clone()
        }
    }

    fn config(id: &str) -> LinkConfig {
        let mut config = LinkConfig::new(id, SECRET, "127.0.0.1:0".parse().unwrap());
        config.heartbeat = Duration::from_millis(100);
        config.dead_after = Duration::from_millis(1000);
        config.call_timeout = Duration::from_secs(2);
        config.handshake_timeout = Duration::from_secs(1);
        config
    }

    async fn start(config: LinkConfig) -> (Links<Msg>, Arc<TestHandler>) {
        let handler = Arc::new(TestHandler { name: config.node_id.clone(), casts: Mutex::new(Vec::new()) });
        let links = Links::start(config, handler.clone()).await.unwrap();
        (links, handler)
    }

    /// Gives every node all the others as peers.
    fn mesh(nodes: &[&Links<Msg>]) {
        let all: HashMap<String, SocketAddr> =
            nodes.iter().map(|n| (n.node_id().to_string(), n.local_addr())).collect();
        for node in nodes {
            node.set_peers(all.clone());
        }
    }

    fn peers(list: &[(&str, SocketAddr)]) -> HashMap<String, SocketAddr> {
        list.iter().map(|(id, addr)| (id.to_string(), *addr)).collect()
    }

    async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        condition()
    }

    fn peer_stats(links: &Links<Msg>, peer: &str) -> PeerStats {
        links.stats().into_iter().find(|s| s.peer == peer).expect("peer in stats")
    }

    /// An address nothing listens on.
    async fn dead_addr() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A hand-driven dialer: authenticates as `me` and then does whatever the test wants.
    async fn raw_dial(target: SocketAddr, me: &str, target_id: &str) -> Result<TcpStream, HandshakeError> {
        let mut stream = TcpStream::connect(target).await.map_err(HandshakeError::Connect)?;
        dial_handshake::<Msg>(me, SECRET, &mut stream, target_id).await?;
        Ok(stream)
    }

    /// Reads until the other side closes; returns how long that took.
    async fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut sink = [0u8; 4096];
        loop {
            match timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn two_nodes_call_both_ways_cast_in_order_and_concurrent_calls() {
        let (a, _ha) = start(config("node-a")).await;
        let (b, hb) = start(config("node-b")).await;
        mesh(&[&a, &b]);

        assert_eq!(a.call("node-b", Msg::Who).await, Ok(Msg::Text("node-b <- node-a".into())));
        assert_eq!(b.call("node-a", Msg::Who).await, Ok(Msg::Text("node-a <- node-b".into())));

        for n in 0..10_000 {
            a.cast("node-b", Msg::Seq(n)).await.unwrap();
        }
        assert!(eventually(Duration::from_secs(5), || hb.casts().len() == 10_000).await, "all casts arrive");
        assert_eq!(hb.casts(), (0..10_000).collect::<Vec<_>>(), "casts arrive in order");

        // Replies come back out of order (different delays) and in both directions at once.
        let from_a =
            (0..100u64).map(|i| {
                let a = a.clone();
                async move {
                    (i, a.call("node-b", if i % 3 == 0 { Msg::Slow(i % 40) } else { Msg::Echo(i) }).await)
                }
            });
        let from_b = (0..100u64).map(|i| {
            let b = b.clone();
            async move { (i, b.call("node-a", Msg::Echo(1000 + i)).await) }
        });
        let (from_a, from_b) = tokio::join!(join_all(from_a), join_all(from_b));
        for (i, reply) in from_a {
            assert_eq!(reply, Ok(Msg::Echo(if i % 3 == 0 { i % 40 } else { i })));
        }
        for (i, reply) in from_b {
            assert_eq!(reply, Ok(Msg::Echo(1000 + i)));
        }

        assert!(eventually(Duration::from_secs(2), || peer_stats(&a, "node-b").last_rtt_us > 0).await);
        let stats = peer_stats(&a, "node-b");
        assert!(stats.connected && stats.listed);
        assert_eq!(stats.connections, 1);
        assert!(stats.frames_sent > 10_000 && stats.bytes_sent > stats.frames_sent * 4);
        assert_eq!(stats.pending_calls, 0);
        assert_eq!(peer_stats(&b, "node-a").frames_received, stats.frames_sent);
        assert_eq!(a.call("node-x", Msg::Echo(1)).await, Err(LinkError::UnknownPeer("node-x".into())));
        let too_big = a.try_cast("node-b", Msg::Blob(vec![0; MAX_FRAME_LEN + 1]));
        assert!(matches!(too_big, Err(LinkError::Encode { .. })), "{too_big:?}");
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_secret_never_connects_and_calls_fail_in_time() {
        let (a, _) = start(config("node-a")).await;
        let mut other = config("node-b");
        other.secret = OTHER_SECRET.to_vec();
        let (b, _) = start(other).await;
        mesh(&[&a, &b]);
        let limit = Duration::from_millis(500);
        let started = Instant::now();
        let (ab, ba) = tokio::join!(
            a.call_within("node-b", Msg::Echo(1), limit),
            b.call_within("node-a", Msg::Echo(2), limit)
        );
        assert_eq!(ab, Err(LinkError::NotConnected("node-b".into())));
        assert_eq!(ba, Err(LinkError::NotConnected("node-a".into())));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!a.is_connected("node-b") && !b.is_connected("node-a"));
        // Also refused by hand: the raw dialer cannot verify b's challenge under a's secret.
        assert!(matches!(raw_dial(b.local_addr(), "node-a", "node-b").await, Err(HandshakeError::BadMac)));
        assert_eq!(peer_stats(&a, "node-b").connections, 0);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn restarted_peer_on_new_port_works_again_and_inflight_call_is_closed() {
        let (a, _) = start(config("node-a")).await;
        let (b, _) = start(config("node-b")).await;
        mesh(&[&a, &b]);
        assert_eq!(a.call("node-b", Msg::Echo(1)).await, Ok(Msg::Echo(1)));

        let in_flight = tokio::spawn({
            let a = a.clone();
            async move { a.call_within("node-b", Msg::Slow(10_000), Duration::from_secs(20)).await }
        });
        assert!(eventually(Duration::from_secs(1), || peer_stats(&b, "node-a").frames_received >= 3).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.shutdown().await;
        let started = Instant::now();
        assert_eq!(in_flight.await.unwrap(), Err(LinkError::Closed("node-b".into())));
        assert!(started.elapsed() < Duration::from_secs(1), "closed promptly, not at the deadline");
        assert!(b.call("node-a", Msg::Echo(1)).await.is_err(), "a shut-down node refuses calls");

        let (b2, _) = start(config("node-b")).await;
        assert_ne!(b2.local_addr(), b.local_addr());
        mesh(&[&a, &b2]);
        assert_eq!(a.call("node-b", Msg::Echo(2)).await, Ok(Msg::Echo(2)));
        assert_eq!(b2.call("node-a", Msg::Who).await, Ok(Msg::Text("node-a <- node-b".into())));
        let stats = peer_stats(&a, "node-b");
        assert_eq!((stats.connections, stats.reconnects, stats.pending_calls), (2, 1, 0));
        a.shutdown().await;
        b2.shutdown().await;
    }

    #[tokio::test]
    async fn newer_connection_supersedes_a_half_dead_one() {
        // b accepts from "node-a". First a silent impostor-free raw "node-a" (right secret, then
        // mute, like a crashed process whose socket never closed), then the real node-a.
        let mut cfg = config("node-b");
        cfg.dead_after = Duration::from_secs(10);
        let (b, _) = start(cfg).await;
        b.set_peers(peers(&[("node-a", dead_addr().await)]));
        let _mute = raw_dial(b.local_addr(), "node-a", "node-b").await.unwrap();
        assert!(eventually(Duration::from_secs(1), || b.is_connected("node-a")).await);
        let stuck = tokio::spawn({
            let b = b.clone();
            async move { b.call_within("node-a", Msg::Echo(7), Duration::from_secs(20)).await }
        });
        assert!(eventually(Duration::from_secs(1), || peer_stats(&b, "node-a").pending_calls == 1).await);
        tokio::time::sleep(Duration::from_millis(100)).await;

        let (a, _) = start(config("node-a")).await;
        mesh(&[&a, &b]);
        assert_eq!(a.call("node-b", Msg::Echo(3)).await, Ok(Msg::Echo(3)));
        assert_eq!(
            timeout(Duration::from_secs(1), stuck).await.unwrap().unwrap(),
            Err(LinkError::Closed("node-a".into()))
        );
        assert_eq!(b.call("node-a", Msg::Echo(4)).await, Ok(Msg::Echo(4)));
        let stats = peer_stats(&b, "node-a");
        assert!(stats.connected);
        assert_eq!(stats.connections, 2);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn back_pressure_when_disconnected_then_queue_drains_on_connect() {
        let mut cfg = config("node-a");
        cfg.queue_frames = 8;
        cfg.call_timeout = Duration::from_millis(300);
        let (a, _) = start(cfg).await;
        a.set_peers(peers(&[("node-b", dead_addr().await)]));
        for n in 0..8 {
            a.try_cast("node-b", Msg::Seq(n)).unwrap();
        }
        assert_eq!(a.try_cast("node-b", Msg::Seq(8)), Err(LinkError::Full("node-b".into())));
        let started = Instant::now();
        assert_eq!(a.cast("node-b", Msg::Seq(8)).await, Err(LinkError::Full("node-b".into())));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(2), "{waited:?}");
        assert_eq!(a.call("node-b", Msg::Echo(1)).await, Err(LinkError::NotConnected("node-b".into())));
        assert_eq!(peer_stats(&a, "node-b").queue_len, 8);

        let (b, hb) = start(config("node-b")).await;
        mesh(&[&a, &b]);
        assert!(eventually(Duration::from_secs(3), || hb.casts().len() == 8).await);
        assert_eq!(hb.casts(), (0..8).collect::<Vec<_>>(), "queued casts delivered in order");
        assert_eq!(a.call("node-b", Msg::Echo(5)).await, Ok(Msg::Echo(5)));
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn back_pressure_when_the_peer_stops_reading() {
        // A raw acceptor "node-b" that authenticates, keeps heartbeating, and never reads.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            accept_handshake::<Msg>("node-b", SECRET, &mut stream).await.unwrap();
            let mut buf = BytesMut::new();
            for at in 0.. {
                let ping = Envelope::<Msg>::Ping { at };
                if write_frame(&mut stream, &ping, &mut buf).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut cfg = config("node-a");
        cfg.queue_frames = 4;
        cfg.call_timeout = Duration::from_millis(300);
        let (a, _) = start(cfg).await;
        a.set_peers(peers(&[("node-b", addr)]));
        assert!(eventually(Duration::from_secs(2), || a.is_connected("node-b")).await);
        let blob = vec![7u8; 1 << 20];
        let mut accepted = 0;
        let full = loop {
            match a.try_cast("node-b", Msg::Blob(blob.clone())) {
                Ok(()) => accepted += 1,
                Err(err) => break err,
            }
            assert!(accepted < 200, "socket buffers cannot absorb 200 MiB");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert_eq!(full, LinkError::Full("node-b".into()));
        assert_eq!(a.cast("node-b", Msg::Seq(1)).await, Err(LinkError::Full("node-b".into())));
        assert!(a.is_connected("node-b"), "a stalled reader is back-pressure, not death");
        a.shutdown().await;
        acceptor.abort();
    }

    #[tokio::test]
    async fn silent_peer_is_dropped_after_dead_after() {
        let mut cfg = config("node-b");
        cfg.dead_after = Duration::from_millis(600);
        let (b, _) = start(cfg).await;
        // Unlisted: b accepts any authenticated lower id and forgets it when the link dies.
        let mut mute = raw_dial(b.local_addr(), "node-a", "node-b").await.unwrap();
        assert!(eventually(Duration::from_secs(1), || b.is_connected("node-a")).await);
        assert!(!peer_stats(&b, "node-a").listed);
        let closed_after = time_until_closed(&mut mute, Duration::from_secs(3)).await.expect("b drops it");
        assert!(closed_after >= Duration::from_millis(500), "{closed_after:?}");
        assert!(closed_after < Duration::from_millis(600 + 500), "{closed_after:?}");
        assert!(eventually(Duration::from_secs(1), || b.stats().is_empty()).await, "unlisted peer forgotten");

        // Dialer side: a silent acceptor is dropped too, and redialed.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                if accept_handshake::<Msg>("node-c", SECRET, &mut stream).await.is_ok() {
                    held.push(stream); // keep it open, say nothing
                }
            }
        });
        let mut cfg = config("node-a");
        cfg.dead_after = Duration::from_millis(400);
        cfg.heartbeat = Duration::from_millis(100);
        let (a, _) = start(cfg).await;
        a.set_peers(peers(&[("node-c", addr)]));
        assert!(eventually(Duration::from_secs(1), || a.is_connected("node-c")).await);
        assert!(eventually(Duration::from_secs(1), || !a.is_connected("node-c")).await, "dropped");
        assert!(
            eventually(Duration::from_secs(2), || peer_stats(&a, "node-c").connections >= 2).await,
            "redialed"
        );
        a.shutdown().await;
        b.shutdown().await;
        acceptor.abort();
    }

    #[tokio::test]
    async fn three_nodes_one_connection_per_pair() {
        let (a, _) = start(config("node-a")).await;
        let (b, _) = start(config("node-b")).await;
        let (c, _) = start(config("node-c")).await;
        let nodes = [&a, &b, &c];
        mesh(&nodes);
        for from in nodes {
            for to in nodes {
                if from.node_id() != to.node_id() {
                    assert_eq!(from.call(to.node_id(), Msg::Echo(9)).await, Ok(Msg::Echo(9)));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for node in nodes {
            let stats = node.stats();
            assert_eq!(stats.len(), 2);
            for peer in stats {
                assert!(peer.connected, "{} -> {}", node.node_id(), peer.peer);
                assert_eq!(peer.connections, 1, "{} -> {}: one TCP connection", node.node_id(), peer.peer);
            }
        }
        // Only the lower id may dial: a dial from above is refused during the handshake.
        assert!(matches!(raw_dial(a.local_addr(), "node-z", "node-a").await, Err(HandshakeError::Frame(_))));
        assert_eq!(a.stats().len(), 2);
        for node in nodes {
            node.shutdown().await;
        }
    }

    #[tokio::test]
    async fn dialer_refuses_an_acceptor_with_another_id() {
        let (a, _) = start(config("node-a")).await;
        let (c, _) = start(config("node-c")).await;
        // Membership says node-b lives where node-c listens.
        a.set_peers(peers(&[("node-b", c.local_addr())]));
        let reply = a.call_within("node-b", Msg::Echo(1), Duration::from_millis(400)).await;
        assert_eq!(reply, Err(LinkError::NotConnected("node-b".into())));
        assert!(!a.is_connected("node-b"));
        a.shutdown().await;
        c.shutdown().await;
    }

    #[tokio::test]
    async fn bad_frames_close_the_connection_without_harm() {
        let (b, _) = start(config("node-b")).await;
        let hello =
            encode_frame(&Envelope::<Msg>::Hello { version: 1, node: "node-a".into(), nonce: [0; 32] })
                .unwrap();
        let garbage: [&[u8]; 4] = [
            &[0, 0, 0, 2, 0xff, 0xff], // unknown envelope variant
            &[0xff, 0xff, 0xff, 0xff], // 4 GiB declared
            &[0, 0, 0, 1, 3],          // a Request cut short
            &hello,                    // a handshake frame after the handshake
        ];
        for bytes in garbage {
            let mut raw = raw_dial(b.local_addr(), "node-a", "node-b").await.unwrap();
            raw.write_all(bytes).await.unwrap();
            let closed = time_until_closed(&mut raw, Duration::from_millis(900)).await;
            assert!(closed.is_some(), "{bytes:?} closes the link well before dead_after");
        }
        // Garbage instead of a Hello, and a silent client, are cut off too.
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(time_until_closed(&mut raw, Duration::from_millis(500)).await.is_some());
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        let closed = time_until_closed(&mut raw, Duration::from_secs(3)).await.expect("handshake timeout");
        assert!(closed >= Duration::from_millis(900), "{closed:?}");
        // Still serving real peers.
        let (a, _) = start(config("node-a")).await;
        mesh(&[&a, &b]);
        assert_eq!(a.call("node-b", Msg::Echo(1)).await, Ok(Msg::Echo(1)));
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn removed_peer_fails_pending_calls_and_becomes_unknown() {
        let (a, _) = start(config("node-a")).await;
        let (b, _) = start(config("node-b")).await;
        mesh(&[&a, &b]);
        assert_eq!(a.call("node-b", Msg::Echo(1)).await, Ok(Msg::Echo(1)));
        let pending = tokio::spawn({
            let a = a.clone();
            async move { a.call("node-b", Msg::Slow(5_000)).await }
        });
        assert!(eventually(Duration::from_secs(1), || peer_stats(&a, "node-b").pending_calls == 1).await);
        a.set_peers(HashMap::new());
        assert_eq!(
            timeout(Duration::from_secs(1), pending).await.unwrap().unwrap(),
            Err(LinkError::Closed("node-b".into()))
        );
        assert_eq!(a.call("node-b", Msg::Echo(1)).await, Err(LinkError::UnknownPeer("node-b".into())));
        assert!(eventually(Duration::from_secs(1), || !b.is_connected("node-a")).await);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[test]
    fn config_is_validated_and_secret_never_printed() {
        let mut cfg = config("node-a");
        cfg.secret = b"short".to_vec();
        assert!(cfg.validate().is_err());
        let cfg = config("node-a");
        assert!(cfg.validate().is_ok());
        assert!(!format!("{cfg:?}").contains("switchboard-test-secret"));
        let mut cfg = config("");
        cfg.node_id.clear();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn handshake_macs_bind_label_ids_and_nonces() {
        let tag = |label: &[u8], x: &str, y: &str, n1: u8, n2: u8| {
            handshake_mac(SECRET, label, x, y, &[n1; NONCE_LEN], &[n2; NONCE_LEN])
                .unwrap()
                .finalize()
                .into_bytes()
        };
        let base = tag(ACCEPT_LABEL, "ab", "c", 1, 2);
        assert_ne!(base, tag(DIAL_LABEL, "ab", "c", 1, 2));
        assert_ne!(base, tag(ACCEPT_LABEL, "a", "bc", 1, 2));
        assert_ne!(base, tag(ACCEPT_LABEL, "ab", "c", 2, 1));
        assert_eq!(base, tag(ACCEPT_LABEL, "ab", "c", 1, 2));
    }
}
