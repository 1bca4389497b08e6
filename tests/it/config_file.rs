//! The shipped `config/switchboard.toml` loads, validates and equals the built-in defaults;
//! every key in it is documented by a comment.

use std::path::Path;
use switchboard::config::Config;

#[test]
fn shipped_config_is_valid_and_equals_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchboard.toml");
    let loaded = Config::load(Some(&path), |_| None).unwrap();
    assert_eq!(loaded, Config::default());
}

#[test]
fn every_key_is_in_the_shipped_file_with_a_comment() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchboard.toml"))
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (_, key) in Config::env_vars() {
        let name = key.split('.').nth(1).unwrap();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{name} =")))
            .unwrap_or_else(|| panic!("{key} missing"));
        // The paragraph the key sits in carries a comment.
        let documented = lines[..at].iter().rev().take_while(|l| !l.is_empty()).any(|l| l.starts_with('#'));
        assert!(documented, "{key} has no comment");
    }
}

#[test]
fn unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nhttp_adr = \"127.0.0.1:1\"\n").unwrap();
    let e = Config::load(Some(&path), |_| None).unwrap_err().to_string();
    assert!(e.contains("http_adr"), "{e}");
}

#[test]
fn binary_refuses_invalid_config_naming_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("SWITCHBOARD_MAX_BODY_BYTES", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_body_bytes"), "{err}");
}

#[tokio::test]
async fn a_cluster_on_the_embedded_store_is_refused_at_start_naming_the_fix() {
    // The real binary, as an operator would start it: exit status 2 and a message on stderr.
    let dir = tempfile::tempdir().unwrap();
    let secret = "s".repeat(40);
    let (code, stderr) = crate::harness::Server::refused(
        &dir,
        &[
            ("SWITCHBOARD_STORE_BACKEND", "embedded"),
            ("SWITCHBOARD_PRESENCE_BACKEND", "redis"),
            ("SWITCHBOARD_CLUSTER_ENABLED", "true"),
            ("SWITCHBOARD_CLUSTER_SECRET", &secret),
        ],
    )
    .await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("cluster.cluster_enabled") && stderr.contains("cassandra"), "{stderr}");
    assert!(stderr.contains("embedded store"), "{stderr}");
    // A cluster whose attachments would stay on one node is refused.
    let (_, stderr) = crate::harness::Server::refused(
        &dir,
        &[
            ("SWITCHBOARD_STORE_BACKEND", "cassandra"),
            ("SWITCHBOARD_PRESENCE_BACKEND", "redis"),
            ("SWITCHBOARD_CLUSTER_ENABLED", "true"),
            ("SWITCHBOARD_CLUSTER_SECRET", &secret),
        ],
    )
    .await;
    assert!(stderr.contains("attachments.blob_backend"), "{stderr}");
    // A cluster without its shared secret is refused as well.
    let (_, stderr) = crate::harness::Server::refused(
        &dir,
        &[
            ("SWITCHBOARD_STORE_BACKEND", "cassandra"),
            ("SWITCHBOARD_PRESENCE_BACKEND", "redis"),
            ("SWITCHBOARD_CLUSTER_ENABLED", "true"),
            ("SWITCHBOARD_BLOB_BACKEND", "s3"),
        ],
    )
    .await;
    assert!(stderr.contains("cluster.cluster_secret"), "{stderr}");
}
