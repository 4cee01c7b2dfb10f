//! `load-balancing`: requests through Nginx to a replicated agent, counting
//! which instance answered each one, under one upstream strategy, and what
//! clients see when a replica dies mid-traffic.
//!
//! The lab's Nginx proxies one path prefix per upstream strategy over the same
//! replicas (`/round-robin/`, `/least-conn/`, `/ip-hash/`), and the same three
//! again under `/no-retry/` with `proxy_next_upstream off`. Every answer names
//! the agent instance that produced it (`x-infralab-instance`), so the
//! distribution is counted, not assumed.
//!
//! `concurrency` workers keep requests in flight without pause. The milestone
//! `half-served` is recorded when half of `requests` are answered, while the
//! others are still in flight, so a fault `after: half-served` kills a replica
//! that is busy serving. From then on a watcher polls the killed replica's own
//! published port until it stops answering; the workers keep going until the
//! replica is seen down and then send the other half. Each outcome remembers
//! whether its request started before or after the replica was seen down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use super::{
    Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamKind, ParamSpec, Timeline,
};
use crate::client::http;
use crate::stats::{join_workers, ratio, spread};

/// The milestone after which the lab's fault kills `kill_replica`.
pub const HALF_SERVED: &str = "half-served";

/// The milestone recorded when the watcher saw the killed replica down.
pub const REPLICA_DOWN: &str = "replica-down";

/// How long the replica may take to go down after `half-served`.
const KILL_DEADLINE: Duration = Duration::from_secs(20);

/// Client timeout on top of the requested delay: above the lab Nginx's
/// `proxy_read_timeout` (5 s), so a hung upstream shows as Nginx's answer.
const CLIENT_SLACK: Duration = Duration::from_secs(10);

/// The `load-balancing` exercise.
pub struct LoadBalancing;

/// One request's outcome.
#[derive(Clone, Debug)]
struct Outcome {
    /// The instance that answered, or `None` for an error.
    instance: Option<String>,
    /// Started after the killed replica was seen down.
    after_kill: bool,
}

#[async_trait]
impl Exercise for LoadBalancing {
    fn name(&self) -> &'static str {
        "load-balancing"
    }

    fn summary(&self) -> &'static str {
        "requests through Nginx to replicated agents: who served each one per upstream strategy, and what clients see when a replica dies"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["nginx", "agent"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "strategy",
                &["round-robin", "least-conn", "ip-hash"],
                "round-robin",
                "the Nginx upstream to use (the path prefix `/STRATEGY/`)",
            ),
            ParamSpec::flag(
                "retry",
                true,
                "Nginx retries a failed attempt on the next replica (`proxy_next_upstream`); false: the `/no-retry/` locations, `proxy_next_upstream off`",
            ),
            ParamSpec::choice(
                "method",
                &["GET", "POST"],
                "GET",
                "request method; Nginx never retries a POST it already sent to a replica",
            ),
            ParamSpec::int("requests", 2, 100_000, 300, "requests to send"),
            ParamSpec::int("concurrency", 1, 64, 4, "requests in flight at once"),
            ParamSpec::int(
                "delay_ms",
                0,
                4_000,
                0,
                "how long the agent takes to answer each request (under the lab Nginx's 5 s read timeout)",
            ),
            ParamSpec {
                name: "kill_replica",
                kind: ParamKind::Text,
                default: Value::from(""),
                doc: "replica the lab kills after `half-served` (e.g. `agent-2`); empty: no failover phase",
            },
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "sent",
                    "requests sent (more than `requests` with a kill: the client keeps sending until the replica is down)",
                ),
                ObsSpec::number("served", "requests answered 200 by an agent"),
                ObsSpec::number(
                    "errors",
                    "requests that failed or got a non-200 answer, as the client saw them",
                ),
                ObsSpec::number("error_rate", "errors ÷ sent"),
                ObsSpec::list(
                    "per_instance",
                    "answers per agent replica, in name order (agent-1, agent-2, …), from x-infralab-instance",
                ),
                ObsSpec::number(
                    "instances_used",
                    "instances that answered at least one request",
                ),
                ObsSpec::number(
                    "imbalance",
                    "most answers of one replica minus fewest of another (a replica with none counts 0)",
                ),
                ObsSpec::number(
                    "spread",
                    "most ÷ fewest answers per replica (absent when a replica got none)",
                ),
                ObsSpec::number(
                    "sent_after_kill",
                    "requests started after the killed replica was seen down",
                ),
                ObsSpec::number("served_after_kill", "answers to those requests"),
                ObsSpec::number("errors_after_kill", "errors on those requests"),
                ObsSpec::number(
                    "errors_before_down",
                    "errors on requests started before the replica was seen down: the ones the kill caught in flight, or sent to it before Nginx noticed",
                ),
                ObsSpec::number(
                    "served_by_killed_before_kill",
                    "answers from the killed replica before it went down (> 0: the kill came mid-traffic)",
                ),
                ObsSpec::number(
                    "served_by_killed_after_kill",
                    "answers from the killed replica to requests started after it was down (context: a dead process serves nothing)",
                ),
                ObsSpec::number(
                    "survivors_used_after_kill",
                    "instances that answered requests started after the kill",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(
                    HALF_SERVED,
                    "half of `requests` were answered; the others are in flight",
                ),
                Milestone::new(
                    REPLICA_DOWN,
                    "the killed replica's own port stopped answering (only with `kill_replica`)",
                ),
                Milestone::new("requests-finished", "every request has its outcome"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let target = Target::from_ctx(ctx)?;
        let replicas: Vec<String> = ctx
            .services
            .values()
            .filter(|e| e.kind == "agent")
            .map(|e| e.service.clone())
            .collect();
        let plan = Plan {
            requests: ctx.int("requests") as usize,
            kill: target.killed.is_some(),
        };
        // A replica an earlier scenario killed (or an earlier round of
        // `--repeat`) stays out of the rotation for `fail_timeout` after its
        // last failure, which would skew the count. Not for ip-hash, where one
        // client reaches one replica by design.
        if ctx.text("strategy") != "ip-hash" {
            http::until_every_instance(&target.client, &target.url, replicas.len()).await?;
        }
        let traffic = Arc::new(Traffic::default());
        let watcher = target
            .killed
            .clone()
            .map(|health| tokio::spawn(watch_down(ctx.timeline(), health, traffic.clone())));
        let workers = (0..ctx.int("concurrency"))
            .map(|_| {
                tokio::spawn(worker(
                    target.clone(),
                    plan,
                    traffic.clone(),
                    ctx.timeline(),
                ))
            })
            .collect();
        let outcomes = join_workers(workers).await;
        if let Some(w) = watcher {
            w.abort();
        }
        let outcomes: Vec<Outcome> = outcomes
            .map_err(|e| match &target.killed {
                Some(_) => ExerciseError(format!(
                    "{e} (the lab must kill `{}` after the milestone `{HALF_SERVED}`)",
                    ctx.text("kill_replica")
                )),
                None => e,
            })?
            .into_iter()
            .flatten()
            .collect();
        ctx.mark("requests-finished");
        Ok(observe(&outcomes, &replicas, ctx.text("kill_replica")))
    }
}

/// Where and how to send, shared by the workers.
#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    method: reqwest::Method,
    url: String,
    /// The killed replica's own `/health` URL, when the lab kills one.
    killed: Option<String>,
}

impl Target {
    fn from_ctx(ctx: &Ctx) -> Result<Target, ExerciseError> {
        let nginx = ctx.service("nginx")?;
        let delay_ms = ctx.int("delay_ms");
        let prefix = if ctx.flag("retry") { "" } else { "no-retry/" };
        let url = format!(
            "{}/{prefix}{}/lb?delay_ms={delay_ms}",
            nginx.url.trim_end_matches('/'),
            ctx.text("strategy")
        );
        let kill = ctx.text("kill_replica");
        let killed = if kill.is_empty() {
            None
        } else {
            let e = ctx.services.get(kill).ok_or_else(|| {
                ExerciseError(format!(
                    "`kill_replica`: the lab has no service `{kill}` (replicas are NAME-1, NAME-2, …)"
                ))
            })?;
            Some(format!("{}/health", e.url.trim_end_matches('/')))
        };
        let method = match ctx.text("method") {
            "POST" => reqwest::Method::POST,
            _ => reqwest::Method::GET,
        };
        Ok(Target {
            client: http::client(CLIENT_SLACK + Duration::from_millis(delay_ms as u64))?,
            method,
            url,
            killed,
        })
    }
}

/// How many requests, and whether a kill splits them.
#[derive(Clone, Copy)]
struct Plan {
    requests: usize,
    kill: bool,
}

/// Counters the workers share.
#[derive(Default)]
struct Traffic {
    /// Requests started before the replica was seen down (or in all, without a kill).
    started: AtomicUsize,
    /// Requests started after it was seen down.
    started_after: AtomicUsize,
    /// Requests with an outcome.
    answered: AtomicUsize,
    /// When `half-served` was recorded.
    half_at: OnceLock<Instant>,
    /// The killed replica was seen down.
    down: AtomicBool,
}

/// One worker: one request in flight at a time, until the plan is done.
async fn worker(
    target: Target,
    plan: Plan,
    traffic: Arc<Traffic>,
    timeline: Timeline,
) -> Result<Vec<Outcome>, ExerciseError> {
    let half = plan.requests / 2;
    let mut seen = Vec::new();
    loop {
        let after_kill = traffic.down.load(Ordering::SeqCst);
        let go = if !plan.kill {
            traffic.started.fetch_add(1, Ordering::SeqCst) < plan.requests
        } else if after_kill {
            traffic.started_after.fetch_add(1, Ordering::SeqCst) < plan.requests - half
        } else {
            if let Some(at) = traffic.half_at.get()
                && at.elapsed() > KILL_DEADLINE
            {
                return Err(ExerciseError(format!(
                    "the replica still answered {} s after `{HALF_SERVED}`",
                    KILL_DEADLINE.as_secs()
                )));
            }
            traffic.started.fetch_add(1, Ordering::SeqCst);
            true
        };
        if !go {
            return Ok(seen);
        }
        seen.push(Outcome {
            instance: one(&target).await,
            after_kill,
        });
        if traffic.answered.fetch_add(1, Ordering::SeqCst) + 1 == half {
            let _ = traffic.half_at.set(Instant::now());
            timeline.record("exercise", HALF_SERVED);
        }
    }
}

/// One request: the instance that answered 200, or `None`.
async fn one(target: &Target) -> Option<String> {
    let mut request = target.client.request(target.method.clone(), &target.url);
    if target.method == reqwest::Method::POST {
        request = request.body("an order that must not be placed twice");
    }
    let response = request.send().await.ok()?;
    if response.status() != reqwest::StatusCode::OK {
        return None;
    }
    let instance = http::instance(response.headers());
    response.bytes().await.ok()?;
    instance
}

/// After `half-served`, waits until the replica's own port stops answering,
/// then says so.
async fn watch_down(timeline: Timeline, health: String, traffic: Arc<Traffic>) {
    timeline.wait_for(HALF_SERVED).await;
    if http::until_down(&health).await.is_err() {
        return;
    }
    traffic.down.store(true, Ordering::SeqCst);
    timeline.record("exercise", REPLICA_DOWN);
}

/// Counts the outcomes into observations.
fn observe(outcomes: &[Outcome], replicas: &[String], killed: &str) -> Observations {
    let mut per_instance: BTreeMap<String, u64> = replicas.iter().map(|r| (r.clone(), 0)).collect();
    let mut errors = 0u64;
    for o in outcomes {
        match &o.instance {
            Some(i) => *per_instance.entry(i.clone()).or_default() += 1,
            None => errors += 1,
        }
    }
    let counts: Vec<u64> = per_instance.values().copied().collect();
    let served: u64 = counts.iter().sum();
    let used = counts.iter().filter(|&&n| n > 0).count();
    let max = counts.iter().copied().max().unwrap_or_default();
    let min = counts.iter().copied().min().unwrap_or_default();
    let sent = outcomes.len() as u64;
    let mut obs = Observations::from([
        ("sent".into(), Value::from(sent)),
        ("served".into(), Value::from(served)),
        ("errors".into(), Value::from(errors)),
        (
            "error_rate".into(),
            Value::from(ratio(errors as f64, sent as f64)),
        ),
        ("per_instance".into(), Value::from(counts.clone())),
        ("instances_used".into(), Value::from(used)),
        ("imbalance".into(), Value::from(max - min)),
        ("spread".into(), Value::from(spread(&counts))),
    ]);
    if !killed.is_empty() {
        obs.extend(observe_kill(outcomes, killed));
    }
    obs
}

/// The failover observations: who served and who failed on each side of the kill.
fn observe_kill(outcomes: &[Outcome], killed: &str) -> Observations {
    let (after, before): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.after_kill);
    let by_killed = |list: &[&Outcome]| {
        list.iter()
            .filter(|o| o.instance.as_deref() == Some(killed))
            .count()
    };
    let errors = |list: &[&Outcome]| list.iter().filter(|o| o.instance.is_none()).count();
    let survivors: BTreeSet<&str> = after
        .iter()
        .filter_map(|o| o.instance.as_deref())
        .filter(|i| *i != killed)
        .collect();
    Observations::from([
        ("sent_after_kill".into(), Value::from(after.len())),
        (
            "served_after_kill".into(),
            Value::from(after.len() - errors(&after)),
        ),
        ("errors_after_kill".into(), Value::from(errors(&after))),
        ("errors_before_down".into(), Value::from(errors(&before))),
        (
            "served_by_killed_before_kill".into(),
            Value::from(by_killed(&before)),
        ),
        (
            "served_by_killed_after_kill".into(),
            Value::from(by_killed(&after)),
        ),
        (
            "survivors_used_after_kill".into(),
            Value::from(survivors.len()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(by: &str, after_kill: bool) -> Outcome {
        Outcome {
            instance: Some(by.into()),
            after_kill,
        }
    }

    fn failed(after_kill: bool) -> Outcome {
        Outcome {
            instance: None,
            after_kill,
        }
    }

    #[test]
    fn the_defaults_are_valid_parameters() {
        for p in LoadBalancing.params() {
            p.check(&p.default).unwrap();
        }
    }

    #[test]
    fn counts_per_instance_imbalance_and_the_kill() {
        let replicas = ["agent-1".to_string(), "agent-2".into(), "agent-3".into()];
        let outcomes = vec![
            served("agent-1", false),
            served("agent-2", false),
            served("agent-3", false),
            failed(false),
            served("agent-1", true),
            served("agent-3", true),
            failed(true),
        ];
        let obs = observe(&outcomes, &replicas, "agent-2");
        assert_eq!(obs["sent"], 7);
        assert_eq!(obs["served"], 5);
        assert_eq!(obs["errors"], 2);
        assert_eq!(obs["per_instance"], serde_json::json!([2, 1, 2]));
        assert_eq!(obs["instances_used"], 3);
        assert_eq!(obs["imbalance"], 1);
        assert_eq!(obs["spread"], 2.0);
        assert_eq!(obs["served_by_killed_before_kill"], 1);
        assert_eq!(obs["served_by_killed_after_kill"], 0);
        assert_eq!(obs["sent_after_kill"], 3);
        assert_eq!(obs["served_after_kill"], 2);
        assert_eq!(obs["errors_after_kill"], 1);
        assert_eq!(obs["errors_before_down"], 1);
        assert_eq!(obs["survivors_used_after_kill"], 2);
    }

    #[test]
    fn a_replica_without_answers_has_no_spread_and_no_kill_no_failover_counts() {
        let replicas = ["agent-1".to_string(), "agent-2".into()];
        let none = observe(&[served("agent-1", false)], &replicas, "");
        assert_eq!(none["per_instance"], serde_json::json!([1, 0]));
        assert_eq!(none["imbalance"], 1);
        assert!(none["spread"].is_null());
        assert_eq!(none["instances_used"], 1);
        assert!(!none.contains_key("served_after_kill"));
        assert!(observe(&[], &replicas, "")["error_rate"].is_null());
    }
}
