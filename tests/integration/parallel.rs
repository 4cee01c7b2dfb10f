//! `run --jobs N`: labs run at once, each isolated, reports in the given order.

use crate::common::{assert_nothing_left, json_report, run, text};

/// A one-scenario lab: one Redis and a smoke round trip.
fn tiny_lab(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\ntitle: Tiny {name}\nsection: getting-started\nsummary: one round trip\n\
         services:\n  redis: {{ kind: redis }}\nexercise: smoke\n\
         scenarios:\n  - name: round-trip\n    expect: {{ redis_ok: true }}\n"
    );
    std::fs::write(&path, text).expect("write lab");
    path
}

#[test]
fn two_labs_run_at_once_and_report_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let (a, b) = (format!("par-a-{pid}"), format!("par-b-{pid}"));
    let (pa, pb) = (tiny_lab(dir.path(), &a), tiny_lab(dir.path(), &b));
    let out = run(&[
        "run",
        pa.to_str().unwrap(),
        pb.to_str().unwrap(),
        "--jobs",
        "2",
        "--format",
        "json",
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let report = json_report(&out);
    let labs = report["labs"].as_array().unwrap();
    assert_eq!(labs[0]["name"], a.as_str(), "{all}");
    assert_eq!(labs[1]["name"], b.as_str(), "{all}");
    assert_ne!(labs[0]["run_id"], labs[1]["run_id"]);
    assert!(labs.iter().all(|l| l["verdict"] == "pass"), "{all}");

    // Both labs started before either finished, and every progress line names its lab.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pos = |needle: &str| {
        stderr
            .find(needle)
            .unwrap_or_else(|| panic!("no `{needle}` in progress:\n{stderr}"))
    };
    let first_done = pos(&format!("\n✓ {a} PASS")).min(pos(&format!("\n✓ {b} PASS")));
    assert!(pos(&format!("{a}: Tiny {a}")) < first_done, "{stderr}");
    assert!(pos(&format!("{b}: Tiny {b}")) < first_done, "{stderr}");
    assert_nothing_left(&a);
    assert_nothing_left(&b);
}
