//! Recovery of the embedded store after a failed write: fjall poisons itself on an I/O error
//! (a full disk), so the store marks itself failed and, at most every `REOPEN_EVERY`, drops the
//! poisoned instance once no call holds it, reopens the database (its journal replays) and
//! proves a synced write before serving again.

use super::*;

/// The database behind an `EmbeddedStore`, and the state of its recovery.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) options: EmbeddedOptions,
    pub(super) current: RwLock<Option<Arc<Inner>>>,
    /// A poisoned database waiting for its last in-flight call to finish before a reopen.
    pub(super) retired: Mutex<Option<Arc<Inner>>>,
    pub(super) failed: AtomicBool,
    pub(super) reopening: Mutex<()>,
    pub(super) last_attempt: Mutex<Option<Instant>>,
    /// When a synced probe last succeeded (ping probes at most once per `PROBE_EVERY`).
    pub(super) probed: Mutex<Option<Instant>>,
}

/// How often a failed store tries to reopen.
const REOPEN_EVERY: Duration = Duration::from_millis(500);
/// How often `ping` proves with a synced write that the store can still write.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(2);

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The database to use, after a reopen attempt if the last one failed.
    pub(super) fn current(&self) -> StoreResult<Arc<Inner>> {
        if self.failed.load(Ordering::Relaxed) {
            self.try_reopen();
        }
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
            StoreError::Unavailable(
                "the embedded store could not write (disk full or I/O error); it reopens once writes work again"
                    .into(),
            )
        })
    }

    fn try_reopen(&self) {
        // One reopen at a time; meanwhile other calls answer `Unavailable` at once.
        let Ok(_reopening) = self.reopening.try_lock() else { return };
        {
            let mut last = lock(&self.last_attempt);
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut retired = lock(&self.retired);
        if let Some(old) = self.current.write().unwrap_or_else(|p| p.into_inner()).take() {
            *retired = Some(old);
        }
        // Another instance on the same files must not exist: wait for in-flight calls.
        if retired.as_ref().is_some_and(|old| Arc::strong_count(old) > 1) {
            return;
        }
        *retired = None;
        // Opened and probed without holding `current`: calls meanwhile are not blocked.
        match Inner::open(&self.path, &self.options).and_then(|inner| inner.probe().map(|()| inner)) {
            Ok(inner) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(inner));
                self.failed.store(false, Ordering::Relaxed);
                *lock(&self.probed) = Some(Instant::now());
                tracing::info!("embedded store reopened: writes work again");
            }
            Err(e) => tracing::warn!(error = %e, "embedded store still cannot write"),
        }
    }
}
