//! The lab file exactly as written: serde types that mirror the YAML, with the
//! source location of every value that validation may complain about.
//! `validate` turns this into a [`super::Lab`].

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

/// A whole lab file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLab {
    pub name: Spanned<String>,
    pub title: String,
    pub section: Spanned<String>,
    pub summary: String,
    #[serde(default)]
    pub question: Option<String>,
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub briefing: Option<String>,
    pub services: Spanned<IndexMap<String, Spanned<RawService>>>,
    pub exercise: Spanned<String>,
    #[serde(default)]
    pub params: IndexMap<String, Spanned<Value>>,
    pub scenarios: Spanned<Vec<Spanned<RawScenario>>>,
    /// The learner's own program, checked by the exercise as harness.
    #[serde(default)]
    pub challenge: Option<Spanned<RawChallenge>>,
}

/// The `challenge:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChallenge {
    pub task: String,
    pub role: Spanned<String>,
    /// A whole number or arithmetic over the scenario's parameters.
    pub instances: Spanned<Value>,
    pub checked: String,
    #[serde(default)]
    pub solutions: Vec<Spanned<RawSolution>>,
}

/// One shipped solution and the verdict it must get.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSolution {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub run: Spanned<String>,
    /// `pass`, or `{ fail: [observation, …] }`.
    pub expect: Spanned<Value>,
    /// A shell command that succeeds when the host has what the solution
    /// needs (`python3 -c 'import redis'`); when it fails, `validate
    /// --solutions` skips the solution instead of failing it.
    #[serde(default)]
    pub requires: Option<String>,
}

/// One entry under `services:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub kind: Spanned<String>,
    #[serde(default)]
    pub image: Option<Spanned<String>>,
    #[serde(default)]
    pub env: IndexMap<String, String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub replicas: Option<Spanned<u32>>,
    #[serde(default)]
    pub ready_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub files: IndexMap<String, Spanned<String>>,
    #[serde(default)]
    pub cpus: Option<Spanned<f64>>,
    #[serde(default)]
    pub memory: Option<Spanned<String>>,
}

/// One entry under `scenarios:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub params: IndexMap<String, Spanned<Value>>,
    #[serde(default)]
    pub expect: IndexMap<String, Spanned<Value>>,
    #[serde(default)]
    pub faults: Vec<Spanned<RawFault>>,
    /// `challenge: true`: the scenario checks the learner's program.
    #[serde(default)]
    pub challenge: Option<Spanned<bool>>,
}

/// One fault step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    #[serde(default)]
    pub at: Option<Spanned<String>>,
    #[serde(default)]
    pub after: Option<Spanned<String>>,
    pub action: Spanned<String>,
    /// The target; none for `partition` and `heal`.
    #[serde(default)]
    pub service: Option<Spanned<String>>,
    /// `partition` only: the groups of services that keep reaching each other.
    #[serde(default)]
    pub groups: Option<Spanned<Vec<Vec<String>>>>,
    /// `for: DURATION`: the inverse action fires this long after the action
    /// returned (pause → unpause, disconnect → connect, stop/kill → start).
    #[serde(default, rename = "for")]
    pub lasts: Option<Spanned<String>>,
}
