//! The distributed-locking lab, end to end on the real Docker engine.

mod common;

use common::*;

#[test]
fn distributed_locking_passes_and_leaves_nothing() {
    let lab = temp_lab(
        "global-coordination/distributed-locking.yaml",
        "pass",
        |t| t,
    );
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);
    let scenarios = report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios");
    assert_eq!(scenarios.len(), 6);
    let by_name = |n: &str| scenarios.iter().find(|s| s["name"] == n).expect(n);
    // Observed values, not constants: the race and the lock show in the numbers.
    assert!(
        by_name("no-lock")["observations"]["lost_updates"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert_eq!(by_name("setnx")["observations"]["final_counter"], 400);
    assert_eq!(
        by_name("setnx")["observations"]["max_concurrent_holders"],
        1
    );
    assert!(
        by_name("lease-expires-mid-work")["observations"]["max_concurrent_holders"]
            .as_i64()
            .unwrap()
            > 1
    );
    // The pause fault really froze Redis past a 500 ms lease: a holder lost its lock.
    let freeze = by_name("redis-freezes-past-the-lease");
    assert!(
        freeze["observations"]["lock_lost"].as_i64().unwrap() > 0,
        "{freeze}"
    );
    let faults: Vec<&str> = freeze["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "fault")
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(faults, ["pause redis", "unpause redis"]);
    for s in scenarios {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn a_wrong_expectation_fails_with_exit_1_and_shows_the_observed_value() {
    // The broken variant: expect the unlocked counter to be exact.
    let lab = temp_lab(
        "global-coordination/distributed-locking.yaml",
        "broken",
        |t| t.replace("lost_updates: \"> 0\"", "lost_updates: \"== 0\""),
    );
    let junit = lab.dir.path().join("report.xml");
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "no-lock",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL"), "{}", text(&out));
    let row = stdout
        .lines()
        .find(|l| l.contains("lost_updates"))
        .expect("a lost_updates row");
    assert!(row.contains("== 0") && row.contains("FAIL"), "row: {row}");
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.contains("<failure"), "{xml}");
    assert_nothing_left(&lab.name);
}

#[test]
fn two_concurrent_runs_of_the_same_lab_both_pass() {
    let a = temp_lab(
        "global-coordination/distributed-locking.yaml",
        "twin",
        |t| t,
    );
    let spawn = || {
        infralab()
            .args(["run", a.path.to_str().unwrap(), "--format", "json"])
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
