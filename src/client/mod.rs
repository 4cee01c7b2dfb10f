//! Clients, one module per protocol: connecting to a service kind, the
//! readiness probe, and the helpers several exercises share. Exercises and
//! probes use these; no exercise imports another exercise.

pub mod amqp;
pub mod http;
pub mod kafka;
pub mod mqtt;
pub mod postgres;
pub mod redis;
pub mod relay;
pub mod tls;
