//! `serverless`: a function whose instances are containers started per
//! request. The exercise plays the platform ([`platform`]): each invocation
//! goes to an idle warm instance, or waits for a new container (a cold
//! start); instances idle for `keep_warm_ms` are stopped (scale to zero);
//! `max_instances` bounds them, and what is over the limit waits or is
//! refused. The same invocations also go to the lab's always-on instance of
//! the function, for latency and cost.
//!
//! The workload: `bursts` bursts of `burst` invocations at once, `gap_ms`
//! apart (from the end of one to the start of the next). Cost is what the
//! engine recorded: each instance's run time, start to exit, against the
//! time one always-on instance runs to serve the same invocations.

mod platform;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, ObsSpec, Observations, ParamSpec};
use crate::catalog::Endpoint;
use crate::exercise::functions::peak;
use crate::stats::{percentile_ms, round2};
use platform::{Outcome, Platform, Record, Scheduler, Settings};

/// The `serverless` exercise.
pub struct Serverless;

/// How long the platform may take to stop its idle instances after the
/// last invocation, beyond the keep-warm time.
const SETTLE_SLACK: Duration = Duration::from_secs(30);

#[async_trait]
impl Exercise for Serverless {
    fn name(&self) -> &'static str {
        "serverless"
    }

    fn summary(&self) -> &'static str {
        "a function whose instances are containers started on demand: cold against warm starts, scale to zero, a concurrency limit that queues or refuses, and the cost in container-seconds against an always-on instance"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["agent"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::text(
                "function",
                "function",
                "the agent service whose containers are the function's instances; the lab's own container of it is the always-on instance",
            ),
            ParamSpec::int("bursts", 1, 10_000, 8, "bursts of invocations"),
            ParamSpec::int("burst", 1, 256, 1, "invocations at once in each burst"),
            ParamSpec::int(
                "gap_ms",
                0,
                600_000,
                500,
                "idle time from the end of one burst to the next",
            ),
            ParamSpec::int(
                "work_ms",
                0,
                60_000,
                20,
                "the handler's work per invocation",
            ),
            ParamSpec::int(
                "keep_warm_ms",
                0,
                3_600_000,
                2_000,
                "idle time after which the platform stops an instance",
            ),
            ParamSpec::flag(
                "scale_to_zero",
                true,
                "whether the platform stops idle instances at all (false: they stay until the end)",
            ),
            ParamSpec::int(
                "pool",
                0,
                64,
                0,
                "instances started before the first invocation and never stopped for idling (provisioned concurrency)",
            ),
            ParamSpec::int("max_instances", 1, 64, 8, "most instances at once"),
            ParamSpec::choice(
                "over_limit",
                &["queue", "refuse"],
                "queue",
                "an invocation that finds the limit reached waits for an instance, or is refused",
            ),
            ParamSpec::choice(
                "scheduler",
                &["reserve", "count-running"],
                "reserve",
                "how the limit is counted: an instance counts once its start is decided, or (broken) once it is running",
            ),
            ParamSpec::flag(
                "reuse",
                true,
                "whether an instance serves more than one invocation (false: a container per invocation)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("invocations", "invocations the function answered"),
                ObsSpec::number("refused", "invocations refused at the limit"),
                ObsSpec::number("failed", "invocations with no answer"),
                ObsSpec::text("error", "the first failure, in words"),
                ObsSpec::number(
                    "cold_starts",
                    "answers from an instance that had served no invocation before (its own counter)",
                ),
                ObsSpec::number(
                    "cold_p50_ms",
                    "median latency of those invocations, arrival to answer",
                ),
                ObsSpec::number("warm_p50_ms", "median latency of the others"),
                ObsSpec::number(
                    "always_on_p50_ms",
                    "median latency of the same invocations on the always-on instance",
                ),
                ObsSpec::number(
                    "engine_start_p50_ms",
                    "median time the engine took to create and start an instance's container",
                ),
                ObsSpec::number(
                    "init_p50_ms",
                    "median time from a container's start to the function's first answer",
                ),
                ObsSpec::number("queued", "invocations that waited for room under the limit"),
                ObsSpec::number("queue_wait_p50_ms", "median time they waited"),
                ObsSpec::number("instances_started", "containers the platform started"),
                ObsSpec::number(
                    "instances_peak",
                    "most instances running at once, from the engine's start and exit times",
                ),
                ObsSpec::number(
                    "reaped",
                    "instances the platform stopped for idling (scale to zero)",
                ),
                ObsSpec::number(
                    "container_s",
                    "the instances' run time, start to exit as the engine recorded it, summed",
                ),
                ObsSpec::number(
                    "always_on_s",
                    "from the first invocation to the last answer: what one always-on instance runs to serve them",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let settings = settings(ctx);
        if settings.pool > settings.max_instances {
            return Err(ExerciseError(format!(
                "`pool` ({}) is more than `max_instances` ({})",
                settings.pool, settings.max_instances
            )));
        }
        let always_on = ctx.instances(&settings.service, "agent", "function")?[0].clone();
        let platform = Arc::new(Platform::new(
            ctx.functions()?.clone(),
            settings,
            ctx.timeline(),
        )?);
        platform.provision().await?;
        let (stop_reaper, stopped) = tokio::sync::watch::channel(false);
        let reaper = tokio::spawn({
            let platform = platform.clone();
            async move { platform.reap(stopped).await }
        });
        let load = workload(ctx, &platform, &always_on).await;
        settle(ctx, &platform).await;
        let _ = stop_reaper.send(true);
        let _ = reaper.await;
        let record = platform.shut_down().await;
        Ok(observe(ctx, load?, record))
    }
}

fn settings(ctx: &Ctx) -> Settings {
    Settings {
        service: ctx.text("function").to_string(),
        work_ms: ctx.int("work_ms") as u64,
        keep_warm: ctx
            .flag("scale_to_zero")
            .then(|| Duration::from_millis(ctx.int("keep_warm_ms") as u64)),
        pool: ctx.int("pool") as usize,
        max_instances: ctx.int("max_instances") as usize,
        queue: ctx.text("over_limit") == "queue",
        scheduler: match ctx.text("scheduler") {
            "count-running" => Scheduler::CountRunning,
            _ => Scheduler::Reserve,
        },
        reuse: ctx.flag("reuse"),
    }
}

/// What the invocations got, on the platform and on the always-on instance.
struct Load {
    outcomes: Vec<Outcome>,
    always_on: Vec<Duration>,
    /// First invocation to last answer.
    window: Duration,
}

/// The bursts, each invocation sent to the platform and to the always-on
/// instance at once.
async fn workload(
    ctx: &Ctx,
    platform: &Platform,
    always_on: &Endpoint,
) -> Result<Load, ExerciseError> {
    let http = crate::client::http::client(Duration::from_secs(60))?;
    let url = format!(
        "{}/delay/{}",
        always_on.url.trim_end_matches('/'),
        ctx.int("work_ms")
    );
    let gap = Duration::from_millis(ctx.int("gap_ms") as u64);
    let began = Instant::now();
    let mut load = Load {
        outcomes: Vec::new(),
        always_on: Vec::new(),
        window: Duration::ZERO,
    };
    for b in 0..ctx.int("bursts") {
        if b > 0 {
            tokio::time::sleep(gap).await;
        }
        let calls = (0..ctx.int("burst")).map(|_| async {
            let on_platform = platform.invoke();
            let on_always_on = async {
                let sent = Instant::now();
                http.get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .doing("invoking the always-on instance")
                    .map(|_| sent.elapsed())
            };
            tokio::join!(on_platform, on_always_on)
        });
        for (outcome, always_on) in join_all(calls).await {
            load.outcomes.push(outcome);
            load.always_on.push(always_on?);
        }
    }
    load.window = began.elapsed();
    Ok(load)
}

/// Waits until the platform has stopped every instance it would stop for
/// idling, so their keep-warm time is in the cost.
async fn settle(ctx: &Ctx, platform: &Platform) {
    let until =
        Instant::now() + Duration::from_millis(ctx.int("keep_warm_ms") as u64) + SETTLE_SLACK;
    while !platform.settled() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn observe(ctx: &Ctx, load: Load, record: Record) -> Observations {
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut waits = Vec::new();
    let (mut refused, mut failed, mut error) = (0, 0, None);
    for outcome in &load.outcomes {
        match outcome {
            Outcome::Answered {
                latency,
                first_on_instance,
                queued,
            } => {
                if *first_on_instance {
                    cold.push(*latency);
                } else {
                    warm.push(*latency);
                }
                waits.extend(*queued);
            }
            Outcome::Refused => refused += 1,
            Outcome::Failed(why) => {
                failed += 1;
                error.get_or_insert_with(|| why.clone());
            }
        }
    }
    if let Some(why) = record.errors.first() {
        error.get_or_insert_with(|| why.clone());
    }
    let mut engine: Vec<Duration> = record.cold_starts.iter().map(|c| c.engine).collect();
    let mut init: Vec<Duration> = record.cold_starts.iter().map(|c| c.init).collect();
    let mut always_on = load.always_on;
    let container_s: f64 = record
        .lifetimes
        .iter()
        .map(|l| l.span().as_secs_f64())
        .sum();
    let peak = peak(&record.lifetimes);
    if peak > ctx.int("max_instances") as usize {
        ctx.evidence(
            "instances_peak",
            format!(
                "{peak} instances ran at once, by the engine's start and exit times, with a limit of {}",
                ctx.int("max_instances")
            ),
        );
    }
    let answered = cold.len() + warm.len();
    let mut obs = Observations::new();
    let mut put = |name: &str, value: Value| {
        obs.insert(name.to_string(), value);
    };
    put("invocations", answered.into());
    put("refused", refused.into());
    put("failed", failed.into());
    put("error", error.into());
    put("cold_starts", cold.len().into());
    put("cold_p50_ms", percentile_ms(&mut cold, 50.0).into());
    put("warm_p50_ms", percentile_ms(&mut warm, 50.0).into());
    put(
        "always_on_p50_ms",
        percentile_ms(&mut always_on, 50.0).into(),
    );
    put(
        "engine_start_p50_ms",
        percentile_ms(&mut engine, 50.0).into(),
    );
    put("init_p50_ms", percentile_ms(&mut init, 50.0).into());
    put("queued", waits.len().into());
    put("queue_wait_p50_ms", percentile_ms(&mut waits, 50.0).into());
    put("instances_started", record.lifetimes.len().into());
    put("instances_peak", peak.into());
    put("reaped", record.reaped.into());
    put("container_s", round2(container_s).into());
    put("always_on_s", round2(load.window.as_secs_f64()).into());
    obs
}
