//! The cluster end to end: three real nodes sharing Cassandra (`SWITCHBOARD_TEST_CASSANDRA`)
//! and Redis (`SWITCHBOARD_TEST_REDIS`), behind a real HAProxy when `haproxy` is installed.
//! Messages cross nodes (sender on one, recipient on another, owner on a third), presence
//! crosses nodes, and under load one node is SIGKILLed and restarted and the owner of busy
//! conversations is SIGSTOPped past its lease and resumed; and, on a Redis of its own under
//! Sentinel, the Redis primary is killed (failover), then Redis is down for 6 s and comes back
//! empty. Every run asserts: 0 acknowledged messages lost, 0 duplicates, no seq gaps, every
//! stored message written under an owner epoch that never goes back, the directory knows the
//! node of every connected user, and clients back within 10 s. `#[ignore]`d: `scripts/test` runs it
//! with the servers started (`-- --ignored cluster::`).

use crate::harness::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 3;

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) struct Cluster {
    env: Vec<(String, String)>,
    ports: Vec<u16>,
    dirs: Vec<Arc<tempfile::TempDir>>,
    pub(crate) nodes: Vec<Option<Server>>,
    lb: Option<(String, String)>,
}

impl Cluster {
    /// Three nodes on one fresh keyspace and Redis prefix, on the test Redis; `None` if the
    /// servers are not there.
    async fn start(name: &str) -> Option<Cluster> {
        let redis = std::env::var("SWITCHBOARD_TEST_REDIS").ok()?;
        Cluster::start_on(name, &format!("redis://{redis}")).await
    }

    /// Three nodes on one fresh keyspace, with the directory at `redis_url`.
    async fn start_on(name: &str, redis_url: &str) -> Option<Cluster> {
        Cluster::start_with_store(
            name,
            redis_url,
            None,
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        )
        .await
    }

    /// Three nodes with the directory at `redis_url`, on Cassandra at `cassandra_nodes` (default:
    /// the test node) in a fresh keyspace with this replication.
    pub(crate) async fn start_with_store(
        name: &str,
        redis_url: &str,
        cassandra_nodes: Option<&str>,
        replication: &str,
    ) -> Option<Cluster> {
        let (Ok(cassandra), Ok(_), Ok(s3)) = (
            std::env::var("SWITCHBOARD_TEST_CASSANDRA"),
            std::env::var("SWITCHBOARD_TEST_REDIS"),
            std::env::var("SWITCHBOARD_TEST_S3_ENDPOINT"),
        ) else {
            eprintln!(
                "cluster test skipped: SWITCHBOARD_TEST_CASSANDRA, SWITCHBOARD_TEST_REDIS and \
                 SWITCHBOARD_TEST_S3_ENDPOINT are not all set"
            );
            return None;
        };
        let s3_var = |k: &str| std::env::var(k).unwrap_or_default();
        let keyspace = format!("sbtest_{name}_{}", std::process::id());
        let env: Vec<(String, String)> = [
            ("SWITCHBOARD_STORE_BACKEND", "cassandra".to_owned()),
            ("SWITCHBOARD_CASSANDRA_NODES", cassandra_nodes.map(str::to_owned).unwrap_or(cassandra)),
            ("SWITCHBOARD_CASSANDRA_KEYSPACE", keyspace),
            ("SWITCHBOARD_CASSANDRA_REPLICATION", replication.to_owned()),
            ("SWITCHBOARD_CASSANDRA_CONSISTENCY", "local_quorum".to_owned()),
            ("SWITCHBOARD_CASSANDRA_TIMEOUT_MS", "3000".to_owned()),
            ("SWITCHBOARD_PRESENCE_BACKEND", "redis".to_owned()),
            ("SWITCHBOARD_REDIS_URL", redis_url.to_owned()),
            ("SWITCHBOARD_REDIS_PREFIX", format!("sbtest:{name}:{}:", std::process::id())),
            ("SWITCHBOARD_CLUSTER_ENABLED", "true".to_owned()),
            ("SWITCHBOARD_CLUSTER_SECRET", random_hex(32)),
            ("SWITCHBOARD_MASTER_KEY", random_hex(32)),
            ("SWITCHBOARD_PEER_ADDR", "127.0.0.1:0".to_owned()),
            ("SWITCHBOARD_MEMBERSHIP_TTL_MS", "1500".to_owned()),
            ("SWITCHBOARD_MEMBERSHIP_RENEW_MS", "300".to_owned()),
            ("SWITCHBOARD_PEER_TIMEOUT_MS", "3000".to_owned()),
            ("SWITCHBOARD_OWNER_SHARDS", "2".to_owned()),
            ("SWITCHBOARD_BLOB_BACKEND", "s3".to_owned()),
            ("SWITCHBOARD_S3_ENDPOINT", s3),
            ("SWITCHBOARD_S3_BUCKET", s3_var("SWITCHBOARD_TEST_S3_BUCKET")),
            ("SWITCHBOARD_S3_ACCESS_KEY", s3_var("SWITCHBOARD_TEST_S3_ACCESS_KEY")),
            ("SWITCHBOARD_S3_SECRET_KEY", s3_var("SWITCHBOARD_TEST_S3_SECRET_KEY")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        schema_apply(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut cluster = Cluster {
            env,
            ports: (0..NODES).map(|_| free_port()).collect(),
            dirs: (0..NODES).map(|_| Arc::new(tempfile::tempdir().unwrap())).collect(),
            nodes: (0..NODES).map(|_| None).collect(),
            lb: None,
        };
        for i in 0..NODES {
            cluster.start_node(i).await;
        }
        cluster.start_lb();
        // Every node sees the others (membership renews every 300 ms).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        Some(cluster)
    }

    pub(crate) async fn start_node(&mut self, i: usize) {
        let mut env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let node_id = format!("node{}", i + 1);
        let http = format!("127.0.0.1:{}", self.ports[i]);
        env.push(("SWITCHBOARD_NODE_ID", &node_id));
        env.push(("SWITCHBOARD_HTTP_ADDR", &http));
        self.nodes[i] = Some(Server::start_with(self.dirs[i].clone(), &env).await);
    }

    /// HAProxy in front of the nodes, if it is installed (scripts/haproxy).
    fn start_lb(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/haproxy");
        if !script.exists() || std::process::Command::new("haproxy").arg("-v").output().is_err() {
            eprintln!("cluster test: haproxy not installed; clients connect to nodes directly");
            return;
        }
        let port = free_port();
        let name = format!("sbtest-{}-{port}", std::process::id());
        let mut args = vec!["start".to_owned(), name.clone(), port.to_string()];
        args.extend(self.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        let status = std::process::Command::new(&script).args(&args).status().unwrap();
        assert!(status.success(), "scripts/haproxy {args:?}");
        self.lb = Some((name, format!("127.0.0.1:{port}")));
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node running")
    }

    /// The endpoints clients may use: the load balancer first, then every node.
    fn endpoints(&self) -> Vec<String> {
        self.lb.iter().map(|(_, a)| a.clone()).chain((0..NODES).map(|i| self.addr(i))).collect()
    }

    async fn metric(&self, i: usize, name: &str) -> u64 {
        let (_, text) = Api::at(&self.addr(i)).get_text("/metrics").await;
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.iter().flatten() {
            node.signal("CONT");
        }
        if let Some((name, _)) = &self.lb {
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/haproxy");
            let _ = std::process::Command::new(script).args(["stop", name]).status();
        }
    }
}

#[tokio::test]
#[ignore = "needs Cassandra and Redis: run by scripts/test"]
async fn cluster_messages_and_presence_cross_nodes() {
    let Some(cluster) = Cluster::start("xnode").await else { return };
    let api = Api::at(&cluster.addr(0));
    let alice = api.register("alice").await;
    let bob = Api::at(&cluster.addr(1)).register("bob").await;
    let conversation = api.direct(&alice, &bob).await;
    let mut a = Ws::try_connect(&cluster.addr(0), &alice, WAIT).await.expect("alice on node1");
    let mut b = Ws::try_connect(&cluster.addr(1), &bob, WAIT).await.expect("bob on node2");
    assert_eq!(a.welcome["node"], "node1");
    assert_eq!(b.welcome["node"], "node2");
    for s in [&mut a, &mut b] {
        s.send(json!({"type":"sync","id":"s","cursors":{}})).await;
        s.expect("sync_done").await;
    }
    // alice → bob and back, whichever node owns the conversation.
    for i in 1..=5u64 {
        let sent = a.send_message(&conversation, &format!("a{i}"), &format!("hello {i}")).await;
        assert_eq!(sent["seq"], 2 * i - 1);
        let m = b.expect("message").await;
        assert_eq!(
            (m["seq"].as_u64(), m["body"].as_str()),
            (Some(2 * i - 1), Some(format!("hello {i}").as_str()))
        );
        let sent = b.send_message(&conversation, &format!("b{i}"), &format!("re {i}")).await;
        assert_eq!(sent["seq"], 2 * i);
        assert_eq!(a.expect("message").await["seq"], 2 * i);
    }
    // A retry of an acked send on another node is answered with the original.
    let mut a3 = Ws::try_connect(&cluster.addr(2), &alice, WAIT).await.expect("alice on node3");
    let again = a3.send_message(&conversation, "a1", "hello 1").await;
    assert_eq!(again["seq"], 1);
    // Receipts cross nodes too.
    b.send(json!({"type":"read","conversation_id":conversation,"seq":10})).await;
    let receipt = a.expect("receipt").await;
    assert_eq!(receipt["read_seq"], 10);
    // Presence: alice on node1 watches bob on node2 go offline and come back on node3.
    a.send(json!({"type":"presence_subscribe","id":"p","user_ids":[bob.user_id]})).await;
    assert_eq!(a.expect("presence").await["online"], true);
    b.close().await;
    let p = a.expect("presence").await;
    assert_eq!((p["online"].as_bool(), p["last_seen"].is_number()), (Some(false), true), "{p}");
    let mut b3 = Ws::try_connect(&cluster.addr(2), &bob, WAIT).await.expect("bob on node3");
    assert_eq!(a.expect("presence").await["online"], true);
    // A group across the three nodes: changes made through any node go to the group's owner
    // node; messages reach members on every node; a removal made on one node stops delivery
    // to a member on another at once.
    let carol = Api::at(&cluster.addr(1)).register("carol").await;
    let mut c = Ws::try_connect(&cluster.addr(1), &carol, WAIT).await.expect("carol on node2");
    for s in [&mut b3, &mut c] {
        s.send(json!({"type":"sync","id":"s","cursors":{}})).await;
        s.expect("sync_done").await;
    }
    let (status, v) = api
        .post(
            "/v1/conversations/group",
            Some(&alice.token),
            json!({"title": "three nodes", "members": [bob.user_id, carol.user_id]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let group = v["conversation_id"].as_str().unwrap().to_owned();
    for i in 0..NODES {
        let (status, v) = Api::at(&cluster.addr(i))
            .call(
                "PATCH",
                &format!("/v1/conversations/{group}"),
                &alice.token,
                Some(json!({"title": format!("via node{}", i + 1)})),
            )
            .await;
        assert_eq!(status, 200, "rename through node{}: {v}", i + 1);
    }
    let sent = a.send_message(&group, "g1", "to the group").await;
    for s in [&mut b3, &mut c] {
        loop {
            let m = s.expect("message").await;
            if m["seq"] == sent["seq"] {
                assert_eq!(m["body"], "to the group");
                break;
            }
        }
    }
    let (status, v) = Api::at(&cluster.addr(2))
        .call("DELETE", &format!("/v1/conversations/{group}/members/{}", carol.user_id), &alice.token, None)
        .await;
    assert_eq!(status, 200, "{v}");
    let removal = v["seq"].as_u64().unwrap();
    loop {
        if c.expect("message").await["seq"].as_u64() == Some(removal) {
            break;
        }
    }
    let after = a.send_message(&group, "g2", "carol is gone").await;
    loop {
        if b3.expect("message").await["seq"] == after["seq"] {
            break;
        }
    }
    c.expect_none("message", Duration::from_millis(500)).await;
    let (status, _) = Api::at(&cluster.addr(1))
        .get(&format!("/v1/conversations/{group}/messages/{}/receipts", after["seq"]), Some(&carol.token))
        .await;
    assert_eq!(status, 403, "a removed member reads nothing after the removal, on any node");
    // An attachment uploaded through node1 and sent there reaches bob on node3; node2 and
    // node3 serve it from the shared blob store (S3), and carol, removed, gets 403 anywhere.
    let pic = crate::attachments::picture(400, 300);
    let (status, up) = crate::attachments::upload(&api, &alice, &group, "map.png", &pic).await;
    assert_eq!(status, 201, "{up}");
    let id = up["upload_id"].as_str().unwrap().to_owned();
    a.send(json!({"type":"send","id":"f1","conversation_id":group,"client_msg_id":"f1","body":"","attachments":[id]}))
        .await;
    let sent = a.expect("sent").await;
    let shown = loop {
        let m = b3.expect("message").await;
        if m["seq"] == sent["seq"] {
            break m["attachments"][0].clone();
        }
    };
    let http = reqwest::Client::new();
    for node in [1, 2] {
        let base = format!("http://{}", cluster.addr(node));
        let thumb =
            http.get(format!("{base}{}", shown["thumbnail_url"].as_str().unwrap())).send().await.unwrap();
        assert_eq!(thumb.status().as_u16(), 200, "thumbnail through node{}", node + 1);
        let file =
            http.get(format!("{base}/v1/attachments/{id}")).bearer_auth(&bob.token).send().await.unwrap();
        assert_eq!(file.bytes().await.unwrap()[..], pic[..], "file through node{}", node + 1);
        let refused =
            http.get(format!("{base}/v1/attachments/{id}")).bearer_auth(&carol.token).send().await.unwrap();
        assert_eq!(refused.status().as_u16(), 403);
    }
    // Delivery went once per node, not per session.
    let mut deliveries = 0;
    for i in 0..NODES {
        deliveries += cluster.metric(i, "switchboard_peer_deliveries_total").await;
    }
    assert!(deliveries > 0, "events crossed nodes on the link");
    // The link's figures per peer are in /metrics.
    let (_, text) = Api::at(&cluster.addr(0)).get_text("/metrics").await;
    for peer in ["node2", "node3"] {
        assert!(text.contains(&format!("switchboard_peer_connected{{peer=\"{peer}\"}} 1")), "{text}");
        assert!(
            !text.contains(&format!("switchboard_peer_frames_sent_total{{peer=\"{peer}\"}} 0")),
            "{text}"
        );
    }
}

/// One sender of the chaos test: sends `client_msg_id`s in order, each retried (same id, new
/// connection, next endpoint) until acknowledged.
struct Sender {
    account: Account,
    conversation: String,
    prefix: String,
    /// Pause between two sends.
    pace: Duration,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    retried: AtomicU64,
    refused: AtomicU64,
    reconnects: AtomicU64,
    /// Longest time a sender was without a working connection, ms.
    worst_outage_ms: AtomicU64,
    /// The node each sender is connected to now (user id → node id).
    connected_to: Mutex<BTreeMap<String, String>>,
    /// Sends acknowledged so far.
    acked: AtomicU64,
}

impl Sender {
    async fn run(
        self,
        endpoints: Vec<String>,
        start: usize,
        stop: Arc<AtomicBool>,
        tally: Arc<Tally>,
    ) -> (String, BTreeMap<String, u64>) {
        let mut acked = BTreeMap::new();
        let mut at = start;
        let mut ws: Option<Ws> = None;
        let mut i = 0u64;
        let mut down_since: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let cmid = format!("{}-{i}", self.prefix);
            tally.sent.fetch_add(1, Ordering::Relaxed);
            let mut attempts = 0;
            loop {
                let Some(conn) = ws.as_mut() else {
                    down_since.get_or_insert_with(Instant::now);
                    at = (at + 1) % endpoints.len();
                    ws = Ws::try_connect(&endpoints[at], &self.account, Duration::from_secs(2)).await;
                    tally.reconnects.fetch_add(1, Ordering::Relaxed);
                    if ws.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                };
                if down_since.is_some() {
                    let node = conn.welcome["node"].as_str().unwrap_or_default().to_owned();
                    tally.connected_to.lock().unwrap().insert(self.account.user_id.clone(), node);
                }
                if let Some(since) = down_since.take() {
                    tally.worst_outage_ms.fetch_max(since.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                if attempts > 0 {
                    tally.retried.fetch_add(1, Ordering::Relaxed);
                }
                attempts += 1;
                let frame = json!({"type":"send","id":cmid,"conversation_id":self.conversation,"client_msg_id":cmid,"body":format!("body {cmid}")});
                if !conn.try_send(frame).await {
                    ws = None;
                    continue;
                }
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut answer = None;
                while let Some(frame) =
                    conn.next_within(deadline.saturating_duration_since(Instant::now())).await
                {
                    if frame["id"] == cmid.as_str() || frame["client_msg_id"] == cmid.as_str() {
                        answer = Some(frame);
                        break;
                    }
                }
                match answer {
                    Some(f) if f["type"] == "sent" => {
                        let seq = f["seq"].as_u64().unwrap();
                        if let Some(before) = acked.insert(cmid.clone(), seq) {
                            assert_eq!(before, seq, "one client_msg_id acked with two seqs");
                        }
                        tally.acked.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(f) if f["type"] == "error" => {
                        let code = f["code"].as_str().unwrap_or_default();
                        assert!(code == "unavailable" || code == "store_unavailable", "unexpected error {f}");
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // No answer in time (a paused or dead node): another connection.
                    _ => ws = None,
                }
            }
            i += 1;
            tokio::time::sleep(self.pace).await;
        }
        (self.conversation, acked)
    }
}

/// The chaos load: `pairs` senders (half through the load balancer, half straight to a node),
/// each with a reader that stays connected, idle, to node1 or node2 throughout.
pub(crate) struct Load {
    senders: Vec<tokio::task::JoinHandle<(String, BTreeMap<String, u64>)>>,
    conversations: Vec<String>,
    readers: Vec<Account>,
    /// Tasks that keep the readers' connections read (so they answer the server's pings).
    idle_readers: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    events: Mutex<Vec<String>>,
    started: Instant,
}

impl Load {
    /// `pairs` sender/reader pairs; each sender sends one message every `pace`.
    pub(crate) async fn start(cluster: &Cluster, pairs: usize, pace: Duration) -> Load {
        use futures_util::StreamExt;
        let endpoints = cluster.endpoints();
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        // Accounts and conversations, a few at a time (password hashing is the slow part).
        let mut accounts: Vec<(usize, Account, Account, String)> = futures_util::stream::iter(0..pairs)
            .map(|p| async move {
                let api = Api::at(&cluster.addr(p % NODES));
                let a = api.register(&format!("sender{p}")).await;
                let b = api.register(&format!("reader{p}")).await;
                let conversation = api.direct(&a, &b).await;
                (p, a, b, conversation)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        accounts.sort_by_key(|(p, ..)| *p);
        let (mut senders, mut conversations, mut readers, mut idle_readers) =
            (vec![], vec![], vec![], vec![]);
        for (p, a, b, conversation) in accounts {
            conversations.push(conversation.clone());
            // node1's readers survive its pause: the TCP connection outlives it.
            let at = p % 2;
            let mut idle = Ws::try_connect(&cluster.addr(at), &b, WAIT).await.expect("reader connects");
            tally.connected_to.lock().unwrap().insert(b.user_id.clone(), format!("node{}", at + 1));
            idle_readers.push(tokio::spawn(async move {
                while idle.next_within(Duration::from_secs(3600)).await.is_some() {}
            }));
            readers.push(b);
            let sender = Sender { account: a, conversation, prefix: format!("p{p}"), pace };
            // `run` moves to the next endpoint before connecting: the lb is endpoint 0.
            let start =
                if p % 2 == 0 { endpoints.len() - 1 } else { p % NODES + endpoints.len() - NODES - 1 };
            senders.push(tokio::spawn(sender.run(endpoints.clone(), start, stop.clone(), tally.clone())));
        }
        Load {
            senders,
            conversations,
            readers,
            idle_readers,
            stop,
            tally,
            events: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    }

    pub(crate) fn note(&self, what: &str) {
        let what = format!("{:.1} s: {what}", self.started.elapsed().as_secs_f64());
        eprintln!("chaos: {what}");
        self.events.lock().unwrap().push(what);
    }

    fn acked(&self) -> u64 {
        self.tally.acked.load(Ordering::Relaxed)
    }

    /// Stops sending, waits for every send to be acked, and checks the store: every acked
    /// message stored once at its acked seq, seqs gapless, nothing stored that was not acked,
    /// epochs never going back, clients never without a node for more than 10 s.
    pub(crate) async fn finish(self, cluster: &Cluster) {
        let located = check_locations(cluster, &self.tally).await;
        self.stop.store(true, Ordering::Relaxed);
        for reader in &self.idle_readers {
            reader.abort();
        }
        let mut acked: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for s in self.senders {
            let (conversation, a) =
                tokio::time::timeout(Duration::from_secs(60), s).await.expect("senders finish").unwrap();
            acked.insert(conversation, a);
        }
        let api = Api::at(&cluster.addr(1));
        let mut stored_total = 0;
        for (conversation, reader) in self.conversations.iter().zip(&self.readers) {
            let stored: Vec<(u64, String)> = all_messages(&api, conversation, &reader.token)
                .await
                .iter()
                .map(|m| (m["seq"].as_u64().unwrap(), m["client_msg_id"].as_str().unwrap().to_owned()))
                .collect();
            let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>(), "gapless seqs in {conversation}");
            let ids: BTreeSet<&String> = stored.iter().map(|(_, c)| c).collect();
            assert_eq!(ids.len(), stored.len(), "a duplicate in {conversation}");
            let by_id: BTreeMap<&String, u64> = stored.iter().map(|(s, c)| (c, *s)).collect();
            for (cmid, seq) in &acked[conversation] {
                assert_eq!(by_id.get(cmid), Some(seq), "acked {cmid} lost or moved in {conversation}");
            }
            stored_total += stored.len();
        }
        let epochs_checked = check_epochs(cluster, &self.conversations).await;
        let acked_total: usize = acked.values().map(BTreeMap::len).sum();
        let (mut claims, mut fenced) = (0, 0);
        for i in 0..NODES {
            claims += cluster.metric(i, "switchboard_ownership_claims_total").await;
            fenced += cluster.metric(i, "switchboard_appends_fenced_total").await;
        }
        let tally = &self.tally;
        let worst = tally.worst_outage_ms.load(Ordering::Relaxed);
        eprintln!(
            "chaos: {} sends, {acked_total} acked, {stored_total} stored, {} refused and retried, {} retries after \
             no answer, {} (re)connects, longest client outage {worst} ms, {claims} ownership claims, {fenced} \
             appends fenced, {epochs_checked} message epochs checked, {located} connected users located; events: {:?}",
            tally.sent.load(Ordering::Relaxed),
            tally.refused.load(Ordering::Relaxed),
            tally.retried.load(Ordering::Relaxed),
            tally.reconnects.load(Ordering::Relaxed),
            self.events.lock().unwrap()
        );
        assert_eq!(acked_total, stored_total, "every stored message was acked to its sender in the end");
        assert!(
            acked_total > self.conversations.len() * 20,
            "the cluster kept accepting sends: {acked_total}"
        );
        assert!(worst <= 10_000, "a client was without a working node for {worst} ms");
    }
}

#[tokio::test]
#[ignore = "needs Cassandra and Redis: run by scripts/test"]
async fn cluster_chaos_sigkill_and_paused_owner_lose_nothing() {
    let Some(mut cluster) = Cluster::start("chaos").await else { return };
    // 240 clients: 120 senders (a message every 600 ms each), 120 idle readers.
    let load = Load::start(&cluster, 120, Duration::from_millis(600)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.note("SIGKILL node3");
    cluster.nodes[2].as_mut().unwrap().kill9().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    load.note("restart node3");
    cluster.start_node(2).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.note("SIGSTOP node1 for 5 s (its lease is 1.5 s)");
    cluster.node(0).signal("STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    load.note("SIGCONT node1");
    cluster.node(0).signal("CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // node1's users were cleared while it was presumed dead; having resumed, it marks them
    // again (`finish` checks the directory knows every connected user's node).
    load.finish(&cluster).await;
}

/// Redis for one test, under Sentinel: a primary, a replica and three Sentinels, run by
/// `scripts/redis` in a home of their own (stopped on drop).
struct RedisSet {
    home: tempfile::TempDir,
    ports: BTreeMap<&'static str, u16>,
}

impl RedisSet {
    fn redis(&self, args: &[&str]) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis");
        let status = std::process::Command::new(script)
            .args(args)
            .env("SWITCHBOARD_REDIS_HOME", self.home.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "scripts/redis {args:?}");
    }

    fn start() -> RedisSet {
        let ports: BTreeMap<&'static str, u16> =
            ["primary", "replica", "s1", "s2", "s3"].into_iter().map(|n| (n, free_port())).collect();
        let set = RedisSet { home: tempfile::tempdir().unwrap(), ports };
        let port = |n: &str| set.ports[n].to_string();
        set.redis(&["start", "primary", &port("primary")]);
        set.redis(&["replica", "replica", &port("replica"), &port("primary")]);
        for s in ["s1", "s2", "s3"] {
            set.redis(&["sentinel", s, &port(s), &port("primary")]);
        }
        set
    }

    fn url(&self) -> String {
        let sentinels: Vec<String> =
            ["s1", "s2", "s3"].iter().map(|s| format!("127.0.0.1:{}", self.ports[s])).collect();
        format!("redis-sentinel://{}/switchboard", sentinels.join(","))
    }

    /// The primary's port as the Sentinels see it now.
    async fn primary_port(&self) -> u16 {
        let out = tokio::process::Command::new("redis-cli")
            .args(["-p", &self.ports["s1"].to_string(), "sentinel", "get-master-addr-by-name", "switchboard"])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|p| p.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for RedisSet {
    fn drop(&mut self) {
        self.redis(&["stop-all"]);
    }
}

#[tokio::test]
#[ignore = "needs Cassandra and Redis: run by scripts/test"]
async fn cluster_chaos_redis_failover_and_outage_lose_nothing() {
    if std::env::var("SWITCHBOARD_TEST_REDIS").is_err() {
        return;
    }
    let redis = RedisSet::start();
    let Some(cluster) = Cluster::start_on("redischaos", &redis.url()).await else { return };
    let load = Load::start(&cluster, 16, Duration::from_millis(150)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.note("SIGKILL the Redis primary (Sentinel fails over to the replica)");
    redis.redis(&["kill", "primary"]);
    let replica = redis.ports["replica"];
    let failed_over = Instant::now();
    while redis.primary_port().await != replica {
        assert!(failed_over.elapsed() < Duration::from_secs(30), "no Sentinel failover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.note(&format!("replica promoted after {:.1} s", failed_over.elapsed().as_secs_f64()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.note("Redis down: SIGKILL the only primary left, for 6 s");
    let before = load.acked();
    redis.redis(&["kill", "replica"]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = load.acked() - before;
    load.note(&format!("restart Redis, empty ({during} sends acked while it was down)"));
    redis.redis(&["start", "replica", &replica.to_string()]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(during > 0, "sends stopped while Redis was down");
    // Redis lost everything: each node found its membership lapsed and marked its users again.
    load.finish(&cluster).await;
}

/// Every sender's current node is among its nodes in the Redis directory (retried for a few
/// seconds: a sender may be reconnecting). Returns how many were checked.
async fn check_locations(cluster: &Cluster, tally: &Tally) -> usize {
    use switchboard::store::presence::ClusterDirectory;
    let env: BTreeMap<&str, &str> = cluster.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let directory = switchboard::store::redis_directory::RedisDirectory::connect(
        env["SWITCHBOARD_REDIS_URL"],
        env["SWITCHBOARD_REDIS_PREFIX"],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let expected: Vec<(String, String)> =
            tally.connected_to.lock().unwrap().iter().map(|(u, n)| (u.clone(), n.clone())).collect();
        let users: Vec<switchboard::model::UserId> = expected
            .iter()
            .map(|(u, _)| switchboard::model::UserId(uuid::Uuid::parse_str(u).unwrap()))
            .collect();
        let nodes = directory.nodes_of(&users).await.unwrap();
        let missing: Vec<_> =
            expected.iter().zip(&nodes).filter(|((_, node), found)| !found.contains(node)).collect();
        if missing.is_empty() {
            return expected.len();
        }
        if Instant::now() >= deadline {
            let live = directory.live_nodes().await;
            panic!("the directory lost connected users: {missing:?}; live nodes {live:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads `epoch` along `seq` straight from Cassandra: set on every row, never decreasing.
async fn check_epochs(cluster: &Cluster, conversations: &[String]) -> usize {
    let env: BTreeMap<&str, &str> = cluster.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(env["SWITCHBOARD_CASSANDRA_NODES"].split(','))
        .build()
        .await
        .unwrap();
    let ks = env["SWITCHBOARD_CASSANDRA_KEYSPACE"];
    let mut checked = 0;
    for conversation in conversations {
        let id = uuid::Uuid::parse_str(conversation).unwrap();
        let rows = session
            .query_unpaged(
                format!("SELECT seq, epoch FROM {ks}.messages WHERE conversation_id = ? AND bucket = 0"),
                (id,),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        let mut last = 0i64;
        for row in rows.rows::<(Option<i64>, Option<i64>)>().unwrap() {
            let (seq, epoch) = row.unwrap();
            let Some(seq) = seq else { continue };
            let epoch = epoch.unwrap_or_else(|| panic!("{conversation} seq {seq} has no epoch"));
            assert!(
                epoch >= last,
                "{conversation}: seq {seq} written under epoch {epoch} after epoch {last}"
            );
            last = epoch;
            checked += 1;
        }
    }
    checked
}
