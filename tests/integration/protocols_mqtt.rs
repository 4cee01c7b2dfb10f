//! The mqtt-telemetry lab, end to end on the real Docker engine (Mosquitto):
//! it passes, passes with changed parameters, a broken implementation of each
//! scenario fails its named expectations with exit 1, and nothing is left.

use crate::common::*;
use serde_json::{Value, json};

const LAB: &str = "protocols/mqtt-telemetry.yaml";

fn assert_fails_on(report: &Value, name: &str, observations: &[&str]) {
    let s = scenario(report, name);
    assert_eq!(s["verdict"], "fail", "{s}");
    for o in observations {
        let check = s["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["observation"] == *o)
            .unwrap_or_else(|| panic!("{name}: no check on {o}: {s}"));
        assert_eq!(check["verdict"], "fail", "{name}: {check}");
    }
}

#[test]
fn mqtt_telemetry_passes_and_leaves_nothing() {
    let lab = temp_lab_with_files(LAB, "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    let scenarios = report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios");
    assert_eq!(scenarios.len(), 10);
    for s in scenarios {
        assert_eq!(s["verdict"], "pass", "{s}");
    }

    // Nothing fails: every level delivers all 60 readings.
    for n in 0..3 {
        assert_eq!(
            obs(&report, "all-online", &format!("received_qos{n}")),
            60.0
        );
    }

    // The dashboard is away: with Mosquitto's defaults every QoS 0 reading of
    // that time is lost, QoS 1/2 are queued in its session and delivered on return.
    let s = "subscriber-offline";
    assert!(obs(&report, s, "published_while_offline_qos0") > 0.0);
    assert_eq!(
        obs(&report, s, "missing_while_offline_qos0"),
        obs(&report, s, "published_while_offline_qos0")
    );
    assert_eq!(obs(&report, s, "missing_while_offline_qos1"), 0.0);
    assert_eq!(obs(&report, s, "missing_while_offline_qos2"), 0.0);
    assert_eq!(
        scenario(&report, s)["observations"]["session_resumed"],
        true
    );
    let timeline: Vec<&str> = scenario(&report, s)["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["what"].as_str())
        .collect();
    let pos = |m: &str| timeline.iter().position(|w| *w == m);
    assert!(
        pos("dashboard-offline") < pos("dashboard-back") && pos("dashboard-offline").is_some(),
        "{timeline:?}"
    );
    // A Mosquitto told to queue QoS 0 for the session loses nothing.
    let s = "subscriber-offline-queue-qos0";
    assert!(obs(&report, s, "published_while_offline_qos0") > 0.0);
    assert_eq!(obs(&report, s, "missing_while_offline"), 0.0);

    // Without a persistent session nothing waits for the dashboard.
    let s = "subscriber-offline-clean-session";
    assert!(obs(&report, s, "missing_while_offline_qos1") > 0.0);
    assert!(obs(&report, s, "missing_while_offline_qos2") > 0.0);

    // Lost acks: both QoS 1 and 2 sensors resend; only QoS 1 is delivered twice.
    let s = "lost-acks";
    assert!(obs(&report, s, "resent_qos1") > 0.0);
    assert!(obs(&report, s, "resent_qos2") > 0.0);
    assert!(obs(&report, s, "duplicates_qos1") > 0.0);
    assert_eq!(obs(&report, s, "duplicates_qos2"), 0.0);
    assert_eq!(obs(&report, s, "received_qos2"), 60.0);

    // Retained readings for the late subscriber; wills only for a crash.
    assert_eq!(
        obs(&report, "retained-late-subscriber", "retained_latest"),
        6.0
    );
    assert_eq!(obs(&report, "all-online", "retained_received"), 0.0);
    assert_eq!(obs(&report, "sensor-crash-last-will", "will_received"), 1.0);
    assert_eq!(
        obs(&report, "sensor-clean-disconnect", "will_received"),
        0.0
    );

    // Bytes on the wire, counted through relays.
    let s = "bytes-on-the-wire";
    let (mqtt, http) = (
        obs(&report, s, "bytes_per_message_mqtt"),
        obs(&report, s, "bytes_per_message_http"),
    );
    let payload = obs(&report, s, "payload_bytes");
    assert!(
        payload < mqtt && mqtt < http,
        "payload {payload}, mqtt {mqtt}, http {http}"
    );

    let s = "broker-throughput";
    assert_eq!(obs(&report, s, "burst_received"), 20000.0);
    assert!(obs(&report, s, "msgs_per_s") > 1000.0);

    assert_nothing_left(&lab.name);
}

#[test]
fn mqtt_telemetry_passes_with_changed_params() {
    let lab = temp_lab_with_files(
        LAB,
        "params",
        changed_params(&[("sensors", json!(9)), ("rate_hz", json!(25))]),
    );
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    assert_eq!(obs(&report, "all-online", "received_qos0"), 90.0);
    assert_eq!(
        obs(&report, "retained-late-subscriber", "retained_received"),
        9.0
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn mqtt_telemetry_broken_implementations_fail() {
    let lab = temp_lab_with_files(
        LAB,
        "broken",
        scenario_params(&[
            // The default Mosquitto where the lesson needs one that queues QoS 0.
            (
                "subscriber-offline-queue-qos0",
                "service",
                json!("mosquitto"),
            ),
            // A dashboard without a persistent session, and one with it.
            ("subscriber-offline", "persistent", json!(false)),
            (
                "subscriber-offline-clean-session",
                "persistent",
                json!(true),
            ),
            // Links that lose acks where nothing should fail, and the reverse.
            ("all-online", "flap_sensors", json!(true)),
            ("lost-acks", "flap_sensors", json!(false)),
            // Readings not retained; a sensor that says goodbye, one that crashes.
            ("retained-late-subscriber", "retain", json!(false)),
            ("sensor-crash-last-will", "sensor_exit", json!("disconnect")),
            ("sensor-clean-disconnect", "sensor_exit", json!("crash")),
        ]),
    );
    let mut args = Vec::new();
    for s in [
        "all-online",
        "subscriber-offline",
        "subscriber-offline-queue-qos0",
        "subscriber-offline-clean-session",
        "lost-acks",
        "retained-late-subscriber",
        "sensor-crash-last-will",
        "sensor-clean-disconnect",
    ] {
        args.extend(["--scenario", s]);
    }
    let (code, report, out) = run_json(&lab, &args);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(report["verdict"], "fail");
    assert_fails_on(
        &report,
        "subscriber-offline-queue-qos0",
        &["missing_while_offline", "received_qos0"],
    );
    assert_fails_on(
        &report,
        "subscriber-offline",
        &[
            "session_resumed",
            "missing_while_offline_qos1",
            "missing_while_offline_qos2",
            "received_qos1",
        ],
    );
    assert_fails_on(
        &report,
        "subscriber-offline-clean-session",
        &[
            "session_resumed",
            "missing_while_offline",
            "missing_while_offline_qos1",
        ],
    );
    assert_fails_on(&report, "all-online", &["duplicates", "will_received"]);
    assert_fails_on(
        &report,
        "lost-acks",
        &[
            "sensor_reconnects",
            "resent_qos1",
            "duplicates_qos1",
            "will_received",
        ],
    );
    assert_fails_on(
        &report,
        "retained-late-subscriber",
        &["retained_received", "retained_latest"],
    );
    assert_fails_on(&report, "sensor-crash-last-will", &["will_received"]);
    assert_fails_on(&report, "sensor-clean-disconnect", &["will_received"]);
    assert_nothing_left(&lab.name);
}
