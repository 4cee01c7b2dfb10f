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

/// The verdict of one expectation of one scenario.
fn check<'a>(report: &'a Value, name: &str, observation: &str) -> &'a Value {
    scenario(report, name)["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["observation"] == observation)
        .unwrap_or_else(|| panic!("{name}: no check on {observation}"))
}

#[test]
fn sql_acid_transfers_passes_and_leaves_nothing() {
    let lab = temp_lab("databases/sql-acid-transfers.yaml", "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(report["labs"][0]["verdict"], "pass", "{report}");

    let naive = scenario(&report, "read-committed-naive");
    assert_eq!(int(naive, "total_before"), 10_000, "{naive}");
    assert!(int(naive, "accounts_off_ledger") > 0, "{naive}");

    for name in [
        "read-committed-for-update",
        "repeatable-read",
        "serializable",
        "in-place-update",
    ] {
        let s = scenario(&report, name);
        assert_eq!(int(s, "total_after"), 10_000, "{s}");
        assert_eq!(int(s, "accounts_off_ledger"), 0, "{s}");
        // Every transfer ends committed or declined: retries lose none.
        assert_eq!(int(s, "committed") + int(s, "declined"), 400, "{s}");
    }
    // REPEATABLE READ aborts the second writer; in-place needs no retry.
    let rr = scenario(&report, "repeatable-read");
    assert!(int(rr, "serialization_failures") > 0, "{rr}");
    assert_eq!(int(scenario(&report, "in-place-update"), "retries"), 0);

    let rolled_back = scenario(&report, "failure-inside-a-transaction");
    assert!(int(rolled_back, "failed_midway") > 0, "{rolled_back}");
    assert_eq!(int(rolled_back, "money_created"), 0, "{rolled_back}");
    let autocommit = scenario(&report, "failure-in-autocommit");
    assert!(int(autocommit, "total_after") < 10_000, "{autocommit}");
    assert_nothing_left(&lab.name);
}

#[test]
fn sql_acid_transfers_passes_with_changed_parameters() {
    let lab = temp_lab(
        "databases/sql-acid-transfers.yaml",
        "params",
        changed_params(&[
            ("accounts", serde_json::json!(12)),
            ("initial_balance", serde_json::json!(700)),
            ("transfers", serde_json::json!(40)),
        ]),
    );
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    let locked = scenario(&report, "read-committed-for-update");
    assert_eq!(int(locked, "total_after"), 12 * 700, "{locked}");
    assert_nothing_left(&lab.name);
}

#[test]
fn sql_acid_transfers_broken_implementations_fail() {
    let lab = temp_lab("databases/sql-acid-transfers.yaml", "broken", |t| {
        t
            // The "naive" scenario locks after all: nothing is lost.
            .replace(
                "params: { isolation: read-committed, locking: none }\n    expect:\n      accounts_off_ledger: \"> 0\"",
                "params: { isolation: read-committed, locking: for-update }\n    expect:\n      accounts_off_ledger: \"> 0\"",
            )
            // REPEATABLE READ scenario run under READ COMMITTED.
            .replace(
                "params: { isolation: repeatable-read, locking: none }",
                "params: { isolation: read-committed, locking: none }",
            )
            // The in-place update done as a read-then-write.
            .replace(
                "params: { isolation: read-committed, locking: none, write: in-place }",
                "params: { isolation: read-committed, locking: none, write: read-then-write }",
            )
    });
    let (code, report, out) = run_json(
        &lab,
        &[
            "--scenario",
            "read-committed-naive",
            "--scenario",
            "repeatable-read",
            "--scenario",
            "in-place-update",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    for (name, observation) in [
        ("read-committed-naive", "accounts_off_ledger"),
        ("repeatable-read", "accounts_off_ledger"),
        ("repeatable-read", "serialization_failures"),
        ("in-place-update", "accounts_off_ledger"),
    ] {
        assert_eq!(scenario(&report, name)["verdict"], "fail", "{out}");
        assert_eq!(
            check(&report, name, observation)["verdict"],
            "fail",
            "{out}"
        );
    }
    assert_nothing_left(&lab.name);
}
