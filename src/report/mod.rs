//! [`RunReport`] and the [`Event`]s that build it: the interface between the
//! runner and the output. Only this module writes to the terminal or files;
//! the runner, engine and exercises send events.

pub mod html;
pub mod json;
pub mod junit;
pub mod terminal;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::check::{CheckResult, Verdict};

/// Everything one `infralab run` observed: serialised as the JSON report and
/// folded into JUnit XML.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunReport {
    /// Run id (also the `io.infralab.run` label value).
    pub run_id: String,
    /// Wall time of the whole run.
    pub duration_ms: u64,
    /// One entry per lab, in the order they ran.
    pub labs: Vec<LabReport>,
    /// Merged verdict of all labs.
    pub verdict: Verdict,
}

/// One lab's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    /// Lab name.
    pub name: String,
    /// Run id of this lab's resources (`io.infralab.run` label).
    pub run_id: String,
    /// Lab title.
    pub title: String,
    /// The lab file it came from.
    pub file: String,
    /// Services that were started.
    pub services: Vec<ServiceReport>,
    /// Scenarios, in file order.
    pub scenarios: Vec<ScenarioReport>,
    /// Merged verdict: Fail beats Unknown beats Pass.
    pub verdict: Verdict,
    /// Why the lab could not run (environment error), if it could not.
    pub error: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
}

/// One started service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    /// Service name in the lab.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Image it ran.
    pub image: String,
    /// Connection string on the host.
    pub url: String,
    /// From create to the first successful protocol probe.
    pub ready_ms: u64,
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// Effective parameters (defaults, lab, scenario merged).
    pub params: BTreeMap<String, Value>,
    /// Every observation the exercise returned.
    pub observations: BTreeMap<String, Value>,
    /// One result per expectation.
    pub checks: Vec<CheckResult>,
    /// Merged verdict of the checks (Unknown when the exercise failed).
    pub verdict: Verdict,
    /// Why the exercise could not finish, if it could not.
    pub error: Option<String>,
    /// Timed events: exercise milestones and faults, in order.
    pub timeline: Vec<TimelineEvent>,
    /// Wall time.
    pub duration_ms: u64,
}

/// One timed event of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    /// Milliseconds since the scenario started.
    pub at_ms: u64,
    /// `exercise` or `fault`.
    pub source: String,
    /// What happened.
    pub what: String,
}

/// Live progress, sent while a run goes on.
#[derive(Debug, Clone)]
pub enum Event {
    /// A lab begins.
    LabStarted {
        lab: String,
        title: String,
        scenarios: usize,
    },
    /// A local image is being built (long: seconds to minutes).
    ImageBuild {
        kind: String,
        image: String,
        step: String,
    },
    /// A local image is built.
    ImageBuilt {
        kind: String,
        image: String,
        ms: u64,
    },
    /// A service's container was created and is being probed.
    ServiceStarting {
        service: String,
        kind: String,
        image: String,
    },
    /// A service answered its protocol probe.
    ServiceReady {
        service: String,
        url: String,
        ms: u64,
    },
    /// A scenario begins.
    ScenarioStarted { lab: String, scenario: String },
    /// A scenario ended.
    ScenarioFinished { lab: String, report: ScenarioReport },
    /// A lab ended (its report is complete).
    LabFinished { report: LabReport },
    /// Teardown finished.
    TornDown { lab: String, removed: usize },
}

/// Receives live events. Implemented by the terminal progress display; the
/// final report is rendered once at the end.
pub trait Reporter: Send + Sync {
    /// Called for every event, in order.
    fn event(&self, event: &Event);
}

/// A reporter that ignores everything (JSON output, tests).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event) {}
}
