//! Benchmark results: the typed records each scenario produces, and `results.json` plus a
//! Markdown `summary.md` (with switchboard/Centrifugo ratios when both ran) in the run folder.

use crate::Failure;
use crate::target::{Kind, Sut};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

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
}

#[derive(Serialize)]
pub struct LatencyResult {
    pub target: Kind,
    pub scenario: String,
    pub pairs: usize,
    pub payload_bytes: usize,
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub duration_secs: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
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
}

impl LatencyResult {
    /// Open-loop validity and correctness: the schedule was kept (≥ 99 %), nothing acked was
    /// lost, duplicated or reordered, and delivery p99 is within `p99_bound_us`.
    pub fn passes(&self, p99_bound_us: u64) -> bool {
        self.achieved_rate >= 0.99 * self.target_rate as f64
            && self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.latency_us.p99 <= p99_bound_us
    }

    pub fn one_line(&self) -> String {
        format!(
            "achieved {:.0}/s, delivered {}/{} acked, lost {}, dup {}, reordered {}, p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, server {:.2} CPU-s",
            self.achieved_rate,
            self.delivered,
            self.acked,
            self.lost,
            self.duplicated,
            self.reordered,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
            self.server_cpu_secs
        )
    }
}

#[derive(Serialize)]
pub struct HistoryResult {
    pub target: Kind,
    pub messages_in_conversation: u64,
    pub page_size: u32,
    pub target_rate: u64,
    pub requests: u64,
    pub errors: u64,
    pub latency_us: Percentiles,
    pub server_cpu_secs: f64,
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
    pub skipped: Vec<Skipped>,
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
            skipped: Vec::new(),
        }
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
    if !r.idle.is_empty() {
        let _ = writeln!(md, "\n## S1 idle connections\n");
        let _ = writeln!(
            md,
            "| target | connections | server RSS / conn (KiB) | kernel / conn, both ends (KiB) | connect time (s) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for i in &r.idle {
            let _ = writeln!(
                md,
                "| {} | {} of {} | {:.1} | {:.1} | {:.1} |",
                name(i.target),
                i.connections,
                i.requested,
                i.rss_per_conn_kib,
                i.kernel_per_conn_kib,
                i.connect_secs
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
            "| target | rate (target → achieved /s) | pairs | delivered / acked | lost | dup | reord | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | ack p99 µs | server CPU µs / delivery |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for l in rows {
            let _ = writeln!(
                md,
                "| {} | {} → {:.0} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                name(l.target),
                l.target_rate,
                l.achieved_rate,
                l.pairs,
                l.delivered,
                l.acked,
                l.lost,
                l.duplicated,
                l.reordered,
                l.latency_us.p50,
                l.latency_us.p90,
                l.latency_us.p99,
                l.latency_us.p999,
                l.latency_us.max,
                l.ack_latency_us.p99,
                l.server_cpu_us_per_delivery
            );
        }
    }
    if !r.history.is_empty() {
        let _ = writeln!(md, "\n## S6 history page (50 messages)\n");
        let _ = writeln!(md, "| target | rate /s | requests | errors | p50 µs | p90 µs | p99 µs | max µs |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for h in &r.history {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                name(h.target),
                h.target_rate,
                h.requests,
                h.errors,
                h.latency_us.p50,
                h.latency_us.p90,
                h.latency_us.p99,
                h.latency_us.max
            );
        }
    }
    ratios(&mut md, r);
    for s in &r.skipped {
        let _ = writeln!(md, "\n- {} {} skipped: {}", name(s.target), s.scenario, s.reason);
    }
    md
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
    if !lines.is_empty() {
        let _ = writeln!(md, "\n## switchboard / Centrifugo (lower is better; same run)\n");
        let _ = writeln!(md, "| measure | switchboard | Centrifugo | ratio |");
        let _ = writeln!(md, "|---|---|---|---|");
        for l in lines {
            let _ = writeln!(md, "{l}");
        }
    }
}
