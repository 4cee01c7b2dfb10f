//! The ack-redelivery challenge end to end on the real Docker engine: the
//! learner's consumer runs as host processes beside RabbitMQ and the sink,
//! one instance is killed or restarted mid-work, and the harness's verdicts
//! hold for the shipped solutions.

use crate::common::*;

const LAB: &str = "messaging/ack-redelivery.yaml";

fn fault_lines(scenario: &serde_json::Value) -> Vec<&str> {
    scenario["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "fault")
        .map(|e| e["what"].as_str().unwrap())
        .collect()
}

fn ended(scenario: &serde_json::Value) -> Vec<&str> {
    scenario["solution"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ended"].as_str().unwrap())
        .collect()
}

#[test]
fn the_reference_loses_nothing_under_kills_restarts_and_refusals_with_other_params() {
    // Other parameters than the shipped ones: the expectations follow them.
    let lab = temp_lab_with_files(
        LAB,
        "ref",
        changed_params(&[
            ("messages", serde_json::json!(45)),
            ("consumers", serde_json::json!(3)),
        ]),
    );
    let (code, report, out) = run_json(&lab, &["--solution", "reference"]);
    assert_eq!(code, Some(0), "{out}");
    for s in [
        "share-the-work",
        "consumer-killed-mid-work",
        "consumer-restarted-mid-work",
        "sink-refuses-some",
    ] {
        assert_eq!(obs(&report, s, "processed"), 45.0, "{s}");
        assert_eq!(obs(&report, s, "lost"), 0.0, "{s}");
    }
    let killed = scenario(&report, "consumer-killed-mid-work");
    let ends = ended(killed);
    assert_eq!(ends.len(), 3);
    let victim = ends
        .iter()
        .position(|e| *e == "killed (fault)")
        .unwrap_or_else(|| panic!("nobody killed: {killed}"))
        + 1;
    assert_eq!(
        fault_lines(killed),
        [format!("kill solution-{victim} (solution-at-mark)")]
    );
    let restarted = scenario(&report, "consumer-restarted-mid-work");
    let restarts: u64 = restarted["solution"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(restarts, 1, "{restarted}");
    // Ids 0, 10, 20, 30, 40 are refused once each, then reported again.
    assert_eq!(obs(&report, "sink-refuses-some", "refused"), 5.0);
    assert!(out.contains("SINK_URL=http://127.0.0.1:"), "{out}");
    assert!(out.contains("AMQP_URL=amqp://"), "{out}");
    assert_eq!(out.matches("QUEUE=").count(), 1, "{out}");
    assert_nothing_left(&lab.name);
}

#[test]
fn the_starter_loses_messages_with_evidence_from_the_sink() {
    let lab = temp_lab_with_files(LAB, "starter", |t| t);
    let junit = lab.dir.path().join("report.xml");
    let (code, report, out) = run_json(
        &lab,
        &[
            "--solution",
            "starter",
            "--scenario",
            "consumer-killed-mid-work",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    let s = scenario(&report, "consumer-killed-mid-work");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert_eq!(
        check_verdict(&report, "consumer-killed-mid-work", "lost"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "consumer-killed-mid-work", "left_in_queue"),
        "pass",
        "auto-ack leaves nothing in the queue: it is gone"
    );
    let evidence = s["evidence"].as_array().expect("evidence");
    let lost = evidence
        .iter()
        .find(|e| e["observation"] == "lost")
        .expect("lost evidence");
    let what = lost["what"].as_str().unwrap();
    assert!(
        what.starts_with("message ") && what.contains("never reached the sink"),
        "{what}"
    );
    assert!(what.contains("ms after its last report"), "{what}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("evidence: lost: message "), "{xml}");
    assert_nothing_left(&lab.name);
}

/// Two solutions at a time, each on a broker of its own: the same verdicts.
#[test]
fn validate_solutions_proves_every_declared_verdict() {
    let lab = temp_lab_with_files(LAB, "validate", |t| t);
    let rows = validate_solutions_with(
        &lab,
        &[
            "reference",
            "starter",
            "ack-before-work",
            "drop-on-error",
            "no-ack",
        ],
        &["--jobs", "2"],
    );
    // Each broken solution failed its named expectation, in the scenario
    // that shows its mistake.
    let failed_in = |solution: &str, scenario: &str, observation: &str| {
        rows.iter().find(|r| r["solution"] == solution).unwrap()["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["scenario"] == scenario)
            .any(|c| {
                c["failed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f[0] == observation)
            })
    };
    assert!(failed_in("starter", "consumer-killed-mid-work", "lost"));
    assert!(failed_in(
        "ack-before-work",
        "consumer-killed-mid-work",
        "lost"
    ));
    assert!(failed_in("drop-on-error", "sink-refuses-some", "lost"));
    assert!(!failed_in(
        "drop-on-error",
        "consumer-killed-mid-work",
        "lost"
    ));
    assert!(failed_in("no-ack", "share-the-work", "left_in_queue"));
    assert_nothing_left(&lab.name);
}
