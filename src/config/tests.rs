//! Loading, environment overrides and validation of the configuration.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn defaults_are_valid() {
    Config::load(None, no_env).unwrap();
}

#[test]
fn env_overrides_typed_keys() {
    let c = Config::load(None, |k| match k {
        "SWITCHBOARD_HTTP_ADDR" => Some("127.0.0.1:0".into()),
        "SWITCHBOARD_HEARTBEAT_MS" => Some("500".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.server.http_addr, "127.0.0.1:0");
    assert_eq!(c.websocket.heartbeat_ms, 500);
}

#[test]
fn bad_env_value_names_the_variable() {
    let e = Config::load(None, |k| (k == "SWITCHBOARD_HEARTBEAT_MS").then(|| "soon".into())).unwrap_err();
    assert!(e.to_string().contains("SWITCHBOARD_HEARTBEAT_MS"), "{e}");
}

#[test]
fn invalid_value_names_the_key() {
    let e = Config::load(None, |k| (k == "SWITCHBOARD_HTTP_ADDR").then(|| "nowhere".into())).unwrap_err();
    assert!(e.to_string().contains("server.http_addr"), "{e}");
}

#[test]
fn env_var_names_are_unique() {
    let vars = Config::env_vars();
    let mut names: Vec<_> = vars.iter().map(|(v, _)| v.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), vars.len());
}

#[test]
fn master_key_is_never_printed() {
    let mut c = Config::default();
    c.security.master_key = "ab".repeat(32);
    assert!(!format!("{c:?}").contains("abab"));
}
