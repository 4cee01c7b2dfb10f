//! Clients, one module per protocol: connecting to a service kind, the
//! readiness probe, the kind's smoke round trip (shaped by [`round_trip`]),
//! and the helpers several exercises share. Exercises and probes use these;
//! no exercise imports another exercise.

pub mod amqp;
pub mod clickhouse;
pub mod etcd;
pub mod falkordb;
pub mod grpc;
pub mod http;
pub mod kafka;
pub mod mqtt;
pub mod postgres;
pub mod redis;
pub mod relay;
pub mod round_trip;
pub mod tls;

/// An error with its chain of sources, as one line (`error sending request:
/// connection refused`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}
