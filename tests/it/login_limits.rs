//! Login and registration hardening against the real binary: per-address and per-username
//! login limits and the per-address registration limit (429 `rate_limited` + Retry-After,
//! before any password check), the bounded hash queue (fast 503 `unavailable`, nothing
//! hangs), and sliding device-token expiry (use recorded in the store; a token unused for
//! longer than the TTL is refused).

use crate::harness::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use switchboard::crypto;
use switchboard::model::{Device, DeviceId, UserId, now_millis};
use switchboard::store::AccountStore;
use switchboard::store::embedded::EmbeddedStore;

/// A POST's status, Retry-After header (seconds) and error code.
async fn post(server: &Server, path: &str, body: Value) -> (u16, Option<u64>, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", server.addr))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, retry_after, v["error"]["code"].as_str().unwrap_or_default().to_owned())
}

async fn login(server: &Server, username: &str, password: &str) -> (u16, Option<u64>, String) {
    post(server, "/v1/login", json!({"username": username, "password": password})).await
}

async fn register(server: &Server, username: &str) -> (u16, Option<u64>, String) {
    post(server, "/v1/register", json!({"username": username, "password": PASSWORD})).await
}

#[tokio::test]
async fn login_attempts_are_limited_per_address_before_any_password_check() {
    let server = Server::start_env(&[
        ("SWITCHBOARD_LOGIN_IP_PER_MIN", "3"),
        ("SWITCHBOARD_LOGIN_USER_PER_MIN", "1000"),
    ])
    .await;
    server.api().register("alice").await;
    // Good and bad attempts count alike, known user or not.
    assert_eq!(login(&server, "alice", PASSWORD).await.0, 200);
    assert_eq!(login(&server, "nobody", PASSWORD).await.0, 401);
    assert_eq!(login(&server, "alice", "wrong password").await.0, 401);
    // The right password no longer helps: refused before it is checked.
    let (status, retry_after, code) = login(&server, "alice", PASSWORD).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    // 3 a minute: one attempt every 20 s comes back.
    let retry_after = retry_after.expect("Retry-After header");
    assert!((1..=20).contains(&retry_after), "Retry-After: {retry_after}");
    // Any username, from this address.
    assert_eq!(login(&server, "bob", "whatever password").await.0, 429);
    // Registration is limited apart.
    assert_eq!(register(&server, "bob").await.0, 201);
}

#[tokio::test]
async fn login_attempts_are_limited_per_username() {
    let server = Server::start_env(&[
        ("SWITCHBOARD_LOGIN_IP_PER_MIN", "1000"),
        ("SWITCHBOARD_LOGIN_USER_PER_MIN", "2"),
    ])
    .await;
    let api = server.api();
    api.register("alice").await;
    api.register("bob").await;
    assert_eq!(login(&server, "alice", "guess one").await.0, 401);
    assert_eq!(login(&server, "alice", "guess two").await.0, 401);
    for name in ["alice", "ALICE"] {
        let (status, retry_after, code) = login(&server, name, PASSWORD).await;
        assert_eq!((status, code.as_str()), (429, "rate_limited"), "{name}");
        let retry_after = retry_after.expect("Retry-After header");
        assert!((1..=30).contains(&retry_after), "Retry-After: {retry_after}");
    }
    // Other users are not affected.
    assert_eq!(login(&server, "bob", PASSWORD).await.0, 200);
}

#[tokio::test]
async fn account_creation_is_limited_per_address() {
    let server = Server::start_env(&[("SWITCHBOARD_REGISTER_IP_PER_HOUR", "2")]).await;
    assert_eq!(register(&server, "user1").await.0, 201);
    assert_eq!(register(&server, "user2").await.0, 201);
    let (status, retry_after, code) = register(&server, "user3").await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    // 2 an hour: one more every 30 min.
    let retry_after = retry_after.expect("Retry-After header");
    assert!((1..=1800).contains(&retry_after), "Retry-After: {retry_after}");
    // Invalid requests are answered as such (and cost nothing).
    let (status, _, code) = register(&server, "no spaces").await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    // Logging in is limited apart.
    assert_eq!(login(&server, "user1", PASSWORD).await.0, 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let register_via = |server: &Server, forwarded: &'static str, username: String| {
        let url = format!("http://{}/v1/register", server.addr);
        async move {
            reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", forwarded)
                .json(&json!({"username": username, "password": PASSWORD}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let trusting = Server::start_env(&[
        ("SWITCHBOARD_REGISTER_IP_PER_HOUR", "1"),
        ("SWITCHBOARD_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    assert_eq!(register_via(&trusting, "10.0.0.1", "from1a".into()).await, 201);
    assert_eq!(register_via(&trusting, "10.0.0.1", "from1b".into()).await, 429);
    assert_eq!(register_via(&trusting, "10.0.0.2", "from2a".into()).await, 201);
    // A client cannot escape its limit by prepending addresses: the proxy appends the real one.
    assert_eq!(register_via(&trusting, "9.9.9.9, 10.0.0.2", "from2b".into()).await, 429);
    // Without trust the header is ignored: everyone here is 127.0.0.1.
    let plain = Server::start_env(&[("SWITCHBOARD_REGISTER_IP_PER_HOUR", "1")]).await;
    assert_eq!(register_via(&plain, "10.0.0.1", "plain1".into()).await, 201);
    assert_eq!(register_via(&plain, "10.0.0.2", "plain2".into()).await, 429);
}

#[tokio::test]
async fn a_full_hash_queue_answers_503_at_once_and_nothing_hangs() {
    let _heavy = crate::harness::HEAVY.lock().await;
    let server = Server::start_env(&[
        ("SWITCHBOARD_HASH_QUEUE_MAX", "1"),
        ("SWITCHBOARD_LOGIN_IP_PER_MIN", "100000"),
        ("SWITCHBOARD_LOGIN_USER_PER_MIN", "100000"),
    ])
    .await;
    server.api().register("alice").await;
    let server = Arc::new(server);
    let mut busy = None;
    // A burst of logins (unknown users: each still costs a hash). One hash per core runs and
    // one waits; the rest must be turned away at once. Retried in case a burst arrives too
    // spread out to fill the queue.
    for _round in 0..5 {
        let attempts: Vec<_> = (0..64)
            .map(|i| {
                let server = server.clone();
                tokio::spawn(async move { login(&server, &format!("ghost{i}"), PASSWORD).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for attempt in attempts {
            let reply =
                tokio::time::timeout(Duration::from_secs(60), attempt).await.expect("a login hung").unwrap();
            statuses.push(reply.0);
            if reply.0 == 503 {
                busy = Some(reply);
            }
        }
        assert!(statuses.iter().all(|s| *s == 401 || *s == 503), "{statuses:?}");
        assert!(statuses.contains(&401), "some logins must be checked: {statuses:?}");
        if busy.is_some() {
            break;
        }
    }
    let (_, retry_after, code) = busy.expect("no login was turned away with 503");
    assert_eq!(code, "unavailable");
    assert_eq!(retry_after, Some(1));
    // Once the burst is over, logins work again.
    assert_eq!(login(&server, "alice", PASSWORD).await.0, 200);
}

#[tokio::test]
async fn a_fresh_token_works_and_its_use_is_recorded() {
    if e2e_on_cassandra() {
        return; // reads the embedded store directly
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut server = Server::start_with(dir.clone(), &[]).await;
    let api = server.api();
    let before = now_millis();
    let alice = api.register("alice").await;
    let (status, v) = api.get("/v1/me", Some(&alice.token)).await;
    assert_eq!((status, v["username"].as_str()), (200, Some("alice")));
    assert!(server.terminate().await.success());

    let store = EmbeddedStore::open(&dir.path().join("data").join("store")).unwrap();
    let device: DeviceId = alice.device_id.parse().unwrap();
    let used = store.device_last_used(device).await.unwrap().expect("the token's use is recorded");
    assert!(used >= before && used <= now_millis(), "{used}");
}

#[tokio::test]
async fn a_token_unused_for_longer_than_the_ttl_is_refused() {
    if e2e_on_cassandra() {
        return; // writes the embedded store directly
    }
    const DAY: i64 = 24 * 60 * 60 * 1000;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut server = Server::start_with(dir.clone(), &[]).await;
    let alice = server.api().register("alice").await;
    assert!(server.terminate().await.success());

    // Two devices of alice created 31 days ago: one used yesterday, one never used since (its
    // durable creation also makes the use written before it durable).
    let (stale, revived) = {
        let store = EmbeddedStore::open(&dir.path().join("data").join("store")).unwrap();
        let user_id: UserId = alice.user_id.parse().unwrap();
        let created_at = now_millis() - 31 * DAY;
        let mut tokens = Vec::new();
        for name in ["revived", "stale"] {
            let (token, hash) = crypto::new_device_token();
            let device =
                Device { id: DeviceId::generate(), user_id, name: name.into(), created_at, revoked: false };
            store.create_device(&device, &hash).await.unwrap();
            if name == "revived" {
                store.touch_device(device.id, now_millis() - DAY).await.unwrap();
            }
            tokens.push(token);
        }
        (tokens[1].clone(), tokens[0].clone())
    };

    let server = Server::start_with(dir.clone(), &[("SWITCHBOARD_TOKEN_TTL_DAYS", "30")]).await;
    let api = server.api();
    let (status, v) = api.get("/v1/me", Some(&stale)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let (status, v) = api.get("/v1/me", Some(&revived)).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = api.get("/v1/me", Some(&alice.token)).await;
    assert_eq!(status, 200, "{v}");
    // With a longer TTL the stale token would still be good: the limit is the config's.
    let mut server = server;
    assert!(server.terminate().await.success());
    let server = Server::start_with(dir.clone(), &[("SWITCHBOARD_TOKEN_TTL_DAYS", "32")]).await;
    let (status, v) = server.api().get("/v1/me", Some(&stale)).await;
    assert_eq!(status, 200, "{v}");
}
