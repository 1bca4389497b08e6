//! S9 (b, c) against a running cluster behind a load balancer: N idle clients connect through
//! it (each syncs), Redis's `INFO commandstats` is read before and after the connects and over
//! idle periods (with and without clients), then one node is SIGKILLed and the clients it held
//! reconnect through the balancer, sync again and report when; the result is the time until
//! every one of them is back and synced.
//!
//! Redis round trips: every operation of the directory is one Lua script (`EVALSHA`), and
//! Redis counts the commands a script runs under their own names too, so a round trip is a
//! call of any command but those only the scripts run (`SCRIPT_ONLY`); the per-command deltas
//! are in the results for checking. This tool's own `INFO` calls are left out.

use crate::Failure;
use crate::report::Percentiles;
use crate::scenarios::{FleetOptions, IdleFleet, new_histogram, register, seed_conversation, unix_ms};
use crate::target::{self, Kind, Node, Sut, http_client};
use crate::ws;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Commands the directory's Lua scripts run inside Redis (`src/store/redis_directory/scripts.rs`);
/// the nodes send none of them directly.
const SCRIPT_ONLY: &[&str] =
    &["exists", "set", "sadd", "smembers", "get", "publish", "srem", "spop", "scard", "del"];

pub struct FailoverPlan {
    pub lb_http: String,
    pub redis_port: u16,
    pub idle: usize,
    pub users: usize,
    pub user_prefix: String,
    pub idle_secs: u64,
    pub recover: Duration,
    /// The node to SIGKILL (its pid must be known); None: no kill.
    pub kill: Option<Node>,
}

/// Redis commands between two `INFO commandstats` snapshots.
#[derive(Serialize, Debug, Clone, Default)]
pub struct RedisDelta {
    pub secs: f64,
    /// Calls per command (this tool's `INFO` left out).
    pub calls: BTreeMap<String, u64>,
    /// Commands sent by clients (all but `SCRIPT_ONLY`): round trips.
    pub round_trips: u64,
}

#[derive(Serialize, Debug)]
pub struct RedisFigures {
    pub port: u16,
    pub idle_no_clients: RedisDelta,
    /// One connection per user, every user new to its node.
    pub connect_first: RedisDelta,
    pub connects_first: usize,
    /// The other connections (users that already have sessions, on some node).
    pub connect_rest: RedisDelta,
    pub connects_rest: usize,
    pub idle_with_clients: RedisDelta,
    /// From the kill until every dropped client was back plus 1 s, at least 10 s (the dead
    /// node's marks are cleared after its membership TTL).
    pub failover: Option<RedisDelta>,
    /// Round trips per connect, the idle rate without clients subtracted.
    pub per_connect_first: f64,
    pub per_connect_rest: f64,
    /// Round trips per heartbeat interval (the cluster's, all nodes together).
    pub per_heartbeat_no_clients: f64,
    pub per_heartbeat_with_clients: f64,
    /// Round trips per client that reconnected, the idle rate subtracted.
    pub per_reconnect: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct FailoverResult {
    pub target: Kind,
    pub lb: String,
    pub users: usize,
    pub idle_requested: usize,
    pub idle_connected: usize,
    pub connect_secs: f64,
    pub heartbeat_ms: u64,
    /// Connections per node (`welcome.node`) before the kill.
    pub nodes_before_kill: BTreeMap<String, usize>,
    pub redis: Option<RedisFigures>,
    pub killed_node: Option<String>,
    pub killed_pid: Option<u32>,
    /// Connections the killed node held (from `nodes_before_kill`).
    pub on_killed_node: usize,
    /// Connections that dropped after the kill, and those of them back and synced in time.
    pub dropped: usize,
    pub back: usize,
    /// From the kill to `sync_done` on the new connection, ms, over the clients back.
    pub back_after_kill_ms: Percentiles,
    /// From the kill until the last dropped client was back and synced (None: not all were).
    pub all_back_after_kill_ms: Option<u64>,
    /// From the drop to `sync_done` on the new connection, per client, ms.
    pub down_to_back_ms: Percentiles,
    pub attempts_max: u64,
    pub attempts_mean: f64,
    /// Where the clients that came back landed.
    pub nodes_after: BTreeMap<String, usize>,
    pub recover_limit_secs: u64,
    /// Valid: every idle client connected, the kill dropped some, and every dropped one came
    /// back within the limit.
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

/// `INFO commandstats` of the Redis on `port`, as calls per command (None without redis-cli or
/// an answer).
fn redis_calls(port: u16) -> Option<BTreeMap<String, u64>> {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let calls: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect();
    (!calls.is_empty()).then_some(calls)
}

struct Snapshot {
    at: Instant,
    calls: Option<BTreeMap<String, u64>>,
}

fn snapshot(port: u16) -> Snapshot {
    Snapshot { at: Instant::now(), calls: redis_calls(port) }
}

fn delta(a: &Snapshot, b: &Snapshot) -> Option<RedisDelta> {
    let (before, after) = (a.calls.as_ref()?, b.calls.as_ref()?);
    let mut calls = BTreeMap::new();
    for (name, n) in after {
        let d = n.saturating_sub(*before.get(name).unwrap_or(&0));
        // `info`: this tool's snapshots.
        if d > 0 && name != "info" {
            calls.insert(name.clone(), d);
        }
    }
    let round_trips =
        calls.iter().filter(|(name, _)| !SCRIPT_ONLY.contains(&name.as_str())).map(|(_, n)| n).sum();
    Some(RedisDelta { secs: b.at.duration_since(a.at).as_secs_f64(), calls, round_trips })
}

/// Round trips per event, the background rate (`per_sec`) over the same time subtracted.
fn per_event(d: &RedisDelta, events: usize, per_sec: f64) -> f64 {
    ((d.round_trips as f64 - per_sec * d.secs).max(0.0)) / events.max(1) as f64
}

fn ms_percentiles(values: &[u64]) -> Percentiles {
    let mut h = new_histogram();
    for v in values {
        let _ = h.record((*v).max(1));
    }
    Percentiles::of(&h)
}

/// SIGKILLs a node after checking that its pid is a `switchboard serve` process.
fn kill_node(node: &Node) -> Result<u32, Failure> {
    let pid = node.pid.ok_or(format!("{}: pid unknown (give --cluster-home)", node.name))?;
    if !target::is_switchboard_serve(pid) {
        return Err(format!("{}: pid {pid} is not a running `switchboard serve`", node.name).into());
    }
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
    if !status.success() {
        return Err(format!("kill -KILL {pid} failed: {status}").into());
    }
    Ok(pid)
}

pub async fn failover(sut: &Sut, plan: &FailoverPlan) -> Result<FailoverResult, Failure> {
    let http = http_client()?;
    let lb_ws = target::ws_url_of(&plan.lb_http);
    // Users (registered at the nodes directly: behind the balancer every client has its
    // address), a direct conversation per two, one message in each: a sync reads something.
    eprintln!("[s9] b/c: {} users, {} idle clients through {}", plan.users, plan.idle, plan.lb_http);
    let mut users = Vec::new();
    for i in 0..plan.users {
        let node = &sut.nodes[i % sut.nodes.len()].http;
        users.push(register(node, &format!("{}{i}", plan.user_prefix)).await?);
    }
    for pair in users.chunks(2) {
        let [(_, a_token), (b_id, _)] = pair else { continue };
        let resp = http
            .post(format!("{}/v1/conversations/direct", sut.http))
            .bearer_auth(a_token)
            .json(&json!({"user_id": b_id}))
            .send()
            .await?;
        let v: Value = resp.json().await?;
        let conversation = v["conversation_id"].as_str().ok_or(format!("open conversation: {v}"))?;
        seed_conversation(sut, a_token, conversation, 1, 100).await?;
    }
    let tokens: Vec<String> = users.iter().map(|(_, t)| t.clone()).collect();
    let heartbeat_ms = {
        let mut socket = ws::connect(&lb_ws, crate::scenarios::source_ip(199), Some(&tokens[0])).await?;
        let welcome = target::handshake(Kind::Switchboard, &mut socket).await?;
        let _ = socket.close(None).await;
        welcome["heartbeat_ms"].as_u64().unwrap_or(15_000)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // c: Redis without clients, then per connect.
    let idle = Duration::from_secs(plan.idle_secs);
    let hold_secs = 2 * plan.idle_secs + plan.recover.as_secs() + 900;
    let s0 = snapshot(plan.redis_port);
    tokio::time::sleep(idle).await;
    let s1 = snapshot(plan.redis_port);
    let started = Instant::now();
    let first_n = plan.users.min(plan.idle);
    let joined = tokens.join(",");
    let fleet_first = IdleFleet::start_with(FleetOptions {
        url: &lb_ws,
        kind: Kind::Switchboard,
        tokens: &joined,
        count: first_n,
        hold_secs,
        resync: true,
        first_source: 0,
    })
    .await?;
    let s2 = snapshot(plan.redis_port);
    let fleet_rest = IdleFleet::start_with(FleetOptions {
        url: &lb_ws,
        kind: Kind::Switchboard,
        tokens: &joined,
        count: plan.idle - first_n,
        hold_secs,
        resync: true,
        first_source: 1 + first_n / 5_000,
    })
    .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let s3 = snapshot(plan.redis_port);
    let idle_connected = fleet_first.connected + fleet_rest.connected;
    let mut nodes_before_kill = fleet_first.nodes.clone();
    for (k, v) in &fleet_rest.nodes {
        *nodes_before_kill.entry(k.clone()).or_default() += v;
    }
    eprintln!(
        "  {idle_connected} of {} connected and synced in {connect_secs:.1} s ({})",
        plan.idle,
        nodes_before_kill.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s4 = snapshot(plan.redis_port);
    tokio::time::sleep(idle).await;
    let s5 = snapshot(plan.redis_port);

    // b: kill a node; the clients it held come back through the balancer.
    let mut fleets = [fleet_first, fleet_rest];
    let (mut dropped, mut back_after_kill, mut down_to_back, mut attempts) =
        (0usize, Vec::new(), Vec::new(), Vec::new());
    let mut nodes_after: BTreeMap<String, usize> = BTreeMap::new();
    let mut killed_pid = None;
    let mut s6 = None;
    if let Some(node) = &plan.kill {
        // Reports of earlier drops (none expected) are not this kill's.
        for f in fleets.iter_mut() {
            while f.events.try_recv().is_ok() {}
        }
        let kill_ms = unix_ms();
        let kill_at = Instant::now();
        killed_pid = Some(kill_node(node)?);
        eprintln!("  SIGKILLed {} (pid {})", node.name, killed_pid.unwrap_or(0));
        let mut last_back = kill_at;
        loop {
            let mut got = false;
            for f in fleets.iter_mut() {
                while let Ok(line) = f.events.try_recv() {
                    got = true;
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words.as_slice() {
                        ["down", ..] => dropped += 1,
                        ["back", down, up, n, at] => {
                            let (down, up): (u64, u64) = (down.parse().unwrap_or(0), up.parse().unwrap_or(0));
                            back_after_kill.push(up.saturating_sub(kill_ms));
                            down_to_back.push(up.saturating_sub(down));
                            attempts.push(n.parse::<u64>().unwrap_or(0));
                            *nodes_after.entry((*at).to_owned()).or_default() += 1;
                            last_back = Instant::now();
                        }
                        _ => {}
                    }
                }
            }
            let waited = kill_at.elapsed();
            let all_back = dropped > 0 && back_after_kill.len() == dropped;
            if (all_back && waited > Duration::from_secs(3)) || waited > plan.recover {
                break;
            }
            if dropped == 0 && waited > Duration::from_secs(15) {
                break;
            }
            if !got {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The Redis window covers the reconnects and the survivors clearing the dead node's
        // marks (after its membership TTL, 5 s by default): at least 10 s after the kill.
        let _ = last_back;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let min_window = Duration::from_secs(10);
        if kill_at.elapsed() < min_window {
            tokio::time::sleep(min_window - kill_at.elapsed()).await;
        }
        s6 = Some(snapshot(plan.redis_port));
    }
    for f in fleets {
        f.stop().await;
    }

    let redis = (|| {
        let idle_no_clients = delta(&s0, &s1)?;
        let connect_first = delta(&s1, &s2)?;
        let connect_rest = delta(&s2, &s3)?;
        let idle_with_clients = delta(&s4, &s5)?;
        let failover = s6.as_ref().and_then(|s6| delta(&s5, s6));
        let per_sec = idle_no_clients.round_trips as f64 / idle_no_clients.secs.max(0.001);
        let per_heartbeat =
            |d: &RedisDelta| d.round_trips as f64 / d.secs.max(0.001) * heartbeat_ms as f64 / 1000.0;
        Some(RedisFigures {
            port: plan.redis_port,
            per_connect_first: per_event(&connect_first, first_n, per_sec),
            per_connect_rest: per_event(&connect_rest, plan.idle - first_n, per_sec),
            per_heartbeat_no_clients: per_heartbeat(&idle_no_clients),
            per_heartbeat_with_clients: per_heartbeat(&idle_with_clients),
            per_reconnect: failover.as_ref().map(|d| per_event(d, back_after_kill.len(), per_sec)),
            idle_no_clients,
            connect_first,
            connects_first: first_n,
            connect_rest,
            connects_rest: plan.idle - first_n,
            idle_with_clients,
            failover,
        })
    })();

    let on_killed_node =
        plan.kill.as_ref().and_then(|n| nodes_before_kill.get(&n.name).copied()).unwrap_or(0);
    let back = back_after_kill.len();
    let mut r = FailoverResult {
        target: Kind::Switchboard,
        lb: plan.lb_http.clone(),
        users: plan.users,
        idle_requested: plan.idle,
        idle_connected,
        connect_secs,
        heartbeat_ms,
        nodes_before_kill,
        redis,
        killed_node: plan.kill.as_ref().map(|n| n.name.clone()),
        killed_pid,
        on_killed_node,
        dropped,
        back,
        back_after_kill_ms: ms_percentiles(&back_after_kill),
        all_back_after_kill_ms: (dropped > 0 && back == dropped)
            .then(|| back_after_kill.iter().copied().max().unwrap_or(0)),
        down_to_back_ms: ms_percentiles(&down_to_back),
        attempts_max: attempts.iter().copied().max().unwrap_or(0),
        attempts_mean: attempts.iter().sum::<u64>() as f64 / attempts.len().max(1) as f64,
        nodes_after,
        recover_limit_secs: plan.recover.as_secs(),
        valid: false,
        invalid_reasons: Vec::new(),
    };
    r.judge(plan.kill.is_some());
    Ok(r)
}

impl FailoverResult {
    fn judge(&mut self, killed: bool) {
        let mut reasons = Vec::new();
        if self.idle_connected != self.idle_requested {
            reasons
                .push(format!("{} of {} idle clients connected", self.idle_connected, self.idle_requested));
        }
        if killed && self.dropped == 0 {
            reasons.push("no client dropped after the kill".into());
        }
        if self.back != self.dropped {
            reasons.push(format!(
                "{} of {} dropped clients back and synced within {} s",
                self.back, self.dropped, self.recover_limit_secs
            ));
        }
        self.valid = reasons.is_empty();
        self.invalid_reasons = reasons;
    }
}

pub fn one_line(r: &FailoverResult) -> String {
    let redis = match &r.redis {
        Some(x) => format!(
            "; Redis round trips per connect {:.2} (first of a user) / {:.2} (others), per {} ms heartbeat interval {:.1} without clients / {:.1} with {}",
            x.per_connect_first,
            x.per_connect_rest,
            r.heartbeat_ms,
            x.per_heartbeat_no_clients,
            x.per_heartbeat_with_clients,
            r.idle_connected
        ),
        None => "; Redis: no INFO (redis-cli missing?)".into(),
    };
    format!(
        "{}: {} of {} idle connected in {:.1} s; killed {} ({} clients on it): {} dropped, {} back and synced, all after {} ms (p50 {} ms, p99 {} ms){redis}",
        if r.valid { "valid" } else { "INVALID" },
        r.idle_connected,
        r.idle_requested,
        r.connect_secs,
        r.killed_node.as_deref().unwrap_or("none"),
        r.on_killed_node,
        r.dropped,
        r.back,
        r.all_back_after_kill_ms.map_or("—".into(), |v| v.to_string()),
        r.back_after_kill_ms.p50,
        r.back_after_kill_ms.p99,
    )
}
