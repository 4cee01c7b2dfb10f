//! The Kafka messaging labs (consumer groups, event-driven pipeline), end to
//! end on the real Docker engine: each passes as shipped and with changed
//! parameters, and a broken variant of each scenario fails on the
//! expectation it is there to check.

use crate::common::*;
use serde_json::{Value, json};

/// The observations of a scenario in a JSON report.
fn observations<'a>(report: &'a Value, name: &str) -> &'a Value {
    &scenario(report, name)["observations"]
}

fn int(obs: &Value, name: &str) -> i64 {
    obs[name]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} is not a whole number in {obs}"))
}

/// The expectations that failed in a scenario.
fn failed_checks(report: &Value, name: &str) -> Vec<String> {
    scenario(report, name)["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .map(|c| c["observation"].as_str().unwrap().to_string())
        .collect()
}

/// An edit for [`temp_lab`] that breaks scenarios: each `(scenario, params)`
/// merges `params` into that scenario's own (the lab is rewritten as JSON,
/// which is YAML too). The expectations stay as shipped.
fn break_scenarios(edits: &[(&str, Value)]) -> impl Fn(String) -> String + use<> {
    let edits: Vec<(String, Value)> = edits
        .iter()
        .map(|(s, p)| (s.to_string(), p.clone()))
        .collect();
    move |text: String| {
        let mut lab: Value = serde_saphyr::from_str(&text).expect("lab parses");
        for (name, params) in &edits {
            let s = lab["scenarios"]
                .as_array_mut()
                .expect("scenarios")
                .iter_mut()
                .find(|s| s["name"] == name.as_str())
                .unwrap_or_else(|| panic!("scenario {name}"));
            let own = s
                .as_object_mut()
                .unwrap()
                .entry("params")
                .or_insert_with(|| json!({}));
            for (k, v) in params.as_object().expect("params object") {
                own[k.as_str()] = v.clone();
            }
        }
        serde_json::to_string_pretty(&lab).expect("json")
    }
}

/// Runs the broken variants and asserts that each named scenario fails on
/// (at least) the named expectations, and that the run exits 1.
fn assert_broken_fail(catalog_file: &str, broken: &[(&str, Value, &[&str])]) {
    let edits: Vec<(&str, Value)> = broken.iter().map(|(s, p, _)| (*s, p.clone())).collect();
    let lab = temp_lab(catalog_file, "broken", break_scenarios(&edits));
    let mut args = Vec::new();
    for (s, _, _) in broken {
        args.extend(["--scenario", *s]);
    }
    let (code, report, output) = run_json(&lab, &args);
    assert_eq!(code, Some(1), "{output}");
    assert_eq!(report["verdict"], "fail");
    for (name, _, expectations) in broken {
        let s = scenario(&report, name);
        assert_eq!(s["verdict"], "fail", "{name}: {s}");
        let failed = failed_checks(&report, name);
        for e in *expectations {
            assert!(
                failed.iter().any(|f| f == e),
                "{name}: {e} should fail, failed: {failed:?}\n{s}"
            );
        }
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn kafka_consumer_groups_passes_and_leaves_nothing() {
    let lab = temp_lab("messaging/kafka-consumer-groups.yaml", "pass", |t| t);
    let (code, report, output) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(report["verdict"], "pass");

    // Within a group: each message once, partitions split, keys in order.
    let one = observations(&report, "one-group");
    assert_eq!(int(one, "consumed_total"), 3000);
    let shares: Vec<i64> = one["per_member_partitions"]
        .as_array()
        .expect("per_member_partitions is a list")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(shares.len(), 3);
    assert_eq!(shares.iter().sum::<i64>(), 6, "{shares:?}");
    assert!(one["latency_p50_ms"].as_f64().unwrap() <= one["latency_p99_ms"].as_f64().unwrap());
    assert!(one["msgs_per_s"].as_f64().unwrap() > 0.0);

    let two = observations(&report, "two-groups");
    assert_eq!(two["per_group_received"], json!([3000, 3000]));

    // A member crashes: what it processed above the committed offset comes
    // again, nothing is lost; the survivors hold every partition.
    let leaves = observations(&report, "member-leaves");
    assert!(int(leaves, "leaver_uncommitted") > 0);
    assert_eq!(
        int(leaves, "duplicates"),
        int(leaves, "duplicates_uncommitted") + int(leaves, "duplicates_other")
    );
    let after: i64 = leaves["partitions_after_rebalance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(after, 6);
    // The control: committed before leaving, nothing of its comes twice.
    let clean = observations(&report, "member-leaves-after-commit");
    assert_eq!(int(clean, "duplicates_uncommitted"), 0);
    assert!(
        int(
            observations(&report, "member-leaves-nothing-committed"),
            "lost"
        ) > 0
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
fn kafka_consumer_groups_passes_with_changed_parameters() {
    let lab = temp_lab(
        "messaging/kafka-consumer-groups.yaml",
        "params",
        changed_params(&[
            ("messages", json!(2000)),
            ("partitions", json!(4)),
            ("keys", json!(16)),
        ]),
    );
    let (code, report, output) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        int(observations(&report, "one-group"), "consumed_total"),
        2000
    );
    assert_eq!(
        int(
            observations(&report, "more-members-than-partitions"),
            "members_with_partitions"
        ),
        4
    );
    assert_eq!(
        int(observations(&report, "late-group-from-latest"), "lost"),
        2000
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn kafka_consumer_groups_broken_variants_fail() {
    assert_broken_fail(
        "messaging/kafka-consumer-groups.yaml",
        &[
            // A member crashes mid-stream: its uncommitted messages come twice.
            (
                "one-group",
                json!({ "rate": 2000, "leave_after": 250 }),
                &["consumed_total", "duplicates"],
            ),
            // Keyed after all: per-key order holds.
            (
                "no-key",
                json!({ "partitioning": "key" }),
                &["order_violations_per_key"],
            ),
            // A crash without commits, successors start at the end: a group misses messages.
            (
                "two-groups",
                json!({ "rate": 2000, "leave_after": 250, "commit": "none", "offset_reset": "latest" }),
                &["groups_complete", "consumed_total"],
            ),
            // Fewer members than partitions.
            (
                "more-members-than-partitions",
                json!({ "members": 4 }),
                &["members_with_partitions"],
            ),
            // The successor does not resume from the commit but at the end.
            (
                "member-leaves",
                json!({ "commit": "none", "offset_reset": "latest" }),
                &["duplicates_uncommitted", "lost"],
            ),
            // The control without its commit: a crash.
            (
                "member-leaves-after-commit",
                json!({ "leave": "crash" }),
                &["leaver_uncommitted", "duplicates_uncommitted"],
            ),
            // Successors start at the beginning instead: nothing is lost.
            (
                "member-leaves-nothing-committed",
                json!({ "offset_reset": "earliest" }),
                &["lost"],
            ),
            // The late group starts at the end: no replay.
            (
                "replay-from-earliest",
                json!({ "offset_reset": "latest" }),
                &["late_received", "groups_complete"],
            ),
            // The late group starts at the beginning: it replays everything.
            (
                "late-group-from-latest",
                json!({ "offset_reset": "earliest" }),
                &["late_received", "lost"],
            ),
        ],
    );
}

#[test]
fn event_driven_pipeline_passes_and_leaves_nothing() {
    let lab = temp_lab("messaging/event-driven-pipeline.yaml", "pass", |t| t);
    let (code, report, output) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{output}");
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
    // Committing first loses the interrupted batch instead.
    let first = observations(&report, "commit-before-write-crash");
    assert!(int(first, "missing") > 0);
    assert!(int(first, "charged_total") < int(first, "expected_total"));
    for o in [clean, naive, idempotent, first] {
        assert!(o["end_to_end_p50_ms"].as_f64().unwrap() > 0.0, "{o}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn event_driven_pipeline_passes_with_changed_parameters() {
    let lab = temp_lab(
        "messaging/event-driven-pipeline.yaml",
        "params",
        changed_params(&[
            ("orders", json!(900)),
            ("batch", json!(30)),
            ("partitions", json!(4)),
        ]),
    );
    let (code, report, output) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(int(observations(&report, "naive-no-crash"), "rows"), 900);
    assert_nothing_left(&lab.name);
}

#[test]
fn event_driven_pipeline_broken_variants_fail() {
    assert_broken_fail(
        "messaging/event-driven-pipeline.yaml",
        &[
            // A crash after all: the naive consumer charges the batch twice.
            (
                "naive-no-crash",
                json!({ "crashes": 1 }),
                &["exact", "rows", "duplicates_applied", "redelivered"],
            ),
            // Committing before the write: nothing comes twice, a batch is lost.
            (
                "naive-crash",
                json!({ "commit": "before-write" }),
                &["redelivered", "overcharge", "missing"],
            ),
            // A naive consumer where an idempotent one belongs.
            (
                "idempotent-crash",
                json!({ "consumer": "naive" }),
                &["duplicates_applied", "overcharge", "exact"],
            ),
            (
                "idempotent-crashes-three-times",
                json!({ "consumer": "naive" }),
                &["rows", "exact"],
            ),
            // Committing after the write: the batch comes again instead of going missing.
            (
                "commit-before-write-crash",
                json!({ "commit": "after-write" }),
                &["redelivered", "missing", "rows", "exact"],
            ),
        ],
    );
}
