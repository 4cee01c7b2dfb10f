//! Mode `curve`: throughput and latency of both pools at rising concurrency.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{CpuTotals, Pool, cpu_stat, one};
use crate::exercise::{Ctx, ExerciseError, Observations};
use crate::stats::{join_workers, percentile_ms, ratio, round2};

/// One window of one pool at one level.
#[derive(Debug, Default)]
struct Window {
    /// Latencies of the requests answered within the window.
    latencies: Vec<Duration>,
    errors: u64,
    /// Requests answered after the window closed (they cost CPU too).
    late: u64,
    /// Instances that answered.
    instances: BTreeSet<String>,
    /// How long the window lasted.
    elapsed: Duration,
}

impl Window {
    fn rps(&self) -> Option<f64> {
        ratio(self.latencies.len() as f64, self.elapsed.as_secs_f64())
    }
}

/// Concurrency levels: 1, 2, 4 … and `max` itself.
fn levels(max: i64) -> Vec<i64> {
    let mut levels: Vec<i64> = std::iter::successors(Some(1), |l| Some(l * 2))
        .take_while(|l| *l < max)
        .collect();
    levels.push(max);
    levels
}

pub(super) async fn run(ctx: &Ctx, pools: &[Pool; 2]) -> Result<Observations, ExerciseError> {
    let work_ms = ctx.int("work_ms");
    let step = Duration::from_millis(ctx.int("step_ms") as u64);
    let levels = levels(ctx.int("max_concurrency"));
    let before = [cpu_stat(&pools[0]).await, cpu_stat(&pools[1]).await];
    let mut windows: [Vec<Window>; 2] = Default::default();
    for &level in &levels {
        for (pool, out) in pools.iter().zip(windows.iter_mut()) {
            out.push(window(pool, pool.url(work_ms), level, step).await?);
        }
    }
    let after = [cpu_stat(&pools[0]).await, cpu_stat(&pools[1]).await];
    let mut obs = Observations::from([("levels".into(), Value::from(levels.clone()))]);
    for (i, pool) in pools.iter().enumerate() {
        observe_pool(&mut obs, pool, &mut windows[i], before[i].zip(after[i]));
    }
    let ceilings = (ceiling(&windows[0]), ceiling(&windows[1]));
    if let (Some(a), Some(b)) = ceilings {
        obs.insert("ceiling_ratio".into(), Value::from(ratio(b, a).map(round2)));
    }
    let all = windows.iter().flatten();
    let served: usize = all.clone().map(|w| w.latencies.len()).sum();
    let errors: u64 = all.map(|w| w.errors).sum();
    obs.insert("served".into(), Value::from(served));
    obs.insert("errors".into(), Value::from(errors));
    Ok(obs)
}

/// `level` workers send requests back to back for `step`; requests still in
/// flight at the end are awaited (so the next window starts on an idle pool)
/// but not counted.
async fn window(
    pool: &Pool,
    url: String,
    level: i64,
    step: Duration,
) -> Result<Window, ExerciseError> {
    let start = Instant::now();
    let end = start + step;
    let url = Arc::new(url);
    let workers = (0..level)
        .map(|_| {
            let (pool, url) = (pool.clone(), url.clone());
            tokio::spawn(async move {
                let mut w = Window::default();
                while Instant::now() < end {
                    let sent = Instant::now();
                    let answer = one(&pool, &url).await;
                    if Instant::now() > end {
                        w.late += u64::from(answer.is_some());
                        break;
                    }
                    match answer {
                        Some(served) => {
                            w.latencies.push(sent.elapsed());
                            w.instances.insert(served.instance);
                        }
                        None => w.errors += 1,
                    }
                }
                Ok::<_, ExerciseError>(w)
            })
        })
        .collect();
    let mut total = Window {
        elapsed: step,
        ..Window::default()
    };
    for w in join_workers(workers).await? {
        total.latencies.extend(w.latencies);
        total.errors += w.errors;
        total.late += w.late;
        total.instances.extend(w.instances);
    }
    Ok(total)
}

/// The best answers per second over the levels.
fn ceiling(windows: &[Window]) -> Option<f64> {
    windows
        .iter()
        .filter_map(Window::rps)
        .max_by(f64::total_cmp)
}

fn observe_pool(
    obs: &mut Observations,
    pool: &Pool,
    windows: &mut [Window],
    cpu: Option<(CpuTotals, CpuTotals)>,
) {
    let rps: Vec<Option<f64>> = windows.iter().map(|w| w.rps().map(round2)).collect();
    let p50: Vec<Option<f64>> = windows
        .iter_mut()
        .map(|w| percentile_ms(&mut w.latencies, 50.0).map(round2))
        .collect();
    let p99: Vec<Option<f64>> = windows
        .iter_mut()
        .map(|w| percentile_ms(&mut w.latencies, 99.0).map(round2))
        .collect();
    let first_rps = rps.first().copied().flatten();
    let top_rps = rps.last().copied().flatten();
    let instances: BTreeSet<&String> = windows.iter().flat_map(|w| &w.instances).collect();
    let answered: u64 = windows
        .iter()
        .map(|w| w.latencies.len() as u64 + w.late)
        .sum();
    obs.insert(pool.obs("rps"), Value::from(rps.clone()));
    obs.insert(pool.obs("p50_ms"), Value::from(p50.clone()));
    obs.insert(pool.obs("p99_ms"), Value::from(p99.clone()));
    obs.insert(
        pool.obs("ceiling_rps"),
        Value::from(ceiling(windows).map(round2)),
    );
    obs.insert(
        pool.obs("gain"),
        Value::from(
            first_rps
                .zip(top_rps)
                .and_then(|(f, t)| ratio(t, f))
                .map(round2),
        ),
    );
    obs.insert(
        pool.obs("p50_at_1_ms"),
        Value::from(p50.first().copied().flatten()),
    );
    obs.insert(
        pool.obs("p50_top_ms"),
        Value::from(p50.last().copied().flatten()),
    );
    obs.insert(
        pool.obs("p99_top_ms"),
        Value::from(p99.last().copied().flatten()),
    );
    obs.insert(pool.obs("instances"), Value::from(instances.len()));
    if let Some((before, after)) = cpu {
        obs.insert(pool.obs("cpus"), Value::from(after.quota_cpus.map(round2)));
        obs.insert(
            pool.obs("cpu_ms_per_request"),
            Value::from(ratio(after.usage_ms - before.usage_ms, answered as f64).map(round2)),
        );
        obs.insert(
            pool.obs("throttled_periods"),
            Value::from(after.throttled_periods - before.throttled_periods),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_double_up_to_the_maximum() {
        assert_eq!(levels(1), vec![1]);
        assert_eq!(levels(8), vec![1, 2, 4, 8]);
        assert_eq!(levels(6), vec![1, 2, 4, 6]);
    }

    #[test]
    fn an_empty_window_has_no_rate() {
        let w = Window::default();
        assert_eq!(w.rps(), None);
        assert_eq!(ceiling(&[w]), None);
    }
}
