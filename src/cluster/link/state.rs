//! Shared state of one node's links: [`Shared`] (config, handler, the peer map, shutdown and
//! liveness tracking) and [`Peer`] (one peer's bounded outbound queue, current connection slot,
//! pending calls and counters), with the rules for attaching, detaching and closing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info};

use super::{Handler, LinkConfig, LinkError, PeerStats};
use crate::cluster::frame::FrameError;

pub(super) struct Shared<T> {
    pub(super) config: LinkConfig,
    pub(super) handler: Arc<dyn Handler<T>>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) local_addr: SocketAddr,
    /// Zero point of heartbeat timestamps.
    pub(super) epoch: Instant,
    pub(super) next_request_id: AtomicU64,
    /// Connection ids start at 1; 0 marks "not sent on any connection".
    pub(super) next_conn_id: AtomicU64,
    pub(super) peers: Mutex<HashMap<String, Arc<Peer<T>>>>,
    pub(super) shutdown: watch::Sender<bool>,
    /// Every long-lived task holds a clone; `all_done` yields `None` once all are gone.
    pub(super) alive: Mutex<Option<mpsc::Sender<()>>>,
    pub(super) all_done: tokio::sync::Mutex<Option<mpsc::Receiver<()>>>,
    pub(super) handshakes: Arc<Semaphore>,
}

impl<T> Shared<T> {
    pub(super) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(super) fn alive_token(&self) -> Option<mpsc::Sender<()>> {
        lock(&self.alive).clone()
    }

    pub(super) fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub(super) fn peer(&self, id: &str) -> Result<Arc<Peer<T>>, LinkError> {
        lock(&self.peers).get(id).cloned().ok_or_else(|| LinkError::UnknownPeer(id.to_string()))
    }

    /// The entry for a peer that authenticated on an inbound connection; created (unlisted) if
    /// membership has not told us about it yet.
    pub(super) fn peer_for_inbound(&self, id: &str) -> Option<Arc<Peer<T>>> {
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
    pub(super) fn forget_if_unlisted(&self, peer: &Arc<Peer<T>>) {
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

    pub(super) fn close_all(&self) {
        self.shutdown.send_replace(true);
        let peers: Vec<_> = lock(&self.peers).drain().map(|(_, peer)| peer).collect();
        for peer in peers {
            peer.close();
        }
        lock(&self.alive).take();
    }
}

/// What a peer's outbound queue holds: complete, encoded frames.
pub(super) enum Outbound {
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

pub(super) struct Peer<T> {
    pub(super) id: String,
    pub(super) queue_tx: mpsc::Sender<Outbound>,
    /// Held by the writer of the current connection.
    pub(super) queue_rx: tokio::sync::Mutex<mpsc::Receiver<Outbound>>,
    state: Mutex<PeerState<T>>,
    /// Set once when the peer is removed or the links shut down.
    pub(super) closed: watch::Sender<bool>,
    /// Wakes the dialer out of its backoff (the address changed).
    pub(super) redial: Notify,
    pub(super) counters: Counters,
}

pub(super) struct PeerState<T> {
    /// `None`: not in the peer set, known only from an inbound connection.
    pub(super) addr: Option<SocketAddr>,
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
pub(super) struct Counters {
    pub(super) frames_sent: AtomicU64,
    pub(super) frames_received: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    pub(super) bytes_received: AtomicU64,
    connections: AtomicU64,
    pub(super) last_rtt_us: AtomicU64,
}

impl<T> Peer<T> {
    pub(super) fn new(id: String, addr: Option<SocketAddr>, queue_frames: usize) -> Self {
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

    pub(super) fn state(&self) -> MutexGuard<'_, PeerState<T>> {
        lock(&self.state)
    }

    pub(super) fn is_listed(&self) -> bool {
        self.state().addr.is_some()
    }

    pub(super) fn is_connected(&self) -> bool {
        self.state().conn.is_some()
    }

    pub(super) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub(super) fn is_current(&self, conn_id: u64) -> bool {
        self.state().conn.as_ref().is_some_and(|c| c.id == conn_id)
    }

    pub(super) fn encode_error(&self, err: FrameError) -> LinkError {
        LinkError::Encode { peer: self.id.clone(), reason: err.to_string() }
    }

    /// Records the address from membership. If we dial this peer and the address changed, the
    /// current connection is dropped and the dialer redials at once.
    pub(super) fn set_addr(&self, addr: SocketAddr, we_dial: bool) {
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
    pub(super) fn attach(&self, conn_id: u64, stop: oneshot::Sender<()>) -> bool {
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
    pub(super) fn detach(&self, conn_id: u64) {
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
    pub(super) fn close(&self) {
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

    pub(super) fn register_call(
        &self,
        id: u64,
        reply: oneshot::Sender<Result<T, LinkError>>,
    ) -> Result<(), LinkError> {
        let mut state = self.state();
        if self.is_closed() {
            return Err(LinkError::Closed(self.id.clone()));
        }
        state.pending.insert(id, PendingCall { reply, sent_on: 0 });
        Ok(())
    }

    pub(super) fn complete_call(&self, id: u64, body: T) {
        let call = self.state().pending.remove(&id);
        match call {
            Some(call) => {
                let _ = call.reply.send(Ok(body));
            }
            None => debug!(peer = %self.id, id, "cluster link: reply for a call no longer waiting"),
        }
    }

    /// Waits for queue space (async back-pressure) unless the peer gets closed meanwhile.
    pub(super) async fn enqueue(&self, item: Outbound) -> Result<(), LinkError> {
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
    pub(super) fn admit(&self, conn_id: u64, item: Outbound, batch: &mut BytesMut) -> u64 {
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

    pub(super) fn stats(&self) -> PeerStats {
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
pub(super) struct PendingCallGuard<'a, T> {
    pub(super) peer: &'a Peer<T>,
    pub(super) id: u64,
}

impl<T> Drop for PendingCallGuard<'_, T> {
    fn drop(&mut self) {
        self.peer.state().pending.remove(&self.id);
    }
}

pub(super) fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    // No code path panics while holding these locks; recover the data regardless.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
