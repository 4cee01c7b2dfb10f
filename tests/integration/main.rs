//! The integration tests, one binary: every file is a module, so the whole
//! suite shares one test-thread pool (a slow lab in one file no longer leaves
//! a thread idle while the next file waits) and the release profile links one
//! test executable instead of one per file. Each test runs the real
//! `infralab` binary against the real Docker engine.
//!
//! Run one area with a filter: `cargo test --release --test integration consensus::`.

mod common;

mod caching;
mod challenge_ack;
mod challenges;
mod consensus;
mod engines;
mod environment;
mod faults;
mod html_report;
mod locking;
mod messaging_kafka;
mod messaging_queues;
mod parallel;
mod patterns;
mod playground;
mod protocols_http;
mod protocols_mqtt;
mod protocols_ws;
mod repeat;
mod replication;
mod scaling_capacity;
mod scaling_databases;
mod sharding;
mod stores;
mod teardown;
mod techniques;
mod validation;
