//! The HTTP protocol labs (http-https, http2-multiplexing), end to end on the
//! real Docker engine: Nginx with the lab's config and certificate in front of
//! the agent.

mod common;

use common::*;
use serde_json::Value;

const HTTPS: &str = "protocols/http-https.yaml";
const HTTP2: &str = "protocols/http2-multiplexing.yaml";

/// The failed checks of a scenario, as `(observation, observed)`.
fn failed_checks(scenario: &Value) -> Vec<(String, Value)> {
    scenario["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .map(|c| {
            (
                c["observation"].as_str().unwrap_or_default().to_string(),
                c["observed"].clone(),
            )
        })
        .collect()
}

#[test]
fn http_https_passes_and_leaves_nothing() {
    let lab = temp_lab_with_files(HTTPS, "pass", |t| t);
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);

    let trusted = &scenario(&report, "trusted-client")["observations"];
    assert_eq!(trusted["verified"], true, "{trusted}");
    assert_eq!(trusted["tls_version"], "TLSv1.3", "{trusted}");
    assert_eq!(trusted["https_status"], 200, "{trusted}");
    assert_eq!(trusted["untrusted_rejected"], true, "{trusted}");
    assert_eq!(trusted["untrusted_error"], "unknown-issuer", "{trusted}");
    assert_eq!(trusted["redirect_status"], 301, "{trusted}");
    assert_eq!(trusted["redirects_to_https"], true, "{trusted}");
    assert!(trusted["handshake_ms"].as_f64().unwrap() > 0.0, "{trusted}");

    let tls12 = &scenario(&report, "tls-1.2-client")["observations"];
    assert_eq!(tls12["tls_version"], "TLSv1.2", "{tls12}");

    let wrong = &scenario(&report, "wrong-name")["observations"];
    assert_eq!(wrong["verified"], false, "{wrong}");
    assert_eq!(wrong["verify_error"], "wrong-name", "{wrong}");

    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn expecting_the_untrusted_client_to_get_through_fails() {
    let lab = temp_lab_with_files(HTTPS, "broken", |t| {
        let broken = t.replacen(
            "untrusted_rejected: true\n      untrusted_error",
            "untrusted_rejected: false\n      untrusted_error",
            1,
        );
        assert_ne!(broken, t, "the lab changed: fix this test's edit");
        broken
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "trusted-client",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_report(&out);
    assert_eq!(report["verdict"], "fail");
    let s = scenario(&report, "trusted-client");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert_eq!(
        failed_checks(s),
        vec![("untrusted_rejected".to_string(), Value::Bool(true))],
        "{s}"
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn http2_multiplexing_passes_and_leaves_nothing() {
    let lab = temp_lab_with_files(HTTP2, "pass", |t| t);
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);

    let one = &scenario(&report, "http1-one-connection")["observations"];
    let eight = &scenario(&report, "http1-eight-connections")["observations"];
    let h2 = &scenario(&report, "http2")["observations"];
    // Counted by Nginx: one connection, eight, one.
    assert_eq!(one["connections_used"], 1, "{one}");
    assert_eq!(eight["connections_used"], 8, "{eight}");
    assert_eq!(h2["connections_used"], 1, "{h2}");
    assert_eq!(one["negotiated_protocol"], "http/1.1", "{one}");
    assert_eq!(h2["negotiated_protocol"], "h2", "{h2}");
    // One HTTP/1.1 connection queues the 200 ms requests; HTTP/2 runs them at once.
    let wall = |o: &Value| o["wall_ms"].as_f64().expect("wall_ms");
    assert!(wall(one) >= 1600.0, "{one}");
    assert!(wall(one) > 3.0 * wall(h2), "h1 {one} vs h2 {h2}");
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn expecting_one_connection_for_eight_parallel_http1_requests_fails() {
    let lab = temp_lab_with_files(HTTP2, "broken", |t| {
        let broken = t.replacen("connections_used: 8", "connections_used: 1", 1);
        assert_ne!(broken, t, "the lab changed: fix this test's edit");
        broken
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "http1-eight-connections",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_report(&out);
    assert_eq!(report["verdict"], "fail");
    let s = scenario(&report, "http1-eight-connections");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert_eq!(
        failed_checks(s),
        vec![("connections_used".to_string(), Value::from(8))],
        "{s}"
    );
    assert_nothing_left(&lab.name);
}
