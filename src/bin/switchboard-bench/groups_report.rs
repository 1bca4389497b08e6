//! S4's results: the record of one group size (`GroupFanoutResult`: deliveries/s, server CPU
//! per second and per delivery, last-member latency, lost and duplicated deliveries), its
//! verdict and the targets, the S4 section of `summary.md` and its
//! switchboard/Centrifugo ratio rows. The scenario itself is `groups.rs`.

use crate::report::{Check, Counts, Percentiles, counts_line};
use crate::scenarios::report_name;
use crate::target::Kind;
use serde::Serialize;
use std::fmt::Write;

/// The targets for switchboard, checked at groups of `TARGET_MEMBERS` or more.
const TARGET_MEMBERS: usize = 1_000;
const TARGET_DELIVERIES_PER_CORE: f64 = 100_000.0;
const TARGET_LAST_MEMBER_P99_US: u64 = 20_000;

/// One group size of S4.
#[derive(Serialize)]
pub struct GroupFanoutResult {
    pub target: Kind,
    /// Receiving connections, one per member (switchboard: the group has this many members;
    /// the sender writes from a second device of one of them).
    pub members: usize,
    pub payload_bytes: usize,
    /// The sender's messages per second.
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub duration_secs: f64,
    /// target_rate × members.
    pub offered_deliveries_per_sec: u64,
    pub scheduled: u64,
    pub sent: u64,
    pub acked: u64,
    /// acked × members.
    pub expected_deliveries: u64,
    /// Distinct (member, message) deliveries.
    pub delivered: u64,
    /// Deliveries of acked messages that never arrived (within the drain).
    pub lost: u64,
    pub duplicated: u64,
    /// A member received a message after a later one of the same sender.
    pub reordered: u64,
    /// Messages every member had; the last-member percentiles are over these.
    pub messages_complete: u64,
    /// Delivered over the time from the first scheduled send to the last delivery (at least
    /// the step's duration).
    pub deliveries_per_sec: f64,
    /// From a message's scheduled send time until the last member had it.
    pub last_member_us: Percentiles,
    /// From the scheduled send time to each single delivery.
    pub delivery_us: Percentiles,
    /// From the scheduled send time to the sender's ack (switchboard: durably stored).
    pub ack_latency_us: Percentiles,
    /// Server CPU seconds (user + system) from the first send to the end of the drain.
    pub server_cpu_secs: f64,
    /// server_cpu_secs over that wall time: 1.0 is the whole core the server is pinned to.
    pub server_cpu_per_sec: f64,
    /// delivered / server_cpu_secs: deliveries per second per server core (null when the
    /// server's CPU is unknown, e.g. an external one).
    pub deliveries_per_server_cpu_sec: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The generator's own CPU seconds over the same time (near the wall time: it may be the
    /// bottleneck).
    pub generator_cpu_secs: f64,
    pub server_rss_kib: u64,
    /// Connecting, subscribing/creating the group and syncing the N members, seconds.
    pub setup_secs: f64,
    /// Error and close frames, broken connections, unexpected frames, by kind/code.
    pub errors: Counts,
    /// The targets (switchboard, groups of ≥ 1,000): notes, not the verdict.
    pub expectations: Vec<Check>,
    /// Valid: schedule kept (≥ 99 %), scheduled = sent = acked, every member had every
    /// message exactly once and in order, and no error.
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

impl GroupFanoutResult {
    pub fn judge(&mut self) {
        let mut reasons = Vec::new();
        if self.achieved_rate < 0.99 * self.target_rate as f64 {
            reasons.push(format!("achieved {:.0}/s < 99 % of {}/s", self.achieved_rate, self.target_rate));
        }
        if self.sent != self.scheduled || self.acked != self.sent {
            reasons.push(format!("scheduled {}, sent {}, acked {}", self.scheduled, self.sent, self.acked));
        }
        let expected = self.scheduled * self.members as u64;
        if self.delivered != expected {
            reasons.push(format!("{} of {expected} deliveries ({} lost)", self.delivered, self.lost));
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

    /// Fills `expectations` with the targets (switchboard, groups of ≥ 1,000).
    pub fn check_targets(&mut self) {
        if self.target != Kind::Switchboard || self.members < TARGET_MEMBERS {
            return;
        }
        let per_core = self.deliveries_per_server_cpu_sec;
        self.expectations.push(Check {
            name: format!("deliveries per second per server core, {} members", self.members),
            expected: format!("≥ {TARGET_DELIVERIES_PER_CORE:.0}"),
            observed: per_core.map_or("unknown".into(), |v| format!("{v:.0}")),
            evaluated: per_core.is_some(),
            met: per_core.is_none_or(|v| v >= TARGET_DELIVERIES_PER_CORE),
        });
        self.expectations.push(Check {
            name: format!("last-member p99, {} members", self.members),
            expected: format!("≤ {TARGET_LAST_MEMBER_P99_US} µs"),
            observed: format!("{} µs", self.last_member_us.p99),
            evaluated: true,
            met: self.last_member_us.p99 <= TARGET_LAST_MEMBER_P99_US,
        });
    }

    pub fn one_line(&self) -> String {
        format!(
            "{}: {} members at {}/s (achieved {:.0}/s), sent {}, acked {}, delivered {} of {}, lost {}, dup {}, reordered {}, errors {}, {:.0} deliveries/s, last member p50 {} µs, p99 {} µs, max {} µs, server {:.2} CPU-s/s, {} deliveries per server CPU-s, generator {:.2} CPU-s{}",
            if self.valid { "valid" } else { "INVALID" },
            self.members,
            self.target_rate,
            self.achieved_rate,
            self.sent,
            self.acked,
            self.delivered,
            self.expected_deliveries,
            self.lost,
            self.duplicated,
            self.reordered,
            counts_line(&self.errors),
            self.deliveries_per_sec,
            self.last_member_us.p50,
            self.last_member_us.p99,
            self.last_member_us.max,
            self.server_cpu_per_sec,
            self.deliveries_per_server_cpu_sec.map_or("?".into(), |v| format!("{v:.0}")),
            self.generator_cpu_secs,
            if self.valid { String::new() } else { format!(" ({})", self.invalid_reasons.join("; ")) }
        )
    }
}

/// The S4 section of `summary.md`: one row per target and group size, the sizes side by side.
pub fn markdown(md: &mut String, rows: &[GroupFanoutResult]) {
    if rows.is_empty() {
        return;
    }
    let mut rows: Vec<&GroupFanoutResult> = rows.iter().collect();
    rows.sort_by_key(|r| (r.members, r.target != Kind::Switchboard));
    let _ = writeln!(md, "\n## S4 group fan-out (latency until the last member has the message)\n");
    let _ = writeln!(
        md,
        "| target | members | rate (target → achieved /s) | offered → achieved deliveries/s | scheduled / sent / acked | delivered of expected | lost | dup | reord | errors | last member p50 µs | p90 µs | p99 µs | max µs | ack p99 µs | server CPU-s per s | deliveries per server CPU-s | generator CPU-s | valid |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} → {:.0} | {} → {:.0} | {} / {} / {} | {} of {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.1} | {} |",
            report_name(r.target),
            r.members,
            r.target_rate,
            r.achieved_rate,
            r.offered_deliveries_per_sec,
            r.deliveries_per_sec,
            r.scheduled,
            r.sent,
            r.acked,
            r.delivered,
            r.expected_deliveries,
            r.lost,
            r.duplicated,
            r.reordered,
            counts_line(&r.errors),
            r.last_member_us.p50,
            r.last_member_us.p90,
            r.last_member_us.p99,
            r.last_member_us.max,
            r.ack_latency_us.p99,
            r.server_cpu_per_sec,
            r.deliveries_per_server_cpu_sec.map_or("—".into(), |v| format!("{v:.0}")),
            r.generator_cpu_secs,
            if r.valid { "yes".into() } else { format!("**no**: {}", r.invalid_reasons.join("; ")) }
        );
    }
    let checks: Vec<&Check> = rows.iter().flat_map(|r| &r.expectations).collect();
    if !checks.is_empty() {
        let _ = writeln!(md, "\n| S4 target (switchboard) | expected | observed | met |");
        let _ = writeln!(md, "|---|---|---|---|");
        for c in checks {
            let met = if !c.evaluated {
                "n/a"
            } else if c.met {
                "yes"
            } else {
                "**no**"
            };
            let _ = writeln!(md, "| {} | {} | {} | {met} |", c.name, c.expected, c.observed);
        }
    }
}

/// Rows of the switchboard/Centrifugo table (lower is better) for each group size both ran.
pub fn ratio_lines(rows: &[GroupFanoutResult]) -> Vec<String> {
    let mut lines = Vec::new();
    for s in rows.iter().filter(|r| r.target == Kind::Switchboard) {
        let Some(c) = rows.iter().find(|c| c.target == Kind::Centrifugo && c.members == s.members) else {
            continue;
        };
        lines.push(format!(
            "| S4 last-member p99, {} members | {} µs | {} µs | {:.2} |",
            s.members,
            s.last_member_us.p99,
            c.last_member_us.p99,
            s.last_member_us.p99 as f64 / c.last_member_us.p99.max(1) as f64
        ));
        if let (Some(su), Some(cu)) = (s.server_cpu_us_per_delivery, c.server_cpu_us_per_delivery) {
            lines.push(format!(
                "| S4 server CPU per delivery, {} members | {su:.2} µs | {cu:.2} µs | {:.2} |",
                s.members,
                su / cu.max(1e-9)
            ));
        }
    }
    lines
}
