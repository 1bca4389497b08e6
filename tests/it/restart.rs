//! Crashes and restarts: after SIGKILL nothing acked is lost and seq continues gaplessly;
//! SIGTERM drains with close code 1001.

use crate::harness::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

#[tokio::test]
async fn sigkill_loses_nothing_acked_and_seq_stays_gapless() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut server = Server::start_with(dir.clone(), &[]).await;
    let (_api, alice, bob, conversation) = pair(&server).await;
    let mut a = Ws::connect(&server, &alice).await;

    // Pipeline 200 sends, kill the server after about half are acked.
    for i in 0..200 {
        a.send(json!({"type":"send","conversation_id":conversation,"client_msg_id":format!("k{i}"),"body":format!("body {i}")})).await;
    }
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    while acked.len() < 100 {
        let sent = a.expect("sent").await;
        acked.insert(sent["client_msg_id"].as_str().unwrap().to_owned(), sent["seq"].as_u64().unwrap());
    }
    server.kill9().await;
    // Acks that were already on the wire count too.
    while let Some(frame) = a.next_within(std::time::Duration::from_millis(500)).await {
        if frame["type"] == "sent" {
            acked.insert(frame["client_msg_id"].as_str().unwrap().to_owned(), frame["seq"].as_u64().unwrap());
        }
    }

    let server = Server::start_with(dir.clone(), &[]).await;
    let api = server.api();
    let (status, page) =
        api.get(&format!("/v1/conversations/{conversation}/messages?limit=200"), Some(&bob.token)).await;
    assert_eq!(status, 200, "{page}");
    let stored: Vec<(u64, String, String)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["client_msg_id"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Gapless from 1, no duplicate client ids, every ack present with its seq and body.
    for (i, (seq, _, _)) in stored.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
    }
    let by_id: BTreeMap<&str, (u64, &str)> =
        stored.iter().map(|(s, c, b)| (c.as_str(), (*s, b.as_str()))).collect();
    assert_eq!(by_id.len(), stored.len(), "duplicate client_msg_id stored");
    for (cmid, seq) in &acked {
        let (stored_seq, body) = by_id.get(cmid.as_str()).unwrap_or_else(|| panic!("acked {cmid} lost"));
        assert_eq!(stored_seq, seq);
        assert_eq!(*body, format!("body {}", &cmid[1..]));
    }

    // The client retries everything it holds no ack for: each is stored exactly once.
    let mut a = Ws::connect(&server, &api.login(&alice.username).await).await;
    let last = stored.len() as u64;
    let mut next = last;
    for i in 0..200 {
        let cmid = format!("k{i}");
        if acked.contains_key(&cmid) {
            continue;
        }
        let sent = a.send_message(&conversation, &cmid, &format!("body {i}")).await;
        let seq = sent["seq"].as_u64().unwrap();
        match by_id.get(cmid.as_str()) {
            Some((stored_seq, _)) => {
                assert_eq!(seq, *stored_seq, "a stored but unacked send must keep its seq")
            }
            None => {
                next += 1;
                assert_eq!(seq, next, "new sends continue gaplessly");
            }
        }
    }
    let (_, page) =
        api.get(&format!("/v1/conversations/{conversation}/messages?limit=200"), Some(&bob.token)).await;
    let seqs: Vec<u64> =
        page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn sigterm_drains_with_1001_and_keeps_data() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut server = Server::start_with(dir.clone(), &[]).await;
    let (_api, alice, bob, conversation) = pair(&server).await;
    let mut a = Ws::connect(&server, &alice).await;
    let mut b = Ws::connect(&server, &bob).await;
    a.send_message(&conversation, "before", "before shutdown").await;

    let status = server.terminate().await;
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    assert_eq!(close_code(&a.closed().await), 1001);
    assert_eq!(close_code(&b.closed().await), 1001);

    let server = Server::start_with(dir, &[]).await;
    let mut b = Ws::connect(&server, &bob).await;
    b.send(json!({"type":"sync","cursors":{}})).await;
    assert_eq!(b.expect("message").await["body"], "before shutdown");
    let mut a = Ws::connect(&server, &alice).await;
    assert_eq!(a.send_message(&conversation, "after", "after restart").await["seq"], 2);
}
