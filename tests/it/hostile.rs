//! Heavy and hostile clients: a client that asks for large pages and never reads (bounded
//! server memory, others unaffected, closed in time), and a user far behind who catches up
//! through repeated `sync` rounds without being closed, with live messages exactly once.

use crate::harness::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The frame rate limit out of the way: these tests send thousands of frames on purpose.
const FAST: [(&str, &str); 3] = [
    ("SWITCHBOARD_RATE_PER_SEC", "100000"),
    ("SWITCHBOARD_RATE_BURST", "100000"),
    ("SWITCHBOARD_REGISTER_IP_PER_HOUR", "1000"),
];

/// A WebSocket client with a tiny receive buffer that sends and never reads.
pub(crate) async fn non_reading_client(
    server: &Server,
    account: &Account,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {}", account.token).parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    ws
}

async fn metric(server: &Server, name: &str) -> u64 {
    let (_, text) = server.api().get_text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_client_that_never_reads_is_bounded_and_closed_and_others_keep_pinging() {
    let _heavy = HEAVY.lock().await;
    const HOSTILE: usize = 5;
    const REQUESTS: usize = 40;
    let stall_ms = 3000;
    let mut env = FAST.to_vec();
    let stall = stall_ms.to_string();
    env.push(("SWITCHBOARD_WRITE_STALL_MS", &stall));
    let server = Server::start_env(&env).await;
    let (_api, alice, bob, conversation) = pair(&server).await;
    // 200 messages of 60 KiB: a history page of 200 would be 12 MB.
    let mut a = Ws::connect(&server, &alice).await;
    let body = "h".repeat(60 * 1024);
    for i in 0..200 {
        a.send(
            json!({"type":"send","conversation_id":conversation,"client_msg_id":format!("m{i}"),"body":body}),
        )
        .await;
    }
    for _ in 0..200 {
        a.expect("sent").await;
    }
    // Let the last batch's live delivery finish (bob has no session yet; none of it is his).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_kib = server.rss_kib();

    // Each hostile client sends its requests from a task of its own (the server stops reading
    // them once their output is full, and then those sends block) and never reads.
    let mut hostile = Vec::new();
    let mut looks = Vec::new();
    for _ in 0..HOSTILE {
        let mut ws = non_reading_client(&server, &bob).await;
        let (looking, look) = tokio::sync::oneshot::channel::<()>();
        looks.push(looking);
        let conversation = conversation.clone();
        hostile.push(tokio::spawn(async move {
            for i in 0..REQUESTS {
                let frame =
                    json!({"type":"history","id":format!("h{i}"),"conversation_id":conversation,"limit":200});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
            // Still unread when the test looks: the server must have reset the connection
            // (reading now would let a graceful close through, so the socket's error is checked).
            let _ = look.await;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(_)) = ws.get_ref().take_error() {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let started = Instant::now();
    // Meanwhile alice pings; the node must answer promptly and its memory stay bounded.
    let mut peak_kib = base_kib;
    let mut worst_ping = Duration::ZERO;
    let mut closed_at = None;
    while started.elapsed() < Duration::from_millis(stall_ms + 15_000) {
        let sent = Instant::now();
        a.roundtrip().await;
        worst_ping = worst_ping.max(sent.elapsed());
        peak_kib = peak_kib.max(server.rss_kib());
        if closed_at.is_none()
            && metric(&server, "switchboard_slow_consumers_closed_total").await >= HOSTILE as u64
        {
            closed_at = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_kib = server.rss_kib();
    let growth_mib = peak_kib.saturating_sub(base_kib) / 1024;
    eprintln!(
        "non-reading clients: base {} MiB, peak +{growth_mib} MiB, after +{} MiB, worst ping {worst_ping:?}, closed after {closed_at:?}",
        base_kib / 1024,
        after_kib.saturating_sub(base_kib) / 1024
    );
    // Per non-reading session: at most 2 × outbound_bytes (4 MiB) queued, plus a page being
    // built and actix's buffers. Before the byte bound this grew by ~900 MB.
    let bound_mib = HOSTILE as u64 * 12 + 40;
    assert!(growth_mib < bound_mib, "server RSS grew by {growth_mib} MiB (bound {bound_mib} MiB)");
    assert!(worst_ping < Duration::from_secs(1), "a well-behaved client waited {worst_ping:?} for a pong");
    let Some(closed_at) = closed_at else {
        let (_, metrics) = server.api().get_text("/metrics").await;
        panic!("the non-reading clients were never closed:\n{metrics}\n{}", server.log());
    };
    assert!(
        closed_at < Duration::from_millis(stall_ms + 10_000),
        "closed after {closed_at:?}; write_stall_ms is {stall_ms}"
    );
    assert!(
        after_kib.saturating_sub(base_kib) / 1024 < bound_mib,
        "memory was not freed after the slow consumers were closed"
    );
    // The connections are really gone, not just counted: each client reads to its end.
    for looking in looks {
        let _ = looking.send(());
    }
    for task in hostile {
        assert!(task.await.unwrap(), "a non-reading client's connection was left open");
    }
}

/// Reads frames until `sync_done`; records every message (asserting none twice).
async fn sync_round(
    ws: &mut Ws,
    cursors: &mut BTreeMap<String, u64>,
    seen: &mut BTreeMap<String, BTreeSet<u64>>,
) -> bool {
    ws.send(json!({"type":"sync","id":"s","cursors":cursors,"limit":500})).await;
    loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("message") => record(&frame, cursors, seen),
            Some("sync_done") => {
                let mut more = frame["has_more"].as_bool().unwrap_or(false);
                for state in frame["conversations"].as_object().unwrap().values() {
                    more |= state["has_more"].as_bool().unwrap();
                }
                return more;
            }
            Some("error") => panic!("sync failed: {frame}"),
            _ => {}
        }
    }
}

fn record(frame: &Value, cursors: &mut BTreeMap<String, u64>, seen: &mut BTreeMap<String, BTreeSet<u64>>) {
    let c = frame["conversation_id"].as_str().unwrap().to_owned();
    let seq = frame["seq"].as_u64().unwrap();
    assert!(seen.entry(c.clone()).or_default().insert(seq), "seq {seq} of {c} delivered twice");
    let cursor = cursors.entry(c).or_default();
    assert_eq!(seq, *cursor + 1, "out of order or gap");
    *cursor = seq;
}

#[tokio::test]
async fn a_user_far_behind_catches_up_by_repeated_sync_with_live_messages_exactly_once() {
    let _heavy = HEAVY.lock().await;
    const CONVERSATIONS: usize = 20;
    const WAITING: usize = 500;
    const LIVE: usize = 30;
    let server = Server::start_env(&FAST).await;
    let api = server.api();
    let bob = api.register("bob").await;
    let mut senders = Vec::new();
    for i in 0..CONVERSATIONS {
        let sender = api.register(&format!("sender{i}")).await;
        let conversation = api.direct(&sender, &bob).await;
        senders.push((sender, conversation));
    }
    // 20 × 500 waiting messages; every 25th has a 64 KiB body.
    let big = "b".repeat(64 * 1024);
    let sends = senders.iter().map(|(sender, conversation)| {
        let (server, big) = (&server, &big);
        async move {
            let mut ws = Ws::connect(server, sender).await;
            for i in 0..WAITING {
                let body = if i % 25 == 0 { big.clone() } else { format!("message {i}") };
                ws.send(json!({"type":"send","conversation_id":conversation,"client_msg_id":format!("w{i}"),"body":body}))
                    .await;
            }
            for _ in 0..WAITING {
                let frame = ws.next().await;
                assert_eq!(frame["type"], "sent", "{frame}");
            }
            ws
        }
    });
    let mut writers: Vec<Ws> = futures_util::future::join_all(sends).await;

    // bob comes back and syncs round after round; meanwhile one sender keeps writing.
    let mut ws = Ws::connect(&server, &bob).await;
    let live_conversation = senders[7].1.clone();
    let mut cursors: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut rounds = 0;
    let mut live_sent = 0;
    loop {
        rounds += 1;
        assert!(rounds < 200, "sync never completed");
        if live_sent < LIVE {
            for _ in 0..10 {
                writers[7]
                    .send(json!({"type":"send","conversation_id":live_conversation,"client_msg_id":format!("live{live_sent}"),"body":"live"}))
                    .await;
                live_sent += 1;
            }
        }
        if !sync_round(&mut ws, &mut cursors, &mut seen).await && live_sent >= LIVE {
            break;
        }
    }
    for _ in 0..LIVE {
        writers[7].expect("sent").await;
    }
    // The live messages not already synced arrive live, in order, once.
    let want_live = (WAITING + LIVE) as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cursors.get(&live_conversation).copied().unwrap_or(0) < want_live {
        assert!(
            Instant::now() < deadline,
            "live messages missing: cursor {:?}",
            cursors.get(&live_conversation)
        );
        let frame = ws.next().await;
        if frame["type"] == "message" {
            record(&frame, &mut cursors, &mut seen);
        }
    }
    for (_, conversation) in &senders {
        let want = if *conversation == live_conversation { want_live } else { WAITING as u64 };
        let got = seen.get(conversation).map(|s| s.len() as u64).unwrap_or(0);
        assert_eq!(got, want, "conversation {conversation}: {got} of {want}");
    }
    eprintln!("caught up in {rounds} sync rounds");
    // Still connected: no 4008.
    ws.roundtrip().await;
}
