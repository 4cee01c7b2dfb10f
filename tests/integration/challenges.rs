//! Challenges end to end on the real Docker engine: the learner's program
//! runs as host processes beside the lab's services, faults reach it, and
//! the harness's verdicts hold for the shipped solutions.

use crate::common::*;

const LAB: &str = "global-coordination/distributed-locking.yaml";

/// The catalog lab under a unique name, with its solutions beside it.
fn lab(suffix: &str) -> TempLab {
    temp_lab_with_files(LAB, suffix, |t| t)
}

fn challenge_scenarios(report: &serde_json::Value) -> Vec<&serde_json::Value> {
    report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .collect()
}

#[test]
fn the_reference_passes_under_pauses_and_kills() {
    let lab = lab("ref");
    let (code, report, out) = run_json(&lab, &["--solution", "reference"]);
    assert_eq!(code, Some(0), "{out}");
    let scenarios = challenge_scenarios(&report);
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    // Only the challenge scenarios run with --solution.
    assert_eq!(
        names,
        [
            "contention",
            "holder-paused-past-lease",
            "holder-killed-while-holding"
        ]
    );
    assert_eq!(obs(&report, "contention", "final_counter"), 40.0);
    // Three holders were frozen and thawed by the faults.
    let paused = scenario(&report, "holder-paused-past-lease");
    let mut faults: Vec<&str> = paused["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "fault")
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    faults.sort();
    assert_eq!(
        faults,
        [
            "pause solution-1",
            "pause solution-2",
            "pause solution-3",
            "unpause solution-1",
            "unpause solution-2",
            "unpause solution-3"
        ]
    );
    let killed = scenario(&report, "holder-killed-while-holding");
    let ends: Vec<&str> = killed["solution"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ended"].as_str().unwrap())
        .collect();
    // The instance that made the second read, whichever it was, is killed;
    // the others finish.
    let victim = ends.iter().position(|e| *e == "killed (fault)");
    let victim = victim.unwrap_or_else(|| panic!("nobody killed: {killed}")) + 1;
    assert_eq!(
        ends.iter().filter(|e| **e == "exit 0").count(),
        3,
        "{killed}"
    );
    let faults: Vec<&str> = killed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "fault")
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        faults,
        [format!("kill solution-{victim} (solution-at-mark)")]
    );
    // The program's own output is kept, per instance.
    let c = scenario(&report, "contention");
    assert_eq!(
        c["solution"]["instances"][0]["output"][0],
        "instance 1: 10 increments"
    );
    // The command and its environment are told once, on stderr.
    assert!(out.contains("REDIS_URL=redis://127.0.0.1:"), "{out}");
    assert!(out.contains("LEDGER_URL=http://127.0.0.1:"), "{out}");
    assert!(out.contains("INFRALAB_PARAM_INCREMENTS=10"), "{out}");
    assert_eq!(out.matches("LEDGER_URL=").count(), 1, "{out}");
    assert_nothing_left(&lab.name);
}

#[test]
fn the_starter_fails_with_evidence_from_the_ledger() {
    let lab = lab("starter");
    let junit = lab.dir.path().join("report.xml");
    let (code, report, out) = run_json(
        &lab,
        &[
            "--solution",
            "starter",
            "--scenario",
            "contention",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    let s = scenario(&report, "contention");
    assert_eq!(s["verdict"], "fail", "{s}");
    for o in ["lost_updates", "stale_writes", "max_concurrent_holders"] {
        assert_eq!(check_verdict(&report, "contention", o), "fail", "{o}");
    }
    assert!(obs(&report, "contention", "final_counter") < 40.0);
    let evidence = s["evidence"].as_array().expect("evidence");
    let stale = evidence
        .iter()
        .find(|e| e["observation"] == "stale_writes")
        .expect("stale write evidence");
    let what = stale["what"].as_str().unwrap();
    assert!(
        what.starts_with("instance ") && what.contains(" over instance "),
        "{what}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("evidence: stale_writes: instance "), "{xml}");
    assert_nothing_left(&lab.name);
}

#[test]
fn a_command_that_exits_at_once_is_an_error_never_a_pass() {
    let lab = lab("broken");
    let (code, report, out) = run_json(
        &lab,
        &[
            "--solution",
            "echo 'cannot import redis' >&2; exit 3",
            "--scenario",
            "contention",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    let s = scenario(&report, "contention");
    assert_eq!(s["verdict"], "unknown", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("exit 3"), "{error}");
    assert!(error.contains("cannot import redis"), "{error}");
    assert!(error.contains("echo 'cannot import redis'"), "{error}");
    assert_nothing_left(&lab.name);
}

#[test]
fn validate_solutions_proves_every_declared_verdict() {
    let lab = lab("validate");
    let rows = validate_solutions(
        &lab,
        &[
            "reference",
            "starter",
            "no-expiry",
            "plain-del",
            "no-fencing",
        ],
    );
    // Each broken solution failed its named expectation somewhere.
    let failed = |solution: &str, observation: &str| {
        rows.iter().find(|r| r["solution"] == solution).unwrap()["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| {
                c["failed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f[0] == observation)
            })
    };
    assert!(failed("no-expiry", "stalled"));
    assert!(failed("plain-del", "max_concurrent_holders"));
    assert!(failed("no-fencing", "stale_writes"));
    assert_nothing_left(&lab.name);
}

#[test]
fn solution_needs_a_challenge_lab() {
    let out = run(&["run", "queue-vs-pubsub", "--solution", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no challenge"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_shipped_solution_that_is_not_built_is_an_environment_error_before_anything_starts() {
    // The same infralab, copied where no examples were built beside it.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("infralab");
    std::fs::copy(env!("CARGO_BIN_EXE_infralab"), &exe).unwrap();
    let lab = lab("unbuilt");
    for args in [
        vec!["run", lab.path.to_str().unwrap(), "--solution", "reference"],
        vec!["validate", "--solutions", lab.path.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(&exe)
            .args(&args)
            .env("NO_COLOR", "1")
            .env("INFRALAB_LABS", labs_dir())
            .output()
            .unwrap();
        let text = text(&out);
        assert_eq!(out.status.code(), Some(3), "{text}");
        assert!(text.contains("not built yet"), "{text}");
        assert!(text.contains("--examples`"), "{text}");
        assert!(
            labelled(&format!("io.infralab.lab={}", lab.name))
                .0
                .is_empty()
        );
    }
}

const RATE_LAB: &str = "techniques/rate-limiting.yaml";

#[test]
fn rate_limiting_the_starter_fails_with_the_bunch_as_evidence() {
    let lab = temp_lab_with_files(RATE_LAB, "rl-starter", |t| t);
    let (code, report, out) = run_json(
        &lab,
        &["--solution", "starter", "--scenario", "trickle-then-burst"],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        check_verdict(&report, "trickle-then-burst", "excess_over_bucket"),
        "fail"
    );
    // No limiter: the whole burst reached the API.
    assert_eq!(
        obs(&report, "trickle-then-burst", "burst_allowed"),
        obs(&report, "trickle-then-burst", "burst_requests")
    );
    let s = scenario(&report, "trickle-then-burst");
    let evidence = s["evidence"].as_array().expect("evidence");
    let bunch = evidence
        .iter()
        .find(|e| e["observation"] == "excess_over_bucket")
        .expect("excess evidence");
    let what = bunch["what"].as_str().unwrap();
    assert!(
        what.contains("calls reached the API (instances ") && what.contains("a bucket of 5"),
        "{what}"
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn rate_limiting_validate_solutions_proves_every_declared_verdict() {
    let lab = temp_lab_with_files(RATE_LAB, "rl-validate", |t| t);
    validate_solutions(
        &lab,
        &["reference", "starter", "per-process", "fixed-window"],
    );
    assert_nothing_left(&lab.name);
}

const PIPELINE_LAB: &str = "messaging/event-driven-pipeline.yaml";

/// Two solutions at a time, each on a broker of its own: the same verdicts.
#[test]
fn event_pipeline_validate_solutions_proves_every_declared_verdict() {
    let lab = temp_lab_with_files(PIPELINE_LAB, "ep-validate", |t| t);
    let rows = validate_solutions_with(
        &lab,
        &[
            "reference",
            "starter",
            "commit-before-write",
            "dedup-in-memory",
        ],
        &["--jobs", "2"],
    );
    // The rows keep the order the lab declares, whichever finished first.
    let names: Vec<&str> = rows.iter().filter_map(|r| r["solution"].as_str()).collect();
    assert_eq!(names[0], "reference", "{names:?}");
    assert_nothing_left(&lab.name);
}
