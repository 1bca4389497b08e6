//! The master key must match the data: a node whose key file is gone, or that is given a
//! different key, refuses to start (exit 2) and says what to restore — it never generates a new
//! key over data it could not read.

use crate::harness::*;
use std::sync::Arc;

#[tokio::test]
async fn a_lost_key_file_is_refused_not_replaced() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut server = Server::start_with(dir.clone(), &[]).await;
    let (_api, alice, _bob, conversation) = pair(&server).await;
    Ws::connect(&server, &alice).await.send_message(&conversation, "m1", "before the loss").await;
    server.terminate().await;

    let key_file = dir.path().join("data").join("master.key");
    let original = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let (code, stderr) = Server::refused(&dir, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("master key missing"), "{stderr}");
    assert!(stderr.contains("master.key"), "the error names the file to restore: {stderr}");
    assert!(!key_file.exists(), "a new key was written over the lost one");

    // Restoring the file is the fix.
    std::fs::write(&key_file, original).unwrap();
    let server = Server::start_with(dir.clone(), &[]).await;
    let (status, page) =
        server.api().get(&format!("/v1/conversations/{conversation}/messages"), Some(&alice.token)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["body"], "before the loss");
}

#[tokio::test]
async fn a_different_key_is_refused() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut server = Server::start_with(dir.clone(), &[]).await;
    pair(&server).await;
    server.terminate().await;

    let other = "ab".repeat(32);
    let (code, stderr) = Server::refused(&dir, &[("SWITCHBOARD_MASTER_KEY", &other)]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("wrong master key"), "{stderr}");
    // The node's own key still works.
    Server::start_with(dir.clone(), &[]).await;
}
