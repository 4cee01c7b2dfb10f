//! The replication labs, end to end on the real Docker engine: Redis
//! replicas (`REDIS_REPLICA_OF`) ready only once in sync, read-your-writes
//! against them, WAIT, and a paused replica; CAP under a partition, Redis
//! beside etcd. The broken variants are clients, not numbers: one that reads
//! its own writes from a replica, one that reads etcd serializably.

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

const CAP: &str = "databases/cap-partition.yaml";

#[test]
fn cap_partition_passes_with_what_each_side_saw() {
    let lab = temp_lab(CAP, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // The cut-off primary acknowledged writes, and they are gone.
    assert!(obs(&report, "partition", "redis_acked_lost") > 0.0);
    // Without promotion the majority side's Redis took no write at all.
    assert_eq!(obs(&report, "no-failover", "redis_majority_acked"), 0.0);
    assert_nothing_left(&lab.name);
}

#[test]
fn cap_partition_holds_with_changed_parameters() {
    let lab = temp_lab(
        CAP,
        "params",
        changed_params(&[
            ("partition_ms", json!(5000)),
            ("interval_ms", json!(10)),
            ("request_timeout_ms", json!(700)),
        ]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(obs(&report, "partition", "etcd_minority_requests") > 0.0);
    assert_nothing_left(&lab.name);
}

/// The broken client: it reads etcd with serializable reads, which the
/// cut-off member answers from its own, stale, state.
#[test]
fn a_serializable_client_gets_stale_answers_on_the_minority_side() {
    let report = run_broken(
        CAP,
        "serializable",
        &[("partition", "etcd_reads", json!("serializable"))],
        "partition",
    );
    assert_eq!(
        check_verdict(&report, "partition", "etcd_minority_answered"),
        "fail"
    );
    assert!(obs(&report, "partition", "etcd_stale_reads") > 0.0);
    assert_eq!(
        check_verdict(&report, "partition", "etcd_acked_lost"),
        "pass"
    );
}
