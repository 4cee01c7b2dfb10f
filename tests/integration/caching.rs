//! The caching labs, end to end on the real Docker engine: the catalog lab,
//! a copy with other parameters, and broken implementations that must FAIL
//! a named expectation.

use crate::common::*;
use serde_json::json;

#[test]
fn cache_patterns_passes_and_leaves_nothing() {
    let lab = temp_lab("caching/cache-patterns.yaml", "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    all_pass(&report);
    // Skew makes cache-aside hit; uniform access does not.
    assert!(
        obs(&report, "cache-aside-uniform", "hit_ratio")
            < obs(&report, "cache-aside-skewed", "hit_ratio")
    );
    // The same cold start for every strategy: write-through keeps hot
    // entries (no delete), so it hits more often than cache-aside.
    assert!(
        obs(&report, "write-through", "hit_ratio")
            > obs(&report, "cache-aside-skewed", "hit_ratio")
    );
    // Set after the commit: never ahead; set before it: ahead.
    assert_eq!(obs(&report, "write-through", "ahead_reads"), 0.0);
    assert!(obs(&report, "write-through-set-before-commit", "ahead_reads") > 0.0);
    // Write-behind folds writes; the killed cache loses acknowledged ones.
    assert!(
        obs(&report, "write-behind", "db_writes") < obs(&report, "write-behind", "writes_acked")
    );
    assert!(obs(&report, "write-behind-cache-dies", "lost_writes") > 0.0);
    let died = scenario(&report, "write-behind-cache-dies");
    let at = |what: &str| {
        died["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["what"] == what)
            .unwrap_or_else(|| panic!("no {what} in {died}"))["at_ms"]
            .as_u64()
            .unwrap()
    };
    assert!(at("half-written") <= at("kill redis"), "{died}");
    assert!(at("kill redis") <= at("restart redis"), "{died}");
    assert!(at("restart redis") <= at("flushed"), "{died}");
    assert_nothing_left(&lab.name);
}

#[test]
fn cache_patterns_passes_with_changed_parameters() {
    let lab = temp_lab(
        "caching/cache-patterns.yaml",
        "params",
        changed_params(&[("products", json!(3000)), ("reads", json!(700))]),
    );
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    all_pass(&report);
    assert_eq!(
        obs(&report, "cache-aside-skewed", "reads_done"),
        4.0 * 700.0
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn cache_patterns_broken_implementations_fail() {
    let lab = temp_lab("caching/cache-patterns.yaml", "broken", |t| {
        t
            // Write-through that sets the cache inside the open transaction.
            .replace(
                "params: { strategy: write-through, fail_every: 10 }",
                "params: { strategy: write-through, fail_every: 10, cache_set: before-commit }",
            )
            // One writer: no other writer's set to race with.
            .replace(
                "params: { strategy: write-through, writers: 3, hot_keys: 5, set_delay_ms: 20 }",
                "params: { strategy: write-through, writers: 1, hot_keys: 5, set_delay_ms: 20 }",
            )
            // A Redis that writes every command to its AOF and fsyncs it
            // before answering: the killed cache comes back with everything.
            .replace(
                "command: [redis-server, --protected-mode, \"no\", --save, \"\", --appendonly, \"no\"]",
                "command: [redis-server, --protected-mode, \"no\", --save, \"\", --appendonly, \"yes\", --appendfsync, always, --dir, /tmp]",
            )
    });
    let (code, report, out) = run_json(
        &lab,
        &[
            "--scenario",
            "write-through",
            "--scenario",
            "write-through-two-writers",
            "--scenario",
            "write-behind-cache-dies",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    for (name, observation) in [
        ("write-through", "ahead_reads"),
        ("write-through-two-writers", "cache_regressions"),
        ("write-behind-cache-dies", "lost_writes"),
    ] {
        assert_eq!(scenario(&report, name)["verdict"], "fail", "{out}");
        assert_eq!(
            check(&report, name, observation)["verdict"],
            "fail",
            "{out}"
        );
    }
    assert_nothing_left(&lab.name);
}

#[test]
fn eviction_lab_passes_and_leaves_nothing() {
    let lab = temp_lab("caching/eviction-lru-ttl.yaml", "pass", |t| t);
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    all_pass(&report);
    // LRU keeps the hot set, random eviction does not, noeviction refuses writes.
    assert!(obs(&report, "allkeys-lru", "hot_survival") >= 0.95);
    assert!(
        obs(&report, "allkeys-random", "hot_survival")
            < obs(&report, "allkeys-lru", "hot_survival")
    );
    assert!(obs(&report, "noeviction", "write_errors") > 0.0);
    // The halfway check was about halfway by Redis's own clock.
    let left = obs(&report, "ttl", "halfway_remaining_ms");
    assert!(left > 0.0 && left <= 2000.0 / 2.0 + 50.0, "{left}");
    assert_nothing_left(&lab.name);
}

#[test]
fn eviction_lab_passes_with_changed_parameters() {
    let lab = temp_lab(
        "caching/eviction-lru-ttl.yaml",
        "params",
        changed_params(&[("cold_keys", json!(6500)), ("value_bytes", json!(800))]),
    );
    let (code, report, out) = run_json(&lab, &[]);
    assert_eq!(code, Some(0), "{out}");
    all_pass(&report);
    assert_eq!(obs(&report, "allkeys-lru", "writes"), 100.0 + 6500.0);
    assert_nothing_left(&lab.name);
}

#[test]
fn eviction_broken_variants_fail() {
    let lab = temp_lab("caching/eviction-lru-ttl.yaml", "broken", |t| {
        t
            // The cold keys written as fast as possible: memory fills within
            // a second, hot and cold keys tie on Redis's LRU clock.
            .replace(
                "params: { service: redis-lru }",
                "params: { service: redis-lru, cold_per_s: 0 }",
            )
            // Claim keys with a TTL are still there after it.
            .replace(
                "expired_observed: \"== ttl_keys\"",
                "expired_observed: \"== 0\"",
            )
    });
    let (code, report, out) = run_json(&lab, &["--scenario", "allkeys-lru", "--scenario", "ttl"]);
    assert_eq!(code, Some(1), "{out}");
    for (name, observation) in [("allkeys-lru", "hot_survival"), ("ttl", "expired_observed")] {
        assert_eq!(scenario(&report, name)["verdict"], "fail", "{out}");
        assert_eq!(
            check(&report, name, observation)["verdict"],
            "fail",
            "{out}"
        );
    }
    assert_nothing_left(&lab.name);
}
