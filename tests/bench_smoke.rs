//! The bundled harness must not rot: a few seconds of its smoke preset
//! against two spawned nodes on a spawned Redis, with a reconnect storm.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

use std::process::Command;

#[test]
fn bench_smoke_preset_runs_clean_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smoke.json");
    let output = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["bench", "--preset", "smoke", "--source-ips", "2", "--out"])
        .arg(&out)
        .output()
        .expect("run roomcast bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let run = &report["runs"][0];
    let outcome = &run["outcome"];
    assert_eq!(report["preset"], "smoke");
    assert!(outcome["expected"].as_u64().unwrap() > 0, "something was published: {outcome}");
    assert_eq!(outcome["received"], outcome["expected"]);
    for field in ["lost", "duplicates", "out_of_order", "gaps"] {
        assert_eq!(outcome[field], 0, "{field}: {outcome}");
    }
    assert!(outcome["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(outcome["storm_caught_up_ms"].as_f64().is_some(), "the storm happened: {outcome}");
    assert!(outcome["cpu_seconds_per_million"].as_f64().is_some(), "spawned processes are measured");
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
}
