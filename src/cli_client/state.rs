//! The terminal client's pure bookkeeping, unit-tested apart from the sockets: `Cursor` and
//! `Cursors` (what it holds of each conversation, so a re-sync shows nothing twice), `Outbox`
//! (messages not yet acknowledged, resent with the same client_msg_id), `Servers` (the
//! `--server` URLs it rotates through) and `Backoff` (reconnect delays with jitter).

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// What the client holds of one conversation: every seq up to `held()`, and some beyond a gap
/// (its own messages, acknowledged before the messages before them arrived).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cursor {
    contiguous: u64,
    ahead: BTreeSet<u64>,
}

impl Cursor {
    /// The sync cursor: everything up to here is held.
    pub fn held(&self) -> u64 {
        self.contiguous
    }

    /// Records `seq` as held; `false` when it already was (a duplicate: show it no more).
    pub fn record(&mut self, seq: u64) -> bool {
        if seq <= self.contiguous || !self.ahead.insert(seq) {
            return false;
        }
        while self.ahead.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }

    /// Everything up to `seq` counts as held (what history showed, and all before it).
    pub fn hold_up_to(&mut self, seq: u64) {
        if seq > self.contiguous {
            self.contiguous = seq;
            self.ahead = self.ahead.split_off(&(seq + 1));
            while self.ahead.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        }
    }
}

/// The cursors of every conversation the client has seen messages of.
#[derive(Debug, Default)]
pub struct Cursors {
    by_conversation: HashMap<String, Cursor>,
}

impl Cursors {
    pub fn record(&mut self, conversation: &str, seq: u64) -> bool {
        self.by_conversation.entry(conversation.to_owned()).or_default().record(seq)
    }

    pub fn hold_up_to(&mut self, conversation: &str, seq: u64) {
        self.by_conversation.entry(conversation.to_owned()).or_default().hold_up_to(seq);
    }

    pub fn held(&self, conversation: &str) -> u64 {
        self.by_conversation.get(conversation).map_or(0, Cursor::held)
    }

    /// The `cursors` object of a `sync` frame.
    pub fn sync_cursors(&self) -> Value {
        Value::Object(self.by_conversation.iter().map(|(c, cur)| (c.clone(), json!(cur.held()))).collect())
    }
}

/// How long a send may go unanswered before it is sent again (same client_msg_id).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Error codes after which a send is retried with the same client_msg_id: nothing was stored
/// (`store_unavailable`, `unavailable`) or the frame was not processed (`rate_limited`).
pub fn retryable(code: &str) -> bool {
    matches!(code, "unavailable" | "store_unavailable" | "rate_limited")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    /// To be sent (again) at this time, once connected.
    Due(Instant),
    /// Written to a connection at this time; no answer yet.
    InFlight(Instant),
}

#[derive(Debug, Clone)]
struct Pending {
    client_msg_id: String,
    body: String,
    state: SendState,
    attempts: u32,
}

/// What an error reply does to a pending send.
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    /// Sent again after this delay, with the same client_msg_id.
    Retry(Duration),
    /// Not retryable: the message is dropped (its body returned, to tell the user).
    GaveUp(String),
    /// Not one of ours (already acknowledged, or never sent).
    Unknown,
}

/// Messages typed but not yet acknowledged (`sent`), in the order they were typed. Each keeps
/// its client_msg_id for good, so however often it is sent, the server stores it once.
#[derive(Debug)]
pub struct Outbox {
    prefix: String,
    counter: u64,
    entries: BTreeMap<u64, Pending>,
    by_id: HashMap<String, u64>,
}

impl Outbox {
    /// `prefix` makes client_msg_ids unique across runs (e.g. a UUIDv7).
    pub fn new(prefix: impl Into<String>) -> Outbox {
        Outbox { prefix: prefix.into(), counter: 0, entries: BTreeMap::new(), by_id: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A new message, due at once; returns its client_msg_id.
    pub fn push(&mut self, body: String, now: Instant) -> String {
        self.counter += 1;
        let client_msg_id = format!("{}-{}", self.prefix, self.counter);
        self.by_id.insert(client_msg_id.clone(), self.counter);
        self.entries.insert(
            self.counter,
            Pending { client_msg_id: client_msg_id.clone(), body, state: SendState::Due(now), attempts: 0 },
        );
        client_msg_id
    }

    /// The sends to write now, in typing order — those due, and those in flight without an
    /// answer for `ANSWER_TIMEOUT` — as (client_msg_id, body); they are marked in flight.
    pub fn take_due(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for p in self.entries.values_mut() {
            let due = match p.state {
                SendState::Due(at) => at <= now,
                SendState::InFlight(since) => now.duration_since(since) >= ANSWER_TIMEOUT,
            };
            if due {
                p.state = SendState::InFlight(now);
                p.attempts += 1;
                out.push((p.client_msg_id.clone(), p.body.clone()));
            }
        }
        out
    }

    /// When `take_due` will next have something (None: nothing pending).
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .map(|p| match p.state {
                SendState::Due(at) => at,
                SendState::InFlight(since) => since + ANSWER_TIMEOUT,
            })
            .min()
    }

    /// The server stored it: (body, attempts) the first time, None for a repeated answer.
    pub fn acked(&mut self, client_msg_id: &str) -> Option<(String, u32)> {
        let key = self.by_id.remove(client_msg_id)?;
        self.entries.remove(&key).map(|p| (p.body, p.attempts))
    }

    /// An error reply to a send.
    pub fn failed(&mut self, client_msg_id: &str, code: &str, now: Instant) -> Failed {
        let Some(&key) = self.by_id.get(client_msg_id) else { return Failed::Unknown };
        if !retryable(code) {
            self.by_id.remove(client_msg_id);
            return self.entries.remove(&key).map_or(Failed::Unknown, |p| Failed::GaveUp(p.body));
        }
        let Some(p) = self.entries.get_mut(&key) else { return Failed::Unknown };
        let delay = Backoff::delay(p.attempts.saturating_sub(1));
        p.state = SendState::Due(now + delay);
        Failed::Retry(delay)
    }

    /// The connection broke: whatever was in flight will be sent again on the next one (at
    /// once); the number of messages waiting.
    pub fn connection_lost(&mut self, now: Instant) -> usize {
        for p in self.entries.values_mut() {
            if let SendState::InFlight(_) = p.state {
                p.state = SendState::Due(now);
            }
        }
        self.entries.len()
    }
}

/// The servers given with `--server`, in order, and the one in use; a failure moves on.
#[derive(Debug, Clone)]
pub struct Servers {
    urls: Vec<String>,
    current: usize,
}

impl Servers {
    /// Trims and deduplicates the URLs (a trailing `/` is dropped); at least one is needed.
    pub fn new<S: AsRef<str>>(given: &[S]) -> Result<Servers, String> {
        let mut urls: Vec<String> = Vec::new();
        for url in given {
            let url = url.as_ref().trim().trim_end_matches('/');
            if url.is_empty() || urls.iter().any(|u| u == url) {
                continue;
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("--server {url}: expected an http:// or https:// URL"));
            }
            urls.push(url.to_owned());
        }
        if urls.is_empty() {
            return Err("no --server given".into());
        }
        Ok(Servers { urls, current: 0 })
    }

    pub fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// The WebSocket URL of the current server.
    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.current().replacen("http", "ws", 1))
    }

    /// Moves on to the next server (wrapping around); returns it.
    pub fn rotate(&mut self) -> &str {
        self.current = (self.current + 1) % self.urls.len();
        self.current()
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

/// Exponential backoff between reconnection attempts: 250 ms doubling up to 8 s.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(8);

    /// The delay after `failures` consecutive failures before this one (no jitter).
    pub fn delay(failures: u32) -> Duration {
        Self::FIRST.saturating_mul(1u32 << failures.min(6)).min(Self::MAX)
    }

    /// The next delay, with `jitter` in [0, 1) taking off up to a quarter (so many clients
    /// cut off at once do not come back in lockstep).
    pub fn next(&mut self, jitter: f64) -> Duration {
        let d = Self::delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        d.mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0))
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A number in [0, 1) that differs between calls and processes (backoff jitter).
pub(super) fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_counts_each_seq_once_and_skips_gaps_only_when_filled() {
        let mut c = Cursor::default();
        assert!(c.record(1));
        assert!(c.record(2));
        assert!(!c.record(2), "a repeat is a duplicate");
        assert!(!c.record(1));
        // Own message 4 acknowledged before 3 arrived: the cursor stays at 2 until 3 is held.
        assert!(c.record(4));
        assert_eq!(c.held(), 2);
        assert!(c.record(3));
        assert_eq!(c.held(), 4);
        assert!(!c.record(4), "4 was held already (own message): not shown again by a re-sync");
        c.hold_up_to(10);
        assert_eq!(c.held(), 10);
        assert!(!c.record(7));
        assert!(c.record(12));
        c.hold_up_to(11);
        assert_eq!(c.held(), 12, "what was held beyond the gap joins the cursor");
        c.hold_up_to(5);
        assert_eq!(c.held(), 12, "never goes back");
    }

    #[test]
    fn cursors_make_the_sync_frame() {
        let mut cs = Cursors::default();
        cs.record("a", 1);
        cs.record("a", 2);
        cs.record("b", 3);
        cs.hold_up_to("c", 7);
        assert_eq!(cs.sync_cursors(), json!({"a": 2, "b": 0, "c": 7}));
        assert_eq!(cs.held("a"), 2);
        assert_eq!(cs.held("unknown"), 0);
    }

    #[test]
    fn outbox_resends_with_the_same_id_until_acked() {
        let t0 = Instant::now();
        let mut o = Outbox::new("run");
        let a = o.push("hello".into(), t0);
        let b = o.push("world".into(), t0);
        assert_eq!(o.take_due(t0), vec![(a.clone(), "hello".into()), (b.clone(), "world".into())]);
        assert!(o.take_due(t0).is_empty(), "in flight: not sent twice at once");
        assert_eq!(o.next_due(), Some(t0 + ANSWER_TIMEOUT));
        // The connection breaks: both go again, same ids, same order.
        assert_eq!(o.connection_lost(t0), 2);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(o.take_due(t1), vec![(a.clone(), "hello".into()), (b.clone(), "world".into())]);
        // a is stored; a second `sent` for it (from the first attempt) is not news.
        assert_eq!(o.acked(&a), Some(("hello".into(), 2)));
        assert_eq!(o.acked(&a), None);
        // b gets `unavailable`: retried after a backoff, with the same id.
        match o.failed(&b, "unavailable", t1) {
            Failed::Retry(d) => {
                assert!(o.take_due(t1).is_empty());
                assert_eq!(o.take_due(t1 + d), vec![(b.clone(), "world".into())]);
            }
            other => panic!("{other:?}"),
        }
        // Unanswered for ANSWER_TIMEOUT: sent again.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(o.take_due(t2), vec![(b.clone(), "world".into())]);
        assert_eq!(o.failed(&a, "unavailable", t2), Failed::Unknown, "a is done");
        assert_eq!(o.acked(&b), Some(("world".into(), 4)));
        assert!(o.is_empty());
        assert_eq!(o.next_due(), None);
    }

    #[test]
    fn outbox_gives_up_on_final_errors_and_ids_are_unique() {
        let t0 = Instant::now();
        let mut o = Outbox::new("p");
        let a = o.push("x".repeat(10), t0);
        let b = o.push("y".into(), t0);
        assert_ne!(a, b);
        o.take_due(t0);
        assert_eq!(o.failed(&a, "too_large", t0), Failed::GaveUp("x".repeat(10)));
        assert!(matches!(o.failed(&b, "store_unavailable", t0), Failed::Retry(_)));
        assert!(matches!(o.failed(&b, "rate_limited", t0), Failed::Retry(_)));
        assert_eq!(o.len(), 1);
        assert!(retryable("unavailable") && !retryable("forbidden") && !retryable("internal"));
    }

    #[test]
    fn servers_rotate_and_backoff_grows_to_a_cap() {
        let s = Servers::new(&["http://a:1/", " http://b:2", "http://a:1", ""]).unwrap();
        assert_eq!(s.len(), 2);
        let mut s = s;
        assert_eq!(s.current(), "http://a:1");
        assert_eq!(s.ws_url(), "ws://a:1/v1/ws");
        assert_eq!(s.rotate(), "http://b:2");
        assert_eq!(s.rotate(), "http://a:1");
        assert!(Servers::new::<&str>(&[]).is_err());
        assert!(Servers::new(&["a:1"]).is_err());
        assert_eq!(Servers::new(&["https://x"]).unwrap().ws_url(), "wss://x/v1/ws");

        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next(0.0)).collect();
        assert_eq!(delays[0], Duration::from_millis(250));
        assert_eq!(delays[1], Duration::from_millis(500));
        assert_eq!(delays[5], Duration::from_secs(8));
        assert_eq!(delays[7], Duration::from_secs(8));
        assert!(b.next(0.99) >= Duration::from_secs(6));
        b.reset();
        assert_eq!(b.next(0.0), Duration::from_millis(250));
        assert!((0..100).map(|_| jitter()).all(|j| (0.0..1.0).contains(&j)));
    }
}
