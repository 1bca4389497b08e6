//! The load generator's smoke run (`switchboard-bench run --quick`): every scenario at small
//! size against the real binary, so the tool cannot rot. It checks behaviour only — results
//! written, nothing acked lost, duplicated or reordered — never timing.

use serde_json::Value;

#[test]
fn quick_run_writes_results_and_loses_nothing() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["run", "--quick", "--scenarios", "s1,s2,s3,s4,s6"])
        .arg("--out")
        .arg(out.path())
        .arg("--switchboard-bin")
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .status()
        .unwrap();
    assert!(status.success());
    let results: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let summary = std::fs::read_to_string(out.path().join("summary.md")).unwrap();
    assert!(summary.contains("S1 idle connections") && summary.contains("S6 history"), "{summary}");

    let idle = &results["idle"][0];
    assert_eq!(idle["connections"], idle["requested"], "{idle}");
    let latency = results["latency"].as_array().unwrap();
    assert!(latency.iter().any(|l| l["scenario"] == "s2") && latency.iter().any(|l| l["scenario"] == "s3"));
    for step in latency {
        assert_eq!(step["sent"], step["scheduled"], "{step}");
        assert_eq!(step["acked"], step["sent"], "{step}");
        assert_eq!(step["delivered"], step["acked"], "{step}");
        for counter in ["lost", "duplicated", "reordered"] {
            assert_eq!(step[counter], 0, "{counter}: {step}");
        }
    }
    let history = &results["history"][0];
    assert_eq!(history["errors"], 0, "{history}");
    assert_eq!(history["latency_us"]["count"], history["requests"], "{history}");
    assert_eq!(results["skipped"][0]["scenario"], "s4");
}
