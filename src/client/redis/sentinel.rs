//! Redis Sentinel's API, spoken through the redis crate: where the primary
//! is, what a Sentinel knows of the topology, telling it what to watch, and
//! its announcements of a failover's steps (`+odown` … `+switch-master`).
//!
//! Sentinels and Redis servers announce names here (see
//! compose/redis-sentinel.yaml), so every address Sentinel gives is an
//! instance name of the lab with Redis's port; an exercise on the host maps
//! it to that instance's published port.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;

use super::connect;
use crate::catalog::Endpoint;
use crate::catalog::sentinel::MONITOR;
use crate::exercise::{Context, ExerciseError};

/// The readiness probe: the Sentinel answers with its primary's address.
pub async fn probe(endpoint: &Endpoint) -> Result<(), String> {
    let name = endpoint
        .env
        .get(MONITOR)
        .ok_or_else(|| format!("no {MONITOR} in the Sentinel's environment"))?;
    let client = redis::Client::open(endpoint.url.as_str()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    match primary(&mut conn, name).await.map_err(|e| e.0)? {
        Some(_) => Ok(()),
        None => Err(format!("the Sentinel does not know a primary named {name}")),
    }
}

/// The name of the primary a Sentinel watches (its `SENTINEL_MONITOR`).
pub fn watched(endpoint: &Endpoint) -> Result<&str, ExerciseError> {
    endpoint
        .env
        .get(MONITOR)
        .map(String::as_str)
        .ok_or_else(|| {
            ExerciseError(format!(
                "`{}` has no {MONITOR} in its environment",
                endpoint.service
            ))
        })
}

/// `SENTINEL get-master-addr-by-name`: the host the Sentinel currently
/// sends clients to for `name` (`None`: it watches no such primary).
pub async fn primary(
    conn: &mut MultiplexedConnection,
    name: &str,
) -> Result<Option<String>, ExerciseError> {
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(name)
        .query_async(conn)
        .await
        .doing("SENTINEL get-master-addr-by-name")?;
    Ok(addr.map(|(host, _)| host))
}

/// `SENTINEL MASTER name`: the Sentinel's state of the primary, field by
/// field (`flags`, `down-after-milliseconds`, `num-slaves`, …).
pub async fn state(
    conn: &mut MultiplexedConnection,
    name: &str,
) -> Result<BTreeMap<String, String>, ExerciseError> {
    let flat: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(name)
        .query_async(conn)
        .await
        .doing("SENTINEL MASTER")?;
    Ok(pairs(&flat))
}

fn pairs(flat: &[String]) -> BTreeMap<String, String> {
    flat.chunks(2)
        .filter_map(|kv| Some((kv[0].clone(), kv.get(1)?.clone())))
        .collect()
}

/// The replicas a Sentinel knows for `name` and whether each is healthy
/// (not down, not disconnected), by the name it announced.
pub async fn replicas(
    conn: &mut MultiplexedConnection,
    name: &str,
) -> Result<Vec<(String, bool)>, ExerciseError> {
    let list: Vec<Vec<String>> = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(name)
        .query_async(conn)
        .await
        .doing("SENTINEL REPLICAS")?;
    Ok(list
        .iter()
        .map(|flat| {
            let r = pairs(flat);
            let flags = r.get("flags").map(String::as_str).unwrap_or_default();
            let healthy = !flags.contains("down") && !flags.contains("disconnected");
            (r.get("name").cloned().unwrap_or_default(), healthy)
        })
        .collect())
}

/// How many other Sentinels this one knows for `name`.
pub async fn peers(conn: &mut MultiplexedConnection, name: &str) -> Result<usize, ExerciseError> {
    let list: Vec<redis::Value> = redis::cmd("SENTINEL")
        .arg("SENTINELS")
        .arg(name)
        .query_async(conn)
        .await
        .doing("SENTINEL SENTINELS")?;
    Ok(list.len())
}

/// Makes a Sentinel watch `name` at `host` from scratch, as an operator
/// re-points one: `SENTINEL REMOVE` (forgetting replicas, peers and past
/// failovers), `SENTINEL MONITOR`, then the timeouts it had.
pub struct Watch<'a> {
    /// The primary's name in Sentinel's API.
    pub name: &'a str,
    /// Its host (a lab name); port 6379.
    pub host: &'a str,
    /// Sentinels that must agree it is down.
    pub quorum: u32,
    /// `down-after-milliseconds`.
    pub down_after_ms: u64,
    /// `failover-timeout`.
    pub failover_timeout_ms: u64,
    /// How long TILT lasts (`SENTINEL DEBUG tilt-period`); Sentinel's own
    /// 30 s when the lab does not say.
    pub tilt_period_ms: Option<u64>,
}

/// The optional environment variable of a Sentinel service: how long TILT
/// lasts, in ms. Sentinel's own 30 s is meant for a clock that jumped; a lab
/// on a busy machine may shorten it so a stalled moment costs seconds.
pub const TILT_PERIOD_VAR: &str = "SENTINEL_TILT_PERIOD_MS";

impl Watch<'_> {
    /// The settings a Sentinel was started with (its environment).
    pub fn from_env<'a>(endpoint: &'a Endpoint, host: &'a str) -> Result<Watch<'a>, ExerciseError> {
        let number = |var: &str| -> Result<u64, ExerciseError> {
            endpoint
                .env
                .get(var)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    ExerciseError(format!("`{}`: {var} is not a number", endpoint.service))
                })
        };
        Ok(Watch {
            name: watched(endpoint)?,
            host,
            quorum: number("SENTINEL_QUORUM")? as u32,
            down_after_ms: number("SENTINEL_DOWN_AFTER_MS")?,
            failover_timeout_ms: number("SENTINEL_FAILOVER_TIMEOUT_MS")?,
            tilt_period_ms: endpoint
                .env
                .get(TILT_PERIOD_VAR)
                .map(|_| number(TILT_PERIOD_VAR))
                .transpose()?,
        })
    }

    /// Stops watching (no error when it was not).
    pub async fn forget(&self, conn: &mut MultiplexedConnection) -> Result<(), ExerciseError> {
        let done: Result<(), _> = redis::cmd("SENTINEL")
            .arg("REMOVE")
            .arg(self.name)
            .query_async(conn)
            .await;
        match done {
            Err(e) if !e.to_string().contains("No such master") => Err(e).doing("SENTINEL REMOVE"),
            _ => Ok(()),
        }
    }

    /// Starts watching, with the timeouts.
    pub async fn start(&self, conn: &mut MultiplexedConnection) -> Result<(), ExerciseError> {
        let _: () = redis::cmd("SENTINEL")
            .arg("MONITOR")
            .arg(self.name)
            .arg(self.host)
            .arg(6379)
            .arg(self.quorum)
            .query_async(conn)
            .await
            .doing("SENTINEL MONITOR")?;
        let _: () = redis::cmd("SENTINEL")
            .arg("SET")
            .arg(self.name)
            .arg("down-after-milliseconds")
            .arg(self.down_after_ms)
            .arg("failover-timeout")
            .arg(self.failover_timeout_ms)
            .query_async(conn)
            .await
            .doing("SENTINEL SET")?;
        if let Some(ms) = self.tilt_period_ms {
            let _: () = redis::cmd("SENTINEL")
                .arg("DEBUG")
                .arg("tilt-period")
                .arg(ms)
                .query_async(conn)
                .await
                .doing("SENTINEL DEBUG tilt-period")?;
        }
        Ok(())
    }
}

/// Waits until a Sentinel knows `replicas` healthy replicas and `peers`
/// other Sentinels for `name`: before that, a failover could find no replica
/// to promote or no majority to authorise it.
pub async fn until_known(
    conn: &mut MultiplexedConnection,
    name: &str,
    replicas_wanted: usize,
    peers_wanted: usize,
    within: Duration,
) -> Result<(), ExerciseError> {
    let deadline = Instant::now() + within;
    loop {
        let healthy = replicas(conn, name)
            .await?
            .iter()
            .filter(|(_, ok)| *ok)
            .count();
        let others = peers(conn, name).await?;
        if healthy >= replicas_wanted && others >= peers_wanted {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ExerciseError(format!(
                "a Sentinel knew {healthy} of {replicas_wanted} replicas and {others} of {peers_wanted} other Sentinels after {} s",
                within.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The steps of a failover a Sentinel announces on its own channels, in the
/// order they happen: the primary objectively down, an election tried, won
/// or lost (a split vote: each Sentinel waits twice `failover-timeout`
/// before it tries again), TILT (its timer ran late, so it acts on nothing
/// for its tilt period, 30 s by default), and the switch to the new primary.
const STEPS: [&str; 6] = [
    "+odown",
    "+try-failover",
    "+elected-leader",
    "-failover-abort-not-elected",
    "+tilt",
    SWITCH_MASTER,
];

/// The announcement of the new primary, last step of a failover.
pub const SWITCH_MASTER: &str = "+switch-master";

/// One announcement of a Sentinel.
#[derive(Debug, Clone, PartialEq)]
pub enum Announcement {
    /// `+switch-master`: the primary `name` is now at `host`.
    Switch { name: String, host: String },
    /// Any other step: the channel, e.g. `+elected-leader`.
    Step(String),
}

/// A Sentinel's announcements of failover steps.
pub struct Announcements(redis::aio::PubSub);

impl Announcements {
    /// Subscribes to a Sentinel's channels of failover steps.
    pub async fn subscribe(endpoint: &Endpoint) -> Result<Announcements, ExerciseError> {
        let client = redis::Client::open(endpoint.url.as_str()).doing("sentinel url")?;
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .doing("subscribing to a Sentinel")?;
        pubsub
            .subscribe(&STEPS)
            .await
            .doing("SUBSCRIBE to Sentinel's failover channels")?;
        Ok(Announcements(pubsub))
    }

    /// The next announcement; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<Announcement> {
        loop {
            let msg = self.0.on_message().next().await?;
            let text: String = msg.get_payload().ok()?;
            if let Some(a) = announcement(msg.get_channel_name(), &text) {
                return Some(a);
            }
        }
    }
}

/// Reads one message; `None` for a `+switch-master` that is not
/// "<name> <old host> <old port> <new host> <new port>".
fn announcement(channel: &str, text: &str) -> Option<Announcement> {
    if channel != SWITCH_MASTER {
        return Some(Announcement::Step(channel.to_string()));
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    Some(Announcement::Switch {
        name: words.first()?.to_string(),
        host: words.get(3)?.to_string(),
    })
}

/// Connects to every Sentinel.
pub async fn connect_all(
    sentinels: &[&Endpoint],
) -> Result<Vec<MultiplexedConnection>, ExerciseError> {
    let mut conns = Vec::with_capacity(sentinels.len());
    for s in sentinels {
        conns.push(connect(s).await?);
    }
    Ok(conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_names_the_new_host_and_other_steps_their_channel() {
        assert_eq!(
            announcement("+switch-master", "primary primary 6379 replica-2 6379"),
            Some(Announcement::Switch {
                name: "primary".into(),
                host: "replica-2".into()
            })
        );
        assert_eq!(announcement("+switch-master", "primary"), None);
        assert_eq!(
            announcement("-failover-abort-not-elected", "master primary primary 6379"),
            Some(Announcement::Step("-failover-abort-not-elected".into()))
        );
    }

    #[test]
    fn a_flat_reply_reads_as_fields() {
        let flat: Vec<String> = ["name", "primary", "flags", "master", "odd"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = pairs(&flat);
        assert_eq!(p["name"], "primary");
        assert_eq!(p["flags"], "master");
        assert_eq!(p.len(), 2);
    }
}
