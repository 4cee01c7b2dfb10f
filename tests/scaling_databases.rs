//! The scaling and databases labs, end to end on the real Docker engine:
//! load balancing with failover through Nginx, and ACID money transfers in
//! PostgreSQL.

mod common;

use common::*;
use serde_json::Value;

fn int(s: &Value, observation: &str) -> i64 {
    s["observations"][observation]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer {observation} in {s}"))
}

#[test]
fn load_balancing_passes_and_leaves_nothing() {
    let lab = temp_lab_with_files("scaling/load-balancing.yaml", "pass", |t| t);
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);
    assert_eq!(report["labs"][0]["verdict"], "pass", "{report}");

    // Round-robin: 100 each, counted from the instance that answered.
    let rr = scenario(&report, "round-robin");
    let per: Vec<i64> = rr["observations"]["per_instance"]
        .as_object()
        .expect("per_instance")
        .values()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(per.len(), 3, "{rr}");
    assert_eq!(per.iter().sum::<i64>(), 300, "{rr}");
    assert!(
        rr["observations"]["spread"].as_f64().unwrap() <= 1.1,
        "{rr}"
    );

    // IP hash: one client address, one replica.
    assert_eq!(int(scenario(&report, "ip-hash"), "instances_used"), 1);

    // Failover: the kill really happened mid-traffic, and nothing after it
    // reached the killed replica.
    let killed = scenario(&report, "replica-killed");
    assert!(int(killed, "served_by_killed_before_kill") > 0, "{killed}");
    assert_eq!(int(killed, "served_by_killed_after_kill"), 0, "{killed}");
    assert!(int(killed, "served_after_kill") >= 150, "{killed}");
    let timeline = killed["timeline"].as_array().expect("timeline");
    let at = |what: &str| {
        timeline
            .iter()
            .find(|e| e["what"] == what)
            .unwrap_or_else(|| panic!("no {what} in {killed}"))["at_ms"]
            .as_u64()
            .unwrap()
    };
    assert!(at("half-served") <= at("kill agent-2"), "{killed}");
    assert!(at("kill agent-2") <= at("requests-finished"), "{killed}");
    assert_nothing_left(&lab.name);
}

#[test]
fn load_balancing_with_a_wrong_expectation_fails() {
    // Broken: expect IP hash to use every replica.
    let lab = temp_lab_with_files("scaling/load-balancing.yaml", "broken", |t| {
        t.replace("      instances_used: 1\n", "      instances_used: 3\n")
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "ip-hash",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_report(&out);
    assert_eq!(report["labs"][0]["verdict"], "fail", "{report}");
    let s = scenario(&report, "ip-hash");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert_eq!(int(s, "instances_used"), 1, "{s}");
    assert_nothing_left(&lab.name);
}

#[test]
fn sql_acid_transfers_passes_and_leaves_nothing() {
    let lab = temp_lab("databases/sql-acid-transfers.yaml", "pass", |t| t);
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);
    assert_eq!(report["labs"][0]["verdict"], "pass", "{report}");

    let naive = scenario(&report, "read-committed-naive");
    assert_eq!(int(naive, "total_before"), 10_000, "{naive}");
    assert_ne!(int(naive, "total_after"), 10_000, "{naive}");
    assert!(int(naive, "money_created") > 0, "{naive}");

    let locked = scenario(&report, "read-committed-for-update");
    assert_eq!(int(locked, "total_after"), 10_000, "{locked}");
    assert_eq!(int(locked, "money_created"), 0, "{locked}");

    let serializable = scenario(&report, "serializable");
    assert_eq!(int(serializable, "money_created"), 0, "{serializable}");
    assert!(
        int(serializable, "serialization_failures") > 0,
        "{serializable}"
    );
    assert!(int(serializable, "retries") > 0, "{serializable}");
    // Every transfer ends committed or declined: retries lose none.
    assert_eq!(
        int(serializable, "committed") + int(serializable, "declined"),
        400,
        "{serializable}"
    );

    let rolled_back = scenario(&report, "failure-inside-a-transaction");
    assert!(int(rolled_back, "failed_midway") > 0, "{rolled_back}");
    assert_eq!(int(rolled_back, "money_created"), 0, "{rolled_back}");
    let autocommit = scenario(&report, "failure-in-autocommit");
    assert!(int(autocommit, "money_created") > 0, "{autocommit}");
    assert_nothing_left(&lab.name);
}

#[test]
fn sql_acid_transfers_with_a_wrong_expectation_fails() {
    // Broken: expect the unlocked read-then-write to keep the total.
    let lab = temp_lab("databases/sql-acid-transfers.yaml", "broken", |t| {
        t.replacen("money_created: \"> 0\"", "money_created: 0", 1)
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "read-committed-naive",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_report(&out);
    assert_eq!(report["labs"][0]["verdict"], "fail", "{report}");
    let s = scenario(&report, "read-committed-naive");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert!(int(s, "money_created") > 0, "{s}");
    assert_nothing_left(&lab.name);
}
