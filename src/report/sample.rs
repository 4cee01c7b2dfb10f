//! A hand-made report shared by the tests of the three output formats.

use std::collections::BTreeMap;

use serde_json::json;

use crate::check::{CheckResult, Verdict};
use crate::event::{LabReport, RunReport, ScenarioReport, ServiceReport, TimelineEvent};

pub const SETUP_ERROR: &str = "redis did not become ready within 30 s";

fn check(obs: &str, expect: &str, observed: Option<serde_json::Value>, v: Verdict) -> CheckResult {
    CheckResult {
        observation: obs.into(),
        expect: expect.into(),
        resolved: None,
        note: observed.is_none().then(|| "not observed".to_string()),
        observed,
        verdict: v,
    }
}

pub fn report() -> RunReport {
    let setnx = ScenarioReport {
        name: "setnx".into(),
        params: BTreeMap::from([("clients".into(), json!(8))]),
        observations: BTreeMap::from([
            ("acquired".into(), json!(812)),
            ("lost_updates".into(), json!(0)),
            ("p99_ms".into(), json!(3.4567)),
        ]),
        checks: vec![
            check("lost_updates", "== 0", Some(json!(0)), Verdict::Pass),
            check("acquired", "> 0", Some(json!(812)), Verdict::Pass),
        ],
        verdict: Verdict::Pass,
        error: None,
        timeline: vec![TimelineEvent {
            at_ms: 3,
            source: "exercise".into(),
            what: "8 clients started".into(),
        }],
        duration_ms: 1234,
        repeats: None,
        evidence: Vec::new(),
        solution: None,
    };
    let no_lock = ScenarioReport {
        name: "no-lock".into(),
        params: BTreeMap::new(),
        observations: BTreeMap::from([
            ("acquired".into(), json!(500)),
            ("lost_updates".into(), json!(0)),
        ]),
        checks: vec![check("lost_updates", "> 0", Some(json!(0)), Verdict::Fail)],
        verdict: Verdict::Fail,
        error: None,
        timeline: vec![],
        duration_ms: 870,
        repeats: None,
        evidence: Vec::new(),
        solution: None,
    };
    let partition = ScenarioReport {
        name: "partition".into(),
        params: BTreeMap::new(),
        observations: BTreeMap::new(),
        checks: vec![check("safety_violations", "== 0", None, Verdict::Unknown)],
        verdict: Verdict::Unknown,
        error: Some("redis: connection refused".into()),
        timeline: vec![],
        duration_ms: 2100,
        repeats: None,
        evidence: Vec::new(),
        solution: None,
    };
    let locking = LabReport {
        name: "distributed-locking".into(),
        run_id: "r-test".into(),
        title: "Distributed locking with Redis".into(),
        file: "labs/distributed-locking.yaml".into(),
        services: vec![ServiceReport {
            name: "redis".into(),
            kind: "redis".into(),
            image: "redis:7.4.2".into(),
            url: "redis://127.0.0.1:49153".into(),
            ready_ms: 312,
        }],
        scenarios: vec![setnx, no_lock, partition],
        verdict: Verdict::Fail,
        error: None,
        duration_ms: 4204,
    };
    let broken = LabReport {
        name: "queue-backpressure".into(),
        run_id: "r-test".into(),
        title: "Backpressure".into(),
        file: "labs/queue-backpressure.yaml".into(),
        services: vec![],
        scenarios: vec![],
        verdict: Verdict::Unknown,
        error: Some(SETUP_ERROR.into()),
        duration_ms: 30_010,
    };
    RunReport {
        run_id: "r-test".into(),
        duration_ms: 34_300,
        labs: vec![locking, broken],
        verdict: Verdict::Fail,
    }
}
