//! Fault steps on real containers: a relative heal (`for: DURATION`) fires
//! its inverse that long after the fault action returned, and both show in
//! the scenario timeline.

use crate::common::*;

/// The locking lab, whose freezes are relative heals: the lock server is
/// paused on the `holding` milestone `for: 1500ms`.
fn relative_heal_lab() -> TempLab {
    temp_lab("global-coordination/distributed-locking.yaml", "for", |t| {
        assert_eq!(
            t.matches("action: pause, service: locks, for: 1500ms")
                .count(),
            2,
            "the catalog lab's freezes changed; update this test"
        );
        t
    })
}

/// `at_ms` of the first timeline event `what` (source `fault`).
fn fault_at(scenario: &serde_json::Value, what: &str) -> u64 {
    scenario["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["source"] == "fault" && e["what"] == what)
        .and_then(|e| e["at_ms"].as_u64())
        .unwrap_or_else(|| panic!("`{what}` in the timeline of {scenario}"))
}

#[test]
fn a_relative_heal_unpauses_after_its_duration() {
    let lab = relative_heal_lab();
    let (code, report, all) = run_json(
        &lab,
        &[
            "--scenario",
            "redis-freezes-within-the-lease",
            "--scenario",
            "redis-freezes-past-the-lease",
        ],
    );
    for name in [
        "redis-freezes-within-the-lease",
        "redis-freezes-past-the-lease",
    ] {
        let s = scenario(&report, name);
        for check in s["checks"].as_array().expect("checks") {
            assert_eq!(check["verdict"], "pass", "{name}: {check}\n{all}");
        }
        assert_eq!(s["verdict"], "pass", "{name}: {s}\n{all}");
        let paused = fault_at(s, "pause locks");
        let unpaused = fault_at(s, "unpause locks");
        let gap = unpaused - paused;
        // 1.5 s after `docker pause` returned: never less, plus the time the
        // pause itself took (well under a second even on a busy machine).
        assert!((1500..2500).contains(&gap), "{name}: gap {gap} ms in {s}");
    }
    assert_eq!(code, Some(0), "{all}");
    assert_nothing_left(&lab.name);
}

/// A partition of the etcd lab: the majority stays on the lab network, the
/// leader moves to a network of its own. The cut-off leader behaves as when
/// it is disconnected, the timeline names both sides, and the heal after the
/// scenario makes the cluster whole for the next one (three members agreeing
/// on a leader); the group network is gone with the run.
#[test]
fn a_partition_splits_the_lab_network_and_heals() {
    let lab = temp_lab(
        "global-coordination/consensus-leader-election.yaml",
        "partition",
        |t| {
            replaced(
                t,
                "{ after: writing, action: disconnect, service: etcd-1 }",
                "{ after: writing, action: partition, groups: [[etcd-2, etcd-3], [etcd-1]] }",
            )
        },
    );
    // Round 2's steady runs after round 1's partition and its heal.
    let (code, report, all) = run_json(
        &lab,
        &[
            "--scenario",
            "steady",
            "--scenario",
            "leader-cut-off",
            "--repeat",
            "2",
        ],
    );
    assert_eq!(code, Some(0), "{all}");
    let cut = scenario(&report, "leader-cut-off");
    assert_eq!(cut["observations"]["linearizable_answered"], 0, "{cut}");
    assert!(obs(&report, "leader-cut-off", "stale_reads") > 0.0);
    fault_at(cut, "partition [etcd-2, etcd-3] | [etcd-1]");
    let steady = &scenario(&report, "steady")["repeats"];
    assert_eq!(steady["passed"], 2, "{steady}");
    assert_eq!(steady["observations"]["members"][1], 3, "{steady}");
    assert_eq!(steady["observations"]["leaders_agree"][1], true, "{steady}");
    assert_nothing_left(&lab.name);
}
