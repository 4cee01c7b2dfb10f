//! The techniques labs (rate limiting, consistent hashing), end to end on the
//! real Docker engine.

mod common;

use common::*;
use serde_json::Value;

fn obs(report: &Value, scenario_name: &str, observation: &str) -> f64 {
    let s = scenario(report, scenario_name);
    s["observations"][observation]
        .as_f64()
        .unwrap_or_else(|| panic!("{observation} missing in {s}"))
}

#[test]
fn rate_limiting_passes_and_shows_the_three_shapes() {
    let lab = temp_lab("techniques/rate-limiting.yaml", "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    // The token bucket passes about its capacity (20) at once; the leaky bucket
    // lets through one per 50 ms.
    let tb = obs(&report, "token-bucket", "burst_admitted");
    let lb = obs(&report, "leaky-bucket", "burst_admitted");
    assert!((15.0..=30.0).contains(&tb), "token bucket burst {tb}");
    assert!(lb <= 5.0 && lb < tb, "leaky bucket burst {lb}");
    assert!(obs(&report, "leaky-bucket", "max_allowed_in_any_1s") <= 22.0);
    // The fixed window: at most the limit inside a window, near twice it across a boundary.
    let inside = obs(
        &report,
        "fixed-window-inside-a-window",
        "max_allowed_in_any_1s",
    );
    let boundary = obs(
        &report,
        "fixed-window-at-the-boundary",
        "max_allowed_in_any_1s",
    );
    assert!(inside <= 26.0, "inside a window {inside}");
    assert!(boundary >= 34.0 && boundary > inside, "boundary {boundary}");
    assert_nothing_left(&lab.name);
}

#[test]
fn rate_limiting_broken_expectation_fails_with_exit_1() {
    // The broken variant: expect the leaky bucket to pass the burst like a token bucket.
    let lab = temp_lab("techniques/rate-limiting.yaml", "broken", |t| {
        t.replace("burst_admitted: \"<= 5\"", "burst_admitted: \">= 15\"")
    });
    let (code, report, out) = run_json(&lab, &["--scenario", "leaky-bucket"]);
    assert_eq!(code, Some(1), "{out}");
    let s = scenario(&report, "leaky-bucket");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert!(
        s["observations"]["burst_admitted"].as_f64().unwrap() <= 5.0,
        "{s}"
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn consistent_hashing_passes_modulo_moves_most_the_ring_a_quarter() {
    let lab = temp_lab("techniques/consistent-hashing.yaml", "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    // Four real Redis instances answered.
    let services = report["labs"][0]["services"].to_string();
    for i in 1..=4 {
        assert!(services.contains(&format!("cache-{i}")), "{services}");
    }
    let modulo = obs(&report, "modulo-add-node", "keys_moved_fraction");
    let ring = obs(&report, "ring-add-node", "keys_moved_fraction");
    assert!(modulo > 0.6, "modulo moved {modulo}");
    assert!((0.15..=0.35).contains(&ring), "ring moved {ring}");
    // Misses counted on the nodes agree with what the placement predicts.
    for name in ["modulo-add-node", "ring-add-node", "ring-remove-node"] {
        assert_eq!(
            obs(&report, name, "keys_moved_fraction"),
            obs(&report, name, "remapped_fraction"),
            "{name}"
        );
    }
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
fn consistent_hashing_broken_expectation_fails_with_exit_1() {
    // The broken variant: expect hash mod N to move as few keys as the ring.
    let lab = temp_lab("techniques/consistent-hashing.yaml", "broken", |t| {
        t.replacen(
            "keys_moved_fraction: \"> 0.6\"",
            "keys_moved_fraction: \"between 0.15 0.35\"",
            1,
        )
    });
    let (code, report, out) = run_json(&lab, &["--scenario", "modulo-add-node"]);
    assert_eq!(code, Some(1), "{out}");
    let s = scenario(&report, "modulo-add-node");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert!(
        s["observations"]["keys_moved_fraction"].as_f64().unwrap() > 0.6,
        "{s}"
    );
    assert_nothing_left(&lab.name);
}
