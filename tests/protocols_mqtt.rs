//! The mqtt-telemetry lab, end to end on the real Docker engine (Mosquitto).

mod common;

use common::*;
use serde_json::Value;

const LAB: &str = "protocols/mqtt-telemetry.yaml";

fn obs(report: &Value, name: &str, observation: &str) -> f64 {
    scenario(report, name)["observations"][observation]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: no numeric {observation}"))
}

#[test]
fn mqtt_telemetry_passes_and_leaves_nothing() {
    let lab = temp_lab(LAB, "pass", |t| t);
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);
    let scenarios = report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios");
    assert_eq!(scenarios.len(), 9);
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

    // The dashboard is away: QoS 0 readings of that time are lost, QoS 1/2 are
    // queued in its session and delivered on return.
    let s = "subscriber-offline";
    assert!(obs(&report, s, "published_while_offline") > 0.0);
    assert!(obs(&report, s, "missing_while_offline_qos0") > 0.0);
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
fn expecting_qos0_to_survive_an_outage_fails_with_exit_1() {
    // The broken variant: QoS 0 readings published while the dashboard was
    // away are expected to arrive after all.
    let lab = temp_lab(LAB, "broken", |t| {
        t.replacen(
            "missing_while_offline_qos0: \"> 0\"",
            "missing_while_offline_qos0: \"== 0\"",
            1,
        )
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "subscriber-offline",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_report(&out);
    assert_eq!(report["verdict"], "fail", "{report}");
    let s = scenario(&report, "subscriber-offline");
    assert_eq!(s["verdict"], "fail", "{s}");
    let check = s["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["observation"] == "missing_while_offline_qos0")
        .expect("the QoS 0 check");
    assert_eq!(check["verdict"], "fail", "{check}");
    assert!(check["observed"].as_f64().unwrap() > 0.0, "{check}");
    // The other checks of the scenario still pass: only the broken one fails.
    let failed = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .count();
    assert_eq!(failed, 1, "{s}");
    assert_nothing_left(&lab.name);
}
