//! `capacity`: the same CPU-bound requests through Nginx to two pools of
//! agents, typically one instance with a whole CPU (scaled up) and four with a
//! quarter each (scaled out), and what clients see when an instance of each
//! pool dies.
//!
//! A pool is an agent service of the lab; Nginx serves it under
//! `/BALANCER/SERVICE/` (the lab's config names the balancers). Every request
//! is `GET …/cpu/WORK_MS`: the agent spends that much CPU time on it, so the
//! cost is fixed in CPU, and a small CPU quota shows as waiting.
//!
//! - `mode: curve` ([`curve`]): rising concurrency, 1, 2, 4 … up to
//!   `max_concurrency`, one window of `step_ms` per level and pool, the two
//!   pools alternating so a busy moment of the machine hits both. Throughput
//!   and latency per level, and the pools' own CPU accounting (time used,
//!   quota, throttled periods) read from each instance's cgroup.
//! - `mode: kill` ([`kill`]): both pools under load at once; after the
//!   milestone `loaded` the lab kills instances (`kill_a`, `kill_b`); once
//!   each is seen down on its own port the load goes on for `after_ms`, and
//!   until Nginx has tried each killed instance again (a failed request or a
//!   retried answer), and every outcome is counted before and after.

mod curve;
mod kill;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::http;

/// The milestone after which the lab kills instances (mode `kill`).
pub const LOADED: &str = "loaded";

/// Recorded when every killed instance was seen down.
pub const INSTANCES_DOWN: &str = "instances-down";

/// The `capacity` exercise.
pub struct Capacity;

#[async_trait]
impl Exercise for Capacity {
    fn name(&self) -> &'static str {
        "capacity"
    }

    fn summary(&self) -> &'static str {
        "CPU-bound requests through Nginx to two agent pools at rising concurrency: throughput, latency, CPU quota at work, and an instance of each killed"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["nginx", "agent"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice("mode", &["curve", "kill"], "curve", "what to measure"),
            ParamSpec::text(
                "pool_a",
                "big",
                "the first pool: an agent service, served by Nginx under `/BALANCER/SERVICE/`",
            ),
            ParamSpec::text("pool_b", "small", "the second pool, likewise"),
            ParamSpec::choice(
                "balancer",
                &["round-robin", "no-retry", "hash-one"],
                "round-robin",
                "the Nginx location in front of the pools: round-robin with retries on the next instance, the same without retries, or one hash key for every request",
            ),
            ParamSpec::int(
                "work_ms",
                1,
                2_000,
                100,
                "CPU time each request costs on the agent",
            ),
            ParamSpec::int(
                "max_concurrency",
                1,
                64,
                8,
                "curve: the highest level; levels double from 1",
            ),
            ParamSpec::int(
                "step_ms",
                200,
                60_000,
                3_000,
                "curve: the window per level and pool",
            ),
            ParamSpec::int("concurrency", 1, 64, 4, "kill: requests in flight per pool"),
            ParamSpec::int(
                "after_ms",
                100,
                60_000,
                2_000,
                "kill: how long the load goes on at least once the killed instances are down (and until Nginx has tried each again)",
            ),
            ParamSpec::text("kill_a", "", "kill: the instance of pool a the lab kills"),
            ParamSpec::text("kill_b", "", "kill: the instance of pool b the lab kills"),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::list("levels", "curve: the concurrency levels measured"),
                ObsSpec::list("a_rps", "curve: pool a's answers per second, per level"),
                ObsSpec::list("b_rps", "curve: pool b's answers per second, per level"),
                ObsSpec::list("a_p50_ms", "curve: pool a's median latency per level"),
                ObsSpec::list("b_p50_ms", "curve: pool b's median latency per level"),
                ObsSpec::list("a_p99_ms", "curve: pool a's 99th percentile per level"),
                ObsSpec::list("b_p99_ms", "curve: pool b's 99th percentile per level"),
                ObsSpec::number("a_ceiling_rps", "curve: pool a's best answers per second"),
                ObsSpec::number("b_ceiling_rps", "curve: pool b's best answers per second"),
                ObsSpec::number("ceiling_ratio", "curve: b_ceiling_rps ÷ a_ceiling_rps"),
                ObsSpec::number(
                    "a_gain",
                    "curve: pool a's answers per second at the top level ÷ at one request in flight",
                ),
                ObsSpec::number("b_gain", "curve: the same for pool b"),
                ObsSpec::number(
                    "a_p50_at_1_ms",
                    "curve: pool a's median latency with one request in flight",
                ),
                ObsSpec::number("b_p50_at_1_ms", "curve: the same for pool b"),
                ObsSpec::number(
                    "a_p50_top_ms",
                    "curve: pool a's median latency at the top level",
                ),
                ObsSpec::number("b_p50_top_ms", "curve: the same for pool b"),
                ObsSpec::number(
                    "a_p99_top_ms",
                    "curve: pool a's 99th percentile at the top level",
                ),
                ObsSpec::number("b_p99_top_ms", "curve: the same for pool b"),
                ObsSpec::number(
                    "a_cpus",
                    "pool a's CPU quota summed over its instances, as their cgroups report it",
                ),
                ObsSpec::number("b_cpus", "the same for pool b"),
                ObsSpec::number(
                    "a_cpu_ms_per_request",
                    "curve: CPU time pool a's cgroups used ÷ requests it answered",
                ),
                ObsSpec::number("b_cpu_ms_per_request", "curve: the same for pool b"),
                ObsSpec::number(
                    "a_throttled_periods",
                    "curve: scheduling periods in which pool a's instances ran out of quota and waited (cgroup)",
                ),
                ObsSpec::number("b_throttled_periods", "curve: the same for pool b"),
                ObsSpec::number("served", "requests answered 200, both pools"),
                ObsSpec::number(
                    "errors",
                    "requests that failed or got another status, both pools",
                ),
                ObsSpec::number(
                    "a_instances",
                    "instances of pool a that answered before any kill",
                ),
                ObsSpec::number("b_instances", "the same for pool b"),
                ObsSpec::number(
                    "a_served_after_kill",
                    "kill: pool a's answers to requests started after its instance was seen down",
                ),
                ObsSpec::number(
                    "a_errors_after_kill",
                    "kill: pool a's failed requests started after that",
                ),
                ObsSpec::number("b_served_after_kill", "kill: the same for pool b"),
                ObsSpec::number("b_errors_after_kill", "kill: the same for pool b"),
                ObsSpec::number(
                    "a_errors_at_kill",
                    "kill: pool a's requests in flight at the kill that failed",
                ),
                ObsSpec::number("b_errors_at_kill", "kill: the same for pool b"),
                ObsSpec::number(
                    "a_instances_after_kill",
                    "kill: instances of pool a that answered requests started after the kill",
                ),
                ObsSpec::number("b_instances_after_kill", "kill: the same for pool b"),
                ObsSpec::number(
                    "a_retried_after_kill",
                    "kill: pool a's answers after the kill that Nginx got from a second instance, having tried a dead one first (its `$upstream_addr`)",
                ),
                ObsSpec::number("b_retried_after_kill", "kill: the same for pool b"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(
                    LOADED,
                    "kill: both pools have answered requests under load (the lab kills after it)",
                ),
                Milestone::new(
                    INSTANCES_DOWN,
                    "kill: every killed instance stopped answering",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let pools = [
            Pool::from_ctx(ctx, "pool_a")?,
            Pool::from_ctx(ctx, "pool_b")?,
        ];
        for pool in &pools {
            // A replica Nginx marked failed (an earlier scenario's kill) comes
            // back into the rotation only after its fail_timeout. One hash key
            // reaches one instance by design.
            let reachable = match ctx.text("balancer") {
                "hash-one" => 1,
                _ => pool.instances.len(),
            };
            http::until_every_instance(&pool.client, &pool.url(0), reachable).await?;
        }
        match ctx.text("mode") {
            "kill" => kill::run(ctx, &pools).await,
            _ => curve::run(ctx, &pools).await,
        }
    }
}

/// One pool: an agent service behind Nginx, and its instances' own URLs.
#[derive(Clone)]
struct Pool {
    /// `a` or `b`, the prefix of its observations.
    tag: &'static str,
    /// The service name.
    service: String,
    /// `http://nginx/BALANCER/SERVICE`.
    base: String,
    /// Instance name → its own published URL.
    instances: Vec<(String, String)>,
    client: reqwest::Client,
}

impl Pool {
    fn from_ctx(ctx: &Ctx, param: &str) -> Result<Pool, ExerciseError> {
        let service = ctx.text(param).to_string();
        let instances = ctx
            .instances(&service, "agent", param)?
            .into_iter()
            .map(|e| (e.service.clone(), e.url.trim_end_matches('/').to_string()))
            .collect();
        let nginx = ctx.service("nginx")?;
        Ok(Pool {
            tag: if param == "pool_a" { "a" } else { "b" },
            base: format!(
                "{}/{}/{service}",
                nginx.url.trim_end_matches('/'),
                ctx.text("balancer")
            ),
            service,
            instances,
            client: http::client(REQUEST_TIMEOUT)?,
        })
    }

    /// The URL of a request costing `work_ms` of CPU.
    fn url(&self, work_ms: i64) -> String {
        format!("{}/cpu/{work_ms}", self.base)
    }

    /// The observation `NAME` of this pool (`a_rps`).
    fn obs(&self, name: &str) -> String {
        format!("{}_{name}", self.tag)
    }
}

/// Longest one request may take: above the lab Nginx's read timeout (20 s),
/// so an instance that never answers shows as Nginx's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The header the lab's Nginx sets to `$upstream_addr`: every instance
/// address it tried for the request, comma-separated when it retried.
const UPSTREAM_TRIED_HEADER: &str = "x-upstream-tried";

/// A request Nginx answered 200.
struct Served {
    /// The agent instance that answered.
    instance: String,
    /// Nginx tried another instance first and moved on (a dead one).
    retried: bool,
}

/// One request through Nginx: who answered 200, or `None`.
async fn one(pool: &Pool, url: &str) -> Option<Served> {
    let response = pool.client.get(url).send().await.ok()?;
    if response.status() != reqwest::StatusCode::OK {
        return None;
    }
    let instance = http::instance(response.headers())?;
    let retried = response
        .headers()
        .get(UPSTREAM_TRIED_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tried| tried.contains(','));
    response.bytes().await.ok()?;
    Some(Served { instance, retried })
}

/// The pool's CPU accounting summed over its instances, read from each
/// instance's own `/cpu-stat`; `None` when an instance cannot say.
async fn cpu_stat(pool: &Pool) -> Option<CpuTotals> {
    let mut total = CpuTotals::default();
    for (_, url) in &pool.instances {
        let stat: Value = pool
            .client
            .get(format!("{url}/cpu-stat"))
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()?;
        total.usage_ms += stat["usage_ms"].as_f64()?;
        total.throttled_periods += stat["throttled_periods"].as_u64()?;
        total.quota_cpus = match (total.quota_cpus, stat["quota_cpus"].as_f64()) {
            (Some(sum), Some(q)) => Some(sum + q),
            _ => None,
        };
    }
    Some(total)
}

/// CPU accounting of a pool.
#[derive(Debug, Clone, Copy)]
struct CpuTotals {
    usage_ms: f64,
    throttled_periods: u64,
    /// `None` when an instance has no quota.
    quota_cpus: Option<f64>,
}

impl Default for CpuTotals {
    fn default() -> Self {
        CpuTotals {
            usage_ms: 0.0,
            throttled_periods: 0,
            quota_cpus: Some(0.0),
        }
    }
}
