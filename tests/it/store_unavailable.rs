//! A store that is down or not set up: the node still starts, says why on `/readyz` (503) and
//! in its log, answers requests that need the store with `store_unavailable`, and recovers
//! once the store is there.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn cassandra_down_at_start_is_unready_with_a_clear_error() {
    // Nothing listens on port 1: the node keeps retrying with backoff.
    let server = Server::start_unready(&[
        ("SWITCHBOARD_STORE_BACKEND", "cassandra"),
        ("SWITCHBOARD_CASSANDRA_NODES", "127.0.0.1:1"),
        ("SWITCHBOARD_CASSANDRA_TIMEOUT_MS", "500"),
    ])
    .await;
    let api = server.api();
    let (status, body) = api.get("/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["detail"].as_str().unwrap_or("").contains("Cassandra"), "{body}");
    let (status, body) =
        api.post("/v1/register", None, json!({"username":"alice","password":PASSWORD})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("store_unavailable")), "{body}");
    let (status, _) = api.get("/healthz", None).await;
    assert_eq!(status, 200, "alive, just not ready");
}

#[tokio::test]
async fn missing_schema_names_the_command_then_recovers() {
    let Ok(nodes) = std::env::var("SWITCHBOARD_TEST_CASSANDRA") else {
        eprintln!("skipped: SWITCHBOARD_TEST_CASSANDRA is not set (scripts/test sets it)");
        return;
    };
    let keyspace = format!("sbtest_noschema_{}", std::process::id());
    let env = [
        ("SWITCHBOARD_STORE_BACKEND", "cassandra"),
        ("SWITCHBOARD_CASSANDRA_NODES", nodes.as_str()),
        ("SWITCHBOARD_CASSANDRA_KEYSPACE", keyspace.as_str()),
        ("SWITCHBOARD_CASSANDRA_REPLICATION", "{'class': 'SimpleStrategy', 'replication_factor': 1}"),
    ];
    let server = Server::start_unready(&env).await;
    let api = server.api();
    let mut detail = String::new();
    for _ in 0..50 {
        let (status, body) = api.get("/readyz", None).await;
        assert_eq!(status, 503);
        detail = body["detail"].as_str().unwrap_or("").to_owned();
        if detail.contains("schema") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(detail.contains("switchboard schema apply"), "{detail}");
    schema_apply(env);
    // The node retries with backoff (1 s, 2 s, …) and becomes ready by itself.
    let mut ready = false;
    for _ in 0..100 {
        if api.get("/readyz", None).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(ready, "node did not recover after the schema was applied:\n{}", server.log());
    api.register("alice").await;
}
