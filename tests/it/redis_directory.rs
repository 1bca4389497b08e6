//! Integration tests of `RedisDirectory` against real `redis-server` child processes on
//! 127.0.0.1 (random high ports, no persistence), killed when each test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard::model::UserId;
use switchboard::store::StoreError;
use switchboard::store::presence::{ClusterDirectory, ClusterEvent, NodeInfo, PresenceRecord};
use switchboard::store::redis_directory::{RedisDirectory, RedisDirectoryConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// harness

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("sbredis-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A redis-server (or sentinel) child process, killed on drop.
struct Proc {
    child: Option<Child>,
    port: u16,
}

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_server(dir: &Path, port: u16, extra: &[&str]) -> Proc {
    let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--dir", dir.to_str().unwrap(), "--logfile", ""])
        .args(["--dbfilename", &format!("dump-{port}.rdb")])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    Proc { child: Some(child), port }
}

fn spawn_sentinel(dir: &Path, port: u16, primary: u16) -> Proc {
    let conf = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\nprotected-mode no\ndir {}\nlogfile \"\"\n\
             sentinel monitor svc 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds svc 1000\n\
             sentinel failover-timeout svc 3000\n\
             sentinel parallel-syncs svc 1\n",
            dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("sentinel-{port}.log"))).unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc { child: Some(child), port }
}

async fn cli(port: u16, args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ready(port: u16) {
    wait_until("redis PONG", Duration::from_secs(10), || async move {
        cli(port, &["ping"]).await.trim() == "PONG"
    })
    .await;
}

async fn start_redis(dir: &Path) -> Proc {
    let p = spawn_server(dir, free_port(), &[]);
    wait_ready(p.port).await;
    p
}

fn uid() -> UserId {
    UserId(Uuid::now_v7())
}

fn node(id: &str) -> NodeInfo {
    NodeInfo { id: id.into(), peer_addr: format!("127.0.0.1:9{}", id.len()) }
}

fn prefix(tag: &str) -> String {
    format!("sbt:{tag}:{}:", Uuid::now_v7().simple())
}

async fn next_event(rx: &mut broadcast::Receiver<ClusterEvent>) -> ClusterEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event within 5 s").expect("event")
}

async fn expect_events(rx: &mut broadcast::Receiver<ClusterEvent>, want: &[ClusterEvent]) {
    for w in want {
        assert_eq!(&next_event(rx).await, w);
    }
}

async fn expect_quiet(rx: &mut broadcast::Receiver<ClusterEvent>) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected event {r:?}");
    }
}

/// Skips events until `Resync`; returns how long that took.
async fn wait_resync(rx: &mut broadcast::Receiver<ClusterEvent>, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let left = limit.checked_sub(start.elapsed()).expect("Resync in time");
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ClusterEvent::Resync)) => return start.elapsed(),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("events closed: {e}"),
            Err(_) => panic!("no Resync within {limit:?}"),
        }
    }
}

fn located(user: UserId, node: &str, present: bool) -> ClusterEvent {
    ClusterEvent::Located { user, node: node.into(), present }
}

fn presence_ev(user: UserId, online: bool, last_seen: Option<i64>) -> ClusterEvent {
    ClusterEvent::Presence { user, online, last_seen }
}

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Unavailable(_)))
}

/// Renews `n` until it succeeds; returns how long that took.
async fn renew_until_ok(d: &RedisDirectory, n: &NodeInfo, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match d.renew_node(n, 30_000).await {
            Ok(_) => return start.elapsed(),
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                assert!(start.elapsed() < limit, "not back within {limit:?}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

const TEST_LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// 1. conformance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    if !redis_installed() {
        return;
    }
    tokio::time::timeout(TEST_LIMIT, conformance_body()).await.expect("test time limit");
}

async fn conformance_body() {
    let dir = scratch_dir("conf");
    let redis = start_redis(&dir).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let p = prefix("conf");
    let a = RedisDirectory::connect(&url, &p).await.unwrap();
    let b = RedisDirectory::connect(&url, &p).await.unwrap();
    // another prefix on the same server sees nothing of this one
    let other = RedisDirectory::connect(&url, &prefix("other")).await.unwrap();
    let mut ev = b.events(); // "node 2" watches everything, its own publishes included
    let mut ev_other = other.events();
    a.ping().await.unwrap();

    // membership: renew / live_nodes / expiry
    let (n1, n2, n3) = (node("n1"), node("n2"), node("n3"));
    a.renew_node(&n1, 30_000).await.unwrap();
    b.renew_node(&n2, 300).await.unwrap();
    assert_eq!(b.live_nodes().await.unwrap(), vec![n1.clone(), n2.clone()]);
    assert!(other.live_nodes().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(a.live_nodes().await.unwrap(), vec![n1.clone()]);
    assert!(b.renew_node_lapsed(&n2, 30_000).await.unwrap(), "lapsed membership reported");
    assert!(!b.renew_node_lapsed(&n2, 30_000).await.unwrap());
    assert_eq!(a.live_nodes().await.unwrap(), vec![n1.clone(), n2.clone()]);

    // connect / disconnect / presence / last_seen
    let (u1, u2, u3, u4) = (uid(), uid(), uid(), uid());
    assert_eq!(a.presence(u1).await.unwrap(), None);
    a.user_connected(u1, "n1", 1000).await.unwrap();
    expect_events(&mut ev, &[located(u1, "n1", true), presence_ev(u1, true, None)]).await;
    assert_eq!(b.presence(u1).await.unwrap(), Some(PresenceRecord { online: true, last_seen: None }));
    b.user_connected(u1, "n2", 1001).await.unwrap();
    expect_events(&mut ev, &[located(u1, "n2", true)]).await;
    expect_quiet(&mut ev).await; // already online: no Presence
    assert_eq!(a.nodes_of(&[u1, u2]).await.unwrap(), vec![vec!["n1".to_string(), "n2".into()], vec![]]);
    a.user_disconnected(u1, "n1", 2000).await.unwrap();
    expect_events(&mut ev, &[located(u1, "n1", false)]).await;
    expect_quiet(&mut ev).await; // still on n2
    assert_eq!(a.presence(u1).await.unwrap(), Some(PresenceRecord { online: true, last_seen: None }));
    b.user_disconnected(u1, "n2", 3000).await.unwrap();
    expect_events(&mut ev, &[located(u1, "n2", false), presence_ev(u1, false, Some(3000))]).await;
    assert_eq!(a.presence(u1).await.unwrap(), Some(PresenceRecord { online: false, last_seen: Some(3000) }));
    // a repeated disconnect changes nothing and publishes nothing
    b.user_disconnected(u1, "n2", 4000).await.unwrap();
    expect_quiet(&mut ev).await;
    a.user_connected(u1, "n1", 5000).await.unwrap();
    expect_events(&mut ev, &[located(u1, "n1", true), presence_ev(u1, true, None)]).await;
    assert_eq!(a.presence(u1).await.unwrap(), Some(PresenceRecord { online: true, last_seen: Some(3000) }));

    // nodes_of for several users in one call, filtering an expired node
    a.renew_node(&n3, 400).await.unwrap();
    a.user_connected(u2, "n3", 6000).await.unwrap();
    a.user_connected(u2, "n2", 6001).await.unwrap();
    a.user_connected(u3, "n2", 6002).await.unwrap();
    a.user_connected(u4, "n3", 6003).await.unwrap();
    let users = [u1, u2, u3, u4, uid()];
    assert_eq!(
        b.nodes_of(&users).await.unwrap(),
        vec![
            vec!["n1".to_string()],
            vec!["n2".into(), "n3".into()],
            vec!["n2".into()],
            vec!["n3".into()],
            vec![]
        ]
    );
    assert!(b.nodes_of(&[]).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(550)).await; // n3 expires
    assert_eq!(
        b.nodes_of(&users).await.unwrap(),
        vec![vec!["n1".to_string()], vec!["n2".into()], vec!["n2".into()], vec![], vec![]]
    );
    assert_eq!(b.presence(u4).await.unwrap(), Some(PresenceRecord { online: false, last_seen: None }));
    assert_eq!(a.dead_nodes().await.unwrap(), vec!["n3".to_string()]);
    // drain the events of the connects above
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(next_event(&mut ev).await);
    }
    assert_eq!(seen.iter().filter(|e| matches!(e, ClusterEvent::Presence { .. })).count(), 3);
    expect_quiet(&mut ev).await;

    // clear_node of the dead n3, concurrently from both nodes: 2 users cleared in total
    let (ca, cb) = tokio::join!(a.clear_node("n3", 7000), b.clear_node("n3", 7000));
    assert_eq!(ca.unwrap() + cb.unwrap(), 2);
    assert_eq!(a.clear_node("n3", 7001).await.unwrap(), 0, "idempotent");
    assert!(a.dead_nodes().await.unwrap().is_empty());
    let mut got = vec![next_event(&mut ev).await, next_event(&mut ev).await, next_event(&mut ev).await];
    expect_quiet(&mut ev).await;
    got.sort_by_key(|e| format!("{e:?}"));
    let mut want =
        vec![located(u2, "n3", false), located(u4, "n3", false), presence_ev(u4, false, Some(7000))];
    want.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(got, want);
    assert_eq!(a.presence(u4).await.unwrap(), Some(PresenceRecord { online: false, last_seen: Some(7000) }));
    assert_eq!(a.presence(u2).await.unwrap(), Some(PresenceRecord { online: true, last_seen: None }));

    // leave: n2 holds u2 and u3; u2 and u3 go offline
    b.leave("n2", 8000).await.unwrap();
    assert_eq!(a.live_nodes().await.unwrap(), vec![n1.clone()]);
    let mut got: Vec<ClusterEvent> = Vec::new();
    for _ in 0..4 {
        got.push(next_event(&mut ev).await);
    }
    expect_quiet(&mut ev).await;
    for u in [u2, u3] {
        let i = got.iter().position(|e| *e == located(u, "n2", false)).expect("Located");
        let j = got.iter().position(|e| *e == presence_ev(u, false, Some(8000))).expect("Presence");
        assert!(i < j, "Located precedes Presence");
        assert_eq!(
            a.presence(u).await.unwrap(),
            Some(PresenceRecord { online: false, last_seen: Some(8000) })
        );
    }
    assert_eq!(a.nodes_of(&[u1, u2, u3]).await.unwrap(), vec![vec!["n1".to_string()], vec![], vec![]]);
    assert!(a.dead_nodes().await.unwrap().is_empty());

    // clear_node of a live node: its marks are current and stay
    a.user_connected(u3, "n1", 9000).await.unwrap();
    expect_events(&mut ev, &[located(u3, "n1", true), presence_ev(u3, true, None)]).await;
    assert_eq!(a.clear_node("n1", 9050).await.unwrap(), 0);
    assert_eq!(a.nodes_of(&[u1, u3]).await.unwrap(), vec![vec!["n1".to_string()], vec!["n1".to_string()]]);
    // leave (also what a node does at start, for its previous run): membership and marks go
    a.leave("n1", 9100).await.unwrap();
    assert_eq!(a.live_nodes().await.unwrap(), Vec::<NodeInfo>::new());
    assert_eq!(a.nodes_of(&[u1, u3]).await.unwrap(), vec![Vec::<String>::new(), vec![]]);
    for _ in 0..4 {
        next_event(&mut ev).await;
    }

    // a large node (more than one clear batch) in one call, once its membership expired
    let started = Instant::now();
    a.renew_node(&n1, 3_000).await.unwrap();
    let many: Vec<UserId> = (0..1100).map(|_| uid()).collect();
    for u in &many {
        b.user_connected(*u, "n1", 10_000).await.unwrap();
    }
    assert_eq!(b.nodes_of(&many).await.unwrap().iter().filter(|l| l.len() == 1).count(), 1100);
    tokio::time::sleep(Duration::from_millis(3_100).saturating_sub(started.elapsed())).await;
    let mut big = b.events();
    assert_eq!(b.clear_node("n1", 11_000).await.unwrap(), 1100);
    assert!(b.nodes_of(&many).await.unwrap().iter().all(|l| l.is_empty()));
    let mut offline = 0;
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(500), big.recv()).await {
        if matches!(e, ClusterEvent::Presence { online: false, .. }) {
            offline += 1;
        }
    }
    assert_eq!(offline, 1100);
    expect_quiet(&mut ev_other).await;
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 2. restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart() {
    if !redis_installed() {
        return;
    }
    tokio::time::timeout(TEST_LIMIT, restart_body()).await.expect("test time limit");
}

async fn restart_body() {
    let dir = scratch_dir("restart");
    let mut redis = start_redis(&dir).await;
    let port = redis.port;
    let url = format!("redis://127.0.0.1:{port}");
    let p = prefix("restart");
    let d = RedisDirectory::connect(&url, &p).await.unwrap();
    let mut ev = d.events();
    let n = node("r1");
    d.renew_node(&n, 30_000).await.unwrap();
    let u = uid();
    d.user_connected(u, "r1", 1).await.unwrap();
    expect_events(&mut ev, &[located(u, "r1", true), presence_ev(u, true, None)]).await;

    redis.kill();
    // every call fails with Unavailable, each within the command timeout (500 ms): the first
    // ones may still be in flight when the connection drops; later ones are rejected at once
    let mut worst = Duration::ZERO;
    let mut latencies = Vec::new();
    for _ in 0..4 {
        for i in 0..6 {
            let t = Instant::now();
            let r = match i {
                0 => d.renew_node(&n, 30_000).await.map(|_| ()),
                1 => d.user_connected(uid(), "r1", 2).await,
                2 => d.user_disconnected(u, "r1", 2).await,
                3 => d.presence(u).await.map(|_| ()),
                4 => d.nodes_of(&[u, uid()]).await.map(|_| ()),
                _ => d.ping().await,
            };
            let el = t.elapsed();
            assert!(is_unavailable(&r), "call {i}: {r:?}");
            worst = worst.max(el);
            latencies.push(el);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort();
    println!(
        "RESULT fail-fast while down: {} calls, median {:?}, worst {worst:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    assert!(worst < Duration::from_secs(1), "fail-fast took {worst:?}");

    // connecting while Redis is down returns quickly and works once Redis is back
    let t = Instant::now();
    let late = RedisDirectory::connect(&url, &p).await.unwrap();
    let connect_down = t.elapsed();
    assert!(connect_down < Duration::from_millis(1500), "connect while down took {connect_down:?}");
    assert!(is_unavailable(&late.ping().await));
    println!("RESULT connect() while Redis is down returned in {connect_down:?}");

    let _restarted = {
        let p2 = spawn_server(&dir, port, &[]);
        let t = Instant::now();
        wait_ready(port).await;
        let ready = t.elapsed();
        let back = renew_until_ok(&d, &n, Duration::from_secs(10)).await;
        println!(
            "RESULT restart: server ready after {ready:?}; renew_node Ok {back:?} after spawn-ready wait"
        );
        let back_total = t.elapsed();
        assert!(back_total < Duration::from_secs(5), "recovery took {back_total:?}");
        println!("RESULT restart: operations back {back_total:?} after the server was respawned");
        p2
    };
    let resync = wait_resync(&mut ev, Duration::from_secs(10)).await;
    println!("RESULT restart: Resync emitted {resync:?} after renew recovered");
    // the script cache is empty after the restart: NOSCRIPT → EVAL fallback, transparently
    let u2 = uid();
    d.user_connected(u2, "r1", 3).await.unwrap();
    expect_events(&mut ev, &[located(u2, "r1", true), presence_ev(u2, true, None)]).await;
    assert_eq!(d.presence(u2).await.unwrap(), Some(PresenceRecord { online: true, last_seen: None }));
    // the directory that connected while Redis was down works too, events included
    renew_until_ok(&late, &node("r2"), Duration::from_secs(5)).await;
    let mut late_ev = late.events();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(5), "late directory receives events");
        let _ = late.user_disconnected(u2, "r1", 4).await;
        let _ = late.user_connected(u2, "r1", 4).await;
        if let Ok(Ok(ClusterEvent::Located { .. })) =
            tokio::time::timeout(Duration::from_millis(200), late_ev.recv()).await
        {
            break;
        }
    }
    assert_eq!(late.live_nodes().await.unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 3. sentinel failover

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover() {
    if !redis_installed() {
        return;
    }
    tokio::time::timeout(TEST_LIMIT, sentinel_body()).await.expect("test time limit");
}

fn field(info: &str, key: &str) -> Option<String> {
    // `redis-cli` prints `SENTINEL MASTER` replies as alternating key / value lines
    let lines: Vec<&str> = info.lines().map(str::trim).collect();
    lines.iter().position(|l| *l == key).and_then(|i| lines.get(i + 1)).map(|v| v.to_string())
}

async fn sentinel_body() {
    let dir = scratch_dir("sentinel");
    let mut primary = start_redis(&dir).await;
    let replica_port = free_port();
    let replica = spawn_server(&dir, replica_port, &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    wait_ready(replica.port).await;
    wait_until("replica in sync", Duration::from_secs(10), || async {
        cli(replica_port, &["info", "replication"]).await.contains("master_link_status:up")
    })
    .await;
    let sentinels: Vec<Proc> = (0..3).map(|_| spawn_sentinel(&dir, free_port(), primary.port)).collect();
    for s in &sentinels {
        let port = s.port;
        wait_until("sentinel sees replica and peers", Duration::from_secs(20), || async move {
            let m = cli(port, &["sentinel", "master", "svc"]).await;
            field(&m, "num-slaves").as_deref() == Some("1")
                && field(&m, "num-other-sentinels").as_deref() == Some("2")
        })
        .await;
    }
    let hosts: Vec<String> = sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let url = format!("redis-sentinel://{}/svc", hosts.join(","));
    let d = RedisDirectory::connect(&url, &prefix("sent")).await.unwrap();
    let mut ev = d.events();
    let n = node("s1");
    d.renew_node(&n, 60_000).await.unwrap();
    let u = uid();
    d.user_connected(u, "s1", 1).await.unwrap();
    expect_events(&mut ev, &[located(u, "s1", true), presence_ev(u, true, None)]).await;
    // let the write reach the replica before the primary dies
    cli(primary.port, &["wait", "1", "1000"]).await;

    let t = Instant::now();
    primary.kill();
    let back = renew_until_ok(&d, &n, Duration::from_secs(30)).await;
    println!("RESULT sentinel: renew_node Ok {back:?} after the primary was killed");
    assert!(back < Duration::from_secs(15), "failover took {back:?}");
    let addr = cli(sentinels[0].port, &["sentinel", "get-master-addr-by-name", "svc"]).await;
    assert!(addr.contains(&replica_port.to_string()), "promoted replica: {addr}");
    assert_eq!(d.live_nodes().await.unwrap(), vec![n.clone()]);
    assert_eq!(d.nodes_of(&[u]).await.unwrap(), vec![vec!["s1".to_string()]], "replicated marks");
    let resync = wait_resync(&mut ev, Duration::from_secs(15)).await;
    println!("RESULT sentinel: Resync {:?} after the primary was killed", t.elapsed());
    let _ = resync;
    let u2 = uid();
    d.user_connected(u2, "s1", 2).await.unwrap();
    expect_events(&mut ev, &[located(u2, "s1", true), presence_ev(u2, true, None)]).await;
    d.user_disconnected(u, "s1", 3).await.unwrap();
    expect_events(&mut ev, &[located(u, "s1", false), presence_ev(u, false, Some(3))]).await;
    println!("RESULT sentinel: events flowing {:?} after the primary was killed", t.elapsed());
    drop(d);
    drop(sentinels);
    drop(replica);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 4. round trips

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips() {
    if !redis_installed() {
        return;
    }
    tokio::time::timeout(TEST_LIMIT, round_trips_body()).await.expect("test time limit");
}

fn commandstat(info: &str, cmd: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `op` between MONITOR markers; returns the client (non-Lua) commands Redis saw.
async fn monitored<F: std::future::Future<Output = ()>>(
    port: u16,
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    tag: &str,
    op: F,
) -> Vec<String> {
    op.await;
    let marker = format!("END-{tag}");
    cli(port, &["echo", &marker]).await;
    let mut out = Vec::new();
    loop {
        let l =
            tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.unwrap().unwrap().unwrap();
        if l.contains(&marker) {
            return out;
        }
        if !l.contains(" lua]") && !l.contains("\"echo\"") && !l.contains("\"info\"") {
            out.push(l);
        }
    }
}

async fn round_trips_body() {
    let dir = scratch_dir("rtt");
    let redis = start_redis(&dir).await;
    let port = redis.port;
    let url = format!("redis://127.0.0.1:{port}");
    let cfg =
        RedisDirectoryConfig { subscriber_ping_interval: Duration::from_secs(3600), ..Default::default() };
    let d = RedisDirectory::connect_with(&url, &prefix("rtt"), cfg).await.unwrap();
    let n = node("t1");
    let users: Vec<UserId> = (0..50).map(|_| uid()).collect();
    // warm the script cache (first calls: NOSCRIPT then EVAL)
    let before_warm = cli(port, &["info", "commandstats"]).await;
    d.renew_node(&n, 30_000).await.unwrap();
    d.user_connected(users[0], "t1", 1).await.unwrap();
    d.user_disconnected(users[0], "t1", 2).await.unwrap();
    d.nodes_of(&users).await.unwrap();
    d.presence(users[0]).await.unwrap();
    d.live_nodes().await.unwrap();
    d.clear_node("t9", 3).await.unwrap();
    let warm = cli(port, &["info", "commandstats"]).await;
    assert_eq!(commandstat(&warm, "eval") - commandstat(&before_warm, "eval"), 7, "one EVAL per script");

    let mut mon = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "monitor"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(mon.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().unwrap().trim(), "OK");

    let before = cli(port, &["info", "commandstats"]).await;
    let seen = monitored(port, &mut lines, "renew", async {
        d.renew_node(&n, 30_000).await.unwrap();
    })
    .await;
    println!("RESULT renew_node: {} client command(s): {seen:?}", seen.len());
    assert_eq!(seen.len(), 1);
    assert!(seen[0].to_lowercase().contains("\"evalsha\""));
    let seen =
        monitored(port, &mut lines, "conn", async { d.user_connected(users[1], "t1", 5).await.unwrap() })
            .await;
    println!("RESULT user_connected: {} client command(s)", seen.len());
    assert_eq!(seen.len(), 1);
    let seen =
        monitored(port, &mut lines, "disc", async { d.user_disconnected(users[1], "t1", 6).await.unwrap() })
            .await;
    println!("RESULT user_disconnected: {} client command(s)", seen.len());
    assert_eq!(seen.len(), 1);
    let seen = monitored(port, &mut lines, "nodes_of", async {
        assert_eq!(d.nodes_of(&users).await.unwrap().len(), 50);
    })
    .await;
    println!("RESULT nodes_of(50 users): {} client command(s)", seen.len());
    assert_eq!(seen.len(), 1);
    let seen = monitored(port, &mut lines, "live", async {
        d.live_nodes().await.unwrap();
    })
    .await;
    assert_eq!(seen.len(), 1);
    let seen = monitored(port, &mut lines, "presence", async {
        d.presence(users[1]).await.unwrap();
    })
    .await;
    assert_eq!(seen.len(), 1);
    let after = cli(port, &["info", "commandstats"]).await;
    assert_eq!(commandstat(&after, "evalsha") - commandstat(&before, "evalsha"), 6);
    assert_eq!(commandstat(&after, "eval"), commandstat(&before, "eval"));
    println!(
        "RESULT commandstats delta over 6 calls: evalsha +{}, eval +{}, set +{}, sadd +{}, publish +{}",
        commandstat(&after, "evalsha") - commandstat(&before, "evalsha"),
        commandstat(&after, "eval") - commandstat(&before, "eval"),
        commandstat(&after, "set") - commandstat(&before, "set"),
        commandstat(&after, "sadd") - commandstat(&before, "sadd"),
        commandstat(&after, "publish") - commandstat(&before, "publish"),
    );
    drop(mon);
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 5. frozen server (SIGSTOP): calls time out fast; the subscriber's PING watchdog notices

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis() {
    if !redis_installed() {
        return;
    }
    tokio::time::timeout(TEST_LIMIT, frozen_body()).await.expect("test time limit");
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

async fn frozen_body() {
    let dir = scratch_dir("frozen");
    let redis = start_redis(&dir).await;
    let pid = redis.child.as_ref().unwrap().id();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let cfg =
        RedisDirectoryConfig { subscriber_ping_interval: Duration::from_millis(300), ..Default::default() };
    let d = RedisDirectory::connect_with(&url, &prefix("frozen"), cfg).await.unwrap();
    let mut ev = d.events();
    let n = node("f1");
    d.renew_node(&n, 30_000).await.unwrap();
    // several subscriber PINGs pass while subscribed; events still flow, no Resync
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let u = uid();
    d.user_connected(u, "f1", 1).await.unwrap();
    expect_events(&mut ev, &[located(u, "f1", true), presence_ev(u, true, None)]).await;
    expect_quiet(&mut ev).await;

    signal(pid, "-STOP");
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let r = d.presence(u).await;
        worst = worst.max(t.elapsed());
        assert!(is_unavailable(&r), "{r:?}");
    }
    println!("RESULT frozen server: worst call latency {worst:?}");
    assert!(worst < Duration::from_secs(1));
    signal(pid, "-CONT");
    let back = renew_until_ok(&d, &n, Duration::from_secs(10)).await;
    println!("RESULT frozen server: renew_node Ok {back:?} after SIGCONT");
    wait_resync(&mut ev, Duration::from_secs(10)).await;
    let u2 = uid();
    d.user_connected(u2, "f1", 2).await.unwrap();
    expect_events(&mut ev, &[located(u2, "f1", true), presence_ev(u2, true, None)]).await;
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

/// Debian's `redis-server` (scripts/redis installs it; `scripts/test` does before the tests).
fn redis_installed() -> bool {
    let found = Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("redis-server not installed (scripts/redis install): Redis directory tests skipped");
    }
    found
}
