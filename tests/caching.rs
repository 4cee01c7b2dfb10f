//! The caching labs, end to end on the real Docker engine.

mod common;

use common::*;
use serde_json::Value;

fn obs(report: &Value, name: &str, what: &str) -> f64 {
    scenario(report, name)["observations"][what]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: no numeric {what}"))
}

#[test]
fn cache_patterns_passes_and_leaves_nothing() {
    let lab = temp_lab("caching/cache-patterns.yaml", "pass", |t| t);
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    // Skew makes cache-aside hit; uniform access does not.
    assert!(obs(&report, "cache-aside-skewed", "hit_ratio") > 0.8);
    assert!(
        obs(&report, "cache-aside-uniform", "hit_ratio")
            < obs(&report, "cache-aside-skewed", "hit_ratio")
    );
    // A slow filler puts old versions back into the cache.
    assert!(obs(&report, "cache-aside-slow-filler", "stale_reads") > 0.0);
    // Write-through: never stale, one database write per write.
    assert_eq!(obs(&report, "write-through", "stale_reads"), 0.0);
    assert_eq!(
        obs(&report, "write-through", "db_writes"),
        obs(&report, "write-through", "writes")
    );
    // Write-behind: fewer database writes than writes, nothing lost while
    // the flusher lives, acknowledged writes lost when it dies.
    assert!(obs(&report, "write-behind", "db_writes") < obs(&report, "write-behind", "writes"));
    assert_eq!(obs(&report, "write-behind", "lost_on_crash"), 0.0);
    assert!(obs(&report, "write-behind-flusher-crashes", "lost_on_crash") > 0.0);
    let crashed = scenario(&report, "write-behind-flusher-crashes");
    assert!(
        crashed["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"] == "flusher-crashed"),
        "{crashed}"
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn cache_patterns_broken_expectation_fails() {
    // Claim write-behind loses nothing when its flusher dies.
    let lab = temp_lab("caching/cache-patterns.yaml", "broken", |t| {
        t.replace("lost_on_crash: \"> 0\"", "lost_on_crash: \"== 0\"")
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "write-behind-flusher-crashes",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_report(&out);
    let s = scenario(&report, "write-behind-flusher-crashes");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert!(
        s["observations"]["lost_on_crash"].as_i64().unwrap() > 0,
        "{s}"
    );
    assert_nothing_left(&lab.name);
}

#[test]
fn eviction_lab_passes_and_leaves_nothing() {
    let lab = temp_lab("caching/eviction-lru-ttl.yaml", "pass", |t| t);
    let out = run(&["run", lab.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json_report(&out);
    for s in report["labs"][0]["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    // LRU keeps the hot set, random eviction does not, noeviction refuses writes.
    assert!(obs(&report, "allkeys-lru", "hot_survival") >= 0.95);
    assert!(obs(&report, "allkeys-lru", "evicted_keys") > 0.0);
    assert!(
        obs(&report, "allkeys-random", "hot_survival")
            < obs(&report, "allkeys-lru", "hot_survival")
    );
    assert!(obs(&report, "noeviction", "write_errors") > 0.0);
    assert_eq!(obs(&report, "noeviction", "evicted_keys"), 0.0);
    assert_eq!(
        scenario(&report, "noeviction")["observations"]["policy"],
        "noeviction"
    );
    // TTL keys vanish, the others stay.
    assert_eq!(obs(&report, "ttl", "expired_observed"), 200.0);
    assert_eq!(obs(&report, "ttl", "persistent_kept"), 200.0);
    assert_nothing_left(&lab.name);
}

#[test]
fn eviction_lab_broken_expectation_fails() {
    // Claim noeviction still accepts every write.
    let lab = temp_lab("caching/eviction-lru-ttl.yaml", "broken", |t| {
        t.replace("write_errors: \"> 0\"", "write_errors: \"== 0\"")
    });
    let out = run(&[
        "run",
        lab.path.to_str().unwrap(),
        "--scenario",
        "noeviction",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json_report(&out);
    let s = scenario(&report, "noeviction");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert!(
        s["observations"]["write_errors"].as_i64().unwrap() > 0,
        "{s}"
    );
    assert_nothing_left(&lab.name);
}
