//! `replica-reads`: read-your-writes against asynchronous Redis replicas.
//!
//! A probe client writes a new version of one key to the primary and, once
//! the primary has acknowledged it (after `WAIT` too, when asked), reads it
//! back at once from a replica (each in turn) or from the primary. A read
//! that returns an older version is stale: the probe then polls that replica
//! until the version shows, timing how long after the acknowledgement it
//! stayed stale. Background writers keep the primary busy meanwhile, so the
//! replication stream has a queue, as a production primary's does.
//!
//! At the end the writers stop, and one more write with `WAIT` for every
//! replica measures how long until all of them have the whole stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::redis as client;
use crate::stats::{percentile_ms, ratio, round2, round4};

/// Recorded after the probe's first acknowledged write.
pub const WRITING: &str = "writing";

/// How long a stale replica may take to show a version before the probe
/// gives up on it.
const STALE_DEADLINE: Duration = Duration::from_secs(10);

/// How long the replicas may take to catch up at the end.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(20);

/// Keys each background writer cycles through (bounds the memory used).
const BACKGROUND_KEYS: u64 = 1000;

/// The `replica-reads` exercise.
pub struct ReplicaReads;

#[async_trait]
impl Exercise for ReplicaReads {
    fn name(&self) -> &'static str {
        "replica-reads"
    }

    fn summary(&self) -> &'static str {
        "read-your-writes against asynchronous Redis replicas: stale reads and how long they last, WAIT, and a replica that falls behind"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::text("primary", "primary", "the primary: a redis service"),
            ParamSpec::text(
                "replicas",
                "replica",
                "the replicas: a redis service with `REDIS_REPLICA_OF` set to the primary",
            ),
            ParamSpec::choice(
                "read_from",
                &["replica", "primary"],
                "replica",
                "where the probe reads its own write back",
            ),
            ParamSpec::choice(
                "wait",
                &["none", "one", "all"],
                "none",
                "after each write, `WAIT` for no replica, one, or every replica of the lab",
            ),
            ParamSpec::int(
                "wait_timeout_ms",
                1,
                60_000,
                1_000,
                "how long `WAIT` may block before it returns with fewer replicas",
            ),
            ParamSpec::int(
                "writes",
                1,
                100_000,
                300,
                "probe writes (each read back once)",
            ),
            ParamSpec::int("interval_ms", 0, 1_000, 2, "pause between probe writes"),
            ParamSpec::int(
                "load_writers",
                0,
                32,
                2,
                "background writers keeping the primary busy",
            ),
            ParamSpec::int(
                "value_bytes",
                1,
                1_000_000,
                2_000,
                "size of each background value",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "replicas",
                    "replicas connected to the primary at the start (its INFO)",
                ),
                ObsSpec::number("acked_writes", "probe writes the primary acknowledged"),
                ObsSpec::number("reads", "probe reads of its own write"),
                ObsSpec::number(
                    "stale_reads",
                    "reads that returned an older version than the probe had just written",
                ),
                ObsSpec::number("stale_rate", "stale_reads ÷ reads"),
                ObsSpec::number(
                    "stale_for_p50_ms",
                    "median time from a write's acknowledgement until the replica that read stale showed it",
                ),
                ObsSpec::number("stale_for_max_ms", "the longest such time"),
                ObsSpec::number("write_p50_ms", "median probe write latency, WAIT included"),
                ObsSpec::number("write_p99_ms", "99th percentile of the same"),
                ObsSpec::number(
                    "wait_short",
                    "writes whose WAIT timed out with fewer replicas than asked for",
                ),
                ObsSpec::number("background_writes", "writes of the background writers"),
                ObsSpec::flag(
                    "caught_up",
                    "at the end, every replica acknowledged the primary's whole stream",
                ),
                ObsSpec::number("catch_up_ms", "how long that took once the writers stopped"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[Milestone::new(
                WRITING,
                "the probe's first write was acknowledged",
            )]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let primary = ctx.instances(ctx.text("primary"), "redis", "primary")?[0];
        let replicas = ctx.instances(ctx.text("replicas"), "redis", "replicas")?;
        let mut probe = client::connect_patient(primary).await?;
        let connected = client::replication(&mut probe).await?.replica_offsets.len();
        let mut readers = Vec::new();
        for r in &replicas {
            readers.push(client::connect_patient(r).await?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let background = spawn_background(ctx, primary, &stop).await?;

        let probed = probe_writes(ctx, &mut probe, &mut readers, replicas.len()).await;
        stop.store(true, Ordering::SeqCst);
        let background_writes = background.finish().await;
        let catch_up = catch_up(primary, replicas.len()).await?;
        client::delete_namespace(&mut probe, &ctx.namespace).await?;
        let mut probed = probed?;

        let mut obs = probed.observe();
        obs.insert("replicas".into(), Value::from(connected));
        obs.insert("background_writes".into(), Value::from(background_writes?));
        obs.insert("caught_up".into(), Value::from(catch_up.is_some()));
        obs.insert("catch_up_ms".into(), Value::from(catch_up.map(round2)));
        Ok(obs)
    }
}

/// What the probe saw.
#[derive(Default)]
struct Probe {
    writes: u64,
    reads: u64,
    stale_for: Vec<Duration>,
    write_latency: Vec<Duration>,
    wait_short: u64,
}

impl Probe {
    fn observe(&mut self) -> Observations {
        let stale = self.stale_for.len();
        Observations::from([
            ("acked_writes".into(), Value::from(self.writes)),
            ("reads".into(), Value::from(self.reads)),
            ("stale_reads".into(), Value::from(stale)),
            (
                "stale_rate".into(),
                Value::from(ratio(stale as f64, self.reads as f64).map(round4)),
            ),
            (
                "stale_for_p50_ms".into(),
                Value::from(percentile_ms(&mut self.stale_for, 50.0).map(round2)),
            ),
            (
                "stale_for_max_ms".into(),
                Value::from(percentile_ms(&mut self.stale_for, 100.0).map(round2)),
            ),
            (
                "write_p50_ms".into(),
                Value::from(percentile_ms(&mut self.write_latency, 50.0).map(round2)),
            ),
            (
                "write_p99_ms".into(),
                Value::from(percentile_ms(&mut self.write_latency, 99.0).map(round2)),
            ),
            ("wait_short".into(), Value::from(self.wait_short)),
        ])
    }
}

/// The probe: write a version, (WAIT,) read it back, time a stale read.
async fn probe_writes(
    ctx: &Ctx,
    primary: &mut MultiplexedConnection,
    replicas: &mut [MultiplexedConnection],
    replica_count: usize,
) -> Result<Probe, ExerciseError> {
    let key = format!("{}:probe", ctx.namespace);
    let wait_for = match ctx.text("wait") {
        "one" => 1,
        "all" => replica_count as i64,
        _ => 0,
    };
    let wait_timeout = ctx.int("wait_timeout_ms");
    let from_replica = ctx.text("read_from") == "replica";
    let interval = Duration::from_millis(ctx.int("interval_ms") as u64);
    let mut p = Probe::default();
    for version in 1..=ctx.int("writes") {
        let sent = Instant::now();
        let _: () = primary.set(&key, version).await.doing("probe SET")?;
        if wait_for > 0 {
            let acked: i64 = redis::cmd("WAIT")
                .arg(wait_for)
                .arg(wait_timeout)
                .query_async(primary)
                .await
                .doing("WAIT")?;
            p.wait_short += u64::from(acked < wait_for);
        }
        let acked_at = Instant::now();
        p.write_latency.push(acked_at - sent);
        p.writes += 1;
        if version == 1 {
            ctx.mark(WRITING);
        }
        let reader = if from_replica {
            &mut replicas[(version as usize - 1) % replicas.len()]
        } else {
            &mut *primary
        };
        p.reads += 1;
        if read_version(reader, &key).await? < version {
            until_version(reader, &key, version).await?;
            p.stale_for.push(acked_at.elapsed());
        }
        tokio::time::sleep(interval).await;
    }
    Ok(p)
}

/// The version a GET returns (0: the key is not there yet).
async fn read_version(conn: &mut MultiplexedConnection, key: &str) -> Result<i64, ExerciseError> {
    let v: Option<i64> = conn.get(key).await.doing("probe GET")?;
    Ok(v.unwrap_or(0))
}

/// Polls until the replica shows `version`.
async fn until_version(
    conn: &mut MultiplexedConnection,
    key: &str,
    version: i64,
) -> Result<(), ExerciseError> {
    let deadline = Instant::now() + STALE_DEADLINE;
    while read_version(conn, key).await? < version {
        if Instant::now() > deadline {
            return Err(ExerciseError(format!(
                "a replica still lacked version {version} of the probe key {} s after the primary acknowledged it",
                STALE_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Background writers, each on its own connection, until `stop`.
struct Background(Vec<tokio::task::JoinHandle<Result<u64, ExerciseError>>>);

async fn spawn_background(
    ctx: &Ctx,
    primary: &crate::catalog::Endpoint,
    stop: &Arc<AtomicBool>,
) -> Result<Background, ExerciseError> {
    let value = Arc::new("x".repeat(ctx.int("value_bytes") as usize));
    let mut handles = Vec::new();
    for w in 0..ctx.int("load_writers") {
        let mut conn = client::connect(primary).await?;
        let (stop, value) = (stop.clone(), value.clone());
        let prefix = format!("{}:bg:{w}", ctx.namespace);
        handles.push(tokio::spawn(async move {
            let mut written = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("{prefix}:{}", written % BACKGROUND_KEYS);
                let _: () = conn
                    .set(key, value.as_str())
                    .await
                    .doing("background SET")?;
                written += 1;
            }
            Ok(written)
        }));
    }
    Ok(Background(handles))
}

impl Background {
    /// Total writes, once every writer stopped.
    async fn finish(self) -> Result<u64, ExerciseError> {
        let mut total = 0;
        for h in self.0 {
            total += h
                .await
                .map_err(|e| ExerciseError(format!("a background writer crashed: {e}")))??;
        }
        Ok(total)
    }
}

/// One write, then `WAIT` for every replica: the time until all of them have
/// the primary's whole stream, or `None` when they do not within the deadline.
async fn catch_up(
    primary: &crate::catalog::Endpoint,
    replicas: usize,
) -> Result<Option<f64>, ExerciseError> {
    let mut conn = client::connect_patient(primary).await?;
    let started = Instant::now();
    let _: () = conn
        .set("infralab:catch-up", 1)
        .await
        .doing("catch-up SET")?;
    let acked: i64 = redis::cmd("WAIT")
        .arg(replicas)
        .arg(CATCH_UP_DEADLINE.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .doing("catch-up WAIT")?;
    let _: () = conn.del("infralab:catch-up").await.doing("catch-up DEL")?;
    Ok((acked >= replicas as i64).then(|| started.elapsed().as_secs_f64() * 1000.0))
}
