//! The run (`switchboard-bench run`): its options, the order of the named scenarios and the
//! run's verdict; and the scenarios S1 idle connections (memory per connection), S2 1:1
//! delivery latency at steady rates, S3 durable throughput under a p99 bound, S4 group fan-out
//! (skipped until groups exist), S6 history page latency. S7 (slow consumer) lives in
//! `slow.rs`. Every run is bounded in time and count; every step's counters start at zero.

use crate::report::{
    self, Counts, HistoryResult, IdleResult, LatencyResult, Percentiles, Results, Skipped, bump, counts_line,
};
use crate::slow::{self, SlowConsumer};
use crate::target::{self, Incoming, Kind, Sut, http_client};
use crate::{Failure, ws};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Scenarios to run: s1, s2, s3, s4, s6, s7.
    #[arg(long, value_delimiter = ',', default_value = "s1,s2,s3,s4,s6,s7")]
    scenarios: Vec<String>,
    /// Systems to measure; centrifugo runs S1 and S2 (needs --centrifugo-bin).
    #[arg(long, value_delimiter = ',', default_value = "switchboard")]
    targets: Vec<Kind>,
    /// Output folder (default bench-results/run-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Small sizes and short steps: the CI smoke run.
    #[arg(long)]
    quick: bool,
    /// The switchboard binary (default: next to this one).
    #[arg(long)]
    switchboard_bin: Option<PathBuf>,
    #[arg(long, env = "CENTRIFUGO_BIN")]
    centrifugo_bin: Option<PathBuf>,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// S1: idle connections.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// S2/S3: sender→receiver pairs.
    #[arg(long)]
    pairs: Option<usize>,
    /// S2: total send rates (msgs/s), one step each.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u64>>,
    /// Seconds per rate step.
    #[arg(long)]
    step_secs: Option<u64>,
    /// Core the server is pinned to; the generator takes `client_cpu`.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Extra environment for the switchboard server, KEY=VALUE (repeatable), e.g.
    /// `--server-env SWITCHBOARD_WRITE_STALL_MS=2000`.
    #[arg(long = "server-env", value_parser = parse_env_pair)]
    server_env: Vec<(String, String)>,
    /// S7: idle authenticated clients (default 1,000; quick 50).
    #[arg(long)]
    s7_idle: Option<usize>,
    /// S7: hostile clients that request history and never read (default 10; quick 2).
    #[arg(long)]
    s7_hostile: Option<usize>,
    /// S7: well-behaved clients measuring ping round trips (default 5; quick 2).
    #[arg(long)]
    s7_pingers: Option<usize>,
    /// S7: messages seeded into the hostile clients' conversation (default 200; quick 60).
    #[arg(long)]
    s7_messages: Option<u64>,
    /// S7: body size of each seeded message, bytes (the server's limit is 64 KiB).
    #[arg(long, default_value_t = 60 * 1024)]
    s7_body_bytes: usize,
    /// S7: `limit` of each hostile `history` request (default 50; quick 20).
    #[arg(long)]
    s7_page: Option<u32>,
    /// S7: `history` requests per second per hostile client (default 20; quick 5).
    #[arg(long)]
    s7_hostile_rate: Option<u64>,
    /// S7: seconds of the hostile phase (default: the server's write_stall_ms + 10 s; quick 3).
    #[arg(long)]
    s7_secs: Option<u64>,
    /// S7: one ping per this many ms per well-behaved client.
    #[arg(long, default_value_t = 100)]
    s7_ping_ms: u64,
    /// S7: receive buffer of each hostile socket, bytes (the kernel doubles it).
    #[arg(long, default_value_t = 4096)]
    s7_recv_buffer: u32,
    /// S7 safety cap: above this server RSS the generator stops the hostile clients and drops
    /// their connections (MiB).
    #[arg(long, default_value_t = 1024)]
    s7_rss_cap_mib: u64,
    /// Make S7's expectations (hostile clients closed within write_stall_ms, output bounded)
    /// part of the verdict and the exit status; without it they are reported as notes.
    #[arg(long)]
    s7_expect: bool,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))?;
    Ok((k.to_owned(), v.to_owned()))
}

struct Sizes {
    idle: usize,
    pairs: usize,
    rates: Vec<u64>,
    s3_rates: Vec<u64>,
    step: Duration,
    history_messages: u64,
    history_rate: u64,
    s7_idle: usize,
    s7_hostile: usize,
    s7_pingers: usize,
    s7_messages: u64,
    s7_page: u32,
    s7_hostile_rate: u64,
}

impl RunArgs {
    fn sizes(&self) -> Sizes {
        let quick = self.quick;
        Sizes {
            idle: self.idle_connections.unwrap_or(if quick { 200 } else { 10_000 }),
            pairs: self.pairs.unwrap_or(if quick { 20 } else { 500 }),
            rates: self.rates.clone().unwrap_or(if quick { vec![200] } else { vec![1_000, 5_000, 10_000] }),
            s3_rates: if quick {
                vec![300, 600]
            } else {
                vec![5_000, 10_000, 15_000, 20_000, 30_000, 40_000, 60_000]
            },
            step: Duration::from_secs(self.step_secs.unwrap_or(if quick { 2 } else { 15 })),
            history_messages: if quick { 300 } else { 5_000 },
            history_rate: if quick { 100 } else { 1_000 },
            s7_idle: self.s7_idle.unwrap_or(if quick { 50 } else { 1_000 }),
            s7_hostile: self.s7_hostile.unwrap_or(if quick { 2 } else { 10 }),
            s7_pingers: self.s7_pingers.unwrap_or(if quick { 2 } else { 5 }),
            s7_messages: self.s7_messages.unwrap_or(if quick { 60 } else { 200 }),
            s7_page: self.s7_page.unwrap_or(if quick { 20 } else { 50 }),
            s7_hostile_rate: self.s7_hostile_rate.unwrap_or(if quick { 5 } else { 20 }),
        }
    }
}

/// The S3 latency bound: a rate passes while delivery p99 stays at or under it.
const S3_P99_BOUND_US: u64 = 50_000;

/// Runs the chosen scenarios and writes the results. `Ok(true)` when the verdict is PASS. A
/// scenario that cannot complete (its server does not start, seeding fails, …) fails the
/// verdict and the run goes on with the next one.
pub async fn run(args: RunArgs) -> Result<bool, Failure> {
    pin_self(args.client_cpu);
    let out = args.out.clone().unwrap_or_else(crate::default_out_dir);
    std::fs::create_dir_all(&out)?;
    let switchboard_bin = match &args.switchboard_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("switchboard"),
    };
    let runner =
        Runner { sizes: args.sizes(), work: out.join("work"), out: out.clone(), switchboard_bin, args };
    let mut results = Results::new(&runner.args.targets, runner.args.payload, runner.args.quick);
    for kind in runner.args.targets.clone() {
        let wanted = |s: &str| runner.args.scenarios.iter().any(|x| x.eq_ignore_ascii_case(s));
        if wanted("s1") {
            let outcome = runner.s1(kind, &mut results).await;
            completed(&mut results, kind, "S1", outcome);
        }
        if wanted("s2") || (wanted("s3") && kind == Kind::Switchboard) {
            let outcome = runner.s2_s3(kind, &mut results).await;
            completed(&mut results, kind, "S2/S3", outcome);
        }
        if wanted("s6") && kind == Kind::Switchboard {
            let outcome = runner.s6(kind, &mut results).await;
            completed(&mut results, kind, "S6", outcome);
        }
        if wanted("s7") && kind == Kind::Switchboard {
            let outcome = runner.s7(kind, &mut results).await;
            completed(&mut results, kind, "S7", outcome);
        }
        if wanted("s4") {
            results.skipped.push(Skipped {
                target: kind,
                scenario: "s4".into(),
                reason: "group conversations are not implemented yet (groups issue)".into(),
            });
        }
    }
    let _ = std::fs::remove_dir_all(runner.work.join("switchboard"));
    report::write(&out, &results)?;
    eprintln!(
        "verdict: {}{}",
        if results.verdict.pass { "PASS" } else { "FAIL" },
        results.verdict.failures.iter().map(|f| format!("\n  FAIL: {f}")).collect::<String>()
    );
    eprintln!("results: {}", out.display());
    Ok(results.verdict.pass)
}

/// A scenario that could not complete fails the run (and the next scenario still runs).
fn completed(results: &mut Results, kind: Kind, name: &str, outcome: Result<(), Failure>) {
    if let Err(e) = outcome {
        eprintln!("  {name} could not complete: {e}");
        results.fail(format!("{} {name} could not complete: {e}", report_name(kind)));
    }
}

/// What every scenario needs: the options, the sizes, where results and server data go.
struct Runner {
    args: RunArgs,
    sizes: Sizes,
    out: PathBuf,
    work: PathBuf,
    switchboard_bin: PathBuf,
}

impl Runner {
    async fn start(&self, kind: Kind) -> Result<Sut, Failure> {
        match kind {
            Kind::Switchboard => {
                Sut::start_switchboard(
                    &self.switchboard_bin,
                    &self.work.join("switchboard"),
                    self.args.server_cpu,
                    &self.args.server_env,
                )
                .await
            }
            Kind::Centrifugo => {
                let bin = self
                    .args
                    .centrifugo_bin
                    .as_ref()
                    .ok_or("--centrifugo-bin (or CENTRIFUGO_BIN) is needed")?;
                Sut::start_centrifugo(bin, &self.work.join("centrifugo"), self.args.server_cpu).await
            }
        }
    }

    async fn s1(&self, kind: Kind, results: &mut Results) -> Result<(), Failure> {
        let sut = self.start(kind).await?;
        results.note_version(&sut);
        eprintln!("[{kind:?}] S1: {} idle connections", self.sizes.idle);
        let r = s1_idle(&sut, self.sizes.idle).await?;
        eprintln!(
            "  {:.1} KiB RSS + {:.1} KiB kernel per connection; {} of {} connected",
            r.rss_per_conn_kib, r.kernel_per_conn_kib, r.connections, r.requested
        );
        if !r.valid {
            results.fail(format!("{} S1: {}", report_name(kind), r.invalid_reasons.join("; ")));
        }
        results.idle.push(r);
        sut.stop(&self.out, &format!("{kind:?}-s1").to_lowercase()).await;
        Ok(())
    }

    async fn s2_s3(&self, kind: Kind, results: &mut Results) -> Result<(), Failure> {
        let wanted = |s: &str| self.args.scenarios.iter().any(|x| x.eq_ignore_ascii_case(s));
        let sizes = &self.sizes;
        let sut = self.start(kind).await?;
        results.note_version(&sut);
        let mut pairs = Pairs::setup(&sut, sizes.pairs, self.args.payload).await?;
        if wanted("s2") {
            for rate in &sizes.rates {
                eprintln!("[{kind:?}] S2: {} pairs at {rate} msgs/s for {:?}", sizes.pairs, sizes.step);
                let r = pairs.step(&sut, "s2", *rate, sizes.step).await?;
                eprintln!("  {}", r.one_line());
                if !r.valid {
                    results.fail(format!(
                        "{} S2 at {rate}/s: {}",
                        report_name(kind),
                        r.invalid_reasons.join("; ")
                    ));
                }
                results.latency.push(r);
            }
        }
        if wanted("s3") && kind == Kind::Switchboard {
            for rate in &sizes.s3_rates {
                eprintln!("[{kind:?}] S3: {rate} durable msgs/s for {:?}", sizes.step);
                let r = pairs.step(&sut, "s3", *rate, sizes.step).await?;
                eprintln!("  {}", r.one_line());
                let pass = r.passes(S3_P99_BOUND_US);
                if !pass {
                    // The step that ends the ramp is the measurement's upper end, not a
                    // failure, unless it broke ordering (never excused by load).
                    let why = if r.valid {
                        format!("p99 {} µs > {S3_P99_BOUND_US} µs", r.latency_us.p99)
                    } else {
                        r.invalid_reasons.join("; ")
                    };
                    let what = format!("{} S3 ramp ended at {rate}/s: {why}", report_name(kind));
                    if r.broke_order() { results.fail(what) } else { results.note(what) }
                }
                results.latency.push(r);
                if !pass {
                    break;
                }
            }
        }
        pairs.close();
        sut.stop(&self.out, &format!("{kind:?}-s2-s3").to_lowercase()).await;
        Ok(())
    }

    async fn s6(&self, kind: Kind, results: &mut Results) -> Result<(), Failure> {
        let sizes = &self.sizes;
        let sut = self.start(kind).await?;
        results.note_version(&sut);
        eprintln!("[{kind:?}] S6: history pages of 50 at {} req/s", sizes.history_rate);
        let r = s6_history(&sut, sizes.history_messages, sizes.history_rate, sizes.step, self.args.payload)
            .await?;
        eprintln!(
            "  {}: p50 {} µs, p99 {} µs, failures {} ({})",
            if r.valid { "valid" } else { "INVALID" },
            r.latency_us.p50,
            r.latency_us.p99,
            r.errors,
            counts_line(&r.failures)
        );
        if !r.valid {
            results.fail(format!("{} S6: {}", report_name(kind), r.invalid_reasons.join("; ")));
        }
        results.history.push(r);
        sut.stop(&self.out, &format!("{kind:?}-s6").to_lowercase()).await;
        Ok(())
    }

    async fn s7(&self, kind: Kind, results: &mut Results) -> Result<(), Failure> {
        let (args, sizes) = (&self.args, &self.sizes);
        let env = target::switchboard_env(&self.work.join("switchboard"), &args.server_env);
        let write_stall_ms = target::switchboard_config_value(&self.switchboard_bin, &env, "write_stall_ms");
        let outbound_bytes = target::switchboard_config_value(&self.switchboard_bin, &env, "outbound_bytes");
        let phase_secs = args.s7_secs.unwrap_or(if args.quick {
            3
        } else {
            write_stall_ms.unwrap_or(10_000).div_ceil(1000) + 10
        });
        let plan = SlowConsumer {
            idle: sizes.s7_idle,
            hostile: sizes.s7_hostile,
            pingers: sizes.s7_pingers,
            messages: sizes.s7_messages,
            body_bytes: args.s7_body_bytes,
            page: sizes.s7_page,
            hostile_rate: sizes.s7_hostile_rate,
            phase: Duration::from_secs(phase_secs),
            ping_interval: Duration::from_millis(args.s7_ping_ms.max(1)),
            recv_buffer: args.s7_recv_buffer,
            rss_cap_kib: args.s7_rss_cap_mib * 1024,
            settle: Duration::from_millis(if args.quick { 500 } else { 2_000 }),
            write_stall_ms,
            outbound_bytes,
        };
        let sut = self.start(kind).await?;
        results.note_version(&sut);
        eprintln!(
            "[{kind:?}] S7: {} idle, {} pinging, {} hostile clients (history limit {} at {}/s each, never read) for {phase_secs} s",
            plan.idle, plan.pingers, plan.hostile, plan.page, plan.hostile_rate
        );
        let r = slow::run(&sut, &plan).await?;
        eprintln!("  {}", slow::one_line(&r));
        if !r.valid {
            results.fail(format!("{} S7: {}", report_name(kind), r.invalid_reasons.join("; ")));
        }
        for c in r.expectations.iter().filter(|c| !c.met) {
            let what = format!(
                "{} S7 expectation not met: {} (expected {}; observed {})",
                report_name(kind),
                c.name,
                c.expected,
                c.observed
            );
            if args.s7_expect { results.fail(what) } else { results.note(what) }
        }
        results.slow_consumer.push(r);
        sut.stop(&self.out, &format!("{kind:?}-s7").to_lowercase()).await;
        Ok(())
    }
}

fn report_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Switchboard => "switchboard",
        Kind::Centrifugo => "centrifugo",
    }
}

/// Pins this process (and the threads it starts later) to one core, away from the server.
fn pin_self(cpu: usize) {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid])
        .stdout(std::process::Stdio::null())
        .status();
}

pub fn source_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, (10 + i % 200) as u8])
}

/// Registrations made so far by this process: each group of `REGISTRATIONS_PER_SOURCE` comes
/// from its own loopback address (127.0.0.100–249), so a per-address registration limit on
/// the server (`security.register_ip_per_hour`, 20 by default) does not cap how many users a
/// benchmark can have, even where the server does not take the override `switchboard_env`
/// sets.
static REGISTRATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const REGISTRATIONS_PER_SOURCE: usize = 10;

/// Registers a bench user; switchboard only: (user id, token).
pub async fn register(base: &str, name: &str) -> Result<(String, String), Failure> {
    let n = REGISTRATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let source = IpAddr::from([127, 0, 0, (100 + (n / REGISTRATIONS_PER_SOURCE) % 150) as u8]);
    let http = target::http_client_from(Some(source))?;
    let resp = http
        .post(format!("{base}/v1/register"))
        .json(&json!({"username": name, "password": "bench password 1"}))
        .send()
        .await
        .map_err(|e| format!("register {name}: {e}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| format!("register {name}: HTTP {status}: {e}"))?;
    let token = v["token"].as_str().ok_or_else(|| format!("register {name}: HTTP {status} {v}"))?.to_owned();
    Ok((v["user_id"].as_str().unwrap_or_default().to_owned(), token))
}

/// Registers two users and opens their direct conversation: (a's token, b's token, id).
pub async fn register_pair(
    http: &reqwest::Client,
    base: &str,
    a: &str,
    b: &str,
) -> Result<(String, String, String), Failure> {
    let (_, a_token) = register(base, a).await?;
    let (b_id, b_token) = register(base, b).await?;
    let resp = http
        .post(format!("{base}/v1/conversations/direct"))
        .bearer_auth(&a_token)
        .json(&json!({"user_id": b_id}))
        .send()
        .await
        .map_err(|e| format!("open conversation {a}–{b}: {e}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| format!("open conversation {a}–{b}: HTTP {status}: {e}"))?;
    let conversation = v["conversation_id"]
        .as_str()
        .ok_or_else(|| format!("open conversation {a}–{b}: HTTP {status} {v}"))?;
    Ok((a_token, b_token, conversation.to_owned()))
}

/// Sends `count` messages of `payload` bytes into `conversation` as the owner of `token`,
/// 200 pipelined at a time, and waits for every `sent`; any error frame fails the seeding.
pub async fn seed_conversation(
    sut: &Sut,
    token: &str,
    conversation: &str,
    count: u64,
    payload: usize,
) -> Result<(), Failure> {
    let mut socket = ws::connect(&sut.ws_url, source_ip(0), Some(token)).await?;
    target::handshake(Kind::Switchboard, &mut socket).await?;
    let mut k = 0;
    while k < count {
        let burst = (count - k).min(200);
        for i in k..k + burst {
            let frame = target::send_frame(Kind::Switchboard, conversation, i, &body(0, 0, i, 0, payload));
            socket.send(Message::text(frame)).await?;
        }
        let mut acked = 0;
        while acked < burst {
            let msg = tokio::time::timeout(Duration::from_secs(30), socket.next())
                .await
                .map_err(|_| format!("seeding: no `sent` for 30 s ({acked} of {burst} acked)"))?
                .ok_or("seeding: connection closed")??;
            if let Message::Text(t) = msg {
                for incoming in target::parse(Kind::Switchboard, &t) {
                    match incoming {
                        Incoming::Ack(_) => acked += 1,
                        Incoming::Error { code, .. } => return Err(format!("seeding: {code}").into()),
                        _ => {}
                    }
                }
            }
        }
        k += burst;
    }
    let _ = socket.close(None).await;
    Ok(())
}

// ---------------------------------------------------------------- S1

/// Idle connections held by child processes (`idle-worker`), so that many connections pass
/// the per-process file limit and the per-address port range.
pub struct IdleFleet {
    workers: Vec<tokio::process::Child>,
    pub connected: usize,
    pub connect_secs: f64,
}

impl IdleFleet {
    const PER_WORKER: usize = 5_000;

    /// Starts workers holding `n` connections (with `tokens`, comma-separated, round-robin)
    /// for at most `hold_secs`, and waits until each reported how many it connected.
    pub async fn start(sut: &Sut, tokens: &str, n: usize, hold_secs: u64) -> Result<IdleFleet, Failure> {
        let started = Instant::now();
        let mut workers = Vec::new();
        let mut lines_of = Vec::new();
        let mut remaining = n;
        let mut w = 0;
        while remaining > 0 {
            let count = remaining.min(Self::PER_WORKER);
            remaining -= count;
            let mut child = tokio::process::Command::new(std::env::current_exe()?)
                .arg("idle-worker")
                .args(["--url", &sut.ws_url, "--tokens", tokens, "--count", &count.to_string()])
                .args(["--source-ip", &source_ip(w).to_string(), "--hold-secs", &hold_secs.to_string()])
                .args(["--target", report_name(sut.kind)])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            lines_of.push(BufReader::new(child.stdout.take().ok_or("no stdout")?).lines());
            workers.push(child);
            w += 1;
        }
        let mut connected = 0usize;
        for lines in lines_of.iter_mut() {
            let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
                .await
                .map_err(|_| "idle worker: no report within 180 s")??
                .unwrap_or_default();
            let count: usize = line
                .strip_prefix("connected ")
                .and_then(|v| v.parse().ok())
                .ok_or(format!("idle worker: {line}"))?;
            connected += count;
        }
        Ok(IdleFleet { workers, connected, connect_secs: started.elapsed().as_secs_f64() })
    }

    pub async fn stop(self) {
        for mut child in self.workers {
            let _ = child.kill().await;
        }
    }
}

async fn s1_idle(sut: &Sut, n: usize) -> Result<IdleResult, Failure> {
    let tokens = match sut.kind {
        Kind::Switchboard => {
            let mut tokens = Vec::new();
            for i in 0..10 {
                tokens.push(register(&sut.http, &format!("idle{i}")).await?.1);
            }
            tokens.join(",")
        }
        Kind::Centrifugo => "-".to_owned(),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = sut.rss_kib();
    let kernel_before = target::kernel_kib();
    let fleet = IdleFleet::start(sut, &tokens, n, 120).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = sut.rss_kib();
    let kernel_after = target::kernel_kib();
    let connected = fleet.connected;
    let connect_secs = fleet.connect_secs;
    fleet.stop().await;
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / connected.max(1) as f64;
    let mut r = IdleResult {
        target: sut.kind,
        connections: connected,
        requested: n,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_conn_kib: per(rss_after, rss_before),
        kernel_per_conn_kib: per(kernel_after, kernel_before),
        connect_secs,
        valid: false,
        invalid_reasons: Vec::new(),
    };
    r.judge();
    Ok(r)
}

/// Child process of S1 and S7: connects `count` sockets, prints `connected N`, holds them
/// (reading, so pings are answered) for `hold_secs`, then exits.
pub async fn idle_worker(
    url: String,
    kind: Kind,
    tokens: Vec<String>,
    count: usize,
    source: String,
    hold_secs: u64,
) -> Result<(), Failure> {
    let source: IpAddr = source.parse()?;
    let url = Arc::new(url);
    let tokens = Arc::new(tokens);
    let connected: Vec<Option<ws::Socket>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (url, tokens) = (url.clone(), tokens.clone());
            async move {
                let token = (kind == Kind::Switchboard).then(|| tokens[i % tokens.len()].as_str());
                let mut socket = ws::connect(&url, source, token).await.ok()?;
                target::handshake(kind, &mut socket).await.ok()?;
                Some(socket)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut n = 0;
    for socket in connected.into_iter().flatten() {
        n += 1;
        tokio::spawn(async move {
            let mut socket = socket;
            while let Some(Ok(msg)) = socket.next().await {
                if let Message::Text(t) = msg
                    && target::parse(kind, &t).contains(&Incoming::Ping)
                {
                    let _ = socket.send(Message::text("{}")).await;
                }
            }
        });
    }
    println!("connected {n}");
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    Ok(())
}

// ---------------------------------------------------------------- S2 / S3

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
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
    delivery_us: Histogram<u64>,
    ack_us: Histogram<u64>,
    pairs: Vec<PairCounts>,
    errors: Counts,
    stale: u64,
}

impl StepStats {
    fn new(pairs: usize, step: u64) -> StepStats {
        StepStats {
            step,
            delivery_us: new_histogram(),
            ack_us: new_histogram(),
            pairs: vec![PairCounts::default(); pairs],
            errors: BTreeMap::new(),
            stale: 0,
        }
    }

    fn settled(&self) -> bool {
        self.pairs
            .iter()
            .all(|p| p.sent == p.scheduled && p.acked == p.scheduled && p.delivered == p.scheduled)
    }

    fn sum(&self, f: impl Fn(&PairCounts) -> u64) -> u64 {
        self.pairs.iter().map(f).sum()
    }
}

type Shared = Arc<Mutex<StepStats>>;

/// What a send task is told: (step, k, scheduled time in ns since `base`).
type SendOrder = (u64, u64, u64);

struct Pairs {
    kind: Kind,
    base: Instant,
    payload: usize,
    senders: Vec<mpsc::UnboundedSender<SendOrder>>,
    next_k: Vec<u64>,
    last_step: u64,
    stats: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// `"<pair> <step> <k> <due_ns> "`, padded with `x` to `payload` bytes.
fn body(pair: usize, step: u64, k: u64, due_ns: u64, payload: usize) -> String {
    let mut b = format!("{pair} {step} {k} {due_ns} ");
    while b.len() < payload {
        b.push('x');
    }
    b
}

/// Counts how a connection ended (close frame or transport error) into the current step.
fn note_end(stats: &Shared, msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
    let what = match msg {
        Some(Ok(Message::Close(Some(frame)))) => format!("close:{}", u16::from(frame.code)),
        Some(Ok(Message::Close(None))) => "close:none".into(),
        Some(Err(e)) => format!("ws_error:{e}"),
        None => "eof".into(),
        Some(Ok(_)) => return,
    };
    bump(&mut stats.lock().unwrap().errors, what);
}

impl Pairs {
    /// Connects `n` sender/receiver pairs: for switchboard two users and their direct
    /// conversation per pair; for Centrifugo a channel per pair the receiver subscribes to.
    async fn setup(sut: &Sut, n: usize, payload: usize) -> Result<Pairs, Failure> {
        let http = http_client()?;
        let base = Instant::now();
        let stats: Shared = Arc::new(Mutex::new(StepStats::new(n, 0)));
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for pair in 0..n {
            let (channel, sender_token, receiver_token) = match sut.kind {
                Kind::Switchboard => {
                    let (a_token, b_token, c) =
                        register_pair(&http, &sut.http, &format!("bench_s{pair}"), &format!("bench_r{pair}"))
                            .await?;
                    (c, Some(a_token), Some(b_token))
                }
                Kind::Centrifugo => (format!("p{pair}"), None, None),
            };
            let ip = source_ip(pair % 8);
            let mut receiver = ws::connect(&sut.ws_url, ip, receiver_token.as_deref()).await?;
            target::handshake(sut.kind, &mut receiver).await?;
            target::subscribe(sut.kind, &mut receiver, &channel).await?;
            let mut sender = ws::connect(&sut.ws_url, ip, sender_token.as_deref()).await?;
            target::handshake(sut.kind, &mut sender).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            tasks.push(tokio::spawn(receive_loop(sut.kind, receiver, pair, base, stats.clone())));
            tasks.push(tokio::spawn(send_loop(
                sut.kind,
                sender,
                channel,
                pair,
                payload,
                base,
                rx,
                stats.clone(),
            )));
        }
        Ok(Pairs { kind: sut.kind, base, payload, senders, next_k: vec![0; n], last_step: 0, stats, tasks })
    }

    /// One open-loop step: `rate` msgs/s spread round-robin over the pairs for `duration`,
    /// then up to 5 s for the last deliveries. Its counters start at zero.
    async fn step(
        &mut self,
        sut: &Sut,
        scenario: &str,
        rate: u64,
        duration: Duration,
    ) -> Result<LatencyResult, Failure> {
        let n = self.senders.len();
        self.last_step += 1;
        let step = self.last_step;
        let total = rate * duration.as_secs().max(1);
        {
            let mut fresh = StepStats::new(n, step);
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
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stats.lock().unwrap().settled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cpu = sut.cpu_secs() - cpu_before;
        // Step 0: whatever arrives from now on belongs to no step.
        let s = std::mem::replace(&mut *self.stats.lock().unwrap(), StepStats::new(n, 0));
        let mismatched: Vec<(usize, &PairCounts)> = s
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| !(p.sent == p.scheduled && p.acked == p.scheduled && p.delivered == p.scheduled))
            .collect();
        let delivered = s.sum(|p| p.delivered);
        let mut r = LatencyResult {
            target: self.kind,
            scenario: scenario.into(),
            pairs: n,
            payload_bytes: self.payload,
            target_rate: rate,
            achieved_rate: total as f64 / send_secs.max(duration.as_secs_f64()),
            duration_secs: duration.as_secs_f64(),
            scheduled: total,
            sent: s.sum(|p| p.sent),
            acked: s.sum(|p| p.acked),
            delivered,
            lost: s.sum(|p| p.acked.saturating_sub(p.delivered)),
            duplicated: s.sum(|p| p.duplicated),
            reordered: s.sum(|p| p.reordered),
            latency_us: Percentiles::of(&s.delivery_us),
            ack_latency_us: Percentiles::of(&s.ack_us),
            server_cpu_secs: cpu,
            server_cpu_us_per_delivery: if delivered > 0 { cpu * 1e6 / delivered as f64 } else { 0.0 },
            server_rss_kib: sut.rss_kib(),
            errors: s.errors.clone(),
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
        Ok(r)
    }

    fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    kind: Kind,
    mut socket: ws::Socket,
    channel: String,
    pair: usize,
    payload: usize,
    base: Instant,
    mut rx: mpsc::UnboundedReceiver<SendOrder>,
    stats: Shared,
) {
    // k → (step, due) of every send not yet answered.
    let mut due_of: HashMap<u64, (u64, u64)> = HashMap::new();
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some((step, k, due)) = next else { return };
                let frame = target::send_frame(kind, &channel, k, &body(pair, step, k, due, payload));
                due_of.insert(k, (step, due));
                if let Err(e) = socket.send(Message::text(frame)).await {
                    bump(&mut stats.lock().unwrap().errors, format!("ws_send:{e}"));
                    return;
                }
                let mut s = stats.lock().unwrap();
                if s.step == step { s.pairs[pair].sent += 1 } else { s.stale += 1 }
            }
            msg = socket.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        note_end(&stats, msg);
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                for incoming in target::parse(kind, &text) {
                    match incoming {
                        Incoming::Ack(k) => {
                            let mut s = stats.lock().unwrap();
                            match due_of.remove(&k) {
                                Some((step, due)) if step == s.step => {
                                    s.pairs[pair].acked += 1;
                                    let _ = s.ack_us.record((now_ns(base).saturating_sub(due) / 1_000).max(1));
                                }
                                Some(_) => s.stale += 1,
                                None => bump(&mut s.errors, "ack_without_send"),
                            }
                        }
                        Incoming::Error { k, code } => {
                            let mut s = stats.lock().unwrap();
                            let step = k.and_then(|k| due_of.remove(&k)).map(|(step, _)| step);
                            if step.is_none_or(|step| step == s.step) {
                                bump(&mut s.errors, code);
                            } else {
                                s.stale += 1;
                            }
                        }
                        Incoming::Ping => { let _ = socket.send(Message::text("{}")).await; }
                        _ => {}
                    }
                }
            }
        }
    }
}

async fn receive_loop(kind: Kind, mut socket: ws::Socket, pair: usize, base: Instant, stats: Shared) {
    loop {
        let msg = socket.next().await;
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                note_end(&stats, msg);
                return;
            }
            Some(Ok(_)) => continue,
        };
        for incoming in target::parse(kind, &text) {
            match incoming {
                Incoming::Delivery(body) => {
                    let mut parts = body.split(' ').map(str::parse::<u64>);
                    let (Some(Ok(p)), Some(Ok(step)), Some(Ok(k)), Some(Ok(due))) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    else {
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
                        let _ = s.delivery_us.record(latency_us);
                    }
                }
                Incoming::Error { code, .. } => bump(&mut stats.lock().unwrap().errors, code),
                Incoming::Ping => {
                    let _ = socket.send(Message::text("{}")).await;
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------- S6

/// `http_<status>:<code>` of a failed REST reply, or the transport failure's kind.
async fn http_failure(result: Result<reqwest::Response, reqwest::Error>) -> Option<String> {
    match result {
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(_) => None,
            Err(e) if e.is_timeout() => Some("timeout".into()),
            Err(_) => Some("body_read".into()),
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            Some(format!("http_{status}:{}", v["error"]["code"].as_str().unwrap_or("?")))
        }
        Err(e) if e.is_timeout() => Some("timeout".into()),
        Err(e) if e.is_connect() => Some("connect".into()),
        Err(_) => Some("transport".into()),
    }
}

struct S6State {
    latency: Histogram<u64>,
    failures: Counts,
    closed: bool,
}

async fn s6_history(
    sut: &Sut,
    messages: u64,
    rate: u64,
    duration: Duration,
    payload: usize,
) -> Result<HistoryResult, Failure> {
    let http = http_client()?;
    let (a_token, _, conversation) = register_pair(&http, &sut.http, "hist_a", "hist_b").await?;
    seed_conversation(sut, &a_token, &conversation, messages, payload).await?;
    // Outcomes are recorded until the step closes; what has none then is pending.
    let state =
        Arc::new(Mutex::new(S6State { latency: new_histogram(), failures: BTreeMap::new(), closed: false }));
    let total = rate * duration.as_secs().max(1);
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total as usize);
    let cpu_before = sut.cpu_secs();
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let before = 51 + (i * 7919) % messages.saturating_sub(50).max(1);
        let url = format!("{}/v1/conversations/{conversation}/messages?before={before}&limit=50", sut.http);
        let (http, token, state) = (http.clone(), a_token.clone(), state.clone());
        tasks.push(tokio::spawn(async move {
            let failure = http_failure(http.get(url).bearer_auth(token).send().await).await;
            let mut state = state.lock().unwrap();
            if state.closed {
                return;
            }
            match failure {
                None => {
                    let us = (tokio::time::Instant::now().saturating_duration_since(due).as_micros() as u64)
                        .max(1);
                    let _ = state.latency.record(us);
                }
                Some(kind) => bump(&mut state.failures, kind),
            }
        }));
    }
    // On schedule, the last request is due one interval before the step ends.
    let send_secs = (tokio::time::Instant::now() - start + interval).as_secs_f64();
    // Every request has the client's timeout; a second after it, the step closes.
    let deadline = tokio::time::Instant::now() + target::HTTP_TIMEOUT + Duration::from_secs(1);
    for t in tasks.iter_mut() {
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            break;
        }
    }
    let (latency, mut failures) = {
        let mut state = state.lock().unwrap();
        state.closed = true;
        (state.latency.clone(), std::mem::take(&mut state.failures))
    };
    for t in &tasks {
        t.abort();
    }
    let cpu = sut.cpu_secs() - cpu_before;
    let pending = total - latency.len() - failures.values().sum::<u64>();
    if pending > 0 {
        failures.insert("pending".into(), pending);
    }
    let mut r = HistoryResult {
        target: Kind::Switchboard,
        messages_in_conversation: messages,
        page_size: 50,
        target_rate: rate,
        achieved_rate: total as f64 / send_secs.max(duration.as_secs_f64()),
        requests: total,
        errors: failures.values().sum(),
        failures,
        pending,
        latency_us: Percentiles::of(&latency),
        server_cpu_secs: cpu,
        valid: false,
        invalid_reasons: Vec::new(),
    };
    r.judge();
    Ok(r)
}
