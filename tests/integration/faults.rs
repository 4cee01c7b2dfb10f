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
