//! Environment problems exit with code 3, say what happened and name the fix,
//! and leave nothing behind.

use crate::common::*;

const LAB: &str = "global-coordination/distributed-locking.yaml";

#[test]
fn docker_unreachable_names_the_host_and_the_fix() {
    let out = infralab()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["run", "distributed-locking"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{stderr}"
    );
    assert!(stderr.contains("fix:"), "{stderr}");
}

#[test]
fn an_image_that_cannot_be_found_or_pulled_is_an_environment_error() {
    let lab = temp_lab(LAB, "noimage", |t| {
        replaced(
            t,
            "locks: { kind: redis }",
            "locks: { kind: redis, image: \"infralab-test/absent:1\" }",
        )
    });
    let out = run(&["run", lab.path.to_str().unwrap(), "--scenario", "setnx"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("infralab-test/absent:1"), "{all}");
    assert!(all.contains("fix:"), "{all}");
    assert_nothing_left(&lab.name);
}

#[test]
fn a_service_that_never_answers_its_probe_times_out_with_a_hint() {
    let lab = temp_lab(LAB, "timeout", |t| {
        replaced(
            t,
            "locks: { kind: redis }",
            "locks: { kind: redis, command: [\"sleep\", \"60\"], ready_timeout: 1s }",
        )
    });
    let out = run(&["run", lab.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("was not ready after 1.0 s"), "{all}");
    assert!(
        all.contains("ready_timeout"),
        "the fix names the setting: {all}"
    );
    assert_nothing_left(&lab.name);
}
