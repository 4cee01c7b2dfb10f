//! The consensus lab (etcd, three members), end to end on the real Docker
//! engine: the cluster bootstraps and elects a leader, survives the leader's
//! death, refuses linearizable work without a quorum, and a cut-off leader
//! serves stale serializable reads. The broken variant is a client, not a
//! number: a writer that knows only the dead leader gets nothing done.

use crate::common::*;
use serde_json::json;

const LAB: &str = "global-coordination/consensus-leader-election.yaml";

#[test]
fn consensus_lab_passes_with_what_the_members_did() {
    let lab = temp_lab(LAB, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);

    let steady = &scenario(&report, "steady")["observations"];
    assert_eq!(steady["members"], 3, "{steady}");
    assert_eq!(steady["leaders_agree"], true, "{steady}");

    // The election is measured from the kill, by the survivors' own status.
    let killed = obs(&report, "leader-killed", "election_ms");
    assert!(killed > 0.0, "{killed}");
    assert_eq!(obs(&report, "leader-killed", "acked_lost"), 0.0);

    // Without a quorum every linearizable read is refused, every
    // serializable one answered.
    let alone = &scenario(&report, "quorum-lost")["observations"];
    assert_eq!(alone["linearizable_answered"], 0, "{alone}");
    assert!(
        alone["serializable_answered"].as_u64().unwrap() > 0,
        "{alone}"
    );

    // The cut-off member answers serializable reads that miss writes the
    // majority acknowledged.
    assert!(obs(&report, "leader-cut-off", "stale_reads") > 0.0);
    assert!(obs(&report, "leader-cut-off", "acked_after_fault") > 0.0);

    // Application leader election: the frozen leader is replaced, and its
    // late items are refused with the fence, stored without it.
    assert!(obs(&report, "app-leader-lease", "failover_ms") > 0.0);
    assert_eq!(
        obs(&report, "app-leader-lease", "late_writes_accepted"),
        0.0
    );
    assert!(obs(&report, "app-leader-unfenced", "terms_in_store") >= 2.0);
    assert_eq!(
        obs(&report, "app-leader-short-freeze", "terms_in_store"),
        1.0
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn consensus_lab_holds_with_changed_parameters() {
    let lab = temp_lab(
        LAB,
        "params",
        changed_params(&[
            ("interval_ms", json!(35)),
            ("writes_after", json!(12)),
            ("probes", json!(2)),
            ("late_writes", json!(3)),
            ("candidates", json!(4)),
        ]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(obs(&report, "quorum-lost", "linearizable_refused"), 2.0);
    assert_eq!(
        obs(&report, "app-leader-unfenced", "writes_by_deposed"),
        3.0
    );
    assert!(obs(&report, "leader-killed", "acked_after_fault") >= 12.0);
    assert_nothing_left(&lab.name);
}

/// The broken implementation: a client that knows only the member that
/// dies. The cluster elects a new leader all the same; this client never
/// writes again.
#[test]
fn a_client_pinned_to_the_dead_leader_fails_the_failover() {
    let report = run_broken(
        LAB,
        "pinned",
        &[
            ("leader-killed", "client", json!("one-member")),
            ("leader-killed", "deadline_ms", json!(6000)),
        ],
        "leader-killed",
    );
    assert_eq!(
        check_verdict(&report, "leader-killed", "acked_after_fault"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "leader-killed", "leader_changes"),
        "pass"
    );
}

/// The broken implementation of the application's election: work items
/// without the fence. The frozen leader's late items land after the new
/// leader's first ones.
#[test]
fn a_leader_without_the_fence_writes_beside_its_successor() {
    let report = run_broken(
        LAB,
        "unfenced",
        &[("app-leader-lease", "fencing", json!(false))],
        "app-leader-lease",
    );
    assert_eq!(
        check_verdict(&report, "app-leader-lease", "writes_by_deposed"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "app-leader-lease", "late_writes_refused"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "app-leader-lease", "leaders_elected"),
        "pass"
    );
}
