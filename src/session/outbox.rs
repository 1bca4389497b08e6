//! The byte-bounded output of one WebSocket connection, and the two streams built on it.
//!
//! - [`Outbox`]: the frames queued for the client, counted in bytes. Replies to requests may
//!   fill it to `limit`; events nobody asked for (live messages, receipts, presence) may go up
//!   to `hard_limit` — past that the client is not keeping up and is closed (4008).
//! - [`OutboxBody`]: the WebSocket response body. actix-http pulls frames from the outbox only
//!   when its own write buffer has room, so a frame leaves our byte count exactly when the
//!   server hands it to the socket. No writer task, no extra channel.
//! - [`Gated`]: the client's request stream, paused while the outbox (plus the bytes reserved
//!   by requests still being answered) is at `limit`: a client that does not read cannot make
//!   the server produce more output; its own sends wait in its TCP buffer (back-pressure).
//!
//! The session checks [`Outbox::stalled_for`] on a timer: a queue that has not moved for
//! `websocket.write_stall_ms` means the client stopped reading. A close frame cannot reach such
//! a client (its TCP window is shut and actix-http waits forever to flush), so the connection
//! is aborted through the `Abort` the edge gave the outbox (`http::transport`): actix-http
//! drops it, and the kernel resets it and frees its buffers.

use actix_codec::Encoder;
use actix_http::ws::{Codec, Message};
use actix_ws::CloseReason;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One frame for the client.
#[derive(Debug)]
pub enum Frame {
    Text(ByteString),
    Ping,
    Pong(Bytes),
    Close(CloseReason),
}

impl Frame {
    /// Bytes the frame holds while queued (payload plus a small fixed cost).
    fn size(&self) -> usize {
        64 + match self {
            Frame::Text(t) => t.len(),
            Frame::Pong(p) => p.len(),
            Frame::Ping | Frame::Close(_) => 0,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue is past its hard limit: the client is not reading.
    Full,
    /// The connection is closing or gone.
    Closed,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    queued: usize,
    reserved: usize,
    /// Since when the frame at the head of the queue has waited to be taken.
    waiting_since: Option<Instant>,
    /// No more frames are accepted; the body ends after the queued ones.
    closed: bool,
    /// The body has gone (connection closed by the peer or by us).
    gone: bool,
    writer: Option<Waker>,
    /// Tasks waiting for room: the gated request stream, a sync waiting to read its next page.
    readers: Vec<Waker>,
}

impl State {
    /// Whether replies may be produced: queued plus reserved bytes below `limit`.
    fn has_room(&self, limit: usize) -> bool {
        self.queued + self.reserved < limit
    }

    /// Whether a task waiting for room may go on: there is room, or nothing will be sent any
    /// more (it then finds out on its own).
    fn may_proceed(&self, limit: usize) -> bool {
        self.has_room(limit) || self.gone || self.closed
    }

    fn wait_for_room(&mut self, waker: &Waker) {
        if !self.readers.iter().any(|w| w.will_wake(waker)) {
            self.readers.push(waker.clone());
        }
    }

    fn wake_readers(&mut self) {
        for w in self.readers.drain(..) {
            w.wake();
        }
    }
}

/// Resets a connection at once.
pub type Abort = Box<dyn FnOnce() + Send>;

pub struct Outbox {
    state: Mutex<State>,
    limit: usize,
    hard_limit: usize,
    /// Resets the connection (given by the edge; see `http::transport`).
    abort: Mutex<Option<Abort>>,
}

impl Outbox {
    pub fn new(limit: usize, abort: Option<Abort>) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::default(),
            limit,
            hard_limit: limit.saturating_mul(2),
            abort: Mutex::new(abort),
        })
    }

    /// Drops the queue and resets the connection at once (the client is not reading, so no
    /// close frame could reach it). Without an `Abort` from the edge it falls back to `kill`.
    pub fn abort(&self, reason: CloseReason) {
        self.kill(reason);
        let abort = self.abort.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(abort) = abort {
            abort();
        }
    }

    /// Whether actix-http has dropped the response body: the connection is done with. (A
    /// body that has returned its last frame but is still held is not: actix may be stuck
    /// flushing that frame to a client that does not read.)
    pub fn finished(&self) -> bool {
        self.lock().gone
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame unless the queue is past the hard limit or closed.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        let mut s = self.lock();
        if s.closed || s.gone {
            return Err(PushError::Closed);
        }
        let size = frame.size();
        if s.queued + size > self.hard_limit {
            return Err(PushError::Full);
        }
        s.queued += size;
        if s.frames.is_empty() {
            s.waiting_since = Some(Instant::now());
        }
        s.frames.push_back(frame);
        if let Some(w) = s.writer.take() {
            w.wake();
        }
        Ok(())
    }

    /// Queues a close frame after everything queued; nothing is accepted after it.
    pub fn close(&self, reason: CloseReason) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.closed = true;
        if s.frames.is_empty() {
            s.waiting_since = Some(Instant::now());
        }
        s.frames.push_back(Frame::Close(reason));
        if let Some(w) = s.writer.take() {
            w.wake();
        }
        s.wake_readers();
    }

    /// Drops everything queued and closes at once (the client is not reading).
    pub fn kill(&self, reason: CloseReason) {
        let mut s = self.lock();
        s.frames.clear();
        s.frames.shrink_to_fit();
        s.queued = 0;
        s.closed = true;
        s.waiting_since = None;
        s.frames.push_back(Frame::Close(reason));
        if let Some(w) = s.writer.take() {
            w.wake();
        }
        s.wake_readers();
    }

    /// Whether replies may be produced now: queued plus reserved bytes below the limit.
    pub fn has_room(&self) -> bool {
        self.lock().has_room(self.limit)
    }

    /// Holds `bytes` of the limit for a reply being prepared.
    pub fn reserve(&self, bytes: usize) {
        self.lock().reserved += bytes;
    }

    /// Gives back a reservation (the reply is queued, or failed).
    pub fn release(&self, bytes: usize) {
        let mut s = self.lock();
        s.reserved = s.reserved.saturating_sub(bytes);
        if s.has_room(self.limit) {
            s.wake_readers();
        }
    }

    /// How long the head of the queue has waited to be taken by the socket.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        self.lock().waiting_since.map(|t| now.saturating_duration_since(t)).unwrap_or_default()
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.lock().queued
    }

    /// Resolves once there is room for replies (or the connection is gone).
    pub async fn room(self: &Arc<Self>) {
        std::future::poll_fn(|cx| {
            let mut s = self.lock();
            if s.may_proceed(self.limit) {
                Poll::Ready(())
            } else {
                s.wait_for_room(cx.waker());
                Poll::Pending
            }
        })
        .await
    }
}

/// Largest chunk of encoded frames handed to actix-http per poll (several small frames are
/// written with one syscall; a larger frame goes alone).
const CHUNK: usize = 16 * 1024;

/// The WebSocket response body: encodes frames from the outbox when the socket can take them.
pub struct OutboxBody {
    outbox: Arc<Outbox>,
    codec: Codec,
    ended: bool,
    /// actix-ws's own response body, kept (never polled) until this one ends: dropping it tells
    /// actix-ws's request stream that the connection is closed.
    _keep: Box<dyn std::any::Any>,
}

impl OutboxBody {
    pub fn new(outbox: Arc<Outbox>, keep: Box<dyn std::any::Any>) -> OutboxBody {
        OutboxBody { outbox, codec: Codec::new(), ended: false, _keep: keep }
    }
}

impl Stream for OutboxBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut s = this.outbox.lock();
        if s.frames.is_empty() {
            if s.closed {
                this.ended = true;
                return Poll::Ready(None);
            }
            s.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = s.frames.pop_front() {
            s.queued = s.queued.saturating_sub(frame.size());
            let (message, last) = match frame {
                Frame::Text(t) => (Message::Text(t), false),
                Frame::Ping => (Message::Ping(Bytes::new()), false),
                Frame::Pong(p) => (Message::Pong(p), false),
                Frame::Close(reason) => (Message::Close(Some(reason)), true),
            };
            if let Err(e) = this.codec.encode(message, &mut buf) {
                this.ended = true;
                return Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))));
            }
            if last {
                this.ended = true;
                s.frames.clear();
                break;
            }
            if buf.len() >= CHUNK {
                break;
            }
        }
        s.waiting_since = if s.frames.is_empty() { None } else { Some(Instant::now()) };
        if s.has_room(this.outbox.limit) {
            s.wake_readers();
        }
        Poll::Ready(Some(Ok(buf.freeze())))
    }
}

impl Drop for OutboxBody {
    fn drop(&mut self) {
        let mut s = self.outbox.lock();
        s.gone = true;
        s.frames.clear();
        s.queued = 0;
        s.wake_readers();
    }
}

/// The request stream, paused while the outbox has no room for replies.
pub struct Gated<S> {
    inner: S,
    outbox: Arc<Outbox>,
}

impl<S> Gated<S> {
    pub fn new(inner: S, outbox: Arc<Outbox>) -> Gated<S> {
        Gated { inner, outbox }
    }
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        {
            let mut s = this.outbox.lock();
            if !s.may_proceed(this.outbox.limit) {
                s.wait_for_room(cx.waker());
                return Poll::Pending;
            }
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn text(n: usize) -> Frame {
        Frame::Text(ByteString::from("x".repeat(n)))
    }

    #[test]
    fn replies_fill_to_the_limit_events_to_the_hard_limit() {
        let outbox = Outbox::new(1000, None);
        outbox.push(text(900)).unwrap();
        assert!(outbox.has_room());
        outbox.push(text(900)).unwrap();
        assert!(!outbox.has_room());
        assert_eq!(outbox.push(text(900)), Err(PushError::Full));
    }

    #[test]
    fn reservations_count_against_the_limit() {
        let outbox = Outbox::new(1000, None);
        outbox.reserve(1000);
        assert!(!outbox.has_room());
        outbox.release(1000);
        assert!(outbox.has_room());
    }

    #[tokio::test]
    async fn the_body_drains_and_ends_after_close() {
        let outbox = Outbox::new(1 << 20, None);
        let mut body = OutboxBody::new(outbox.clone(), Box::new(()));
        outbox.push(text(10)).unwrap();
        outbox.close(CloseReason { code: actix_ws::CloseCode::Normal, description: None });
        let mut bytes = 0;
        while let Some(chunk) = body.next().await {
            bytes += chunk.unwrap().len();
        }
        assert!(bytes > 10);
        assert_eq!(outbox.queued(), 0);
        assert_eq!(outbox.push(text(1)), Err(PushError::Closed));
    }

    #[test]
    fn a_stalled_queue_is_seen_and_kill_frees_it() {
        let outbox = Outbox::new(1 << 20, None);
        outbox.push(text(100_000)).unwrap();
        let later = Instant::now() + Duration::from_secs(5);
        assert!(outbox.stalled_for(later) >= Duration::from_secs(4));
        outbox.kill(CloseReason { code: actix_ws::CloseCode::Other(4008), description: None });
        assert_eq!(outbox.queued(), 0);
    }
}
