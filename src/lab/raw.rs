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
    pub service: Spanned<String>,
    /// `for: DURATION`: the inverse action fires this long after the action
    /// returned (pause → unpause, disconnect → connect, stop/kill → start).
    #[serde(default, rename = "for")]
    pub lasts: Option<Spanned<String>>,
}
