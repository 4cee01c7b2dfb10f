//! Small statistics and pacing helpers the exercises share: percentiles,
//! ratios and rounding that return `None` when there are no samples (an
//! observation with no samples is absent, never 0), a pacer that does not
//! burst to catch up after a stall, and joining worker tasks.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};

use crate::exercise::ExerciseError;

/// Percentile (0–100) of durations, in milliseconds to 0.01 ms; `None`
/// without samples.
pub fn percentile_ms(samples: &mut [Duration], pct: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort();
    let rank = ((pct / 100.0) * (samples.len() - 1) as f64).round() as usize;
    Some(round2(samples[rank].as_secs_f64() * 1000.0))
}

/// Percentile (0–100) of plain numbers; `None` without samples.
pub fn percentile(samples: &mut [f64], pct: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((pct / 100.0) * (samples.len() - 1) as f64).round() as usize;
    Some(samples[rank])
}

/// `part / whole` to four decimals; `None` when `whole` is 0.
pub fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole != 0.0).then(|| round4(part / whole))
}

/// Rounds to two decimals (milliseconds, rates).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Rounds to four decimals (fractions).
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Largest over smallest of counts, e.g. per-consumer shares; `None` when
/// there are none or the smallest is 0 (one side got nothing: see the counts).
pub fn spread(counts: &[u64]) -> Option<f64> {
    let (min, max) = (counts.iter().min()?, counts.iter().max()?);
    (*min > 0).then(|| round2(*max as f64 / *min as f64))
}

/// Ticks `per_second` times a second. After a stall (a paused service, a
/// busy machine) it resumes at the same rate instead of firing the missed
/// ticks at once, so a stall never turns into a burst.
pub fn pacer(per_second: f64) -> Interval {
    let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Waits for every worker; the first error (or panic) wins, after all ended.
pub async fn join_workers<T>(
    handles: Vec<JoinHandle<Result<T, ExerciseError>>>,
) -> Result<Vec<T>, ExerciseError> {
    let mut out = Vec::with_capacity(handles.len());
    let mut first_error = None;
    for h in handles {
        match h.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(ExerciseError(format!("a worker crashed: {e}")));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_samples_is_no_value() {
        assert_eq!(percentile_ms(&mut [], 50.0), None);
        assert_eq!(percentile(&mut [], 99.0), None);
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[0, 4]), None);
    }

    #[test]
    fn percentiles_ratios_and_spread() {
        let mut d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&mut d, 50.0), Some(51.0));
        assert_eq!(percentile_ms(&mut d, 99.0), Some(99.0));
        assert_eq!(ratio(1.0, 3.0), Some(0.3333));
        assert_eq!(spread(&[98, 102, 100]), Some(1.04));
    }

    #[tokio::test]
    async fn the_pacer_does_not_burst_after_a_stall() {
        let mut p = pacer(100.0);
        p.tick().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = tokio::time::Instant::now();
        p.tick().await;
        p.tick().await;
        // Twenty missed ticks are not fired at once: the next one waits a period.
        assert!(before.elapsed() >= Duration::from_millis(10));
    }
}
