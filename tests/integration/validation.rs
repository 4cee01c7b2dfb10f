//! Malformed lab files: exit code 2, file:line:column and what was expected,
//! and nothing starts.

use crate::common::*;

const GOOD: &str = "\
name: bad-input-lab
title: T
section: global-coordination
summary: s
services:
  redis: { kind: redis }
exercise: redis-lock
params: { workers: 2, increments: 5 }
scenarios:
  - name: a
    params: { strategy: none }
    expect: { lost_updates: \">= 0\" }
";

/// (what is wrong, the edit, expected line:col, words the message must contain)
const MISTAKES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "unknown key",
        "summary: s",
        "summary: s\nsumary: typo",
        "5:1",
        "unknown field `sumary`",
    ),
    (
        "unknown kind",
        "kind: redis }",
        "kind: redis7 }",
        "6:18",
        "unknown service kind `redis7`",
    ),
    (
        "unknown exercise",
        "exercise: redis-lock",
        "exercise: redis-lok",
        "7:11",
        "unknown exercise `redis-lok`",
    ),
    (
        "unknown parameter",
        "workers: 2",
        "wrokers: 2",
        "8:20",
        "no parameter `wrokers`",
    ),
    (
        "parameter out of range",
        "workers: 2",
        "workers: 0",
        "8:20",
        "between 1 and",
    ),
    (
        "parameter of the wrong type",
        "strategy: none",
        "strategy: 3",
        "11:25",
        "expects one of none, setnx",
    ),
    (
        "unknown observation",
        "lost_updates:",
        "lost:",
        "12:21",
        "does not observe `lost`",
    ),
    (
        "bad predicate",
        "\">= 0\"",
        "\"about 0\"",
        "12:29",
        "not a predicate",
    ),
    (
        "YAML syntax",
        "  redis: { kind: redis }",
        "  redis: { kind: redis",
        "",
        "error",
    ),
    (
        "CPU limit out of range",
        "kind: redis }",
        "kind: redis, cpus: 0 }",
        "6:31",
        "cpus must be more than 0",
    ),
    (
        "memory limit that is no size",
        "kind: redis }",
        "kind: redis, memory: 64mb2 }",
        "6:33",
        "not a memory size",
    ),
    (
        "a replica of no redis service",
        "kind: redis }",
        "kind: redis, env: { REDIS_REPLICA_OF: nowhere } }",
        "6:10",
        "REDIS_REPLICA_OF names `nowhere`, which is no redis service of the lab",
    ),
    (
        "Redis Cluster nodes that split into no primaries",
        "kind: redis }",
        "kind: redis-cluster, replicas: 3 }",
        "6:43",
        "3 redis-cluster nodes do not split into primaries with 1 replica(s) each",
    ),
    (
        "memory limit below Docker's minimum",
        "kind: redis }",
        "kind: redis, memory: 4m }",
        "6:33",
        "below Docker's minimum",
    ),
    (
        "bad section",
        "section: global-coordination",
        "section: misc",
        "3:10",
        "unknown section `misc`",
    ),
];

#[test]
fn the_good_lab_is_valid() {
    let (_dir, path) = write_lab(GOOD);
    let out = run(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn every_mistake_exits_2_with_its_location() {
    for (what, from, to, at, words) in MISTAKES {
        assert!(GOOD.contains(from), "{what}: edit does not apply");
        let (_dir, path) = write_lab(&GOOD.replacen(from, to, 1));
        let out = run(&["validate", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out));
        let located = if at.is_empty() {
            format!("{}:", path.display())
        } else {
            format!("{}:{at}", path.display())
        };
        assert!(
            stderr.contains(&located),
            "{what}: expected {located} in\n{stderr}"
        );
        assert!(
            stderr.contains(words),
            "{what}: expected `{words}` in\n{stderr}"
        );
        assert!(
            stderr.contains('^'),
            "{what}: expected a caret snippet in\n{stderr}"
        );
    }
}

#[test]
fn run_refuses_a_bad_lab_before_starting_anything() {
    let (_dir, path) = write_lab(&GOOD.replace("kind: redis }", "kind: redis7 }"));
    let out = run(&["run", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_nothing_left("bad-input-lab");
}

#[test]
fn an_unknown_lab_name_is_bad_input() {
    let out = run(&["run", "no-such-lab"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("infralab list"));
}

#[test]
fn the_whole_catalog_validates() {
    let out = run(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn an_unknown_scenario_is_bad_input_and_starts_nothing() {
    let (_dir, path) = write_lab(GOOD);
    let started = std::time::Instant::now();
    let out = run(&["run", path.to_str().unwrap(), "--scenario", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no scenario named `b`") && stderr.contains("bad-input-lab: a"),
        "the error lists the lab's scenarios: {stderr}"
    );
    // Refused before Docker: no service was started or probed.
    assert!(!stderr.contains("starting"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_nothing_left("bad-input-lab");
}
