//! S7 slow consumer: what a few clients that flood `history` requests for large messages and
//! never read their socket do to the server and to everybody else. N idle authenticated
//! clients (child processes, as in S1) and a few well-behaved clients that measure `ping` →
//! `pong` round trips share the server with M hostile clients (`ws::connect_stalled`: small
//! receive buffer, read side never polled). The server's RSS is sampled throughout; each
//! hostile client records whether and when the server closed it. A safety cap on the server's
//! RSS stops the hostile clients, so a server without output bounds cannot take the machine
//! down. Bounded in time and count; loopback only.

use crate::report::{Check, Counts, HostileClient, Percentiles, SlowConsumerResult, bump, counts_line};
use crate::scenarios::{IdleFleet, new_histogram, register, register_pair, seed_conversation, source_ip};
use crate::target::{self, Kind, Sut, http_client};
use crate::{Failure, ws};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

/// The plan of one S7 run (sizes come from `run`'s options).
pub struct SlowConsumer {
    pub idle: usize,
    pub hostile: usize,
    pub pingers: usize,
    pub messages: u64,
    pub body_bytes: usize,
    pub page: u32,
    /// `history` requests per second per hostile client.
    pub hostile_rate: u64,
    /// How long the hostile clients run.
    pub phase: Duration,
    pub ping_interval: Duration,
    pub recv_buffer: u32,
    pub rss_cap_kib: u64,
    /// Pause before memory readings (and the length of the idle-only ping baseline).
    pub settle: Duration,
    /// The server's effective settings, when its build has them.
    pub write_stall_ms: Option<u64>,
    pub outbound_bytes: Option<u64>,
}

/// After the last scheduled ping, how long its pong may take before it counts as pending.
const PONG_GRACE: Duration = Duration::from_secs(5);
/// A hostile client counts as closed in time within write_stall_ms plus this.
const CLOSE_GRACE_MS: u64 = 2_000;
/// Reading a closed hostile connection for its close frame: at most this long / this much.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 64 << 20;
/// The server's own count of sessions it closed as slow consumers (4008).
const SLOW_CONSUMER_METRIC: &str = "switchboard_slow_consumers_closed_total";

pub async fn run(sut: &Sut, plan: &SlowConsumer) -> Result<SlowConsumerResult, Failure> {
    let mut invalid = Vec::new();
    let http = http_client()?;
    let rss_start = sut.rss_kib();

    // Users: the hostile clients are devices of `s7_b`, a member of the seeded conversation.
    let (a_token, b_token, conversation) = register_pair(&http, &sut.http, "s7_a", "s7_b").await?;
    let mut idle_tokens = Vec::new();
    for i in 0..plan.idle.clamp(1, 10) {
        idle_tokens.push(register(&sut.http, &format!("s7_idle{i}")).await?.1);
    }
    let mut ping_tokens = Vec::new();
    for i in 0..plan.pingers {
        ping_tokens.push(register(&sut.http, &format!("s7_ping{i}")).await?.1);
    }

    // Idle clients first, so that their memory is measured on a quiet server (as in S1).
    tokio::time::sleep(plan.settle).await;
    let rss_before_idle = sut.rss_kib();
    let hold_secs = plan.phase.as_secs() + 120;
    let fleet = match plan.idle {
        0 => None,
        n => Some(IdleFleet::start(sut, &idle_tokens.join(","), n, hold_secs).await?),
    };
    let idle_connected = fleet.as_ref().map_or(0, |f| f.connected);
    if idle_connected != plan.idle {
        invalid.push(format!("{idle_connected} of {} idle clients connected", plan.idle));
    }
    tokio::time::sleep(plan.settle).await;
    let rss_idle = sut.rss_kib();

    seed_conversation(sut, &a_token, &conversation, plan.messages, plan.body_bytes).await?;

    // Well-behaved clients, and their baseline with idle clients only.
    let mut pingers = Vec::new();
    for (i, token) in ping_tokens.iter().enumerate() {
        let mut socket = ws::connect(&sut.ws_url, source_ip(i), Some(token)).await?;
        target::handshake(Kind::Switchboard, &mut socket).await?;
        pingers.push(socket);
    }
    let baseline =
        ping_phase(&mut pingers, "b", plan.settle.max(Duration::from_secs(1)), plan.ping_interval).await;
    let rss_before_hostile = sut.rss_kib();
    let closes_before = target::metric(&http, &sut.http, SLOW_CONSUMER_METRIC).await;
    let kernel_before = target::kernel_kib();

    // Hostile clients: connect, read the welcome, never read again.
    let mut stalled = Vec::new();
    let mut connect_failures = Counts::new();
    for i in 0..plan.hostile {
        match ws::connect_stalled(&sut.ws_url, source_ip(50 + i), &b_token, plan.recv_buffer).await {
            Ok(stream) => stalled.push((stream, Instant::now())),
            Err(e) => bump(&mut connect_failures, e.to_string()),
        }
    }
    if stalled.len() != plan.hostile {
        invalid.push(format!(
            "{} of {} hostile clients connected ({})",
            stalled.len(),
            plan.hostile,
            counts_line(&connect_failures)
        ));
    }
    let hostile_connected = stalled.len();
    // (server side, client side) of each hostile connection, for its kernel queues.
    let addrs: Vec<Option<(SocketAddr, SocketAddr)>> =
        stalled.iter().map(|(s, _)| Some((s.peer_addr().ok()?, s.local_addr().ok()?))).collect();
    let cpu_start = sut.cpu_secs();
    let phase_start = Instant::now();
    let until = phase_start + plan.phase;
    let flags = Arc::new(PhaseFlags::default());
    let sampler =
        tokio::spawn(sample_rss(sut.pid, phase_start, until, plan.rss_cap_kib, addrs, flags.clone()));
    let watcher =
        tokio::spawn(watch_closes(http.clone(), sut.http.clone(), closes_before, phase_start, flags.clone()));
    let interval = Duration::from_nanos(1_000_000_000 / plan.hostile_rate.max(1));
    let tasks: Vec<_> = stalled
        .into_iter()
        .enumerate()
        .map(|(i, (stream, stopped_reading))| {
            tokio::spawn(hostile_client(
                stream,
                stopped_reading,
                i,
                conversation.clone(),
                plan.page,
                plan.messages,
                interval,
                until,
                flags.clone(),
            ))
        })
        .collect();
    let during = ping_phase(&mut pingers, "h", plan.phase, plan.ping_interval).await;
    let mut hostile = Vec::new();
    for t in tasks {
        hostile.push(t.await?);
    }
    // The end-of-phase sample needs the hostile connections still open.
    while !flags.captured.load(Ordering::Relaxed) && !sampler.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closes_at_end = target::metric(&http, &sut.http, SLOW_CONSUMER_METRIC).await;
    // What a closed connection still holds may carry the close code.
    let hostile: Vec<HostileClient> =
        futures_util::future::join_all(hostile.into_iter().map(|(mut h, stream)| async move {
            if h.closed_by_server
                && let Some(mut stream) = stream
            {
                let (code, how) = ws::drain_for_close(&mut stream, DRAIN_TIME, DRAIN_BYTES).await;
                h.close_code = code;
                if code.is_none() {
                    h.close_how =
                        Some(format!("{}; then reading: {how}", h.close_how.take().unwrap_or_default()));
                }
            }
            h
        }))
        .await;
    // Every hostile connection is dropped here (the streams went with the futures).
    flags.done.store(true, Ordering::Relaxed);
    let dropped_at = phase_start.elapsed().as_secs_f64();
    let trace = sampler.await?;
    let hostile: Vec<HostileClient> = hostile
        .into_iter()
        .enumerate()
        .map(|(i, mut h)| {
            h.server_send_queue_max_bytes = trace.send_queue_max[i];
            h.server_send_queue_end_bytes = trace.at_until_sockets[i].map(|s| s.send_queue);
            h.server_tcp_state_end = trace.at_until_sockets[i].map(|s| s.state.to_owned());
            h
        })
        .collect();
    tokio::time::sleep(plan.settle).await;
    let rss_after_release = sut.rss_kib();
    let closes_after = target::metric(&http, &sut.http, SLOW_CONSUMER_METRIC).await;
    flags.released.store(true, Ordering::Relaxed);
    let close_times = watcher.await?;
    let closes_since = |v: Option<f64>| Some((v? - closes_before?).max(0.0) as u64);
    for socket in pingers.iter_mut() {
        let _ = socket.close(None).await;
    }
    if let Some(fleet) = fleet {
        fleet.stop().await;
    }

    let mut ping_failures = baseline.failures.clone();
    for (k, v) in &during.failures {
        *ping_failures.entry(k.clone()).or_default() += v;
    }
    let pings_sent = baseline.sent + during.sent;
    let pings_answered = baseline.answered + during.answered;
    let closed: Vec<u64> = hostile.iter().filter_map(|h| h.closed_after_ms).collect();
    let mut r = SlowConsumerResult {
        target: Kind::Switchboard,
        idle_requested: plan.idle,
        idle_connected,
        hostile_requested: plan.hostile,
        hostile_connected,
        pingers: plan.pingers,
        seeded_messages: plan.messages,
        body_bytes: plan.body_bytes,
        page_limit: plan.page,
        hostile_rate_per_client: plan.hostile_rate,
        hostile_phase_secs: plan.phase.as_secs_f64(),
        hostile_recv_buffer_bytes: plan.recv_buffer,
        server_write_stall_ms: plan.write_stall_ms,
        server_outbound_bytes: plan.outbound_bytes,
        rss_start_kib: rss_start,
        rss_idle_kib: rss_idle,
        rss_per_idle_client_kib: rss_idle.saturating_sub(rss_before_idle) as f64
            / idle_connected.max(1) as f64,
        rss_before_hostile_kib: rss_before_hostile,
        rss_peak_kib: trace.peak_kib,
        rss_peak_at_secs: trace.peak_at_secs,
        rss_final_kib: trace.at_until_kib.unwrap_or(trace.last_kib),
        rss_after_release_kib: rss_after_release,
        rss_samples: trace.samples,
        kernel_peak_growth_kib: trace.kernel_peak_kib.saturating_sub(kernel_before),
        server_cpu_secs_hostile_phase: trace.cpu_secs_at_until.unwrap_or_else(|| sut.cpu_secs()) - cpu_start,
        rss_cap_kib: plan.rss_cap_kib,
        rss_cap_hit: trace.cap_hit,
        ping_interval_ms: plan.ping_interval.as_millis() as u64,
        ping_baseline_us: Percentiles::of(&baseline.latency),
        ping_hostile_us: Percentiles::of(&during.latency),
        pings_sent,
        pings_answered,
        ping_failures,
        hostile_closed: closed.len(),
        server_slow_consumer_closes_phase: closes_since(closes_at_end),
        server_slow_consumer_closes_total: closes_since(closes_after),
        server_slow_consumer_close_times_secs: close_times,
        hostile_dropped_at_secs: (dropped_at * 10.0).round() / 10.0,
        hostile_closed_after_ms_min: closed.iter().min().copied(),
        hostile_closed_after_ms_max: closed.iter().max().copied(),
        hostile,
        expectations: Vec::new(),
        valid: invalid.is_empty(),
        invalid_reasons: invalid,
    };
    r.expectations = expectations(&r, plan);
    Ok(r)
}

/// What the server promises, as far as this run can tell (a check the phase is too short for
/// says "not evaluated" and counts as met).
fn expectations(r: &SlowConsumerResult, plan: &SlowConsumer) -> Vec<Check> {
    let mut checks = Vec::new();
    let (stall, stall_known) = match r.server_write_stall_ms {
        Some(v) => (v, ""),
        None => (10_000, " (this build has no write_stall_ms; default assumed)"),
    };
    let bound_ms = stall + CLOSE_GRACE_MS;
    if r.pingers > 0 {
        checks.push(Check {
            name: "well-behaved clients keep being served".into(),
            expected: format!(
                "every ping answered (within the phase + {} s), no error or close",
                PONG_GRACE.as_secs()
            ),
            observed: format!(
                "{} of {} answered; failures: {}; p99 {} µs during the hostile phase, {} µs before",
                r.pings_answered,
                r.pings_sent,
                counts_line(&r.ping_failures),
                r.ping_hostile_us.p99,
                r.ping_baseline_us.p99
            ),
            evaluated: true,
            met: r.pings_answered == r.pings_sent && r.ping_failures.is_empty(),
        });
    }
    if (plan.phase.as_millis() as u64) < bound_ms {
        checks.push(Check {
            name: "non-reading clients closed by the server".into(),
            expected: format!("closed within write_stall_ms {stall} + {CLOSE_GRACE_MS} ms{stall_known}"),
            observed: format!(
                "not evaluated: the hostile phase ({} ms) is shorter; {} closed",
                plan.phase.as_millis(),
                r.hostile_closed
            ),
            evaluated: false,
            met: true,
        });
    } else if r.hostile_connected > 0 {
        let in_time = r.hostile.iter().filter(|h| h.closed_after_ms.is_some_and(|ms| ms <= bound_ms)).count();
        let codes: Counts =
            r.hostile.iter().filter(|h| h.closed_by_server).fold(BTreeMap::new(), |mut m, h| {
                bump(&mut m, h.close_code.map_or("unread".into(), |c| c.to_string()));
                m
            });
        checks.push(Check {
            name: "non-reading clients closed by the server".into(),
            expected: format!(
                "all {}, each within write_stall_ms {stall} + {CLOSE_GRACE_MS} ms of not reading (code 4008 where a close frame is readable){stall_known}",
                r.hostile_connected
            ),
            observed: format!(
                "{} closed as seen by the clients ({in_time} in time), after {} – {}; close codes: {}; the server counted {} slow-consumer closes in the phase{}",
                r.hostile_closed,
                r.hostile_closed_after_ms_min.map_or("—".into(), |v| format!("{v} ms")),
                r.hostile_closed_after_ms_max.map_or("—".into(), |v| format!("{v} ms")),
                counts_line(&codes),
                r.server_slow_consumer_closes_phase.map_or("?".into(), |v| v.to_string()),
                if r.rss_cap_hit { "; RSS safety cap hit" } else { "" }
            ),
            evaluated: true,
            met: in_time == r.hostile_connected
                && !r.rss_cap_hit
                && r.hostile.iter().all(|h| h.close_code.is_none_or(|c| c == 4008)),
        });
    }
    let (outbound, outbound_known) = match r.server_outbound_bytes {
        Some(v) => (v, ""),
        None => (4 << 20, " (this build has no outbound_bytes; default assumed)"),
    };
    let bound_kib = r.hostile_connected as u64 * 2 * outbound / 1024 + 32 * 1024;
    let growth = r.rss_peak_kib.saturating_sub(r.rss_before_hostile_kib);
    checks.push(Check {
        name: "server output bounded per session".into(),
        expected: format!(
            "peak RSS growth ≤ {} hostile × 2 × outbound_bytes {outbound} + 32 MiB = {:.0} MiB{outbound_known}",
            r.hostile_connected,
            bound_kib as f64 / 1024.0
        ),
        observed: format!(
            "{:.1} MiB{}",
            growth as f64 / 1024.0,
            if r.rss_cap_hit { " (RSS safety cap hit: growth was stopped, not bounded)" } else { "" }
        ),
        evaluated: true,
        met: !r.rss_cap_hit && growth <= bound_kib,
    });
    checks
}

pub fn one_line(r: &SlowConsumerResult) -> String {
    format!(
        "{}: RSS start {} KiB, idle {} KiB ({:.1} KiB/idle client), peak {} KiB at {:.1} s{}, end of phase {} KiB, after release {} KiB; ping p50/p99/max {}/{}/{} µs (idle only {}/{}/{}); {} of {} hostile closed by the server (after {} – {} ms); pings {}/{} answered",
        if r.valid { "valid" } else { "INVALID" },
        r.rss_start_kib,
        r.rss_idle_kib,
        r.rss_per_idle_client_kib,
        r.rss_peak_kib,
        r.rss_peak_at_secs,
        if r.rss_cap_hit { " (SAFETY CAP HIT)" } else { "" },
        r.rss_final_kib,
        r.rss_after_release_kib,
        r.ping_hostile_us.p50,
        r.ping_hostile_us.p99,
        r.ping_hostile_us.max,
        r.ping_baseline_us.p50,
        r.ping_baseline_us.p99,
        r.ping_baseline_us.max,
        r.hostile_closed,
        r.hostile_connected,
        r.hostile_closed_after_ms_min.map_or("—".into(), |v| v.to_string()),
        r.hostile_closed_after_ms_max.map_or("—".into(), |v| v.to_string()),
        r.pings_answered,
        r.pings_sent,
    )
}

/// One hostile client: a `history` request every `interval` until `until`, written without
/// ever blocking (a request is not issued while the previous one is still unwritten) and
/// without reading. Notices the server closing the connection (a reset or a failed write).
/// Returns the stream unless the RSS safety cap made it drop it.
#[allow(clippy::too_many_arguments)]
async fn hostile_client(
    stream: TcpStream,
    stopped_reading: Instant,
    index: usize,
    conversation: String,
    page: u32,
    messages: u64,
    interval: Duration,
    until: Instant,
    flags: Arc<PhaseFlags>,
) -> (HostileClient, Option<TcpStream>) {
    let mut r = HostileClient::default();
    let since = |t: Instant| t.saturating_duration_since(stopped_reading).as_millis() as u64;
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut n = 0u64;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= until {
            break;
        }
        if flags.abort.load(Ordering::Relaxed) {
            r.dropped_at_rss_cap = true;
            return (r, None);
        }
        let mut closed = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(ws::io_kind(&e)),
            Ok(None) => None,
        };
        if closed.is_none() {
            if out.is_empty() {
                // Full pages: `before` between page + 1 and messages + 1.
                let span = messages.saturating_sub(page as u64) + 1;
                let before = page as u64 + 1 + (n * 7919) % span;
                let frame = json!({
                    "type": "history",
                    "id": format!("h{n}"),
                    "conversation_id": conversation,
                    "before": before,
                    "limit": page,
                })
                .to_string();
                let key = ((index as u32) << 24 ^ n as u32).wrapping_mul(2_654_435_761).to_be_bytes();
                out = ws::masked_text(frame.as_bytes(), key);
                pos = 0;
                n += 1;
                r.requests_sent += 1;
            } else {
                r.requests_not_issued += 1;
                r.send_blocked_after_ms.get_or_insert(since(now));
            }
            while pos < out.len() {
                match stream.try_write(&out[pos..]) {
                    Ok(0) => {
                        closed = Some("write returned 0".into());
                        break;
                    }
                    Ok(k) => pos += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        closed = Some(ws::io_kind(&e));
                        break;
                    }
                }
            }
            if pos == out.len() {
                out.clear();
                pos = 0;
            }
        }
        if let Some(how) = closed {
            r.closed_by_server = true;
            r.closed_after_ms = Some(since(Instant::now()));
            r.close_how = Some(how);
            break;
        }
    }
    (r, Some(stream))
}

/// Polls the server's slow-consumer close count every 500 ms from the start of the hostile
/// phase until `released` and returns when it rose: one entry per counted close, seconds into
/// the phase.
async fn watch_closes(
    http: reqwest::Client,
    base: String,
    before: Option<f64>,
    start: Instant,
    flags: Arc<PhaseFlags>,
) -> Vec<f64> {
    let mut times = Vec::new();
    let Some(mut seen) = before else { return times };
    while !flags.released.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let metric = target::metric(&http, &base, SLOW_CONSUMER_METRIC);
        let Ok(Some(now)) = tokio::time::timeout(Duration::from_secs(2), metric).await else {
            continue;
        };
        let at = (start.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        while seen < now {
            times.push(at);
            seen += 1.0;
        }
    }
    times
}

/// Signals between the hostile phase's tasks.
#[derive(Default)]
struct PhaseFlags {
    /// Set by the sampler at the RSS safety cap: hostile clients drop their connections.
    abort: AtomicBool,
    /// Set by the sampler once it sampled the end of the phase.
    captured: AtomicBool,
    /// Set when the hostile connections are gone: the sampler stops.
    done: AtomicBool,
    /// Set after the pause that follows: the close watcher stops.
    released: AtomicBool,
}

/// The server's memory over the hostile phase.
struct RssTrace {
    peak_kib: u64,
    peak_at_secs: f64,
    /// The first sample at or after the end of the hostile phase.
    at_until_kib: Option<u64>,
    last_kib: u64,
    samples: Vec<(f64, u64)>,
    kernel_peak_kib: u64,
    cap_hit: bool,
    /// The server's CPU seconds at the first sample at or after the end of the phase.
    cpu_secs_at_until: Option<f64>,
    /// Per hostile connection: its server-side kernel send queue at most, and its server-side
    /// socket at the end.
    send_queue_max: Vec<u64>,
    at_until_sockets: Vec<Option<target::TcpSocketInfo>>,
}

/// Samples the server's RSS (and kernel memory) every 100 ms, and the kernel send queues of
/// the hostile connections every second, until `done`; raises `captured` once it sampled the
/// end of the phase. Above `cap_kib` it raises `abort`, which makes the hostile clients drop
/// their connections.
async fn sample_rss(
    pid: u32,
    start: Instant,
    until: Instant,
    cap_kib: u64,
    addrs: Vec<Option<(SocketAddr, SocketAddr)>>,
    flags: Arc<PhaseFlags>,
) -> RssTrace {
    let mut t = RssTrace {
        peak_kib: 0,
        peak_at_secs: 0.0,
        at_until_kib: None,
        last_kib: 0,
        samples: Vec::new(),
        kernel_peak_kib: 0,
        cap_hit: false,
        cpu_secs_at_until: None,
        send_queue_max: vec![0; addrs.len()],
        at_until_sockets: vec![None; addrs.len()],
    };
    // Bounded even if `done` never comes.
    let give_up = until + Duration::from_secs(120);
    for i in 0u64.. {
        let rss = target::rss_kib(pid);
        let now = Instant::now();
        let secs = now.duration_since(start).as_secs_f64();
        t.last_kib = rss;
        if rss > t.peak_kib {
            t.peak_kib = rss;
            t.peak_at_secs = secs;
        }
        t.kernel_peak_kib = t.kernel_peak_kib.max(target::kernel_kib());
        if i % 5 == 0 {
            t.samples.push(((secs * 10.0).round() / 10.0, rss));
        }
        let at_until = t.at_until_kib.is_none() && now >= until;
        if i % 10 == 0 || at_until {
            let sockets = target::tcp_sockets();
            for (j, pair) in addrs.iter().enumerate() {
                let info = pair.and_then(|p| sockets.get(&p).copied());
                t.send_queue_max[j] = t.send_queue_max[j].max(info.map_or(0, |i| i.send_queue));
                if at_until {
                    t.at_until_sockets[j] = info;
                }
            }
        }
        if at_until {
            t.at_until_kib = Some(rss);
            t.cpu_secs_at_until = Some(target::cpu_secs(pid));
            flags.captured.store(true, Ordering::Relaxed);
        }
        if rss > cap_kib && !flags.abort.load(Ordering::Relaxed) {
            flags.abort.store(true, Ordering::Relaxed);
            t.cap_hit = true;
        }
        if flags.done.load(Ordering::Relaxed) || now > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t
}

/// Ping round trips of the well-behaved clients in one phase.
struct PingStats {
    latency: Histogram<u64>,
    sent: u64,
    answered: u64,
    failures: Counts,
}

/// Every client pings every `interval` for `duration` (open loop: latency from the scheduled
/// time), clients spread over the interval; then up to `PONG_GRACE` for the last pongs.
/// Unanswered pings are `pending` and enter the latency histogram with their age when given
/// up (a lower bound); unsent ones are `not_sent`.
async fn ping_phase(
    pingers: &mut [ws::Socket],
    tag: &str,
    duration: Duration,
    interval: Duration,
) -> PingStats {
    let start = Instant::now() + Duration::from_millis(10);
    let n = pingers.len().max(1) as u32;
    let per = futures_util::future::join_all(pingers.iter_mut().enumerate().map(|(c, socket)| {
        let offset = interval * c as u32 / n;
        ping_client(socket, format!("{tag}{c}-"), start + offset, duration, interval)
    }))
    .await;
    let mut all = PingStats { latency: new_histogram(), sent: 0, answered: 0, failures: Counts::new() };
    for p in per {
        let _ = all.latency.add(&p.latency);
        all.sent += p.sent;
        all.answered += p.answered;
        for (k, v) in p.failures {
            *all.failures.entry(k).or_default() += v;
        }
    }
    all
}

async fn ping_client(
    socket: &mut ws::Socket,
    prefix: String,
    start: Instant,
    duration: Duration,
    interval: Duration,
) -> PingStats {
    let total = (duration.as_nanos() / interval.as_nanos().max(1)).max(1) as u64;
    let grace_end = start + duration + PONG_GRACE;
    let mut due: HashMap<u64, Instant> = HashMap::new();
    let mut next = 0u64;
    let mut s = PingStats { latency: new_histogram(), sent: 0, answered: 0, failures: Counts::new() };
    loop {
        if next >= total && due.is_empty() {
            break;
        }
        let next_due = start + interval * next as u32;
        tokio::select! {
            _ = tokio::time::sleep_until(next_due), if next < total => {
                let frame = json!({"type": "ping", "id": format!("{prefix}{next}")}).to_string();
                if let Err(e) = socket.send(Message::text(frame)).await {
                    bump(&mut s.failures, format!("ws_send:{e}"));
                    break;
                }
                due.insert(next, next_due);
                s.sent += 1;
                next += 1;
            }
            msg = socket.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("pong") => {
                            let k = v["id"].as_str().and_then(|id| id.strip_prefix(prefix.as_str())?.parse().ok());
                            if let Some(sent_at) = k.and_then(|k: u64| due.remove(&k)) {
                                let us = (Instant::now().saturating_duration_since(sent_at).as_micros() as u64).max(1);
                                let _ = s.latency.record(us);
                                s.answered += 1;
                            }
                        }
                        Some("error") => bump(&mut s.failures, format!("error:{}", v["code"].as_str().unwrap_or("?"))),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    bump(&mut s.failures, format!("close:{}", frame.map_or(0, |f| u16::from(f.code))));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    bump(&mut s.failures, format!("ws_error:{e}"));
                    break;
                }
                None => {
                    bump(&mut s.failures, "eof");
                    break;
                }
            },
            _ = tokio::time::sleep_until(grace_end) => break,
        }
    }
    if next < total {
        *s.failures.entry("not_sent".into()).or_default() += total - next;
    }
    if !due.is_empty() {
        *s.failures.entry("pending".into()).or_default() += due.len() as u64;
        // An unanswered ping took at least this long: left out, the percentiles would hide
        // exactly the stalls this scenario is about.
        let now = Instant::now();
        for sent_at in due.values() {
            let _ = s.latency.record((now.saturating_duration_since(*sent_at).as_micros() as u64).max(1));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A stand-in server: accepts one WebSocket upgrade, sends `welcome`, then `then` writes.
    async fn fake_server(
        then: Vec<u8>,
        close_after: Option<Duration>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let welcome = br#"{"type":"welcome"}"#;
            let mut reply = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
            reply.extend_from_slice(&[0x81, welcome.len() as u8]);
            reply.extend_from_slice(welcome);
            reply.extend_from_slice(&then);
            let _ = socket.write_all(&reply).await;
            match close_after {
                // Dropping the socket with the client's requests unread resets it.
                Some(after) => tokio::time::sleep(after).await,
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_server_close_is_noticed_and_timed() {
        let (url, _server) = fake_server(Vec::new(), Some(Duration::from_millis(300))).await;
        let stream = ws::connect_stalled(&url, "127.0.0.1".parse().unwrap(), "t", 4096).await.unwrap();
        let started = Instant::now();
        let (h, stream) = hostile_client(
            stream,
            started,
            0,
            "c".into(),
            50,
            200,
            Duration::from_millis(20),
            started + Duration::from_secs(5),
            Arc::new(PhaseFlags::default()),
        )
        .await;
        assert!(h.closed_by_server, "{h:?}");
        let after = h.closed_after_ms.unwrap();
        assert!((250..2_000).contains(&after), "{h:?}");
        assert!(h.requests_sent > 5, "{h:?}");
        assert!(stream.is_some());
    }

    #[tokio::test]
    async fn a_close_frame_left_on_the_socket_is_read() {
        let mut then = vec![0x81, 126, 0x10, 0x00];
        then.extend(std::iter::repeat_n(b'x', 0x1000));
        then.extend_from_slice(&[0x88, 0x02, 0x0f, 0xa8]);
        let (url, _server) = fake_server(then, None).await;
        let mut stream = ws::connect_stalled(&url, "127.0.0.1".parse().unwrap(), "t", 4096).await.unwrap();
        let (code, how) = ws::drain_for_close(&mut stream, Duration::from_secs(2), 1 << 20).await;
        assert_eq!(code, Some(4008), "{how}");
    }
}
