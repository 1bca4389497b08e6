//! The embedded store's writer thread: message appends (each one fjall batch and one fsync)
//! run one after another on a thread of their own instead of on the shared blocking pool. The
//! journal is written under one lock anyway, so nothing is lost in parallelism; what is won is
//! one warm thread instead of whichever pool thread is idle (a dozen of them at 5,000 msgs/s,
//! each with its own malloc arena holding memtable allocations).

use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// The sending side of the writer thread; the thread ends when this is dropped.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub(super) fn start() -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("store-writer".into()).spawn(move || {
            while let Ok(job) = queue.recv() {
                // A panicking job drops its reply (the caller gets an error); the thread goes on.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
        Ok(Writer { jobs })
    }

    /// Runs `f` on the writer thread; `None` if it panicked or the thread is gone.
    pub(super) async fn run<T, F>(&self, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = reply.send(f());
            }))
            .ok()?;
        answer.await.ok()
    }
}
