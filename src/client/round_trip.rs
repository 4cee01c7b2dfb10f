//! The shape of a kind's smoke round trip ([`RoundTrip`]): one write read back
//! with the kind's ordinary client library. Each protocol module declares its
//! own, a kind names it from [`ServiceKind::round_trip`], and the `smoke`
//! exercise runs one per kind the lab has, all clocks started together at a
//! [`Gate`].
//!
//! [`ServiceKind::round_trip`]: crate::catalog::ServiceKind::round_trip

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use crate::catalog::Endpoint;
use crate::exercise::{ObsSpec, Observations, ParamSpec};

/// How long a client that is set up waits for the others before it starts anyway.
pub const GATE_WAIT: Duration = Duration::from_secs(10);

/// A kind's round trip, as the `smoke` exercise declares and runs it.
/// Observations and parameters are named `PREFIX_…`, so kinds with different
/// prefixes never collide; kinds that share a prefix (nginx and the agent:
/// `http`) share the very same `RoundTrip`.
pub struct RoundTrip {
    /// Prefix of the observations: `PREFIX_ok`, `PREFIX_ms`, `PREFIX_error`.
    pub prefix: &'static str,
    /// What `PREFIX_ok: true` shows.
    pub ok: &'static str,
    /// What `PREFIX_ms` times.
    pub ms: &'static str,
    /// What `PREFIX_error` holds.
    pub error: &'static str,
    /// Observations beyond those three (named `PREFIX_…`), set on success.
    pub extra: &'static [ObsSpec],
    /// Parameters it reads (named `PREFIX_…`), with their defaults.
    pub params: fn() -> Vec<ParamSpec>,
    /// Connects and sets up, waits at the gate, then writes and reads back.
    /// `Err` holds the cause in the server's or the client's own words.
    pub start: fn(TripInput) -> BoxFuture<'static, Result<Trip, String>>,
}

/// What a round trip gets to work with.
pub struct TripInput {
    /// The service it talks to (the first of its kind in the lab).
    pub endpoint: Endpoint,
    /// The scenario's namespace, for keys, queues and topics.
    pub namespace: String,
    /// The exercise's effective parameters.
    pub params: BTreeMap<String, Value>,
    /// Its place at the start gate.
    pub gate: Ticket,
}

impl TripInput {
    /// A text parameter.
    pub fn text(&self, name: &str) -> &str {
        self.params
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The value the round trip writes and expects back.
    pub fn token(&self) -> String {
        format!(
            "{} round trip {} {}",
            self.endpoint.kind,
            self.namespace,
            std::process::id()
        )
    }
}

/// What a successful round trip reports.
#[derive(Debug)]
pub struct Trip {
    /// Write to read-back.
    pub elapsed: Duration,
    /// Values of the round trip's [`RoundTrip::extra`] observations.
    pub extra: Observations,
}

impl Trip {
    /// A round trip that took `elapsed`, if what it read is what it wrote.
    pub fn read_back(elapsed: Duration, wrote: &str, read: &str) -> Result<Trip, String> {
        if read == wrote {
            Ok(Trip {
                elapsed,
                extra: Observations::new(),
            })
        } else {
            Err(format!("wrote {wrote:?} but read back {read:?}"))
        }
    }
}

/// Lets every client connect and set up (table, queue, topic, subscription)
/// before any round-trip clock starts, so the times measure the round trips
/// and not each other's setup work. A client that fails or gives up before
/// reaching the gate still counts as arrived (its ticket is dropped).
pub struct Gate {
    arrived: Arc<watch::Sender<usize>>,
    expected: usize,
}

/// One client's place at the [`Gate`].
pub struct Ticket {
    arrived: Arc<watch::Sender<usize>>,
    expected: usize,
    used: bool,
}

impl Gate {
    /// A gate for `expected` clients.
    pub fn new(expected: usize) -> Self {
        Gate {
            arrived: Arc::new(watch::channel(0).0),
            expected,
        }
    }

    /// One client's place.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            arrived: self.arrived.clone(),
            expected: self.expected,
            used: false,
        }
    }
}

impl Ticket {
    /// Arrives and waits (at most [`GATE_WAIT`]) for every other client.
    pub async fn wait(&mut self) {
        if !self.used {
            self.used = true;
            self.arrived.send_modify(|n| *n += 1);
        }
        let mut rx = self.arrived.subscribe();
        let expected = self.expected;
        let _ = tokio::time::timeout(GATE_WAIT, rx.wait_for(|n| *n >= expected)).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.used {
            self.arrived.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn the_gate_opens_when_every_client_arrived_or_gave_up() {
        let gate = Gate::new(3);
        let (mut a, mut b, gone) = (gate.ticket(), gate.ticket(), gate.ticket());
        // A client that failed during setup drops its ticket: it counts as arrived.
        drop(gone);
        let started = Instant::now();
        tokio::join!(a.wait(), b.wait());
        assert!(started.elapsed() < GATE_WAIT / 2);
    }

    #[test]
    fn a_read_back_is_a_trip_only_when_it_matches() {
        let trip = Trip::read_back(Duration::from_millis(3), "a", "a").unwrap();
        assert_eq!(trip.elapsed, Duration::from_millis(3));
        assert!(trip.extra.is_empty());
        let why = Trip::read_back(Duration::ZERO, "a", "b").unwrap_err();
        assert_eq!(why, "wrote \"a\" but read back \"b\"");
    }
}
