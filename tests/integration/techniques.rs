//! The techniques labs (rate limiting, consistent hashing), end to end on the
//! real Docker engine.

use crate::common::*;
use serde_json::json;

const RATE: &str = "techniques/rate-limiting.yaml";
const HASHING: &str = "techniques/consistent-hashing.yaml";

#[test]
fn rate_limiting_passes_and_shows_the_three_shapes() {
    let lab = temp_lab(RATE, "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    all_pass(&report);
    // Both buckets admit about as many burst requests; the token bucket passes
    // them at once, the leaky bucket one per 50 ms, as the service's log shows.
    let tb = obs(&report, "token-bucket", "burst_admitted");
    let lb = obs(&report, "leaky-bucket", "burst_admitted");
    assert!(lb < tb, "leaky {lb} vs token {tb}");
    assert!(
        obs(&report, "leaky-bucket", "served_rate") < obs(&report, "token-bucket", "served_rate")
    );
    // The fixed window: at most the limit inside a window, near twice it across a boundary.
    let inside = obs(
        &report,
        "fixed-window-inside-a-window",
        "max_allowed_in_any_window",
    );
    let boundary = obs(
        &report,
        "fixed-window-at-the-boundary",
        "max_allowed_in_any_window",
    );
    assert!(boundary > inside, "boundary {boundary} vs inside {inside}");
    assert_nothing_left(&lab.name);
}

#[test]
fn rate_limiting_passes_with_other_parameters() {
    let lab = temp_lab(
        RATE,
        "params",
        changed_params(&[("rate", json!(30)), ("capacity", json!(12))]),
    );
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    all_pass(&report);
    assert_nothing_left(&lab.name);
}

#[test]
fn a_leaky_bucket_client_that_ignores_its_slot_fails() {
    // The broken implementation: admitted requests proceed at once instead of
    // waiting for their slot, so the burst reaches the service.
    let lab = temp_lab(RATE, "noslot", |t| {
        t.replace(
            "params: { algorithm: leaky-bucket }",
            "params: { algorithm: leaky-bucket, wait_for_slot: false }",
        )
    });
    let (code, report, out) = run_json(&lab, &["--scenario", "leaky-bucket"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(scenario(&report, "leaky-bucket")["verdict"], "fail");
    for o in ["burst_admitted", "served_rate", "max_allowed_in_any_1s"] {
        assert_eq!(check_verdict(&report, "leaky-bucket", o), "fail", "{o}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn a_smoothing_limiter_fails_the_burst_and_the_boundary() {
    // Broken implementations: a leaky bucket where the token bucket should
    // let a burst of `capacity` through at once (it admits about rate / 4 in
    // the first 250 ms, whatever the timing), and a leaky bucket in place of
    // the fixed window at the boundary (no double-limit burst to see). A
    // fixed window in place of the token bucket is no steady counterexample:
    // what it admits depends on where the burst falls in its window.
    let lab = temp_lab(RATE, "wrongalgo", |t| {
        let t = replaced(
            t,
            "params: { algorithm: token-bucket }",
            "params: { algorithm: leaky-bucket }",
        );
        replaced(
            t,
            "params: { algorithm: fixed-window, steady_rps: 4, burst_at: window-boundary }",
            "params: { algorithm: leaky-bucket, steady_rps: 4, burst_at: window-boundary }",
        )
    });
    let (code, report, out) = run_json(
        &lab,
        &[
            "--scenario",
            "token-bucket",
            "--scenario",
            "fixed-window-at-the-boundary",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        check_verdict(&report, "token-bucket", "burst_admitted"),
        "fail",
        "{out}"
    );
    assert_eq!(
        check_verdict(
            &report,
            "fixed-window-at-the-boundary",
            "max_allowed_in_any_window"
        ),
        "fail",
        "{out}"
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn consistent_hashing_passes_and_the_nodes_count_the_misses() {
    let lab = temp_lab(HASHING, "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    all_pass(&report);
    // Four real Redis instances answered.
    let services = report["labs"][0]["services"].to_string();
    for i in 1..=4 {
        assert!(services.contains(&format!("cache-{i}")), "{services}");
    }
    let modulo = obs(&report, "modulo-add-node", "miss_fraction");
    let ring = obs(&report, "ring-add-node", "miss_fraction");
    assert!(modulo > 0.6, "modulo missed {modulo}");
    assert!((0.15..=0.35).contains(&ring), "ring missed {ring}");
    // Copying first: the same keys moved, and the readers missed none.
    assert_eq!(obs(&report, "ring-add-node-copy-first", "read_misses"), 0.0);
    assert_eq!(
        obs(&report, "ring-add-node-copy-first", "keys_copied"),
        obs(&report, "ring-add-node", "keys_remapped")
    );
    // DBSIZE per node adds up to all keys, spread over four nodes after the join.
    let per_node = scenario(&report, "ring-add-node")["observations"]["keys_per_node"]
        .as_array()
        .expect("keys_per_node")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(per_node.len(), 4);
    assert_eq!(per_node.iter().sum::<i64>(), 10_000);
    // More virtual nodes, better balance.
    assert!(
        obs(&report, "ring-one-point-per-node", "load_max_over_mean")
            > obs(&report, "ring-add-node", "load_max_over_mean")
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn consistent_hashing_passes_with_other_parameters() {
    let lab = temp_lab(
        HASHING,
        "params",
        changed_params(&[("keys", json!(6000)), ("readers", json!(3))]),
    );
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    all_pass(&report);
    assert_eq!(obs(&report, "ring-add-node", "keys_stored"), 6000.0);
    assert_nothing_left(&lab.name);
}

#[test]
fn switching_without_copying_first_fails_and_modulo_fails_the_ring_bound() {
    // Broken implementations: the copy-first scenario switches without a copy
    // (readers miss the moved keys), and the ring scenario places by modulo.
    let lab = temp_lab(HASHING, "broken", |t| {
        t.replace(
            "params: { placement: ring, vnodes: 100, change: add, migration: copy-first }",
            "params: { placement: ring, vnodes: 100, change: add, migration: none }",
        )
        .replace(
            "params: { placement: ring, vnodes: 100, change: add }",
            "params: { placement: modulo, vnodes: 100, change: add }",
        )
    });
    let (code, report, out) = run_json(
        &lab,
        &[
            "--scenario",
            "ring-add-node-copy-first",
            "--scenario",
            "ring-add-node",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        check_verdict(&report, "ring-add-node-copy-first", "read_misses"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "ring-add-node", "miss_fraction"),
        "fail"
    );
    assert!(obs(&report, "ring-add-node-copy-first", "read_misses") > 0.0);
    assert_nothing_left(&lab.name);
}
