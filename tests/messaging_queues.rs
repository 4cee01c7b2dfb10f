//! The messaging labs (queue-vs-pubsub, ack-redelivery), end to end on the real
//! Docker engine: each passes with the expected numbers, a broken variant of
//! each fails with exit 1, and nothing is left behind.

mod common;

use common::*;
use serde_json::Value;

fn obs_i64(report: &Value, scenario_name: &str, obs: &str) -> i64 {
    scenario(report, scenario_name)["observations"][obs]
        .as_i64()
        .unwrap_or_else(|| panic!("{scenario_name}.{obs} is not a whole number"))
}

fn obs_f64(report: &Value, scenario_name: &str, obs: &str) -> f64 {
    scenario(report, scenario_name)["observations"][obs]
        .as_f64()
        .unwrap_or_else(|| panic!("{scenario_name}.{obs} is not a number"))
}

#[test]
fn queue_vs_pubsub_passes_and_leaves_nothing() {
    let lab = temp_lab("messaging/queue-vs-pubsub.yaml", "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }

    // A queue: each of the 400 messages reaches exactly one of the 4 consumers, shared evenly.
    assert_eq!(obs_i64(&report, "work-queue", "delivered_total"), 400);
    assert_eq!(obs_i64(&report, "work-queue", "duplicates"), 0);
    assert_eq!(obs_i64(&report, "work-queue", "missing"), 0);
    let shares = scenario(&report, "work-queue")["observations"]["per_consumer"]
        .as_array()
        .expect("per_consumer")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(shares.len(), 4);
    assert_eq!(shares.iter().sum::<i64>(), 400);
    assert!(
        shares.iter().all(|&n| (70..=130).contains(&n)),
        "{shares:?}"
    );
    assert!(obs_f64(&report, "work-queue", "fairness") <= 1.5);
    assert!(obs_f64(&report, "work-queue", "msgs_per_s") > 0.0);
    let (p50, p99) = (
        obs_f64(&report, "work-queue", "latency_p50_ms"),
        obs_f64(&report, "work-queue", "latency_p99_ms"),
    );
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");

    // Pub/sub: every consumer gets all 400.
    for name in ["fanout", "redis-pubsub"] {
        let per = scenario(&report, name)["observations"]["per_consumer"].clone();
        assert_eq!(per, serde_json::json!([400, 400, 400, 400]), "{name}");
    }
    assert_eq!(obs_i64(&report, "fanout", "delivered_total"), 1600);
    // The late Redis subscriber gets only what was published after it joined.
    assert_eq!(
        obs_i64(&report, "redis-pubsub", "late_subscriber_received"),
        200
    );
    // No retention in pub/sub; the queue keeps its backlog.
    assert_eq!(
        obs_i64(&report, "pubsub-keeps-nothing", "delivered_total"),
        0
    );
    assert_eq!(
        obs_i64(&report, "queue-keeps-backlog", "delivered_total"),
        400
    );
    // Without a prefetch limit the first subscriber takes the backlog.
    assert!(obs_f64(&report, "backlog-without-prefetch", "fairness") > 2.0);
    assert_nothing_left(&lab.name);
}

#[test]
fn expecting_queue_semantics_from_fanout_fails() {
    // The broken variant: fanout delivers every message to each of the 4
    // consumers, so 400 deliveries in total is the wrong expectation.
    let lab = temp_lab("messaging/queue-vs-pubsub.yaml", "broken", |t| {
        t.replacen(
            "delivered_total: \"== 1600\"",
            "delivered_total: \"== 400\"",
            1,
        )
    });
    let (code, report, out) = run_json(&lab, &["--scenario", "fanout"]);
    assert_eq!(code, Some(1), "{out}");
    let fanout = scenario(&report, "fanout");
    assert_eq!(fanout["verdict"], "fail", "{fanout}");
    let check = fanout["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["observation"] == "delivered_total")
        .expect("delivered_total check");
    assert_eq!(check["verdict"], "fail", "{check}");
    assert_eq!(check["observed"], 1600, "{check}");
    assert_eq!(report["verdict"], "fail");
    assert_nothing_left(&lab.name);
}

#[test]
fn ack_redelivery_passes_and_leaves_nothing() {
    let lab = temp_lab("messaging/ack-redelivery.yaml", "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    // Manual acks: what A held comes back to B, marked redelivered; nothing lost.
    assert_eq!(obs_i64(&report, "manual-ack", "lost"), 0);
    assert_eq!(obs_i64(&report, "manual-ack", "delivered_total"), 200);
    let held = obs_i64(&report, "manual-ack", "in_flight_at_kill");
    assert!((1..=10).contains(&held), "held {held} with prefetch 10");
    assert_eq!(obs_i64(&report, "manual-ack", "redelivered"), held);
    // Work done but not acked: done again.
    assert_eq!(
        obs_i64(&report, "manual-ack-crash-after-work", "duplicates"),
        1
    );
    // No prefetch limit: A held the whole rest of the queue.
    assert_eq!(
        obs_i64(&report, "manual-ack-no-prefetch", "redelivered"),
        180
    );
    // Auto-ack: the unprocessed messages A had received are gone.
    let lost = obs_i64(&report, "auto-ack", "lost");
    assert!(lost > 0);
    assert_eq!(lost, obs_i64(&report, "auto-ack", "in_flight_at_kill"));
    assert_eq!(obs_i64(&report, "auto-ack", "redelivered"), 0);
    assert_nothing_left(&lab.name);
}

#[test]
fn expecting_auto_ack_to_lose_nothing_fails() {
    let lab = temp_lab("messaging/ack-redelivery.yaml", "broken", |t| {
        t.replacen("lost: \"> 0\"", "lost: \"== 0\"", 1)
    });
    let (code, report, out) = run_json(&lab, &["--scenario", "auto-ack"]);
    assert_eq!(code, Some(1), "{out}");
    let auto = scenario(&report, "auto-ack");
    assert_eq!(auto["verdict"], "fail", "{auto}");
    let check = auto["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["observation"] == "lost")
        .expect("lost check");
    assert_eq!(check["verdict"], "fail", "{check}");
    assert!(check["observed"].as_i64().unwrap() > 0, "{check}");
    assert_nothing_left(&lab.name);
}
