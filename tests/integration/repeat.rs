//! `run --repeat N` on real Docker: every scenario runs N times on one
//! started stack, the report counts per expectation how often it passed, and
//! a steady verdict (pass or fail) is never flagged flaky. The flaky logic
//! itself (a verdict that changes) is unit-tested in `src/repeat.rs` and in
//! the renderers.

use crate::common::*;
use serde_json::Value;

/// The locking lab cut down to two fast scenarios: one that always passes
/// and one that always fails (no lock, yet it expects no lost update).
fn steady_lab() -> TempLab {
    temp_lab(
        "global-coordination/distributed-locking.yaml",
        "repeat",
        |t| {
            let head = &t[..t.find("\nscenarios:").expect("scenarios")];
            format!(
                "{head}
scenarios:
  - name: steady-pass
    params: {{ strategy: setnx, ttl_ms: 5000, hold_ms: 1, workers: 4, increments: 10 }}
    expect:
      final_counter: \"== workers * increments\"
      max_concurrent_holders: \"== 1\"
  - name: steady-fail
    params: {{ strategy: none, hold_ms: 2, workers: 4, increments: 10 }}
    expect:
      lost_updates: \"== 0\"
"
            )
        },
    )
}

fn tally<'a>(scenario: &'a Value, observation: &str) -> &'a Value {
    scenario["repeats"]["expectations"]
        .as_array()
        .expect("expectations")
        .iter()
        .find(|t| t["observation"] == observation)
        .unwrap_or_else(|| panic!("{observation} in {scenario}"))
}

#[test]
fn repeat_counts_every_expectation_and_steady_verdicts_are_not_flaky() {
    let lab = steady_lab();
    let junit = lab.dir.path().join("junit.xml");
    let (code, report, all) =
        run_json(&lab, &["--repeat", "3", "--junit", junit.to_str().unwrap()]);
    assert_eq!(code, Some(1), "steady-fail fails: {all}");

    let pass = scenario(&report, "steady-pass");
    assert_eq!(pass["verdict"], "pass", "{pass}\n{all}");
    assert_eq!(pass["repeats"]["runs"], 3);
    let verdicts = pass["repeats"]["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts.iter().all(|v| *v == pass["verdict"]), "{pass}");
    for obs in ["final_counter", "max_concurrent_holders"] {
        let t = tally(pass, obs);
        assert_eq!((&t["passed"], &t["runs"]), (&3.into(), &3.into()), "{t}");
        assert_eq!(t["flaky"], false, "{t}");
    }
    // Every run counted from zero: a fresh namespace per round.
    assert_eq!(
        pass["repeats"]["observations"]["final_counter"],
        serde_json::json!([40, 40, 40])
    );
    assert_eq!(pass["repeats"]["durations_ms"].as_array().unwrap().len(), 3);

    let fail = scenario(&report, "steady-fail");
    assert_eq!(fail["verdict"], "fail", "{fail}");
    let t = tally(fail, "lost_updates");
    assert_eq!(
        (&t["failed"], &t["flaky"]),
        (&3.into(), &false.into()),
        "{t}"
    );

    assert!(all.contains("round 3/3"), "progress per round: {all}");
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
    assert!(!xml.contains("flaky"), "{xml}");
    assert!(
        xml.contains(r#"<property name="runs" value="3"/>"#),
        "{xml}"
    );
    assert_nothing_left(&lab.name);
}
