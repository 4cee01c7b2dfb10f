//! The distributed-locking lab, end to end on the real Docker engine.

use crate::common::*;
use serde_json::json;

const LAB: &str = "global-coordination/distributed-locking.yaml";

fn obs_i64(report: &serde_json::Value, name: &str, observation: &str) -> i64 {
    let s = scenario(report, name);
    s["observations"][observation]
        .as_i64()
        .unwrap_or_else(|| panic!("{observation} missing in {s}"))
}

#[test]
fn distributed_locking_passes_and_leaves_nothing() {
    let lab = temp_lab(LAB, "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    let scenarios = report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios");
    assert_eq!(scenarios.len(), 6);
    for s in scenarios {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    // Observed values, not constants: the race, the lock and the fence show in
    // what the storage counted.
    assert!(obs_i64(&report, "no-lock", "lost_updates") > 0);
    assert_eq!(obs_i64(&report, "setnx", "final_counter"), 400);
    assert_eq!(obs_i64(&report, "setnx", "max_concurrent_holders"), 1);
    assert!(obs_i64(&report, "lease-expires-mid-work", "lost_updates") > 0);
    let refused = obs_i64(&report, "fencing-tokens", "fenced_rejections");
    assert!(refused > 0);
    assert_eq!(
        obs_i64(&report, "fencing-tokens", "final_counter"),
        40 - refused
    );
    // The pause fault really froze the lock server past a 500 ms lease.
    let freeze = scenario(&report, "redis-freezes-past-the-lease");
    let faults: Vec<&str> = freeze["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "fault")
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(faults, ["pause locks", "unpause locks"]);
    assert_nothing_left(&lab.name);
}

#[test]
fn distributed_locking_passes_with_other_parameters() {
    let lab = temp_lab(
        LAB,
        "params",
        changed_params(&[("workers", json!(5)), ("increments", json!(6))]),
    );
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(obs_i64(&report, "setnx", "final_counter"), 30);
    assert_nothing_left(&lab.name);
}

#[test]
fn without_fencing_the_short_lease_loses_updates_and_fails() {
    // The broken implementation: the same short lease, no fence token.
    let lab = temp_lab(LAB, "nofence", |t| {
        t.replace(
            "increments: 5, fencing: true",
            "increments: 5, fencing: false",
        )
    });
    let junit = lab.dir.path().join("report.xml");
    let (code, report, out) = run_json(
        &lab,
        &[
            "--scenario",
            "fencing-tokens",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(scenario(&report, "fencing-tokens")["verdict"], "fail");
    assert_eq!(
        check_verdict(&report, "fencing-tokens", "lost_updates"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "fencing-tokens", "fenced_rejections"),
        "fail"
    );
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.contains("<failure"), "{xml}");
    assert_nothing_left(&lab.name);
}

#[test]
fn without_a_lock_the_exact_counter_fails() {
    // The broken implementation: the `setnx` scenario with no lock.
    let lab = temp_lab(LAB, "nolock", |t| {
        t.replace(
            "params: { strategy: setnx, ttl_ms: 5000, hold_ms: 1 }",
            "params: { strategy: none, ttl_ms: 5000, hold_ms: 1 }",
        )
    });
    let (code, report, out) = run_json(&lab, &["--scenario", "setnx"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(check_verdict(&report, "setnx", "final_counter"), "fail");
    assert_eq!(check_verdict(&report, "setnx", "lost_updates"), "fail");
    assert_nothing_left(&lab.name);
}

#[test]
fn a_lease_longer_than_the_work_loses_nothing_and_the_lost_update_check_fails() {
    // The lease-expires scenario with a lease longer than the work: its
    // failure-mode expectations must fail, not hold by construction.
    let lab = temp_lab(LAB, "longlease", |t| {
        t.replace(
            "params: { strategy: setnx, ttl_ms: 20, hold_ms: 60, increments: 5 }",
            "params: { strategy: setnx, ttl_ms: 5000, hold_ms: 60, increments: 5 }",
        )
    });
    let (code, report, out) = run_json(&lab, &["--scenario", "lease-expires-mid-work"]);
    assert_eq!(code, Some(1), "{out}");
    for o in ["lost_updates", "max_concurrent_holders", "lock_lost"] {
        assert_eq!(
            check_verdict(&report, "lease-expires-mid-work", o),
            "fail",
            "{o}"
        );
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn two_concurrent_runs_of_the_same_lab_both_pass() {
    let _cpu = shared();
    let a = temp_lab(LAB, "twin", |t| t);
    let spawn = || {
        infralab()
            .args([
                "run",
                a.path.to_str().unwrap(),
                "--format",
                "json",
                "--scenario",
                "fencing-tokens",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (first, second) = (spawn(), spawn());
    for child in [first, second] {
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert_nothing_left(&a.name);
}
