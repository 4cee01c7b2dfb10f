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
//! size (`cold_per_s` a second, as fast as possible when 0); after every
//! `touch_every` cold writes every hot key is read again, as an application
//! keeps reading its popular items. Redis's LRU clock has a resolution of one
//! second: keys used within the same second look equally old to it, so a fill
//! must span a few seconds for "least recently used" to mean anything. At the end `EXISTS` (which
//! does not count as an access) tells which keys survived, and `INFO` how many
//! Redis evicted. TTL: `ttl_keys` keys are written with a `PX ttl_ms` expiry
//! next to as many without one; they are checked halfway through the TTL and
//! again after it.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::AsyncCommands;
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, ObsSpec, Observations, ParamKind, ParamSpec};

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
                "pace of the cold writes (0: as fast as possible); Redis's LRU clock ticks once a second",
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
                    "keys with an expiry still there halfway through their TTL",
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

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
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
        let policy = config_get(&mut conn, "maxmemory-policy").await?;
        let maxmemory: i64 = config_get(&mut conn, "maxmemory")
            .await?
            .parse()
            .unwrap_or_default();

        let hot = ctx.int("hot_keys");
        let cold = ctx.int("cold_keys");
        let touch_every = ctx.int("touch_every").max(1);
        let value = "x".repeat(ctx.int("value_bytes") as usize);
        let ns = &ctx.namespace;
        let hot_key = |i: i64| format!("{ns}:hot:{i}");
        let cold_key = |i: i64| format!("{ns}:cold:{i}");

        ctx.mark("filling");
        let mut write_errors = 0u64;
        let mut first_error = None;
        let mut hot_misses = 0u64;
        let hot_keys: Vec<String> = (0..hot).map(hot_key).collect();
        write_errors += set_all(&conn, &hot_keys, &value, &mut first_error).await;
        let per_s = ctx.int("cold_per_s");
        let fill_started = Instant::now();
        let mut i = 0;
        while i < cold {
            let end = (i + touch_every).min(cold);
            let batch: Vec<String> = (i..end).map(cold_key).collect();
            write_errors += set_all(&conn, &batch, &value, &mut first_error).await;
            i = end;
            hot_misses += touch(&conn, &hot_keys).await?;
            if per_s > 0 {
                let due = Duration::from_secs_f64(i as f64 / per_s as f64);
                tokio::time::sleep(due.saturating_sub(fill_started.elapsed())).await;
            }
        }
        ctx.mark("filled");
        let used_memory = info_field(&mut conn, "memory", "used_memory").await?;
        let hot_alive = count_existing(&mut conn, &hot_keys).await?;
        let cold_keys: Vec<String> = (0..cold).map(cold_key).collect();
        let cold_alive = count_existing(&mut conn, &cold_keys).await?;

        // TTL: half the keys expire, half do not.
        let ttl_n = ctx.int("ttl_keys");
        let ttl_ms = ctx.int("ttl_ms") as u64;
        let (mut alive_halfway, mut expired, mut kept) = (0, 0, 0);
        if ttl_n > 0 {
            let expiring: Vec<String> = (0..ttl_n).map(|i| format!("{ns}:ttl:{i}")).collect();
            let lasting: Vec<String> = (0..ttl_n).map(|i| format!("{ns}:keep:{i}")).collect();
            let mut pipe = redis::pipe();
            for k in &expiring {
                pipe.pset_ex(k, &value, ttl_ms).ignore();
            }
            for k in &lasting {
                pipe.set(k, &value).ignore();
            }
            let _: () = pipe
                .query_async(&mut conn)
                .await
                .doing("writing keys with and without a TTL")?;
            let written = Instant::now();
            ctx.mark("ttl-keys-written");
            tokio::time::sleep(Duration::from_millis(ttl_ms / 2)).await;
            alive_halfway = count_existing(&mut conn, &expiring).await?;
            let until = Duration::from_millis(ttl_ms + 100).saturating_sub(written.elapsed());
            tokio::time::sleep(until).await;
            expired = ttl_n as u64 - count_existing(&mut conn, &expiring).await?;
            kept = count_existing(&mut conn, &lasting).await?;
            ctx.mark("ttl-checked");
        }
        let evicted = info_field(&mut conn, "stats", "evicted_keys").await?;
        let expired_keys = info_field(&mut conn, "stats", "expired_keys").await?;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .doing("emptying redis")?;
        if let Some(e) = &first_error {
            tracing::debug!("first refused write: {e}");
        }

        let share = |alive: u64, n: i64| {
            if n == 0 {
                0.0
            } else {
                (alive as f64 / n as f64 * 1000.0).round() / 1000.0
            }
        };
        Ok(Observations::from([
            ("policy".into(), Value::from(policy)),
            ("maxmemory_bytes".into(), Value::from(maxmemory)),
            (
                "written_bytes".into(),
                Value::from((hot + cold) * value.len() as i64),
            ),
            ("writes".into(), Value::from(hot + cold)),
            ("write_errors".into(), Value::from(write_errors)),
            ("evicted_keys".into(), Value::from(evicted)),
            ("hot_survival".into(), Value::from(share(hot_alive, hot))),
            ("cold_survival".into(), Value::from(share(cold_alive, cold))),
            ("hot_misses".into(), Value::from(hot_misses)),
            ("used_memory_bytes".into(), Value::from(used_memory)),
            ("ttl_alive_halfway".into(), Value::from(alive_halfway)),
            ("expired_observed".into(), Value::from(expired)),
            ("persistent_kept".into(), Value::from(kept)),
            ("expired_keys".into(), Value::from(expired_keys)),
        ]))
    }
}

/// SETs every key concurrently on the multiplexed connection; returns how many
/// Redis refused (remembering the first refusal).
async fn set_all(
    conn: &redis::aio::MultiplexedConnection,
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
    conn: &redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Result<u64, ExerciseError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.get(k);
    }
    let found: Vec<Option<Vec<u8>>> = pipe
        .query_async(&mut conn.clone())
        .await
        .doing("reading the hot set")?;
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
