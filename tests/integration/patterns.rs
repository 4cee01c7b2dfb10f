//! The architectural-pattern labs, end to end on the real Docker engine.
//!
//! microservices-failure: a chain of seven agent containers, inventory made
//! slow under open-loop traffic. The broken variants are gateway policies:
//! the breaker scenario without its timeout (the slowness spreads to the
//! catalog) and without its breaker (the retries hammer inventory).
//!
//! serverless-cold-start: function instances are containers the exercise
//! starts and stops through the engine. The broken variants are platforms:
//! a container per invocation, one that never scales to zero, and a limit
//! that counts only the instances already running.

use crate::common::*;
use serde_json::json;

const CHAIN: &str = "patterns/microservices-failure.yaml";
const SERVERLESS: &str = "patterns/serverless-cold-start.yaml";

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

#[test]
fn serverless_passes_with_what_the_engine_recorded() {
    let lab = temp_lab(SERVERLESS, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // One instance served every invocation one at a time.
    assert_eq!(obs(&report, "cold-then-warm", "instances_started"), 1.0);
    // A cold start is the engine's start and the runtime's.
    assert!(obs(&report, "cold-then-warm", "engine_start_p50_ms") > 0.0);
    assert!(obs(&report, "scale-to-zero", "container_s") > 0.0);
    // The queued burst never had more than its three instances.
    assert_eq!(obs(&report, "limit-queue", "instances_started"), 3.0);
    assert_nothing_left(&lab.name);
}

/// More bursts, a higher limit, shorter work: the verdicts hold.
#[test]
fn serverless_holds_with_changed_parameters() {
    let lab = temp_lab(
        SERVERLESS,
        "params",
        changed_params(&[
            ("bursts", json!(3)),
            ("max_instances", json!(5)),
            ("work_ms", json!(50)),
        ]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(obs(&report, "limit-queue", "queued"), 9.0);
    assert_eq!(obs(&report, "limit-refuse", "refused"), 9.0);
    assert_nothing_left(&lab.name);
}

/// The broken platform: a container per invocation, none reused.
#[test]
fn a_platform_that_never_reuses_an_instance_starts_cold_every_time() {
    let report = run_broken(
        SERVERLESS,
        "noreuse",
        &[("cold-then-warm", "reuse", json!(false))],
        "cold-then-warm",
    );
    assert_eq!(
        check_verdict(&report, "cold-then-warm", "cold_starts"),
        "fail"
    );
    assert_eq!(obs(&report, "cold-then-warm", "instances_started"), 8.0);
}

/// The broken platform: idle instances are never stopped, so the cold
/// starts go and the cost of an always-on instance comes back.
#[test]
fn a_platform_that_never_scales_to_zero_costs_an_always_on_instance() {
    let report = run_broken(
        SERVERLESS,
        "nozero",
        &[("scale-to-zero", "scale_to_zero", json!(false))],
        "scale-to-zero",
    );
    assert_eq!(
        check_verdict(&report, "scale-to-zero", "cold_starts"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "scale-to-zero", "container_s"),
        "fail"
    );
}

/// The broken limit: instances count once they run, so a burst finds room
/// for all of its invocations while the first instances still start.
#[test]
fn a_limit_that_counts_only_running_instances_is_overrun_by_a_burst() {
    let report = run_broken(
        SERVERLESS,
        "racy",
        &[("limit-queue", "scheduler", json!("count-running"))],
        "limit-queue",
    );
    assert_eq!(
        check_verdict(&report, "limit-queue", "instances_peak"),
        "fail"
    );
    assert!(obs(&report, "limit-queue", "instances_peak") > 3.0);
}
