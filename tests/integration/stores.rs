//! The data-store labs beyond the relational and replicated ones, end to
//! end on the real Docker engine.
//!
//! columnar-vs-row: PostgreSQL and ClickHouse on one synthetic table; the
//! broken variant stores each ClickHouse row as one JSON string.
//!
//! kv-sessions: six agent replicas behind Nginx, three keeping sessions in
//! memory and three in Redis. The broken variants are deployments: sessions
//! in process memory behind round-robin where Redis was meant, and a fixed
//! TTL where a sliding one was meant.

use crate::common::*;
use serde_json::json;

const SESSIONS: &str = "databases/kv-sessions.yaml";

#[test]
fn kv_sessions_passes_with_what_users_and_redis_saw() {
    let lab = temp_lab_with_files(SESSIONS, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // Sticky: the dead replica's users, and only they, were logged out.
    let on_killed = obs(&report, "sticky-replica-killed", "users_on_killed");
    assert!(on_killed > 0.0 && on_killed < 30.0, "{on_killed}");
    // Shared: every replica served.
    assert_eq!(obs(&report, "shared-replica-killed", "instances_used"), 3.0);
    assert_nothing_left(&lab.name);
}

/// More users, fewer requests, a longer TTL: the verdicts hold.
#[test]
fn kv_sessions_holds_with_changed_parameters() {
    let lab = temp_lab_with_files(
        SESSIONS,
        "params",
        changed_params(&[
            ("users", json!(50)),
            ("requests", json!(6)),
            ("ttl_ms", json!(1500)),
            ("active_for_ms", json!(4000)),
        ]),
    );
    let (code, _report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_nothing_left(&lab.name);
}

/// The broken deployment: the replicas that survive a kill keep sessions in
/// their own memory, behind round-robin.
#[test]
fn sessions_in_process_memory_log_users_out() {
    let report = run_broken(
        SESSIONS,
        "memory",
        &[("shared-replica-killed", "prefix", json!("memory"))],
        "shared-replica-killed",
    );
    assert_eq!(
        check_verdict(&report, "shared-replica-killed", "logged_out_users"),
        "fail"
    );
}

/// The broken session store: a fixed TTL logs the active user out.
#[test]
fn a_fixed_ttl_logs_an_active_user_out() {
    let report = run_broken(
        SESSIONS,
        "fixed",
        &[("sliding-expiry", "sliding", json!(false))],
        "sliding-expiry",
    );
    assert_eq!(
        check_verdict(&report, "sliding-expiry", "active_logged_out"),
        "fail"
    );
}

const COLUMNAR: &str = "databases/columnar-vs-row.yaml";

#[test]
fn columnar_vs_row_passes_with_what_the_servers_read() {
    let lab = temp_lab(COLUMNAR, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // ClickHouse read the one column: 8 bytes a row, from its own log.
    assert_eq!(
        obs(&report, "aggregate", "ch_bytes_read"),
        2_000_000.0 * 8.0
    );
    assert_nothing_left(&lab.name);
}

/// A smaller table and fewer lookups: the verdicts hold.
#[test]
fn columnar_vs_row_holds_with_changed_parameters() {
    let lab = temp_lab(
        COLUMNAR,
        "params",
        changed_params(&[("rows", json!(500_000)), ("lookups", json!(50))]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(obs(&report, "aggregate", "ch_bytes_read"), 500_000.0 * 8.0);
    assert_nothing_left(&lab.name);
}

/// The broken table: ClickHouse keeps each row as one JSON string, and the
/// aggregate reads every byte of it.
#[test]
fn a_column_store_used_as_a_row_store_reads_everything() {
    let report = run_broken(
        COLUMNAR,
        "blob",
        &[("aggregate", "ch_layout", json!("blob"))],
        "aggregate",
    );
    assert_eq!(check_verdict(&report, "aggregate", "ch_bytes_read"), "fail");
    assert_eq!(
        check_verdict(&report, "aggregate", "aggregate_speedup"),
        "fail"
    );
}
