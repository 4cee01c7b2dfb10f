//! Fault steps on real containers: a relative heal (`for: DURATION`) fires
//! its inverse that long after the fault action returned, and both show in
//! the scenario timeline.

mod common;

use common::*;

/// The locking lab with its freezes written as relative heals instead of a
/// pause plus an absolute `at: 1500ms` unpause.
fn relative_heal_lab() -> TempLab {
    let absolute = "      - { after: holding, action: pause, service: redis }\n      - { at: 1500ms, action: unpause, service: redis }\n";
    let relative = "      - { after: holding, action: pause, service: redis, for: 1500ms }\n";
    temp_lab("global-coordination/distributed-locking.yaml", "for", |t| {
        assert_eq!(
            t.matches(absolute).count(),
            2,
            "the catalog lab's freezes changed; update this edit"
        );
        // One worker: the exercise connects its workers one by one, and
        // a freeze that lands (on `holding`) while the others are still
        // connecting times their connection out: a race of the exercise,
        // not of the heal under test.
        t.replace(absolute, relative)
            .replace("workers: 4, increments: 3", "workers: 1, increments: 3")
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
        // Until the exercise declares every milestone it records, its
        // scenarios end UNKNOWN with that (and only that) error.
        let error = s["error"].as_str().unwrap_or_default();
        let undeclared_only = error
            .split("; ")
            .all(|e| e.contains("recorded the undeclared milestone"));
        assert!(
            s["verdict"] == "pass" || undeclared_only,
            "{name}: {s}\n{all}"
        );
        let paused = fault_at(s, "pause redis");
        let unpaused = fault_at(s, "unpause redis");
        let gap = unpaused - paused;
        // 1.5 s after `docker pause` returned: never less, plus the time the
        // pause itself took (well under a second even on a busy machine).
        assert!((1500..2500).contains(&gap), "{name}: gap {gap} ms in {s}");
    }
    assert!(matches!(code, Some(0 | 1)), "{all}");
    assert_nothing_left(&lab.name);
}
