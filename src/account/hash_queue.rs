//! `HashQueue`: password hashes and checks run on the blocking pool, at most one per core at
//! once, and at most `hash_queue_max` wait for a core; beyond that a caller gets a fast
//! `unavailable` with a retry hint instead of queueing without bound.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// What a caller turned away is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct HashQueue {
    /// One permit per hash that may run (each takes 19 MiB and a core for tens of ms; more at
    /// once only queues them on the blocking pool and holds more memory).
    running: Arc<Semaphore>,
    /// Callers waiting for a permit now.
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A place in the waiting line, given back when dropped (also when the caller goes away).
struct WaitSlot<'a>(&'a AtomicUsize);

impl<'a> WaitSlot<'a> {
    fn take(waiting: &'a AtomicUsize, max: usize) -> Option<WaitSlot<'a>> {
        let before = waiting.fetch_add(1, Ordering::AcqRel);
        let slot = WaitSlot(waiting);
        (before < max).then_some(slot)
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashQueue {
    /// `parallel` hashes at once (at least 1), up to `max_waiting` callers waiting.
    pub fn new(parallel: usize, max_waiting: usize) -> HashQueue {
        HashQueue {
            running: Arc::new(Semaphore::new(parallel.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// One hash per core.
    pub fn per_core(max_waiting: usize) -> HashQueue {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        HashQueue::new(cores, max_waiting)
    }

    /// Runs `f` on the blocking pool once a core is free; `unavailable` (with a retry hint) at
    /// once when the waiting line is full. The permit travels with `f`, so a caller that goes
    /// away while `f` runs does not let another hash start beside it.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| Error::internal(format!("worker failed: {e}")))
    }

    /// Callers waiting for a core now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit> {
        let closed = |_| Error::internal("hashing closed");
        match self.running.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(Error::internal("hashing closed")),
            Err(TryAcquireError::NoPermits) => {}
        }
        let _slot = WaitSlot::take(&self.waiting, self.max_waiting).ok_or_else(|| {
            Error::overloaded("too many password checks in progress; retry shortly", RETRY_AFTER)
        })?;
        self.running.clone().acquire_owned().await.map_err(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    async fn until(mut cond: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_waiting_line_is_refused_at_once_and_the_rest_complete() {
        let q = Arc::new(HashQueue::new(1, 1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let q = q.clone();
            async move { q.run(move || hold.recv().is_ok()).await }
        });
        until(|| q.running.available_permits() == 0).await;
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.run(|| 2).await }
        });
        until(|| q.waiting() == 1).await;
        let e = q.run(|| 3).await.unwrap_err();
        assert_eq!((e.code, e.retry_after_secs), (ErrorCode::Unavailable, Some(1)));
        assert_eq!(q.waiting(), 1);
        release.send(()).unwrap();
        assert!(running.await.unwrap().unwrap());
        assert_eq!(waiting.await.unwrap().unwrap(), 2);
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.run(|| 4).await.unwrap(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_frees_its_place() {
        let q = Arc::new(HashQueue::new(1, 1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let q = q.clone();
            async move { q.run(move || hold.recv().is_ok()).await }
        });
        until(|| q.running.available_permits() == 0).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(50), q.run(|| ())).await;
        assert!(gave_up.is_err());
        assert_eq!(q.waiting(), 0);
        release.send(()).unwrap();
        running.await.unwrap().unwrap();
    }
}
