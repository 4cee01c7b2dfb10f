//! The architectural-pattern labs, end to end on the real Docker engine.
//!
//! microservices-failure: a chain of seven agent containers, inventory made
//! slow under open-loop traffic. The broken variants are gateway policies:
//! the breaker scenario without its timeout (the slowness spreads to the
//! catalog) and without its breaker (the retries hammer inventory).

use crate::common::*;
use serde_json::json;

const CHAIN: &str = "patterns/microservices-failure.yaml";

#[test]
fn microservices_failure_passes_with_what_the_services_counted() {
    let lab = temp_lab(CHAIN, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // The gateway's worker count is read back from the gateway.
    assert_eq!(obs(&report, "no-timeouts", "gateway_workers"), 32.0);
    // Without timeouts every worker was taken and requests waited.
    assert!(obs(&report, "no-timeouts", "gateway_max_waiting") > 0.0);
    // With the breaker, most order requests were refused without a call.
    assert!(obs(&report, "circuit-breaker", "breaker_refused") > 0.0);
    assert_nothing_left(&lab.name);
}

/// A slower, longer fault, a lower rate, fewer gateway workers, a shorter
/// timeout and a shorter breaker: the verdicts hold.
#[test]
fn microservices_failure_holds_with_changed_parameters() {
    let params = changed_params(&[
        ("rate", json!(40)),
        ("slow_ms", json!(2000)),
        ("fault_ms", json!(3000)),
    ]);
    let lab = temp_lab(CHAIN, "params", move |t| {
        let t = replaced(t, "CHAIN_WORKERS: \"32\"", "CHAIN_WORKERS: \"20\"");
        let t = replaced(t, "timeout_ms: 250", "timeout_ms: 150");
        params(replaced(
            t,
            "breaker_open_ms: 2000",
            "breaker_open_ms: 1000",
        ))
    });
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(obs(&report, "no-timeouts", "gateway_workers"), 20.0);
    assert_nothing_left(&lab.name);
}

/// The broken policy: retries and a breaker, but no timeout. The breaker
/// never sees a failure while inventory is merely slow, and the catalog
/// waits behind the orders.
#[test]
fn a_gateway_without_timeouts_lets_the_slowness_spread() {
    let report = run_broken(
        CHAIN,
        "notimeout",
        &[("circuit-breaker", "timeout_ms", json!(0))],
        "circuit-breaker",
    );
    assert_eq!(
        check_verdict(&report, "circuit-breaker", "other_p99_ms_during"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "circuit-breaker", "breaker_opened"),
        "fail"
    );
}

/// The broken policy: timeouts and retries without the breaker; inventory
/// gets more calls than there are order requests.
#[test]
fn a_gateway_without_a_breaker_hammers_the_sick_service() {
    let report = run_broken(
        CHAIN,
        "nobreaker",
        &[("circuit-breaker", "breaker_failures", json!(0))],
        "circuit-breaker",
    );
    assert_eq!(
        check_verdict(&report, "circuit-breaker", "sick_calls_during"),
        "fail"
    );
}
