//! Benchmark results: the typed records each scenario produces, the strict per-step verdicts
//! (what makes a step a valid point) and the run's overall verdict, and `results.json` plus a
//! Markdown `summary.md` (with switchboard/Centrifugo ratios when both ran) in the run folder.

use crate::Failure;
use crate::attachments_report::{self, AttachmentsResult};
use crate::cluster::FailoverResult;
use crate::groups_report::{self, GroupFanoutResult};
use crate::soak::{self, SoakResult};
use crate::target::{Kind, Sut};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Events counted by kind and code: `error:<code>` (an error frame), `close:<code>` (a close
/// frame), `http_<status>:<code>`, `timeout`, `pending`, … — whatever went wrong, and how often.
pub type Counts = BTreeMap<String, u64>;

pub fn bump(counts: &mut Counts, key: impl Into<String>) {
    *counts.entry(key.into()).or_default() += 1;
}

/// `error:rate_limited ×3, close:4008 ×1`, or `none`.
pub fn counts_line(counts: &Counts) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ")
}

#[derive(Serialize, Clone, Copy, Default, Debug)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Serialize)]
pub struct IdleResult {
    pub target: Kind,
    pub requested: usize,
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_per_conn_kib: f64,
    /// Slab + TCP buffer growth over both loopback ends, per connection.
    pub kernel_per_conn_kib: f64,
    pub connect_secs: f64,
    /// Valid when every requested connection was made.
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

impl IdleResult {
    pub fn judge(&mut self) {
        self.invalid_reasons.clear();
        if self.connections != self.requested {
            self.invalid_reasons.push(format!("{} of {} connections made", self.connections, self.requested));
        }
        self.valid = self.invalid_reasons.is_empty();
    }
}

#[derive(Serialize)]
pub struct LatencyResult {
    pub target: Kind,
    pub scenario: String,
    /// S9: which pairs (`same node`, `different nodes`); null for all pairs of the step.
    pub class: Option<String>,
    pub pairs: usize,
    pub payload_bytes: usize,
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub duration_secs: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Against a cluster: of `delivered`, those that came only with the catch-up sync the
    /// receivers make when the drain ends unsettled (acked, but not pushed live).
    pub delivered_by_catch_up_sync: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// From the scheduled send time to delivery at the receiver.
    pub latency_us: Percentiles,
    /// From the scheduled send time to the sender's ack (switchboard: durably stored).
    pub ack_latency_us: Percentiles,
    pub server_cpu_secs: f64,
    pub server_cpu_us_per_delivery: f64,
    pub server_rss_kib: u64,
    /// Error and close frames (and broken connections) seen during this step, by kind/code.
    pub errors: Counts,
    /// Against a cluster: sends made again with the same client_msg_id, by cause (an error
    /// code, `resent` after no answer, `resent_after_reconnect`) and `repeated_ack` (a send
    /// made twice answered twice). Not errors: exactly-once is checked by the counts.
    pub retries: Counts,
    /// Against a cluster: connections of these pairs made again after they broke.
    pub reconnects: u64,
    /// Events of an earlier step that arrived during this one (late acks or deliveries); they
    /// are not counted above.
    pub stale_events: u64,
    /// Pairs for which scheduled = sent = acked = delivered does not hold, and a few of them.
    pub pairs_mismatched: usize,
    pub mismatch_examples: Vec<String>,
    /// Valid: the schedule was kept (≥ 99 %), every pair has scheduled = sent = acked =
    /// delivered, nothing was duplicated or reordered, and no error frame arrived.
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

impl LatencyResult {
    /// Fills `valid` and `invalid_reasons` from the counters.
    pub fn judge(&mut self) {
        let mut reasons = Vec::new();
        if self.achieved_rate < 0.99 * self.target_rate as f64 {
            reasons.push(format!("achieved {:.0}/s < 99 % of {}/s", self.achieved_rate, self.target_rate));
        }
        if self.pairs_mismatched > 0 {
            reasons.push(format!(
                "{} of {} pairs without scheduled = sent = acked = delivered (e.g. {})",
                self.pairs_mismatched,
                self.pairs,
                self.mismatch_examples.join("; ")
            ));
        }
        if self.lost > 0 {
            reasons.push(format!("{} acked but not delivered", self.lost));
        }
        if self.duplicated > 0 {
            reasons.push(format!("{} duplicated", self.duplicated));
        }
        if self.reordered > 0 {
            reasons.push(format!("{} reordered", self.reordered));
        }
        if !self.errors.is_empty() {
            reasons.push(format!("errors: {}", counts_line(&self.errors)));
        }
        self.valid = reasons.is_empty();
        self.invalid_reasons = reasons;
    }

    /// Valid, and delivery p99 within `p99_bound_us` (S3's ramp goes on while this holds).
    pub fn passes(&self, p99_bound_us: u64) -> bool {
        self.valid && self.latency_us.p99 <= p99_bound_us
    }

    /// A correctness failure no load excuses: a message delivered twice or out of order.
    pub fn broke_order(&self) -> bool {
        self.duplicated > 0 || self.reordered > 0
    }

    pub fn one_line(&self) -> String {
        format!(
            "{}: achieved {:.0}/s, scheduled {}, sent {}, acked {}, delivered {}, lost {}, dup {}, reordered {}, errors {}, p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, server {:.2} CPU-s{}",
            if self.valid { "valid" } else { "INVALID" },
            self.achieved_rate,
            self.scheduled,
            self.sent,
            self.acked,
            self.delivered,
            self.lost,
            self.duplicated,
            self.reordered,
            counts_line(&self.errors),
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
            self.server_cpu_secs,
            if self.valid { String::new() } else { format!(" ({})", self.invalid_reasons.join("; ")) }
        )
    }
}

#[derive(Serialize)]
pub struct HistoryResult {
    pub target: Kind,
    pub messages_in_conversation: u64,
    pub page_size: u32,
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub requests: u64,
    /// Every request that did not succeed: failed, timed out, or still pending at the end.
    pub errors: u64,
    /// The same, by kind/code (`http_503:unavailable`, `timeout`, `pending`, …).
    pub failures: Counts,
    /// Requests with no answer when the step ended (counted in `errors` too).
    pub pending: u64,
    pub latency_us: Percentiles,
    pub server_cpu_secs: f64,
    /// Valid: schedule kept (≥ 99 %) and every request answered with success.
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

impl HistoryResult {
    pub fn judge(&mut self) {
        let mut reasons = Vec::new();
        if self.achieved_rate < 0.99 * self.target_rate as f64 {
            reasons.push(format!("achieved {:.0}/s < 99 % of {}/s", self.achieved_rate, self.target_rate));
        }
        if self.errors > 0 {
            reasons.push(format!(
                "{} of {} requests failed: {}",
                self.errors,
                self.requests,
                counts_line(&self.failures)
            ));
        }
        if self.latency_us.count != self.requests {
            reasons.push(format!("{} of {} requests succeeded", self.latency_us.count, self.requests));
        }
        self.valid = reasons.is_empty();
        self.invalid_reasons = reasons;
    }
}

/// One hostile (never-reading) client of S7.
#[derive(Serialize, Clone, Debug, Default)]
pub struct HostileClient {
    /// `history` requests written (fully or partly) into the socket.
    pub requests_sent: u64,
    /// Request ticks skipped because the socket's send side was full (the server had stopped
    /// reading this client).
    pub requests_not_issued: u64,
    /// When the send side first filled up, ms after the client stopped reading.
    pub send_blocked_after_ms: Option<u64>,
    /// The server closed (or reset) the connection.
    pub closed_by_server: bool,
    /// When that was noticed, ms after the client stopped reading (resolution: one request
    /// interval).
    pub closed_after_ms: Option<u64>,
    /// How the close showed: the socket error (`reset`, `broken pipe`, …).
    pub close_how: Option<String>,
    /// The WebSocket close code, when a close frame could still be read afterwards.
    pub close_code: Option<u16>,
    /// The generator dropped the connection at the RSS safety cap.
    pub dropped_at_rss_cap: bool,
    /// Bytes in the server's kernel send queue for this connection (written by the server,
    /// not yet taken by the client; outside the server's RSS), sampled every second: the
    /// most, and at the end of the hostile phase (null when the connection was gone).
    pub server_send_queue_max_bytes: u64,
    pub server_send_queue_end_bytes: Option<u64>,
    /// The server-side socket's TCP state at the end of the hostile phase (`ESTABLISHED`:
    /// the server still holds the connection; `FIN_WAIT1`: it closed its side, and the FIN
    /// waits behind the unsent data; null: gone).
    pub server_tcp_state_end: Option<String>,
}

/// A check of S7 against what the server promises. One the run could not evaluate (its
/// phase too short) has `evaluated: false` and counts as met.
#[derive(Serialize, Clone, Debug)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub observed: String,
    pub evaluated: bool,
    pub met: bool,
}

impl Check {
    /// The `met` cell of an expectations table: `n/a` when not evaluated.
    pub fn met_cell(&self) -> &'static str {
        if !self.evaluated {
            "n/a"
        } else if self.met {
            "yes"
        } else {
            "**no**"
        }
    }
}

/// S7 slow consumer: idle clients, never-reading history flooders, ping latency of
/// well-behaved clients, and the server's memory.
#[derive(Serialize, Debug)]
pub struct SlowConsumerResult {
    pub target: Kind,
    pub idle_requested: usize,
    pub idle_connected: usize,
    pub hostile_requested: usize,
    pub hostile_connected: usize,
    pub pingers: usize,
    pub seeded_messages: u64,
    pub body_bytes: usize,
    pub page_limit: u32,
    pub hostile_rate_per_client: u64,
    pub hostile_phase_secs: f64,
    pub hostile_recv_buffer_bytes: u32,
    /// The server's effective `websocket.write_stall_ms` and `websocket.outbound_bytes`
    /// (from `switchboard config`; null when the build has no such key).
    pub server_write_stall_ms: Option<u64>,
    pub server_outbound_bytes: Option<u64>,
    pub rss_start_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_per_idle_client_kib: f64,
    /// Before the hostile clients connect (idle clients and pingers connected).
    pub rss_before_hostile_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_peak_at_secs: f64,
    /// At the end of the hostile phase, hostile clients still connected unless closed.
    pub rss_final_kib: u64,
    /// After the generator dropped every hostile connection and waited.
    pub rss_after_release_kib: u64,
    /// (seconds into the hostile phase, RSS KiB), every 500 ms.
    pub rss_samples: Vec<(f64, u64)>,
    pub kernel_peak_growth_kib: u64,
    /// Server CPU seconds (user + system) during the hostile phase; close to its length means
    /// the server's core was saturated.
    pub server_cpu_secs_hostile_phase: f64,
    pub rss_cap_kib: u64,
    pub rss_cap_hit: bool,
    pub ping_interval_ms: u64,
    /// Ping round trips from the scheduled time; unanswered pings are in it with their age
    /// when given up (a lower bound of their latency).
    pub ping_baseline_us: Percentiles,
    pub ping_hostile_us: Percentiles,
    pub pings_sent: u64,
    pub pings_answered: u64,
    pub ping_failures: Counts,
    pub hostile: Vec<HostileClient>,
    pub hostile_closed: usize,
    /// What the server says: `switchboard_slow_consumers_closed_total` from `/metrics`, its
    /// growth over the hostile phase and until after the hostile clients were dropped (null
    /// when unavailable). More closes here than `hostile_closed` means the server decided to
    /// close sessions whose connections the clients still saw open.
    pub server_slow_consumer_closes_phase: Option<u64>,
    pub server_slow_consumer_closes_total: Option<u64>,
    /// When the server's count rose, seconds into the hostile phase (one entry per close;
    /// resolution 0.5 s), up to a pause after the hostile connections were dropped.
    pub server_slow_consumer_close_times_secs: Vec<f64>,
    /// When the generator dropped the hostile connections, seconds into the hostile phase.
    pub hostile_dropped_at_secs: f64,
    pub hostile_closed_after_ms_min: Option<u64>,
    pub hostile_closed_after_ms_max: Option<u64>,
    pub expectations: Vec<Check>,
    /// Valid measurement: every idle and hostile client connected (the pinging clients and the
    /// seeding fail the run outright). Whether the server met its promises — pings answered,
    /// hostile clients closed in time, output bounded — is `expectations`.
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

#[derive(Serialize)]
pub struct Skipped {
    pub target: Kind,
    pub scenario: String,
    pub reason: String,
}

#[derive(Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_kib: u64,
    pub kernel: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            // Not available_parallelism: the generator is pinned to one core.
            cores: cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
            memory_kib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// The run's verdict: `pass` unless a step that must be valid was not. `notes` are findings
/// that do not fail the run (the step that ended S3's ramp, S7 expectations unless enforced).
#[derive(Serialize, Default)]
pub struct Verdict {
    pub pass: bool,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct Results {
    pub machine: Machine,
    pub started_unix: u64,
    pub targets: Vec<Kind>,
    pub versions: Vec<(Kind, String)>,
    pub payload_bytes: usize,
    pub quick: bool,
    pub method: &'static str,
    pub idle: Vec<IdleResult>,
    pub latency: Vec<LatencyResult>,
    pub history: Vec<HistoryResult>,
    /// S4: one per target and group size.
    pub group_fanout: Vec<GroupFanoutResult>,
    pub slow_consumer: Vec<SlowConsumerResult>,
    /// S9 b/c: idle clients through the load balancer, a node killed, Redis commands.
    pub cluster: Vec<FailoverResult>,
    /// S10: one per blob backend.
    pub attachments: Vec<AttachmentsResult>,
    /// S8 soak: intervals and summary (switchboard only).
    pub soak: Vec<SoakResult>,
    pub skipped: Vec<Skipped>,
    pub verdict: Verdict,
}

impl Results {
    pub fn new(targets: &[Kind], payload_bytes: usize, quick: bool) -> Results {
        Results {
            machine: Machine::read(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            targets: targets.to_vec(),
            versions: Vec::new(),
            payload_bytes,
            quick,
            method: "open loop; server pinned to one core, generator to another; latency from the scheduled send time; \
                     switchboard acks after a group-committed fsync, Centrifugo acks an in-memory publish",
            idle: Vec::new(),
            latency: Vec::new(),
            history: Vec::new(),
            group_fanout: Vec::new(),
            slow_consumer: Vec::new(),
            cluster: Vec::new(),
            attachments: Vec::new(),
            soak: Vec::new(),
            skipped: Vec::new(),
            verdict: Verdict { pass: true, ..Verdict::default() },
        }
    }

    /// A step that had to be valid and was not: the run fails.
    pub fn fail(&mut self, what: String) {
        self.verdict.pass = false;
        self.verdict.failures.push(what);
    }

    pub fn note(&mut self, what: String) {
        self.verdict.notes.push(what);
    }

    pub fn note_version(&mut self, sut: &Sut) {
        if !self.versions.iter().any(|(k, _)| *k == sut.kind) {
            self.versions.push((sut.kind, sut.version.clone()));
        }
    }
}

pub fn write(dir: &Path, results: &Results) -> Result<(), Failure> {
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(results)?)?;
    std::fs::write(dir.join("summary.md"), markdown(results))?;
    Ok(())
}

fn name(k: Kind) -> &'static str {
    match k {
        Kind::Switchboard => "switchboard",
        Kind::Centrifugo => "centrifugo",
    }
}

pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark run\n");
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, {} MiB), kernel {}. Payload {} B. {}{}\n",
        r.machine.cpu,
        r.machine.cores,
        r.machine.memory_kib / 1024,
        r.machine.kernel,
        r.payload_bytes,
        r.method,
        if r.quick { ". **Quick (smoke) sizes.**" } else { "." }
    );
    for (k, v) in &r.versions {
        let _ = writeln!(md, "- {}: `{v}`", name(*k));
    }
    let _ = writeln!(
        md,
        "\n**Verdict: {}**{}\n",
        if r.verdict.pass { "PASS" } else { "FAIL" },
        if r.verdict.pass {
            " — every step that must be valid is valid.".to_owned()
        } else {
            format!(" — {} failure(s); the process exits with status 2.", r.verdict.failures.len())
        }
    );
    for f in &r.verdict.failures {
        let _ = writeln!(md, "- FAIL: {f}");
    }
    for n in &r.verdict.notes {
        let _ = writeln!(md, "- note: {n}");
    }
    if !r.idle.is_empty() {
        let _ = writeln!(md, "\n## S1 idle connections\n");
        let _ = writeln!(
            md,
            "| target | connections | server RSS / conn (KiB) | kernel / conn, both ends (KiB) | connect time (s) | valid |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for i in &r.idle {
            let _ = writeln!(
                md,
                "| {} | {} of {} | {:.1} | {:.1} | {:.1} | {} |",
                name(i.target),
                i.connections,
                i.requested,
                i.rss_per_conn_kib,
                i.kernel_per_conn_kib,
                i.connect_secs,
                valid_cell(i.valid, &i.invalid_reasons)
            );
        }
    }
    for scenario in ["s2", "s3"] {
        let rows: Vec<&LatencyResult> = r.latency.iter().filter(|l| l.scenario == scenario).collect();
        if rows.is_empty() {
            continue;
        }
        let title = if scenario == "s2" {
            "S2 1:1 delivery latency"
        } else {
            "S3 durable throughput (p99 ≤ 50 ms)"
        };
        let _ = writeln!(md, "\n## {title}\n");
        let _ = writeln!(
            md,
            "| target | rate (target → achieved /s) | pairs | scheduled / sent / acked / delivered | lost | dup | reord | errors | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | ack p99 µs | server CPU µs / delivery | valid |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for l in rows {
            let _ = writeln!(
                md,
                "| {} | {} → {:.0} | {} | {} / {} / {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
                name(l.target),
                l.target_rate,
                l.achieved_rate,
                l.pairs,
                l.scheduled,
                l.sent,
                l.acked,
                l.delivered,
                l.lost,
                l.duplicated,
                l.reordered,
                counts_line(&l.errors),
                l.latency_us.p50,
                l.latency_us.p90,
                l.latency_us.p99,
                l.latency_us.p999,
                l.latency_us.max,
                l.ack_latency_us.p99,
                l.server_cpu_us_per_delivery,
                valid_cell(l.valid, &l.invalid_reasons)
            );
        }
    }
    groups_report::markdown(&mut md, &r.group_fanout);
    if !r.history.is_empty() {
        let _ = writeln!(md, "\n## S6 history page (50 messages)\n");
        let _ = writeln!(
            md,
            "| target | rate (target → achieved /s) | requests | failures (incl. pending) | p50 µs | p90 µs | p99 µs | max µs | valid |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for h in &r.history {
            let _ = writeln!(
                md,
                "| {} | {} → {:.0} | {} | {} ({}) | {} | {} | {} | {} | {} |",
                name(h.target),
                h.target_rate,
                h.achieved_rate,
                h.requests,
                h.errors,
                counts_line(&h.failures),
                h.latency_us.p50,
                h.latency_us.p90,
                h.latency_us.p99,
                h.latency_us.max,
                valid_cell(h.valid, &h.invalid_reasons)
            );
        }
    }
    for s in &r.slow_consumer {
        slow_consumer_md(&mut md, s);
    }
    soak::markdown(&mut md, &r.soak);
    s9_md(&mut md, r);
    attachments_report::markdown(&mut md, &r.attachments);
    ratios(&mut md, r);
    for s in &r.skipped {
        let _ = writeln!(md, "\n- {} {} skipped: {}", name(s.target), s.scenario, s.reason);
    }
    md
}

pub(crate) fn valid_cell(valid: bool, reasons: &[String]) -> String {
    if valid { "yes".into() } else { format!("**no**: {}", reasons.join("; ")) }
}

fn opt_ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v} ms")).unwrap_or_else(|| "—".into())
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn slow_consumer_md(md: &mut String, s: &SlowConsumerResult) {
    let _ = writeln!(md, "\n## S7 slow consumer ({})\n", name(s.target));
    let _ = writeln!(
        md,
        "{} idle clients ({} connected), {} pinging clients (one ping per {} ms each), {} hostile clients ({} connected) \
         sending `history` (limit {}, {} messages of {} B seeded) at {}/s each for {:.1} s and never reading \
         (receive buffer {} B). Server: write_stall_ms {}, outbound_bytes {}. Measurement valid: {}.\n",
        s.idle_requested,
        s.idle_connected,
        s.pingers,
        s.ping_interval_ms,
        s.hostile_requested,
        s.hostile_connected,
        s.page_limit,
        s.seeded_messages,
        s.body_bytes,
        s.hostile_rate_per_client,
        s.hostile_phase_secs,
        s.hostile_recv_buffer_bytes,
        s.server_write_stall_ms.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into()),
        s.server_outbound_bytes.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into()),
        valid_cell(s.valid, &s.invalid_reasons)
    );
    let _ = writeln!(md, "| measure | value |");
    let _ = writeln!(md, "|---|---|");
    let rows = [
        ("server RSS at start", mib(s.rss_start_kib)),
        (
            "server RSS with idle clients",
            format!("{} ({:.1} KiB per idle client)", mib(s.rss_idle_kib), s.rss_per_idle_client_kib),
        ),
        ("server RSS before hostile clients", mib(s.rss_before_hostile_kib)),
        (
            "server RSS peak (hostile phase)",
            format!(
                "{} at {:.1} s (+{} over before){}",
                mib(s.rss_peak_kib),
                s.rss_peak_at_secs,
                mib(s.rss_peak_kib.saturating_sub(s.rss_before_hostile_kib)),
                if s.rss_cap_hit {
                    format!(" — **safety cap {} hit, hostile clients dropped**", mib(s.rss_cap_kib))
                } else {
                    String::new()
                }
            ),
        ),
        ("server RSS at end of hostile phase", mib(s.rss_final_kib)),
        ("server RSS after hostile clients dropped", mib(s.rss_after_release_kib)),
        ("kernel memory peak growth (slab + TCP)", mib(s.kernel_peak_growth_kib)),
        (
            "server CPU during the hostile phase",
            format!("{:.1} s of {:.1} s", s.server_cpu_secs_hostile_phase, s.hostile_phase_secs),
        ),
        (
            "ping p50 / p99 / max, idle only (unanswered: age when given up)",
            format!(
                "{} / {} / {} µs",
                s.ping_baseline_us.p50, s.ping_baseline_us.p99, s.ping_baseline_us.max
            ),
        ),
        (
            "ping p50 / p99 / max, hostile phase (unanswered: age when given up)",
            format!("{} / {} / {} µs", s.ping_hostile_us.p50, s.ping_hostile_us.p99, s.ping_hostile_us.max),
        ),
        (
            "pings answered / sent",
            format!("{} / {} (failures: {})", s.pings_answered, s.pings_sent, counts_line(&s.ping_failures)),
        ),
        (
            "hostile clients closed by the server",
            format!(
                "{} of {} (after {} – {} of not reading)",
                s.hostile_closed,
                s.hostile_connected,
                opt_ms(s.hostile_closed_after_ms_min),
                opt_ms(s.hostile_closed_after_ms_max)
            ),
        ),
        (
            "slow-consumer closes the server counted (/metrics), hostile phase / until after release",
            format!(
                "{} / {}{}",
                s.server_slow_consumer_closes_phase.map_or("—".into(), |v| v.to_string()),
                s.server_slow_consumer_closes_total.map_or("—".into(), |v| v.to_string()),
                if s.server_slow_consumer_close_times_secs.is_empty() {
                    String::new()
                } else {
                    let times: Vec<String> =
                        s.server_slow_consumer_close_times_secs.iter().map(|t| format!("{t:.1}")).collect();
                    format!(
                        " (counted at {} s into the phase; hostile connections dropped at {:.1} s)",
                        times.join(", "),
                        s.hostile_dropped_at_secs
                    )
                }
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\n| hostile | requests sent | ticks blocked | send side full after | server kernel send queue max / end (KiB) | server socket at end | closed by server after | how | close code |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (i, h) in s.hostile.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {i} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            h.requests_sent,
            h.requests_not_issued,
            opt_ms(h.send_blocked_after_ms),
            h.server_send_queue_max_bytes / 1024,
            h.server_send_queue_end_bytes.map_or("—".into(), |b| (b / 1024).to_string()),
            h.server_tcp_state_end.as_deref().unwrap_or("gone"),
            if h.closed_by_server {
                opt_ms(h.closed_after_ms)
            } else if h.dropped_at_rss_cap {
                "no (dropped at RSS cap)".into()
            } else {
                "not closed".into()
            },
            h.close_how.clone().unwrap_or_else(|| "—".into()),
            h.close_code.map(|c| c.to_string()).unwrap_or_else(|| "—".into())
        );
    }
    let _ = writeln!(md, "\n| expectation | expected | observed | met |");
    let _ = writeln!(md, "|---|---|---|---|");
    for c in &s.expectations {
        let _ = writeln!(md, "| {} | {} | {} | {} |", c.name, c.expected, c.observed, c.met_cell());
    }
}

/// switchboard / Centrifugo for the same scenario and rate (lower is better for all three).
fn ratios(md: &mut String, r: &Results) {
    let idle = |k: Kind| r.idle.iter().find(|i| i.target == k);
    let mut lines = Vec::new();
    if let (Some(s), Some(c)) = (idle(Kind::Switchboard), idle(Kind::Centrifugo)) {
        let total = |i: &IdleResult| i.rss_per_conn_kib + i.kernel_per_conn_kib;
        lines.push(format!(
            "| S1 memory per connection (RSS) | {:.1} KiB | {:.1} KiB | {:.2} |",
            s.rss_per_conn_kib,
            c.rss_per_conn_kib,
            s.rss_per_conn_kib / c.rss_per_conn_kib.max(0.001)
        ));
        lines.push(format!(
            "| S1 memory per connection (RSS + kernel) | {:.1} KiB | {:.1} KiB | {:.2} |",
            total(s),
            total(c),
            total(s) / total(c).max(0.001)
        ));
    }
    for l in r.latency.iter().filter(|l| l.scenario == "s2" && l.target == Kind::Switchboard) {
        let Some(c) = r
            .latency
            .iter()
            .find(|c| c.scenario == "s2" && c.target == Kind::Centrifugo && c.target_rate == l.target_rate)
        else {
            continue;
        };
        lines.push(format!(
            "| S2 p99 latency at {}/s | {} µs | {} µs | {:.2} |",
            l.target_rate,
            l.latency_us.p99,
            c.latency_us.p99,
            l.latency_us.p99 as f64 / c.latency_us.p99.max(1) as f64
        ));
        lines.push(format!(
            "| S2 server CPU per delivered message at {}/s | {:.1} µs | {:.1} µs | {:.2} |",
            l.target_rate,
            l.server_cpu_us_per_delivery,
            c.server_cpu_us_per_delivery,
            l.server_cpu_us_per_delivery / c.server_cpu_us_per_delivery.max(0.001)
        ));
    }
    lines.extend(groups_report::ratio_lines(&r.group_fanout));
    if !lines.is_empty() {
        let _ = writeln!(md, "\n## switchboard / Centrifugo (lower is better; same run)\n");
        let _ = writeln!(md, "| measure | switchboard | Centrifugo | ratio |");
        let _ = writeln!(md, "|---|---|---|---|");
        for l in lines {
            let _ = writeln!(md, "{l}");
        }
    }
}

fn s9_md(md: &mut String, r: &Results) {
    let rows: Vec<&LatencyResult> = r.latency.iter().filter(|l| l.scenario == "s9").collect();
    if !rows.is_empty() {
        let _ = writeln!(md, "\n## S9 cluster: send→deliver latency by placement\n");
        let _ = writeln!(
            md,
            "| rate (target → achieved /s, all pairs) | pairs | scheduled / sent / acked / delivered (of which by catch-up sync) | lost | dup | reord | p50 µs | p90 µs | p99 µs | max µs | ack p99 µs | reconnects | retries | errors | valid |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for l in rows {
            let _ = writeln!(
                md,
                "| {} → {:.0} | {} {} | {} / {} / {} / {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.target_rate,
                l.achieved_rate,
                l.pairs,
                l.class.as_deref().unwrap_or("all"),
                l.scheduled,
                l.sent,
                l.acked,
                l.delivered,
                l.delivered_by_catch_up_sync,
                l.lost,
                l.duplicated,
                l.reordered,
                l.latency_us.p50,
                l.latency_us.p90,
                l.latency_us.p99,
                l.latency_us.max,
                l.ack_latency_us.p99,
                l.reconnects,
                counts_line(&l.retries),
                counts_line(&l.errors),
                valid_cell(l.valid, &l.invalid_reasons)
            );
        }
    }
    for c in &r.cluster {
        let _ = writeln!(md, "\n## S9 cluster: idle clients through the load balancer, one node killed\n");
        let nodes = |m: &BTreeMap<String, usize>| {
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        let p = |x: &Percentiles| format!("{} / {} / {} / {} ms", x.p50, x.p90, x.p99, x.max);
        let rows = [
            ("load balancer", c.lb.clone()),
            ("users (a direct conversation per two, one message each)", c.users.to_string()),
            (
                "idle clients connected and synced",
                format!(
                    "{} of {} in {:.1} s ({})",
                    c.idle_connected,
                    c.idle_requested,
                    c.connect_secs,
                    nodes(&c.nodes_before_kill)
                ),
            ),
            (
                "node killed (SIGKILL)",
                format!(
                    "{} (pid {}), holding {} clients",
                    c.killed_node.as_deref().unwrap_or("none"),
                    c.killed_pid.map_or("—".into(), |p| p.to_string()),
                    c.on_killed_node
                ),
            ),
            (
                "clients dropped / back and synced",
                format!("{} / {} (limit {} s)", c.dropped, c.back, c.recover_limit_secs),
            ),
            (
                "**all back and synced, after the kill**",
                c.all_back_after_kill_ms.map_or("**not all**".into(), |v| format!("**{v} ms**")),
            ),
            ("back and synced after the kill, p50 / p90 / p99 / max", p(&c.back_after_kill_ms)),
            ("drop → synced again, per client, p50 / p90 / p99 / max", p(&c.down_to_back_ms)),
            (
                "connection attempts per client, mean / max",
                format!("{:.2} / {}", c.attempts_mean, c.attempts_max),
            ),
            ("where they came back", nodes(&c.nodes_after)),
            ("valid", valid_cell(c.valid, &c.invalid_reasons)),
        ];
        let _ = writeln!(md, "| measure | value |");
        let _ = writeln!(md, "|---|---|");
        for (k, v) in rows {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        if let Some(x) = &c.redis {
            let _ = writeln!(
                md,
                "\n### S9 Redis commands (`redis-cli -p {} INFO commandstats`; round trips = commands a node sends, i.e. all but those the Lua scripts run; heartbeat {} ms)\n",
                x.port, c.heartbeat_ms
            );
            let _ = writeln!(
                md,
                "| phase | seconds | round trips | per event (idle rate subtracted) | commands |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|");
            let calls = |d: &crate::cluster::RedisDelta| {
                d.calls.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
            };
            let phases = [
                (
                    "idle, no clients".to_owned(),
                    Some(&x.idle_no_clients),
                    format!("{:.1} per heartbeat interval", x.per_heartbeat_no_clients),
                ),
                (
                    format!("{} connects, one per user", x.connects_first),
                    Some(&x.connect_first),
                    format!("{:.3} per connect", x.per_connect_first),
                ),
                (
                    format!("{} more connects (same users)", x.connects_rest),
                    Some(&x.connect_rest),
                    format!("{:.3} per connect", x.per_connect_rest),
                ),
                (
                    format!("idle, {} clients", c.idle_connected),
                    Some(&x.idle_with_clients),
                    format!("{:.1} per heartbeat interval", x.per_heartbeat_with_clients),
                ),
                (
                    format!("kill → {} reconnected and synced", c.back),
                    x.failover.as_ref(),
                    x.per_reconnect.map_or("—".into(), |v| format!("{v:.3} per reconnect")),
                ),
            ];
            for (name, d, per) in phases {
                let Some(d) = d else { continue };
                let _ = writeln!(md, "| {name} | {:.1} | {} | {per} | {} |", d.secs, d.round_trips, calls(d));
            }
        }
    }
}
