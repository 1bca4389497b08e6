//! Tests of the links over real loopback TCP: calls and casts between nodes, the handshake
//! (wrong secret, wrong peer, wrong direction), reconnects and superseding, back-pressure,
//! dead-peer detection, bad frames, peer removal, config validation and MAC binding.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::future::join_all;
use hmac::Mac;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::handshake::{
    ACCEPT_LABEL, DIAL_LABEL, HandshakeError, accept_handshake, dial_handshake, handshake_mac,
};
use super::state::lock;
use super::*;
use crate::cluster::frame::{Envelope, MAX_FRAME_LEN, NONCE_LEN, encode_frame, write_frame};

const SECRET: &[u8] = b"switchboard-test-secret-0123456789abcdef";
const OTHER_SECRET: &[u8] = b"some-other-cluster-secret-0123456789abcdef";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Echo(u64),
    /// Replies after this many milliseconds.
    Slow(u64),
    /// Replies with "<callee> <- <caller>".
    Who,
    Text(String),
    Seq(u64),
    Blob(Vec<u8>),
}

struct TestHandler {
    name: String,
    casts: Mutex<Vec<u64>>,
}

impl Handler<Msg> for TestHandler {
    fn request(&self, peer: &str, body: Msg) -> Pin<Box<dyn Future<Output = Msg> + Send>> {
        let me = self.name.clone();
        let peer = peer.to_string();
        Box::pin(async move {
            match body {
                Msg::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Msg::Echo(ms)
                }
                Msg::Who => Msg::Text(format!("{me} <- {peer}")),
                other => other,
            }
        })
    }

    fn cast(&self, _peer: &str, body: Msg) {
        if let Msg::Seq(n) = body {
            lock(&self.casts).push(n);
        }
    }
}

impl TestHandler {
    fn casts(&self) -> Vec<u64> {
        lock(&self.casts).clone()
    }
}

fn config(id: &str) -> LinkConfig {
    let mut config = LinkConfig::new(id, SECRET, "127.0.0.1:0".parse().unwrap());
    config.heartbeat = Duration::from_millis(100);
    config.dead_after = Duration::from_millis(1000);
    config.call_timeout = Duration::from_secs(2);
    config.handshake_timeout = Duration::from_secs(1);
    config
}

async fn start(config: LinkConfig) -> (Links<Msg>, Arc<TestHandler>) {
    let handler = Arc::new(TestHandler { name: config.node_id.clone(), casts: Mutex::new(Vec::new()) });
    let links = Links::start(config, handler.clone()).await.unwrap();
    (links, handler)
}

/// Gives every node all the others as peers.
fn mesh(nodes: &[&Links<Msg>]) {
    let all: HashMap<String, SocketAddr> =
        nodes.iter().map(|n| (n.node_id().to_string(), n.local_addr())).collect();
    for node in nodes {
        node.set_peers(all.clone());
    }
}

fn peers(list: &[(&str, SocketAddr)]) -> HashMap<String, SocketAddr> {
    list.iter().map(|(id, addr)| (id.to_string(), *addr)).collect()
}

async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

fn peer_stats(links: &Links<Msg>, peer: &str) -> PeerStats {
    links.stats().into_iter().find(|s| s.peer == peer).expect("peer in stats")
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A hand-driven dialer: authenticates as `me` and then does whatever the test wants.
async fn raw_dial(target: SocketAddr, me: &str, target_id: &str) -> Result<TcpStream, HandshakeError> {
    let mut stream = TcpStream::connect(target).await.map_err(HandshakeError::Connect)?;
    dial_handshake::<Msg>(me, SECRET, &mut stream, target_id).await?;
    Ok(stream)
}

/// Reads until the other side closes; returns how long that took.
async fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    loop {
        match timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn two_nodes_call_both_ways_cast_in_order_and_concurrent_calls() {
    let (a, _ha) = start(config("node-a")).await;
    let (b, hb) = start(config("node-b")).await;
    mesh(&[&a, &b]);

    assert_eq!(a.call("node-b", Msg::Who).await, Ok(Msg::Text("node-b <- node-a".into())));
    assert_eq!(b.call("node-a", Msg::Who).await, Ok(Msg::Text("node-a <- node-b".into())));

    for n in 0..10_000 {
        a.cast("node-b", Msg::Seq(n)).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || hb.casts().len() == 10_000).await, "all casts arrive");
    assert_eq!(hb.casts(), (0..10_000).collect::<Vec<_>>(), "casts arrive in order");

    // Replies come back out of order (different delays) and in both directions at once.
    let from_a = (0..100u64).map(|i| {
        let a = a.clone();
        async move { (i, a.call("node-b", if i % 3 == 0 { Msg::Slow(i % 40) } else { Msg::Echo(i) }).await) }
    });
    let from_b = (0..100u64).map(|i| {
        let b = b.clone();
        async move { (i, b.call("node-a", Msg::Echo(1000 + i)).await) }
    });
    let (from_a, from_b) = tokio::join!(join_all(from_a), join_all(from_b));
    for (i, reply) in from_a {
        assert_eq!(reply, Ok(Msg::Echo(if i % 3 == 0 { i % 40 } else { i })));
    }
    for (i, reply) in from_b {
        assert_eq!(reply, Ok(Msg::Echo(1000 + i)));
    }

    assert!(eventually(Duration::from_secs(2), || peer_stats(&a, "node-b").last_rtt_us > 0).await);
    let stats = peer_stats(&a, "node-b");
    assert!(stats.connected && stats.listed);
    assert_eq!(stats.connections, 1);
    assert!(stats.frames_sent > 10_000 && stats.bytes_sent > stats.frames_sent * 4);
    assert_eq!(stats.pending_calls, 0);
    assert_eq!(peer_stats(&b, "node-a").frames_received, stats.frames_sent);
    assert_eq!(a.call("node-x", Msg::Echo(1)).await, Err(LinkError::UnknownPeer("node-x".into())));
    let too_big = a.try_cast("node-b", Msg::Blob(vec![0; MAX_FRAME_LEN + 1]));
    assert!(matches!(too_big, Err(LinkError::Encode { .. })), "{too_big:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_never_connects_and_calls_fail_in_time() {
    let (a, _) = start(config("node-a")).await;
    let mut other = config("node-b");
    other.secret = OTHER_SECRET.to_vec();
    let (b, _) = start(other).await;
    mesh(&[&a, &b]);
    let limit = Duration::from_millis(500);
    let started = Instant::now();
    let (ab, ba) = tokio::join!(
        a.call_within("node-b", Msg::Echo(1), limit),
        b.call_within("node-a", Msg::Echo(2), limit)
    );
    assert_eq!(ab, Err(LinkError::NotConnected("node-b".into())));
    assert_eq!(ba, Err(LinkError::NotConnected("node-a".into())));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!a.is_connected("node-b") && !b.is_connected("node-a"));
    // Also refused by hand: the raw dialer cannot verify b's challenge under a's secret.
    assert!(matches!(raw_dial(b.local_addr(), "node-a", "node-b").await, Err(HandshakeError::BadMac)));
    assert_eq!(peer_stats(&a, "node-b").connections, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn restarted_peer_on_new_port_works_again_and_inflight_call_is_closed() {
    let (a, _) = start(config("node-a")).await;
    let (b, _) = start(config("node-b")).await;
    mesh(&[&a, &b]);
    assert_eq!(a.call("node-b", Msg::Echo(1)).await, Ok(Msg::Echo(1)));

    let in_flight = tokio::spawn({
        let a = a.clone();
        async move { a.call_within("node-b", Msg::Slow(10_000), Duration::from_secs(20)).await }
    });
    assert!(eventually(Duration::from_secs(1), || peer_stats(&b, "node-a").frames_received >= 3).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.shutdown().await;
    let started = Instant::now();
    assert_eq!(in_flight.await.unwrap(), Err(LinkError::Closed("node-b".into())));
    assert!(started.elapsed() < Duration::from_secs(1), "closed promptly, not at the deadline");
    assert!(b.call("node-a", Msg::Echo(1)).await.is_err(), "a shut-down node refuses calls");

    let (b2, _) = start(config("node-b")).await;
    assert_ne!(b2.local_addr(), b.local_addr());
    mesh(&[&a, &b2]);
    assert_eq!(a.call("node-b", Msg::Echo(2)).await, Ok(Msg::Echo(2)));
    assert_eq!(b2.call("node-a", Msg::Who).await, Ok(Msg::Text("node-a <- node-b".into())));
    let stats = peer_stats(&a, "node-b");
    assert_eq!((stats.connections, stats.reconnects, stats.pending_calls), (2, 1, 0));
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test]
async fn newer_connection_supersedes_a_half_dead_one() {
    // b accepts from "node-a". First a silent impostor-free raw "node-a" (right secret, then
    // mute, like a crashed process whose socket never closed), then the real node-a.
    let mut cfg = config("node-b");
    cfg.dead_after = Duration::from_secs(10);
    let (b, _) = start(cfg).await;
    b.set_peers(peers(&[("node-a", dead_addr().await)]));
    let _mute = raw_dial(b.local_addr(), "node-a", "node-b").await.unwrap();
    assert!(eventually(Duration::from_secs(1), || b.is_connected("node-a")).await);
    let stuck = tokio::spawn({
        let b = b.clone();
        async move { b.call_within("node-a", Msg::Echo(7), Duration::from_secs(20)).await }
    });
    assert!(eventually(Duration::from_secs(1), || peer_stats(&b, "node-a").pending_calls == 1).await);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (a, _) = start(config("node-a")).await;
    mesh(&[&a, &b]);
    assert_eq!(a.call("node-b", Msg::Echo(3)).await, Ok(Msg::Echo(3)));
    assert_eq!(
        timeout(Duration::from_secs(1), stuck).await.unwrap().unwrap(),
        Err(LinkError::Closed("node-a".into()))
    );
    assert_eq!(b.call("node-a", Msg::Echo(4)).await, Ok(Msg::Echo(4)));
    let stats = peer_stats(&b, "node-a");
    assert!(stats.connected);
    assert_eq!(stats.connections, 2);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn back_pressure_when_disconnected_then_queue_drains_on_connect() {
    let mut cfg = config("node-a");
    cfg.queue_frames = 8;
    cfg.call_timeout = Duration::from_millis(300);
    let (a, _) = start(cfg).await;
    a.set_peers(peers(&[("node-b", dead_addr().await)]));
    for n in 0..8 {
        a.try_cast("node-b", Msg::Seq(n)).unwrap();
    }
    assert_eq!(a.try_cast("node-b", Msg::Seq(8)), Err(LinkError::Full("node-b".into())));
    let started = Instant::now();
    assert_eq!(a.cast("node-b", Msg::Seq(8)).await, Err(LinkError::Full("node-b".into())));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(a.call("node-b", Msg::Echo(1)).await, Err(LinkError::NotConnected("node-b".into())));
    assert_eq!(peer_stats(&a, "node-b").queue_len, 8);

    let (b, hb) = start(config("node-b")).await;
    mesh(&[&a, &b]);
    assert!(eventually(Duration::from_secs(3), || hb.casts().len() == 8).await);
    assert_eq!(hb.casts(), (0..8).collect::<Vec<_>>(), "queued casts delivered in order");
    assert_eq!(a.call("node-b", Msg::Echo(5)).await, Ok(Msg::Echo(5)));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn back_pressure_when_the_peer_stops_reading() {
    // A raw acceptor "node-b" that authenticates, keeps heartbeating, and never reads.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        accept_handshake::<Msg>("node-b", SECRET, &mut stream).await.unwrap();
        let mut buf = BytesMut::new();
        for at in 0.. {
            let ping = Envelope::<Msg>::Ping { at };
            if write_frame(&mut stream, &ping, &mut buf).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut cfg = config("node-a");
    cfg.queue_frames = 4;
    cfg.call_timeout = Duration::from_millis(300);
    let (a, _) = start(cfg).await;
    a.set_peers(peers(&[("node-b", addr)]));
    assert!(eventually(Duration::from_secs(2), || a.is_connected("node-b")).await);
    let blob = vec![7u8; 1 << 20];
    let mut accepted = 0;
    let full = loop {
        match a.try_cast("node-b", Msg::Blob(blob.clone())) {
            Ok(()) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 200, "socket buffers cannot absorb 200 MiB");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(full, LinkError::Full("node-b".into()));
    assert_eq!(a.cast("node-b", Msg::Seq(1)).await, Err(LinkError::Full("node-b".into())));
    assert!(a.is_connected("node-b"), "a stalled reader is back-pressure, not death");
    a.shutdown().await;
    acceptor.abort();
}

#[tokio::test]
async fn silent_peer_is_dropped_after_dead_after() {
    let mut cfg = config("node-b");
    cfg.dead_after = Duration::from_millis(600);
    let (b, _) = start(cfg).await;
    // Unlisted: b accepts any authenticated lower id and forgets it when the link dies.
    let mut mute = raw_dial(b.local_addr(), "node-a", "node-b").await.unwrap();
    assert!(eventually(Duration::from_secs(1), || b.is_connected("node-a")).await);
    assert!(!peer_stats(&b, "node-a").listed);
    let closed_after = time_until_closed(&mut mute, Duration::from_secs(3)).await.expect("b drops it");
    assert!(closed_after >= Duration::from_millis(500), "{closed_after:?}");
    assert!(closed_after < Duration::from_millis(600 + 500), "{closed_after:?}");
    assert!(eventually(Duration::from_secs(1), || b.stats().is_empty()).await, "unlisted peer forgotten");

    // Dialer side: a silent acceptor is dropped too, and redialed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            if accept_handshake::<Msg>("node-c", SECRET, &mut stream).await.is_ok() {
                held.push(stream); // keep it open, say nothing
            }
        }
    });
    let mut cfg = config("node-a");
    cfg.dead_after = Duration::from_millis(400);
    cfg.heartbeat = Duration::from_millis(100);
    let (a, _) = start(cfg).await;
    a.set_peers(peers(&[("node-c", addr)]));
    assert!(eventually(Duration::from_secs(1), || a.is_connected("node-c")).await);
    assert!(eventually(Duration::from_secs(1), || !a.is_connected("node-c")).await, "dropped");
    assert!(
        eventually(Duration::from_secs(2), || peer_stats(&a, "node-c").connections >= 2).await,
        "redialed"
    );
    a.shutdown().await;
    b.shutdown().await;
    acceptor.abort();
}

#[tokio::test]
async fn three_nodes_one_connection_per_pair() {
    let (a, _) = start(config("node-a")).await;
    let (b, _) = start(config("node-b")).await;
    let (c, _) = start(config("node-c")).await;
    let nodes = [&a, &b, &c];
    mesh(&nodes);
    for from in nodes {
        for to in nodes {
            if from.node_id() != to.node_id() {
                assert_eq!(from.call(to.node_id(), Msg::Echo(9)).await, Ok(Msg::Echo(9)));
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in nodes {
        let stats = node.stats();
        assert_eq!(stats.len(), 2);
        for peer in stats {
            assert!(peer.connected, "{} -> {}", node.node_id(), peer.peer);
            assert_eq!(peer.connections, 1, "{} -> {}: one TCP connection", node.node_id(), peer.peer);
        }
    }
    // Only the lower id may dial: a dial from above is refused during the handshake.
    assert!(matches!(raw_dial(a.local_addr(), "node-z", "node-a").await, Err(HandshakeError::Frame(_))));
    assert_eq!(a.stats().len(), 2);
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn dialer_refuses_an_acceptor_with_another_id() {
    let (a, _) = start(config("node-a")).await;
    let (c, _) = start(config("node-c")).await;
    // Membership says node-b lives where node-c listens.
    a.set_peers(peers(&[("node-b", c.local_addr())]));
    let reply = a.call_within("node-b", Msg::Echo(1), Duration::from_millis(400)).await;
    assert_eq!(reply, Err(LinkError::NotConnected("node-b".into())));
    assert!(!a.is_connected("node-b"));
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn bad_frames_close_the_connection_without_harm() {
    let (b, _) = start(config("node-b")).await;
    let hello =
        encode_frame(&Envelope::<Msg>::Hello { version: 1, node: "node-a".into(), nonce: [0; 32] }).unwrap();
    let garbage: [&[u8]; 4] = [
        &[0, 0, 0, 2, 0xff, 0xff], // unknown envelope variant
        &[0xff, 0xff, 0xff, 0xff], // 4 GiB declared
        &[0, 0, 0, 1, 3],          // a Request cut short
        &hello,                    // a handshake frame after the handshake
    ];
    for bytes in garbage {
        let mut raw = raw_dial(b.local_addr(), "node-a", "node-b").await.unwrap();
        raw.write_all(bytes).await.unwrap();
        let closed = time_until_closed(&mut raw, Duration::from_millis(900)).await;
        assert!(closed.is_some(), "{bytes:?} closes the link well before dead_after");
    }
    // Garbage instead of a Hello, and a silent client, are cut off too.
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(time_until_closed(&mut raw, Duration::from_millis(500)).await.is_some());
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    let closed = time_until_closed(&mut raw, Duration::from_secs(3)).await.expect("handshake timeout");
    assert!(closed >= Duration::from_millis(900), "{closed:?}");
    // Still serving real peers.
    let (a, _) = start(config("node-a")).await;
    mesh(&[&a, &b]);
    assert_eq!(a.call("node-b", Msg::Echo(1)).await, Ok(Msg::Echo(1)));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn removed_peer_fails_pending_calls_and_becomes_unknown() {
    let (a, _) = start(config("node-a")).await;
    let (b, _) = start(config("node-b")).await;
    mesh(&[&a, &b]);
    assert_eq!(a.call("node-b", Msg::Echo(1)).await, Ok(Msg::Echo(1)));
    let pending = tokio::spawn({
        let a = a.clone();
        async move { a.call("node-b", Msg::Slow(5_000)).await }
    });
    assert!(eventually(Duration::from_secs(1), || peer_stats(&a, "node-b").pending_calls == 1).await);
    a.set_peers(HashMap::new());
    assert_eq!(
        timeout(Duration::from_secs(1), pending).await.unwrap().unwrap(),
        Err(LinkError::Closed("node-b".into()))
    );
    assert_eq!(a.call("node-b", Msg::Echo(1)).await, Err(LinkError::UnknownPeer("node-b".into())));
    assert!(eventually(Duration::from_secs(1), || !b.is_connected("node-a")).await);
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn config_is_validated_and_secret_never_printed() {
    let mut cfg = config("node-a");
    cfg.secret = b"short".to_vec();
    assert!(cfg.validate().is_err());
    let cfg = config("node-a");
    assert!(cfg.validate().is_ok());
    assert!(!format!("{cfg:?}").contains("switchboard-test-secret"));
    let mut cfg = config("");
    cfg.node_id.clear();
    assert!(cfg.validate().is_err());
}

#[test]
fn handshake_macs_bind_label_ids_and_nonces() {
    let tag = |label: &[u8], x: &str, y: &str, n1: u8, n2: u8| {
        handshake_mac(SECRET, label, x, y, &[n1; NONCE_LEN], &[n2; NONCE_LEN])
            .unwrap()
            .finalize()
            .into_bytes()
    };
    let base = tag(ACCEPT_LABEL, "ab", "c", 1, 2);
    assert_ne!(base, tag(DIAL_LABEL, "ab", "c", 1, 2));
    assert_ne!(base, tag(ACCEPT_LABEL, "a", "bc", 1, 2));
    assert_ne!(base, tag(ACCEPT_LABEL, "ab", "c", 2, 1));
    assert_eq!(base, tag(ACCEPT_LABEL, "ab", "c", 1, 2));
}
