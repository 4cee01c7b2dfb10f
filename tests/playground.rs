//! The playground lab, end to end on the real Docker engine: every service
//! kind answers a real client round trip; a client with a wrong PostgreSQL
//! password fails with PostgreSQL's own words; a wrong expectation fails.

mod common;

use std::sync::Mutex;

use common::*;

const LAB: &str = "getting-started/playground.yaml";

/// Seven containers per run (RabbitMQ alone boots for seconds): one run at a
/// time from this file, so the tests do not starve each other on small hosts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn playground_passes_with_a_round_trip_per_kind_and_leaves_nothing() {
    let _serial = serial();
    let lab = temp_lab_with_files(LAB, "pass", |t| t);
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);
    let scenarios = report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios");
    assert_eq!(scenarios.len(), 2, "{report}");
    for s in scenarios {
        assert_eq!(s["verdict"], "pass", "{s}");
        let obs = &s["observations"];
        for kind in ["redis", "postgres", "rabbitmq", "kafka", "mqtt", "http"] {
            assert_eq!(obs[format!("{kind}_ok")], true, "{kind} in {s}");
            let ms = obs[format!("{kind}_ms")].as_f64().expect("a time");
            assert!(ms > 0.0 && ms < 30_000.0, "{kind}_ms = {ms}");
        }
        assert_eq!(obs["services_checked"], 6, "{s}");
        // Through Nginx, answered by the agent behind it.
        assert_eq!(obs["http_instance"], "agent", "{s}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn a_wrong_postgres_password_fails_and_says_so() {
    let _serial = serial();
    let lab = temp_lab_with_files(LAB, "wrongpw", |t| {
        t.replacen(
            "exercise: smoke\n",
            "exercise: smoke\nparams: { postgres_password: not-the-password }\n",
            1,
        )
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "round-trips",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("postgres: password authentication failed for user \"lab\""),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("UNKNOWN"), "{}", text(&out));
    assert_nothing_left(&lab.name);
}

#[test]
fn a_wrong_expectation_fails_with_the_observed_instance() {
    let _serial = serial();
    let lab = temp_lab_with_files(LAB, "broken", |t| {
        t.replace(
            "http_instance: \"== agent\"",
            "http_instance: \"== nobody\"",
        )
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "http-reaches-the-agent",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_report(&out);
    let scenario = &report["labs"][0]["scenarios"][0];
    assert_eq!(scenario["name"], "http-reaches-the-agent", "{report}");
    assert_eq!(scenario["verdict"], "fail", "{scenario}");
    assert_eq!(scenario["observations"]["http_instance"], "agent");
    assert_eq!(report["labs"][0]["verdict"], "fail", "{report}");
    assert_nothing_left(&lab.name);
}
