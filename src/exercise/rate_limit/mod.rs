//! `rate-limit`: clients send requests through a limiter kept in Redis, first
//! a steady trickle, then a burst; the protected service logs when each
//! admitted request really reached it.
//!
//! The limiter's state lives in Redis and every decision is one Lua script,
//! so it is atomic across all clients and uses one clock (Redis `TIME`):
//!
//! - `token-bucket`: a bucket of `capacity` tokens refilled at `rate` per
//!   second; a request takes a token or is rejected. A full bucket lets a
//!   burst of `capacity` through at once, then `rate` per second.
//! - `leaky-bucket`: a queue of at most `capacity` requests drained at `rate`
//!   per second (virtual scheduling: each accepted request gets the next free
//!   slot, 1/`rate` after the previous one). The script answers the slot; the
//!   client waits for it before it proceeds. A burst is smoothed, never
//!   passed on; a full queue rejects.
//! - `fixed-window`: a counter per window of `window_ms` on Redis's clock,
//!   allowing `rate` × `window_ms` / 1000 requests per window. Two windows
//!   back to back let twice that through around their boundary.
//!
//! An admitted request then "proceeds": one call to the protected service
//! (here the same Redis) that appends the server's clock to a log. Every
//! timing observation is read from that log, so it says when requests went
//! through, not when the limiter planned them. Each request is its own task,
//! so a request waiting for its slot never holds back the next arrival, and
//! arrivals are paced without catch-up bursts after a stall.

mod challenge;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::redis::{Lua, connect, delete_namespace, server_clock};
use crate::stats::{join_workers, pacer, round2, round4};

/// The `rate-limit` exercise.
pub struct RateLimit;

/// The head of the burst that `burst_admitted` counts: long enough that a
/// busy machine still offers more than a bucket's capacity within it.
const BURST_HEAD_MS: f64 = 250.0;

// Every limiter script answers {allowed (1 or 0), now µs, slot µs} on
// Redis's clock; the slot is when the request may proceed.

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
local us = math.floor(now * 1000)
return {ok, us, us}";

// ARGV: capacity (queue size), interval between slots in ms.
const LEAKY_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cap = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, last + interval)
local us = math.floor(now * 1000)
if slot - now > (cap - 1) * interval then return {0, us, us} end
redis.call('SET', KEYS[1], tostring(slot), 'PX', 60000)
return {1, us, math.floor(slot * 1000)}";

// ARGV: window in ms, limit per window.
const FIXED_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = math.floor(now / tonumber(ARGV[1]))
local key = KEYS[1] .. ':' .. w
local n = redis.call('INCR', key)
if n == 1 then redis.call('PEXPIRE', key, tonumber(ARGV[1]) * 2) end
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if n <= tonumber(ARGV[2]) then return {1, us, us} end
return {0, us, us}";

// The protected service: logs the server's clock (µs) when a request reaches it.
const PROCEED: &str = r"
local t = redis.call('TIME')
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('RPUSH', KEYS[1], us)
return us";

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
            ParamSpec::flag(
                "wait_for_slot",
                true,
                "an admitted request waits for its leaky-bucket slot before it proceeds (false: the bug of a client that proceeds at once)",
            ),
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
                ObsSpec::number("allowed", "requests that reached the service (its log)"),
                ObsSpec::number("rejected", "requests the limiter refused"),
                ObsSpec::number(
                    "steady_rejected",
                    "requests refused during the steady phase",
                ),
                ObsSpec::number("burst_requests", "requests sent during the burst"),
                ObsSpec::number("burst_allowed", "burst requests the limiter admitted"),
                ObsSpec::number(
                    "burst_seconds",
                    "from the burst's first to its last request reaching the limiter, on Redis's clock",
                ),
                ObsSpec::number(
                    "burst_admitted",
                    "requests that reached the service within 250 ms of the burst's first request reaching the limiter",
                ),
                ObsSpec::number(
                    "served_rate",
                    "requests that reached the service per second, from the burst's first request until the last request went through",
                ),
                ObsSpec::number(
                    "max_allowed_in_any_1s",
                    "most requests that reached the service in any sliding 1 s interval",
                ),
                ObsSpec::number(
                    "max_allowed_in_any_window",
                    "most requests that reached the service in any sliding interval of window_ms",
                ),
                ObsSpec::number(
                    "max_allowed_in_a_window",
                    "most requests admitted within one window of the window_ms grid on Redis's clock",
                ),
                ObsSpec::number(
                    "excess_over_bucket",
                    "most requests beyond what a token bucket of capacity and rate lets through in any interval of the service's log: count - (capacity + rate x its length)",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("clients-started", "the clients start the steady phase"),
                Milestone::new("clients-finished", "every request was answered and served"),
                Milestone::new(
                    "burst-started",
                    "challenge: the first ticket of the burst was handed out",
                ),
            ]
        }
    }

    fn harness_env(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "TICKETS_URL",
            "the offered load: GET $TICKETS_URL/next?instance=N waits for your next ticket (204: no more); POST $TICKETS_URL/call?ticket=K&instance=N is the API, called only for admitted tickets",
        )]
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        if let Some(solution) = ctx.solution() {
            return challenge::run(ctx, solution).await;
        }
        let endpoint = ctx.service("redis")?;
        let mut setup = connect(endpoint).await?;
        let keys = Keys {
            limiter: format!("{}:limiter", ctx.namespace),
            served: format!("{}:served", ctx.namespace),
        };
        let limiter = Limiter::from(ctx);
        let plan = Plan::new(ctx, &mut setup).await?;

        let mut clients = Vec::new();
        for c in 0..ctx.int("clients") as usize {
            clients.push(Client {
                conn: connect(endpoint).await?,
                index: c,
                limiter: limiter.clone(),
                keys: keys.clone(),
                plan: plan.clone(),
            });
        }
        ctx.mark("clients-started");
        let handles: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(c.send_all()))
            .collect();
        let answers: Vec<Answer> = join_workers(handles).await?.into_iter().flatten().collect();
        ctx.mark("clients-finished");

        let served_us: Vec<i64> = redis::cmd("LRANGE")
            .arg(&keys.served)
            .arg(0)
            .arg(-1)
            .query_async(&mut setup)
            .await
            .doing("reading the service's log")?;
        delete_namespace(&mut setup, &ctx.namespace).await?;
        Ok(observe(
            &answers,
            &served_us,
            ctx.int("window_ms") as f64,
            Bucket::from(ctx),
        ))
    }
}

#[derive(Clone)]
struct Keys {
    limiter: String,
    served: String,
}

#[derive(Clone)]
struct Limiter {
    script: Lua,
    args: Vec<String>,
    /// Admitted requests wait for their slot before they proceed.
    wait: bool,
    /// The protected service's log call.
    proceed: Lua,
}

impl Limiter {
    fn from(ctx: &Ctx) -> Self {
        let rate = ctx.int("rate") as f64;
        let capacity = ctx.int("capacity");
        let window_ms = ctx.int("window_ms");
        let (source, args) = match ctx.text("algorithm") {
            "leaky-bucket" => (
                LEAKY_BUCKET,
                vec![capacity.to_string(), (1000.0 / rate).to_string()],
            ),
            "fixed-window" => (
                FIXED_WINDOW,
                vec![
                    window_ms.to_string(),
                    ((rate * window_ms as f64 / 1000.0).round().max(1.0) as i64).to_string(),
                ],
            ),
            _ => (
                TOKEN_BUCKET,
                vec![capacity.to_string(), (rate / 1000.0).to_string()],
            ),
        };
        Limiter {
            script: Lua::new(source),
            args,
            wait: ctx.flag("wait_for_slot"),
            proceed: Lua::new(PROCEED),
        }
    }
}

/// When the phases happen, on the local clock, and how to turn Redis's clock
/// into it.
#[derive(Clone)]
struct Plan {
    clients: usize,
    /// The local instant at which Redis's clock read `redis_ms`.
    start: Instant,
    redis_ms: f64,
    steady_rps: f64,
    burst_start: Instant,
    burst_end: Instant,
    burst_rps: f64,
}

impl Plan {
    async fn new(ctx: &Ctx, conn: &mut MultiplexedConnection) -> Result<Self, ExerciseError> {
        let (redis_ms, start) = server_clock(conn).await?;
        let steady_ms = ctx.int("steady_ms") as f64;
        let burst_ms = ctx.int("burst_ms") as f64;
        let half_burst = burst_ms / 2.0;
        let w = ctx.int("window_ms") as f64;
        let burst_start_ms = match ctx.text("burst_at") {
            "window-start" => ((redis_ms + steady_ms - 50.0) / w).ceil() * w + 50.0 - redis_ms,
            "window-boundary" => {
                ((redis_ms + steady_ms + half_burst) / w).ceil() * w - half_burst - redis_ms
            }
            _ => steady_ms,
        };
        let at = |ms: f64| start + Duration::from_secs_f64(ms.max(0.0) / 1000.0);
        Ok(Plan {
            clients: ctx.int("clients") as usize,
            start,
            redis_ms,
            steady_rps: ctx.int("steady_rps") as f64,
            burst_start: at(burst_start_ms),
            burst_end: at(burst_start_ms + burst_ms),
            burst_rps: ctx.int("burst_rps") as f64,
        })
    }

    /// The local instant of a time in µs on Redis's clock.
    fn local(&self, redis_us: i64) -> Instant {
        let ms = redis_us as f64 / 1000.0 - self.redis_ms;
        if ms <= 0.0 {
            self.start
        } else {
            self.start + Duration::from_secs_f64(ms / 1000.0)
        }
    }
}

/// What one request got from the limiter.
struct Answer {
    burst: bool,
    allowed: bool,
    /// When it reached the limiter, µs on Redis's clock.
    decided_us: i64,
}

struct Client {
    conn: MultiplexedConnection,
    index: usize,
    limiter: Limiter,
    keys: Keys,
    plan: Plan,
}

impl Client {
    /// The steady phase, then the burst; each request is its own task.
    async fn send_all(self) -> Result<Vec<Answer>, ExerciseError> {
        let p = &self.plan;
        let mut requests = Vec::new();
        if p.steady_rps > 0.0 {
            self.phase(p.start, p.steady_rps, p.burst_start, false, &mut requests)
                .await;
        }
        self.phase(p.burst_start, p.burst_rps, p.burst_end, true, &mut requests)
            .await;
        join_workers(requests).await
    }

    /// Sends requests paced at this client's share of `total_rps` from `from`
    /// (staggered between clients) until `until`; a stall delays the next
    /// request instead of firing the missed ones at once.
    async fn phase(
        &self,
        from: Instant,
        total_rps: f64,
        until: Instant,
        burst: bool,
        requests: &mut Vec<JoinHandle<Result<Answer, ExerciseError>>>,
    ) {
        let stagger = Duration::from_secs_f64(self.index as f64 / total_rps);
        tokio::time::sleep_until((from + stagger).into()).await;
        let mut pace = pacer(total_rps / self.plan.clients as f64);
        let end = tokio::time::sleep_until(until.into());
        tokio::pin!(end);
        loop {
            // The phase ends on time even when this client's next tick is far off.
            tokio::select! {
                _ = &mut end => return,
                _ = pace.tick() => {}
            }
            requests.push(tokio::spawn(self.request(burst)));
        }
    }

    /// One request: ask the limiter, wait for the slot if it says so, proceed.
    fn request(
        &self,
        burst: bool,
    ) -> impl std::future::Future<Output = Result<Answer, ExerciseError>> + Send + 'static {
        let mut conn = self.conn.clone();
        let limiter = self.limiter.clone();
        let keys = self.keys.clone();
        let plan = self.plan.clone();
        async move {
            let args: Vec<&(dyn std::fmt::Display + Sync)> = limiter
                .args
                .iter()
                .map(|a| a as &(dyn std::fmt::Display + Sync))
                .collect();
            let (allowed, decided_us, slot_us): (i64, i64, i64) = limiter
                .script
                .call(&mut conn, &[&keys.limiter], &args, "asking the limiter")
                .await?;
            if allowed == 1 {
                if limiter.wait {
                    tokio::time::sleep_until(plan.local(slot_us).into()).await;
                }
                let _: i64 = limiter
                    .proceed
                    .call(&mut conn, &[&keys.served], &[], "proceeding")
                    .await?;
            }
            Ok(Answer {
                burst,
                allowed: allowed == 1,
                decided_us,
            })
        }
    }
}

/// The observations, from the limiter's answers and the service's log
/// (times in µs on Redis's clock).
fn observe(answers: &[Answer], served_us: &[i64], window_ms: f64, bucket: Bucket) -> Observations {
    let mut served: Vec<f64> = served_us.iter().map(|&us| us as f64 / 1000.0).collect();
    served.sort_by(f64::total_cmp);
    let burst: Vec<&Answer> = answers.iter().filter(|a| a.burst).collect();
    let first = burst.iter().map(|a| a.decided_us).min();
    let last = burst.iter().map(|a| a.decided_us).max();
    let rejected = answers.iter().filter(|a| !a.allowed).count();
    let steady_rejected = answers.iter().filter(|a| !a.burst && !a.allowed).count();
    let burst_allowed = burst.iter().filter(|a| a.allowed).count();
    let first_ms = first.map(|us| us as f64 / 1000.0);
    let burst_admitted = first_ms.map(|f| {
        served
            .iter()
            .filter(|&&t| t >= f && t < f + BURST_HEAD_MS)
            .count()
    });
    let served_rate = first_ms.and_then(|f| {
        let after: Vec<f64> = served.iter().copied().filter(|&t| t >= f).collect();
        let span = after.last()? - f;
        (span > 0.0).then(|| round2((after.len() - 1) as f64 * 1000.0 / span))
    });
    let mut admitted_ms: Vec<f64> = answers
        .iter()
        .filter(|a| a.allowed)
        .map(|a| a.decided_us as f64 / 1000.0)
        .collect();
    admitted_ms.sort_by(f64::total_cmp);
    Observations::from([
        ("allowed".into(), Value::from(served.len())),
        ("rejected".into(), Value::from(rejected)),
        ("steady_rejected".into(), Value::from(steady_rejected)),
        ("burst_requests".into(), Value::from(burst.len())),
        ("burst_allowed".into(), Value::from(burst_allowed)),
        (
            "burst_seconds".into(),
            Value::from(first.zip(last).map(|(f, l)| round4((l - f) as f64 / 1e6))),
        ),
        ("burst_admitted".into(), Value::from(burst_admitted)),
        ("served_rate".into(), Value::from(served_rate)),
        (
            "max_allowed_in_any_1s".into(),
            Value::from(max_in_window(&served, 1000.0)),
        ),
        (
            "max_allowed_in_any_window".into(),
            Value::from(max_in_window(&served, window_ms)),
        ),
        (
            "max_allowed_in_a_window".into(),
            Value::from(max_per_grid_window(&admitted_ms, window_ms)),
        ),
        (
            "excess_over_bucket".into(),
            Value::from(excess_over_bucket(&served, bucket).map(|e| round2(e.excess))),
        ),
    ])
}

/// A token bucket's allowance: `capacity` at once, `rate` per second after.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    rate: f64,
}

impl Bucket {
    fn from(ctx: &Ctx) -> Self {
        Bucket {
            capacity: ctx.int("capacity") as f64,
            rate: ctx.int("rate") as f64,
        }
    }
}

/// The interval of a log that goes furthest beyond a bucket's allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Excess {
    /// count - (capacity + rate × length).
    excess: f64,
    /// Its first and last timestamps (ms) and how many it holds.
    from: f64,
    to: f64,
    count: usize,
}

/// The worst interval of `sorted` (ms) against `bucket`: every request
/// beyond what a token bucket lets through in some interval is over the
/// limit, whatever algorithm made the decisions. `None` without requests.
fn excess_over_bucket(sorted: &[f64], bucket: Bucket) -> Option<Excess> {
    let mut worst: Option<Excess> = None;
    for (i, &from) in sorted.iter().enumerate() {
        for (j, &to) in sorted.iter().enumerate().skip(i) {
            let count = j - i + 1;
            let excess = count as f64 - (bucket.capacity + bucket.rate * (to - from) / 1000.0);
            if worst.is_none_or(|w| excess > w.excess) {
                worst = Some(Excess {
                    excess,
                    from,
                    to,
                    count,
                });
            }
        }
    }
    worst
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

/// Most timestamps within one window `[k·width, (k+1)·width)` of the grid.
fn max_per_grid_window(times: &[f64], width: f64) -> usize {
    let mut counts = std::collections::BTreeMap::new();
    for t in times {
        *counts.entry((t / width).floor() as i64).or_insert(0usize) += 1;
    }
    counts.into_values().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_counts_the_densest_second() {
        assert_eq!(max_in_window(&[], 1000.0), 0);
        assert_eq!(
            max_in_window(&[0.0, 500.0, 999.0, 1000.0, 1001.0], 1000.0),
            4
        );
        assert_eq!(max_in_window(&[0.0, 2000.0, 4000.0], 1000.0), 1);
    }

    #[test]
    fn the_excess_is_what_goes_beyond_a_token_bucket() {
        let bucket = Bucket {
            capacity: 2.0,
            rate: 10.0,
        };
        assert_eq!(excess_over_bucket(&[], bucket), None);
        // One every 100 ms: 1 - 2 at worst.
        let even: Vec<f64> = (0..10).map(|i| f64::from(i) * 100.0).collect();
        assert_eq!(excess_over_bucket(&even, bucket).unwrap().excess, -1.0);
        // Five at once: 5 - 2.
        let bunch = excess_over_bucket(&[0.0, 100.0, 500.0, 500.0, 500.0, 500.0, 500.0], bucket);
        let bunch = bunch.unwrap();
        assert_eq!((bunch.excess, bunch.count, bunch.from), (3.0, 5, 500.0));
    }

    #[test]
    fn grid_windows_count_within_their_bounds() {
        assert_eq!(max_per_grid_window(&[], 1000.0), 0);
        assert_eq!(
            max_per_grid_window(&[999.0, 1000.0, 1500.0, 2100.0], 1000.0),
            2
        );
    }

    #[test]
    fn the_leaky_bucket_serves_at_its_rate_from_the_burst_on() {
        // Steady requests before the burst, then one slot every 50 ms.
        let answers: Vec<Answer> = (0..8)
            .map(|i| Answer {
                burst: true,
                allowed: true,
                decided_us: 1_000_000 + i * 1_000,
            })
            .collect();
        let served: Vec<i64> = (0..8).map(|i| 1_000_000 + i * 50_000).collect();
        let bucket = Bucket {
            capacity: 5.0,
            rate: 20.0,
        };
        let obs = observe(&answers, &served, 1000.0, bucket);
        assert_eq!(obs["burst_admitted"], 5);
        assert_eq!(obs["served_rate"], 20.0);
        assert_eq!(obs["burst_seconds"], 0.007);
    }
}
