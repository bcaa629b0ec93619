//! A short chaos run: every fault kind strikes a spawned deployment while
//! subscribers drop, stay away a while and resume across nodes, and some
//! publishes carry large events; the promise must hold, and no publish is
//! stored twice.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

use std::process::Command;

#[test]
fn the_promise_holds_through_every_kind_of_fault() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chaos.json");
    let output = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["chaos", "--duration", "45", "--fault-every", "1", "--subscribers", "16", "--rate", "80", "--out"])
        .arg(&out)
        .output()
        .expect("run roomcast chaos");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "chaos run failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let verdict = &report["verdict"];
    for field in ["silent_losses", "duplicates", "order_violations", "id_reuse", "stored_twice", "phantoms", "stuck"] {
        assert_eq!(verdict[field], 0, "{field}: {verdict}");
    }
    assert_eq!(report["fault_failures"], 0, "every fault was applied: {stderr}");
    assert!(report["acknowledged"].as_u64().unwrap() > 1000, "the run carried traffic: {report}");
    assert!(verdict["delivered"].as_u64().unwrap() > 5000);
    assert!(report["subscriber_connections"].as_u64().unwrap() > 100, "subscribers resumed across nodes");
    let mut kinds = vec![
        "node_kill",
        "node_term",
        "redis_restart",
        "redis_restore",
        "redis_crash",
        "frozen_delete",
        "client_kill",
        "room_delete",
        "metadata_delete",
        "flush_all",
        "eviction",
    ];
    if report["partitions"] == true {
        kinds.push("partition");
    }
    for kind in kinds {
        assert!(report["fault_counts"][kind].as_u64().unwrap_or(0) >= 1, "{kind} never struck: {stderr}");
    }
    assert!(verdict["gaps"].as_u64().unwrap() > 0, "data-losing faults must show as gaps");
    assert_eq!(report["gaps_by_fault"]["unexplained"].as_u64().unwrap_or(0), 0, "{report}");
}
