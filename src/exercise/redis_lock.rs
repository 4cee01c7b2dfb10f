//! `redis-lock`: N workers increment one counter with a non-atomic
//! read-modify-write, guarded (or not) by a Redis lock.
//!
//! Strategies: `none` (no lock: updates are lost), `setnx` (`SET key token NX PX
//! ttl`, released by a script only while the token still matches). A lease
//! shorter than the work (`ttl_ms` < `hold_ms`) lets a second worker in; with
//! `fencing: true` every holder gets an increasing token and the write is
//! refused when a newer holder has written already.
//!
//! Everything counted here is counted by Redis: concurrent holders with
//! INCR/DECR on a gauge key, the counter itself, the fence.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::stats::percentile_ms;

/// The `redis-lock` exercise.
pub struct RedisLock;

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

// The storage side of fencing: every access carries the holder's token, the
// storage remembers the newest token it has seen and refuses older ones. A
// read registers the token too, so a holder whose lease ran out cannot write
// back a value that a newer holder has already read.
const FENCED_READ: &str = r"
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = tonumber(ARGV[1])
if token < newest then return -1 end
redis.call('SET', KEYS[2], token)
return tonumber(redis.call('GET', KEYS[1]) or '0')";

const FENCED_WRITE: &str = r"
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = tonumber(ARGV[2])
if token < newest then return 0 end
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], ARGV[1])
return 1";

#[derive(Default)]
struct WorkerStats {
    acquisitions: u64,
    retries: u64,
    max_holders: i64,
    lock_lost: u64,
    rejected: u64,
    latencies: Vec<Duration>,
}

#[async_trait]
impl Exercise for RedisLock {
    fn name(&self) -> &'static str {
        "redis-lock"
    }

    fn summary(&self) -> &'static str {
        "workers increment a shared Redis counter with read-modify-write, with or without a SET NX PX lock"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int(
                "workers",
                1,
                256,
                8,
                "concurrent workers, each with its own connection",
            ),
            ParamSpec::int("increments", 1, 100_000, 50, "increments per worker"),
            ParamSpec::choice(
                "strategy",
                &["none", "setnx"],
                "setnx",
                "how the critical section is guarded",
            ),
            ParamSpec::int("ttl_ms", 1, 600_000, 5000, "lock lease (PX)"),
            ParamSpec::int(
                "hold_ms",
                0,
                10_000,
                0,
                "work time between reading and writing the counter",
            ),
            ParamSpec::int("retry_ms", 0, 1000, 1, "pause before retrying a busy lock"),
            ParamSpec::flag(
                "fencing",
                false,
                "writes carry a fence token; stale holders are refused",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "final_counter",
                    "counter value read back from Redis at the end",
                ),
                ObsSpec::number("expected_counter", "workers × increments"),
                ObsSpec::number(
                    "lost_updates",
                    "expected_counter − final_counter (fenced rejections excluded)",
                ),
                ObsSpec::number(
                    "max_concurrent_holders",
                    "most workers inside the critical section at once, counted by Redis",
                ),
                ObsSpec::number("acquisitions", "successful lock acquisitions"),
                ObsSpec::number("retries", "failed acquisition attempts"),
                ObsSpec::number(
                    "lock_lost",
                    "releases that found the lease gone or taken by another worker",
                ),
                ObsSpec::number(
                    "fenced_rejections",
                    "increments refused by the storage because a newer fence token had been seen",
                ),
                ObsSpec::number("acquire_p50_ms", "median time to acquire the lock"),
                ObsSpec::number("acquire_p99_ms", "99th percentile time to acquire the lock"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[Milestone::new(
                "holding",
                "a worker holds the lock and is inside the critical section",
            )]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let endpoint = ctx.service("redis")?;
        let client = redis::Client::open(endpoint.url.as_str()).doing("redis url")?;
        let workers = ctx.int("workers");
        let increments = ctx.int("increments");
        let ns = &ctx.namespace;
        let keys = Keys {
            counter: format!("{ns}:counter"),
            lock: format!("{ns}:lock"),
            holders: format!("{ns}:holders"),
            fence: format!("{ns}:fence"),
            last_fence: format!("{ns}:last-fence"),
        };
        let mut setup = client
            .get_multiplexed_async_connection()
            .await
            .doing("connecting to redis")?;
        let _: () = setup
            .set(&keys.counter, 0)
            .await
            .doing("resetting the counter")?;

        ctx.mark("workers-started");
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..workers {
            let conn = client
                .get_multiplexed_async_connection_with_config(&patient())
                .await
                .doing("connecting a worker")?;
            let keys = keys.clone();
            let cfg = Config {
                locked: ctx.text("strategy") == "setnx",
                fencing: ctx.flag("fencing"),
                ttl_ms: ctx.int("ttl_ms") as u64,
                hold: Duration::from_millis(ctx.int("hold_ms") as u64),
                retry: Duration::from_millis(ctx.int("retry_ms") as u64),
                increments,
                token_prefix: format!("w{worker}"),
                // Worker 0 announces its first lock, so a lab can time a fault
                // (`after: holding`) to land while a lease is held.
                announce: (worker == 0).then(|| ctx.timeline()),
            };
            tasks.spawn(async move { work(conn, keys, cfg).await });
        }
        let mut total = WorkerStats::default();
        while let Some(joined) = tasks.join_next().await {
            let stats = joined.map_err(|e| ExerciseError(format!("worker panicked: {e}")))??;
            total.acquisitions += stats.acquisitions;
            total.retries += stats.retries;
            total.max_holders = total.max_holders.max(stats.max_holders);
            total.lock_lost += stats.lock_lost;
            total.rejected += stats.rejected;
            total.latencies.extend(stats.latencies);
        }
        ctx.mark("workers-finished");

        let final_counter: i64 = setup
            .get(&keys.counter)
            .await
            .doing("reading the counter")?;
        let expected = workers * increments;
        let _: () = setup
            .del(&[
                &keys.counter,
                &keys.lock,
                &keys.holders,
                &keys.fence,
                &keys.last_fence,
            ])
            .await
            .doing("cleaning up keys")?;
        let mut lat = total.latencies;
        Ok(Observations::from([
            ("final_counter".into(), Value::from(final_counter)),
            ("expected_counter".into(), Value::from(expected)),
            (
                "lost_updates".into(),
                Value::from(expected - final_counter - total.rejected as i64),
            ),
            (
                "max_concurrent_holders".into(),
                Value::from(total.max_holders),
            ),
            ("acquisitions".into(), Value::from(total.acquisitions)),
            ("retries".into(), Value::from(total.retries)),
            ("lock_lost".into(), Value::from(total.lock_lost)),
            ("fenced_rejections".into(), Value::from(total.rejected)),
            (
                "acquire_p50_ms".into(),
                Value::from(percentile_ms(&mut lat, 50.0)),
            ),
            (
                "acquire_p99_ms".into(),
                Value::from(percentile_ms(&mut lat, 99.0)),
            ),
        ]))
    }
}

/// Workers wait as long as the server stalls (a `pause` fault freezes Redis
/// for seconds); the client's default answer timeout would abort them.
fn patient() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)))
}

#[derive(Clone)]
struct Keys {
    counter: String,
    lock: String,
    holders: String,
    fence: String,
    last_fence: String,
}

struct Config {
    locked: bool,
    fencing: bool,
    ttl_ms: u64,
    hold: Duration,
    retry: Duration,
    increments: i64,
    token_prefix: String,
    announce: Option<super::Timeline>,
}

async fn work(
    mut conn: redis::aio::MultiplexedConnection,
    keys: Keys,
    cfg: Config,
) -> Result<WorkerStats, ExerciseError> {
    let mut stats = WorkerStats::default();
    let release = redis::Script::new(RELEASE);
    let fenced_read = redis::Script::new(FENCED_READ);
    let fenced_write = redis::Script::new(FENCED_WRITE);
    for i in 0..cfg.increments {
        let token = format!("{}-{i}", cfg.token_prefix);
        if cfg.locked {
            let started = Instant::now();
            loop {
                let got: Option<String> = redis::cmd("SET")
                    .arg(&keys.lock)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(cfg.ttl_ms)
                    .query_async(&mut conn)
                    .await
                    .doing("acquiring the lock")?;
                if got.is_some() {
                    break;
                }
                stats.retries += 1;
                tokio::time::sleep(cfg.retry).await;
            }
            stats.latencies.push(started.elapsed());
            stats.acquisitions += 1;
            if let Some(timeline) = cfg.announce.as_ref().filter(|_| i == 0) {
                timeline.record("exercise", "holding");
            }
        }
        let fence: i64 = if cfg.fencing {
            conn.incr(&keys.fence, 1)
                .await
                .doing("taking a fence token")?
        } else {
            0
        };
        let holders: i64 = conn.incr(&keys.holders, 1).await.doing("entering")?;
        stats.max_holders = stats.max_holders.max(holders);

        // The critical section: read, work, write back.
        let value: i64 = if cfg.fencing {
            fenced_read
                .key(&keys.counter)
                .key(&keys.last_fence)
                .arg(fence)
                .invoke_async(&mut conn)
                .await
                .doing("fenced read")?
        } else {
            conn.get(&keys.counter).await.doing("reading the counter")?
        };
        if !cfg.hold.is_zero() {
            tokio::time::sleep(cfg.hold).await;
        }
        if value < 0 {
            // A newer holder has already been at the storage: give up this increment.
            stats.rejected += 1;
        } else if cfg.fencing {
            let written: i64 = fenced_write
                .key(&keys.counter)
                .key(&keys.last_fence)
                .arg(value + 1)
                .arg(fence)
                .invoke_async(&mut conn)
                .await
                .doing("fenced write")?;
            stats.rejected += u64::from(written == 0);
        } else {
            let _: () = conn
                .set(&keys.counter, value + 1)
                .await
                .doing("writing the counter")?;
        }

        let _: i64 = conn.decr(&keys.holders, 1).await.doing("leaving")?;
        if cfg.locked {
            let released: i64 = release
                .key(&keys.lock)
                .arg(&token)
                .invoke_async(&mut conn)
                .await
                .doing("releasing the lock")?;
            stats.lock_lost += u64::from(released == 0);
        }
    }
    Ok(stats)
}
