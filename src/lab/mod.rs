//! The lab model: [`Lab`], a validated plan made from a YAML lab file.
//!
//! `raw` mirrors the file, `validate` checks it against the catalog and the
//! exercise and resolves parameters, `diag` renders problems with their
//! location. Nothing here touches Docker: a lab that fails validation never
//! starts anything.

pub mod challenge;
pub mod diag;
pub mod duration;
pub mod raw;
pub mod size;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::check::Predicate;
use crate::exercise::Exercise;
pub use challenge::{Challenge, Instances, Role, SolutionDecl, SolutionExpect};
pub use diag::{LabError, LabErrors};

/// A validated lab, ready to run.
pub struct Lab {
    /// The file it came from.
    pub file: PathBuf,
    /// Unique name (`distributed-locking`).
    pub name: String,
    /// Human title.
    pub title: String,
    /// Cheat-sheet section (`global-coordination`).
    pub section: String,
    /// One line.
    pub summary: String,
    /// The question the lab answers.
    pub question: Option<String>,
    /// The short answer, shown by `infralab show`.
    pub answer: Option<String>,
    /// Longer explanation.
    pub briefing: Option<String>,
    /// Services to start, in file order.
    pub services: Vec<ServicePlan>,
    /// The exercise every scenario runs.
    pub exercise: &'static dyn Exercise,
    /// Scenarios, in file order.
    pub scenarios: Vec<Scenario>,
    /// The learner's own program, when the lab is a challenge.
    pub challenge: Option<Challenge>,
}

/// One service to start (a `replicas: N` service becomes N containers).
#[derive(Debug, Clone)]
pub struct ServicePlan {
    /// Name in the lab; also its network alias.
    pub name: String,
    /// Kind, from the catalog.
    pub kind: String,
    /// Image override (otherwise the catalog resolves one).
    pub image: Option<String>,
    /// Environment on top of the kind's.
    pub env: BTreeMap<String, String>,
    /// Command override.
    pub command: Option<Vec<String>>,
    /// Number of containers.
    pub replicas: u32,
    /// Readiness deadline.
    pub ready_timeout: Duration,
    /// Lab files mounted read-only: container path → host file (next to the lab).
    pub files: BTreeMap<String, PathBuf>,
    /// CPU and memory limits of each container.
    pub limits: Limits,
}

/// Resource limits of a service's containers (`cpus:`, `memory:`), set by the
/// engine as the container's cgroup limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CPUs of quota per scheduling period (`0.5`: half of one CPU).
    pub cpus: Option<f64>,
    /// Memory in bytes, swap included (none beyond it).
    pub memory: Option<u64>,
}

impl ServicePlan {
    /// Its containers' instance names: the service name, or `NAME-1` …
    /// `NAME-N` for replicas (also their network aliases).
    pub fn instances(&self) -> Vec<String> {
        if self.replicas > 1 {
            (1..=self.replicas)
                .map(|i| format!("{}-{i}", self.name))
                .collect()
        } else {
            vec![self.name.clone()]
        }
    }
}

/// One scenario: parameters, faults and expectations.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it shows.
    pub description: Option<String>,
    /// Effective parameters: exercise defaults < lab params < scenario params.
    pub params: BTreeMap<String, Value>,
    /// Expectations by observation name.
    pub expect: BTreeMap<String, Predicate>,
    /// Fault steps.
    pub faults: Vec<Fault>,
    /// It checks the learner's program (`challenge: true`): it runs only
    /// with `--solution`, and only it runs then.
    pub challenge: bool,
}

/// A fault injected into a running scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// When it fires.
    pub when: When,
    /// What happens.
    pub action: FaultAction,
    /// Which service (all its replicas, or one replica as `NAME-2`), or the
    /// learner's program (`solution`, one instance as `solution-2`).
    pub service: String,
    /// `partition`: groups of services (or instances) that keep reaching
    /// each other and nobody else; empty for every other action.
    pub groups: Vec<Vec<String>>,
    /// `for: DURATION`: how long after the action returned its inverse
    /// fires. Timed from the return, so a slow `docker pause` cannot shorten
    /// the window nor leave a service frozen for the rest of the lab.
    pub lasts: Option<Duration>,
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// At a time offset from the scenario's start.
    At(Duration),
    /// When the exercise records this milestone.
    After(String),
}

/// What a fault does to a service's container(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// SIGKILL the container.
    Kill,
    /// Stop it gracefully.
    Stop,
    /// Start it again (and wait until it is ready).
    Start,
    /// Restart it (and wait until it is ready).
    Restart,
    /// Freeze its processes.
    Pause,
    /// Thaw them.
    Unpause,
    /// Cut it off the lab network.
    Disconnect,
    /// Reconnect it, with its aliases.
    Connect,
    /// Split the lab network into groups that reach only each other.
    Partition,
    /// Undo a partition: every service on the lab network again.
    Heal,
}

impl FaultAction {
    /// All actions with their names, for parsing and messages.
    pub const ALL: &[(&str, FaultAction)] = &[
        ("kill", FaultAction::Kill),
        ("stop", FaultAction::Stop),
        ("start", FaultAction::Start),
        ("restart", FaultAction::Restart),
        ("pause", FaultAction::Pause),
        ("unpause", FaultAction::Unpause),
        ("disconnect", FaultAction::Disconnect),
        ("connect", FaultAction::Connect),
        ("partition", FaultAction::Partition),
        ("heal", FaultAction::Heal),
    ];

    /// The action that undoes this one, for `for: DURATION`: pause →
    /// unpause, disconnect → connect, partition → heal, stop and kill → start. None for the
    /// actions that are themselves a heal, and for restart (nothing to undo).
    pub fn inverse(self) -> Option<FaultAction> {
        match self {
            FaultAction::Pause => Some(FaultAction::Unpause),
            FaultAction::Disconnect => Some(FaultAction::Connect),
            FaultAction::Partition => Some(FaultAction::Heal),
            FaultAction::Stop | FaultAction::Kill => Some(FaultAction::Start),
            FaultAction::Start
            | FaultAction::Restart
            | FaultAction::Unpause
            | FaultAction::Connect
            | FaultAction::Heal => None,
        }
    }

    /// Whether the action can be done to the learner's processes (signals
    /// to the process group): everything but the network actions.
    pub fn reaches_processes(self) -> bool {
        !matches!(
            self,
            FaultAction::Disconnect
                | FaultAction::Connect
                | FaultAction::Partition
                | FaultAction::Heal
        )
    }

    /// Whether the action concerns the whole lab network rather than one
    /// service (`partition`, `heal`): it names no `service:`.
    pub fn network_wide(self) -> bool {
        matches!(self, FaultAction::Partition | FaultAction::Heal)
    }

    /// The action's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

impl Lab {
    /// Loads and validates one lab file.
    pub fn load(path: &Path) -> Result<Lab, LabErrors> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            LabErrors(vec![LabError::file(
                path,
                format!("cannot read the lab file: {e}"),
            )])
        })?;
        validate::validate(path, &source)
    }
}

/// Every `*.yaml` lab file under `dir`, sorted by path.
pub fn discover(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// Finds a lab by file path, file stem or `name:` under `dir`.
pub fn find(dir: &Path, wanted: &str) -> Option<PathBuf> {
    let as_path = Path::new(wanted);
    if as_path.is_file() {
        return Some(as_path.to_path_buf());
    }
    let files = discover(dir);
    if let Some(p) = files
        .iter()
        .find(|p| p.file_stem().and_then(|s| s.to_str()) == Some(wanted))
    {
        return Some(p.clone());
    }
    files.into_iter().find(|p| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().any(|l| l.trim() == format!("name: {wanted}")))
            .unwrap_or(false)
    })
}
