//! The system under test: starting switchboard or Centrifugo pinned to a core, reading its CPU
//! time and memory from /proc and switchboard's effective configuration, the HTTP client every
//! REST call goes through (always with a timeout), and the two wire protocols (what a send, an
//! ack, a delivery and an error look like in each).

use crate::Failure;
use crate::ws::Socket;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Switchboard,
    Centrifugo,
}

/// Every HTTP request the generator makes gives up after this long.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client for every REST call: a whole-request timeout and a connect timeout.
pub fn http_client() -> Result<reqwest::Client, crate::Failure> {
    http_client_from(None)
}

/// `http_client`, connecting from `source` (a 127.0.0.x address) when given.
pub fn http_client_from(source: Option<IpAddr>) -> Result<reqwest::Client, crate::Failure> {
    Ok(reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .local_address(source)
        .build()?)
}

/// The environment switchboard runs with in every scenario: loopback on a free port, one HTTP
/// worker, and the per-connection frame rate and the per-IP account limits lifted (one
/// loopback generator registers and drives hundreds of users). WebSocket output bounds
/// (`outbound_bytes`, `write_stall_ms`) stay at their defaults: S7 measures them. `extra`
/// (`--server-env`) comes last and overrides.
pub fn switchboard_env(data_dir: &Path, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("SWITCHBOARD_HTTP_ADDR", "127.0.0.1:0"),
        ("SWITCHBOARD_WORKERS", "1"),
        ("SWITCHBOARD_RATE_PER_SEC", "1000000"),
        ("SWITCHBOARD_RATE_BURST", "1000000"),
        ("SWITCHBOARD_REGISTER_IP_PER_HOUR", "1000000"),
        ("SWITCHBOARD_LOGIN_IP_PER_MIN", "1000000"),
        ("SWITCHBOARD_LOGIN_USER_PER_MIN", "1000000"),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.push(("SWITCHBOARD_DATA_DIR".into(), data_dir.display().to_string()));
    env.extend(extra.iter().cloned());
    env
}

/// A numeric key of switchboard's effective configuration under `env` (`switchboard config`
/// prints it), e.g. `write_stall_ms`; `None` when this build has no such key.
pub fn switchboard_config_value(bin: &Path, env: &[(String, String)], key: &str) -> Option<u64> {
    let out = std::process::Command::new(bin).arg("config").envs(env.iter().cloned()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?.trim_start().strip_prefix(['=', ':'])?;
        rest.trim().trim_end_matches(',').replace('_', "").parse().ok()
    })
}

/// One counter or gauge from switchboard's `/metrics` (Prometheus text), if it answers.
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A running server process, or (`--urls`) an externally started switchboard of one or more
/// nodes: then `http`/`ws_url` are the first node's, `nodes` lists all of them, and `pid` is 0
/// unless `--cluster-home` told which processes they are.
pub struct Sut {
    pub kind: Kind,
    child: Option<Child>,
    pub pid: u32,
    pub http: String,
    pub ws_url: String,
    pub version: String,
    pub nodes: Vec<Node>,
}

/// One node of the system under test.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// `node1`… for a cluster of `scripts/cluster` (from its state dir), else the URL.
    pub name: String,
    pub http: String,
    pub ws_url: String,
    /// Its process, when known (for CPU, RSS and the S9 kill).
    pub pid: Option<u32>,
}

/// `ws://host:port/v1/ws` of an `http://host:port` base URL.
pub fn ws_url_of(http: &str) -> String {
    format!("{}/v1/ws", http.trim_end_matches('/').replacen("http", "ws", 1))
}

/// The nodes `scripts/cluster` started, from its state dir: (name, HTTP address, pid) of every
/// `nodeN.env` with a live `nodeN.pid`.
pub fn cluster_nodes(home: &Path) -> Vec<(String, String, Option<u32>)> {
    let mut nodes = Vec::new();
    for i in 1..=9 {
        let Ok(env) = std::fs::read_to_string(home.join(format!("node{i}.env"))) else { continue };
        let Some(addr) = env.lines().find_map(|l| l.strip_prefix("SWITCHBOARD_HTTP_ADDR=")) else { continue };
        let pid = std::fs::read_to_string(home.join(format!("node{i}.pid")))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|p| is_switchboard_serve(*p));
        nodes.push((format!("node{i}"), addr.trim().to_owned(), pid));
    }
    nodes
}

/// Whether `pid` is a live `switchboard serve` process (a stale pid file must not make the
/// bench signal some other process).
pub fn is_switchboard_serve(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let state = proc_file(pid, "status");
    !state.lines().any(|l| l.starts_with("State:") && l.contains('Z'))
        && args.first().is_some_and(|a| a.ends_with(b"switchboard"))
        && args.iter().any(|a| *a == b"serve")
}

fn proc_file(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).unwrap_or_default()
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_file(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds a process has used (all its threads).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = proc_file(pid, "stat");
    // Fields after the ")" that closes the command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// One IPv4 TCP socket as `/proc/net/tcp` shows it: the bytes the kernel holds in its send
/// queue (outside any process's RSS), and its state.
#[derive(Clone, Copy, Debug)]
pub struct TcpSocketInfo {
    pub send_queue: u64,
    pub state: &'static str,
}

/// Every IPv4 TCP socket (`/proc/net/tcp`), by (local, remote) address.
pub fn tcp_sockets() -> HashMap<(SocketAddr, SocketAddr), TcpSocketInfo> {
    fn addr(hex: &str) -> Option<SocketAddr> {
        let (ip, port) = hex.split_once(':')?;
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes());
        Some(SocketAddr::new(ip.into(), u16::from_str_radix(port, 16).ok()?))
    }
    fn state(hex: &str) -> &'static str {
        match hex {
            "01" => "ESTABLISHED",
            "02" => "SYN_SENT",
            "03" => "SYN_RECV",
            "04" => "FIN_WAIT1",
            "05" => "FIN_WAIT2",
            "06" => "TIME_WAIT",
            "07" => "CLOSE",
            "08" => "CLOSE_WAIT",
            "09" => "LAST_ACK",
            "0A" => "LISTEN",
            "0B" => "CLOSING",
            _ => "?",
        }
    }
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, _rx) = f.get(4)?.split_once(':')?;
            Some((
                (addr(f.get(1)?)?, addr(f.get(2)?)?),
                TcpSocketInfo { send_queue: u64::from_str_radix(tx, 16).ok()?, state: state(f.get(3)?) },
            ))
        })
        .collect()
}

/// Kernel memory now: slab plus TCP buffer pages, KiB.
pub fn kernel_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp_pages: u64 = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts.iter().position(|p| *p == "mem").and_then(|i| parts.get(i + 1)?.parse().ok())
        })
        .unwrap_or(0);
    slab + tcp_pages * 4
}

impl Sut {
    /// Starts `switchboard serve` on `cpu` with a fresh data dir and `switchboard_env`.
    pub async fn start_switchboard(
        bin: &Path,
        data_dir: &Path,
        cpu: usize,
        extra_env: &[(String, String)],
    ) -> Result<Sut, Failure> {
        let _ = std::fs::remove_dir_all(data_dir);
        std::fs::create_dir_all(data_dir)?;
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(bin)
            .arg("serve")
            .envs(switchboard_env(data_dir, extra_env))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(data_dir.join("server.log"))?))
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await??
            .ok_or("server exited")?;
        let addr =
            first.strip_prefix("switchboard listening on http://").ok_or("unexpected output")?.to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let version =
            String::from_utf8_lossy(&std::process::Command::new(bin).arg("--version").output()?.stdout)
                .trim()
                .to_owned();
        let pid = child.id().ok_or("no pid")?;
        let node = Node {
            name: "node".into(),
            http: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/v1/ws"),
            pid: Some(pid),
        };
        Ok(Sut {
            kind: Kind::Switchboard,
            child: Some(child),
            pid,
            http: node.http.clone(),
            ws_url: node.ws_url.clone(),
            version,
            nodes: vec![node],
        })
    }

    /// An already running switchboard (`--urls`): its nodes' base URLs, and when
    /// `cluster_home` (the state dir of `scripts/cluster`) is given, their names and pids.
    /// Every URL must answer `/readyz` 200.
    pub async fn external(bin: &Path, urls: &[String], cluster_home: Option<&Path>) -> Result<Sut, Failure> {
        let known = cluster_home.map(cluster_nodes).unwrap_or_default();
        let http = http_client()?;
        let mut nodes = Vec::new();
        for url in urls {
            let url = url.trim().trim_end_matches('/').to_owned();
            let ready = http.get(format!("{url}/readyz")).send().await.map(|r| r.status().as_u16());
            if !matches!(ready, Ok(200)) {
                return Err(format!("{url}/readyz: {ready:?} (is the server running?)").into());
            }
            let addr = url.trim_start_matches("http://");
            let (name, pid) = match known.iter().find(|(_, a, _)| a == addr) {
                Some((name, _, pid)) => (name.clone(), *pid),
                None => (url.clone(), None),
            };
            nodes.push(Node { name, ws_url: ws_url_of(&url), http: url, pid });
        }
        let first = nodes.first().ok_or("--urls is empty")?.clone();
        let version = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Ok(Sut {
            kind: Kind::Switchboard,
            child: None,
            pid: first.pid.unwrap_or(0),
            http: first.http,
            ws_url: first.ws_url,
            version: format!("{version} (external, {} node(s))", nodes.len()),
            nodes,
        })
    }

    /// Started by the bench (not `--urls`).
    pub fn is_external(&self) -> bool {
        self.child.is_none()
    }

    /// Starts Centrifugo on `cpu` with a generated loopback config: insecure client mode (any
    /// client may connect, subscribe and publish, as our bench users may), memory engine,
    /// no history — its defaults.
    pub async fn start_centrifugo(bin: &Path, dir: &Path, cpu: usize) -> Result<Sut, Failure> {
        std::fs::create_dir_all(dir)?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        // Centrifugo v5 keys (v6 nests them: http_server.port, client.insecure, …; see
        // docs/benchmarks.md for why the peer is v5).
        let config = json!({
            "address": "127.0.0.1",
            "port": port.to_string(),
            "client_insecure": true,
            "allowed_origins": ["*"],
            "log_level": "error",
        });
        let path: PathBuf = dir.join("centrifugo.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(bin)
            .arg("-c")
            .arg(&path)
            .env("GOMAXPROCS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(dir.join("centrifugo.log"))?))
            .stderr(Stdio::from(std::fs::File::create(dir.join("centrifugo.err"))?))
            .kill_on_drop(true)
            .spawn()?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err("centrifugo did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A build from module source reports v0.0.0; the install script records the real one.
        let version = std::env::var("CENTRIFUGO_VERSION").unwrap_or_else(|_| {
            String::from_utf8_lossy(
                &std::process::Command::new(bin)
                    .arg("version")
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default(),
            )
            .trim()
            .to_owned()
        });
        let pid = child.id().ok_or("no pid")?;
        let node = Node {
            name: "centrifugo".into(),
            http: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/connection/websocket"),
            pid: Some(pid),
        };
        Ok(Sut {
            kind: Kind::Centrifugo,
            child: Some(child),
            pid,
            http: node.http.clone(),
            ws_url: node.ws_url.clone(),
            version,
            nodes: vec![node],
        })
    }

    /// Resident memory, KiB: of the server, or summed over the nodes whose pids are known.
    pub fn rss_kib(&self) -> u64 {
        self.nodes.iter().filter_map(|n| n.pid).map(rss_kib).sum()
    }

    /// CPU seconds: of the server, or summed over the nodes whose pids are known (a node that
    /// died meanwhile no longer counts).
    pub fn cpu_secs(&self) -> f64 {
        self.nodes.iter().filter_map(|n| n.pid).map(cpu_secs).sum()
    }

    /// Stops the server (an external one is left running); for switchboard, first saves
    /// `/metrics` (store append latency histogram, group commits, …) as
    /// `metrics-<label>.txt` in `dir` (`metrics-<label>-<node>.txt` per node of an external one).
    pub async fn stop(self, dir: &Path, label: &str) {
        if self.kind == Kind::Switchboard
            && let Ok(http) = http_client()
        {
            for node in &self.nodes {
                if let Ok(resp) = http.get(format!("{}/metrics", node.http)).send().await
                    && let Ok(text) = resp.text().await
                {
                    let file = if self.child.is_some() {
                        format!("metrics-{label}.txt")
                    } else {
                        let safe: String = node
                            .name
                            .chars()
                            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                            .collect();
                        format!("metrics-{label}-{safe}.txt")
                    };
                    let _ = std::fs::write(dir.join(file), text);
                }
            }
        }
        if let Some(mut child) = self.child {
            let _ = child.kill().await;
        }
    }
}

/// What one incoming frame means to the generator.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// The server acknowledged send number `k` (switchboard: stored, as `seq`).
    Ack {
        k: u64,
        seq: Option<u64>,
    },
    /// A delivered message body (switchboard: and its seq).
    Delivery {
        body: String,
        seq: Option<u64>,
    },
    /// An application-level ping to answer (Centrifugo's `{}`).
    Ping,
    /// An error reply or disconnect notice, by code (`error:rate_limited`,
    /// `centrifugo_error:108`, …); `k` when it answers send number `k`.
    Error {
        k: Option<u64>,
        code: String,
    },
    /// switchboard's `sync_done`; `has_more`: sync again.
    SyncDone {
        has_more: bool,
    },
    Other,
}

/// Whether a `sync_done` asks for another round (at the top level or for a conversation).
pub fn sync_has_more(v: &Value) -> bool {
    v["has_more"].as_bool() == Some(true)
        || v["conversations"]
            .as_object()
            .is_some_and(|m| m.values().any(|c| c["has_more"].as_bool() == Some(true)))
}

/// Centrifugo command ids of publishes are offset so they never clash with connect/subscribe.
const PUBLISH_ID_OFFSET: u64 = 100;

/// The frame that sends message number `k` with `body` on `channel` (conversation id or
/// Centrifugo channel). Its request id is `k` too, so an error reply names the send.
pub fn send_frame(kind: Kind, channel: &str, k: u64, body: &str) -> String {
    match kind {
        Kind::Switchboard => json!({
            "type": "send",
            "id": format!("k{k}"),
            "conversation_id": channel,
            "client_msg_id": format!("k{k}"),
            "body": body,
        })
        .to_string(),
        Kind::Centrifugo => {
            json!({"id": k + PUBLISH_ID_OFFSET, "publish": {"channel": channel, "data": {"b": body}}})
                .to_string()
        }
    }
}

/// Parses one text frame (Centrifugo may put several JSON replies in one, one per line).
pub fn parse(kind: Kind, text: &str) -> Vec<Incoming> {
    match kind {
        Kind::Switchboard => {
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            let one = match v["type"].as_str() {
                Some("sent") => v["client_msg_id"]
                    .as_str()
                    .and_then(|c| c.strip_prefix('k')?.parse().ok())
                    .map(|k| Incoming::Ack { k, seq: v["seq"].as_u64() })
                    .unwrap_or(Incoming::Other),
                Some("message") => Incoming::Delivery {
                    body: v["body"].as_str().unwrap_or("").to_owned(),
                    seq: v["seq"].as_u64(),
                },
                Some("sync_done") => Incoming::SyncDone { has_more: sync_has_more(&v) },
                Some("error") => Incoming::Error {
                    k: v["id"].as_str().and_then(|c| c.strip_prefix('k')?.parse().ok()),
                    code: format!("error:{}", v["code"].as_str().unwrap_or("?")),
                },
                _ => Incoming::Other,
            };
            vec![one]
        }
        Kind::Centrifugo => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                if v.as_object().is_some_and(|o| o.is_empty()) {
                    Incoming::Ping
                } else if let Some(b) = v["push"]["pub"]["data"]["b"].as_str() {
                    Incoming::Delivery { body: b.to_owned(), seq: None }
                } else if let Some(id) = v["id"].as_u64().filter(|id| *id >= PUBLISH_ID_OFFSET) {
                    match v.get("error") {
                        Some(e) => Incoming::Error {
                            k: Some(id - PUBLISH_ID_OFFSET),
                            code: format!("centrifugo_error:{}", e["code"]),
                        },
                        None => Incoming::Ack { k: id - PUBLISH_ID_OFFSET, seq: None },
                    }
                } else if let Some(d) = v.get("disconnect").or_else(|| v["push"].get("disconnect")) {
                    Incoming::Error { k: None, code: format!("centrifugo_disconnect:{}", d["code"]) }
                } else if let Some(e) = v.get("error") {
                    Incoming::Error { k: None, code: format!("centrifugo_error:{}", e["code"]) }
                } else {
                    Incoming::Other
                }
            })
            .collect(),
    }
}

/// Waits for the reply to Centrifugo command `id`.
async fn centrifugo_reply(socket: &mut Socket, id: u64) -> Result<Value, Failure> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), socket.next()).await?.ok_or("closed")??;
        if let Message::Text(text) = msg {
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                if v["id"].as_u64() == Some(id) {
                    if let Some(e) = v.get("error") {
                        return Err(format!("centrifugo error: {e}").into());
                    }
                    return Ok(v);
                }
            }
        }
    }
}

/// Completes a connection's handshake: switchboard's `welcome` (authenticated by header;
/// returned: `node`, `heartbeat_ms`, …), or Centrifugo's connect command (its reply).
pub async fn handshake(kind: Kind, socket: &mut Socket) -> Result<Value, Failure> {
    match kind {
        Kind::Switchboard => loop {
            let msg =
                tokio::time::timeout(Duration::from_secs(10), socket.next()).await?.ok_or("closed")??;
            if let Message::Text(text) = msg {
                let v: Value = serde_json::from_str(&text)?;
                if v["type"] == "welcome" {
                    return Ok(v);
                }
                return Err(format!("expected welcome, got {text}").into());
            }
        },
        Kind::Centrifugo => {
            socket.send(Message::text(json!({"id":1,"connect":{}}).to_string())).await?;
            centrifugo_reply(socket, 1).await
        }
    }
}

/// switchboard: sends `sync` from `cursors` and reads until its `sync_done` without
/// `has_more` (syncing again while there is more), within `within`. Messages read meanwhile
/// are returned as (conversation, seq, body), in order.
pub async fn sync_until_done(
    socket: &mut Socket,
    mut cursors: serde_json::Map<String, Value>,
    within: Duration,
) -> Result<Vec<(String, u64, String)>, Failure> {
    let deadline = tokio::time::Instant::now() + within;
    let mut messages = Vec::new();
    loop {
        socket.send(Message::text(json!({"type": "sync", "cursors": cursors}).to_string())).await?;
        let more = loop {
            let msg = tokio::time::timeout_at(deadline, socket.next())
                .await
                .map_err(|_| format!("no sync_done within {within:?}"))?
                .ok_or("closed during sync")??;
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match v["type"].as_str() {
                Some("message") => {
                    let (c, seq) = (
                        v["conversation_id"].as_str().unwrap_or("").to_owned(),
                        v["seq"].as_u64().unwrap_or(0),
                    );
                    let held = cursors.get(&c).and_then(Value::as_u64).unwrap_or(0);
                    if seq == held + 1 {
                        cursors.insert(c.clone(), json!(seq));
                    }
                    messages.push((c, seq, v["body"].as_str().unwrap_or("").to_owned()));
                }
                Some("sync_done") => break sync_has_more(&v),
                Some("error") if v["conversation_id"].is_null() && v["id"].is_null() => {}
                Some("error") => return Err(format!("sync: {text}").into()),
                _ => {}
            }
        };
        if !more {
            return Ok(messages);
        }
    }
}

/// Makes `socket` receive what is published on `channel` (Centrifugo only; switchboard
/// delivers conversation messages to members without a subscription).
pub async fn subscribe(kind: Kind, socket: &mut Socket, channel: &str) -> Result<(), Failure> {
    if kind == Kind::Centrifugo {
        socket.send(Message::text(json!({"id":2,"subscribe":{"channel":channel}}).to_string())).await?;
        centrifugo_reply(socket, 2).await?;
    }
    Ok(())
}
