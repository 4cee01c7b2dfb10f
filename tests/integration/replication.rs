//! The replication labs, end to end on the real Docker engine: Redis
//! replicas (`REDIS_REPLICA_OF`) ready only once in sync, read-your-writes
//! against them, WAIT, and a paused replica; CAP under a partition, Redis
//! beside etcd; failover with Sentinel. The broken variants are clients, not
//! numbers: one that reads its own writes from a replica, one that reads etcd
//! serializably, one pinned to the old primary, one that does not wait for a
//! replica.

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
    let seen = scenario(&report, "partition");
    assert_eq!(
        check_verdict(&report, "partition", "etcd_minority_answered"),
        "fail",
        "{seen}"
    );
    assert!(
        obs(&report, "partition", "etcd_stale_reads") > 0.0,
        "{seen}"
    );
    assert_eq!(
        check_verdict(&report, "partition", "etcd_acked_lost"),
        "pass"
    );
}

const FAILOVER: &str = "databases/replication-failover.yaml";

#[test]
fn replication_failover_passes_with_what_the_writer_and_sentinels_saw() {
    let lab = temp_lab(FAILOVER, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // The Sentinels report the lab's down-after, and announced the switch.
    assert_eq!(obs(&report, "primary-killed", "down_after_ms"), 1000.0);
    assert!(obs(&report, "primary-killed", "switch_ms") > 1000.0);
    // The lost writes are the ones the cut-off primary acknowledged.
    let lost = obs(&report, "primary-cut-off", "acked_lost");
    assert!(lost <= obs(&report, "primary-cut-off", "old_primary_acked_after"));
    assert_nothing_left(&lab.name);
}

/// A slower Sentinel (down after 2 s), fewer writes, WAIT for longer: the
/// failover still comes after the Sentinels' own down-after.
#[test]
fn replication_failover_holds_with_changed_parameters() {
    let params = changed_params(&[
        ("warmup_writes", json!(50)),
        ("after_writes", json!(30)),
        ("interval_ms", json!(10)),
        ("wait_timeout_ms", json!(200)),
    ]);
    let lab = temp_lab(FAILOVER, "params", move |t| {
        params(t.replace(
            "SENTINEL_DOWN_AFTER_MS: \"1000\"",
            "SENTINEL_DOWN_AFTER_MS: \"2000\"",
        ))
    });
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(obs(&report, "primary-killed", "down_after_ms"), 2000.0);
    assert!(obs(&report, "primary-killed", "failover_ms") > 2000.0);
    assert_nothing_left(&lab.name);
}

/// The broken client: pinned to the primary's address, it never finds the
/// promoted replica.
#[test]
fn a_client_pinned_to_the_old_primary_never_writes_again() {
    let report = run_broken(
        FAILOVER,
        "pinned",
        &[
            ("primary-killed", "client", json!("pinned")),
            ("primary-killed", "give_up_ms", json!(10000)),
        ],
        "primary-killed",
    );
    assert_eq!(
        check_verdict(&report, "primary-killed", "new_primary_writes"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "primary-killed", "writes_failed"),
        "pass"
    );
}

/// The broken client: it trusts the primary's OK where the scenario asks it
/// to wait for a replica, and loses acknowledged writes.
#[test]
fn a_client_that_does_not_wait_for_a_replica_loses_acknowledged_writes() {
    let report = run_broken(
        FAILOVER,
        "nowait",
        &[("wait-for-replica", "wait_replicas", json!(0))],
        "wait-for-replica",
    );
    assert_eq!(
        check_verdict(&report, "wait-for-replica", "acked_lost"),
        "fail"
    );
}
