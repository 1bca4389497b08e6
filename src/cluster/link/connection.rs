//! Connection tasks: the accept loop (inbound handshakes), the dial loop (outbound, with
//! backoff and jitter), and an established connection's reader and writer (request serving,
//! reply routing, write batching, heartbeats and dead-peer detection).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{MissedTickBehavior, timeout};
use tracing::{debug, info, warn};

use super::LinkMessage;
use super::handshake::{HandshakeError, accept_handshake, dial_handshake};
use super::state::{Outbound, Peer, Shared};
use crate::cluster::frame::{self, Envelope, FrameError, MAX_FRAME_LEN, encode_frame, read_frame};

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

// ---------------------------------------------------------------------------------------------
// Accepting and dialing

pub(super) async fn accept_loop<T: LinkMessage>(
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
pub(super) async fn dial_loop<T: LinkMessage>(
    shared: Arc<Shared<T>>,
    peer: Arc<Peer<T>>,
    _alive: mpsc::Sender<()>,
) {
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
