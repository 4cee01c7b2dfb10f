//! `cache-eviction`: what a Redis with a memory limit keeps when it is filled
//! past the limit, and what a TTL takes away.
//!
//! The exercise uses one Redis service (`service`, started by the lab with
//! `--maxmemory` and `--maxmemory-policy` on its command line) and owns it for
//! the scenario: it empties it (`FLUSHALL`) and resets its statistics
//! (`CONFIG RESETSTAT`) first, so Redis's own counters describe this scenario
//! only.
//!
//! Fill: `hot_keys` keys are written first, then `cold_keys` keys of the same
//! size in batches of `touch_every`, paced at `cold_per_s` (as fast as
//! possible when 0) by a pacer that resumes at the same rate after a stall
//! instead of bursting to catch up; after every batch the whole hot set is
//! read again, as an application keeps reading its popular items. Why the
//! pace matters: Redis's LRU is approximated. It keeps no list; to evict, it
//! samples `maxmemory-samples` keys (5 by default) into a small pool of
//! candidates and evicts the one idle longest. Idle time comes from a
//! per-key LRU clock with a resolution of one second, so keys used within
//! the same second are tied. A fill that writes all of memory within a second
//! (or a catch-up burst after a stall) leaves the hot keys tied with the cold
//! ones; a fill spread over several seconds makes the cold keys measurably
//! older. At the end `EXISTS` (which does not count as an access) tells which
//! keys survived, and `INFO` how many Redis evicted.
//!
//! TTL: `ttl_keys` keys are written with a `PX ttl_ms` expiry next to as many
//! without one. The halfway and after-expiry checks are timed from what Redis
//! says (`PTTL` read back after the write), not from the client's clock, so
//! a slow write or a stall before the read-back cannot shift them.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::AsyncCommands;
use serde_json::Value;

use super::{
    Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamKind, ParamSpec,
};
use crate::stats::{pacer, ratio};

/// The `cache-eviction` exercise.
pub struct CacheEviction;

#[async_trait]
impl Exercise for CacheEviction {
    fn name(&self) -> &'static str {
        "cache-eviction"
    }

    fn summary(&self) -> &'static str {
        "fill a memory-limited Redis past maxmemory with a hot and a cold set; watch what the eviction policy and TTLs keep"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "service",
                kind: ParamKind::Text,
                default: Value::from("redis"),
                doc: "the Redis service (by name) to fill; its command line sets maxmemory and the policy",
            },
            ParamSpec::int("hot_keys", 0, 1_000_000, 100, "keys read again and again"),
            ParamSpec::int(
                "cold_keys",
                0,
                10_000_000,
                8000,
                "keys written once, never read",
            ),
            ParamSpec::int("value_bytes", 1, 1_048_576, 1024, "size of every value"),
            ParamSpec::int(
                "touch_every",
                1,
                1_000_000,
                50,
                "cold writes between two reads of the whole hot set",
            ),
            ParamSpec::int(
                "cold_per_s",
                0,
                10_000_000,
                0,
                "pace of the cold writes, without catch-up bursts (0: as fast as possible); Redis's LRU clock has a one-second resolution",
            ),
            ParamSpec::int(
                "ttl_keys",
                0,
                1_000_000,
                0,
                "keys written with an expiry (and as many without)",
            ),
            ParamSpec::int("ttl_ms", 1, 600_000, 1000, "their time to live (PX)"),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::text(
                    "policy",
                    "maxmemory-policy as Redis reports it (CONFIG GET)",
                ),
                ObsSpec::number("maxmemory_bytes", "maxmemory as Redis reports it"),
                ObsSpec::number(
                    "written_bytes",
                    "value bytes the exercise tried to store (hot + cold)",
                ),
                ObsSpec::number("writes", "SETs attempted (hot + cold)"),
                ObsSpec::number("write_errors", "SETs Redis refused (OOM under noeviction)"),
                ObsSpec::number("evicted_keys", "INFO stats evicted_keys for this scenario"),
                ObsSpec::number(
                    "hot_survival",
                    "share of the hot keys still there at the end (EXISTS)",
                ),
                ObsSpec::number(
                    "cold_survival",
                    "share of the cold keys still there at the end",
                ),
                ObsSpec::number("hot_misses", "reads of a hot key that found it gone"),
                ObsSpec::number(
                    "used_memory_bytes",
                    "INFO memory used_memory at the end of the fill",
                ),
                ObsSpec::number(
                    "ttl_alive_halfway",
                    "keys with an expiry still there halfway through their TTL (timed by PTTL read back)",
                ),
                ObsSpec::number(
                    "halfway_remaining_ms",
                    "smallest PTTL Redis reported at the halfway check (about ttl_ms / 2 when the check was on time)",
                ),
                ObsSpec::number(
                    "expired_observed",
                    "keys with an expiry gone after their TTL (EXISTS)",
                ),
                ObsSpec::number(
                    "persistent_kept",
                    "keys without an expiry still there after the TTL",
                ),
                ObsSpec::number("expired_keys", "INFO stats expired_keys for this scenario"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("filling", "the hot keys are about to be written"),
                Milestone::new("filled", "every cold key was written"),
                Milestone::new(
                    "ttl-keys-written",
                    "the keys with and without a TTL are written",
                ),
                Milestone::new("ttl-halfway", "the halfway check (by Redis's PTTL) is done"),
                Milestone::new("ttl-checked", "the check after the TTL is done"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let mut conn = connect_and_reset(ctx).await?;
        let policy = config_get(&mut conn, "maxmemory-policy").await?;
        let maxmemory: i64 = config_get(&mut conn, "maxmemory")
            .await?
            .parse()
            .unwrap_or_default();
        let value = "x".repeat(ctx.int("value_bytes") as usize);
        let fill = fill(ctx, &mut conn, &value).await?;
        let ttl = ttl_check(ctx, &mut conn, &value).await?;
        let evicted = info_field(&mut conn, "stats", "evicted_keys").await?;
        let expired_keys = info_field(&mut conn, "stats", "expired_keys").await?;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .doing("emptying redis")?;

        let (hot, cold) = (ctx.int("hot_keys"), ctx.int("cold_keys"));
        let share = |alive: u64, n: i64| ratio(alive as f64, n as f64);
        Ok(Observations::from([
            ("policy".into(), Value::from(policy)),
            ("maxmemory_bytes".into(), Value::from(maxmemory)),
            (
                "written_bytes".into(),
                Value::from((hot + cold) * value.len() as i64),
            ),
            ("writes".into(), Value::from(hot + cold)),
            ("write_errors".into(), Value::from(fill.write_errors)),
            ("evicted_keys".into(), Value::from(evicted)),
            (
                "hot_survival".into(),
                Value::from(share(fill.hot_alive, hot)),
            ),
            (
                "cold_survival".into(),
                Value::from(share(fill.cold_alive, cold)),
            ),
            ("hot_misses".into(), Value::from(fill.hot_misses)),
            ("used_memory_bytes".into(), Value::from(fill.used_memory)),
            (
                "ttl_alive_halfway".into(),
                Value::from(ttl.as_ref().map(|t| t.alive_halfway)),
            ),
            (
                "halfway_remaining_ms".into(),
                Value::from(ttl.as_ref().and_then(|t| t.halfway_remaining_ms)),
            ),
            (
                "expired_observed".into(),
                Value::from(ttl.as_ref().map(|t| t.expired)),
            ),
            (
                "persistent_kept".into(),
                Value::from(ttl.as_ref().map(|t| t.kept)),
            ),
            ("expired_keys".into(), Value::from(expired_keys)),
        ]))
    }
}

/// The Redis service named by `service`, emptied and with fresh statistics,
/// so its own counters describe this scenario only.
async fn connect_and_reset(ctx: &Ctx) -> Result<redis::aio::MultiplexedConnection, ExerciseError> {
    let name = ctx.text("service");
    let endpoint = ctx.services.get(name).ok_or_else(|| {
        ExerciseError(format!(
            "the lab has no service `{name}` (services: {})",
            ctx.services.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    if endpoint.kind != "redis" {
        return Err(ExerciseError(format!(
            "service `{name}` is a {}, not redis",
            endpoint.kind
        )));
    }
    let client = redis::Client::open(endpoint.url.as_str()).doing("redis url")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .doing("connecting to redis")?;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .doing("emptying redis")?;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .doing("resetting redis statistics")?;
    Ok(conn)
}

/// What the fill left behind.
struct Fill {
    write_errors: u64,
    hot_misses: u64,
    hot_alive: u64,
    cold_alive: u64,
    used_memory: i64,
}

/// The hot keys, then the cold ones in paced batches, the hot set read after
/// every batch; then which keys survived.
async fn fill(
    ctx: &Ctx,
    conn: &mut redis::aio::MultiplexedConnection,
    value: &str,
) -> Result<Fill, ExerciseError> {
    let hot = ctx.int("hot_keys");
    let cold = ctx.int("cold_keys");
    let touch_every = ctx.int("touch_every").max(1);
    let ns = &ctx.namespace;
    let hot_keys: Vec<String> = (0..hot).map(|i| format!("{ns}:hot:{i}")).collect();
    let cold_keys: Vec<String> = (0..cold).map(|i| format!("{ns}:cold:{i}")).collect();
    let per_s = ctx.int("cold_per_s");
    // One tick per batch; after a stall the pace resumes, no burst.
    let mut pace = (per_s > 0).then(|| pacer(per_s as f64 / touch_every as f64));

    ctx.mark("filling");
    let mut first_error = None;
    let mut write_errors = set_all(conn, &hot_keys, value, &mut first_error).await;
    let mut hot_misses = 0;
    for batch in cold_keys.chunks(touch_every as usize) {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        write_errors += set_all(conn, batch, value, &mut first_error).await;
        hot_misses += touch(conn, &hot_keys).await?;
    }
    ctx.mark("filled");
    if let Some(e) = &first_error {
        tracing::debug!("first refused write: {e}");
    }
    Ok(Fill {
        write_errors,
        hot_misses,
        used_memory: info_field(conn, "memory", "used_memory").await?,
        hot_alive: count_existing(conn, &hot_keys).await?,
        cold_alive: count_existing(conn, &cold_keys).await?,
    })
}

/// What the TTL check saw.
struct TtlSeen {
    alive_halfway: u64,
    halfway_remaining_ms: Option<i64>,
    expired: u64,
    kept: u64,
}

/// Keys with and without a TTL; checked halfway through the TTL and after
/// it, both times taken from the PTTLs Redis reports, not from a sleep
/// started on the client.
async fn ttl_check(
    ctx: &Ctx,
    conn: &mut redis::aio::MultiplexedConnection,
    value: &str,
) -> Result<Option<TtlSeen>, ExerciseError> {
    let n = ctx.int("ttl_keys");
    if n == 0 {
        return Ok(None);
    }
    let ttl_ms = ctx.int("ttl_ms");
    let ns = &ctx.namespace;
    let expiring: Vec<String> = (0..n).map(|i| format!("{ns}:ttl:{i}")).collect();
    let lasting: Vec<String> = (0..n).map(|i| format!("{ns}:keep:{i}")).collect();
    let mut pipe = redis::pipe();
    for k in &expiring {
        pipe.pset_ex(k, value, ttl_ms as u64).ignore();
    }
    for k in &lasting {
        pipe.set(k, value).ignore();
    }
    let _: () = pipe
        .query_async(conn)
        .await
        .doing("writing keys with and without a TTL")?;
    ctx.mark("ttl-keys-written");

    // Redis's view: the first key written has the least time left. Halfway
    // is when that key has ttl_ms / 2 left; the end is when the last has none.
    let (first_left, last_left) = remaining(conn, &expiring).await?;
    let asked = Instant::now();
    let halfway = Duration::from_millis(first_left.saturating_sub(ttl_ms / 2).max(0) as u64);
    tokio::time::sleep(halfway.saturating_sub(asked.elapsed())).await;
    let (at_halfway, _) = remaining(conn, &expiring).await?;
    let alive_halfway = count_existing(conn, &expiring).await?;
    ctx.mark("ttl-halfway");
    let after = Duration::from_millis(last_left.max(0) as u64 + 50);
    tokio::time::sleep(after.saturating_sub(asked.elapsed())).await;
    let expired = n as u64 - count_existing(conn, &expiring).await?;
    let kept = count_existing(conn, &lasting).await?;
    ctx.mark("ttl-checked");
    Ok(Some(TtlSeen {
        alive_halfway,
        halfway_remaining_ms: (at_halfway >= 0).then_some(at_halfway),
        expired,
        kept,
    }))
}

/// The smallest and largest PTTL (ms) Redis reports for the keys; -2 for a
/// key that is gone.
async fn remaining(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Result<(i64, i64), ExerciseError> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.pttl(k);
    }
    let left: Vec<i64> = pipe
        .query_async(conn)
        .await
        .doing("reading the keys' PTTL")?;
    let min = left.iter().copied().min().unwrap_or(-2);
    let max = left.iter().copied().max().unwrap_or(-2);
    Ok((min, max))
}

/// SETs every key concurrently on the multiplexed connection; returns how many
/// Redis refused (remembering the first refusal).
async fn set_all(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
    value: &str,
    first_error: &mut Option<String>,
) -> u64 {
    let results = join_all(keys.iter().map(|k| {
        let mut c = conn.clone();
        async move {
            let r: redis::RedisResult<()> = c.set(k, value).await;
            r
        }
    }))
    .await;
    let mut errors = 0;
    for r in results {
        if let Err(e) = r {
            errors += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    }
    errors
}

/// Reads every hot key (an access, as the application's); returns the misses.
async fn touch(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Result<u64, ExerciseError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.get(k);
    }
    let found: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await.doing("reading the hot set")?;
    Ok(found.iter().filter(|f| f.is_none()).count() as u64)
}

async fn count_existing(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Result<u64, ExerciseError> {
    let mut alive = 0u64;
    for chunk in keys.chunks(1000) {
        let n: u64 = redis::cmd("EXISTS")
            .arg(chunk)
            .query_async(conn)
            .await
            .doing("checking which keys exist")?;
        alive += n;
    }
    Ok(alive)
}

async fn config_get(
    conn: &mut redis::aio::MultiplexedConnection,
    name: &str,
) -> Result<String, ExerciseError> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .doing("reading redis configuration")?;
    Ok(pair.get(1).cloned().unwrap_or_default())
}

async fn info_field(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> Result<i64, ExerciseError> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .doing("reading INFO")?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ExerciseError(format!("INFO {section} has no `{field}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_parameters() {
        for p in CacheEviction.params() {
            p.check(&p.default).unwrap();
        }
    }
}
