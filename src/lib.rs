//! infralab: system-design lessons as live labs on real infrastructure.
//!
//! Data flows one way: a lab file ([`lab`]) becomes a validated plan, the
//! [`engine`] starts its services ([`catalog`], [`images`]), the [`exercise`]
//! measures observations, [`check`] turns them into verdicts and [`report`]
//! renders them. [`runner`] wires the steps and reports progress as
//! [`event`]s, so nothing upstream of [`report`] imports it; [`repeat`] folds
//! `--repeat N` runs into counts and flaky verdicts; [`cli`] is the command line;
//! [`agent`] is the backend that runs inside `agent` containers.

pub mod agent;
pub mod catalog;
pub mod challenge;
pub mod check;
pub mod cli;
pub mod client;
pub mod engine;
pub mod event;
pub mod exercise;
pub mod exit;
pub mod images;
pub mod lab;
pub mod repeat;
pub mod report;
pub mod runner;
pub mod sections;
pub mod stats;
