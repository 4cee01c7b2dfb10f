//! The HTTP protocol labs (http-https, http2-multiplexing, grpc-vs-rest), end to end on the
//! real Docker engine: Nginx with the lab's config and certificate in front of
//! the agent. Broken variants break the server's config or the client, not the
//! numbers, and each must FAIL on the expectation it breaks.

use crate::common::*;
use serde_json::{Value, json};

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

/// Edits a config file the lab copy mounts (e.g. `http-https.nginx.conf`).
fn break_file(lab: &TempLab, file: &str, from: &str, to: &str) {
    let path = lab.dir.path().join(file);
    let text = std::fs::read_to_string(&path).expect("lab file");
    let broken = text.replacen(from, to, 1);
    assert_ne!(broken, text, "{file} changed: fix this test's edit");
    std::fs::write(&path, broken).expect("write lab file");
}

/// Runs one scenario of a lab copy and asserts it FAILs on exactly `expected`.
fn assert_fails_on(lab: &TempLab, name: &str, expected: &[(&str, Value)]) {
    let (code, report, text) = run_json(lab, &["--scenario", name]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(report["verdict"], "fail", "{report}");
    let s = scenario(&report, name);
    assert_eq!(s["verdict"], "fail", "{s}");
    let expected: Vec<(String, Value)> = expected
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    assert_eq!(failed_checks(s), expected, "{s}");
    assert_nothing_left(&lab.name);
}

fn all_pass(report: &Value) {
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
}

#[test]
fn http_https_passes_and_leaves_nothing() {
    let lab = temp_lab_with_files(HTTPS, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");

    let trusted = &scenario(&report, "trusted-client")["observations"];
    assert_eq!(trusted["verified"], true, "{trusted}");
    assert_eq!(trusted["handshakes_completed"], 20, "{trusted}");
    assert_eq!(trusted["tls_version"], "TLSv1.3", "{trusted}");
    assert_eq!(trusted["https_status"], 200, "{trusted}");
    // Ten requests, one connection, as Nginx counted them.
    assert_eq!(trusted["requests_answered"], 10, "{trusted}");
    assert_eq!(trusted["connections_seen"], 1, "{trusted}");
    assert_eq!(trusted["untrusted_rejected"], true, "{trusted}");
    assert_eq!(trusted["untrusted_error"], "unknown-issuer", "{trusted}");
    assert_eq!(trusted["redirect_status"], 301, "{trusted}");
    assert!(trusted["handshake_ms"].as_f64().unwrap() > 0.0, "{trusted}");

    let tls12 = &scenario(&report, "tls-1.2-client")["observations"];
    assert_eq!(tls12["tls_version"], "TLSv1.2", "{tls12}");

    let wrong = &scenario(&report, "wrong-name")["observations"];
    assert_eq!(wrong["verified"], false, "{wrong}");
    assert_eq!(wrong["verify_error"], "wrong-name", "{wrong}");

    let insecure = &scenario(&report, "insecure-client")["observations"];
    assert_eq!(insecure["untrusted_rejected"], false, "{insecure}");
    all_pass(&report);
    assert_nothing_left(&lab.name);
}

#[test]
fn http_https_passes_with_other_parameters() {
    let lab = temp_lab_with_files(
        HTTPS,
        "params",
        changed_params(&[("handshakes", json!(7)), ("requests", json!(4))]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    let trusted = &scenario(&report, "trusted-client")["observations"];
    assert_eq!(trusted["handshakes_completed"], 7, "{trusted}");
    assert_eq!(trusted["requests_answered"], 4, "{trusted}");
    all_pass(&report);
    assert_nothing_left(&lab.name);
}

#[test]
fn a_client_that_does_not_verify_lets_the_untrusted_server_through_and_fails() {
    let lab = temp_lab_with_files(HTTPS, "noverify", |t| {
        let broken = t.replacen(
            "    description: a client that trusts the lab CA, a client that does not, and plain HTTP\n",
            "    description: a client that trusts the lab CA, a client that does not, and plain HTTP\n    params: { verify: false }\n",
            1,
        );
        assert_ne!(broken, t, "the lab changed: fix this test's edit");
        broken
    });
    assert_fails_on(
        &lab,
        "trusted-client",
        &[
            ("untrusted_error", json!("none")),
            ("untrusted_rejected", json!(false)),
        ],
    );
}

#[test]
fn a_server_without_tls_1_3_fails_the_version_check() {
    let lab = temp_lab_with_files(HTTPS, "tls12only", |t| t);
    break_file(
        &lab,
        "http-https.nginx.conf",
        "ssl_protocols        TLSv1.2 TLSv1.3;",
        "ssl_protocols        TLSv1.2;",
    );
    assert_fails_on(&lab, "trusted-client", &[("tls_version", json!("TLSv1.2"))]);
}

#[test]
fn a_server_without_keep_alive_pays_a_handshake_per_request_and_fails() {
    let lab = temp_lab_with_files(HTTPS, "nokeepalive", |t| t);
    break_file(
        &lab,
        "http-https.nginx.conf",
        "    access_log  /var/log/nginx/access.log;\n",
        "    access_log  /var/log/nginx/access.log;\n    keepalive_timeout  0;\n",
    );
    // Every one of the ten requests on a connection of its own.
    assert_fails_on(&lab, "trusted-client", &[("connections_seen", json!(10))]);
}

#[test]
fn http2_multiplexing_passes_and_leaves_nothing() {
    let lab = temp_lab_with_files(HTTP2, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");

    let one = &scenario(&report, "http1-one-connection")["observations"];
    let pool = &scenario(&report, "http1-connection-pool")["observations"];
    let h2 = &scenario(&report, "http2")["observations"];
    // Counted by Nginx: one connection, eight, one.
    assert_eq!(one["connections_used"], 1, "{one}");
    assert_eq!(pool["connections_used"], 8, "{pool}");
    assert_eq!(h2["connections_used"], 1, "{h2}");
    assert_eq!(one["negotiated_protocol"], "http/1.1", "{one}");
    assert_eq!(h2["negotiated_protocol"], "h2", "{h2}");
    // One HTTP/1.1 connection queues the 200 ms requests; HTTP/2 runs them at once.
    let wall = |o: &Value| o["wall_ms"].as_f64().expect("wall_ms");
    assert!(wall(one) >= 1600.0, "{one}");
    assert!(wall(one) > 3.0 * wall(h2), "h1 {one} vs h2 {h2}");
    all_pass(&report);
    assert_nothing_left(&lab.name);
}

#[test]
fn http2_multiplexing_passes_with_other_parameters() {
    let lab = temp_lab_with_files(
        HTTP2,
        "params",
        changed_params(&[("requests", json!(5)), ("delay_ms", json!(250))]),
    );
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    // The pool of eight is capped by the five requests.
    let pool = &scenario(&report, "http1-connection-pool")["observations"];
    assert_eq!(pool["connections_used"], 5, "{pool}");
    let one = &scenario(&report, "http1-one-connection")["observations"];
    assert!(one["wall_ms"].as_f64().unwrap() >= 1250.0, "{one}");
    all_pass(&report);
    assert_nothing_left(&lab.name);
}

#[test]
fn a_server_allowing_one_stream_at_a_time_queues_http2_and_fails() {
    let lab = temp_lab_with_files(HTTP2, "onestream", |t| t);
    break_file(
        &lab,
        "http2-multiplexing.nginx.conf",
        "http2_max_concurrent_streams  128;",
        "http2_max_concurrent_streams  1;",
    );
    let (code, report, text) = run_json(&lab, &["--scenario", "http2"]);
    assert_eq!(code, Some(1), "{text}");
    let s = scenario(&report, "http2");
    assert_eq!(s["verdict"], "fail", "{s}");
    let failed = failed_checks(s);
    assert_eq!(failed.len(), 1, "{s}");
    assert_eq!(failed[0].0, "ratio", "{s}");
    // Still one connection: the streams queued on it.
    assert_eq!(s["observations"]["connections_used"], 1, "{s}");
    assert_nothing_left(&lab.name);
}

#[test]
fn a_client_sending_everything_over_one_http1_connection_fails_the_pool_checks() {
    // Broken client: the pool scenario with a pool of one.
    let lab = temp_lab_with_files(HTTP2, "nopool", |t| {
        let broken = t.replacen(
            "params: { protocol: http1, pool: 8 }",
            "params: { protocol: http1, pool: 1 }",
            1,
        );
        assert_ne!(broken, t, "the lab changed: fix this test's edit");
        broken
    });
    let (code, report, text) = run_json(&lab, &["--scenario", "http1-connection-pool"]);
    assert_eq!(code, Some(1), "{text}");
    let s = scenario(&report, "http1-connection-pool");
    assert_eq!(s["verdict"], "fail", "{s}");
    let names: Vec<String> = failed_checks(s).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["ratio".to_string()], "{s}");
    assert_nothing_left(&lab.name);
}

const GRPC: &str = "protocols/grpc-vs-rest.yaml";

#[test]
fn grpc_vs_rest_passes_with_what_the_relay_and_the_agent_counted() {
    let lab = temp_lab_with_files(GRPC, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // One HTTP/2 connection carries every gRPC call; HTTP/1.1 needs one
    // per call in flight.
    assert_eq!(obs(&report, "wire", "grpc_connections"), 1.0);
    assert!(obs(&report, "wire", "json_h1_connections") >= 2.0);
    // The cut stream was opened again, and only once.
    assert_eq!(obs(&report, "stream-vs-polling", "stream_reopened"), 1.0);
    assert_nothing_left(&lab.name);
}

/// Fewer calls at other concurrency, faster polling, a longer deadline: the
/// verdicts hold.
#[test]
fn grpc_vs_rest_holds_with_changed_parameters() {
    let lab = temp_lab_with_files(
        GRPC,
        "params",
        changed_params(&[
            ("calls", json!(300)),
            ("concurrency", json!(3)),
            ("poll_ms", json!(100)),
            ("updates", json!(30)),
            ("deadline_calls", json!(4)),
            ("deadline_ms", json!(400)),
            ("work_ms", json!(1500)),
        ]),
    );
    let (code, _report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_nothing_left(&lab.name);
}

/// The broken server: its work runs on a task of its own and finishes for
/// callers that are gone.
#[test]
fn a_server_that_ignores_its_callers_leaving_wastes_its_work() {
    let report = run_broken(
        GRPC,
        "detached",
        &[("deadline", "server", json!("detached"))],
        "deadline",
    );
    assert_eq!(check_verdict(&report, "deadline", "server_wasted"), "fail");
    assert_eq!(check_verdict(&report, "deadline", "server_left"), "pass");
}

/// The broken client: calls without a deadline, gRPC's default. They wait
/// the whole 2 s of work and nobody leaves.
#[test]
fn grpc_calls_without_a_deadline_wait_for_all_the_work() {
    let report = run_broken(
        GRPC,
        "nodeadline",
        &[("deadline", "client_deadline", json!("none"))],
        "deadline",
    );
    assert_eq!(
        check_verdict(&report, "deadline", "deadline_errors"),
        "fail"
    );
    assert_eq!(check_verdict(&report, "deadline", "server_left"), "fail");
    assert!(obs(&report, "deadline", "client_wait_p50_ms") >= 2000.0);
}

/// The broken poller: it keeps only the latest update of each answer, as a
/// dashboard of current values does, and misses the ones in between.
#[test]
fn a_poller_that_keeps_only_the_latest_update_misses_the_others() {
    let report = run_broken(
        GRPC,
        "latest",
        &[("stream-vs-polling", "poller", json!("latest"))],
        "stream-vs-polling",
    );
    assert_eq!(
        check_verdict(&report, "stream-vs-polling", "poll_missed"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "stream-vs-polling", "stream_missed"),
        "pass"
    );
}

/// The broken watcher: it takes the end of its cut stream for the end of the
/// feed and misses every update after the cut.
#[test]
fn a_watcher_that_does_not_reopen_its_cut_stream_misses_the_rest() {
    let report = run_broken(
        GRPC,
        "once",
        &[("stream-vs-polling", "watcher", json!("once"))],
        "stream-vs-polling",
    );
    assert_eq!(
        check_verdict(&report, "stream-vs-polling", "stream_missed"),
        "fail"
    );
    assert_eq!(
        check_verdict(&report, "stream-vs-polling", "poll_missed"),
        "pass"
    );
    assert_eq!(obs(&report, "stream-vs-polling", "stream_reopened"), 0.0);
}

/// The broken proxy: gRPC sent on with proxy_pass (HTTP/1.1) loses the
/// trailers that carry its status.
#[test]
fn grpc_through_proxy_pass_loses_its_status() {
    let report = run_broken(
        GRPC,
        "proxy",
        &[("through-nginx", "nginx_route", json!("proxy_pass"))],
        "through-nginx",
    );
    assert_eq!(
        check_verdict(&report, "through-nginx", "nginx_failed"),
        "fail"
    );
    let error = scenario(&report, "through-nginx")["observations"]["nginx_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("grpc-status"), "{error}");
}
