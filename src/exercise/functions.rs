//! [`Functions`]: instances of a lab service started and stopped while a
//! scenario runs, for an exercise that plays a serverless platform. The
//! exercise decides when; the runner implements the trait with the engine,
//! starting each instance like the service's own containers (labelled with
//! the run, on its networks, ports on loopback), so teardown removes any
//! the exercise left.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::ExerciseError;
use crate::catalog::Endpoint;

/// Starts and stops instances of the lab's services on demand.
#[async_trait]
pub trait Functions: Send + Sync {
    /// Starts one more instance of the lab's service `service`; returns once
    /// the engine has started its container, not once it answers: the
    /// caller probes it, and so sees what a cold start is made of.
    async fn start(&self, service: &str) -> Result<Endpoint, ExerciseError>;

    /// Stops and removes an instance started by [`Functions::start`];
    /// returns its lifetime as the engine recorded it.
    async fn stop(&self, instance: &Endpoint) -> Result<Lifetime, ExerciseError>;
}

/// When an instance's process started and when it finished, by the engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifetime {
    /// The process started.
    pub started: SystemTime,
    /// The process exited.
    pub finished: SystemTime,
}

impl Lifetime {
    /// How long it ran.
    pub fn span(&self) -> Duration {
        self.finished
            .duration_since(self.started)
            .unwrap_or_default()
    }
}

/// The most lifetimes that overlap at one moment: how many instances ran at
/// once at the busiest time.
pub fn peak(lifetimes: &[Lifetime]) -> usize {
    // A start and a finish at the same moment: the finish first, so an
    // instance replacing another does not count as both.
    let mut edges: Vec<(SystemTime, i32)> = lifetimes
        .iter()
        .flat_map(|l| [(l.started, 1), (l.finished, -1)])
        .collect();
    edges.sort();
    let mut running = 0i32;
    let mut most = 0i32;
    for (_, step) in edges {
        running += step;
        most = most.max(running);
    }
    most as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn life(from: u64, to: u64) -> Lifetime {
        Lifetime {
            started: at(from),
            finished: at(to),
        }
    }

    #[test]
    fn peak_counts_overlapping_lifetimes() {
        assert_eq!(peak(&[]), 0);
        assert_eq!(peak(&[life(0, 10)]), 1);
        assert_eq!(peak(&[life(0, 10), life(5, 15), life(12, 20)]), 2);
        assert_eq!(peak(&[life(0, 10), life(1, 9), life(2, 8)]), 3);
        // One ends as the next starts: never two at once.
        assert_eq!(peak(&[life(0, 10), life(10, 20)]), 1);
    }

    #[test]
    fn a_lifetime_spans_start_to_finish() {
        assert_eq!(life(100, 350).span(), Duration::from_millis(250));
        assert_eq!(life(350, 100).span(), Duration::ZERO);
    }
}
