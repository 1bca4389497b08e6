//! The Cassandra fault test: three real nodes on 127.0.0.1/2/3, RF 3, LOCAL_QUORUM. While a
//! client sends at a steady rate, node 2 is SIGKILLed, sending goes on, node 2 restarts.
//! Every message that got `sent` must be readable afterwards, exactly once, with seqs gapless;
//! a send during the outage either succeeds or gets `store_unavailable` — never a false ack.
//! A second test runs the three-node switchboard cluster on the same ring (RF 3) under load
//! while Cassandra node 2 and a switchboard node are SIGKILLed and restarted.
//!
//! It needs node 1 running and starts/stops nodes 2 and 3 itself, so it is `#[ignore]`d and
//! run on its own by `scripts/test` (`-- --ignored cassandra_fault`), after the other suites:
//! nodes joining the ring would take token ranges away from their RF 1 keyspaces.

use crate::cluster::{Cluster, Load};
use crate::harness::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

fn cassandra(args: &[&str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cassandra");
    let status = std::process::Command::new(script).args(args).status().unwrap();
    assert!(status.success(), "scripts/cassandra {args:?} failed");
}

/// Starts nodes 2 and 3 (if not running) and waits until node 3 sees all three up and normal:
/// "serves CQL" alone does not mean gossip has settled, and a schema change made before that
/// may reach a node that has not heard of the keyspace yet.
fn three_node_ring() {
    cassandra(&["start", "2"]);
    cassandra(&["start", "3"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cassandra");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let out = std::process::Command::new(&script).args(["nodetool", "3", "status"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.lines().filter(|l| l.starts_with("UN")).count() == 3 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the 3-node ring did not settle in 90 s:\n{text}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[tokio::test]
#[ignore = "needs Cassandra node 1 running and starts nodes 2-3: run by scripts/test"]
async fn cassandra_fault_sigkill_one_of_three_nodes_loses_nothing_acked() {
    tokio::task::spawn_blocking(three_node_ring).await.unwrap();
    let keyspace = format!("sbtest_fault_{}", std::process::id());
    let env = [
        ("SWITCHBOARD_STORE_BACKEND", "cassandra"),
        ("SWITCHBOARD_CASSANDRA_NODES", "127.0.0.1:9042,127.0.0.2:9042,127.0.0.3:9042"),
        ("SWITCHBOARD_CASSANDRA_KEYSPACE", keyspace.as_str()),
        ("SWITCHBOARD_CASSANDRA_REPLICATION", "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"),
        ("SWITCHBOARD_CASSANDRA_CONSISTENCY", "local_quorum"),
        ("SWITCHBOARD_CASSANDRA_TIMEOUT_MS", "2000"),
    ];
    schema_apply(env.iter().copied());
    let server = Server::start_env(&env).await;
    let (api, alice, bob, conversation) = pair(&server).await;
    let mut a = Ws::connect(&server, &alice).await;

    // 0 = before the kill, 1 = node 2 down, 2 = restarting/restarted, 3 = stop sending.
    let phase = Arc::new(AtomicU8::new(0));
    let control = {
        let phase = phase.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tokio::task::spawn_blocking(|| cassandra(&["kill", "2"])).await.unwrap();
            phase.store(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(8)).await;
            phase.store(2, Ordering::SeqCst);
            tokio::task::spawn_blocking(|| cassandra(&["start", "2"])).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            phase.store(3, Ordering::SeqCst);
        })
    };

    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused: BTreeSet<String> = BTreeSet::new();
    let mut sent_during_outage = 0;
    let mut i = 0u64;
    let record =
        |frame: serde_json::Value, acked: &mut BTreeMap<String, u64>, refused: &mut BTreeSet<String>| {
            match frame["type"].as_str() {
                Some("sent") => {
                    let cmid = frame["client_msg_id"].as_str().unwrap().to_owned();
                    let seq = frame["seq"].as_u64().unwrap();
                    assert!(acked.insert(cmid, seq).is_none(), "two acks for one send: {frame}");
                }
                Some("error") => {
                    let code = frame["code"].as_str().unwrap();
                    assert!(code == "store_unavailable" || code == "unavailable", "unexpected error {frame}");
                    refused.insert(frame["id"].as_str().unwrap().to_owned());
                }
                _ => {}
            }
        };
    while phase.load(Ordering::SeqCst) < 3 {
        let cmid = format!("f{i}");
        i += 1;
        if phase.load(Ordering::SeqCst) == 1 {
            sent_during_outage += 1;
        }
        a.send(json!({"type":"send","id":cmid,"conversation_id":conversation,"client_msg_id":cmid,"body":format!("body {cmid}")}))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while let Some(frame) =
            a.next_within(deadline.saturating_duration_since(tokio::time::Instant::now())).await
        {
            record(frame, &mut acked, &mut refused);
        }
    }
    control.await.unwrap();
    // Every send gets exactly one answer.
    while (acked.len() + refused.len()) < i as usize {
        let frame = a.next_within(Duration::from_secs(15)).await.expect("every send is answered");
        record(frame, &mut acked, &mut refused);
    }
    assert!(sent_during_outage > 50, "too few sends while node 2 was down: {sent_during_outage}");
    assert!(acked.len() > i as usize / 2, "most sends succeed at LOCAL_QUORUM with one node down");

    eprintln!(
        "fault test: {i} sends, {} acked at once, {} refused (store_unavailable), {sent_during_outage} sent while node 2 was down",
        acked.len(),
        refused.len()
    );
    // Retry what was refused, as a client would: each ends up stored exactly once.
    for cmid in refused.clone() {
        let sent = a.send_message(&conversation, &cmid, &format!("body {cmid}")).await;
        acked.insert(cmid, sent["seq"].as_u64().unwrap());
    }
    let stored: Vec<(u64, String, String)> = all_messages(&api, &conversation, &bob.token)
        .await
        .iter()
        .map(|m| {
            let text = |k: &str| m[k].as_str().unwrap().to_owned();
            (m["seq"].as_u64().unwrap(), text("client_msg_id"), text("body"))
        })
        .collect();
    assert_eq!(stored.len(), i as usize, "every send stored exactly once");
    for (n, (seq, cmid, body)) in stored.iter().enumerate() {
        assert_eq!(*seq, n as u64 + 1, "seqs are gapless");
        assert_eq!(acked.get(cmid), Some(seq), "{cmid} stored at the seq it was acked with");
        assert_eq!(*body, format!("body {cmid}"));
    }
    tokio::task::spawn_blocking(|| {
        cassandra(&["stop", "3"]);
        cassandra(&["stop", "2"]);
    })
    .await
    .unwrap();
}

/// The cluster on a 3-node ring (RF 3, LOCAL_QUORUM, the LWTs at LOCAL_SERIAL): three
/// switchboard nodes under load through HAProxy while Cassandra node 2 is SIGKILLed and a
/// switchboard node too, both restarted. Same checks as the cluster chaos tests.
#[tokio::test]
#[ignore = "needs Cassandra node 1 and Redis running and starts nodes 2-3: run by scripts/test"]
async fn cassandra_fault_cluster_on_three_ring_nodes_loses_nothing() {
    let Ok(redis) = std::env::var("SWITCHBOARD_TEST_REDIS") else { return };
    tokio::task::spawn_blocking(three_node_ring).await.unwrap();
    let Some(mut cluster) = Cluster::start_with_store(
        "ring",
        &format!("redis://{redis}"),
        Some("127.0.0.1:9042,127.0.0.2:9042,127.0.0.3:9042"),
        "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}",
    )
    .await
    else {
        return;
    };
    let load = Load::start(&cluster, 16, Duration::from_millis(150)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.note("SIGKILL Cassandra node 2");
    tokio::task::spawn_blocking(|| cassandra(&["kill", "2"])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.note("SIGKILL switchboard node3");
    cluster.nodes[2].as_mut().unwrap().kill9().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.note("restart switchboard node3 and Cassandra node 2");
    cluster.start_node(2).await;
    tokio::task::spawn_blocking(|| cassandra(&["start", "2"])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    load.finish(&cluster).await;
    drop(cluster);
    tokio::task::spawn_blocking(|| {
        cassandra(&["stop", "3"]);
        cassandra(&["stop", "2"]);
    })
    .await
    .unwrap();
}
