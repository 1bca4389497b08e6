//! The TCP stream under every HTTP connection, with a handle to abort it. A WebSocket session
//! whose client stopped reading cannot be closed politely: actix-http waits forever to flush
//! to a zero window. `AbortHandle::abort` makes every later read and write of the stream fail
//! (waking the one pending), so actix-http drops the connection at once; the stream then sets
//! linger 0 on its way out, so the kernel resets the connection and frees its buffers instead
//! of holding unsent data for a peer that never reads.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Default)]
struct Shared {
    aborted: AtomicBool,
    /// The task waiting on the stream (read or write), woken by `abort`.
    waiters: Mutex<Vec<Waker>>,
}

/// Aborts one connection; kept in the connection's data for the WebSocket session.
#[derive(Clone)]
pub struct AbortHandle(Arc<Shared>);

impl AbortHandle {
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::SeqCst);
        for waker in self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            waker.wake();
        }
    }
}

/// A TCP stream that can be aborted from elsewhere (see the module doc).
pub struct AbortableStream {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl AbortableStream {
    pub fn new(inner: TcpStream) -> AbortableStream {
        AbortableStream { inner, shared: Arc::default() }
    }

    pub fn handle(&self) -> AbortHandle {
        AbortHandle(self.shared.clone())
    }

    /// `Some(error)` once aborted; otherwise registers the waker for `abort`.
    fn check(&self, cx: &Context<'_>) -> Option<io::Error> {
        if self.shared.aborted.load(Ordering::SeqCst) {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection aborted: client not reading",
            ));
        }
        let mut waiters = self.shared.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        // Bounded: one reader and one writer task per connection in practice.
        if waiters.len() > 4 {
            waiters.remove(0);
        }
        None
    }
}

impl Drop for AbortableStream {
    fn drop(&mut self) {
        if self.shared.aborted.load(Ordering::SeqCst) {
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(std::time::Duration::ZERO));
        }
    }
}

impl AsyncRead for AbortableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AbortableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
