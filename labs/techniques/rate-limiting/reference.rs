//! rate-limiting, the reference solution.
//!
//! Every instance takes tickets (the offered load) and calls the API only
//! for those the shared limiter admits. The limiter is a token bucket kept
//! in Redis: `INFRALAB_PARAM_CAPACITY` tokens, refilled at
//! `INFRALAB_PARAM_RATE` per second. One Lua script reads the bucket,
//! refills it for the time passed on Redis's own clock (`TIME`: one clock
//! for every instance, no skew), spends a token or refuses, and writes it
//! back: atomic, so concurrent instances never spend the same token.
//!
//! The broken solutions beside this file reuse it with one mistake each
//! ([`Mistakes`]).
//!
//! Run it: `infralab run rate-limiting --solution reference`.

use std::error::Error;
use std::time::{Duration, Instant};

/// Spends a token when there is one: 1 admitted, 0 refused.
/// KEYS: the bucket. ARGV: capacity, tokens per ms.
const TOKEN_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cap = tonumber(ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * tonumber(ARGV[2]))
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 60000)
return ok";

/// A counter per one-second window of Redis's clock: at most `rate` in
/// each. KEYS: the counter's prefix. ARGV: rate.
const FIXED_WINDOW: &str = r"
local t = redis.call('TIME')
local key = KEYS[1] .. ':' .. t[1]
local n = redis.call('INCR', key)
if n == 1 then redis.call('EXPIRE', key, 2) end
if n <= tonumber(ARGV[1]) then return 1 end
return 0";

/// The mistakes the broken solutions make (all false here).
#[derive(Default, Clone, Copy)]
pub struct Mistakes {
    /// The bucket lives in the process, not in Redis: every instance has its own.
    pub per_process: bool,
    /// A fixed one-second window instead of a bucket.
    pub fixed_window: bool,
}

fn var(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run me with `infralab run rate-limiting --solution CMD`").into()
    })
}

fn number(name: &str) -> Result<f64, Box<dyn Error>> {
    Ok(var(name)?.parse().map_err(|e| format!("{name}: {e}"))?)
}

/// A token bucket in this process's memory (the per-process mistake).
struct LocalBucket {
    tokens: f64,
    at: Instant,
}

/// Runs the instance until the tickets run out.
pub async fn run(mistakes: Mistakes) -> Result<(), Box<dyn Error>> {
    let tickets = var("TICKETS_URL")?;
    let instance = var("INFRALAB_INSTANCE")?;
    let namespace = var("INFRALAB_NAMESPACE")?;
    let (rate, capacity) = (
        number("INFRALAB_PARAM_RATE")?,
        number("INFRALAB_PARAM_CAPACITY")?,
    );
    let redis = redis::Client::open(var("REDIS_URL")?)?;
    // The client's default of 500 ms per answer turns a busy machine into
    // errors; a late answer is still an answer.
    let patient = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    let mut conn = redis
        .get_multiplexed_async_connection_with_config(&patient)
        .await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let bucket = redis::Script::new(TOKEN_BUCKET);
    let window = redis::Script::new(FIXED_WINDOW);
    let mut local = LocalBucket {
        tokens: capacity,
        at: Instant::now(),
    };
    let (mut admitted, mut refused) = (0, 0);
    loop {
        let next = http
            .get(format!("{tickets}/next?instance={instance}"))
            .send()
            .await?
            .error_for_status()?;
        if next.status() == reqwest::StatusCode::NO_CONTENT {
            break;
        }
        let ticket = next.text().await?.trim().to_string();
        let allowed = if mistakes.per_process {
            local.take(rate, capacity)
        } else if mistakes.fixed_window {
            let ok: i64 = window
                .key(format!("{namespace}:window"))
                .arg(rate)
                .invoke_async(&mut conn)
                .await?;
            ok == 1
        } else {
            let ok: i64 = bucket
                .key(format!("{namespace}:bucket"))
                .arg(capacity)
                .arg(rate / 1000.0)
                .invoke_async(&mut conn)
                .await?;
            ok == 1
        };
        if allowed {
            http.post(format!(
                "{tickets}/call?ticket={ticket}&instance={instance}"
            ))
            .send()
            .await?
            .error_for_status()?;
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    println!("instance {instance}: {admitted} admitted, {refused} refused");
    Ok(())
}

impl LocalBucket {
    fn take(&mut self, rate: f64, capacity: f64) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run(Mistakes::default()).await
}
