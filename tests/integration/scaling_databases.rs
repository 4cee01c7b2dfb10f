//! The scaling and databases labs, end to end on the real Docker engine:
//! load balancing with failover through Nginx, and ACID money transfers in
//! PostgreSQL.

use crate::common::*;
use serde_json::Value;

fn int(s: &Value, observation: &str) -> i64 {
    s["observations"][observation]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer {observation} in {s}"))
}

const LOAD_BALANCING: &str = "scaling/load-balancing.yaml";

/// The checks of a scenario that did not pass, by observation name.
fn not_passed(s: &Value) -> Vec<String> {
    s["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["verdict"] != "pass")
        .map(|c| c["observation"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Edits the Nginx config a load-balancing lab copy mounts.
fn break_nginx(lab: &TempLab, edits: &[(&str, &str)]) {
    let path = lab.dir.path().join("load-balancing.nginx.conf");
    let mut text = std::fs::read_to_string(&path).expect("nginx config");
    for (from, to) in edits {
        let broken = text.replacen(from, to, 1);
        assert_ne!(
            broken, text,
            "the config changed: fix this test's edit `{from}`"
        );
        text = broken;
    }
    std::fs::write(&path, text).expect("write nginx config");
}

/// The kill came after `half-served` and before the end, while traffic ran.
fn assert_killed_mid_traffic(killed: &Value) {
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
    assert!(at("kill agent-2") <= at("replica-down"), "{killed}");
    assert!(at("replica-down") <= at("requests-finished"), "{killed}");
    assert!(int(killed, "served_by_killed_before_kill") > 0, "{killed}");
    assert_eq!(int(killed, "served_by_killed_after_kill"), 0, "{killed}");
}

#[test]
fn load_balancing_passes_and_leaves_nothing() {
    let lab = temp_lab_with_files(LOAD_BALANCING, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["labs"][0]["verdict"], "pass", "{report}");

    // Round-robin: 100 each, counted from the instance that answered.
    let rr = scenario(&report, "round-robin");
    assert_eq!(
        rr["observations"]["per_instance"],
        serde_json::json!([100, 100, 100]),
        "{rr}"
    );

    // IP hash (context): one client address, one replica.
    assert_eq!(int(scenario(&report, "ip-hash"), "instances_used"), 1);

    // Failover with retries: the kill came mid-traffic and no client saw it.
    let killed = scenario(&report, "replica-killed");
    assert_killed_mid_traffic(killed);
    assert_eq!(int(killed, "errors"), 0, "{killed}");
    // Without retries the same kill reaches the clients.
    let no_retry = scenario(&report, "replica-killed-no-retry");
    assert_killed_mid_traffic(no_retry);
    assert!(int(no_retry, "errors") > 0, "{no_retry}");
    // POST: only the requests in flight on the killed replica fail.
    let post = scenario(&report, "replica-killed-post");
    assert_killed_mid_traffic(post);
    assert!(int(post, "errors") > 0, "{post}");
    assert!(int(post, "errors") <= 6, "{post}");
    assert_eq!(int(post, "errors_after_kill"), 0, "{post}");
    assert_nothing_left(&lab.name);
}

#[test]
fn load_balancing_passes_with_other_parameters() {
    let lab = temp_lab_with_files(
        LOAD_BALANCING,
        "params",
        changed_params(&[
            ("requests", serde_json::json!(150)),
            ("concurrency", serde_json::json!(5)),
        ]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    let rr = scenario(&report, "round-robin");
    assert_eq!(
        rr["observations"]["per_instance"],
        serde_json::json!([50, 50, 50]),
        "{rr}"
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn load_balancing_with_a_broken_nginx_fails_each_contrast() {
    // Broken config: agent-1 weighted up in the round-robin and least-conn
    // blocks, the no-retry location retrying, POSTs resent after a replica
    // received them (`non_idempotent`).
    let lab = temp_lab_with_files(LOAD_BALANCING, "broken", |t| t);
    break_nginx(
        &lab,
        &[
            (
                "upstream round_robin {\n        server  agent-1:8080",
                "upstream round_robin {\n        server  agent-1:8080  weight=3",
            ),
            (
                "least_conn;\n        server  agent-1:8080",
                "least_conn;\n        server  agent-1:8080  weight=3",
            ),
            (
                "proxy_next_upstream        error timeout http_502 http_503;",
                "proxy_next_upstream        error timeout http_502 http_503 non_idempotent;",
            ),
            (
                "location /no-retry/round-robin/ {\n            proxy_next_upstream  off;",
                "location /no-retry/round-robin/ {\n            proxy_next_upstream  error timeout;",
            ),
        ],
    );
    let names = [
        "round-robin",
        "least-conn",
        "replica-killed-no-retry",
        "replica-killed-post",
    ];
    let mut args = Vec::new();
    for n in names {
        args.extend(["--scenario", n]);
    }
    let (code, report, text) = run_json(&lab, &args);
    assert_eq!(code, Some(1), "{text}");
    let expect = [
        ("round-robin", "imbalance"),
        ("least-conn", "spread"),
        ("replica-killed-no-retry", "errors"),
        ("replica-killed-post", "errors"),
    ];
    for (name, check) in expect {
        let s = scenario(&report, name);
        assert_eq!(s["verdict"], "fail", "{s}");
        assert_eq!(not_passed(s), vec![check.to_string()], "{s}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn load_balancing_without_failover_fails_the_retrying_scenario() {
    // Broken config: the round-robin location does not retry.
    let lab = temp_lab_with_files(LOAD_BALANCING, "nofailover", |t| t);
    break_nginx(
        &lab,
        &[(
            "location /round-robin/ {\n            proxy_next_upstream        error timeout http_502 http_503;",
            "location /round-robin/ {\n            proxy_next_upstream        off;",
        )],
    );
    let (code, report, text) = run_json(&lab, &["--scenario", "replica-killed"]);
    assert_eq!(code, Some(1), "{text}");
    let s = scenario(&report, "replica-killed");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert_eq!(not_passed(s), vec!["errors".to_string()], "{s}");
    assert!(int(s, "errors") > 0, "{s}");
    assert_nothing_left(&lab.name);
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
