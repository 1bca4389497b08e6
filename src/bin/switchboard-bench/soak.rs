//! S8 soak: one switchboard server under S2's pairs at a fixed rate for a long time (default
//! 30 min at 3,000 msgs/s), cut into intervals (default 60 s), so the curve of memory, CPU and
//! latency is visible. One interval is one S2 step (`Pairs::step`: the open-loop schedule, then
//! the drain until every message is acked and delivered); the server's RSS is sampled every
//! second meanwhile. Per interval: counts, latency percentiles, server CPU per message, RSS at
//! the end and at most, the data dir's size on disk. Per run: RSS and CPU per message at the
//! end of the warm-up against the end (drift), worst p99 and max, lost/duplicated/reordered
//! totals, and the expectations. This file owns S8's options, records, verdict and its
//! `summary.md` section. Not in the default list: run it with `--scenarios s8`. Bounded in
//! time and count; loopback only.

use crate::Failure;
use crate::pairs::Pairs;
use crate::report::{Check, LatencyResult, Percentiles, Results, mib, valid_cell};
use crate::target::{Kind, Sut};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// S8's options (flattened into `run`'s).
#[derive(clap::Args, Debug, Clone)]
pub struct S8Args {
    /// S8: minutes of load in all (default 30; quick: 9 s).
    #[arg(long)]
    pub s8_minutes: Option<u64>,
    /// S8: total send rate over all pairs, msgs/s (default 3,000; quick 200).
    #[arg(long)]
    pub s8_rate: Option<u64>,
    /// S8: seconds per interval, one row of results each (default 60; quick 3).
    #[arg(long)]
    pub s8_interval_secs: Option<u64>,
    /// S8: sender→receiver pairs (default: S2's, `--pairs`).
    #[arg(long)]
    pub s8_pairs: Option<usize>,
    /// S8: intervals of warm-up; RSS and CPU drift are measured from their end (default 5;
    /// quick 1).
    #[arg(long)]
    pub s8_warmup_intervals: Option<usize>,
    /// Make S8's expectations (RSS drift < 5 %, every interval's max ≤ 50 ms, CPU per message
    /// drift < 10 %) part of the verdict and the exit status; without it they are notes.
    #[arg(long)]
    pub s8_expect: bool,
}

/// The plan of one S8 run.
pub struct SoakPlan {
    pub pairs: usize,
    pub rate: u64,
    pub interval: Duration,
    pub intervals: usize,
    pub warmup: usize,
}

impl SoakPlan {
    /// From the options; `default_pairs` is S2's pair count of this run.
    pub fn new(args: &S8Args, quick: bool, default_pairs: usize) -> SoakPlan {
        let total_secs = args.s8_minutes.map(|m| m * 60).unwrap_or(if quick { 9 } else { 30 * 60 });
        let interval_secs = args.s8_interval_secs.unwrap_or(if quick { 3 } else { 60 }).max(1);
        SoakPlan {
            pairs: args.s8_pairs.unwrap_or(default_pairs).max(1),
            rate: args.s8_rate.unwrap_or(if quick { 200 } else { 3_000 }).max(1),
            interval: Duration::from_secs(interval_secs),
            intervals: total_secs.div_ceil(interval_secs).max(1) as usize,
            warmup: args.s8_warmup_intervals.unwrap_or(if quick { 1 } else { 5 }),
        }
    }
}

/// The expectations (from the issue).
const RSS_DRIFT_LIMIT_PCT: f64 = 5.0;
const MAX_LATENCY_LIMIT_US: u64 = 50_000;
const CPU_DRIFT_LIMIT_PCT: f64 = 10.0;
/// How often the server's RSS is sampled during an interval.
const RSS_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One interval of S8: one step of the pairs at the plan's rate.
#[derive(Serialize, Debug)]
pub struct SoakInterval {
    /// 1-based.
    pub index: usize,
    pub warmup: bool,
    /// Seconds from the start of the first interval to the end of this one.
    pub elapsed_secs: f64,
    /// This interval's length: its schedule plus the drain of its last acks and deliveries.
    pub wall_secs: f64,
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Send→deliver, from the scheduled send time.
    pub latency_us: Percentiles,
    pub server_cpu_secs: f64,
    pub server_cpu_us_per_message: f64,
    /// At the end of the interval, and the highest of the samples taken during it.
    pub rss_end_kib: u64,
    pub rss_max_kib: u64,
    /// The server's data dir on disk (allocated blocks, as `du` counts them) at the end.
    pub data_dir_bytes: u64,
    /// The S2 step's verdict: schedule kept, every message acked and delivered once, in
    /// order, no error frame.
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

impl SoakInterval {
    fn of(index: usize, warmup: bool, step: &LatencyResult, timing: (f64, f64), rss_max_kib: u64) -> Self {
        SoakInterval {
            index,
            warmup,
            elapsed_secs: timing.0,
            wall_secs: timing.1,
            target_rate: step.target_rate,
            achieved_rate: step.achieved_rate,
            scheduled: step.scheduled,
            sent: step.sent,
            acked: step.acked,
            delivered: step.delivered,
            lost: step.lost,
            duplicated: step.duplicated,
            reordered: step.reordered,
            latency_us: step.latency_us,
            server_cpu_secs: step.server_cpu_secs,
            server_cpu_us_per_message: step.server_cpu_us_per_delivery,
            rss_end_kib: step.server_rss_kib,
            rss_max_kib: rss_max_kib.max(step.server_rss_kib),
            data_dir_bytes: 0,
            valid: step.valid,
            invalid_reasons: step.invalid_reasons.clone(),
        }
    }

    fn one_line(&self, of: usize) -> String {
        format!(
            "[s8] {}/{of}{} at {:.0} s: {} → {:.0}/s, delivered {}, lost {}, dup {}, reord {}, p99 {:.1} ms, max {:.1} ms, \
             CPU {:.1} µs/msg, RSS {} (max {}), data dir {}, {}",
            self.index,
            if self.warmup { " (warm-up)" } else { "" },
            self.elapsed_secs,
            self.target_rate,
            self.achieved_rate,
            self.delivered,
            self.lost,
            self.duplicated,
            self.reordered,
            self.latency_us.p99 as f64 / 1000.0,
            self.latency_us.max as f64 / 1000.0,
            self.server_cpu_us_per_message,
            mib(self.rss_end_kib),
            mib(self.rss_max_kib),
            mib(self.data_dir_bytes / 1024),
            if self.valid {
                "valid".to_owned()
            } else {
                format!("INVALID ({})", self.invalid_reasons.join("; "))
            }
        )
    }
}

/// The run's curve in a few numbers. Drift is (end − reference) / reference; `None` where the
/// run has too few intervals after the warm-up to tell.
#[derive(Serialize, Debug, Default)]
pub struct SoakSummary {
    /// After the pairs connected, before the first interval.
    pub rss_start_kib: u64,
    pub data_dir_bytes_start: u64,
    /// At the end of the last warm-up interval (the start's with no warm-up).
    pub rss_after_warmup_kib: Option<u64>,
    pub rss_end_kib: u64,
    pub rss_drift_pct: Option<f64>,
    pub rss_max_kib: u64,
    pub rss_max_interval: usize,
    /// CPU µs per delivered message in the first interval after the warm-up and in the last.
    pub cpu_us_per_message_first: Option<f64>,
    pub cpu_us_per_message_last: Option<f64>,
    pub cpu_drift_pct: Option<f64>,
    pub worst_p99_us: u64,
    pub worst_p99_interval: usize,
    pub worst_max_us: u64,
    pub worst_max_interval: usize,
    /// Intervals whose max exceeded the 50 ms expectation.
    pub intervals_over_max_limit: usize,
    pub data_dir_bytes_after_warmup: Option<u64>,
    pub data_dir_bytes_end: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub invalid_intervals: usize,
}

/// S8 soak (`results.json` → `soak`).
#[derive(Serialize, Debug)]
pub struct SoakResult {
    pub target: Kind,
    pub pairs: usize,
    pub payload_bytes: usize,
    pub target_rate: u64,
    pub interval_secs: u64,
    pub intervals_planned: usize,
    pub warmup_intervals: usize,
    pub intervals: Vec<SoakInterval>,
    pub summary: SoakSummary,
    /// RSS flat, no stall, CPU per message flat: notes unless `--s8-expect`.
    pub expectations: Vec<Check>,
    /// Every planned interval ran and was valid (nothing lost, duplicated or reordered).
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

/// Runs the plan's intervals back to back over `pairs` (already connected to `sut`), printing
/// one line per interval to stderr. `data_dir` is the server's. Stops early only when the
/// server is gone.
pub async fn run(
    sut: &Sut,
    pairs: &mut Pairs,
    plan: &SoakPlan,
    payload: usize,
    data_dir: &Path,
) -> Result<SoakResult, Failure> {
    eprintln!(
        "[s8] soak: {} pairs at {} msgs/s, {} intervals of {:?} ({} of warm-up)",
        plan.pairs, plan.rate, plan.intervals, plan.interval, plan.warmup
    );
    let rss_start_kib = sut.rss_kib();
    let data_dir_bytes_start = disk_bytes(data_dir);
    let started = Instant::now();
    let mut intervals: Vec<SoakInterval> = Vec::new();
    let mut invalid_reasons = Vec::new();
    for index in 1..=plan.intervals {
        let began = Instant::now();
        let (step, rss_max_kib) = step_sampling_rss(sut, pairs, plan).await?;
        let timing = (started.elapsed().as_secs_f64(), began.elapsed().as_secs_f64());
        let mut interval = SoakInterval::of(index, index <= plan.warmup, &step, timing, rss_max_kib);
        interval.data_dir_bytes = disk_bytes(data_dir);
        eprintln!("{}", interval.one_line(plan.intervals));
        if !interval.valid {
            invalid_reasons.push(format!("interval {index}: {}", interval.invalid_reasons.join("; ")));
        }
        intervals.push(interval);
        if sut.rss_kib() == 0 {
            invalid_reasons.push(format!("the server is gone after interval {index} of {}", plan.intervals));
            break;
        }
    }
    let summary = summarize(&intervals, plan.warmup, rss_start_kib, data_dir_bytes_start);
    Ok(SoakResult {
        target: sut.kind,
        pairs: plan.pairs,
        payload_bytes: payload,
        target_rate: plan.rate,
        interval_secs: plan.interval.as_secs(),
        intervals_planned: plan.intervals,
        warmup_intervals: plan.warmup,
        expectations: expectations(&summary, intervals.len()),
        valid: invalid_reasons.is_empty(),
        invalid_reasons,
        intervals,
        summary,
    })
}

/// One interval: a step of the pairs, with the server's RSS sampled every second meanwhile;
/// the step's result and the highest RSS seen.
async fn step_sampling_rss(
    sut: &Sut,
    pairs: &mut Pairs,
    plan: &SoakPlan,
) -> Result<(LatencyResult, u64), Failure> {
    let step = pairs.step(sut, "s8", plan.rate, plan.interval);
    tokio::pin!(step);
    let mut tick = tokio::time::interval(RSS_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rss_max_kib = 0;
    loop {
        tokio::select! {
            result = &mut step => return Ok((result?, rss_max_kib)),
            _ = tick.tick() => rss_max_kib = rss_max_kib.max(sut.rss_kib()),
        }
    }
}

/// Bytes the files under `dir` take on disk (allocated blocks, as `du` counts them); 0 when
/// it cannot be read.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&entry.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// (to − from) / from in percent; `None` without a reference.
fn drift_pct(from: f64, to: f64) -> Option<f64> {
    (from > 0.0).then(|| (to - from) / from * 100.0)
}

/// The summary of `intervals`, the first `warmup` of them warm-up; `*_start` were read before
/// the first.
fn summarize(
    intervals: &[SoakInterval],
    warmup: usize,
    rss_start_kib: u64,
    data_dir_bytes_start: u64,
) -> SoakSummary {
    let Some(last) = intervals.last() else {
        return SoakSummary { rss_start_kib, data_dir_bytes_start, ..SoakSummary::default() };
    };
    // The reference is the end of the warm-up; it exists only if an interval came after it.
    let measured = intervals.get(warmup..).filter(|m| !m.is_empty());
    let after_warmup = |f: &dyn Fn(&SoakInterval) -> u64, at_start: u64| {
        measured.map(|_| if warmup == 0 { at_start } else { f(&intervals[warmup - 1]) })
    };
    let rss_after_warmup_kib = after_warmup(&|i| i.rss_end_kib, rss_start_kib);
    let data_dir_bytes_after_warmup = after_warmup(&|i| i.data_dir_bytes, data_dir_bytes_start);
    let cpu = |i: &SoakInterval| i.server_cpu_us_per_message;
    let cpu_first = measured.and_then(|m| m.first()).map(cpu);
    let cpu_last = measured.filter(|m| m.len() >= 2).and_then(|m| m.last()).map(cpu);
    let worst = |f: &dyn Fn(&SoakInterval) -> u64| {
        intervals.iter().map(|i| (f(i), i.index)).max_by_key(|(v, _)| *v).unwrap_or_default()
    };
    let (worst_p99_us, worst_p99_interval) = worst(&|i| i.latency_us.p99);
    let (worst_max_us, worst_max_interval) = worst(&|i| i.latency_us.max);
    let (rss_max_kib, rss_max_interval) = worst(&|i| i.rss_max_kib);
    let total = |f: &dyn Fn(&SoakInterval) -> u64| intervals.iter().map(f).sum::<u64>();
    SoakSummary {
        rss_start_kib,
        data_dir_bytes_start,
        rss_after_warmup_kib,
        rss_end_kib: last.rss_end_kib,
        rss_drift_pct: rss_after_warmup_kib.and_then(|from| drift_pct(from as f64, last.rss_end_kib as f64)),
        rss_max_kib,
        rss_max_interval,
        cpu_us_per_message_first: cpu_first,
        cpu_us_per_message_last: cpu_last,
        cpu_drift_pct: cpu_first.zip(cpu_last).and_then(|(from, to)| drift_pct(from, to)),
        worst_p99_us,
        worst_p99_interval,
        worst_max_us,
        worst_max_interval,
        intervals_over_max_limit: intervals
            .iter()
            .filter(|i| i.latency_us.max > MAX_LATENCY_LIMIT_US)
            .count(),
        data_dir_bytes_after_warmup,
        data_dir_bytes_end: last.data_dir_bytes,
        lost: total(&|i| i.lost),
        duplicated: total(&|i| i.duplicated),
        reordered: total(&|i| i.reordered),
        invalid_intervals: intervals.iter().filter(|i| !i.valid).count(),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:+.1} %"))
}

/// The targets. A drift is checked as growth: memory or CPU per message that falls
/// passes. One the run cannot tell (no interval after the warm-up) is not evaluated.
fn expectations(s: &SoakSummary, intervals: usize) -> Vec<Check> {
    let rss_observed = match s.rss_after_warmup_kib {
        Some(from) => format!("{} → {} ({})", mib(from), mib(s.rss_end_kib), pct(s.rss_drift_pct)),
        None => "not evaluated: no interval after the warm-up".into(),
    };
    let cpu_observed = match (s.cpu_us_per_message_first, s.cpu_us_per_message_last) {
        (Some(from), Some(to)) => format!("{from:.1} → {to:.1} µs ({})", pct(s.cpu_drift_pct)),
        _ => "not evaluated: fewer than two intervals after the warm-up".into(),
    };
    vec![
        Check {
            name: "server RSS flat after the warm-up".into(),
            expected: format!("RSS at the end < {RSS_DRIFT_LIMIT_PCT} % above RSS at the end of the warm-up"),
            observed: rss_observed,
            evaluated: s.rss_drift_pct.is_some(),
            met: s.rss_drift_pct.is_none_or(|d| d < RSS_DRIFT_LIMIT_PCT),
        },
        Check {
            name: "no stall".into(),
            expected: format!("every interval's max ≤ {} ms", MAX_LATENCY_LIMIT_US / 1000),
            observed: format!(
                "worst max {:.1} ms (interval {}); {} of {intervals} intervals above",
                s.worst_max_us as f64 / 1000.0,
                s.worst_max_interval,
                s.intervals_over_max_limit
            ),
            evaluated: intervals > 0,
            met: s.intervals_over_max_limit == 0,
        },
        Check {
            name: "server CPU per message flat after the warm-up".into(),
            expected: format!(
                "last interval < {CPU_DRIFT_LIMIT_PCT} % above the first interval after the warm-up"
            ),
            observed: cpu_observed,
            evaluated: s.cpu_drift_pct.is_some(),
            met: s.cpu_drift_pct.is_none_or(|d| d < CPU_DRIFT_LIMIT_PCT),
        },
    ]
}

/// Puts S8 into the run's results: an invalid interval (a message lost, duplicated or
/// reordered, the schedule not kept, an error frame) fails the run; an unmet expectation is a
/// note, or with `enforce` (`--s8-expect`) a failure.
pub fn record(results: &mut Results, r: SoakResult, enforce: bool) {
    if !r.valid {
        results.fail(format!("switchboard S8: {}", r.invalid_reasons.join("; ")));
    }
    for c in r.expectations.iter().filter(|c| !c.met) {
        let what = format!(
            "switchboard S8 expectation not met: {} (expected {}; observed {})",
            c.name, c.expected, c.observed
        );
        if enforce { results.fail(what) } else { results.note(what) }
    }
    results.soak.push(r);
}

/// The "S8 soak" section of `summary.md`: one row per interval (the curve), then the summary
/// and the expectations.
pub fn markdown(md: &mut String, runs: &[SoakResult]) {
    for r in runs {
        let _ = writeln!(md, "\n## S8 soak (switchboard)\n");
        let _ = writeln!(
            md,
            "{} pairs at {} msgs/s, {} of {} intervals of {} s ({} of warm-up, marked w). One interval is one S2 \
             step: its schedule, then a drain until every message is acked and delivered, so the intervals are back \
             to back but for that gap. Server RSS sampled every second. Measurement valid: {}.\n",
            r.pairs,
            r.target_rate,
            r.intervals.len(),
            r.intervals_planned,
            r.interval_secs,
            r.warmup_intervals,
            valid_cell(r.valid, &r.invalid_reasons)
        );
        let _ = writeln!(
            md,
            "| interval | end at (s) | rate (target → achieved /s) | sent / acked / delivered | lost / dup / reord | p50 µs | p99 µs | p99.9 µs | max µs | server CPU s | CPU µs / msg | RSS end | RSS max | data dir | valid |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for i in &r.intervals {
            let _ = writeln!(
                md,
                "| {}{} | {:.0} | {} → {:.0} | {} / {} / {} | {} / {} / {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} |",
                i.index,
                if i.warmup { " w" } else { "" },
                i.elapsed_secs,
                i.target_rate,
                i.achieved_rate,
                i.sent,
                i.acked,
                i.delivered,
                i.lost,
                i.duplicated,
                i.reordered,
                i.latency_us.p50,
                i.latency_us.p99,
                i.latency_us.p999,
                i.latency_us.max,
                i.server_cpu_secs,
                i.server_cpu_us_per_message,
                mib(i.rss_end_kib),
                mib(i.rss_max_kib),
                mib(i.data_dir_bytes / 1024),
                valid_cell(i.valid, &i.invalid_reasons)
            );
        }
        summary_md(md, &r.summary);
        let _ = writeln!(md, "\n| S8 expectation | expected | observed | met |");
        let _ = writeln!(md, "|---|---|---|---|");
        for c in &r.expectations {
            let _ = writeln!(md, "| {} | {} | {} | {} |", c.name, c.expected, c.observed, c.met_cell());
        }
    }
}

fn summary_md(md: &mut String, s: &SoakSummary) {
    let opt_mib = |kib: Option<u64>| kib.map_or("—".into(), mib);
    let opt_us = |us: Option<f64>| us.map_or("—".into(), |v| format!("{v:.1} µs"));
    let rows = [
        (
            "server RSS: start / end of warm-up / end (drift since warm-up)",
            format!(
                "{} / {} / {} ({})",
                mib(s.rss_start_kib),
                opt_mib(s.rss_after_warmup_kib),
                mib(s.rss_end_kib),
                pct(s.rss_drift_pct)
            ),
        ),
        ("server RSS max", format!("{} (interval {})", mib(s.rss_max_kib), s.rss_max_interval)),
        (
            "server CPU per message: first interval after warm-up → last (drift)",
            format!(
                "{} → {} ({})",
                opt_us(s.cpu_us_per_message_first),
                opt_us(s.cpu_us_per_message_last),
                pct(s.cpu_drift_pct)
            ),
        ),
        ("worst p99", format!("{} µs (interval {})", s.worst_p99_us, s.worst_p99_interval)),
        (
            "worst max",
            format!(
                "{} µs (interval {}); {} interval(s) above {} ms",
                s.worst_max_us,
                s.worst_max_interval,
                s.intervals_over_max_limit,
                MAX_LATENCY_LIMIT_US / 1000
            ),
        ),
        (
            "data dir: start / end of warm-up / end",
            format!(
                "{} / {} / {}",
                mib(s.data_dir_bytes_start / 1024),
                opt_mib(s.data_dir_bytes_after_warmup.map(|b| b / 1024)),
                mib(s.data_dir_bytes_end / 1024)
            ),
        ),
        (
            "lost / duplicated / reordered (all intervals); invalid intervals",
            format!("{} / {} / {}; {}", s.lost, s.duplicated, s.reordered, s.invalid_intervals),
        ),
    ];
    let _ = writeln!(md, "\n| S8 summary | value |");
    let _ = writeln!(md, "|---|---|");
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(index: usize, warmup: bool, rss_end_kib: u64, cpu: f64, max_us: u64) -> SoakInterval {
        SoakInterval {
            index,
            warmup,
            elapsed_secs: index as f64,
            wall_secs: 1.0,
            target_rate: 100,
            achieved_rate: 100.0,
            scheduled: 100,
            sent: 100,
            acked: 100,
            delivered: 100,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            latency_us: Percentiles {
                count: 100,
                p50: 1,
                p90: 2,
                p99: max_us / 2,
                p999: max_us,
                max: max_us,
            },
            server_cpu_secs: 0.01,
            server_cpu_us_per_message: cpu,
            rss_end_kib,
            rss_max_kib: rss_end_kib + 10,
            data_dir_bytes: 4096 * index as u64,
            valid: true,
            invalid_reasons: Vec::new(),
        }
    }

    #[test]
    fn drift_is_measured_from_the_end_of_the_warm_up() {
        let run = [
            interval(1, true, 1_000, 90.0, 1_000),
            interval(2, false, 2_000, 80.0, 60_000),
            interval(3, false, 2_200, 96.0, 2_000),
        ];
        let s = summarize(&run, 1, 500, 0);
        assert_eq!(s.rss_after_warmup_kib, Some(1_000));
        assert_eq!(s.rss_drift_pct, Some(120.0));
        assert_eq!(s.cpu_drift_pct, Some(20.0));
        assert_eq!((s.worst_max_us, s.worst_max_interval), (60_000, 2));
        assert_eq!((s.rss_max_kib, s.rss_max_interval), (2_210, 3));
        assert_eq!(s.data_dir_bytes_after_warmup, Some(4096));
        let checks = expectations(&s, run.len());
        assert!(checks.iter().all(|c| c.evaluated && !c.met), "{checks:?}");
    }

    #[test]
    fn too_short_a_run_is_not_evaluated() {
        let run = [interval(1, true, 1_000, 90.0, 1_000), interval(2, false, 1_010, 91.0, 1_000)];
        let s = summarize(&run, 5, 500, 0);
        assert_eq!((s.rss_after_warmup_kib, s.rss_drift_pct, s.cpu_drift_pct), (None, None, None));
        let s = summarize(&run, 1, 500, 0);
        assert_eq!(s.cpu_us_per_message_first, Some(91.0));
        assert_eq!(s.cpu_drift_pct, None);
        let checks = expectations(&s, run.len());
        assert!(checks.iter().all(|c| c.met), "{checks:?}");
        assert!(!checks[2].evaluated && checks[0].evaluated);
        assert_eq!(summarize(&[], 0, 7, 0).rss_start_kib, 7);
    }
}
