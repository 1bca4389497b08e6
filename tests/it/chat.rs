//! End-to-end chat on one node: delivery, offline sync, two devices, receipts, presence,
//! typing, idempotent retries, history and the conversation list.

use crate::harness::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn message_reaches_online_peer_after_sent_ack() {
    let server = Server::start().await;
    let (api, alice, bob, conversation) = pair(&server).await;
    // The same pair always gets the same conversation, from either side.
    assert_eq!(api.direct(&bob, &alice).await, conversation);
    let mut a = Ws::connect(&server, &alice).await;
    let mut b = Ws::connect(&server, &bob).await;
    assert_eq!(a.welcome["user_id"], alice.user_id.as_str());
    assert_eq!(a.welcome["node"], "node-1");

    let sent = a.send_message(&conversation, "m1", "hello bob").await;
    assert_eq!(sent["seq"], 1);
    assert_eq!(sent["id"], "m1");
    assert_eq!(sent["conversation_id"], conversation.as_str());
    let m = b.expect("message").await;
    assert_eq!(m["body"], "hello bob");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["author_id"], alice.user_id.as_str());
    assert_eq!(m["message_id"], sent["message_id"]);
    assert_eq!(m["client_msg_id"], "m1");
    assert_eq!(m["kind"], "text");

    let sent = b.send_message(&conversation, "r1", "hi alice").await;
    assert_eq!(sent["seq"], 2);
    assert_eq!(a.expect("message").await["body"], "hi alice");
    // The sender's own device gets `sent`, not a copy of the message.
    a.expect_none("message", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn offline_peer_syncs_everything_paged() {
    let server = Server::start().await;
    let (_api, alice, bob, conversation) = pair(&server).await;
    let mut a = Ws::connect(&server, &alice).await;
    for i in 1..=5 {
        a.send_message(&conversation, &format!("c{i}"), &format!("msg {i}")).await;
    }
    let mut b = Ws::connect(&server, &bob).await;
    b.send(json!({"type":"sync","id":"s1","cursors":{},"limit":3})).await;
    for seq in 1..=3 {
        let m = b.expect("message").await;
        assert_eq!(m["seq"], seq);
        assert_eq!(m["body"], format!("msg {seq}"));
    }
    let done = b.next().await;
    assert_eq!(done["type"], "sync_done");
    assert_eq!(done["id"], "s1");
    let state = &done["conversations"][&conversation];
    assert_eq!(state["last_seq"], 5);
    assert_eq!(state["has_more"], true);

    b.send(json!({"type":"sync","cursors":{conversation.clone(): 3}})).await;
    assert_eq!(b.expect("message").await["seq"], 4);
    assert_eq!(b.expect("message").await["seq"], 5);
    let done = b.next().await;
    assert_eq!(done["type"], "sync_done");
    assert_eq!(done["conversations"][&conversation]["has_more"], false);
}

#[tokio::test]
async fn both_devices_of_a_user_get_everything() {
    let server = Server::start().await;
    let (api, alice, bob, conversation) = pair(&server).await;
    let bob2 = api.login("bob").await;
    assert_ne!(bob.device_id, bob2.device_id);
    let mut a = Ws::connect(&server, &alice).await;
    let mut b1 = Ws::connect(&server, &bob).await;
    let mut b2 = Ws::connect(&server, &bob2).await;

    a.send_message(&conversation, "x", "to both").await;
    assert_eq!(b1.expect("message").await["body"], "to both");
    assert_eq!(b2.expect("message").await["body"], "to both");

    // What one device sends, the user's other device sees as a message.
    b1.send_message(&conversation, "y", "from phone").await;
    assert_eq!(b2.expect("message").await["body"], "from phone");
    assert_eq!(a.expect("message").await["body"], "from phone");
    b1.expect_none("message", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn receipts_are_monotonic_watermarks() {
    let server = Server::start().await;
    let (api, alice, bob, conversation) = pair(&server).await;
    let bob2 = api.login("bob").await;
    let mut a = Ws::connect(&server, &alice).await;
    let mut b = Ws::connect(&server, &bob).await;
    let mut b2 = Ws::connect(&server, &bob2).await;
    for i in 1..=3 {
        a.send_message(&conversation, &format!("m{i}"), "x").await;
    }
    b.send(json!({"type":"delivered","conversation_id":conversation,"seq":3})).await;
    let r = a.expect("receipt").await;
    assert_eq!(
        (r["user_id"].as_str(), r["delivered_seq"].as_u64(), r["read_seq"].as_u64()),
        (Some(bob.user_id.as_str()), Some(3), Some(0))
    );

    b.send(json!({"type":"read","conversation_id":conversation,"seq":2})).await;
    let r = a.expect("receipt").await;
    assert_eq!((r["delivered_seq"].as_u64(), r["read_seq"].as_u64()), (Some(3), Some(2)));
    // The reader's other device learns it too, so its unread count clears.
    assert_eq!(b2.expect("receipt").await["delivered_seq"], 3);
    assert_eq!(b2.expect("receipt").await["read_seq"], 2);

    // Lower seqs change nothing and send no receipt.
    b.send(json!({"type":"read","conversation_id":conversation,"seq":1})).await;
    b.roundtrip().await;
    a.expect_none("receipt", Duration::from_millis(300)).await;

    let (_, list) = api.get("/v1/conversations", Some(&bob.token)).await;
    let c = &list["conversations"][0];
    assert_eq!(c["conversation_id"], conversation.as_str());
    assert_eq!(c["last_seq"], 3);
    assert_eq!(c["read_seq"], 2);
    assert_eq!(c["delivered_seq"], 3);
    assert_eq!(c["unread"], 1);
    assert_eq!(c["last_message"]["seq"], 3);
    let (_, list) = api.get("/v1/conversations", Some(&alice.token)).await;
    assert_eq!(list["conversations"][0]["unread"], 3);
}

#[tokio::test]
async fn presence_and_typing_reach_partners_only() {
    // A wide typing interval, so the repeat below falls inside it even on a loaded machine.
    let server = Server::start_env(&[("SWITCHBOARD_TYPING_INTERVAL_MS", "10000")]).await;
    let (api, alice, bob, conversation) = pair(&server).await;
    let stranger = api.register("carol").await;
    let mut a = Ws::connect(&server, &alice).await;
    // alice opened the conversation, but bob has not written in it: his presence is not hers
    // to watch yet (a stranger cannot learn when you are online by opening a conversation).
    a.send(json!({"type":"presence_subscribe","user_ids":[bob.user_id, stranger.user_id]})).await;
    a.expect_none("presence", Duration::from_millis(300)).await;

    let mut b = Ws::connect(&server, &bob).await;
    b.send_message(&conversation, "hello", "hi alice").await;
    a.send(json!({"type":"presence_subscribe","user_ids":[bob.user_id, stranger.user_id]})).await;
    let p = a.expect("presence").await;
    assert_eq!((p["user_id"].as_str(), p["online"].as_bool()), (Some(bob.user_id.as_str()), Some(true)));
    // carol shares no conversation with alice: ignored.
    a.expect_none("presence", Duration::from_millis(300)).await;

    b.send(json!({"type":"typing","conversation_id":conversation,"active":true})).await;
    let t = a.expect("typing").await;
    assert_eq!((t["user_id"].as_str(), t["active"].as_bool()), (Some(bob.user_id.as_str()), Some(true)));
    // A repeat within the interval is dropped; a change goes through.
    b.send(json!({"type":"typing","conversation_id":conversation,"active":true})).await;
    b.send(json!({"type":"typing","conversation_id":conversation,"active":false})).await;
    let t = a.expect("typing").await;
    assert_eq!(t["active"], false);
    // Typing is never stored: the page holds bob's one message.
    let (_, page) = api.get(&format!("/v1/conversations/{conversation}/messages"), Some(&alice.token)).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);

    b.close().await;
    let p = a.expect("presence").await;
    assert_eq!(p["online"], false);
    assert!(p["last_seen"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn retried_client_msg_id_yields_one_message() {
    let server = Server::start().await;
    let (api, alice, bob, conversation) = pair(&server).await;
    let mut b = Ws::connect(&server, &bob).await;
    let mut a = Ws::connect(&server, &alice).await;
    let first = a.send_message(&conversation, "same", "once").await;
    // Same connection, pipelined twice in one batch, and again after a reconnect.
    a.send(json!({"type":"send","conversation_id":conversation,"client_msg_id":"same","body":"once"})).await;
    a.send(json!({"type":"send","conversation_id":conversation,"client_msg_id":"same","body":"once"})).await;
    for _ in 0..2 {
        let again = a.expect("sent").await;
        assert_eq!(
            (again["seq"].clone(), again["message_id"].clone()),
            (first["seq"].clone(), first["message_id"].clone())
        );
    }
    a.close().await;
    let mut a = Ws::connect(&server, &alice).await;
    let again = a.send_message(&conversation, "same", "once").await;
    assert_eq!(again["seq"], first["seq"]);
    let next = a.send_message(&conversation, "other", "twice").await;
    assert_eq!(next["seq"], 2);

    assert_eq!(b.expect("message").await["seq"], 1);
    assert_eq!(b.expect("message").await["seq"], 2);
    b.expect_none("message", Duration::from_millis(300)).await;
    let (_, page) = api.get(&format!("/v1/conversations/{conversation}/messages"), Some(&bob.token)).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn history_pages_backwards_over_ws_and_rest() {
    let server = Server::start().await;
    let (api, alice, _bob, conversation) = pair(&server).await;
    let mut a = Ws::connect(&server, &alice).await;
    for i in 1..=5 {
        a.send_message(&conversation, &format!("h{i}"), &format!("body {i}")).await;
    }
    a.send(json!({"type":"history","id":"h","conversation_id":conversation,"before":4,"limit":2})).await;
    let h = a.expect("history").await;
    assert_eq!(h["id"], "h");
    let seqs: Vec<u64> =
        h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(h["has_more"], true);

    let (status, page) =
        api.get(&format!("/v1/conversations/{conversation}/messages?limit=10"), Some(&alice.token)).await;
    assert_eq!(status, 200);
    let bodies: Vec<&str> =
        page["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["body 1", "body 2", "body 3", "body 4", "body 5"]);
    assert_eq!(page["has_more"], false);
    let (_, page) =
        api.get(&format!("/v1/conversations/{conversation}/messages?before=2"), Some(&alice.token)).await;
    assert_eq!(page["messages"][0]["seq"], 1);
    assert_eq!(page["has_more"], false);
}

#[tokio::test]
async fn bodies_are_encrypted_at_rest() {
    // Scans the embedded store's files; with Cassandra the bodies are sealed by the same code
    // before the store sees them (and the conformance suite stores opaque bytes).
    if e2e_on_cassandra() {
        return;
    }
    let server = Server::start().await;
    let (_api, alice, _bob, conversation) = pair(&server).await;
    let mut a = Ws::connect(&server, &alice).await;
    let marker = "plaintext-marker-5f2a9c";
    a.send_message(&conversation, "secret", &marker.repeat(20)).await;
    drop(a);
    let mut found = false;
    for entry in walk(&server.dir.path().join("data")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        found |= bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    }
    assert!(!found, "a message body was found in clear in the data dir");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn browser_style_first_frame_auth_and_logout() {
    let server = Server::start().await;
    let (api, alice, _bob, _conversation) = pair(&server).await;
    let mut ws = Ws::connect_anonymous(&server).await;
    ws.send(json!({"type":"auth","token":alice.token})).await;
    let welcome = ws.expect("welcome").await;
    assert_eq!(welcome["device_id"], alice.device_id.as_str());
    assert!(welcome["heartbeat_ms"].as_u64().unwrap() > 0);
    ws.roundtrip().await;

    let (status, _) = api.post("/v1/logout", Some(&alice.token), json!({})).await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&ws.closed().await), 4001);
    let (status, body) = api.get("/v1/me", Some(&alice.token)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn rest_accounts_and_lookup() {
    let server = Server::start().await;
    let api = server.api();
    let alice = api.register("Alice").await;
    let (status, me) = api.get("/v1/me", Some(&alice.token)).await;
    assert_eq!((status, me["username"].as_str()), (200, Some("Alice")));
    let (status, found) = api.get("/v1/users/alice", Some(&alice.token)).await;
    assert_eq!((status, found["user_id"].as_str()), (200, Some(alice.user_id.as_str())));
    let (status, v) = api.post("/v1/register", None, json!({"username":"ALICE","password":PASSWORD})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("username_taken")));
    let (status, v) =
        api.post("/v1/login", None, json!({"username":"alice","password":"wrong password"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, v) = api.post("/v1/login", None, json!({"username":"nobody","password":PASSWORD})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, v) =
        api.post("/v1/register", None, json!({"username":"no spaces","password":PASSWORD})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let (status, v) = api.post("/v1/register", None, json!({"username":"shorty","password":"short"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let (status, v) = api.get("/v1/users/nobody", Some(&alice.token)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _) = api.get("/v1/conversations", None).await;
    assert_eq!(status, 401);
    let (status, text) = api.get_text("/healthz").await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = api.get_text("/readyz").await;
    assert_eq!(status, 200);
    let (status, metrics) = api.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("switchboard_store_append_seconds_bucket"), "{metrics}");
}

#[tokio::test]
async fn registrations_do_not_pile_up_memory() {
    // Each argon2id hash allocates 19 MiB; with glibc malloc about 13 MB of it stayed resident
    // per registration (13 GB after 1,000). The allocator must hand it back.
    let server = Server::start().await;
    let api = server.api();
    for i in 0..40 {
        api.register(&format!("user{i}")).await;
    }
    let rss_mib = server.rss_kib() / 1024;
    assert!(rss_mib < 200, "server RSS {rss_mib} MiB after 40 registrations");
}
