//! `cache-patterns`: Redis in front of a PostgreSQL product table, written and
//! read under three caching strategies.
//!
//! A `products` table (id, version) lives in PostgreSQL; the cache holds each
//! product's version under a namespaced Redis key. Readers pick products with
//! a skewed distribution (`hot_pct` percent of accesses go to the first
//! `hot_keys` products) and writers bump a product's version:
//!
//! - `cache-aside`: read the cache; on a miss read the database and fill the
//!   cache. Write: update the database, then delete the cache entry.
//! - `write-through`: the cache is loaded up front; a write updates the row
//!   and sets the cache inside the same database transaction (while the row
//!   is locked), so the cache is never behind what the database committed.
//! - `write-behind`: a write bumps the version in Redis only and marks the
//!   product dirty (one atomic script); a flusher takes the dirty set every
//!   `flush_ms` and writes it to the database in one transaction, so many
//!   writes of one product become one database write. With
//!   `crash_flusher_after_ms` the flusher stops for good (a crash): writes
//!   acknowledged after that exist only in Redis.
//!
//! Measured on the services: database reads and writes are counted by
//! PostgreSQL (a counter row per reader, bumped by the same statement that
//! reads the product; a `writes` column bumped by every update), and a read
//! is stale when the version the cache returned is older than the version
//! PostgreSQL had committed just before the cache was asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::stats::percentile_ms;

/// The `cache-patterns` exercise.
pub struct CachePatterns;

/// A write-behind write: bump the cached version, remember the product as
/// dirty with its newest version and the time it first became dirty.
const WRITE_BEHIND: &str = r"
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], v)
redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2])
return v";

/// The flusher takes the whole dirty set atomically.
const TAKE_DIRTY: &str = r"
local d = redis.call('HGETALL', KEYS[1])
local s = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return {d, s}";

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
                "how reads and writes use the cache",
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
                "pause between a writer's writes",
            ),
            ParamSpec::int(
                "fill_delay_ms",
                0,
                10_000,
                0,
                "cache-aside: a slow reader's pause between reading the database and filling the cache",
            ),
            ParamSpec::int(
                "flush_ms",
                1,
                60_000,
                100,
                "write-behind: how often the flusher writes the dirty set to the database",
            ),
            ParamSpec::int(
                "crash_flusher_after_ms",
                0,
                600_000,
                0,
                "write-behind: the flusher dies this long after the writers start (0: never)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("reads", "reads done by all readers"),
                ObsSpec::number("writes", "writes acknowledged to the writers"),
                ObsSpec::number("hit_ratio", "reads answered by Redis ÷ reads"),
                ObsSpec::number(
                    "db_reads",
                    "reads that went to PostgreSQL on a miss (counted by PostgreSQL; the warm-up load excluded)",
                ),
                ObsSpec::number(
                    "db_writes",
                    "row updates PostgreSQL applied (its `writes` column)",
                ),
                ObsSpec::number(
                    "coalesced",
                    "writes − db_writes: acknowledged writes folded into a later database write (or lost)",
                ),
                ObsSpec::number(
                    "stale_reads",
                    "cache answers older than the version PostgreSQL had committed just before",
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
                ObsSpec::number(
                    "lost_on_crash",
                    "acknowledged writes PostgreSQL never got (Σ cache version − database version at the end)",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[Milestone::new(
                "flusher-crashed",
                "the write-behind flusher died",
            )]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let redis_url = ctx.service("redis")?.url.clone();
        let pg_url = ctx.service("postgres")?.url.clone();
        let strategy = match ctx.text("strategy") {
            "write-through" => Strategy::WriteThrough,
            "write-behind" => Strategy::WriteBehind,
            _ => Strategy::CacheAside,
        };
        let products = ctx.int("products");
        let cfg = Arc::new(Config {
            strategy,
            products,
            hot_keys: ctx.int("hot_keys").min(products),
            hot_pct: ctx.int("hot_pct") as u64,
            reads: ctx.int("reads"),
            writes: ctx.int("writes"),
            write_every: Duration::from_millis(ctx.int("write_every_ms") as u64),
            fill_delay: Duration::from_millis(ctx.int("fill_delay_ms") as u64),
            names: Names::new(&ctx.namespace),
            base: Instant::now(),
        });
        let readers = ctx.int("readers");
        let writers = ctx.int("writers");
        let client = redis::Client::open(redis_url.as_str()).doing("redis url")?;
        let mut rc = client
            .get_multiplexed_async_connection()
            .await
            .doing("connecting to redis")?;
        let db = pg(&pg_url).await?;
        let Names {
            table, counters, ..
        } = &cfg.names;
        db.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}, {counters};
             CREATE TABLE {table} (id int PRIMARY KEY, version bigint NOT NULL, writes bigint NOT NULL DEFAULT 0);
             INSERT INTO {table} (id, version) SELECT g, 1 FROM generate_series(0, {last}) g;
             CREATE TABLE {counters} (reader int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO {counters} SELECT g, 0 FROM generate_series(0, {readers}) g;",
            last = products - 1,
        ))
        .await
        .doing("creating the product table")?;
        if strategy != Strategy::CacheAside {
            // Write-through and write-behind caches are loaded up front.
            let mut pipe = redis::pipe();
            for id in 0..products {
                pipe.set(cfg.names.key(id), 1).ignore();
            }
            let _: () = pipe.query_async(&mut rc).await.doing("loading the cache")?;
        }
        ctx.mark("loaded");

        let writing = Arc::new(AtomicBool::new(true));
        let flusher = if strategy == Strategy::WriteBehind {
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .doing("connecting the flusher")?;
            let fdb = pg(&pg_url).await?;
            let crash_after = ctx.int("crash_flusher_after_ms");
            Some(tokio::spawn(flush_loop(
                conn,
                fdb,
                cfg.clone(),
                writing.clone(),
                Duration::from_millis(ctx.int("flush_ms") as u64),
                (crash_after > 0).then(|| Duration::from_millis(crash_after as u64)),
                ctx.timeline(),
            )))
        } else {
            None
        };

        let mut readers_set = tokio::task::JoinSet::new();
        for r in 0..readers {
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .doing("connecting a reader")?;
            let rdb = pg(&pg_url).await?;
            let check = pg(&pg_url).await?;
            readers_set.spawn(read_loop(conn, rdb, check, cfg.clone(), r as i32));
        }
        let mut writers_set = tokio::task::JoinSet::new();
        for w in 0..writers {
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .doing("connecting a writer")?;
            let wdb = pg(&pg_url).await?;
            writers_set.spawn(write_loop(conn, wdb, cfg.clone(), w as u64));
        }
        ctx.mark("workers-started");

        let mut write_lat = Vec::new();
        let mut writes = 0u64;
        while let Some(joined) = writers_set.join_next().await {
            let lat = joined.map_err(|e| ExerciseError(format!("writer panicked: {e}")))??;
            writes += lat.len() as u64;
            write_lat.extend(lat);
        }
        let mut read = ReadStats::default();
        while let Some(joined) = readers_set.join_next().await {
            let s = joined.map_err(|e| ExerciseError(format!("reader panicked: {e}")))??;
            read.hits += s.hits;
            read.reads += s.reads;
            read.stale += s.stale;
            read.latencies.extend(s.latencies);
        }
        ctx.mark("workers-finished");
        writing.store(false, Ordering::SeqCst);
        let flushed = match flusher {
            Some(task) => task
                .await
                .map_err(|e| ExerciseError(format!("flusher panicked: {e}")))??,
            None => FlushStats::default(),
        };

        // What PostgreSQL counted, and what it holds against the cache.
        let row = db
            .query_one(
                &format!(
                    "SELECT (SELECT coalesce(sum(n), 0)::bigint FROM {counters}),
                            (SELECT coalesce(sum(writes), 0)::bigint FROM {table})"
                ),
                &[],
            )
            .await
            .doing("reading the database counters")?;
        let (db_reads, db_writes): (i64, i64) = (row.get(0), row.get(1));
        let versions = db
            .query(&format!("SELECT id, version FROM {table} ORDER BY id"), &[])
            .await
            .doing("reading the product versions")?;
        let mut pipe = redis::pipe();
        for id in 0..products {
            pipe.get(cfg.names.key(id));
        }
        let cached: Vec<Option<i64>> = pipe
            .query_async(&mut rc)
            .await
            .doing("reading the cache back")?;
        let lost: i64 = versions
            .iter()
            .map(|r| {
                let (id, version): (i32, i64) = (r.get(0), r.get(1));
                cached
                    .get(id as usize)
                    .copied()
                    .flatten()
                    .map_or(0, |c| (c - version).max(0))
            })
            .sum();

        // Clean up: the table, the counters and every key of the scenario.
        db.batch_execute(&format!("DROP TABLE IF EXISTS {table}, {counters}"))
            .await
            .doing("dropping the tables")?;
        let mut pipe = redis::pipe();
        for id in 0..products {
            pipe.del(cfg.names.key(id)).ignore();
        }
        pipe.del(&cfg.names.dirty).ignore();
        pipe.del(&cfg.names.since).ignore();
        let _: () = pipe
            .query_async(&mut rc)
            .await
            .doing("deleting the cache keys")?;

        let mut lags = flushed.lags;
        let lag_max = lags.iter().max().map_or(0.0, |d| ms(*d));
        let mut rl = read.latencies;
        let hit_ratio = if read.reads == 0 {
            0.0
        } else {
            (read.hits as f64 / read.reads as f64 * 1000.0).round() / 1000.0
        };
        Ok(Observations::from([
            ("reads".into(), Value::from(read.reads)),
            ("writes".into(), Value::from(writes)),
            ("hit_ratio".into(), Value::from(hit_ratio)),
            ("db_reads".into(), Value::from(db_reads)),
            ("db_writes".into(), Value::from(db_writes)),
            ("coalesced".into(), Value::from(writes as i64 - db_writes)),
            ("stale_reads".into(), Value::from(read.stale)),
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
            ("lost_on_crash".into(), Value::from(lost)),
        ]))
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
    since: String,
}

impl Names {
    fn new(namespace: &str) -> Self {
        let digest = hex::encode(Sha256::digest(namespace.as_bytes()));
        let tag = &digest[..12];
        Names {
            table: format!("products_{tag}"),
            counters: format!("db_reads_{tag}"),
            prefix: format!("{namespace}:product:"),
            dirty: format!("{namespace}:dirty"),
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
    write_every: Duration,
    fill_delay: Duration,
    names: Names,
    base: Instant,
}

impl Config {
    /// A product id: `hot_pct` percent of the time from the hot set.
    fn pick(&self, rng: &mut Rng) -> i64 {
        if rng.below(100) < self.hot_pct {
            rng.below(self.hot_keys as u64) as i64
        } else {
            rng.below(self.products as u64) as i64
        }
    }
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

async fn pg(url: &str) -> Result<tokio_postgres::Client, ExerciseError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .doing("connecting to postgres")?;
    tokio::spawn(connection);
    Ok(client)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

#[derive(Default)]
struct ReadStats {
    reads: u64,
    hits: u64,
    stale: u64,
    latencies: Vec<Duration>,
}

async fn read_loop(
    mut conn: redis::aio::MultiplexedConnection,
    db: tokio_postgres::Client,
    check: tokio_postgres::Client,
    cfg: Arc<Config>,
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
    let mut rng = Rng::new(1000 + reader as u64);
    let mut stats = ReadStats::default();
    for _ in 0..cfg.reads {
        let id = cfg.pick(&mut rng);
        let key = cfg.names.key(id);
        // What the database has committed right now; anything older the cache
        // answers after this is stale.
        let truth: i64 = check
            .query_one(&committed, &[&(id as i32)])
            .await
            .doing("checking the committed version")?
            .get(0);
        let started = Instant::now();
        let cached: Option<i64> = conn.get(&key).await.doing("reading the cache")?;
        match cached {
            Some(v) => {
                stats.hits += 1;
                stats.stale += u64::from(v < truth);
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
                if cfg.strategy == Strategy::CacheAside {
                    let _: () = conn.set(&key, v).await.doing("filling the cache")?;
                } else {
                    // Never overwrite what a writer has put there meanwhile.
                    let _: bool = conn.set_nx(&key, v).await.doing("filling the cache")?;
                }
            }
        }
        stats.latencies.push(started.elapsed());
        stats.reads += 1;
    }
    Ok(stats)
}

async fn write_loop(
    mut conn: redis::aio::MultiplexedConnection,
    mut db: tokio_postgres::Client,
    cfg: Arc<Config>,
    writer: u64,
) -> Result<Vec<Duration>, ExerciseError> {
    let table = &cfg.names.table;
    let update = db
        .prepare(&format!(
            "UPDATE {table} SET version = version + 1, writes = writes + 1 WHERE id = $1 RETURNING version"
        ))
        .await
        .doing("preparing the update")?;
    let script = redis::Script::new(WRITE_BEHIND);
    let mut rng = Rng::new(7 + writer);
    let mut latencies = Vec::new();
    for _ in 0..cfg.writes {
        let id = cfg.pick(&mut rng);
        let key = cfg.names.key(id);
        let started = Instant::now();
        match cfg.strategy {
            Strategy::CacheAside => {
                db.execute(&update, &[&(id as i32)])
                    .await
                    .doing("updating the product")?;
                let _: () = conn.del(&key).await.doing("invalidating the cache")?;
            }
            Strategy::WriteThrough => {
                let tx = db.transaction().await.doing("beginning")?;
                let v: i64 = tx
                    .query_one(&update, &[&(id as i32)])
                    .await
                    .doing("updating the product")?
                    .get(0);
                // Set while the row is locked: the cache never trails a commit.
                let _: () = conn.set(&key, v).await.doing("writing the cache")?;
                tx.commit().await.doing("committing")?;
            }
            Strategy::WriteBehind => {
                let now = cfg.base.elapsed().as_millis() as i64;
                let _: i64 = script
                    .key(&key)
                    .key(&cfg.names.dirty)
                    .key(&cfg.names.since)
                    .arg(id)
                    .arg(now)
                    .invoke_async(&mut conn)
                    .await
                    .doing("writing the cache")?;
            }
        }
        latencies.push(started.elapsed());
        if !cfg.write_every.is_zero() {
            tokio::time::sleep(cfg.write_every).await;
        }
    }
    Ok(latencies)
}

/// Product id → version (or → the time it first became dirty), as HGETALL returns it.
type Dirty = Vec<(i32, i64)>;

#[derive(Default)]
struct FlushStats {
    flushes: u64,
    lags: Vec<Duration>,
}

async fn flush_loop(
    mut conn: redis::aio::MultiplexedConnection,
    mut db: tokio_postgres::Client,
    cfg: Arc<Config>,
    writing: Arc<AtomicBool>,
    every: Duration,
    crash_after: Option<Duration>,
    timeline: super::Timeline,
) -> Result<FlushStats, ExerciseError> {
    let table = &cfg.names.table;
    let apply = db
        .prepare(&format!(
            "UPDATE {table} p SET version = greatest(p.version, u.v), writes = p.writes + 1
             FROM unnest($1::int[], $2::bigint[]) AS u(id, v) WHERE p.id = u.id"
        ))
        .await
        .doing("preparing the flush")?;
    let take = redis::Script::new(TAKE_DIRTY);
    // The crash clock starts with the writers, not with the flusher.
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        timeline.wait_for("workers-started"),
    )
    .await;
    let started = Instant::now();
    let mut stats = FlushStats::default();
    loop {
        let last = !writing.load(Ordering::SeqCst);
        if crash_after.is_some_and(|after| started.elapsed() >= after) {
            timeline.record("exercise", "flusher-crashed");
            return Ok(stats);
        }
        let (dirty, since): (Dirty, Dirty) = take
            .key(&cfg.names.dirty)
            .key(&cfg.names.since)
            .invoke_async(&mut conn)
            .await
            .doing("taking the dirty set")?;
        if !dirty.is_empty() {
            let (ids, versions): (Vec<i32>, Vec<i64>) = dirty.into_iter().unzip();
            let tx = db.transaction().await.doing("beginning a flush")?;
            tx.execute(&apply, &[&ids, &versions])
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
        let wait = match crash_after {
            Some(after) => every.min(after.saturating_sub(started.elapsed())),
            None => every,
        };
        tokio::time::sleep(wait).await;
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
            write_every: Duration::ZERO,
            fill_delay: Duration::ZERO,
            names: Names::new("t"),
            base: Instant::now(),
        };
        let mut rng = Rng::new(1);
        let hot = (0..10_000).filter(|_| cfg.pick(&mut rng) < 20).count();
        assert!((8900..=9300).contains(&hot), "{hot}");
    }
}
