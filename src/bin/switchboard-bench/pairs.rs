//! Sender→receiver pairs for S2, S3 and S9: setup (users, conversation, connections placed on
//! chosen nodes), the open-loop step (a fixed schedule, latency from the scheduled time), the
//! per-pair counters (scheduled, sent, acked, delivered, duplicated, reordered) and the step's
//! results, per class of pairs (S9: sender and receiver on the same node, or on different ones).
//!
//! Against a cluster the pairs are *resilient*: a connection that breaks is reconnected (its
//! own node first, then the next ones), synced from the cursor it holds, and every send still
//! unanswered is sent again with the same client_msg_id; a send answered `unavailable`,
//! `store_unavailable` or `rate_limited`, or not answered within 10 s, is sent again the same
//! way. Such events are counted (`reconnects`, `retries`), not errors: the server promises to
//! store each client_msg_id once, and the counters check that (duplicated, lost).

use crate::Failure;
use crate::report::{Counts, LatencyResult, Percentiles, bump};
use crate::scenarios::{register_pair, source_ip};
use crate::target::{self, Incoming, Kind, Sut, http_client};
use crate::ws;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Nanoseconds since `base` (the clock of every scheduled send time in a payload).
pub(crate) fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// A resilient send unanswered this long is sent again (same client_msg_id).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait before a refused send is made again.
const RETRY_CAP: Duration = Duration::from_secs(5);

/// A number in [0, 1) from `seed` and the clock (retry jitter).
fn jitter(seed: u64) -> f64 {
    let mut x = seed ^ (now_ns(*START) << 1) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// A step's drain ends early when no ack or delivery arrived for this long.
const QUIET: Duration = Duration::from_secs(5);
/// A resilient connection that cannot be made again within this long ends its pair's task.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(60);

/// Where a pair's connections go (indexes into `Sut::nodes`) and its class (row of results).
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub sender: usize,
    pub receiver: usize,
    pub class: usize,
}

/// How to set the pairs up.
pub struct PairOptions {
    /// One per pair.
    pub placement: Vec<Placement>,
    /// Names of the classes, indexed by `Placement::class`.
    pub classes: Vec<String>,
    /// Usernames are `<prefix>s<pair>` and `<prefix>r<pair>` (3–32 characters).
    pub user_prefix: String,
    /// Reconnect and retry instead of counting a broken connection or a refused send as an
    /// error (switchboard only).
    pub resilient: bool,
    /// After a step's schedule, how long at most to wait for its last acks and deliveries
    /// (less when everything arrived, or nothing moved for 5 s).
    pub drain: Duration,
}

impl PairOptions {
    /// `n` pairs on the first node, one class, strict: S2 and S3 against a server of its own.
    pub fn single(n: usize) -> PairOptions {
        PairOptions {
            placement: vec![Placement { sender: 0, receiver: 0, class: 0 }; n],
            classes: vec!["all".into()],
            user_prefix: "bench_".into(),
            resilient: false,
            drain: Duration::from_secs(5),
        }
    }
}

/// One pair's counters in one step.
#[derive(Clone, Default)]
struct PairCounts {
    scheduled: u64,
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicated: u64,
    reordered: u64,
    reconnects: u64,
    /// Delivered by the catch-up sync at the end of the step (not pushed live before it).
    by_catch_up: u64,
    /// What the receiver has seen this step, and the highest k.
    seen: HashSet<u64>,
    max_k: u64,
}

/// Counters of one rate step, shared by every connection task. Every event carries the step
/// it belongs to (in the payload, or remembered per send), and only the current step's
/// events count: nothing carries over from an earlier step.
struct StepStats {
    /// The current step; 0 between steps.
    step: u64,
    /// Per class.
    delivery_us: Vec<Histogram<u64>>,
    ack_us: Vec<Histogram<u64>>,
    class_of: Arc<Vec<usize>>,
    pairs: Vec<PairCounts>,
    errors: Counts,
    retries: Counts,
    stale: u64,
    /// The receivers were asked to sync (end of the drain): deliveries now come from it.
    catching_up: bool,
}

impl StepStats {
    fn new(class_of: Arc<Vec<usize>>, classes: usize, step: u64) -> StepStats {
        StepStats {
            step,
            delivery_us: (0..classes).map(|_| new_histogram()).collect(),
            ack_us: (0..classes).map(|_| new_histogram()).collect(),
            pairs: vec![PairCounts::default(); class_of.len()],
            class_of,
            errors: BTreeMap::new(),
            retries: BTreeMap::new(),
            stale: 0,
            catching_up: false,
        }
    }

    fn settled(&self) -> bool {
        self.pairs
            .iter()
            .all(|p| p.sent == p.scheduled && p.acked == p.scheduled && p.delivered == p.scheduled)
    }
}

type Shared = Arc<Mutex<StepStats>>;

/// What a send task is told: (step, k, scheduled time in ns since `base`).
type SendOrder = (u64, u64, u64);

/// A step that ran: its counters and what the results of every class share.
pub struct StepOutcome {
    stats: StepStats,
    rate: u64,
    duration: Duration,
    achieved_rate: f64,
    cpu: f64,
    rss_kib: u64,
}

pub struct Pairs {
    kind: Kind,
    base: Instant,
    payload: usize,
    senders: Vec<mpsc::UnboundedSender<SendOrder>>,
    /// Resilient only: asks each receiver to sync from its cursor.
    catch_up: Vec<mpsc::UnboundedSender<()>>,
    next_k: Vec<u64>,
    last_step: u64,
    stats: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    class_of: Arc<Vec<usize>>,
    classes: Vec<String>,
    drain: Duration,
}

/// `"<pair> <step> <k> <due_ns> "`, padded with `x` to `payload` bytes.
pub fn body(pair: usize, step: u64, k: u64, due_ns: u64, payload: usize) -> String {
    let mut b = format!("{pair} {step} {k} {due_ns} ");
    while b.len() < payload {
        b.push('x');
    }
    b
}

/// The fields of a payload made by `body`: (pair, step, k, due_ns); `None` when it is not one.
pub(crate) fn parse_body(body: &str) -> Option<(u64, u64, u64, u64)> {
    let mut parts = body.split(' ').map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(p)), Some(Ok(step)), Some(Ok(k)), Some(Ok(due))) => Some((p, step, k, due)),
        _ => None,
    }
}

/// How a connection ended, as an error key (`close:<code>`, `ws_error:…`, `eof`); `None` when
/// `msg` is an ordinary frame.
pub(crate) fn end_reason(
    msg: &Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<String> {
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => Some(format!("close:{}", u16::from(frame.code))),
        Some(Ok(Message::Close(None))) => Some("close:none".into()),
        Some(Err(e)) => Some(format!("ws_error:{e}")),
        None => Some("eof".into()),
        Some(Ok(_)) => None,
    }
}

/// Counts how a connection ended (close frame or transport error) into the current step.
fn note_end(stats: &Shared, msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
    if let Some(what) = end_reason(&msg) {
        bump(&mut stats.lock().unwrap().errors, what);
    }
}

/// What a read from a client's socket gave.
enum Read {
    Text(tokio_tungstenite::tungstenite::Utf8Bytes),
    /// A frame with nothing to handle (ping, pong, binary).
    Other,
    /// The connection ended (noted in the stats unless the client reconnects on its own).
    Ended,
}

fn read_text(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    resilient: bool,
    stats: &Shared,
) -> Read {
    match msg {
        Some(Ok(Message::Text(text))) => Read::Text(text),
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
            if !resilient {
                note_end(stats, msg);
            }
            Read::Ended
        }
        Some(Ok(_)) => Read::Other,
    }
}

/// Waits until `state()` — (settled, a progress counter) — says settled, `limit` has passed,
/// or the counter has not moved for `QUIET` (a system still catching up keeps the wait open,
/// up to `limit`).
pub(crate) async fn wait_settled(limit: Duration, state: impl Fn() -> (bool, u64)) {
    let deadline = Instant::now() + limit;
    let mut last = (Instant::now(), state().1);
    loop {
        let (settled, progress) = state();
        if settled || Instant::now() >= deadline {
            return;
        }
        if progress != last.1 {
            last = (Instant::now(), progress);
        } else if last.0.elapsed() >= QUIET {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How one side of a pair (re)connects.
#[derive(Clone)]
struct Endpoint {
    kind: Kind,
    /// WebSocket URLs of every node; this side's own first.
    urls: Arc<Vec<String>>,
    home: usize,
    token: Option<String>,
    source: IpAddr,
    channel: String,
}

impl Endpoint {
    /// Connects to node `home + attempt` (mod the nodes), authenticated, subscribed.
    async fn open(&self, attempt: usize) -> Result<ws::Socket, Failure> {
        let url = &self.urls[(self.home + attempt) % self.urls.len()];
        let mut socket = ws::connect(url, self.source, self.token.as_deref()).await?;
        target::handshake(self.kind, &mut socket).await?;
        target::subscribe(self.kind, &mut socket, &self.channel).await?;
        Ok(socket)
    }

    /// After a connection broke: connects again with backoff (100 ms doubling to 2 s), its own
    /// node first, then the others in turn; `None` after `RECONNECT_GIVE_UP`.
    async fn reconnect(&self) -> Option<ws::Socket> {
        let started = Instant::now();
        let mut attempt = 0usize;
        loop {
            let delay = Duration::from_millis(100 << attempt.min(4)).min(Duration::from_secs(2));
            tokio::time::sleep(delay).await;
            if let Ok(socket) = self.open(attempt).await {
                return Some(socket);
            }
            attempt += 1;
            if started.elapsed() > RECONNECT_GIVE_UP {
                return None;
            }
        }
    }
}

impl Pairs {
    /// Connects the pairs of `opts.placement`: for switchboard two users and their direct
    /// conversation per pair (each connection syncs once, as the protocol asks); for
    /// Centrifugo a channel per pair the receiver subscribes to.
    pub async fn setup(sut: &Sut, payload: usize, opts: PairOptions) -> Result<Pairs, Failure> {
        let n = opts.placement.len();
        let http = http_client()?;
        let base = Instant::now();
        let class_of: Arc<Vec<usize>> = Arc::new(opts.placement.iter().map(|p| p.class).collect());
        let stats: Shared = Arc::new(Mutex::new(StepStats::new(class_of.clone(), opts.classes.len(), 0)));
        let urls: Arc<Vec<String>> = Arc::new(sut.nodes.iter().map(|n| n.ws_url.clone()).collect());
        let resilient = opts.resilient && sut.kind == Kind::Switchboard;
        let mut senders = Vec::new();
        let mut catch_up = Vec::new();
        let mut tasks = Vec::new();
        for (pair, place) in opts.placement.iter().enumerate() {
            let (channel, sender_token, receiver_token) = match sut.kind {
                Kind::Switchboard => {
                    // Registration and the conversation go through the sender's node.
                    let node = &sut.nodes[place.sender % sut.nodes.len()].http;
                    let prefix = &opts.user_prefix;
                    let (a_token, b_token, c) =
                        register_pair(&http, node, &format!("{prefix}s{pair}"), &format!("{prefix}r{pair}"))
                            .await?;
                    (c, Some(a_token), Some(b_token))
                }
                Kind::Centrifugo => (format!("p{pair}"), None, None),
            };
            let ip = source_ip(pair % 8);
            let endpoint = |home: usize, token: Option<String>| Endpoint {
                kind: sut.kind,
                urls: urls.clone(),
                home: home % urls.len(),
                token,
                source: ip,
                channel: channel.clone(),
            };
            let receiver_ep = endpoint(place.receiver, receiver_token);
            let sender_ep = endpoint(place.sender, sender_token);
            let mut receiver = receiver_ep.open(0).await?;
            let mut sender = sender_ep.open(0).await?;
            if sut.kind == Kind::Switchboard {
                for socket in [&mut receiver, &mut sender] {
                    let cursors = serde_json::Map::from_iter([(channel.clone(), json!(0))]);
                    target::sync_until_done(socket, cursors, Duration::from_secs(10)).await?;
                }
            }
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            let (sync_tx, sync_rx) = mpsc::unbounded_channel();
            catch_up.push(sync_tx);
            tasks.push(tokio::spawn(receive_loop(
                receiver_ep,
                receiver,
                pair,
                base,
                stats.clone(),
                resilient,
                sync_rx,
            )));
            tasks.push(tokio::spawn(send_loop(
                sender_ep,
                sender,
                pair,
                payload,
                base,
                rx,
                stats.clone(),
                resilient,
            )));
        }
        Ok(Pairs {
            kind: sut.kind,
            base,
            payload,
            senders,
            catch_up,
            next_k: vec![0; n],
            last_step: 0,
            stats,
            tasks,
            class_of,
            classes: opts.classes,
            drain: opts.drain,
        })
    }

    /// One open-loop step over every pair, one result for all of them (S2, S3).
    pub async fn step(
        &mut self,
        sut: &Sut,
        scenario: &str,
        rate: u64,
        duration: Duration,
    ) -> Result<LatencyResult, Failure> {
        let outcome = self.run_step(sut, rate, duration).await;
        Ok(self.result(&outcome, scenario, None))
    }

    /// One open-loop step: `rate` msgs/s spread round-robin over the pairs for `duration`,
    /// then up to `drain` for the last acks and deliveries. Its counters start at zero.
    pub async fn run_step(&mut self, sut: &Sut, rate: u64, duration: Duration) -> StepOutcome {
        let n = self.senders.len();
        self.last_step += 1;
        let step = self.last_step;
        let total = rate * duration.as_secs().max(1);
        {
            let mut fresh = StepStats::new(self.class_of.clone(), self.classes.len(), step);
            for (pair, p) in fresh.pairs.iter_mut().enumerate() {
                p.scheduled = total / n as u64 + u64::from((pair as u64) < total % n as u64);
            }
            *self.stats.lock().unwrap() = fresh;
        }
        let cpu_before = sut.cpu_secs();
        let interval_ns = 1_000_000_000 / rate.max(1);
        let start_ns = now_ns(self.base) + 20_000_000;
        for i in 0..total {
            let due = start_ns + i * interval_ns;
            let now = now_ns(self.base);
            if due > now + 1_000_000 {
                tokio::time::sleep(Duration::from_nanos(due - now)).await;
            }
            let pair = (i as usize) % n;
            let k = self.next_k[pair];
            self.next_k[pair] += 1;
            // A send task that ended (its socket broke) leaves this pair short: sent < scheduled.
            let _ = self.senders[pair].send((step, k, due));
        }
        // On schedule, the last send is due one interval before the step ends.
        let send_secs = (now_ns(self.base).saturating_sub(start_ns) + interval_ns) as f64 / 1e9;
        // Wait for the last acks and deliveries: until every pair is settled, `drain` has
        // passed, or nothing has moved for `QUIET` (an overloaded system still catching up
        // keeps the step open, up to `drain`).
        let progress = |s: &StepStats| s.pairs.iter().map(|p| p.acked + p.delivered).sum::<u64>();
        let state = || {
            let s = self.stats.lock().unwrap();
            (s.settled(), progress(&s))
        };
        wait_settled(self.drain, state).await;
        // Resilient: what was acked but not pushed live (a live push lost between nodes is
        // filled only when a later message arrives) is read by one sync of every receiver;
        // counted apart (`delivered_by_catch_up_sync`). Lost is what even that does not bring.
        if !self.stats.lock().unwrap().settled() && !self.catch_up.is_empty() {
            self.stats.lock().unwrap().catching_up = true;
            for tx in &self.catch_up {
                let _ = tx.send(());
            }
            wait_settled(Duration::from_secs(30), state).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cpu = sut.cpu_secs() - cpu_before;
        // Step 0: whatever arrives from now on belongs to no step.
        let fresh = StepStats::new(self.class_of.clone(), self.classes.len(), 0);
        let stats = std::mem::replace(&mut *self.stats.lock().unwrap(), fresh);
        StepOutcome {
            stats,
            rate,
            duration,
            achieved_rate: total as f64 / send_secs.max(duration.as_secs_f64()),
            cpu,
            rss_kib: sut.rss_kib(),
        }
    }

    /// The result of the pairs of `class` (all pairs: None) in a step. The rate, the achieved
    /// rate and the server CPU are the whole step's (every class shares them).
    pub fn result(&self, o: &StepOutcome, scenario: &str, class: Option<usize>) -> LatencyResult {
        let s = &o.stats;
        let in_class = |pair: usize| class.is_none_or(|c| s.class_of[pair] == c);
        let chosen: Vec<(usize, &PairCounts)> =
            s.pairs.iter().enumerate().filter(|(i, _)| in_class(*i)).collect();
        let sum = |f: &dyn Fn(&PairCounts) -> u64| chosen.iter().map(|(_, p)| f(p)).sum::<u64>();
        let merge = |hs: &[Histogram<u64>]| {
            let mut h = new_histogram();
            for (c, one) in hs.iter().enumerate() {
                if class.is_none_or(|want| want == c) {
                    let _ = h.add(one);
                }
            }
            h
        };
        let mismatched: Vec<&(usize, &PairCounts)> = chosen
            .iter()
            .filter(|(_, p)| !(p.sent == p.scheduled && p.acked == p.scheduled && p.delivered == p.scheduled))
            .collect();
        let all_delivered: u64 = s.pairs.iter().map(|p| p.delivered).sum();
        let delivered = sum(&|p| p.delivered);
        let mut r = LatencyResult {
            target: self.kind,
            scenario: scenario.into(),
            class: class.map(|c| self.classes[c].clone()),
            pairs: chosen.len(),
            payload_bytes: self.payload,
            target_rate: o.rate,
            achieved_rate: o.achieved_rate,
            duration_secs: o.duration.as_secs_f64(),
            scheduled: sum(&|p| p.scheduled),
            sent: sum(&|p| p.sent),
            acked: sum(&|p| p.acked),
            delivered,
            delivered_by_catch_up_sync: sum(&|p| p.by_catch_up),
            lost: sum(&|p| p.acked.saturating_sub(p.delivered)),
            duplicated: sum(&|p| p.duplicated),
            reordered: sum(&|p| p.reordered),
            latency_us: Percentiles::of(&merge(&s.delivery_us)),
            ack_latency_us: Percentiles::of(&merge(&s.ack_us)),
            server_cpu_secs: o.cpu,
            server_cpu_us_per_delivery: if all_delivered > 0 {
                o.cpu * 1e6 / all_delivered as f64
            } else {
                0.0
            },
            server_rss_kib: o.rss_kib,
            errors: s.errors.clone(),
            retries: s.retries.clone(),
            reconnects: sum(&|p| p.reconnects),
            stale_events: s.stale,
            pairs_mismatched: mismatched.len(),
            mismatch_examples: mismatched
                .iter()
                .take(3)
                .map(|(i, p)| {
                    format!(
                        "pair {i}: scheduled {}, sent {}, acked {}, delivered {}",
                        p.scheduled, p.sent, p.acked, p.delivered
                    )
                })
                .collect(),
            valid: false,
            invalid_reasons: Vec::new(),
        };
        r.judge();
        r
    }

    pub fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The next frame of `socket`, pending forever while there is none.
async fn next_msg(
    socket: &mut Option<ws::Socket>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match socket {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Writes `frame`; false when the connection is broken (it is then dropped).
async fn write(socket: &mut Option<ws::Socket>, frame: String) -> Result<(), String> {
    let Some(s) = socket.as_mut() else { return Err("not connected".into()) };
    match s.send(Message::text(frame)).await {
        Ok(()) => Ok(()),
        Err(e) => {
            *socket = None;
            Err(e.to_string())
        }
    }
}

fn retryable(code: &str) -> bool {
    matches!(code, "error:unavailable" | "error:store_unavailable" | "error:rate_limited")
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    ep: Endpoint,
    socket: ws::Socket,
    pair: usize,
    payload: usize,
    base: Instant,
    mut rx: mpsc::UnboundedReceiver<SendOrder>,
    stats: Shared,
    resilient: bool,
) {
    let kind = ep.kind;
    let mut socket = Some(socket);
    // k → (step, due) of every send not yet answered.
    let mut due_of: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    // Resilient only: k → (when to send it again, attempts so far).
    let mut resend_at: HashMap<u64, (Instant, u32)> = HashMap::new();
    // The highest seq acknowledged: this sender's sync cursor (only it writes here).
    let mut acked_seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if socket.is_none() {
            if !resilient {
                return;
            }
            {
                let mut s = stats.lock().unwrap();
                s.pairs[pair].reconnects += 1;
            }
            let Some(mut fresh) = ep.reconnect().await else {
                bump(&mut stats.lock().unwrap().errors, "reconnect_gave_up");
                return;
            };
            let cursors = serde_json::Map::from_iter([(ep.channel.clone(), json!(acked_seq))]);
            if target::sync_until_done(&mut fresh, cursors, Duration::from_secs(10)).await.is_err() {
                continue;
            }
            socket = Some(fresh);
            // Every send still unanswered goes again, in order, with its client_msg_id.
            let now = Instant::now();
            for (k, (step, due)) in due_of.iter() {
                let frame = target::send_frame(kind, &ep.channel, *k, &body(pair, *step, *k, *due, payload));
                if write(&mut socket, frame).await.is_err() {
                    break;
                }
                let attempts = resend_at.get(k).map_or(1, |(_, a)| a + 1);
                resend_at.insert(*k, (now + ANSWER_TIMEOUT, attempts));
                bump(&mut stats.lock().unwrap().retries, "resent_after_reconnect");
            }
            continue;
        }
        tokio::select! {
            next = rx.recv() => {
                let Some((step, k, due)) = next else { return };
                let frame = target::send_frame(kind, &ep.channel, k, &body(pair, step, k, due, payload));
                due_of.insert(k, (step, due));
                // Resilient: a send that could not be written goes again after the reconnection.
                if let Err(e) = write(&mut socket, frame).await
                    && !resilient
                {
                    bump(&mut stats.lock().unwrap().errors, format!("ws_send:{e}"));
                    return;
                }
                if resilient {
                    resend_at.insert(k, (Instant::now() + ANSWER_TIMEOUT, 1));
                }
                let mut s = stats.lock().unwrap();
                if s.step == step { s.pairs[pair].sent += 1 } else { s.stale += 1 }
            }
            msg = next_msg(&mut socket) => {
                let text = match read_text(msg, resilient, &stats) {
                    Read::Text(text) => text,
                    Read::Other => continue,
                    Read::Ended => {
                        socket = None;
                        continue;
                    }
                };
                for incoming in target::parse(kind, &text) {
                    match incoming {
                        Incoming::Ack { k, seq } => {
                            resend_at.remove(&k);
                            if let Some(seq) = seq {
                                acked_seq = acked_seq.max(seq);
                            }
                            let mut s = stats.lock().unwrap();
                            match due_of.remove(&k) {
                                Some((step, due)) if step == s.step => {
                                    s.pairs[pair].acked += 1;
                                    let class = s.class_of[pair];
                                    let _ = s.ack_us[class].record((now_ns(base).saturating_sub(due) / 1_000).max(1));
                                }
                                Some(_) => s.stale += 1,
                                // A send made twice can be answered twice (same message).
                                None if resilient => bump(&mut s.retries, "repeated_ack"),
                                None => bump(&mut s.errors, "ack_without_send"),
                            }
                        }
                        Incoming::Error { k: Some(k), code } if resilient && retryable(&code) && due_of.contains_key(&k) => {
                            // Exponential backoff with jitter per send (100 ms doubling to 5 s):
                            // a cluster refusing work quickly must not get it back at once.
                            let attempts = resend_at.get(&k).map_or(1, |(_, a)| *a) + 1;
                            let cap = Duration::from_millis(100 << attempts.min(6)).min(RETRY_CAP);
                            let backoff = cap.mul_f64(0.5 + 0.5 * jitter(k ^ u64::from(attempts)));
                            resend_at.insert(k, (Instant::now() + backoff, attempts));
                            bump(&mut stats.lock().unwrap().retries, code);
                        }
                        Incoming::Error { k, code } => {
                            let mut s = stats.lock().unwrap();
                            let step = k.and_then(|k| due_of.remove(&k)).map(|(step, _)| step);
                            if let Some(k) = k {
                                resend_at.remove(&k);
                            }
                            if step.is_none_or(|step| step == s.step) {
                                bump(&mut s.errors, code);
                            } else {
                                s.stale += 1;
                            }
                        }
                        Incoming::Ping => { let _ = write(&mut socket, "{}".into()).await; }
                        _ => {}
                    }
                }
            }
            _ = tick.tick(), if resilient => {
                let now = Instant::now();
                let mut due: Vec<u64> = resend_at.iter().filter(|(_, (at, _))| *at <= now).map(|(k, _)| *k).collect();
                due.sort_unstable();
                for k in due {
                    let Some((step, due_ns)) = due_of.get(&k).copied() else {
                        resend_at.remove(&k);
                        continue;
                    };
                    let frame = target::send_frame(kind, &ep.channel, k, &body(pair, step, k, due_ns, payload));
                    if write(&mut socket, frame).await.is_err() {
                        break;
                    }
                    let attempts = resend_at.get(&k).map_or(1, |(_, a)| a + 1);
                    resend_at.insert(k, (now + ANSWER_TIMEOUT, attempts));
                    bump(&mut stats.lock().unwrap().retries, "resent");
                }
            }
        }
    }
}

async fn receive_loop(
    ep: Endpoint,
    socket: ws::Socket,
    pair: usize,
    base: Instant,
    stats: Shared,
    resilient: bool,
    mut catch_up: mpsc::UnboundedReceiver<()>,
) {
    let kind = ep.kind;
    let mut socket = Some(socket);
    // switchboard: every seq up to `held` was delivered (the sync cursor), and those beyond.
    let mut held = 0u64;
    let mut ahead: BTreeSet<u64> = BTreeSet::new();
    let sync = |held: u64| json!({"type": "sync", "cursors": {ep.channel.as_str(): held}}).to_string();
    loop {
        if socket.is_none() {
            if !resilient {
                return;
            }
            stats.lock().unwrap().pairs[pair].reconnects += 1;
            let Some(fresh) = ep.reconnect().await else {
                bump(&mut stats.lock().unwrap().errors, "reconnect_gave_up");
                return;
            };
            socket = Some(fresh);
            // What was missed meanwhile comes from the store, from the cursor on.
            let _ = write(&mut socket, sync(held)).await;
            continue;
        }
        let msg = tokio::select! {
            msg = next_msg(&mut socket) => msg,
            Some(()) = catch_up.recv() => {
                let _ = write(&mut socket, sync(held)).await;
                continue;
            }
        };
        let text = match read_text(msg, resilient, &stats) {
            Read::Text(text) => text,
            Read::Other => continue,
            Read::Ended => {
                socket = None;
                continue;
            }
        };
        for incoming in target::parse(kind, &text) {
            match incoming {
                Incoming::Delivery { body, seq } => {
                    if let Some(seq) = seq
                        && seq > held
                    {
                        ahead.insert(seq);
                        while ahead.remove(&(held + 1)) {
                            held += 1;
                        }
                    }
                    let Some((p, step, k, due)) = parse_body(&body) else {
                        bump(&mut stats.lock().unwrap().errors, "unparsable_delivery");
                        continue;
                    };
                    let mut s = stats.lock().unwrap();
                    if p != pair as u64 {
                        bump(&mut s.errors, "delivery_to_wrong_pair");
                        continue;
                    }
                    if step != s.step {
                        s.stale += 1;
                        continue;
                    }
                    let latency_us = (now_ns(base).saturating_sub(due) / 1_000).max(1);
                    let class = s.class_of[pair];
                    let counts = &mut s.pairs[pair];
                    let fresh = counts.seen.insert(k);
                    let behind = k < counts.max_k;
                    counts.max_k = counts.max_k.max(k);
                    if !fresh {
                        counts.duplicated += 1;
                    } else {
                        if behind {
                            counts.reordered += 1;
                        }
                        counts.delivered += 1;
                        if s.catching_up {
                            s.pairs[pair].by_catch_up += 1;
                        }
                        let _ = s.delivery_us[class].record(latency_us);
                    }
                }
                Incoming::SyncDone { has_more: true } => {
                    let _ = write(&mut socket, sync(held)).await;
                }
                Incoming::Error { code, .. } if resilient && code == "error:rate_limited" => {
                    bump(&mut stats.lock().unwrap().retries, code);
                }
                Incoming::Error { code, .. } => bump(&mut stats.lock().unwrap().errors, code),
                Incoming::Ping => {
                    let _ = write(&mut socket, "{}".into()).await;
                }
                _ => {}
            }
        }
    }
}
