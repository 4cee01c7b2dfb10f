//! The replication labs, end to end on the real Docker engine: Redis
//! replicas (`REDIS_REPLICA_OF`) ready only once in sync, read-your-writes
//! against them, WAIT, and a paused replica. The broken variant is a client,
//! not a number: one that reads its own writes from a replica.

use crate::common::*;
use serde_json::json;

const LAB: &str = "databases/strong-vs-eventual.yaml";

#[test]
fn strong_vs_eventual_passes_with_what_the_replicas_did() {
    let lab = temp_lab(LAB, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // Both replicas were connected and in sync before the first write.
    assert_eq!(obs(&report, "read-from-replica", "replicas"), 2.0);
    assert!(obs(&report, "read-from-replica", "stale_for_max_ms") > 0.0);
    // WAIT costs the writer: its p99 under a paused replica is the timeout.
    assert!(obs(&report, "replica-paused", "write_p99_ms") >= 100.0);
    assert_nothing_left(&lab.name);
}

#[test]
fn strong_vs_eventual_holds_with_changed_parameters() {
    let lab = temp_lab(
        LAB,
        "params",
        changed_params(&[
            ("writes", json!(400)),
            ("load_writers", json!(4)),
            ("interval_ms", json!(1)),
            ("wait_timeout_ms", json!(150)),
        ]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(obs(&report, "read-from-primary", "reads"), 400.0);
    assert!(obs(&report, "replica-paused", "write_p99_ms") >= 150.0);
    assert_nothing_left(&lab.name);
}

/// The broken client: it reads its own writes back from a replica, where
/// the shipped scenario reads them from the primary.
#[test]
fn a_client_reading_its_writes_from_a_replica_sees_stale_data() {
    let report = run_broken(
        LAB,
        "replica",
        &[("read-from-primary", "read_from", json!("replica"))],
        "read-from-primary",
    );
    assert_eq!(
        check_verdict(&report, "read-from-primary", "stale_reads"),
        "fail"
    );
    assert_eq!(check_verdict(&report, "read-from-primary", "reads"), "pass");
}
