//! The sharding lab, end to end on the real Docker engine: six Redis
//! Cluster nodes made one cluster at start, keys counted on each primary, a
//! slot moved under load, a primary killed. The broken variants are
//! clients: one that sends everything to one node (also when that node
//! dies), one that does not follow ASK.

use crate::common::*;
use serde_json::json;

const LAB: &str = "scaling/sharding.yaml";

#[test]
fn sharding_passes_with_what_the_primaries_counted() {
    let lab = temp_lab(LAB, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // The cluster was made with three primaries, and the keys are on them.
    assert_eq!(obs(&report, "spread", "primaries"), 3.0);
    let s = scenario(&report, "spread");
    let per_primary: Vec<f64> = s["observations"]["keys_per_primary"]
        .as_array()
        .expect("keys_per_primary")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(per_primary.len(), 3);
    assert_eq!(per_primary.iter().sum::<f64>(), 3000.0);
    // The killed primary's slots came back only after the nodes' timeout.
    assert_eq!(obs(&report, "primary-killed", "node_timeout_ms"), 5000.0);
    assert_nothing_left(&lab.name);
}

/// More clients, fewer keys, a smaller slot in larger batches, and a
/// cluster of eight nodes (four primaries): the verdicts hold.
#[test]
fn sharding_holds_with_changed_parameters() {
    let params = changed_params(&[
        ("clients", json!(8)),
        ("keys", json!(1200)),
        ("slot_keys", json!(600)),
        ("migrate_batch", json!(50)),
    ]);
    let lab = temp_lab(LAB, "params", move |t| {
        params(t.replace("replicas: 6", "replicas: 8"))
    });
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(obs(&report, "spread", "primaries"), 4.0);
    assert_nothing_left(&lab.name);
}

/// The broken client: it sends every key to one node.
#[test]
fn a_naive_client_gets_moved_errors() {
    let report = run_broken(
        LAB,
        "naive",
        &[("spread", "client", json!("naive"))],
        "spread",
    );
    assert_eq!(check_verdict(&report, "spread", "client_errors"), "fail");
}

/// The broken client: it follows MOVED but not ASK, and fails while a slot
/// moves.
#[test]
fn a_client_that_does_not_follow_ask_fails_during_a_migration() {
    let report = run_broken(
        LAB,
        "noask",
        &[("slot-migration", "client", json!("moved-only"))],
        "slot-migration",
    );
    assert_eq!(
        check_verdict(&report, "slot-migration", "client_errors"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "slot-migration", "slot_moved"),
        "pass"
    );
}

/// The broken client: without the slot map it keeps sending to the node it
/// knows, and never finds the replica that took over the killed primary.
#[test]
fn a_client_without_the_slot_map_never_finds_the_new_primary() {
    let report = run_broken(
        LAB,
        "naive-down",
        &[
            ("primary-killed", "client", json!("naive")),
            ("primary-killed", "give_up_ms", json!(15000)),
        ],
        "primary-killed",
    );
    assert_eq!(
        check_verdict(&report, "primary-killed", "down_writes_after"),
        "fail"
    );
}
