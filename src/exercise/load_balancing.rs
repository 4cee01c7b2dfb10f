//! `load-balancing`: N requests through Nginx to a replicated agent, counting
//! which instance answered each one, under one upstream strategy.
//!
//! The lab's Nginx proxies three path prefixes, each to its own upstream block
//! over the same replicas: `/round-robin/`, `/least-conn/` and `/ip-hash/`.
//! Every answer names the agent instance that produced it
//! (`x-infralab-instance`), so the distribution is counted, not assumed.
//!
//! Failover: with `kill_replica` set, the exercise sends half the requests,
//! records the milestone `half-served` (the lab kills the replica on it), keeps
//! sending while it watches the replica's own published port until it stops
//! answering, then sends the other half. Requests started after the replica
//! went down must all be served by the survivors; the client counts the errors
//! it saw on the way (Nginx retries a failed upstream with
//! `proxy_next_upstream`, so there should be few or none).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};

/// The header naming the agent instance that answered.
const INSTANCE_HEADER: &str = "x-infralab-instance";

/// The milestone after which the lab's fault kills `kill_replica`.
pub const HALF_SERVED: &str = "half-served";

/// How long the replica may take to go down after `half-served`.
const KILL_DEADLINE: Duration = Duration::from_secs(20);

/// The `load-balancing` exercise.
pub struct LoadBalancing;

/// One request's outcome.
#[derive(Clone)]
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
        "requests through Nginx to replicated agents: who served each one per upstream strategy, and failover when a replica dies"
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
            ParamSpec::int("requests", 2, 100_000, 300, "requests to send"),
            ParamSpec::int("concurrency", 1, 64, 4, "requests in flight at once"),
            ParamSpec::int(
                "delay_ms",
                0,
                10_000,
                0,
                "how long the agent takes to answer each request",
            ),
            ParamSpec {
                name: "kill_replica",
                kind: super::ParamKind::Text,
                default: Value::from(""),
                doc: "replica the lab kills after `half-served` (e.g. `agent-2`); empty: no failover phase",
            },
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "requests",
                    "requests sent (more than `requests` with a kill: the client keeps sending until the replica is down)",
                ),
                ObsSpec::number("served", "requests answered 200 by an agent"),
                ObsSpec::number(
                    "errors",
                    "requests that failed or got a non-200 answer, as the client saw them",
                ),
                ObsSpec::number("error_rate", "errors ÷ requests"),
                ObsSpec::list(
                    "per_instance",
                    "answers per agent instance (from x-infralab-instance)",
                ),
                ObsSpec::number(
                    "instances_used",
                    "instances that answered at least one request",
                ),
                ObsSpec::number(
                    "spread",
                    "max ÷ min answers per replica over all replicas (a replica with none counts as 1)",
                ),
                ObsSpec::number(
                    "served_after_kill",
                    "answers to requests started after the killed replica was down",
                ),
                ObsSpec::number(
                    "served_by_killed_before_kill",
                    "answers from the killed replica before it went down",
                ),
                ObsSpec::number(
                    "served_by_killed_after_kill",
                    "answers from the killed replica to requests started after it was down",
                ),
                ObsSpec::number(
                    "errors_after_kill",
                    "errors on requests started after the killed replica was down",
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
            &[Milestone::new(
                "half-served",
                "half of the requests were served",
            )]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let nginx = ctx.service("nginx")?;
        let replicas: Vec<String> = ctx
            .services
            .values()
            .filter(|e| e.kind == "agent")
            .map(|e| e.service.clone())
            .collect();
        let requests = ctx.int("requests") as usize;
        let concurrency = ctx.int("concurrency") as usize;
        let delay_ms = ctx.int("delay_ms");
        let path = if delay_ms > 0 {
            format!("delay/{delay_ms}")
        } else {
            "lb".to_string()
        };
        let url = format!(
            "{}/{}/{path}",
            nginx.url.trim_end_matches('/'),
            ctx.text("strategy")
        );
        let kill = ctx.text("kill_replica").to_string();
        let killed_url = if kill.is_empty() {
            None
        } else {
            let e = ctx.services.get(&kill).ok_or_else(|| {
                ExerciseError(format!(
                    "`kill_replica`: the lab has no service `{kill}` (replicas are NAME-1, NAME-2, …)"
                ))
            })?;
            Some(format!("{}/health", e.url.trim_end_matches('/')))
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10) + Duration::from_millis(delay_ms as u64))
            .build()
            .doing("building the HTTP client")?;

        let first = requests / 2;
        let never = Arc::new(AtomicBool::new(false));
        let mut outcomes = send(&client, &url, concurrency, Until::Count(first), &never).await?;
        ctx.mark(HALF_SERVED);
        if let Some(health) = killed_url {
            let down = Arc::new(AtomicBool::new(false));
            let watcher = tokio::spawn(watch_down(health, down.clone()));
            // Keep the traffic flowing while the replica goes down.
            let during = send(&client, &url, concurrency, Until::Down, &down).await;
            watcher.abort();
            outcomes.extend(during.map_err(|e| {
                ExerciseError(format!(
                    "{e} (the lab must kill `{kill}` after the milestone `{HALF_SERVED}`)"
                ))
            })?);
            outcomes.extend(
                send(
                    &client,
                    &url,
                    concurrency,
                    Until::Count(requests - first),
                    &down,
                )
                .await?,
            );
        } else {
            outcomes.extend(
                send(
                    &client,
                    &url,
                    concurrency,
                    Until::Count(requests - first),
                    &never,
                )
                .await?,
            );
        }
        ctx.mark("requests-finished");
        Ok(observe(&outcomes, &replicas, &kill))
    }
}

/// When a batch of requests stops.
#[derive(Clone, Copy)]
enum Until {
    /// After this many requests.
    Count(usize),
    /// Once the flag says the killed replica is down.
    Down,
}

/// Sends requests with `concurrency` in flight until `until`; each outcome
/// notes whether `down` was set when its request started.
async fn send(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    until: Until,
    down: &Arc<AtomicBool>,
) -> Result<Vec<Outcome>, ExerciseError> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, next, down) =
            (client.clone(), url.to_string(), next.clone(), down.clone());
        tasks.spawn(async move {
            let mut seen = Vec::new();
            loop {
                match until {
                    Until::Count(n) => {
                        if next.fetch_add(1, Ordering::SeqCst) >= n {
                            break;
                        }
                    }
                    Until::Down => {
                        if down.load(Ordering::SeqCst) {
                            break;
                        }
                        if started.elapsed() > KILL_DEADLINE {
                            return Err(ExerciseError(format!(
                                "the replica still answered {} s after `{HALF_SERVED}`",
                                KILL_DEADLINE.as_secs()
                            )));
                        }
                    }
                }
                let after_kill = down.load(Ordering::SeqCst);
                seen.push(Outcome {
                    instance: one(&client, &url).await,
                    after_kill,
                });
            }
            Ok(seen)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(|e| ExerciseError(format!("a request task panicked: {e}")))??);
    }
    Ok(all)
}

/// One GET: the instance that answered 200, or `None`.
async fn one(client: &reqwest::Client, url: &str) -> Option<String> {
    let response = client.get(url).send().await.ok()?;
    if response.status() != reqwest::StatusCode::OK {
        return None;
    }
    let instance = response
        .headers()
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    response.bytes().await.ok()?;
    instance
}

/// Polls the replica's own port (fresh connections) until it fails to answer
/// twice in a row (once could be a slow moment on a busy machine).
async fn watch_down(health: String, down: Arc<AtomicBool>) {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()
    else {
        return;
    };
    let mut failures = 0;
    while failures < 2 {
        let ok = matches!(client.get(&health).send().await, Ok(r) if r.status().is_success());
        failures = if ok { 0 } else { failures + 1 };
        if ok {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    down.store(true, Ordering::SeqCst);
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
    let served: u64 = per_instance.values().sum();
    let used = per_instance.values().filter(|&&n| n > 0).count();
    let max = per_instance.values().copied().max().unwrap_or_default();
    let min = per_instance.values().copied().min().unwrap_or_default();
    let spread = round2(max as f64 / min.max(1) as f64);
    let total = outcomes.len() as u64;
    let mut obs = Observations::from([
        ("requests".into(), Value::from(total)),
        ("served".into(), Value::from(served)),
        ("errors".into(), Value::from(errors)),
        (
            "error_rate".into(),
            Value::from(if total == 0 {
                0.0
            } else {
                round4(errors as f64 / total as f64)
            }),
        ),
        (
            "per_instance".into(),
            Value::Object(
                per_instance
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(*v)))
                    .collect(),
            ),
        ),
        ("instances_used".into(), Value::from(used)),
        ("spread".into(), Value::from(spread)),
    ]);
    if !killed.is_empty() {
        let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.after_kill).collect();
        let by = |list: &mut dyn Iterator<Item = &Outcome>| {
            list.filter(|o| o.instance.as_deref() == Some(killed))
                .count()
        };
        let survivors: std::collections::BTreeSet<&str> = after
            .iter()
            .filter_map(|o| o.instance.as_deref())
            .filter(|i| *i != killed)
            .collect();
        obs.extend([
            (
                "served_after_kill".into(),
                Value::from(after.iter().filter(|o| o.instance.is_some()).count()),
            ),
            (
                "served_by_killed_before_kill".into(),
                Value::from(by(&mut outcomes.iter().filter(|o| !o.after_kill))),
            ),
            (
                "served_by_killed_after_kill".into(),
                Value::from(by(&mut after.iter().copied())),
            ),
            (
                "errors_after_kill".into(),
                Value::from(after.iter().filter(|o| o.instance.is_none()).count()),
            ),
            (
                "survivors_used_after_kill".into(),
                Value::from(survivors.len()),
            ),
        ]);
    }
    obs
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
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

    #[test]
    fn the_defaults_are_valid_parameters() {
        for p in LoadBalancing.params() {
            p.check(&p.default).unwrap();
        }
    }

    #[test]
    fn counts_per_instance_spread_and_the_kill() {
        let replicas = ["agent-1".to_string(), "agent-2".into(), "agent-3".into()];
        let outcomes = vec![
            served("agent-1", false),
            served("agent-2", false),
            served("agent-3", false),
            served("agent-1", true),
            served("agent-3", true),
            Outcome {
                instance: None,
                after_kill: true,
            },
        ];
        let obs = observe(&outcomes, &replicas, "agent-2");
        assert_eq!(obs["served"], 5);
        assert_eq!(obs["errors"], 1);
        assert_eq!(obs["instances_used"], 3);
        assert_eq!(obs["spread"], 2.0);
        assert_eq!(obs["served_by_killed_before_kill"], 1);
        assert_eq!(obs["served_by_killed_after_kill"], 0);
        assert_eq!(obs["served_after_kill"], 2);
        assert_eq!(obs["errors_after_kill"], 1);
        assert_eq!(obs["survivors_used_after_kill"], 2);
        let none = observe(&[served("agent-1", false)], &replicas, "");
        assert_eq!(none["spread"], 1.0);
        assert_eq!(none["instances_used"], 1);
        assert!(!none.contains_key("served_after_kill"));
    }
}
