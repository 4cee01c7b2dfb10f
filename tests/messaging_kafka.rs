//! The Kafka messaging labs (consumer groups, event-driven pipeline), end to
//! end on the real Docker engine, and a broken variant of each that must fail.

mod common;

use common::*;
use serde_json::Value;

/// Runs a lab file with `--format json` plus `extra` arguments.
fn run_json(lab: &TempLab, extra: &[&str]) -> (std::process::Output, Value) {
    let mut args = vec!["run", lab.path.to_str().unwrap(), "--format", "json"];
    args.extend_from_slice(extra);
    let out = run(&args);
    let report = json_report(&out);
    (out, report)
}

/// The observations of a scenario in a JSON report.
fn observations<'a>(report: &'a Value, scenario: &str) -> &'a Value {
    let scenarios = report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios");
    &scenarios
        .iter()
        .find(|s| s["name"] == scenario)
        .unwrap_or_else(|| panic!("scenario {scenario} in {report}"))["observations"]
}

fn int(obs: &Value, name: &str) -> i64 {
    obs[name]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} is not a whole number in {obs}"))
}

#[test]
fn kafka_consumer_groups_passes_and_leaves_nothing() {
    let lab = temp_lab("messaging/kafka-consumer-groups.yaml", "pass", |t| t);
    let (out, report) = run_json(&lab, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report["verdict"], "pass");
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }

    // Within a group: each message once, partitions split, keys in order.
    let one = observations(&report, "one-group");
    assert_eq!(int(one, "consumed_total"), 3000);
    assert_eq!(int(one, "duplicates"), 0);
    assert_eq!(int(one, "order_violations_per_key"), 0);
    let shares: Vec<i64> = one["per_member_partitions"]
        .as_array()
        .expect("per_member_partitions is a list")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(shares.len(), 3);
    assert_eq!(shares.iter().sum::<i64>(), 6, "{shares:?}");
    assert!(shares.iter().all(|&n| n > 0), "{shares:?}");
    assert!(one["latency_p50_ms"].as_f64().unwrap() <= one["latency_p99_ms"].as_f64().unwrap());
    assert!(one["msgs_per_s"].as_f64().unwrap() > 0.0);

    // Without keys, per-key order is gone.
    assert!(int(observations(&report, "no-key"), "order_violations_per_key") > 0);

    // Two groups: each gets everything.
    let two = observations(&report, "two-groups");
    assert_eq!(two["per_group_received"], serde_json::json!([3000, 3000]));

    // A member leaves: rebalanced, nothing lost, the uncommitted part redelivered.
    let leaves = observations(&report, "member-leaves");
    assert_eq!(int(leaves, "lost"), 0);
    assert!(int(leaves, "duplicates") > 0);
    assert!(int(leaves, "rebalance_time_ms") > 0);
    assert_eq!(
        leaves["partitions_after_rebalance"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .sum::<i64>(),
        6
    );
    assert!(
        int(
            observations(&report, "member-leaves-nothing-committed"),
            "lost"
        ) > 0
    );

    // Replay: the log keeps the history for a group that comes later.
    assert_eq!(
        int(
            observations(&report, "replay-from-earliest"),
            "late_received"
        ),
        3000
    );
    assert_eq!(
        int(
            observations(&report, "late-group-from-latest"),
            "late_received"
        ),
        0
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn kafka_consumer_groups_broken_expectation_fails() {
    // The broken variant: expect per-key order to survive unkeyed messages.
    let lab = temp_lab("messaging/kafka-consumer-groups.yaml", "broken", |t| {
        t.replacen(
            "order_violations_per_key: \"> 0\"",
            "order_violations_per_key: \"== 0\"",
            1,
        )
    });
    let (out, report) = run_json(&lab, &["--scenario", "no-key"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(report["verdict"], "fail");
    let scenario = &report["labs"][0]["scenarios"][0];
    assert_eq!(scenario["verdict"], "fail", "{scenario}");
    let check = scenario["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["observation"] == "order_violations_per_key")
        .expect("the order check");
    assert_eq!(check["verdict"], "fail");
    assert!(check["observed"].as_i64().unwrap() > 0, "{check}");
    assert_nothing_left(&lab.name);
}

#[test]
fn event_driven_pipeline_passes_and_leaves_nothing() {
    let lab = temp_lab("messaging/event-driven-pipeline.yaml", "pass", |t| t);
    let (out, report) = run_json(&lab, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report["verdict"], "pass");

    let clean = observations(&report, "naive-no-crash");
    assert_eq!(int(clean, "rows"), 600);
    assert_eq!(clean["charged_total"], clean["expected_total"]);

    // The same crash redelivers to both consumers; only the naive one double-charges.
    let naive = observations(&report, "naive-crash");
    let idempotent = observations(&report, "idempotent-crash");
    assert!(int(naive, "redelivered") > 0 && int(idempotent, "redelivered") > 0);
    assert_eq!(int(naive, "rows"), 600 + int(naive, "duplicates_applied"));
    assert!(int(naive, "charged_total") > int(naive, "expected_total"));
    assert_eq!(int(idempotent, "rows"), 600);
    assert_eq!(idempotent["charged_total"], idempotent["expected_total"]);
    assert_eq!(idempotent["exact"], true);
    for o in [clean, naive, idempotent] {
        assert!(o["end_to_end_p50_ms"].as_f64().unwrap() > 0.0, "{o}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn event_driven_pipeline_broken_expectation_fails() {
    // The broken variant: expect the naive consumer to survive a crash exactly.
    let lab = temp_lab("messaging/event-driven-pipeline.yaml", "broken", |t| {
        t.replacen("      exact: false", "      exact: true", 1)
            .replacen(
                "duplicates_applied: \"> 0\"",
                "duplicates_applied: \"== 0\"",
                1,
            )
    });
    let (out, report) = run_json(&lab, &["--scenario", "naive-crash"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(report["verdict"], "fail");
    let scenario = &report["labs"][0]["scenarios"][0];
    assert_eq!(scenario["name"], "naive-crash");
    assert_eq!(scenario["verdict"], "fail", "{scenario}");
    let failed: Vec<&str> = scenario["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .map(|c| c["observation"].as_str().unwrap())
        .collect();
    assert!(
        failed.contains(&"exact") && failed.contains(&"duplicates_applied"),
        "{failed:?}"
    );
    assert_nothing_left(&lab.name);
}
