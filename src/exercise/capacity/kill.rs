//! Mode `kill`: both pools under load; the lab kills an instance of each
//! after `loaded`; what the clients of each pool see afterwards.
//!
//! Nginx leaves a failed instance out for its `fail_timeout`, then sends it
//! a request again. The window after the kill therefore ends on that event,
//! not on a clock alone: it lasts `after_ms` and until every pool that lost
//! an instance has shown Nginx trying it again (a failed request without
//! retries, an answer from a second instance with them), so a slow machine
//! cannot end the window before the dead instance's second chance.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{INSTANCES_DOWN, LOADED, Pool, one};
use crate::client::http;
use crate::exercise::{Ctx, ExerciseError, Observations, Timeline};
use crate::stats::join_workers;

/// Answers each pool gives before the exercise records `loaded`.
const LOADED_AFTER: u64 = 5;

/// How long the killed instances may take to go down after `loaded`.
const KILL_DEADLINE: Duration = Duration::from_secs(20);

/// How long after the kill Nginx may take to try a killed instance again
/// (its `fail_timeout`, 10 s by default), before the window ends anyway.
const TRY_AGAIN_DEADLINE: Duration = Duration::from_secs(20);

/// How long a worker waits after a failed request.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Outcomes of one pool, by phase.
#[derive(Debug, Default)]
struct Tally {
    /// Instances that answered requests started before the kill.
    before: BTreeSet<String>,
    /// Instances that answered requests started after the kill was seen.
    after: BTreeSet<String>,
    /// Answers in all.
    served: usize,
    served_after: u64,
    errors_after: u64,
    /// Answers after the kill that Nginx got on a second attempt.
    retried_after: u64,
    /// Requests started before the kill was seen that failed.
    errors_before: u64,
}

/// What the pools' workers share.
#[derive(Default)]
struct Phase {
    /// Answers so far per pool, for `loaded`.
    answered: [AtomicU64; 2],
    loaded: AtomicBool,
    /// Every killed instance was seen down; `None` until then.
    down_at: std::sync::OnceLock<Instant>,
    /// Per pool: still waiting for Nginx to try its killed instance again
    /// after the kill (false for a pool that lost none).
    awaiting_retry: [AtomicBool; 2],
}

impl Phase {
    /// Whether the window after the kill is over.
    fn window_over(&self, after: Duration) -> bool {
        let Some(at) = self.down_at.get() else {
            return false;
        };
        let awaiting = self.awaiting_retry.iter().any(|a| a.load(Ordering::SeqCst));
        at.elapsed() >= after && (!awaiting || at.elapsed() >= TRY_AGAIN_DEADLINE)
    }
}

pub(super) async fn run(ctx: &Ctx, pools: &[Pool; 2]) -> Result<Observations, ExerciseError> {
    let killed = killed_instances(ctx, pools)?;
    let work_ms = ctx.int("work_ms");
    let after = Duration::from_millis(ctx.int("after_ms") as u64);
    let phase = Arc::new(Phase::default());
    for (i, _) in &killed {
        phase.awaiting_retry[*i].store(true, Ordering::SeqCst);
    }
    let killed = killed.into_iter().map(|(_, health)| health).collect();
    let watcher = tokio::spawn(watch_down(ctx.timeline(), killed, phase.clone()));
    let mut workers = Vec::new();
    for (i, pool) in pools.iter().enumerate() {
        for _ in 0..ctx.int("concurrency") {
            let (pool, phase, timeline) = (pool.clone(), phase.clone(), ctx.timeline());
            let url = pool.url(work_ms);
            workers.push(tokio::spawn(async move {
                worker(i, &pool, &url, &phase, &timeline, after).await
            }));
        }
    }
    let tallies = join_workers(workers).await;
    watcher.abort();
    let mut per_pool: [Tally; 2] = Default::default();
    for (i, t) in tallies? {
        let p = &mut per_pool[i];
        p.before.extend(t.before);
        p.after.extend(t.after);
        p.served += t.served;
        p.served_after += t.served_after;
        p.errors_after += t.errors_after;
        p.errors_before += t.errors_before;
        p.retried_after += t.retried_after;
    }
    Ok(observe(pools, &per_pool))
}

/// The instances the lab says it kills, each checked to belong to its pool:
/// the pool's index and the instance's own health URL.
fn killed_instances(ctx: &Ctx, pools: &[Pool; 2]) -> Result<Vec<(usize, String)>, ExerciseError> {
    let mut health = Vec::new();
    for (i, (param, pool)) in ["kill_a", "kill_b"].into_iter().zip(pools).enumerate() {
        let name = ctx.text(param);
        if name.is_empty() {
            continue;
        }
        let url = pool
            .instances
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, url)| format!("{url}/health"))
            .ok_or_else(|| {
                ExerciseError(format!(
                    "`{param}`: `{name}` is not an instance of `{}`",
                    pool.service
                ))
            })?;
        health.push((i, url));
    }
    if health.is_empty() {
        return Err(ExerciseError(
            "mode `kill` needs `kill_a` or `kill_b`, the instance the lab kills".into(),
        ));
    }
    Ok(health)
}

/// One request in flight at a time on pool `i`, until the window after the
/// kill is over ([`Phase::window_over`]).
async fn worker(
    i: usize,
    pool: &Pool,
    url: &str,
    phase: &Phase,
    timeline: &Timeline,
    after: Duration,
) -> Result<(usize, Tally), ExerciseError> {
    let mut t = Tally::default();
    let start = Instant::now();
    loop {
        if phase.window_over(after) {
            return Ok((i, t));
        }
        let seen_down = phase.down_at.get().copied();
        if seen_down.is_none() && start.elapsed() > KILL_DEADLINE {
            return Err(ExerciseError(format!(
                "the killed instances still answered {} s after `{LOADED}` (the lab must kill them after it)",
                KILL_DEADLINE.as_secs()
            )));
        }
        let answer = one(pool, url).await;
        t.served += usize::from(answer.is_some());
        if answer.is_none() {
            // A dead pool answers 502 at once: back off a little, as clients do.
            tokio::time::sleep(ERROR_PAUSE).await;
        }
        match (answer, seen_down.is_some()) {
            (Some(served), false) => {
                t.before.insert(served.instance);
            }
            (Some(served), true) => {
                t.after.insert(served.instance);
                t.served_after += 1;
                if served.retried {
                    t.retried_after += 1;
                    phase.awaiting_retry[i].store(false, Ordering::SeqCst);
                }
            }
            (None, false) => t.errors_before += 1,
            (None, true) => {
                t.errors_after += 1;
                phase.awaiting_retry[i].store(false, Ordering::SeqCst);
            }
        }
        let answered = phase.answered[i].fetch_add(1, Ordering::SeqCst) + 1;
        let other = phase.answered[1 - i].load(Ordering::SeqCst);
        if answered.min(other) >= LOADED_AFTER && !phase.loaded.swap(true, Ordering::SeqCst) {
            timeline.record("exercise", LOADED);
        }
    }
}

/// After `loaded`, waits until every killed instance stops answering on its
/// own port, then says so.
async fn watch_down(timeline: Timeline, health: Vec<String>, phase: Arc<Phase>) {
    timeline.wait_for(LOADED).await;
    for url in &health {
        if http::until_down(url).await.is_err() {
            return;
        }
    }
    let _ = phase.down_at.set(Instant::now());
    timeline.record("exercise", INSTANCES_DOWN);
}

fn observe(pools: &[Pool; 2], tallies: &[Tally; 2]) -> Observations {
    let mut obs = Observations::new();
    for (pool, t) in pools.iter().zip(tallies) {
        obs.insert(pool.obs("instances"), Value::from(t.before.len()));
        obs.insert(pool.obs("served_after_kill"), Value::from(t.served_after));
        obs.insert(pool.obs("errors_after_kill"), Value::from(t.errors_after));
        obs.insert(pool.obs("errors_at_kill"), Value::from(t.errors_before));
        obs.insert(pool.obs("instances_after_kill"), Value::from(t.after.len()));
        obs.insert(pool.obs("retried_after_kill"), Value::from(t.retried_after));
    }
    let served: usize = tallies.iter().map(|t| t.served).sum();
    let errors: u64 = tallies
        .iter()
        .map(|t| t.errors_before + t.errors_after)
        .sum();
    obs.insert("served".into(), Value::from(served));
    obs.insert("errors".into(), Value::from(errors));
    obs
}
