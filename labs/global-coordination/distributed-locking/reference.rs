//! distributed-locking, the reference solution.
//!
//! Each instance adds 1 to the ledger's value INFRALAB_PARAM_INCREMENTS
//! times, by read-modify-write, under a lock kept on Redis:
//!
//! - grant: one Lua script does `SET lock owner NX PX ttl` and, only when it
//!   succeeds, `INCR` of a fence counter: the grant and its token are one
//!   atomic step, so tokens grow in grant order;
//! - every ledger access carries the token; a refusal (409) means a newer
//!   holder has been there, so this holder's lease is over: it gives the
//!   increment up and does it again under a new grant;
//! - release: a script deletes the lock only while it still holds its own
//!   owner id, never a lock another instance got after this lease ran out.
//!
//! The broken solutions beside this file reuse it with one mistake each
//! ([`Mistakes`]).
//!
//! Run it: `infralab run distributed-locking --solution reference`.

use std::error::Error;
use std::time::Duration;

/// Grants the lock and a fence token, or 0 when it is taken.
/// KEYS: lock, fence counter. ARGV: owner, lease in ms.
const GRANT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0";

/// The same without a lease: a holder that dies keeps the lock forever.
const GRANT_NO_EXPIRY: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return redis.call('INCR', KEYS[2])
end
return 0";

/// Deletes the lock only while it is still this owner's.
/// KEYS: lock. ARGV: owner.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The mistakes the broken solutions make (all false here).
#[derive(Default, Clone, Copy)]
pub struct Mistakes {
    /// `SET NX` without `PX`.
    pub no_expiry: bool,
    /// Release with a plain `DEL`.
    pub plain_del: bool,
    /// No fence token on the ledger.
    pub no_fencing: bool,
}

/// What the environment says.
pub struct Contract {
    redis_url: String,
    ledger: String,
    instance: String,
    namespace: String,
    increments: u64,
    ttl_ms: u64,
    hold: Duration,
    retry: Duration,
}

fn var(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run me with `infralab run distributed-locking --solution CMD`")
            .into()
    })
}

fn number(name: &str) -> Result<u64, Box<dyn Error>> {
    Ok(var(name)?.parse().map_err(|e| format!("{name}: {e}"))?)
}

impl Contract {
    /// Reads the variables infralab sets.
    pub fn from_env() -> Result<Contract, Box<dyn Error>> {
        Ok(Contract {
            redis_url: var("REDIS_URL")?,
            ledger: var("LEDGER_URL")?,
            instance: var("INFRALAB_INSTANCE")?,
            namespace: var("INFRALAB_NAMESPACE")?,
            increments: number("INFRALAB_PARAM_INCREMENTS")?,
            ttl_ms: number("INFRALAB_PARAM_TTL_MS")?,
            hold: Duration::from_millis(number("INFRALAB_PARAM_HOLD_MS")?),
            retry: Duration::from_millis(number("INFRALAB_PARAM_RETRY_MS")?),
        })
    }
}

/// Runs the instance: `increments` increments, each under a fresh grant.
pub async fn run(mistakes: Mistakes) -> Result<(), Box<dyn Error>> {
    let c = Contract::from_env()?;
    let redis = redis::Client::open(c.redis_url.as_str())?;
    // Generous timeouts: the client's default of 500 ms per answer fires at
    // once when this process resumes from a pause that caught a command in
    // flight (the answer came meanwhile), and a busy machine is slow too.
    let patient = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    let mut conn = redis
        .get_multiplexed_async_connection_with_config(&patient)
        .await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let lock = format!("{}:lock", c.namespace);
    let fence = format!("{}:fence", c.namespace);
    let grant = redis::Script::new(if mistakes.no_expiry {
        GRANT_NO_EXPIRY
    } else {
        GRANT
    });
    let release = redis::Script::new(RELEASE);

    let (mut done, mut attempt) = (0, 0);
    while done < c.increments {
        attempt += 1;
        let owner = format!("{}-{attempt}", c.instance);
        let token: i64 = loop {
            let t: i64 = grant
                .key(&lock)
                .key(&fence)
                .arg(&owner)
                .arg(c.ttl_ms)
                .invoke_async(&mut conn)
                .await?;
            if t > 0 {
                break t;
            }
            tokio::time::sleep(c.retry).await;
        };

        let mut url = format!("{}?instance={}", c.ledger, c.instance);
        if !mistakes.no_fencing {
            url += &format!("&token={token}");
        }
        let incremented = increment(&http, &url, c.hold).await?;

        if mistakes.plain_del {
            let _: i64 = redis::cmd("DEL").arg(&lock).query_async(&mut conn).await?;
        } else {
            let _: i64 = release
                .key(&lock)
                .arg(&owner)
                .invoke_async(&mut conn)
                .await?;
        }
        if incremented {
            done += 1;
        } else {
            eprintln!("token {token} was refused: a newer holder got in; doing it again");
        }
    }
    println!("instance {}: {done} increments", c.instance);
    Ok(())
}

/// Read, work, write value + 1. False when the ledger refused the token.
async fn increment(
    http: &reqwest::Client,
    url: &str,
    hold: Duration,
) -> Result<bool, Box<dyn Error>> {
    let read = http.get(url).send().await?;
    if read.status() == reqwest::StatusCode::CONFLICT {
        return Ok(false);
    }
    let value: i64 = read.error_for_status()?.text().await?.trim().parse()?;
    tokio::time::sleep(hold).await;
    let write = http.put(url).body((value + 1).to_string()).send().await?;
    if write.status() == reqwest::StatusCode::CONFLICT {
        return Ok(false);
    }
    write.error_for_status()?;
    Ok(true)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run(Mistakes::default()).await
}
