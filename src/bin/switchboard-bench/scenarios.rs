//! The run (`switchboard-bench run`): its options, the order of the named scenarios and the
//! run's verdict; and the scenarios S1 idle connections (memory per connection), S2 1:1
//! delivery latency at steady rates, S3 durable throughput under a p99 bound, S6 history page
//! latency. S4 (group fan-out) lives in `groups.rs`, S7 (slow consumer) in `slow.rs`, S8 (soak,
//! run only when named) in `soak.rs`, S10 (attachments, run only when named) in `attachments.rs`. Every run is bounded in time and
//! count; every step's counters start at zero.

use crate::groups::{FanOut, GroupPlan};
pub use crate::pairs::new_histogram;
use crate::pairs::{PairOptions, Pairs, Placement, body};
use crate::report::{
    self, Counts, HistoryResult, IdleResult, Percentiles, Results, Skipped, bump, counts_line,
};
use crate::slow::{self, SlowConsumer};
use crate::target::{self, Incoming, Kind, Sut, http_client};
use crate::{Failure, ws};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Scenarios to run: s1, s2, s3, s4, s6, s7, s9 (a cluster: needs --urls), and s8 (soak)
    /// and s10 (attachments), which are not in the default list.
    #[arg(long, value_delimiter = ',', default_value = "s1,s2,s3,s4,s6,s7")]
    scenarios: Vec<String>,
    /// Measure an already running switchboard instead of starting one: the base URLs of its
    /// nodes (comma-separated, e.g. a cluster's nodes). S2/S3/S6 spread their connections over
    /// them, reconnecting and retrying (same client_msg_id) when a node goes away; S1 and S7,
    /// which need a server of their own, are skipped; S9 needs it.
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    /// The state dir of `scripts/cluster` (default ~/.cache/switchboard/cluster when it
    /// exists): which node is which process, for CPU and RSS and for S9's kill.
    #[arg(long)]
    cluster_home: Option<PathBuf>,
    /// S9: the load balancer in front of the nodes (its idle clients connect through it).
    #[arg(long)]
    lb_url: Option<String>,
    /// S9: the cluster's Redis, for `redis-cli -p PORT INFO commandstats`.
    #[arg(long, default_value_t = 6379)]
    redis_port: u16,
    /// S9: pairs; even ones have sender and receiver on the same node, odd ones on two
    /// different nodes (default 300; quick 12).
    #[arg(long)]
    s9_pairs: Option<usize>,
    /// S9: total send rates, one step each (default 1000,5000; quick 100).
    #[arg(long, value_delimiter = ',')]
    s9_rates: Option<Vec<u64>>,
    /// S9: seconds per rate step (default 20; quick 2).
    #[arg(long)]
    s9_step_secs: Option<u64>,
    /// S9: idle clients connected through the load balancer (default 10,000; quick 60).
    #[arg(long)]
    s9_idle: Option<usize>,
    /// S9: users the idle clients log in as, one direct conversation per two (default 200;
    /// quick 10).
    #[arg(long)]
    s9_users: Option<usize>,
    /// S9: the node to SIGKILL, 1-based in --urls (default the last one); 0 = kill none.
    #[arg(long)]
    s9_kill_node: Option<usize>,
    /// S9: seconds the dropped idle clients have to come back and sync.
    #[arg(long, default_value_t = 120)]
    s9_recover_secs: u64,
    /// S9: seconds of each idle Redis measurement.
    #[arg(long, default_value_t = 10)]
    s9_idle_secs: u64,
    /// Systems to measure; centrifugo runs S1, S2 and S4 (needs --centrifugo-bin).
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
    /// S4: group sizes, one step each (members, each with one receiving connection; default
    /// 10,100,1000; quick 5,20).
    #[arg(long, value_delimiter = ',')]
    s4_members: Option<Vec<usize>>,
    /// S4: offered deliveries per second of every step; the sender sends this / members
    /// msgs/s (default 50,000; quick 2,000).
    #[arg(long)]
    s4_deliveries: Option<u64>,
    /// S4: seconds per group size (default --step-secs).
    #[arg(long)]
    s4_step_secs: Option<u64>,
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
    #[command(flatten)]
    s8: crate::soak::S8Args,
    #[command(flatten)]
    s10: crate::attachments::S10Args,
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
    s4_members: Vec<usize>,
    s4_deliveries: u64,
    s4_step: Duration,
    history_messages: u64,
    history_rate: u64,
    s7_idle: usize,
    s7_hostile: usize,
    s7_pingers: usize,
    s7_messages: u64,
    s7_page: u32,
    s7_hostile_rate: u64,
    s9_pairs: usize,
    s9_rates: Vec<u64>,
    s9_step: Duration,
    s9_idle: usize,
    s9_users: usize,
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
            s4_members: self.s4_members.clone().unwrap_or(if quick {
                vec![5, 20]
            } else {
                vec![10, 100, 1_000]
            }),
            s4_deliveries: self.s4_deliveries.unwrap_or(if quick { 2_000 } else { 50_000 }),
            s4_step: Duration::from_secs(self.s4_step_secs.or(self.step_secs).unwrap_or(if quick {
                2
            } else {
                15
            })),
            history_messages: if quick { 300 } else { 5_000 },
            // Quick runs are smoke tests beside other tests on a debug build: a rate the
            // generator and server keep on a busy machine (the schedule check stays).
            history_rate: if quick { 25 } else { 1_000 },
            s7_idle: self.s7_idle.unwrap_or(if quick { 50 } else { 1_000 }),
            s7_hostile: self.s7_hostile.unwrap_or(if quick { 2 } else { 10 }),
            s7_pingers: self.s7_pingers.unwrap_or(if quick { 2 } else { 5 }),
            s7_messages: self.s7_messages.unwrap_or(if quick { 60 } else { 200 }),
            s7_page: self.s7_page.unwrap_or(if quick { 20 } else { 50 }),
            s7_hostile_rate: self.s7_hostile_rate.unwrap_or(if quick { 5 } else { 20 }),
            s9_pairs: self.s9_pairs.unwrap_or(if quick { 12 } else { 300 }),
            s9_rates: self.s9_rates.clone().unwrap_or(if quick { vec![100] } else { vec![1_000, 5_000] }),
            s9_step: Duration::from_secs(self.s9_step_secs.unwrap_or(if quick { 2 } else { 20 })),
            s9_idle: self.s9_idle.unwrap_or(if quick { 60 } else { 10_000 }),
            s9_users: self.s9_users.unwrap_or(if quick { 10 } else { 200 }).max(2),
        }
    }
}

/// The S3 latency bound: a rate passes while delivery p99 stays at or under it.
const S3_P99_BOUND_US: u64 = 50_000;

/// Runs the chosen scenarios and writes the results. `Ok(true)` when the verdict is PASS. A
/// scenario that cannot complete (its server does not start, seeding fails, …) fails the
/// verdict and the run goes on with the next one.
pub async fn run(args: RunArgs) -> Result<bool, Failure> {
    // Against an external system (a cluster sharing this machine's cores) the generator is
    // not pinned: nothing else is.
    if args.urls.is_empty() {
        pin_self(args.client_cpu);
    }
    let out = args.out.clone().unwrap_or_else(crate::default_out_dir);
    std::fs::create_dir_all(&out)?;
    let switchboard_bin = match &args.switchboard_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("switchboard"),
    };
    // Usernames of a run against an external (persistent) system are new every run.
    let tag = if args.urls.is_empty() {
        String::new()
    } else {
        format!("b{}_", crate::scenarios::unix_ms() / 1000 % 100_000_000)
    };
    let cluster_home = args.cluster_home.clone().or_else(|| {
        let home = PathBuf::from(std::env::var_os("HOME")?).join(".cache/switchboard/cluster");
        (home.is_dir() && !args.urls.is_empty()).then_some(home)
    });
    let runner = Runner {
        sizes: args.sizes(),
        work: out.join("work"),
        out: out.clone(),
        switchboard_bin,
        tag,
        cluster_home,
        args,
    };
    let mut results = Results::new(&runner.args.targets, runner.args.payload, runner.args.quick);
    if !runner.args.urls.is_empty() {
        results.method = "open loop against an already running switchboard (--urls): nothing pinned, the system and \
                          the generator share the machine's cores; latency from the scheduled send time; sends made \
                          again with the same client_msg_id after a reconnect, a retryable error or no answer in 10 s";
    }
    for kind in runner.args.targets.clone() {
        let wanted = |s: &str| runner.args.scenarios.iter().any(|x| x.eq_ignore_ascii_case(s));
        let external = !runner.args.urls.is_empty();
        for own in ["s1", "s7", "s8"] {
            if external && wanted(own) && kind == Kind::Switchboard {
                results.skipped.push(Skipped {
                    target: kind,
                    scenario: own.into(),
                    reason: "needs a server of its own (its memory is the measure); not run with --urls"
                        .into(),
                });
            }
        }
        if wanted("s9") && !(external && kind == Kind::Switchboard) {
            results.skipped.push(Skipped {
                target: kind,
                scenario: "s9".into(),
                reason: "needs a running switchboard cluster (--urls, --lb-url)".into(),
            });
        }
        if wanted("s1") && !(external && kind == Kind::Switchboard) {
            let outcome = runner.s1(kind, &mut results).await;
            completed(&mut results, kind, "S1", outcome);
        }
        if wanted("s2") || (wanted("s3") && kind == Kind::Switchboard) {
            let outcome = runner.s2_s3(kind, &mut results).await;
            completed(&mut results, kind, "S2/S3", outcome);
        }
        if wanted("s4") {
            let outcome = runner.s4(kind, &mut results).await;
            completed(&mut results, kind, "S4", outcome);
        }
        if wanted("s6") && kind == Kind::Switchboard {
            let outcome = runner.s6(kind, &mut results).await;
            completed(&mut results, kind, "S6", outcome);
        }
        if wanted("s7") && kind == Kind::Switchboard && !external {
            let outcome = runner.s7(kind, &mut results).await;
            completed(&mut results, kind, "S7", outcome);
        }
        if wanted("s8") && kind != Kind::Switchboard {
            results.skipped.push(Skipped {
                target: kind,
                scenario: "s8".into(),
                reason: "soak of a switchboard server of its own".into(),
            });
        } else if wanted("s8") && !external {
            let outcome = runner.s8(&mut results).await;
            completed(&mut results, kind, "S8", outcome);
        }
        if wanted("s9") && kind == Kind::Switchboard && external {
            let outcome = runner.s9(&mut results).await;
            completed(&mut results, kind, "S9", outcome);
        }
        if wanted("s10") && (kind != Kind::Switchboard || external) {
            results.skipped.push(Skipped {
                target: kind,
                scenario: "s10".into(),
                reason:
                    "attachments of a switchboard server of its own (its backend and memory are the measure)"
                        .into(),
            });
        } else if wanted("s10") {
            runner.s10(&mut results).await;
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
    /// Prefix of every username (empty unless against an external system).
    tag: String,
    cluster_home: Option<PathBuf>,
}

impl Runner {
    /// A username of this run.
    fn user(&self, name: &str) -> String {
        format!("{}{name}", self.tag)
    }

    /// How S2/S3 set their pairs up: on one server strictly; against external nodes spread
    /// over them (both ends of a pair on the same node), reconnecting and retrying.
    fn pair_options(&self, sut: &Sut, n: usize) -> PairOptions {
        if !sut.is_external() {
            return PairOptions::single(n);
        }
        let nodes = sut.nodes.len();
        PairOptions {
            placement: (0..n)
                .map(|i| Placement { sender: i % nodes, receiver: i % nodes, class: 0 })
                .collect(),
            classes: vec!["all".into()],
            user_prefix: self.user("p_"),
            resilient: true,
            drain: Duration::from_secs(10),
        }
    }

    async fn start(&self, kind: Kind) -> Result<Sut, Failure> {
        match kind {
            Kind::Switchboard if !self.args.urls.is_empty() => {
                Sut::external(&self.switchboard_bin, &self.args.urls, self.cluster_home.as_deref()).await
            }
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
        let mut pairs = Pairs::setup(&sut, self.args.payload, self.pair_options(&sut, sizes.pairs)).await?;
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

    /// S4 group fan-out: one step per group size (`groups.rs`); the targets for
    /// switchboard are notes, not the verdict.
    async fn s4(&self, kind: Kind, results: &mut Results) -> Result<(), Failure> {
        let sizes = &self.sizes;
        let plan = GroupPlan {
            members: sizes.s4_members.clone(),
            deliveries_per_sec: sizes.s4_deliveries,
            step: sizes.s4_step,
            payload: self.args.payload,
            user_prefix: self.user("g_"),
        };
        let sut = self.start(kind).await?;
        results.note_version(&sut);
        eprintln!(
            "[{kind:?}] S4: groups of {:?}, {} deliveries/s offered",
            plan.members, plan.deliveries_per_sec
        );
        let fan_out = FanOut::prepare(&sut, &plan).await?;
        for &n in &plan.members {
            eprintln!("[{kind:?}] S4: {n} members at {} msgs/s for {:?}", plan.rate(n), plan.step);
            let r = fan_out.step(&sut, &plan, n).await?;
            eprintln!("  {}", r.one_line());
            if !r.valid {
                results.fail(format!(
                    "{} S4 at {n} members: {}",
                    report_name(kind),
                    r.invalid_reasons.join("; ")
                ));
            }
            for c in r.expectations.iter().filter(|c| !c.met) {
                results.note(format!(
                    "{} S4 target not met: {} (expected {}; observed {})",
                    report_name(kind),
                    c.name,
                    c.expected,
                    c.observed
                ));
            }
            results.group_fanout.push(r);
        }
        sut.stop(&self.out, &format!("{kind:?}-s4").to_lowercase()).await;
        Ok(())
    }

    async fn s6(&self, kind: Kind, results: &mut Results) -> Result<(), Failure> {
        let sizes = &self.sizes;
        let sut = self.start(kind).await?;
        results.note_version(&sut);
        eprintln!("[{kind:?}] S6: history pages of 50 at {} req/s", sizes.history_rate);
        let r = s6_history(
            &sut,
            &self.tag,
            sizes.history_messages,
            sizes.history_rate,
            sizes.step,
            self.args.payload,
        )
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

    /// S8 soak: S2's pairs at a fixed rate for many intervals on one server (`soak.rs`).
    async fn s8(&self, results: &mut Results) -> Result<(), Failure> {
        let plan = crate::soak::SoakPlan::new(&self.args.s8, self.args.quick, self.sizes.pairs);
        let sut = self.start(Kind::Switchboard).await?;
        results.note_version(&sut);
        let mut pairs = Pairs::setup(&sut, self.args.payload, self.pair_options(&sut, plan.pairs)).await?;
        let data_dir = self.work.join("switchboard");
        let r = crate::soak::run(&sut, &mut pairs, &plan, self.args.payload, &data_dir).await?;
        pairs.close();
        crate::soak::record(results, r, self.args.s8.s8_expect);
        sut.stop(&self.out, "switchboard-s8").await;
        Ok(())
    }

    /// S10 attachments on each blob backend (`attachments.rs`).
    async fn s10(&self, results: &mut Results) {
        let setup = crate::attachments::Setup {
            args: &self.args.s10,
            quick: self.args.quick,
            switchboard_bin: &self.switchboard_bin,
            work: &self.work,
            out: &self.out,
            server_cpu: self.args.server_cpu,
            server_env: &self.args.server_env,
        };
        crate::attachments::run(&setup, results).await;
    }

    /// S9, a cluster: (a) send→deliver latency of pairs whose two ends are on the same node
    /// and on different nodes, at each `s9_rates` step; then, through the load balancer,
    /// (c) Redis commands per connect and per heartbeat interval and (b) the time until the
    /// idle clients of a SIGKILLed node are back and synced (`cluster.rs`).
    async fn s9(&self, results: &mut Results) -> Result<(), Failure> {
        let sizes = &self.sizes;
        let sut = self.start(Kind::Switchboard).await?;
        results.note_version(&sut);
        let nodes = sut.nodes.len();
        if nodes < 2 {
            return Err("S9 needs --urls with at least two nodes".into());
        }
        let placement = (0..sizes.s9_pairs)
            .map(|i| {
                let sender = (i / 2) % nodes;
                let class = i % 2;
                Placement { sender, receiver: if class == 0 { sender } else { (sender + 1) % nodes }, class }
            })
            .collect();
        let opts = PairOptions {
            placement,
            classes: vec!["same node".into(), "different nodes".into()],
            user_prefix: self.user("l_"),
            resilient: true,
            drain: Duration::from_secs(if self.args.quick { 10 } else { 90 }),
        };
        eprintln!("[s9] a: setting up {} pairs over {nodes} nodes", sizes.s9_pairs);
        let mut pairs = Pairs::setup(&sut, self.args.payload, opts).await?;
        // Warm-up, not measured: three messages per pair, so every conversation's owner has
        // claimed it (the first write raises the owner epoch with a few conditional writes).
        {
            let rate = sizes.s9_pairs as u64;
            eprintln!("[s9] a: warm-up, {rate} msgs/s for 3 s");
            let outcome = pairs.run_step(&sut, rate, Duration::from_secs(3)).await;
            let r = pairs.result(&outcome, "s9-warmup", None);
            eprintln!("  warm-up: {}", r.one_line());
            results.latency.push(r);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        for rate in &sizes.s9_rates {
            eprintln!("[s9] a: {rate} msgs/s for {:?}", sizes.s9_step);
            let outcome = pairs.run_step(&sut, *rate, sizes.s9_step).await;
            for class in 0..2 {
                let r = pairs.result(&outcome, "s9", Some(class));
                eprintln!("  {}: {}", r.class.as_deref().unwrap_or(""), r.one_line());
                if !r.valid {
                    let what = format!(
                        "switchboard S9 at {rate}/s, {}: {}",
                        r.class.as_deref().unwrap_or(""),
                        r.invalid_reasons.join("; ")
                    );
                    // A shared 2-core box may not keep a cluster's schedule: a note; a
                    // duplicate, a reorder or a lost acked message fails the run.
                    if r.broke_order() || r.lost > 0 { results.fail(what) } else { results.note(what) }
                }
                results.latency.push(r);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        pairs.close();
        // What the steps left queued in the cluster settles before the next part.
        tokio::time::sleep(Duration::from_secs(if self.args.quick { 1 } else { 30 })).await;
        match &self.args.lb_url {
            None => results.note("S9 b/c (failover, Redis) not run: no --lb-url".into()),
            Some(lb) => {
                let kill = match self.args.s9_kill_node.unwrap_or(nodes) {
                    0 => None,
                    k => Some(
                        sut.nodes
                            .get(k - 1)
                            .ok_or(format!("--s9-kill-node {k}: only {nodes} nodes"))?
                            .clone(),
                    ),
                };
                let plan = crate::cluster::FailoverPlan {
                    lb_http: lb.trim_end_matches('/').to_owned(),
                    redis_port: self.args.redis_port,
                    idle: sizes.s9_idle,
                    users: sizes.s9_users,
                    user_prefix: self.user("i_"),
                    idle_secs: self.args.s9_idle_secs,
                    recover: Duration::from_secs(self.args.s9_recover_secs),
                    kill,
                };
                let r = crate::cluster::failover(&sut, &plan).await?;
                eprintln!("  {}", crate::cluster::one_line(&r));
                if !r.valid {
                    results.fail(format!("switchboard S9 failover: {}", r.invalid_reasons.join("; ")));
                }
                results.cluster.push(r);
            }
        }
        sut.stop(&self.out, "switchboard-s9").await;
        Ok(())
    }
}

pub fn report_name(kind: Kind) -> &'static str {
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
    account_request(base, "register", name).await
}

/// Logs a bench user in again: a new device of it; switchboard only: (user id, token).
pub async fn login(base: &str, name: &str) -> Result<(String, String), Failure> {
    account_request(base, "login", name).await
}

/// `POST /v1/<action>` (register or login) with a bench user's credentials, from the next
/// registration source address: (user id, token).
async fn account_request(base: &str, action: &str, name: &str) -> Result<(String, String), Failure> {
    let n = REGISTRATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let source = IpAddr::from([127, 0, 0, (100 + (n / REGISTRATIONS_PER_SOURCE) % 150) as u8]);
    let http = target::http_client_from(Some(source))?;
    let resp = http
        .post(format!("{base}/v1/{action}"))
        .json(&json!({"username": name, "password": "bench password 1"}))
        .send()
        .await
        .map_err(|e| format!("{action} {name}: {e}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| format!("{action} {name}: HTTP {status}: {e}"))?;
    let token = v["token"].as_str().ok_or_else(|| format!("{action} {name}: HTTP {status} {v}"))?.to_owned();
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
                        Incoming::Ack { .. } => acked += 1,
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
    /// Connections per node (`welcome.node`), when the workers were asked to resync.
    pub nodes: BTreeMap<String, usize>,
    /// What the workers report after connecting (`down …`, `back …`: see `idle_worker`).
    pub events: mpsc::UnboundedReceiver<String>,
}

/// How an idle fleet connects.
pub struct FleetOptions<'a> {
    pub url: &'a str,
    pub kind: Kind,
    /// Comma-separated, used round-robin.
    pub tokens: &'a str,
    pub count: usize,
    pub hold_secs: u64,
    /// Each connection syncs after connecting, and after a drop reconnects (backoff), syncs
    /// again and reports it (switchboard; S9).
    pub resync: bool,
    /// First source address index (`source_ip`) of the workers.
    pub first_source: usize,
}

impl IdleFleet {
    const PER_WORKER: usize = 5_000;

    /// Starts workers holding `n` connections (with `tokens`, comma-separated, round-robin)
    /// for at most `hold_secs`, and waits until each reported how many it connected.
    pub async fn start(sut: &Sut, tokens: &str, n: usize, hold_secs: u64) -> Result<IdleFleet, Failure> {
        IdleFleet::start_with(FleetOptions {
            url: &sut.ws_url,
            kind: sut.kind,
            tokens,
            count: n,
            hold_secs,
            resync: false,
            first_source: 0,
        })
        .await
    }

    pub async fn start_with(o: FleetOptions<'_>) -> Result<IdleFleet, Failure> {
        let started = Instant::now();
        let mut workers = Vec::new();
        let mut lines_of = Vec::new();
        let mut remaining = o.count;
        let mut w = 0;
        while remaining > 0 {
            let count = remaining.min(Self::PER_WORKER);
            remaining -= count;
            let mut command = tokio::process::Command::new(std::env::current_exe()?);
            command
                .arg("idle-worker")
                .args(["--url", o.url, "--tokens", o.tokens, "--count", &count.to_string()])
                .args(["--source-ip", &source_ip(o.first_source + w).to_string()])
                .args(["--hold-secs", &o.hold_secs.to_string()])
                .args(["--target", report_name(o.kind)]);
            if o.resync {
                command.arg("--resync");
            }
            let mut child = command.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn()?;
            lines_of.push(BufReader::new(child.stdout.take().ok_or("no stdout")?).lines());
            workers.push(child);
            w += 1;
        }
        let mut connected = 0usize;
        let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
        for lines in lines_of.iter_mut() {
            let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
                .await
                .map_err(|_| "idle worker: no report within 180 s")??
                .unwrap_or_default();
            let mut words = line.strip_prefix("connected ").unwrap_or("").split_whitespace();
            let count: usize =
                words.next().and_then(|v| v.parse().ok()).ok_or(format!("idle worker: {line}"))?;
            connected += count;
            for (node, n) in words.filter_map(|w| w.split_once('=')) {
                *nodes.entry(node.to_owned()).or_default() += n.parse::<usize>().unwrap_or(0);
            }
        }
        let (tx, events) = mpsc::unbounded_channel();
        for mut lines in lines_of {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(IdleFleet { workers, connected, connect_secs: started.elapsed().as_secs_f64(), nodes, events })
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

/// Wall-clock milliseconds (comparable between the bench's processes).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One idle connection: connected, authenticated (and with `resync`, synced); its node.
async fn idle_connect(
    url: &str,
    kind: Kind,
    source: IpAddr,
    token: Option<&str>,
    resync: bool,
) -> Result<(ws::Socket, String), Failure> {
    let mut socket = ws::connect(url, source, token).await?;
    let welcome = target::handshake(kind, &mut socket).await?;
    if resync {
        target::sync_until_done(&mut socket, serde_json::Map::new(), Duration::from_secs(30)).await?;
    }
    Ok((socket, welcome["node"].as_str().unwrap_or("?").to_owned()))
}

/// Child process of S1, S7 and S9: connects `count` sockets, prints `connected N` (with
/// `resync`: `connected N node=count …`), holds them (reading, so pings are answered) for
/// `hold_secs`, then exits. With `resync` every connection syncs after connecting and, when
/// it drops, prints `down <unix ms> <node>`, reconnects (full-jitter backoff from 100 ms up
/// to 2 s), syncs again and prints `back <down unix ms> <synced unix ms> <attempts> <node>`.
pub async fn idle_worker(
    url: String,
    kind: Kind,
    tokens: Vec<String>,
    count: usize,
    source: String,
    hold_secs: u64,
    resync: bool,
) -> Result<(), Failure> {
    let source: IpAddr = source.parse()?;
    let url = Arc::new(url);
    let tokens = Arc::new(tokens);
    let connected: Vec<Option<(usize, ws::Socket, String)>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (url, tokens) = (url.clone(), tokens.clone());
            async move {
                let token = (kind == Kind::Switchboard).then(|| tokens[i % tokens.len()].as_str());
                let (socket, node) = idle_connect(&url, kind, source, token, resync).await.ok()?;
                Some((i, socket, node))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut n = 0;
    let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
    for (i, socket, node) in connected.into_iter().flatten() {
        n += 1;
        *nodes.entry(node.clone()).or_default() += 1;
        let (url, tokens) = (url.clone(), tokens.clone());
        tokio::spawn(async move {
            let mut socket = socket;
            let mut node = node;
            // A small per-connection generator for the backoff jitter.
            let mut rng = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ unix_ms();
            loop {
                while let Some(Ok(msg)) = socket.next().await {
                    if let Message::Text(t) = msg
                        && target::parse(kind, &t).contains(&Incoming::Ping)
                    {
                        let _ = socket.send(Message::text("{}")).await;
                    }
                }
                if !resync {
                    return;
                }
                let down = unix_ms();
                println!("down {down} {node}");
                let mut attempts = 0u32;
                loop {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let cap = 100u64 << attempts.min(5);
                    tokio::time::sleep(Duration::from_millis(rng % cap.clamp(1, 2_000))).await;
                    attempts += 1;
                    let token = (kind == Kind::Switchboard).then(|| tokens[i % tokens.len()].as_str());
                    if let Ok((fresh, at)) = idle_connect(&url, kind, source, token, true).await {
                        socket = fresh;
                        node = at;
                        break;
                    }
                }
                println!("back {down} {} {attempts} {node}", unix_ms());
            }
        });
    }
    let per_node: Vec<String> = nodes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if resync {
        println!("connected {n} {}", per_node.join(" "));
    } else {
        println!("connected {n}");
    }
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    Ok(())
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
    tag: &str,
    messages: u64,
    rate: u64,
    duration: Duration,
    payload: usize,
) -> Result<HistoryResult, Failure> {
    let http = http_client()?;
    let (a_token, _, conversation) =
        register_pair(&http, &sut.http, &format!("{tag}hist_a"), &format!("{tag}hist_b")).await?;
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
