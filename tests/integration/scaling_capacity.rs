//! The horizontal-vs-vertical lab, end to end on the real Docker engine: one
//! agent with a whole CPU against four with a quarter each, the CPU limits
//! seen from inside the containers' cgroups. The broken variants are
//! balancers, not numbers: one that sends every request to one instance, and
//! one that does not retry on a surviving instance. The tests of the curve
//! have the host's CPU to itself ([`alone`]): its latencies are CPU time
//! against a quota. The kills' verdicts are counts, and share the host.

use crate::common::*;
use serde_json::json;

const LAB: &str = "scaling/horizontal-vs-vertical.yaml";

/// The curve, the only scenario whose verdicts rest on CPU time against a
/// quota: it runs with the host to itself.
const CURVE: &[&str] = &["--scenario", "same-total-cpu"];
/// The kills, whose verdicts are counts (served, retried, failed): they
/// share the host like any other lab.
const KILLS: &[&str] = &[
    "--scenario",
    "small-instance-killed",
    "--scenario",
    "big-instance-killed",
];

#[test]
fn capacity_lab_passes_with_the_limits_in_the_cgroups() {
    let _cpu = alone();
    let lab = temp_lab_with_files(LAB, "pass", |t| t);
    let (code, report, text) = run_json(&lab, CURVE);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);

    // `cpus:` reached the containers: each instance reports its own quota.
    assert_eq!(obs(&report, "same-total-cpu", "a_cpus"), 1.0);
    assert_eq!(obs(&report, "same-total-cpu", "b_cpus"), 1.0);
    assert_eq!(obs(&report, "same-total-cpu", "b_instances"), 4.0);
    let curve = &scenario(&report, "same-total-cpu")["observations"];
    assert_eq!(curve["levels"], json!([1, 2, 4, 8]), "{curve}");
    assert_nothing_left(&lab.name);
}

#[test]
fn capacity_lab_kills_pass_with_what_nginx_and_the_clients_saw() {
    let lab = temp_lab_with_files(LAB, "kills", |t| t);
    let (code, report, text) = run_json(&lab, KILLS);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    assert_eq!(
        obs(&report, "small-instance-killed", "b_instances_after_kill"),
        3.0
    );
    assert_nothing_left(&lab.name);
}

fn changed() -> impl Fn(String) -> String {
    changed_params(&[
        ("work_ms", json!(60)),
        ("max_concurrency", json!(12)),
        ("step_ms", json!(2500)),
        ("concurrency", json!(6)),
        ("after_ms", json!(1500)),
    ])
}

#[test]
fn capacity_lab_holds_with_changed_parameters() {
    let _cpu = alone();
    let lab = temp_lab_with_files(LAB, "params", changed());
    let (code, report, text) = run_json(&lab, CURVE);
    assert_eq!(code, Some(0), "{text}");
    let curve = &scenario(&report, "same-total-cpu")["observations"];
    assert_eq!(curve["levels"], json!([1, 2, 4, 8, 12]), "{curve}");
    assert!(obs(&report, "same-total-cpu", "a_cpu_ms_per_request") >= 60.0);
    assert_nothing_left(&lab.name);
}

#[test]
fn capacity_lab_kills_hold_with_changed_parameters() {
    let lab = temp_lab_with_files(LAB, "kill-params", changed());
    let (code, _report, text) = run_json(&lab, KILLS);
    assert_eq!(code, Some(0), "{text}");
    assert_nothing_left(&lab.name);
}

/// The broken balancer: one hash key for every request, so one small
/// instance takes them all and the pool's ceiling is a quarter CPU's.
#[test]
fn a_balancer_that_pins_every_request_loses_the_pools_capacity() {
    let _cpu = alone();
    let report = run_broken(
        LAB,
        "hash-one",
        &[
            ("same-total-cpu", "balancer", json!("hash-one")),
            ("same-total-cpu", "step_ms", json!(2000)),
        ],
        "same-total-cpu",
    );
    let seen = &scenario(&report, "same-total-cpu")["observations"];
    let verdict = |o| check_verdict(&report, "same-total-cpu", o);
    assert_eq!(verdict("ceiling_ratio"), "fail", "{seen}");
    assert_eq!(verdict("a_p50_top_ms"), "pass", "{seen}");
    // The pinned instance alone was throttled all along.
    assert_eq!(verdict("b_throttled_periods"), "pass", "{seen}");
    assert_eq!(seen["b_instances"], 1, "{seen}");
}

/// The broken failover: Nginx without retries. The pool keeps serving,
/// but its clients see the dead instance's failures.
#[test]
fn a_balancer_without_retries_shows_the_dead_instance_to_clients() {
    let report = run_broken(
        LAB,
        "no-retry",
        &[("small-instance-killed", "balancer", json!("no-retry"))],
        "small-instance-killed",
    );
    let verdict = |o| check_verdict(&report, "small-instance-killed", o);
    let seen = &scenario(&report, "small-instance-killed")["observations"];
    assert_eq!(verdict("b_errors_after_kill"), "fail", "{seen}");
    assert_eq!(verdict("b_retried_after_kill"), "fail", "{seen}");
    assert_eq!(verdict("b_served_after_kill"), "pass", "{seen}");
}
