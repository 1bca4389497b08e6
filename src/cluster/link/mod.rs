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

mod config;
mod connection;
mod handshake;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::{timeout, timeout_at};
use tracing::{info, warn};

use crate::cluster::frame::{Envelope, encode_frame};

pub use config::{LinkConfig, LinkError, MAX_NODE_ID_LEN, MIN_SECRET_LEN, PeerStats};

use config::valid_node_id;
use connection::{accept_loop, dial_loop};
use state::{Outbound, Peer, PendingCallGuard, Shared, lock};

/// Handshakes (inbound, unauthenticated) in progress at once; more connections are dropped.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// How long `shutdown` waits for connection tasks to wind down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
