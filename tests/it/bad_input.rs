//! Bad input: each gets its typed error (or close code), the connection survives where the
//! protocol says so, and nothing is stored that was not acked.

use crate::harness::*;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn expect_error(ws: &mut Ws, id: Option<&str>, code: &str) {
    let e = ws.expect("error").await;
    assert_eq!(e["code"], code, "{e}");
    if let Some(id) = id {
        assert_eq!(e["id"], id, "{e}");
    }
    assert!(!e["message"].as_str().unwrap_or("").is_empty());
}

#[tokio::test]
async fn malformed_frames_get_bad_frame_and_the_connection_survives() {
    let server = Server::start().await;
    let api = server.api();
    let alice = api.register("alice").await;
    let bob = api.register("bob").await;
    let carol = api.register("carol").await;
    let conversation = api.direct(&alice, &bob).await;
    let other = api.direct(&bob, &carol).await;
    let mut a = Ws::connect(&server, &alice).await;

    a.send_raw(Message::text("this is not json")).await;
    expect_error(&mut a, None, "bad_frame").await;
    a.send(json!({"type":"launch_rockets","id":"u1"})).await;
    expect_error(&mut a, Some("u1"), "bad_frame").await;
    a.send(json!({"id":"t1"})).await;
    expect_error(&mut a, Some("t1"), "bad_frame").await;
    a.send(json!({"type":"send","id":"f1","conversation_id":conversation})).await;
    expect_error(&mut a, Some("f1"), "bad_frame").await;
    a.send(json!({"type":"read","id":"f2","conversation_id":conversation,"seq":"three"})).await;
    expect_error(&mut a, Some("f2"), "bad_frame").await;
    a.send(json!({"type":"send","id":"f3","conversation_id":"not-an-id","client_msg_id":"c","body":"x"}))
        .await;
    expect_error(&mut a, Some("f3"), "bad_frame").await;
    a.send(json!({"type":"send","id":"f4","conversation_id":conversation,"client_msg_id":"","body":"x"}))
        .await;
    expect_error(&mut a, Some("f4"), "bad_frame").await;
    a.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    expect_error(&mut a, None, "bad_frame").await;
    a.send(json!({"type":"auth","id":"again","token":"x"})).await;
    expect_error(&mut a, Some("again"), "bad_frame").await;

    // Forbidden and not found.
    a.send(json!({"type":"send","id":"n1","conversation_id":other,"client_msg_id":"c1","body":"let me in"}))
        .await;
    expect_error(&mut a, Some("n1"), "forbidden").await;
    a.send(json!({"type":"history","id":"n2","conversation_id":other})).await;
    expect_error(&mut a, Some("n2"), "forbidden").await;
    a.send(json!({"type":"read","id":"n3","conversation_id":other,"seq":1})).await;
    expect_error(&mut a, Some("n3"), "forbidden").await;
    a.send(json!({"type":"typing","id":"n4","conversation_id":other,"active":true})).await;
    expect_error(&mut a, Some("n4"), "forbidden").await;
    a.send(json!({"type":"send","id":"n5","conversation_id":"01890a5d-ac96-774b-bcce-b302099a8057","client_msg_id":"c2","body":"?"})).await;
    expect_error(&mut a, Some("n5"), "not_found").await;
    a.send(json!({"type":"send","id":"n6","conversation_id":conversation,"client_msg_id":"c3","body":"x","attachments":["nope"]})).await;
    expect_error(&mut a, Some("n6"), "not_found").await;

    // Oversize body, within the frame limit: too_large, connection lives.
    let big = "x".repeat(64 * 1024 + 1);
    a.send(json!({"type":"send","id":"big","conversation_id":conversation,"client_msg_id":"big","body":big}))
        .await;
    expect_error(&mut a, Some("big"), "too_large").await;
    a.roundtrip().await;

    // Nothing above was stored, and the conversation still works.
    let sent = a.send_message(&conversation, "ok", "still here").await;
    assert_eq!(sent["seq"], 1);
    let (status, v) = api.get(&format!("/v1/conversations/{other}/messages"), Some(&alice.token)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (_, v) = api.get(&format!("/v1/conversations/{other}/messages"), Some(&bob.token)).await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn frame_over_the_limit_closes_with_1009() {
    let server = Server::start().await;
    let alice = server.api().register("alice").await;
    let mut a = Ws::connect(&server, &alice).await;
    a.send_raw(Message::text("y".repeat(300 * 1024))).await;
    assert_eq!(close_code(&a.closed().await), 1009);
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let server = Server::start().await;
    // Header: the upgrade itself is refused with 401.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws_url())
            .unwrap();
    request.headers_mut().insert("Authorization", "Bearer not-a-token".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // First frame: an error frame, then close 4001.
    let mut ws = Ws::connect_anonymous(&server).await;
    ws.send(json!({"type":"auth","id":"a","token":"not-a-token"})).await;
    expect_error(&mut ws, Some("a"), "unauthorized").await;
    assert_eq!(close_code(&ws.closed().await), 4001);
    // Anything but auth first: unauthorized, close 4001.
    let mut ws = Ws::connect_anonymous(&server).await;
    ws.send(json!({"type":"ping"})).await;
    expect_error(&mut ws, None, "unauthorized").await;
    assert_eq!(close_code(&ws.closed().await), 4001);
}

#[tokio::test]
async fn silent_auth_and_idle_connections_are_closed() {
    let server =
        Server::start_env(&[("SWITCHBOARD_AUTH_TIMEOUT_MS", "300"), ("SWITCHBOARD_HEARTBEAT_MS", "400")])
            .await;
    let alice = server.api().register("alice").await;
    let mut anon = Ws::connect_anonymous(&server).await;
    assert_eq!(close_code(&anon.closed().await), 4001);

    // A client that never reads never answers pings: closed after three intervals. (Its
    // reads then answer the queued pings into a closed socket, so the close frame may be lost
    // on the client side; the server log says why it closed.)
    let mut idle = Ws::connect(&server, &alice).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let frame = idle.closed().await;
    assert!(frame.is_none() || close_code(&frame) == 4002, "{frame:?}");
    assert!(server.log().contains("idle connection closed"), "{}", server.log());

    // A client that reads (and so answers pings) stays.
    let mut live = Ws::connect(&server, &alice).await;
    live.expect_none("error", Duration::from_millis(2500)).await;
    live.roundtrip().await;
}

#[tokio::test]
async fn flooding_is_throttled_then_disconnected() {
    let server = Server::start_env(&[
        ("SWITCHBOARD_RATE_PER_SEC", "5"),
        ("SWITCHBOARD_RATE_BURST", "5"),
        ("SWITCHBOARD_RATE_STRIKES", "10"),
    ])
    .await;
    let alice = server.api().register("alice").await;
    let mut a = Ws::connect(&server, &alice).await;
    for i in 0..40 {
        a.send(json!({"type":"ping","id":format!("p{i}")})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    while let Some(frame) = a.next_within(Duration::from_secs(5)).await {
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((5..40).contains(&pongs), "pongs {pongs}");
    assert!(limited >= 1, "limited {limited}");
    // The connection was closed with 1008 (next_within returned None on close).
    assert!(pongs + limited < 40);
}

#[tokio::test]
async fn rate_limit_strikes_are_forgiven_over_time() {
    // 3 strikes allowed, one forgiven per 300 ms: a client that bursts over the limit now and
    // then, 5 times over, is never disconnected — strikes do not pile up over its lifetime.
    let server = Server::start_env(&[
        ("SWITCHBOARD_RATE_PER_SEC", "5"),
        ("SWITCHBOARD_RATE_BURST", "5"),
        ("SWITCHBOARD_RATE_STRIKES", "3"),
        ("SWITCHBOARD_RATE_STRIKE_DECAY_MS", "300"),
    ])
    .await;
    let alice = server.api().register("alice").await;
    let mut a = Ws::connect(&server, &alice).await;
    let mut limited = 0;
    for round in 0..5 {
        // 7 frames at once: 5 pass, 2 are over the limit (2 strikes).
        for i in 0..7 {
            a.send(json!({"type":"ping","id":format!("r{round}p{i}")})).await;
        }
        for _ in 0..7 {
            let frame = a.next().await;
            if frame["type"] == "error" {
                assert_eq!(frame["code"], "rate_limited");
                limited += 1;
            }
        }
        // The bucket refills and the strikes decay.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert!(limited >= 5, "the limit never applied ({limited})");
    a.roundtrip().await;
}

#[tokio::test]
async fn a_malformed_id_in_a_rest_path_is_400() {
    let server = Server::start().await;
    let alice = server.api().register("alice").await;
    let (status, v) = server.api().get("/v1/conversations/not-a-uuid/messages", Some(&alice.token)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");
}
