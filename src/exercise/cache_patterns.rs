//! `cache-patterns`: Redis in front of a PostgreSQL product table, written and
//! read under three caching strategies.
//!
//! A `products` table (id, version) lives in PostgreSQL; the cache holds each
//! product's version under a namespaced Redis key. Every strategy starts with
//! an empty cache and reads the same way: readers pick products with a skewed
//! distribution (`hot_pct` percent of accesses go to the first `hot_keys`
//! products), read Redis, and on a miss read the database and fill the cache
//! (`SET NX`). Writers bump a product's version; strategies differ only there:
//!
//! - `cache-aside`: update the database (commit), then delete the cache entry.
//! - `write-through`: update the database (commit), then set the cache. With
//!   `cache_set: before-commit` the cache is set while the transaction is
//!   still open (the classic bug: readers get a version that may never
//!   commit). Two writers can commit in one order and set the cache in the
//!   other (`set_delay_ms` widens that window): the cache then trails the
//!   database until the next write of that product.
//! - `write-behind`: a write bumps the version in Redis only and marks the
//!   product dirty (one atomic script); a flusher takes the dirty set every
//!   `flush_ms` and writes it to the database in one transaction, so many
//!   writes of one product become one database write. What it risks is the
//!   cache node itself: a Redis without persistence that dies takes every
//!   acknowledged write not yet flushed with it (the lab kills it).
//!
//! Measured on the services: database reads and writes are counted by
//! PostgreSQL (a counter row per reader, bumped by the same statement that
//! reads the product; `writes` and `applied` columns bumped by every update),
//! and every cache hit is compared with what PostgreSQL had committed just
//! before Redis was asked (older: stale) and just after it answered (newer:
//! a version that was not committed yet).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use super::{
    Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec, Timeline,
};
use crate::client::postgres::{connect, drop_tables, table_name};
use crate::stats::{join_workers, pacer, percentile_ms, ratio, round2};

/// The `cache-patterns` exercise.
pub struct CachePatterns;

/// A write-behind write: bump the cached version, remember the product as
/// dirty with its newest version, how many writes it folds and when it first
/// became dirty. A product Redis does not hold (a cache that restarted empty)
/// returns nil: the writer loads the committed version first.
const WRITE_BEHIND: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], v)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[2])
return v";

/// The flusher takes the whole dirty set atomically.
const TAKE_DIRTY: &str = r"
local r = {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return r";

/// How long the exercise waits for a dead Redis to come back.
const REDIS_BACK_WITHIN: Duration = Duration::from_secs(60);

#[async_trait]
impl Exercise for CachePatterns {
    fn name(&self) -> &'static str {
        "cache-patterns"
    }

    fn summary(&self) -> &'static str {
        "readers and writers on a PostgreSQL product table behind a Redis cache: cache-aside, write-through, write-behind"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis", "postgres"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "strategy",
                &["cache-aside", "write-through", "write-behind"],
                "cache-aside",
                "how writes use the cache (reads are the same for all)",
            ),
            ParamSpec::int("products", 1, 1_000_000, 2000, "rows in the product table"),
            ParamSpec::int(
                "hot_keys",
                1,
                1_000_000,
                20,
                "products in the hot set (the first ones)",
            ),
            ParamSpec::int(
                "hot_pct",
                0,
                100,
                90,
                "percent of reads and writes that go to the hot set (0: uniform)",
            ),
            ParamSpec::int(
                "readers",
                1,
                64,
                4,
                "concurrent readers, each with its own connections",
            ),
            ParamSpec::int("reads", 1, 1_000_000, 1000, "reads per reader"),
            ParamSpec::int("writers", 1, 64, 1, "concurrent writers"),
            ParamSpec::int("writes", 1, 1_000_000, 300, "writes per writer"),
            ParamSpec::int(
                "write_every_ms",
                0,
                10_000,
                2,
                "a writer's pace: one write every so many ms, without catch-up bursts (0: back to back)",
            ),
            ParamSpec::int(
                "fill_delay_ms",
                0,
                10_000,
                0,
                "a slow reader's pause between reading the database on a miss and filling the cache",
            ),
            ParamSpec::int(
                "fail_every",
                0,
                1_000_000,
                0,
                "cache-aside, write-through: every Nth write of a writer fails before its COMMIT and is rolled back (0: never)",
            ),
            ParamSpec::choice(
                "cache_set",
                &["after-commit", "before-commit"],
                "after-commit",
                "write-through: set the cache after the COMMIT, or (the bug) inside the open transaction",
            ),
            ParamSpec::int(
                "set_delay_ms",
                0,
                10_000,
                0,
                "write-through: a random pause, up to this, between a writer's COMMIT and its cache set (a GC pause, a slow network)",
            ),
            ParamSpec::int(
                "flush_ms",
                1,
                60_000,
                100,
                "write-behind: how often the flusher writes the dirty set to the database",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("reads_done", "reads done by all readers"),
                ObsSpec::number("writes_acked", "writes acknowledged to the writers"),
                ObsSpec::number(
                    "failed_writes",
                    "writes whose transaction was rolled back (`fail_every`), not acknowledged",
                ),
                ObsSpec::number("hit_ratio", "reads answered by Redis ÷ reads"),
                ObsSpec::number(
                    "db_reads",
                    "reads that went to PostgreSQL on a miss (counted by PostgreSQL)",
                ),
                ObsSpec::number(
                    "db_writes",
                    "row updates PostgreSQL applied (its `writes` column)",
                ),
                ObsSpec::number(
                    "coalesced",
                    "writes − db_writes: acknowledged writes folded into another database write (or lost)",
                ),
                ObsSpec::number(
                    "stale_reads",
                    "cache hits older than the version PostgreSQL had committed before Redis was asked",
                ),
                ObsSpec::number(
                    "ahead_reads",
                    "cache hits newer than the version PostgreSQL had committed after Redis answered (not committed yet, or never)",
                ),
                ObsSpec::number(
                    "phantoms_at_end",
                    "products whose cached version is newer than the database's once everything settled",
                ),
                ObsSpec::number(
                    "stale_at_end",
                    "products whose cached version is older than the database's once everything settled",
                ),
                ObsSpec::number(
                    "cache_regressions",
                    "write-through cache sets that replaced a newer version with an older one (Redis's SET … GET answer)",
                ),
                ObsSpec::number(
                    "lost_writes",
                    "acknowledged writes PostgreSQL never applied (writes − Σ its `applied` column, after the last flush)",
                ),
                ObsSpec::number(
                    "cache_errors",
                    "Redis commands that failed (the cache was down); each is retried on a new connection",
                ),
                ObsSpec::number(
                    "read_p50_ms",
                    "median read (cache, and database + fill on a miss)",
                ),
                ObsSpec::number("read_p99_ms", "99th percentile read"),
                ObsSpec::number(
                    "write_p50_ms",
                    "median write, until acknowledged to the writer",
                ),
                ObsSpec::number("write_p99_ms", "99th percentile write"),
                ObsSpec::number(
                    "db_lag_ms",
                    "write-behind: longest time a product stayed dirty in Redis before its database commit",
                ),
                ObsSpec::number(
                    "db_lag_p50_ms",
                    "write-behind: median of that time per flushed product",
                ),
                ObsSpec::number(
                    "flushes",
                    "write-behind: flusher transactions that wrote something",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("workers-started", "readers and writers start"),
                Milestone::new(
                    "half-written",
                    "half of all writes have been acknowledged to the writers",
                ),
                Milestone::new(
                    "cache-lost",
                    "a worker saw a Redis command fail for the first time (the cache is down)",
                ),
                Milestone::new("workers-finished", "every reader and writer ended"),
                Milestone::new(
                    "flushed",
                    "write-behind: the last flush after the writers ended is committed",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let redis_url = ctx.service("redis")?.url.clone();
        let pg_url = ctx.service("postgres")?.url.clone();
        let cfg = Arc::new(Config::new(ctx, redis_url)?);
        let db = connect(&pg_url).await.doing("connecting to postgres")?;
        create_tables(&db, &cfg, ctx.int("readers")).await?;

        let shared = Arc::new(Shared::default());
        let writing = Arc::new(AtomicBool::new(true));
        let flusher = match cfg.strategy {
            Strategy::WriteBehind => Some(tokio::spawn(flush_loop(
                cfg.clone(),
                connect(&pg_url).await.doing("connecting the flusher")?,
                shared.clone(),
                writing.clone(),
                Duration::from_millis(ctx.int("flush_ms") as u64),
                ctx.timeline(),
            ))),
            _ => None,
        };
        let (read, write_lat) = run_workers(ctx, &cfg, &pg_url, &shared).await?;
        writing.store(false, Ordering::SeqCst);
        let flushed = match flusher {
            Some(task) => {
                let stats = task
                    .await
                    .map_err(|e| ExerciseError(format!("flusher panicked: {e}")))??;
                ctx.mark("flushed");
                stats
            }
            None => FlushStats::default(),
        };
        let settled = read_back(&db, &cfg).await?;
        clean_up(&db, &cfg).await?;
        Ok(observe(read, write_lat, flushed, &settled, &shared))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strategy {
    CacheAside,
    WriteThrough,
    WriteBehind,
}

struct Names {
    table: String,
    counters: String,
    prefix: String,
    dirty: String,
    folded: String,
    since: String,
}

impl Names {
    fn new(namespace: &str) -> Self {
        Names {
            table: table_name("products", namespace),
            counters: table_name("db_reads", namespace),
            prefix: format!("{namespace}:product:"),
            dirty: format!("{namespace}:dirty"),
            folded: format!("{namespace}:dirty-writes"),
            since: format!("{namespace}:dirty-since"),
        }
    }

    fn key(&self, id: i64) -> String {
        format!("{}{id}", self.prefix)
    }
}

struct Config {
    strategy: Strategy,
    products: i64,
    hot_keys: i64,
    hot_pct: u64,
    reads: i64,
    writes: i64,
    writers: i64,
    write_every: Duration,
    fill_delay: Duration,
    fail_every: i64,
    set_before_commit: bool,
    set_delay_ms: u64,
    names: Names,
    redis: redis::Client,
    base: Instant,
}

impl Config {
    fn new(ctx: &Ctx, redis_url: String) -> Result<Self, ExerciseError> {
        let products = ctx.int("products");
        Ok(Config {
            strategy: match ctx.text("strategy") {
                "write-through" => Strategy::WriteThrough,
                "write-behind" => Strategy::WriteBehind,
                _ => Strategy::CacheAside,
            },
            products,
            hot_keys: ctx.int("hot_keys").min(products),
            hot_pct: ctx.int("hot_pct") as u64,
            reads: ctx.int("reads"),
            writes: ctx.int("writes"),
            writers: ctx.int("writers"),
            write_every: Duration::from_millis(ctx.int("write_every_ms") as u64),
            fill_delay: Duration::from_millis(ctx.int("fill_delay_ms") as u64),
            fail_every: ctx.int("fail_every"),
            set_before_commit: ctx.text("cache_set") == "before-commit",
            set_delay_ms: ctx.int("set_delay_ms") as u64,
            names: Names::new(&ctx.namespace),
            redis: redis::Client::open(redis_url.as_str()).doing("redis url")?,
            base: Instant::now(),
        })
    }

    /// A product id: `hot_pct` percent of the time from the hot set.
    fn pick(&self, rng: &mut Rng) -> i64 {
        if rng.below(100) < self.hot_pct {
            rng.below(self.hot_keys as u64) as i64
        } else {
            rng.below(self.products as u64) as i64
        }
    }

    /// A new connection to Redis. Replies may take long on a busy machine
    /// (a timed-out write would be retried and counted twice); a dead Redis
    /// shows as a closed connection, not as a timeout.
    async fn redis(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        self.redis
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// Counters all workers share.
#[derive(Default)]
struct Shared {
    acknowledged: AtomicU64,
    failed: AtomicU64,
    cache_errors: AtomicU64,
    regressions: AtomicU64,
    cache_lost: AtomicBool,
}

impl Shared {
    /// A Redis command failed: count it, say so once on the timeline, and
    /// wait for a connection that answers PING again.
    async fn cache_failed(
        &self,
        cfg: &Config,
        timeline: &Timeline,
        err: redis::RedisError,
    ) -> Result<MultiplexedConnection, ExerciseError> {
        self.cache_errors.fetch_add(1, Ordering::SeqCst);
        if !self.cache_lost.swap(true, Ordering::SeqCst) {
            tracing::debug!("redis failed: {err}");
            timeline.record("exercise", "cache-lost");
        }
        let deadline = Instant::now() + REDIS_BACK_WITHIN;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(mut conn) = cfg.redis().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(conn);
                }
            }
            if Instant::now() > deadline {
                return Err(ExerciseError(format!(
                    "redis did not come back within {REDIS_BACK_WITHIN:?} after: {err}"
                )));
            }
        }
    }
}

/// The product table (every product at version 1) and one read counter per reader.
async fn create_tables(
    db: &tokio_postgres::Client,
    cfg: &Config,
    readers: i64,
) -> Result<(), ExerciseError> {
    let Names {
        table, counters, ..
    } = &cfg.names;
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}, {counters};
         CREATE TABLE {table} (id int PRIMARY KEY, version bigint NOT NULL,
                               writes bigint NOT NULL DEFAULT 0, applied bigint NOT NULL DEFAULT 0);
         INSERT INTO {table} (id, version) SELECT g, 1 FROM generate_series(0, {last}) g;
         CREATE TABLE {counters} (reader int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO {counters} SELECT g, 0 FROM generate_series(0, {readers}) g;",
        last = cfg.products - 1,
    ))
    .await
    .doing("creating the product table")
}

/// Readers and writers, all connected before any starts; returns the
/// readers' statistics and the acknowledged writes' latencies.
async fn run_workers(
    ctx: &Ctx,
    cfg: &Arc<Config>,
    pg_url: &str,
    shared: &Arc<Shared>,
) -> Result<(ReadStats, Vec<Duration>), ExerciseError> {
    let mut readers = Vec::new();
    for r in 0..ctx.int("readers") {
        let conn = cfg.redis().await.doing("connecting a reader")?;
        let rdb = connect(pg_url).await.doing("connecting a reader")?;
        let check = connect(pg_url).await.doing("connecting a reader")?;
        readers.push((conn, rdb, check, r as i32));
    }
    let mut writers = Vec::new();
    for w in 0..cfg.writers {
        let conn = cfg.redis().await.doing("connecting a writer")?;
        let wdb = connect(pg_url).await.doing("connecting a writer")?;
        writers.push((conn, wdb, w as u64));
    }
    ctx.mark("workers-started");
    let reader_tasks = readers
        .into_iter()
        .map(|(conn, rdb, check, r)| {
            let (cfg, shared, tl) = (cfg.clone(), shared.clone(), ctx.timeline());
            tokio::spawn(read_loop(conn, rdb, check, cfg, shared, tl, r))
        })
        .collect();
    let writer_tasks = writers
        .into_iter()
        .map(|(conn, wdb, w)| {
            let (cfg, shared, tl) = (cfg.clone(), shared.clone(), ctx.timeline());
            tokio::spawn(write_loop(conn, wdb, cfg, shared, tl, w))
        })
        .collect();
    let write_lat: Vec<Duration> = join_workers(writer_tasks)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let mut read = ReadStats::default();
    for s in join_workers(reader_tasks).await? {
        read.add(s);
    }
    ctx.mark("workers-finished");
    Ok((read, write_lat))
}

/// What PostgreSQL and Redis hold once the workers (and the flusher) ended.
struct Settled {
    db_reads: i64,
    db_writes: i64,
    applied: i64,
    phantoms: u64,
    stale: u64,
}

async fn read_back(db: &tokio_postgres::Client, cfg: &Config) -> Result<Settled, ExerciseError> {
    let Names {
        table, counters, ..
    } = &cfg.names;
    let row = db
        .query_one(
            &format!(
                "SELECT (SELECT coalesce(sum(n), 0)::bigint FROM {counters}),
                        (SELECT coalesce(sum(writes), 0)::bigint FROM {table}),
                        (SELECT coalesce(sum(applied), 0)::bigint FROM {table})"
            ),
            &[],
        )
        .await
        .doing("reading the database counters")?;
    let versions = db
        .query(&format!("SELECT id, version FROM {table} ORDER BY id"), &[])
        .await
        .doing("reading the product versions")?;
    let mut pipe = redis::pipe();
    for id in 0..cfg.products {
        pipe.get(cfg.names.key(id));
    }
    let mut conn = cfg.redis().await.doing("connecting to redis")?;
    let cached: Vec<Option<i64>> = pipe
        .query_async(&mut conn)
        .await
        .doing("reading the cache back")?;
    let (mut phantoms, mut stale) = (0, 0);
    for r in &versions {
        let (id, version): (i32, i64) = (r.get(0), r.get(1));
        match cached.get(id as usize).copied().flatten() {
            Some(c) if c > version => phantoms += 1,
            Some(c) if c < version => stale += 1,
            _ => {}
        }
    }
    Ok(Settled {
        db_reads: row.get(0),
        db_writes: row.get(1),
        applied: row.get(2),
        phantoms,
        stale,
    })
}

/// The tables and every key of the scenario.
async fn clean_up(db: &tokio_postgres::Client, cfg: &Config) -> Result<(), ExerciseError> {
    drop_tables(db, &[&cfg.names.table, &cfg.names.counters])
        .await
        .doing("dropping the tables")?;
    let mut pipe = redis::pipe();
    for id in 0..cfg.products {
        pipe.del(cfg.names.key(id)).ignore();
    }
    for k in [&cfg.names.dirty, &cfg.names.folded, &cfg.names.since] {
        pipe.del(k).ignore();
    }
    let mut conn = cfg.redis().await.doing("connecting to redis")?;
    pipe.query_async::<()>(&mut conn)
        .await
        .doing("deleting the cache keys")
}

fn observe(
    read: ReadStats,
    mut write_lat: Vec<Duration>,
    flushed: FlushStats,
    settled: &Settled,
    shared: &Shared,
) -> Observations {
    let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
    let writes = get(&shared.acknowledged) as i64;
    let mut lags = flushed.lags;
    let lag_max = lags.iter().max().map(|d| round2(d.as_secs_f64() * 1000.0));
    let mut rl = read.latencies;
    Observations::from([
        ("reads_done".into(), Value::from(read.reads)),
        ("writes_acked".into(), Value::from(writes)),
        ("failed_writes".into(), Value::from(get(&shared.failed))),
        (
            "hit_ratio".into(),
            Value::from(ratio(read.hits as f64, read.reads as f64)),
        ),
        ("db_reads".into(), Value::from(settled.db_reads)),
        ("db_writes".into(), Value::from(settled.db_writes)),
        ("coalesced".into(), Value::from(writes - settled.db_writes)),
        ("stale_reads".into(), Value::from(read.stale)),
        ("ahead_reads".into(), Value::from(read.ahead)),
        ("phantoms_at_end".into(), Value::from(settled.phantoms)),
        ("stale_at_end".into(), Value::from(settled.stale)),
        (
            "cache_regressions".into(),
            Value::from(get(&shared.regressions)),
        ),
        ("lost_writes".into(), Value::from(writes - settled.applied)),
        (
            "cache_errors".into(),
            Value::from(get(&shared.cache_errors)),
        ),
        (
            "read_p50_ms".into(),
            Value::from(percentile_ms(&mut rl, 50.0)),
        ),
        (
            "read_p99_ms".into(),
            Value::from(percentile_ms(&mut rl, 99.0)),
        ),
        (
            "write_p50_ms".into(),
            Value::from(percentile_ms(&mut write_lat, 50.0)),
        ),
        (
            "write_p99_ms".into(),
            Value::from(percentile_ms(&mut write_lat, 99.0)),
        ),
        ("db_lag_ms".into(), Value::from(lag_max)),
        (
            "db_lag_p50_ms".into(),
            Value::from(percentile_ms(&mut lags, 50.0)),
        ),
        ("flushes".into(), Value::from(flushed.flushes)),
    ])
}

/// A small xorshift generator: each worker has its own, seeded apart.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n.max(1)
    }
}

#[derive(Default)]
struct ReadStats {
    reads: u64,
    hits: u64,
    stale: u64,
    ahead: u64,
    latencies: Vec<Duration>,
}

impl ReadStats {
    fn add(&mut self, other: ReadStats) {
        self.reads += other.reads;
        self.hits += other.hits;
        self.stale += other.stale;
        self.ahead += other.ahead;
        self.latencies.extend(other.latencies);
    }
}

/// One reader: cache first, the database on a miss, then fill the cache.
/// Each hit is compared with what PostgreSQL had committed before Redis was
/// asked (older: stale) and after it answered (newer: not committed yet).
async fn read_loop(
    mut conn: MultiplexedConnection,
    db: tokio_postgres::Client,
    check: tokio_postgres::Client,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    timeline: Timeline,
    reader: i32,
) -> Result<ReadStats, ExerciseError> {
    let Names {
        table, counters, ..
    } = &cfg.names;
    let miss = db
        .prepare(&format!(
            "WITH bump AS (UPDATE {counters} SET n = n + 1 WHERE reader = $2)
             SELECT version FROM {table} WHERE id = $1"
        ))
        .await
        .doing("preparing the miss read")?;
    let committed = check
        .prepare(&format!("SELECT version FROM {table} WHERE id = $1"))
        .await
        .doing("preparing the staleness check")?;
    let truth = |id: i64| {
        let (check, committed) = (&check, &committed);
        async move {
            check
                .query_one(committed, &[&(id as i32)])
                .await
                .map(|r| r.get::<_, i64>(0))
                .doing("checking the committed version")
        }
    };
    let mut rng = Rng::new(1000 + reader as u64);
    let mut stats = ReadStats::default();
    let mut done = 0;
    while done < cfg.reads {
        let id = cfg.pick(&mut rng);
        let key = cfg.names.key(id);
        let before = truth(id).await?;
        let started = Instant::now();
        let cached: Option<i64> = match conn.get(&key).await {
            Ok(c) => c,
            Err(e) => {
                conn = shared.cache_failed(&cfg, &timeline, e).await?;
                continue;
            }
        };
        match cached {
            Some(v) => {
                stats.latencies.push(started.elapsed());
                stats.hits += 1;
                stats.stale += u64::from(v < before);
                stats.ahead += u64::from(v > truth(id).await?);
            }
            None => {
                let v: i64 = db
                    .query_one(&miss, &[&(id as i32), &reader])
                    .await
                    .doing("reading the database on a miss")?
                    .get(0);
                if !cfg.fill_delay.is_zero() {
                    tokio::time::sleep(cfg.fill_delay).await;
                }
                // NX: never overwrite what a writer has put there meanwhile
                // (it does not help after a cache-aside delete).
                if let Err(e) = conn.set_nx::<_, _, bool>(&key, v).await {
                    conn = shared.cache_failed(&cfg, &timeline, e).await?;
                }
                stats.latencies.push(started.elapsed());
            }
        }
        stats.reads += 1;
        done += 1;
    }
    Ok(stats)
}

/// One writer, paced (no catch-up burst after a stall); returns the latency
/// of each acknowledged write.
async fn write_loop(
    mut conn: MultiplexedConnection,
    mut db: tokio_postgres::Client,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    timeline: Timeline,
    writer: u64,
) -> Result<Vec<Duration>, ExerciseError> {
    let table = &cfg.names.table;
    let update = db
        .prepare(&format!(
            "UPDATE {table} SET version = version + 1, writes = writes + 1, applied = applied + 1
             WHERE id = $1 RETURNING version"
        ))
        .await
        .doing("preparing the update")?;
    let committed = db
        .prepare(&format!("SELECT version FROM {table} WHERE id = $1"))
        .await
        .doing("preparing the load")?;
    let mut pace = (!cfg.write_every.is_zero()).then(|| pacer(1.0 / cfg.write_every.as_secs_f64()));
    let half = (cfg.writers * cfg.writes / 2).max(1) as u64;
    let mut rng = Rng::new(7 + writer);
    let mut latencies = Vec::new();
    for n in 1..=cfg.writes {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let id = cfg.pick(&mut rng);
        let key = cfg.names.key(id);
        let fail = cfg.fail_every > 0 && n % cfg.fail_every == 0;
        let started = Instant::now();
        let w = Write { id, key: &key };
        let acknowledged = match cfg.strategy {
            Strategy::CacheAside | Strategy::WriteThrough => {
                let tx = db.transaction().await.doing("beginning")?;
                let v: i64 = tx
                    .query_one(&update, &[&(id as i32)])
                    .await
                    .doing("updating the product")?
                    .get(0);
                if cfg.strategy == Strategy::WriteThrough && cfg.set_before_commit {
                    set_cache(&mut conn, &cfg, &shared, &timeline, w, v).await?;
                }
                if fail {
                    // The write fails before its COMMIT (a constraint, a
                    // serialization failure, a lost connection): rolled back.
                    tx.rollback().await.doing("rolling back")?;
                    false
                } else {
                    tx.commit().await.doing("committing")?;
                    match cfg.strategy {
                        Strategy::CacheAside => {
                            invalidate(&mut conn, &shared, &cfg, &timeline, &key).await?
                        }
                        _ if !cfg.set_before_commit => {
                            if cfg.set_delay_ms > 0 {
                                let pause = rng.below(cfg.set_delay_ms + 1);
                                tokio::time::sleep(Duration::from_millis(pause)).await;
                            }
                            set_cache(&mut conn, &cfg, &shared, &timeline, w, v).await?;
                        }
                        _ => {}
                    }
                    true
                }
            }
            Strategy::WriteBehind => {
                write_behind(&mut conn, &db, &committed, &cfg, &shared, &timeline, w).await?;
                true
            }
        };
        if acknowledged {
            latencies.push(started.elapsed());
            if shared.acknowledged.fetch_add(1, Ordering::SeqCst) + 1 == half {
                timeline.record("exercise", "half-written");
            }
        } else {
            shared.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(latencies)
}

/// One write's product.
#[derive(Clone, Copy)]
struct Write<'a> {
    id: i64,
    key: &'a str,
}

/// Cache-aside: delete the entry after the commit, retrying on a new
/// connection if Redis is down.
async fn invalidate(
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    cfg: &Config,
    timeline: &Timeline,
    key: &str,
) -> Result<(), ExerciseError> {
    loop {
        match conn.del::<_, ()>(key).await {
            Ok(()) => return Ok(()),
            Err(e) => *conn = shared.cache_failed(cfg, timeline, e).await?,
        }
    }
}

/// Write-through: `SET key v GET`; the old value says whether this set put
/// an older version over a newer one (two writers' sets in the other order
/// than their commits).
async fn set_cache(
    conn: &mut MultiplexedConnection,
    cfg: &Config,
    shared: &Shared,
    timeline: &Timeline,
    w: Write<'_>,
    v: i64,
) -> Result<(), ExerciseError> {
    loop {
        let old: redis::RedisResult<Option<i64>> = redis::cmd("SET")
            .arg(w.key)
            .arg(v)
            .arg("GET")
            .query_async(conn)
            .await;
        match old {
            Ok(old) => {
                if old.is_some_and(|o| o > v) {
                    shared.regressions.fetch_add(1, Ordering::SeqCst);
                }
                return Ok(());
            }
            Err(e) => *conn = shared.cache_failed(cfg, timeline, e).await?,
        }
    }
}

/// Write-behind: bump the cached version and mark it dirty; a product the
/// cache does not hold is loaded from the database first.
async fn write_behind(
    conn: &mut MultiplexedConnection,
    db: &tokio_postgres::Client,
    committed: &tokio_postgres::Statement,
    cfg: &Config,
    shared: &Shared,
    timeline: &Timeline,
    w: Write<'_>,
) -> Result<(), ExerciseError> {
    let script = redis::Script::new(WRITE_BEHIND);
    loop {
        let now = cfg.base.elapsed().as_millis() as i64;
        let done: redis::RedisResult<Option<i64>> = script
            .key(w.key)
            .key(&cfg.names.dirty)
            .key(&cfg.names.folded)
            .key(&cfg.names.since)
            .arg(w.id)
            .arg(now)
            .invoke_async(conn)
            .await;
        match done {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {
                let v: i64 = db
                    .query_one(committed, &[&(w.id as i32)])
                    .await
                    .doing("loading the product")?
                    .get(0);
                if let Err(e) = conn.set_nx::<_, _, bool>(w.key, v).await {
                    *conn = shared.cache_failed(cfg, timeline, e).await?;
                }
            }
            Err(e) => *conn = shared.cache_failed(cfg, timeline, e).await?,
        }
    }
}

/// Product id → value, as HGETALL returns it.
type Dirty = Vec<(i32, i64)>;

#[derive(Default)]
struct FlushStats {
    flushes: u64,
    lags: Vec<Duration>,
}

/// Every `every`, takes the dirty set from Redis and writes it to the
/// database in one transaction; after the writers ended, one last take
/// that succeeds ends it. A Redis that is down is waited for.
async fn flush_loop(
    cfg: Arc<Config>,
    mut db: tokio_postgres::Client,
    shared: Arc<Shared>,
    writing: Arc<AtomicBool>,
    every: Duration,
    timeline: Timeline,
) -> Result<FlushStats, ExerciseError> {
    let table = &cfg.names.table;
    let apply = db
        .prepare(&format!(
            "UPDATE {table} p SET version = greatest(p.version, u.v), writes = p.writes + 1,
                                  applied = p.applied + u.n
             FROM unnest($1::int[], $2::bigint[], $3::bigint[]) AS u(id, v, n) WHERE p.id = u.id"
        ))
        .await
        .doing("preparing the flush")?;
    let take = redis::Script::new(TAKE_DIRTY);
    let mut conn = cfg.redis().await.doing("connecting the flusher")?;
    let mut tick = pacer(1.0 / every.as_secs_f64());
    let mut stats = FlushStats::default();
    loop {
        tick.tick().await;
        let last = !writing.load(Ordering::SeqCst);
        let taken: redis::RedisResult<(Dirty, Dirty, Dirty)> = take
            .key(&cfg.names.dirty)
            .key(&cfg.names.folded)
            .key(&cfg.names.since)
            .invoke_async(&mut conn)
            .await;
        let (dirty, folded, since) = match taken {
            Ok(t) => t,
            Err(e) => {
                conn = shared.cache_failed(&cfg, &timeline, e).await?;
                continue;
            }
        };
        if !dirty.is_empty() {
            let (ids, versions): (Vec<i32>, Vec<i64>) = dirty.into_iter().unzip();
            let counts: Vec<i64> = ids
                .iter()
                .map(|id| folded.iter().find(|(f, _)| f == id).map_or(0, |(_, n)| *n))
                .collect();
            let tx = db.transaction().await.doing("beginning a flush")?;
            tx.execute(&apply, &[&ids, &versions, &counts])
                .await
                .doing("flushing to the database")?;
            tx.commit().await.doing("committing a flush")?;
            let now = cfg.base.elapsed().as_millis() as i64;
            stats.flushes += 1;
            stats.lags.extend(
                since
                    .into_iter()
                    .map(|(_, t)| Duration::from_millis((now - t).max(0) as u64)),
            );
        }
        if last {
            return Ok(stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_parameters() {
        for p in CachePatterns.params() {
            p.check(&p.default).unwrap();
        }
    }

    #[test]
    fn the_skew_sends_most_picks_to_the_hot_set() {
        let cfg = Config {
            strategy: Strategy::CacheAside,
            products: 2000,
            hot_keys: 20,
            hot_pct: 90,
            reads: 0,
            writes: 0,
            writers: 1,
            write_every: Duration::ZERO,
            fill_delay: Duration::ZERO,
            fail_every: 0,
            set_before_commit: false,
            set_delay_ms: 0,
            names: Names::new("t"),
            redis: redis::Client::open("redis://127.0.0.1:1").unwrap(),
            base: Instant::now(),
        };
        let mut rng = Rng::new(1);
        let hot = (0..10_000).filter(|_| cfg.pick(&mut rng) < 20).count();
        assert!((8900..=9300).contains(&hot), "{hot}");
    }
}
