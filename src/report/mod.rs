//! The renderers: [`terminal`] (live progress and the final tables),
//! [`json`] and [`junit`], each turning the [`RunReport`] and [`Event`]s of
//! [`crate::event`] into output. Only this module writes to the terminal or
//! report files. The renderers do not import each other: wording they share
//! (values, durations, a failed check in words) lives in [`words`].

pub mod html;
pub mod json;
pub mod junit;
pub mod matrix;
#[cfg(test)]
pub(crate) mod sample;
pub mod terminal;
pub mod words;

/// The report types, re-exported for renderers' callers; the engine, images,
/// exercises and runner import them from [`crate::event`].
pub use crate::event::{
    Event, ExpectationTally, LabReport, Repeats, Reporter, RunReport, ScenarioReport,
    ServiceReport, Silent, TimelineEvent,
};
