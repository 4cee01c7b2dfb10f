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
//!
//! document-store: the same orders as JSONB documents and as joined rows in
//! PostgreSQL. The broken variants: orders found by an unindexed field inside
//! the document, the documents without their GIN index, a search of the
//! first item only, and moves that update only the latest order's copy of
//! the address.
//!
//! graph-traversal: FalkorDB and PostgreSQL on one follower graph, each
//! answer checked against the client's own search. The broken variants are
//! queries: recursive SQL that walks every path, and a Cypher pattern that
//! takes FalkorDB's faulty shortcut.

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

const GRAPH: &str = "databases/graph-traversal.yaml";

#[test]
fn graph_traversal_passes_with_answers_checked_against_the_truth() {
    let lab = temp_lab(GRAPH, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // Five hops reach most of the graph; the recursion kept one row or two
    // per person.
    assert!(obs(&report, "five-hops", "reached_p50") > 5_000.0);
    assert!(obs(&report, "five-hops", "sql_rows_per_person") < 3.0);
    assert_nothing_left(&lab.name);
}

/// A bigger, sparser graph, fewer starts: the verdicts hold.
#[test]
fn graph_traversal_holds_with_changed_parameters() {
    let lab = temp_lab(
        GRAPH,
        "params",
        changed_params(&[
            ("people", json!(30_000)),
            ("follows", json!(6)),
            ("starts", json!(12)),
        ]),
    );
    let (code, _report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_nothing_left(&lab.name);
}

/// The broken SQL: `UNION ALL` walks and counts every path.
#[test]
fn recursive_sql_that_walks_every_path_counts_paths_not_people() {
    let report = run_broken(
        GRAPH,
        "paths",
        &[("five-hops", "sql", json!("paths"))],
        "five-hops",
    );
    assert_eq!(
        check_verdict(&report, "five-hops", "sql_wrong_answers"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "five-hops", "sql_rows_per_person"),
        "fail"
    );
}

/// The broken Cypher: the pattern without a path variable, which FalkorDB
/// 4.16 answers from a shortcut that misses people.
#[test]
fn a_pattern_without_its_path_variable_misses_people() {
    let report = run_broken(
        GRAPH,
        "unbound",
        &[("three-hops", "cypher", json!("unbound"))],
        "three-hops",
    );
    assert_eq!(
        check_verdict(&report, "three-hops", "graph_wrong_answers"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "three-hops", "sql_wrong_answers"),
        "pass"
    );
}

const DOCUMENTS: &str = "databases/document-store.yaml";

#[test]
fn document_store_passes_with_what_the_server_read_and_wrote() {
    let lab = temp_lab(DOCUMENTS, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // Every mover's orders were rewritten: more than one each.
    assert!(obs(&report, "customer-moves", "doc_rows_written") > 20.0);
    assert_nothing_left(&lab.name);
}

/// Fewer, bigger customers and a wider catalogue: the verdicts hold.
#[test]
fn document_store_holds_with_changed_parameters() {
    let lab = temp_lab(
        DOCUMENTS,
        "params",
        changed_params(&[
            ("orders", json!(20_000)),
            ("customers", json!(300)),
            ("products", json!(3_000)),
            ("moves", json!(5)),
        ]),
    );
    let (code, _report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_nothing_left(&lab.name);
}

/// The broken deployment: no index on the nested field.
#[test]
fn a_nested_search_without_its_index_reads_every_document() {
    let report = run_broken(
        DOCUMENTS,
        "noindex",
        &[("nested-search", "index", json!("none"))],
        "nested-search",
    );
    assert_eq!(
        check_verdict(&report, "nested-search", "doc_search_pages"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "nested-search", "search_wrong_answers"),
        "pass"
    );
}

/// The broken application: it finds an order by the `id` inside the
/// document, which no index covers, and every read scans the table.
#[test]
fn a_document_found_by_an_unindexed_field_reads_the_whole_table() {
    let report = run_broken(
        DOCUMENTS,
        "field",
        &[("read-whole-orders", "lookup", json!("field"))],
        "read-whole-orders",
    );
    assert_eq!(
        check_verdict(&report, "read-whole-orders", "doc_read_pages"),
        "fail"
    );
}

/// The broken query: it looks for the product in the first item only.
#[test]
fn a_search_of_the_first_item_only_misses_orders() {
    let report = run_broken(
        DOCUMENTS,
        "firstitem",
        &[("nested-search", "search", json!("first-item"))],
        "nested-search",
    );
    assert_eq!(
        check_verdict(&report, "nested-search", "search_wrong_answers"),
        "fail"
    );
}

/// The broken application: a move updates only the latest order.
#[test]
fn updating_one_copy_of_an_embedded_address_leaves_the_others_stale() {
    let report = run_broken(
        DOCUMENTS,
        "latest",
        &[("customer-moves", "update", json!("latest"))],
        "customer-moves",
    );
    assert_eq!(
        check_verdict(&report, "customer-moves", "stale_copies"),
        "fail"
    );
}
