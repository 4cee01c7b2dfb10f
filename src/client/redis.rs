//! Redis through the redis crate: connecting to a `redis` service, the
//! readiness probe (PING), the smoke round trip (SET, GET), Lua scripts with
//! their keys and arguments, and the server-side counters exercises read back
//! (INFO stats, DBSIZE, TIME).

pub mod cluster;
pub mod sentinel;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use super::round_trip::{RoundTrip, Trip, TripInput};
use crate::catalog::Endpoint;
use crate::exercise::{Context, ExerciseError};

/// A multiplexed connection to a Redis service for exercises. The client's
/// defaults (1 s to connect, 500 ms per answer) turn a busy 2-core machine
/// into errors; a late answer is still an answer, so both are 10 s here.
pub async fn connect(endpoint: &Endpoint) -> Result<MultiplexedConnection, ExerciseError> {
    open(endpoint, Duration::from_secs(10)).await
}

/// A connection that waits as long as the server stalls: a `pause` fault
/// freezes Redis for seconds, and a frozen server must give a late answer,
/// not an error.
pub async fn connect_patient(endpoint: &Endpoint) -> Result<MultiplexedConnection, ExerciseError> {
    open(endpoint, Duration::from_secs(60)).await
}

async fn open(
    endpoint: &Endpoint,
    answer_within: Duration,
) -> Result<MultiplexedConnection, ExerciseError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(answer_within));
    redis::Client::open(endpoint.url.as_str())
        .doing("redis url")?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .doing(&format!("connecting to {}", endpoint.service))
}

/// The readiness probe: a PING answered with PONG, with the client's short
/// default timeouts (the engine retries with backoff until its deadline);
/// a replica must also be in sync with its primary (link up, no sync in
/// progress), or the first reads of a lab would find it empty.
pub async fn ping(endpoint: &Endpoint) -> Result<(), String> {
    let client = redis::Client::open(endpoint.url.as_str()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    if pong != "PONG" {
        return Err(format!("PING answered {pong:?}"));
    }
    let info = replication(&mut conn).await.map_err(|e| e.0)?;
    match info.role.as_str() {
        "slave" if !info.link_up => Err(format!(
            "replica not in sync with its primary yet (master_link_status:{})",
            info.link_status
        )),
        _ => Ok(()),
    }
}

/// What `INFO replication` says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replication {
    /// `master` or `slave`.
    pub role: String,
    /// A replica's link to its primary: `up`, `down`.
    pub link_status: String,
    /// Link up and no full synchronisation in progress.
    pub link_up: bool,
    /// Bytes of the replication stream this server has produced (a primary)
    /// or processed (a replica).
    pub offset: u64,
    /// A primary's replicas: the offset each has acknowledged, in order.
    pub replica_offsets: Vec<u64>,
}

/// `REPLICAOF NO ONE` (`None`: become a primary) or `REPLICAOF host 6379`.
pub async fn replicaof(
    conn: &mut MultiplexedConnection,
    primary: Option<&str>,
) -> Result<(), ExerciseError> {
    let (host, port) = primary.map_or(("NO", "ONE"), |h| (h, "6379"));
    let _: () = redis::cmd("REPLICAOF")
        .arg(host)
        .arg(port)
        .query_async(conn)
        .await
        .doing("REPLICAOF")?;
    Ok(())
}

/// Waits until the replica on `conn` is in sync with its primary (link up,
/// no sync running); `what` names it in the error after `within`.
pub async fn until_in_sync(
    conn: &mut MultiplexedConnection,
    within: Duration,
    what: &str,
) -> Result<(), ExerciseError> {
    let deadline = Instant::now() + within;
    while !replication(conn).await?.link_up {
        if Instant::now() > deadline {
            return Err(ExerciseError(format!(
                "{what} did not sync with its primary within {} s",
                within.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `INFO replication`, parsed.
pub async fn replication(conn: &mut MultiplexedConnection) -> Result<Replication, ExerciseError> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .doing("INFO replication")?;
    Ok(parse_replication(&info))
}

fn parse_replication(info: &str) -> Replication {
    let field = |name: &str| info_field(info, name);
    let role = field("role").unwrap_or_default().to_string();
    let link_status = field("master_link_status").unwrap_or_default().to_string();
    let offset_field = if role == "slave" {
        "slave_repl_offset"
    } else {
        "master_repl_offset"
    };
    let replica_offsets = info
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains(":ip="))
        .filter_map(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix("offset="))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    Replication {
        link_up: link_status == "up" && field("master_sync_in_progress") == Some("0"),
        role,
        link_status,
        offset: field(offset_field)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        replica_offsets,
    }
}

/// The Redis round trip: `SET` then `GET` of a namespaced key.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "redis",
    ok: "SET then GET returned the value written",
    ms: "SET + GET round trip",
    error: "why the round trip failed (only when it did)",
    extra: &[],
    params: Vec::new,
    start: |input| Box::pin(round_trip(input)),
};

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let mut conn = connect(&input.endpoint).await.map_err(|e| e.0)?;
    let key = format!("{}:smoke", input.namespace);
    let value = input.token();
    input.gate.wait().await;
    let started = Instant::now();
    let _: () = conn
        .set(&key, &value)
        .await
        .map_err(|e| format!("SET: {e}"))?;
    let read: Option<String> = conn.get(&key).await.map_err(|e| format!("GET: {e}"))?;
    let elapsed = started.elapsed();
    let _: Result<(), _> = conn.del(&key).await;
    Trip::read_back(elapsed, &value, read.as_deref().unwrap_or("(nil)"))
}

/// A Lua script run with EVALSHA (loaded on first use), so one decision on
/// the server is one atomic step.
#[derive(Clone)]
pub struct Lua(redis::Script);

impl Lua {
    /// A script from its source.
    pub fn new(source: &str) -> Self {
        Lua(redis::Script::new(source))
    }

    /// Runs the script with `keys` and `args` (sent as text, as Redis reads
    /// every argument); `what` names the step in errors.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[&str],
        args: &[&(dyn std::fmt::Display + Sync)],
        what: &str,
    ) -> Result<T, ExerciseError> {
        let mut inv = self.0.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a.to_string());
        }
        inv.invoke_async(conn).await.doing(what)
    }
}

/// Number of keys in the current database.
pub async fn dbsize(conn: &mut MultiplexedConnection) -> Result<i64, ExerciseError> {
    redis::cmd("DBSIZE").query_async(conn).await.doing("DBSIZE")
}

/// Lookups that found a key and lookups that did not, as the server counts
/// them (`INFO stats`: keyspace_hits, keyspace_misses) since it started.
pub async fn keyspace_hits_misses(
    conn: &mut MultiplexedConnection,
) -> Result<(u64, u64), ExerciseError> {
    let info = info_stats(conn).await?;
    Ok((
        stats_field(&info, "keyspace_hits")?,
        stats_field(&info, "keyspace_misses")?,
    ))
}

/// Commands the server has processed since it started (`INFO stats`:
/// total_commands_processed).
pub async fn commands_processed(conn: &mut MultiplexedConnection) -> Result<u64, ExerciseError> {
    stats_field(&info_stats(conn).await?, "total_commands_processed")
}

async fn info_stats(conn: &mut MultiplexedConnection) -> Result<String, ExerciseError> {
    redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .doing("INFO stats")
}

fn stats_field(info: &str, name: &str) -> Result<u64, ExerciseError> {
    info_field(info, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ExerciseError(format!("INFO stats has no {name}")))
}

/// The value of `name:value` in an `INFO` (or `CLUSTER INFO`) answer.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The server's clock in ms (TIME), with the local instant it corresponds
/// to (half the round trip after sending), to place server times locally.
pub async fn server_clock(
    conn: &mut MultiplexedConnection,
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

/// Deletes every key under `namespace:` (the scenario's own keys).
pub async fn delete_namespace(
    conn: &mut MultiplexedConnection,
    namespace: &str,
) -> Result<(), ExerciseError> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(conn)
        .await
        .doing("listing the scenario's keys")?;
    for chunk in keys.chunks(1000) {
        let _: i64 = redis::cmd("DEL")
            .arg(chunk)
            .query_async(conn)
            .await
            .doing("deleting the scenario's keys")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_primarys_replicas_and_a_replicas_link() {
        let primary = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=172.18.0.3,port=6379,state=online,offset=1400,lag=0\r\nslave1:ip=172.18.0.4,port=6379,state=online,offset=1350,lag=1\r\nmaster_failover_state:no-failover\r\nmaster_repl_offset:1400\r\n";
        let p = parse_replication(primary);
        assert_eq!(p.role, "master");
        assert_eq!(p.offset, 1400);
        assert_eq!(p.replica_offsets, vec![1400, 1350]);
        let replica = "role:slave\r\nmaster_host:primary\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:1350\r\n";
        let r = parse_replication(replica);
        assert!(r.link_up);
        assert_eq!(r.offset, 1350);
        let syncing = replica.replace("master_sync_in_progress:0", "master_sync_in_progress:1");
        assert!(!parse_replication(&syncing).link_up);
    }
}
