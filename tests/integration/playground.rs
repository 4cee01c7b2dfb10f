//! The playground lab, end to end on the real Docker engine: every service
//! kind answers a real client round trip, also with other parameters; a
//! client with a wrong PostgreSQL password FAILs (not UNKNOWN) with
//! PostgreSQL's own words; an Nginx that cannot reach the agent FAILs with
//! the status it answered.

use std::sync::Mutex;

use crate::common::*;
use serde_json::json;

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
        for kind in [
            "redis", "postgres", "rabbitmq", "kafka", "mqtt", "etcd", "http",
        ] {
            assert_eq!(obs[format!("{kind}_ok")], true, "{kind} in {s}");
            let ms = obs[format!("{kind}_ms")].as_f64().expect("a time");
            assert!(ms > 0.0 && ms < 30_000.0, "{kind}_ms = {ms}");
        }
        assert_eq!(obs["services_checked"], 7, "{s}");
        assert_eq!(obs["services_ok"], 7, "{s}");
        // Through Nginx, answered by the agent behind it.
        assert_eq!(obs["http_instance"], "agent", "{s}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn playground_passes_with_other_parameters() {
    let _serial = serial();
    // The password of the connection string given explicitly, and another path.
    let lab = temp_lab_with_files(
        LAB,
        "params",
        changed_params(&[
            ("postgres_password", json!("lab")),
            ("http_path", json!("/anything")),
        ]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
        assert_eq!(s["observations"]["services_ok"], 7, "{s}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn a_wrong_postgres_password_fails_with_postgres_own_words() {
    let _serial = serial();
    let lab = temp_lab_with_files(LAB, "wrongpw", |t| {
        t.replacen(
            "exercise: smoke\n",
            "exercise: smoke\nparams: { postgres_password: not-the-password }\n",
            1,
        )
    });
    let (code, report, text) = run_json(&lab, &["--scenario", "round-trips"]);
    assert_eq!(code, Some(1), "{text}");
    let s = scenario(&report, "round-trips");
    // FAIL, not UNKNOWN: the round trip was made and failed.
    assert_eq!(s["verdict"], "fail", "{s}");
    assert!(s["error"].is_null(), "{s}");
    let failed: Vec<&str> = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] != "pass")
        .map(|c| c["observation"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec!["postgres_ok", "services_ok"], "{s}");
    let obs = &s["observations"];
    assert_eq!(obs["postgres_ok"], false, "{s}");
    let why = obs["postgres_error"].as_str().expect("postgres_error");
    assert!(
        why.contains("password authentication failed for user \"lab\""),
        "{why}"
    );
    // The other kinds were still measured.
    assert_eq!(obs["redis_ok"], true, "{s}");
    assert_eq!(obs["services_ok"], 6, "{s}");
    assert_nothing_left(&lab.name);
}

#[test]
fn an_nginx_that_cannot_reach_the_agent_fails_with_the_status() {
    let _serial = serial();
    // Broken config: Nginx proxies to a port the agent does not listen on.
    let lab = temp_lab_with_files(LAB, "broken", |t| t);
    let conf = lab.dir.path().join("playground.nginx.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let broken = text.replacen("agent:8080", "agent:8081", 1);
    assert_ne!(broken, text, "the config changed: fix this test's edit");
    std::fs::write(&conf, broken).unwrap();
    let (code, report, text) = run_json(&lab, &["--scenario", "http-reaches-the-agent"]);
    assert_eq!(code, Some(1), "{text}");
    let s = scenario(&report, "http-reaches-the-agent");
    assert_eq!(s["verdict"], "fail", "{s}");
    let obs = &s["observations"];
    assert_eq!(obs["http_ok"], false, "{s}");
    let why = obs["http_error"].as_str().expect("http_error");
    assert!(why.contains("502"), "{why}");
    assert_eq!(report["labs"][0]["verdict"], "fail", "{report}");
    assert_nothing_left(&lab.name);
}
