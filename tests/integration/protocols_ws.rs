//! The websocket-fanout lab, end to end on the real Docker engine: a Redis,
//! the agent as hub, twenty WebSocket or polling clients on the host, and a
//! hub restart. The broken variant is a client that reconnects without
//! saying where it stopped.

use crate::common::*;
use serde_json::json;

const LAB: &str = "protocols/websocket-fanout.yaml";

#[test]
fn websocket_fanout_passes_with_what_the_clients_timed() {
    let lab = temp_lab(LAB, "pass", |t| t);
    let (code, report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    all_pass(&report);
    // Push is faster than polling at either interval.
    let push = obs(&report, "websocket-push", "latency_p50_ms");
    assert!(
        push < obs(&report, "polling-200ms", "latency_p50_ms"),
        "{push}"
    );
    // The restart dropped every connection once at least.
    assert!(obs(&report, "restart-resume", "reconnects") >= 20.0);
    assert_nothing_left(&lab.name);
}

/// Fewer clients, more events at a higher rate, other poll intervals: the
/// verdicts hold.
#[test]
fn websocket_fanout_holds_with_changed_parameters() {
    let lab = temp_lab(
        LAB,
        "params",
        changed_params(&[
            ("clients", json!(8)),
            ("events", json!(400)),
            ("rate", json!(80)),
            ("poll_ms", json!(400)),
        ]),
    );
    let (code, _report, text) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_nothing_left(&lab.name);
}

/// The broken client: after the restart it reconnects from the newest
/// event, not from the last one it saw.
#[test]
fn a_client_that_does_not_resume_misses_events() {
    let report = run_broken(
        LAB,
        "noresume",
        &[("restart-resume", "resume", json!(false))],
        "restart-resume",
    );
    assert_eq!(check_verdict(&report, "restart-resume", "missed"), "fail");
}
