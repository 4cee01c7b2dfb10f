//! Nothing leaks: after SIGINT, after a killed process (gc), after a service
//! that dies during start, and around `up`/`down`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// Waits until a container of the lab exists (the run is mid-way).
fn wait_for_containers(lab: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while labelled(&format!("io.infralab.lab={lab}")).0.is_empty() {
        assert!(Instant::now() < deadline, "no container of {lab} appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A locking lab whose scenario runs long enough to be interrupted.
fn slow_lab(suffix: &str) -> TempLab {
    temp_lab(
        "global-coordination/distributed-locking.yaml",
        suffix,
        |t| {
            t.replace(
                "params: { workers: 8, increments: 50 }",
                "params: { workers: 4, increments: 100000 }",
            )
        },
    )
}

#[test]
fn sigint_mid_scenario_tears_everything_down() {
    let lab = slow_lab("sigint");
    let child = infralab()
        .args(["run", lab.path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_containers(&lab.name);
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert_nothing_left(&lab.name);
}

#[test]
fn gc_removes_what_a_killed_process_left() {
    let lab = slow_lab("killed");
    let mut child = infralab()
        .args(["run", lab.path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_containers(&lab.name);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(
        !labelled(&format!("io.infralab.lab={}", lab.name))
            .0
            .is_empty(),
        "SIGKILL leaves containers"
    );
    let out = run(&["gc"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_nothing_left(&lab.name);
}

#[test]
fn a_service_that_exits_during_start_fails_fast_with_its_logs() {
    let lab = temp_lab(
        "global-coordination/distributed-locking.yaml",
        "crash",
        |t| {
            replaced(
                t,
                "locks: { kind: redis }",
                "locks: { kind: redis, command: [\"sh\", \"-c\", \"echo deliberately broken >&2; exit 3\"] }",
            )
        },
    );
    let started = Instant::now();
    let out = run(&["run", lab.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("exited during start"), "{all}");
    assert!(
        all.contains("deliberately broken"),
        "the container's log is in the error: {all}"
    );
    // Fail fast: far below the kind's 15 s readiness deadline.
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "took {:?}",
        started.elapsed()
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn up_keeps_services_and_down_removes_them() {
    let lab = temp_lab("global-coordination/distributed-locking.yaml", "up", |t| t);
    let out = run(&["up", lab.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let url = stdout
        .split_whitespace()
        .find(|w| w.starts_with("redis://127.0.0.1:"))
        .unwrap_or_else(|| panic!("a connection string in {stdout}"));
    // A real client talks to what `up` printed.
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_connection().expect("connect");
    let pong: String = redis::cmd("PING").query(&mut conn).expect("ping");
    assert_eq!(pong, "PONG");
    // gc must leave an `up` run alone even though its process has exited.
    assert_eq!(run(&["gc"]).status.code(), Some(0));
    assert!(
        !labelled(&format!("io.infralab.lab={}", lab.name))
            .0
            .is_empty()
    );
    let out = run(&["down", lab.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_nothing_left(&lab.name);
}

#[test]
fn sigint_during_up_exits_130_and_tears_down() {
    // A Redis that never answers PING keeps `up` waiting for readiness.
    let lab = temp_lab(
        "global-coordination/distributed-locking.yaml",
        "upint",
        |t| {
            replaced(
                t,
                "locks: { kind: redis }",
                "locks: { kind: redis, command: [\"sleep\", \"600\"], ready_timeout: 120s }",
            )
        },
    );
    let child = infralab()
        .args(["up", lab.path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_containers(&lab.name);
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("interrupted"), "{}", text(&out));
    assert_nothing_left(&lab.name);
}
