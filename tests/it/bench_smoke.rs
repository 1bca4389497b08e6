//! The load generator's smoke run (`switchboard-bench run --quick`): every scenario at small
//! size against the real binary, so the tool cannot rot. It checks behaviour only — results
//! written, every step valid (per pair scheduled = sent = acked = delivered, every group
//! member has every message once, no error frames, no pending history request), the verdict
//! in summary.md and the exit status, S7's measurements present — never timing, and not S7's
//! expectations of the server.

use serde_json::Value;

#[test]
fn quick_run_writes_results_and_loses_nothing() {
    let _heavy = crate::harness::HEAVY.blocking_lock();
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["run", "--quick", "--scenarios", "s1,s2,s3,s4,s6,s7"])
        .arg("--out")
        .arg(out.path())
        .arg("--switchboard-bin")
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .status()
        .unwrap();
    let summary = std::fs::read_to_string(out.path().join("summary.md")).unwrap_or_default();
    assert!(status.success(), "{status}: {summary}");
    let results: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert!(summary.contains("S1 idle connections") && summary.contains("S6 history"), "{summary}");
    assert!(summary.contains("S7 slow consumer") && summary.contains("**Verdict: PASS**"), "{summary}");
    assert_eq!(results["verdict"]["pass"], true, "{}", results["verdict"]);

    let idle = &results["idle"][0];
    assert_eq!(idle["connections"], idle["requested"], "{idle}");
    let latency = results["latency"].as_array().unwrap();
    assert!(latency.iter().any(|l| l["scenario"] == "s2") && latency.iter().any(|l| l["scenario"] == "s3"));
    for step in latency {
        assert_eq!(step["valid"], true, "{step}");
        assert_eq!(step["pairs_mismatched"], 0, "{step}");
        assert_eq!(step["errors"], serde_json::json!({}), "{step}");
        assert_eq!(step["sent"], step["scheduled"], "{step}");
        assert_eq!(step["acked"], step["sent"], "{step}");
        assert_eq!(step["delivered"], step["acked"], "{step}");
        for counter in ["lost", "duplicated", "reordered"] {
            assert_eq!(step[counter], 0, "{counter}: {step}");
        }
    }
    let history = &results["history"][0];
    assert_eq!(history["valid"], true, "{history}");
    assert_eq!(history["errors"], 0, "{history}");
    assert_eq!(history["pending"], 0, "{history}");
    assert_eq!(history["latency_us"]["count"], history["requests"], "{history}");
    let groups = results["group_fanout"].as_array().unwrap();
    assert!(!groups.is_empty(), "{}", results["group_fanout"]);
    for step in groups {
        assert_eq!(step["valid"], true, "{step}");
        assert_eq!(step["errors"], serde_json::json!({}), "{step}");
        assert_eq!(step["sent"], step["scheduled"], "{step}");
        assert_eq!(step["acked"], step["sent"], "{step}");
        assert_eq!(step["delivered"], step["expected_deliveries"], "{step}");
        for counter in ["lost", "duplicated", "reordered"] {
            assert_eq!(step[counter], 0, "{counter}: {step}");
        }
    }

    // S7 measures; whether the server met its expectations is not this test's business.
    let slow = &results["slow_consumer"][0];
    assert_eq!(slow["valid"], true, "{slow}");
    assert_eq!(slow["idle_connected"], slow["idle_requested"], "{slow}");
    assert_eq!(slow["hostile_connected"], slow["hostile_requested"], "{slow}");
    assert!(slow["pings_sent"].as_u64().unwrap() > 0, "{slow}");
    assert!(slow["rss_peak_kib"].as_u64().unwrap() > 0, "{slow}");
    for h in slow["hostile"].as_array().unwrap() {
        assert!(h["requests_sent"].as_u64().unwrap() > 0, "{h}");
    }
}
