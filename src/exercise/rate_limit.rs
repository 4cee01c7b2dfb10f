//! `rate-limit`: clients send requests through a limiter kept in Redis, first
//! at a steady rate, then in a burst; the exercise records when each request
//! was let through.
//!
//! The limiter's state lives in Redis and every decision is one Lua script, so
//! it is atomic across all clients and uses one clock (Redis `TIME`):
//!
//! - `token-bucket`: a bucket of `capacity` tokens refilled at `rate` per
//!   second; a request takes a token or is rejected. A full bucket lets a
//!   burst of `capacity` through at once, then `rate` per second.
//! - `leaky-bucket`: a queue of at most `capacity` requests drained at `rate`
//!   per second (virtual scheduling: each accepted request gets the next free
//!   slot, 1/`rate` after the previous one). The script returns the wait; the
//!   request is let through when its slot comes. A burst is smoothed, never
//!   passed on; a full queue rejects.
//! - `fixed-window`: a counter per window of `window_ms` on Redis's clock,
//!   allowing `rate` × `window_ms` / 1000 requests per window. Two windows
//!   back to back let twice that through around their boundary.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, ObsSpec, Observations, ParamSpec};

/// The `rate-limit` exercise.
pub struct RateLimit;

// Every script answers {allowed (1 or 0), when in µs on Redis's clock}.

// ARGV: capacity, refill per ms.
const TOKEN_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cap = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * per_ms)
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 60000)
return {ok, math.floor(now * 1000)}";

// ARGV: capacity (queue size), interval between slots in ms.
// "When" is the request's slot: it waits in the queue until then.
const LEAKY_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cap = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, last + interval)
if slot - now > (cap - 1) * interval then return {0, math.floor(now * 1000)} end
redis.call('SET', KEYS[1], tostring(slot), 'PX', 60000)
return {1, math.floor(slot * 1000)}";

// ARGV: window in ms, limit per window.
const FIXED_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = math.floor(now / tonumber(ARGV[1]))
local key = KEYS[1] .. ':' .. w
local n = redis.call('INCR', key)
if n == 1 then redis.call('PEXPIRE', key, tonumber(ARGV[1]) * 2) end
local at = tonumber(t[1]) * 1000000 + tonumber(t[2])
if n <= tonumber(ARGV[2]) then return {1, at} end
return {0, at}";

#[async_trait]
impl Exercise for RateLimit {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn summary(&self) -> &'static str {
        "clients send a steady stream then a burst through a token bucket, leaky bucket or fixed window kept in Redis"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "algorithm",
                &["token-bucket", "leaky-bucket", "fixed-window"],
                "token-bucket",
                "how the limiter decides",
            ),
            ParamSpec::int(
                "rate",
                1,
                10_000,
                20,
                "sustained limit, requests per second (refill, drain, or per-window limit scaled to window_ms)",
            ),
            ParamSpec::int(
                "capacity",
                1,
                10_000,
                20,
                "token bucket size / leaky bucket queue length",
            ),
            ParamSpec::int("window_ms", 10, 60_000, 1000, "fixed-window length"),
            ParamSpec::int(
                "clients",
                1,
                64,
                4,
                "concurrent clients, each with its own connection",
            ),
            ParamSpec::int(
                "steady_rps",
                0,
                10_000,
                10,
                "offered rate of the steady phase",
            ),
            ParamSpec::int("steady_ms", 0, 60_000, 1500, "length of the steady phase"),
            ParamSpec::int(
                "burst_rps",
                1,
                100_000,
                400,
                "offered rate during the burst",
            ),
            ParamSpec::int("burst_ms", 1, 60_000, 500, "length of the burst"),
            ParamSpec::choice(
                "burst_at",
                &["any", "window-start", "window-boundary"],
                "any",
                "when the burst starts on the window_ms grid of Redis's clock: whenever the steady phase ends, 50 ms into a window, or burst_ms/2 before a boundary",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("allowed", "requests the limiter let through"),
                ObsSpec::number("rejected", "requests the limiter refused"),
                ObsSpec::number(
                    "steady_rejected",
                    "requests refused during the steady phase",
                ),
                ObsSpec::number(
                    "max_allowed_in_any_1s",
                    "most requests let through in any sliding 1 s interval",
                ),
                ObsSpec::number(
                    "burst_admitted",
                    "requests let through in the first 100 ms of the burst",
                ),
                ObsSpec::number(
                    "admitted_rate",
                    "requests let through per second while the burst lasted",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let endpoint = ctx.service("redis")?;
        let client = redis::Client::open(endpoint.url.as_str()).doing("redis url")?;
        let mut setup = client
            .get_multiplexed_async_connection()
            .await
            .doing("connecting to redis")?;
        let rate = ctx.int("rate") as f64;
        let capacity = ctx.int("capacity");
        let window_ms = ctx.int("window_ms") as u64;
        let key = format!("{}:limiter", ctx.namespace);
        let limiter = match ctx.text("algorithm") {
            "leaky-bucket" => Limiter {
                script: redis::Script::new(LEAKY_BUCKET),
                args: vec![capacity.to_string(), (1000.0 / rate).to_string()],
            },
            "fixed-window" => Limiter {
                script: redis::Script::new(FIXED_WINDOW),
                args: vec![
                    window_ms.to_string(),
                    ((rate * window_ms as f64 / 1000.0).round().max(1.0) as i64).to_string(),
                ],
            },
            _ => Limiter {
                script: redis::Script::new(TOKEN_BUCKET),
                args: vec![capacity.to_string(), (rate / 1000.0).to_string()],
            },
        };

        // The schedule, as offsets from `start`: steady requests, then the burst.
        let (redis_ms, start) = redis_clock(&mut setup).await?;
        let steady_ms = ctx.int("steady_ms") as f64;
        let half_burst = ctx.int("burst_ms") as f64 / 2.0;
        let w = window_ms as f64;
        let burst_start_ms = match ctx.text("burst_at") {
            "window-start" => ((redis_ms + steady_ms - 50.0) / w).ceil() * w + 50.0 - redis_ms,
            "window-boundary" => {
                ((redis_ms + steady_ms + half_burst) / w).ceil() * w - half_burst - redis_ms
            }
            _ => steady_ms,
        };
        let mut offsets = Vec::new();
        let steady_rps = ctx.int("steady_rps") as f64;
        if steady_rps > 0.0 {
            let mut k = 0.0;
            while k * 1000.0 / steady_rps < burst_start_ms {
                offsets.push(k * 1000.0 / steady_rps);
                k += 1.0;
            }
        }
        let burst_rps = ctx.int("burst_rps") as f64;
        let burst_len = ctx.int("burst_ms") as f64;
        let burst_n = (burst_rps * burst_len / 1000.0).round().max(1.0) as usize;
        offsets.extend((0..burst_n).map(|j| burst_start_ms + j as f64 * 1000.0 / burst_rps));

        let clients = ctx.int("clients") as usize;
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .doing("connecting a client")?;
            let mine: Vec<f64> = offsets.iter().copied().skip(c).step_by(clients).collect();
            let limiter = limiter.clone();
            let key = key.clone();
            tasks.spawn(async move { send(conn, limiter, key, (start, redis_ms), mine).await });
        }
        ctx.mark("clients-started");
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            results.extend(joined.map_err(|e| ExerciseError(format!("client panicked: {e}")))??);
        }
        ctx.mark("clients-finished");
        cleanup(&mut setup, &ctx.namespace).await?;

        // Admission times in ms from `start` on Redis's clock; a queued request is let through at its slot.
        let mut admitted: Vec<f64> = Vec::new();
        let (mut rejected, mut steady_rejected) = (0u64, 0u64);
        for r in &results {
            match r.admitted_at {
                Some(t) => admitted.push(t),
                None => {
                    rejected += 1;
                    steady_rejected += u64::from(r.offset < burst_start_ms);
                }
            }
        }
        admitted.sort_by(f64::total_cmp);
        let in_range =
            |from: f64, to: f64| admitted.iter().filter(|&&t| t >= from && t < to).count();
        let burst_end = burst_start_ms + burst_len;
        let admitted_rate = in_range(burst_start_ms, burst_end) as f64 * 1000.0 / burst_len;
        Ok(Observations::from([
            ("allowed".into(), Value::from(admitted.len())),
            ("rejected".into(), Value::from(rejected)),
            ("steady_rejected".into(), Value::from(steady_rejected)),
            (
                "max_allowed_in_any_1s".into(),
                Value::from(max_in_window(&admitted, 1000.0)),
            ),
            (
                "burst_admitted".into(),
                Value::from(in_range(burst_start_ms, burst_start_ms + 100.0)),
            ),
            (
                "admitted_rate".into(),
                Value::from((admitted_rate * 10.0).round() / 10.0),
            ),
        ]))
    }
}

#[derive(Clone)]
struct Limiter {
    script: redis::Script,
    args: Vec<String>,
}

struct Sent {
    /// Planned send time, ms from the start.
    offset: f64,
    /// When the request was let through, ms from the start; None if rejected.
    admitted_at: Option<f64>,
}

/// Redis's clock in ms, read once, with the local instant it corresponds to.
async fn redis_clock(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<(f64, Instant), ExerciseError> {
    let before = Instant::now();
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .doing("reading Redis's clock")?;
    let rtt = before.elapsed();
    Ok((
        secs as f64 * 1000.0 + micros as f64 / 1000.0,
        before + rtt / 2,
    ))
}

/// Sends the requests at their offsets from `clock.0` (which is `clock.1` ms
/// on Redis's clock) and notes when the limiter let each through.
async fn send(
    mut conn: redis::aio::MultiplexedConnection,
    limiter: Limiter,
    key: String,
    clock: (Instant, f64),
    offsets: Vec<f64>,
) -> Result<Vec<Sent>, ExerciseError> {
    let (start, redis_ms) = clock;
    let mut sent = Vec::with_capacity(offsets.len());
    for offset in offsets {
        tokio::time::sleep_until((start + Duration::from_secs_f64(offset / 1000.0)).into()).await;
        let mut inv = limiter.script.key(&key);
        for a in &limiter.args {
            inv.arg(a);
        }
        let (allowed, at_us): (i64, i64) = inv
            .invoke_async(&mut conn)
            .await
            .doing("asking the limiter")?;
        sent.push(Sent {
            offset,
            admitted_at: (allowed == 1).then_some(at_us as f64 / 1000.0 - redis_ms),
        });
    }
    Ok(sent)
}

/// Most timestamps (sorted) within any half-open interval of `width`.
fn max_in_window(sorted: &[f64], width: f64) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= width {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

async fn cleanup(
    conn: &mut redis::aio::MultiplexedConnection,
    namespace: &str,
) -> Result<(), ExerciseError> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(conn)
        .await
        .doing("listing the limiter's keys")?;
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(conn)
            .await
            .doing("deleting the limiter's keys")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::max_in_window;

    #[test]
    fn sliding_window_counts_the_densest_second() {
        assert_eq!(max_in_window(&[], 1000.0), 0);
        assert_eq!(
            max_in_window(&[0.0, 500.0, 999.0, 1000.0, 1001.0], 1000.0),
            4
        );
        assert_eq!(max_in_window(&[0.0, 2000.0, 4000.0], 1000.0), 1);
    }
}
