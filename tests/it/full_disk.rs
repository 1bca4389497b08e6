//! A full disk: the node's data dir on a small tmpfs (mounted here; needs root, as CI has).
//! Sends are refused with `store_unavailable` while it is full, `/readyz` says 503, and once
//! space is freed the node writes again without a restart; after kill -9 every acked message
//! is there, gapless.

use crate::harness::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A tmpfs mounted for the test's lifetime.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        SmallDisk(at.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

async fn ready(server: &Server) -> u16 {
    server.api().get("/readyz", None).await.0
}

#[tokio::test]
async fn a_full_disk_refuses_sends_turns_unready_and_recovers_without_restart() {
    if e2e_on_cassandra() {
        return; // the embedded store's disk; Cassandra's own disk is not ours
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let data = dir.path().join("data");
    let _disk = SmallDisk::mount(&data, "48m");
    let mut server = Server::start_with(dir.clone(), &[]).await;
    let (_api, alice, bob, conversation) = pair(&server).await;
    let mut a = Ws::connect(&server, &alice).await;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let body = "x".repeat(8 * 1024);
    for i in 0..5 {
        let sent = a.send_message(&conversation, &format!("before{i}"), &body).await;
        acked.insert(format!("before{i}"), sent["seq"].as_u64().unwrap());
    }
    assert_eq!(ready(&server).await, 200);

    let filler = fill(&data);
    // Sends now fail (a few may still fit in space fjall had already taken).
    let mut refused = 0;
    for i in 0..200 {
        let id = format!("full{i}");
        a.send(json!({"type":"send","conversation_id":conversation,"client_msg_id":id,"body":body})).await;
        let frame = a.next().await;
        match frame["type"].as_str() {
            Some("sent") => {
                acked.insert(id, frame["seq"].as_u64().unwrap());
            }
            Some("error") => {
                assert_eq!(frame["code"], "store_unavailable", "{frame}");
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(refused >= 3, "a full disk never refused a send");
    let mut unready = false;
    for _ in 0..50 {
        if ready(&server).await == 503 {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unready, "/readyz stayed 200 on a full disk:\n{}", server.log());

    // Free the space: the node writes again, no restart.
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if ready(&server).await == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "/readyz never came back after space was freed:\n{}", server.log());
    for i in 0..5 {
        let id = format!("after{i}");
        let sent = a.send_message(&conversation, &id, &body).await;
        assert_eq!(sent["type"], "sent", "{sent}");
        acked.insert(id, sent["seq"].as_u64().unwrap());
    }

    // Nothing acked is lost, seqs are gapless, after kill -9.
    server.kill9().await;
    let server = Server::start_with(dir.clone(), &[]).await;
    let (status, page) = server
        .api()
        .get(&format!("/v1/conversations/{conversation}/messages?limit=200"), Some(&bob.token))
        .await;
    assert_eq!(status, 200, "{page}");
    let stored: BTreeMap<String, u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["client_msg_id"].as_str().unwrap().to_owned(), m["seq"].as_u64().unwrap()))
        .collect();
    let mut seqs: Vec<u64> = stored.values().copied().collect();
    seqs.sort();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seqs not gapless");
    for (id, seq) in &acked {
        assert_eq!(stored.get(id), Some(seq), "acked {id} lost or moved");
    }
}
