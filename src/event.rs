//! The interface between the runner and the output: the [`Event`]s sent
//! while a run goes on, the [`Reporter`] that receives them, and the
//! serialisable [`RunReport`] a run ends with. The engine, images, exercises
//! and runner speak only these types; the renderers (`report`: terminal,
//! JSON, JUnit) turn them into output, and nothing here depends on them.

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
    /// Wall time (of all runs, with `--repeat`).
    pub duration_ms: u64,
    /// With `--repeat N` (N > 1): how every run went. `observations`,
    /// `checks` and `timeline` above are then those of the last run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<Repeats>,
    /// For each failed expectation, the first offending operations from the
    /// harness's record (challenge scenarios).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub evidence: Vec<Evidence>,
    /// The learner's program, when the scenario checked one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solution: Option<SolutionReport>,
}

/// One offending operation behind a failed expectation, in words.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evidence {
    /// The observation it explains.
    pub observation: String,
    /// What happened, with instances, values, tokens and times.
    pub what: String,
}

/// How the learner's program ran in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SolutionReport {
    /// The shell command.
    pub command: String,
    /// One entry per instance.
    pub instances: Vec<InstanceReport>,
}

/// One instance of the learner's program.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    /// `solution-N`.
    pub instance: String,
    /// How it ended: `exit 0`, `exit 3`, `killed (fault)`, `stopped`, …
    pub ended: String,
    /// Times a fault restarted it.
    pub restarts: u32,
    /// Its output, stdout and stderr interleaved (`err| ` marks stderr),
    /// the last lines when it printed many.
    pub output: Vec<String>,
}

/// How the N runs of one scenario went (`run --repeat N`).
#[derive(Debug, Clone, Serialize)]
pub struct Repeats {
    /// How many times the scenario ran.
    pub runs: u32,
    /// How many runs passed as a whole.
    pub passed: u32,
    /// Each run's verdict, in order.
    pub verdicts: Vec<Verdict>,
    /// Each run's wall time.
    pub durations_ms: Vec<u64>,
    /// Each observation's value in every run (null where a run lacked it).
    pub observations: BTreeMap<String, Vec<Value>>,
    /// Per expectation: how often it passed, and whether it is flaky.
    pub expectations: Vec<ExpectationTally>,
}

/// One expectation over the runs of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ExpectationTally {
    /// Observation name.
    pub observation: String,
    /// The predicate as written.
    pub expect: String,
    /// Runs that decided it.
    pub runs: u32,
    /// Runs in which it passed.
    pub passed: u32,
    /// Runs in which it failed.
    pub failed: u32,
    /// Runs in which it could not be decided.
    pub unknown: u32,
    /// Its verdict changed from one run to another: the scenario fails.
    pub flaky: bool,
}

impl ExpectationTally {
    /// `19/20`: passed out of runs.
    pub fn summary(&self) -> String {
        format!("{}/{}", self.passed, self.runs)
    }
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
        lab: String,
        service: String,
        kind: String,
        image: String,
    },
    /// A service answered its protocol probe.
    ServiceReady {
        lab: String,
        service: String,
        url: String,
        ms: u64,
    },
    /// A service's instances are all ready and a step makes them one
    /// cluster (Redis Cluster).
    Bootstrapping {
        lab: String,
        service: String,
        what: String,
    },
    /// That step is done.
    Bootstrapped {
        lab: String,
        service: String,
        what: String,
        ms: u64,
    },
    /// One round of `--repeat N` begins: every selected scenario runs once more.
    RoundStarted {
        lab: String,
        round: u32,
        rounds: u32,
    },
    /// A scenario begins.
    ScenarioStarted { lab: String, scenario: String },
    /// A scenario ended.
    ScenarioFinished { lab: String, report: ScenarioReport },
    /// The learner's program starts (told once per lab): the command and
    /// the environment it gets.
    SolutionStarted {
        lab: String,
        scenario: String,
        command: String,
        instances: u32,
        env: Vec<(String, String)>,
    },
    /// A line the learner's program printed (shown with `-v`).
    SolutionOutput {
        lab: String,
        instance: String,
        line: String,
    },
    /// A lab ended (its report is complete).
    LabFinished { report: LabReport },
    /// Teardown finished.
    TornDown { lab: String, removed: usize },
}

/// The lab name an event carries, borrowed (`lab_of!(e)`) or mutably
/// (`lab_of!(e, mut)`): one list of variants for both.
macro_rules! lab_of {
    ($event:expr $(, $m:ident)?) => {
        match $event {
            Event::LabStarted { lab, .. }
            | Event::ServiceStarting { lab, .. }
            | Event::ServiceReady { lab, .. }
            | Event::Bootstrapping { lab, .. }
            | Event::Bootstrapped { lab, .. }
            | Event::RoundStarted { lab, .. }
            | Event::ScenarioStarted { lab, .. }
            | Event::ScenarioFinished { lab, .. }
            | Event::SolutionStarted { lab, .. }
            | Event::SolutionOutput { lab, .. }
            | Event::TornDown { lab, .. } => Some(lab),
            Event::LabFinished { report } => Some(&$($m)? report.name),
            Event::ImageBuild { .. } | Event::ImageBuilt { .. } => None,
        }
    };
}

impl Event {
    /// The name of the lab the event is about (none for image builds).
    pub fn lab(&self) -> Option<&str> {
        lab_of!(self).map(String::as_str)
    }

    /// The same, to rename it.
    fn lab_mut(&mut self) -> Option<&mut String> {
        lab_of!(self, mut)
    }
}

/// Passes every event on with the lab's name tagged (`lab[tag]`): runs of
/// the same lab side by side (`validate --solutions --jobs`) stay apart in
/// the progress.
pub struct Tagged {
    pub inner: std::sync::Arc<dyn Reporter>,
    pub tag: String,
}

impl Reporter for Tagged {
    fn event(&self, event: &Event) {
        let mut event = event.clone();
        if let Some(lab) = event.lab_mut() {
            lab.push_str(&format!("[{}]", self.tag));
        }
        self.inner.event(&event);
    }
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
