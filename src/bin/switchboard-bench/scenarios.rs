//! The named scenarios: S1 idle connections (memory per connection), S2 1:1 delivery latency
//! at steady rates, S3 durable throughput under a p99 bound, S4 group fan-out (skipped until
//! groups exist), S6 history page latency. Every run is bounded in time and count.

use crate::report::{self, HistoryResult, IdleResult, LatencyResult, Percentiles, Results, Skipped};
use crate::target::{self, Incoming, Kind, Sut};
use crate::{Failure, ws};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Scenarios to run: s1, s2, s3, s4, s6.
    #[arg(long, value_delimiter = ',', default_value = "s1,s2,s3,s4,s6")]
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
}

struct Sizes {
    idle: usize,
    pairs: usize,
    rates: Vec<u64>,
    s3_rates: Vec<u64>,
    step: Duration,
    history_messages: u64,
    history_rate: u64,
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
        }
    }
}

/// The S3 latency bound: a rate passes while delivery p99 stays at or under it.
const S3_P99_BOUND_US: u64 = 50_000;

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    pin_self(args.client_cpu);
    let out = args.out.clone().unwrap_or_else(crate::default_out_dir);
    std::fs::create_dir_all(&out)?;
    let work = out.join("work");
    let sizes = args.sizes();
    let switchboard_bin = match &args.switchboard_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("switchboard"),
    };
    let mut results = Results::new(&args.targets, args.payload, args.quick);
    for kind in args.targets.clone() {
        let wanted = |s: &str| args.scenarios.iter().any(|x| x.eq_ignore_ascii_case(s));
        let start = |kind: Kind| {
            let (bin, work, cpu) = (switchboard_bin.clone(), work.clone(), args.server_cpu);
            let centrifugo = args.centrifugo_bin.clone();
            async move {
                match kind {
                    Kind::Switchboard => Sut::start_switchboard(&bin, &work.join("switchboard"), cpu).await,
                    Kind::Centrifugo => {
                        let bin = centrifugo.ok_or("--centrifugo-bin (or CENTRIFUGO_BIN) is needed")?;
                        Sut::start_centrifugo(&bin, &work.join("centrifugo"), cpu).await
                    }
                }
            }
        };
        if wanted("s1") {
            let sut = start(kind).await?;
            results.note_version(&sut);
            eprintln!("[{kind:?}] S1: {} idle connections", sizes.idle);
            let r = s1_idle(&sut, sizes.idle).await?;
            eprintln!(
                "  {:.1} KiB RSS + {:.1} KiB kernel per connection",
                r.rss_per_conn_kib, r.kernel_per_conn_kib
            );
            results.idle.push(r);
            sut.stop(&out, &format!("{kind:?}-s1").to_lowercase()).await;
        }
        if wanted("s2") || (wanted("s3") && kind == Kind::Switchboard) {
            let sut = start(kind).await?;
            results.note_version(&sut);
            let mut pairs = Pairs::setup(&sut, sizes.pairs, args.payload).await?;
            if wanted("s2") {
                for rate in &sizes.rates {
                    eprintln!("[{kind:?}] S2: {} pairs at {rate} msgs/s for {:?}", sizes.pairs, sizes.step);
                    let r = pairs.step(&sut, "s2", *rate, sizes.step).await?;
                    eprintln!("  {}", r.one_line());
                    results.latency.push(r);
                }
            }
            if wanted("s3") && kind == Kind::Switchboard {
                for rate in &sizes.s3_rates {
                    eprintln!("[{kind:?}] S3: {rate} durable msgs/s for {:?}", sizes.step);
                    let r = pairs.step(&sut, "s3", *rate, sizes.step).await?;
                    eprintln!("  {}", r.one_line());
                    let pass = r.passes(S3_P99_BOUND_US);
                    results.latency.push(r);
                    if !pass {
                        break;
                    }
                }
            }
            pairs.close();
            sut.stop(&out, &format!("{kind:?}-s2-s3").to_lowercase()).await;
        }
        if wanted("s4") {
            results.skipped.push(Skipped {
                target: kind,
                scenario: "s4".into(),
                reason: "group conversations are not implemented yet (groups issue)".into(),
            });
        }
        if wanted("s6") && kind == Kind::Switchboard {
            let sut = start(kind).await?;
            eprintln!("[{kind:?}] S6: history pages of 50 at {} req/s", sizes.history_rate);
            let r = s6_history(&sut, sizes.history_messages, sizes.history_rate, sizes.step, args.payload)
                .await?;
            eprintln!("  p50 {} µs, p99 {} µs, errors {}", r.latency_us.p50, r.latency_us.p99, r.errors);
            results.history.push(r);
            sut.stop(&out, &format!("{kind:?}-s6").to_lowercase()).await;
        }
    }
    let _ = std::fs::remove_dir_all(work.join("switchboard"));
    report::write(&out, &results)?;
    eprintln!("results: {}", out.display());
    Ok(())
}

/// Pins this process (and the threads it starts later) to one core, away from the server.
fn pin_self(cpu: usize) {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid])
        .stdout(std::process::Stdio::null())
        .status();
}

fn source_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, (10 + i % 200) as u8])
}

/// Registers a bench user; switchboard only.
async fn register(http: &reqwest::Client, base: &str, name: &str) -> Result<(String, String), Failure> {
    let resp = http
        .post(format!("{base}/v1/register"))
        .json(&json!({"username": name, "password": "bench password 1"}))
        .send()
        .await?;
    let v: Value = resp.json().await?;
    let token = v["token"].as_str().ok_or_else(|| format!("register {name}: {v}"))?.to_owned();
    Ok((v["user_id"].as_str().unwrap_or_default().to_owned(), token))
}

/// Registers two users and opens their direct conversation: (a's token, b's token, id).
async fn register_pair(
    http: &reqwest::Client,
    base: &str,
    a: &str,
    b: &str,
) -> Result<(String, String, String), Failure> {
    let (_, a_token) = register(http, base, a).await?;
    let (b_id, b_token) = register(http, base, b).await?;
    let v: Value = http
        .post(format!("{base}/v1/conversations/direct"))
        .bearer_auth(&a_token)
        .json(&json!({"user_id": b_id}))
        .send()
        .await?
        .json()
        .await?;
    let conversation = v["conversation_id"].as_str().ok_or("no conversation")?.to_owned();
    Ok((a_token, b_token, conversation))
}

// ---------------------------------------------------------------- S1

async fn s1_idle(sut: &Sut, n: usize) -> Result<IdleResult, Failure> {
    const PER_WORKER: usize = 5_000;
    let tokens = match sut.kind {
        Kind::Switchboard => {
            let http = reqwest::Client::new();
            let mut tokens = Vec::new();
            for i in 0..10 {
                tokens.push(register(&http, &sut.http, &format!("idle{i}")).await?.1);
            }
            tokens.join(",")
        }
        Kind::Centrifugo => "-".to_owned(),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = sut.rss_kib();
    let kernel_before = target::kernel_kib();
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut remaining = n;
    let mut w = 0;
    while remaining > 0 {
        let count = remaining.min(PER_WORKER);
        remaining -= count;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("idle-worker")
            .args(["--url", &sut.ws_url, "--tokens", &tokens, "--count", &count.to_string()])
            .args(["--source-ip", &source_ip(w).to_string(), "--hold-secs", "120"])
            .args([
                "--target",
                match sut.kind {
                    Kind::Switchboard => "switchboard",
                    Kind::Centrifugo => "centrifugo",
                },
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        workers.push((child, lines));
        w += 1;
    }
    let mut connected = 0usize;
    for (_, lines) in workers.iter_mut() {
        let line =
            tokio::time::timeout(Duration::from_secs(180), lines.next_line()).await??.unwrap_or_default();
        let count: usize =
            line.strip_prefix("connected ").and_then(|v| v.parse().ok()).ok_or(format!("worker: {line}"))?;
        connected += count;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = sut.rss_kib();
    let kernel_after = target::kernel_kib();
    for (mut child, _) in workers {
        let _ = child.kill().await;
    }
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / connected.max(1) as f64;
    Ok(IdleResult {
        target: sut.kind,
        connections: connected,
        requested: n,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_conn_kib: per(rss_after, rss_before),
        kernel_per_conn_kib: per(kernel_after, kernel_before),
        connect_secs,
    })
}

/// Child process of S1: connects `count` sockets, prints `connected N`, holds them (reading,
/// so pings are answered) for `hold_secs`, then exits.
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

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Counters of one rate step, shared by every connection task.
struct StepStats {
    delivery_us: Histogram<u64>,
    ack_us: Histogram<u64>,
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicated: u64,
    reordered: u64,
    /// Per pair: what the receiver has seen, and the highest k.
    seen: Vec<(HashSet<u64>, u64)>,
}

impl StepStats {
    fn new(pairs: usize) -> StepStats {
        StepStats {
            delivery_us: new_histogram(),
            ack_us: new_histogram(),
            sent: 0,
            acked: 0,
            delivered: 0,
            duplicated: 0,
            reordered: 0,
            seen: vec![(HashSet::new(), 0); pairs],
        }
    }
}

type Shared = Arc<Mutex<StepStats>>;

struct Pairs {
    kind: Kind,
    base: Instant,
    payload: usize,
    senders: Vec<mpsc::UnboundedSender<(u64, u64)>>,
    next_k: Vec<u64>,
    stats: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn body(pair: usize, k: u64, due_ns: u64, payload: usize) -> String {
    let mut b = format!("{pair} {k} {due_ns} ");
    while b.len() < payload {
        b.push('x');
    }
    b
}

impl Pairs {
    /// Connects `n` sender/receiver pairs: for switchboard two users and their direct
    /// conversation per pair; for Centrifugo a channel per pair the receiver subscribes to.
    async fn setup(sut: &Sut, n: usize, payload: usize) -> Result<Pairs, Failure> {
        let http = reqwest::Client::new();
        let base = Instant::now();
        let stats: Shared = Arc::new(Mutex::new(StepStats::new(n)));
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
        Ok(Pairs { kind: sut.kind, base, payload, senders, next_k: vec![0; n], stats, tasks })
    }

    /// One open-loop step: `rate` msgs/s spread round-robin over the pairs for `duration`,
    /// then up to 5 s for the last deliveries.
    async fn step(
        &mut self,
        sut: &Sut,
        scenario: &str,
        rate: u64,
        duration: Duration,
    ) -> Result<LatencyResult, Failure> {
        let n = self.senders.len();
        *self.stats.lock().unwrap() = StepStats::new(n);
        let cpu_before = sut.cpu_secs();
        let total = rate * duration.as_secs().max(1);
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
            let _ = self.senders[pair].send((k, due));
        }
        // On schedule, the last send is due one interval before the step ends.
        let send_secs = (now_ns(self.base).saturating_sub(start_ns) + interval_ns) as f64 / 1e9;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let done = {
                let s = self.stats.lock().unwrap();
                s.sent == total && s.acked == total && s.delivered >= total
            };
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cpu = sut.cpu_secs() - cpu_before;
        let s = std::mem::replace(&mut *self.stats.lock().unwrap(), StepStats::new(n));
        let lost = s.acked.saturating_sub(s.delivered);
        Ok(LatencyResult {
            target: self.kind,
            scenario: scenario.into(),
            pairs: n,
            payload_bytes: self.payload,
            target_rate: rate,
            achieved_rate: total as f64 / send_secs.max(duration.as_secs_f64()),
            duration_secs: duration.as_secs_f64(),
            scheduled: total,
            sent: s.sent,
            acked: s.acked,
            delivered: s.delivered,
            lost,
            duplicated: s.duplicated,
            reordered: s.reordered,
            latency_us: Percentiles::of(&s.delivery_us),
            ack_latency_us: Percentiles::of(&s.ack_us),
            server_cpu_secs: cpu,
            server_cpu_us_per_delivery: if s.delivered > 0 { cpu * 1e6 / s.delivered as f64 } else { 0.0 },
            server_rss_kib: sut.rss_kib(),
        })
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
    mut rx: mpsc::UnboundedReceiver<(u64, u64)>,
    stats: Shared,
) {
    let mut due_of: HashMap<u64, u64> = HashMap::new();
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some((k, due)) = next else { return };
                let frame = target::send_frame(kind, &channel, k, &body(pair, k, due, payload));
                due_of.insert(k, due);
                if socket.send(Message::text(frame)).await.is_err() { return; }
                stats.lock().unwrap().sent += 1;
            }
            msg = socket.next() => {
                let Some(Ok(msg)) = msg else { return };
                let Message::Text(text) = msg else { continue };
                for incoming in target::parse(kind, &text) {
                    match incoming {
                        Incoming::Ack(k) => {
                            if let Some(due) = due_of.remove(&k) {
                                let mut s = stats.lock().unwrap();
                                s.acked += 1;
                                let _ = s.ack_us.record((now_ns(base).saturating_sub(due) / 1_000).max(1));
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
    while let Some(Ok(msg)) = socket.next().await {
        let Message::Text(text) = msg else { continue };
        for incoming in target::parse(kind, &text) {
            match incoming {
                Incoming::Delivery(body) => {
                    let mut parts = body.split(' ');
                    let (Some(p), Some(k), Some(due)) = (parts.next(), parts.next(), parts.next()) else {
                        continue;
                    };
                    let (Ok(p), Ok(k), Ok(due)) = (p.parse::<usize>(), k.parse::<u64>(), due.parse::<u64>())
                    else {
                        continue;
                    };
                    if p != pair {
                        continue;
                    }
                    let latency_us = (now_ns(base).saturating_sub(due) / 1_000).max(1);
                    let mut s = stats.lock().unwrap();
                    let (seen, max) = &mut s.seen[pair];
                    let fresh = seen.insert(k);
                    let behind = k < *max;
                    *max = (*max).max(k);
                    if !fresh {
                        s.duplicated += 1;
                    } else {
                        if behind {
                            s.reordered += 1;
                        }
                        s.delivered += 1;
                        let _ = s.delivery_us.record(latency_us);
                    }
                }
                Incoming::Ping => {
                    let _ = socket.send(Message::text("{}")).await;
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------- S6

async fn s6_history(
    sut: &Sut,
    messages: u64,
    rate: u64,
    duration: Duration,
    payload: usize,
) -> Result<HistoryResult, Failure> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let (a_token, _, conversation) = register_pair(&http, &sut.http, "hist_a", "hist_b").await?;
    // Fill the conversation, 200 pipelined sends at a time.
    let mut socket = ws::connect(&sut.ws_url, source_ip(0), Some(&a_token)).await?;
    target::handshake(Kind::Switchboard, &mut socket).await?;
    let mut k = 0;
    while k < messages {
        let burst = (messages - k).min(200);
        for i in k..k + burst {
            socket
                .send(Message::text(target::send_frame(
                    Kind::Switchboard,
                    &conversation,
                    i,
                    &body(0, i, 0, payload),
                )))
                .await?;
        }
        let mut acked = 0;
        while acked < burst {
            let msg =
                tokio::time::timeout(Duration::from_secs(30), socket.next()).await?.ok_or("closed")??;
            if let Message::Text(t) = msg {
                acked += target::parse(Kind::Switchboard, &t)
                    .iter()
                    .filter(|i| matches!(i, Incoming::Ack(_)))
                    .count() as u64;
            }
        }
        k += burst;
    }
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
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
        let (http, token, histogram, errors) =
            (http.clone(), a_token.clone(), histogram.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let ok = match http.get(url).bearer_auth(token).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            if ok {
                let us =
                    (tokio::time::Instant::now().saturating_duration_since(due).as_micros() as u64).max(1);
                let _ = histogram.lock().unwrap().record(us);
            } else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let h = histogram.lock().unwrap();
    Ok(HistoryResult {
        target: Kind::Switchboard,
        messages_in_conversation: messages,
        page_size: 50,
        target_rate: rate,
        requests: total,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        latency_us: Percentiles::of(&h),
        server_cpu_secs: sut.cpu_secs() - cpu_before,
    })
}
