//! `cap-partition`: one partition, two systems on each side of it: a Redis
//! primary with its asynchronous replica (available on both sides) and an
//! etcd cluster (consistent: the minority side refuses).
//!
//! The lab puts the Redis primary and one etcd member on the minority side
//! of a `partition` fired on the milestone `writing`; the exercise watches
//! the minority etcd member's linearizable reads fail to know the partition
//! is in effect. For `partition_ms` clients on both sides then work at once,
//! each from the host through the service's own port:
//!
//! - Redis, minority side: writes to the primary (acknowledged or refused);
//! - Redis, majority side: reads from the replica of the keys the primary
//!   has just acknowledged (missing: stale), and writes to it, which it
//!   takes once promoted (`promote: true`, `REPLICAOF NO ONE`, what a
//!   Sentinel on the majority side would do) and refuses as a replica;
//! - etcd, minority side: requests to the cut-off member (`etcd_reads`:
//!   linearizable, or serializable, answered from its local state);
//! - etcd, majority side: writes through the other members.
//!
//! Then the exercise records `measured` (the lab heals after it) and waits
//! until the minority member answers linearizable reads again. The old Redis
//! primary is made a replica of the promoted one (as Sentinel reconfigures a
//! returning primary), and every acknowledged write is looked up on the side
//! that now leads: in Redis the old primary's writes are gone, in etcd none.
//! Last, the Redis topology is put back as the lab defines it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::catalog::Endpoint;
use crate::client::etcd::{Etcd, Read};
use crate::client::redis as client;
use crate::stats::{ratio, round2, round4};

/// Recorded once the Redis topology is in place; the lab partitions after it.
pub const WRITING: &str = "writing";

/// Recorded when both sides have been measured; the lab heals after it.
pub const MEASURED: &str = "measured";

/// How long the partition, and the heal, may take to show.
const SHOW_DEADLINE: Duration = Duration::from_secs(30);

/// The `cap-partition` exercise.
pub struct CapPartition;

#[async_trait]
impl Exercise for CapPartition {
    fn name(&self) -> &'static str {
        "cap-partition"
    }

    fn summary(&self) -> &'static str {
        "one partition across a Redis primary/replica pair and an etcd cluster: who answers on each side, stale reads, acknowledged writes lost"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis", "etcd"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::text("primary", "primary", "the Redis primary (minority side)"),
            ParamSpec::text(
                "replica",
                "replica",
                "its replica (majority side): a redis service with `REDIS_REPLICA_OF`",
            ),
            ParamSpec::text(
                "etcd_minority",
                "etcd-1",
                "the etcd member on the minority side; the other members of its service are the majority",
            ),
            ParamSpec::int(
                "partition_ms",
                500,
                60_000,
                4_000,
                "how long both sides are measured once the partition shows (on until etcd's majority has acknowledged a write)",
            ),
            ParamSpec::int(
                "interval_ms",
                0,
                1_000,
                20,
                "pause between one client's requests",
            ),
            ParamSpec::int(
                "request_timeout_ms",
                100,
                30_000,
                1_000,
                "how long a client waits for one answer",
            ),
            ParamSpec::flag(
                "promote",
                true,
                "promote the replica on the majority side during the partition (as Sentinel would)",
            ),
            ParamSpec::choice(
                "etcd_reads",
                &["linearizable", "serializable"],
                "linearizable",
                "how the minority side's etcd client reads",
            ),
            ParamSpec::int(
                "min_replicas_max_lag_s",
                0,
                60,
                0,
                "0: off; else the primary refuses writes once no replica has acknowledged for this long (min-replicas-to-write 1)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "redis_minority_writes",
                    "writes sent to the Redis primary during the partition",
                ),
                ObsSpec::number("redis_minority_acked", "of those, acknowledged"),
                ObsSpec::number(
                    "redis_minority_refused",
                    "of those, refused (NOREPLICAS with min-replicas)",
                ),
                ObsSpec::number(
                    "redis_minority_answered",
                    "share of the primary's writes acknowledged",
                ),
                ObsSpec::number(
                    "redis_majority_reads",
                    "reads of the replica during the partition",
                ),
                ObsSpec::number("redis_majority_answered", "share of those answered"),
                ObsSpec::number(
                    "redis_stale_reads",
                    "replica reads that missed a write the primary had acknowledged",
                ),
                ObsSpec::number(
                    "redis_majority_acked",
                    "writes the majority side's Redis acknowledged",
                ),
                ObsSpec::number(
                    "redis_majority_refused",
                    "writes the majority side's Redis refused (a replica is read-only)",
                ),
                ObsSpec::number(
                    "redis_acked_lost",
                    "writes acknowledged by the old primary that the Redis leading after the heal does not have",
                ),
                ObsSpec::number(
                    "etcd_minority_requests",
                    "requests to the minority etcd member",
                ),
                ObsSpec::number("etcd_minority_answered", "share of those answered"),
                ObsSpec::number(
                    "etcd_stale_reads",
                    "minority reads that returned an older value than the majority had acknowledged",
                ),
                ObsSpec::number(
                    "etcd_majority_acked",
                    "writes the majority members acknowledged",
                ),
                ObsSpec::number(
                    "etcd_acked_lost",
                    "acknowledged etcd writes a linearizable read does not find after the heal",
                ),
                ObsSpec::number(
                    "partition_shown_ms",
                    "from `writing` until the minority member refused",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(
                    WRITING,
                    "the Redis topology is in place; the lab partitions after it",
                ),
                Milestone::new(MEASURED, "both sides measured; the lab heals after it"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let sides = Sides::from_ctx(ctx)?;
        sides
            .redis_topology(ctx.int("min_replicas_max_lag_s"))
            .await?;
        let marked = Instant::now();
        ctx.mark(WRITING);
        sides.until_minority(false).await?;
        let shown = marked.elapsed();
        if ctx.flag("promote") {
            let mut replica = client::connect(sides.replica).await?;
            client::replicaof(&mut replica, None).await?;
        }
        let measured = sides.measure(ctx).await?;
        ctx.mark(MEASURED);
        sides.until_minority(true).await?;
        let lost = sides.after_heal(ctx, &measured).await?;
        sides.redis_topology(0).await?;
        let mut obs = measured.observe();
        obs.insert("redis_acked_lost".into(), Value::from(lost.redis));
        obs.insert("etcd_acked_lost".into(), Value::from(lost.etcd));
        obs.insert(
            "partition_shown_ms".into(),
            Value::from(round2(shown.as_secs_f64() * 1000.0)),
        );
        Ok(obs)
    }
}

/// The services on each side.
struct Sides<'a> {
    primary: &'a Endpoint,
    replica: &'a Endpoint,
    minority: Etcd,
    majority: Vec<Etcd>,
    namespace: String,
    timeout: Duration,
}

impl<'a> Sides<'a> {
    fn from_ctx(ctx: &'a Ctx) -> Result<Self, ExerciseError> {
        let timeout = Duration::from_millis(ctx.int("request_timeout_ms") as u64);
        let etcd = |e: &Endpoint| Etcd::new(e, timeout).map_err(ExerciseError);
        let name = ctx.text("etcd_minority");
        let service = ctx
            .services
            .get(name)
            .filter(|e| e.kind == "etcd")
            .ok_or_else(|| ExerciseError(format!("`etcd_minority`: no etcd instance `{name}`")))?;
        let cluster = name.rsplit_once('-').map_or(name, |(s, _)| s);
        let majority = ctx
            .instances(cluster, "etcd", "etcd_minority")?
            .into_iter()
            .filter(|e| e.service != name)
            .map(etcd)
            .collect::<Result<Vec<_>, _>>()?;
        if majority.is_empty() {
            return Err(ExerciseError(format!(
                "`etcd_minority`: `{name}` has no other members to form a majority"
            )));
        }
        Ok(Sides {
            primary: ctx.instances(ctx.text("primary"), "redis", "primary")?[0],
            replica: ctx.instances(ctx.text("replica"), "redis", "replica")?[0],
            minority: etcd(service)?,
            majority,
            namespace: ctx.namespace.clone(),
            timeout,
        })
    }

    /// The lab's Redis topology, whatever the last run left: the primary a
    /// primary (refusing writes without a replica after `max_lag_s`, 0: off),
    /// the replica in sync with it.
    async fn redis_topology(&self, max_lag_s: i64) -> Result<(), ExerciseError> {
        let mut primary = client::connect(self.primary).await?;
        client::replicaof(&mut primary, None).await?;
        let (to_write, lag) = if max_lag_s > 0 {
            (1, max_lag_s)
        } else {
            (0, 10)
        };
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("min-replicas-to-write")
            .arg(to_write)
            .arg("min-replicas-max-lag")
            .arg(lag)
            .query_async(&mut primary)
            .await
            .doing("CONFIG SET min-replicas-to-write")?;
        // A fresh link: after a partition the replica may still trust a
        // connection to the primary's old address (it notices only after
        // repl-timeout, 60 s).
        let mut replica = client::connect(self.replica).await?;
        let host = self.primary.service.as_str();
        client::replicaof(&mut replica, None).await?;
        client::replicaof(&mut replica, Some(host)).await?;
        let what = format!("`{}`", self.replica.service);
        client::until_in_sync(&mut replica, SHOW_DEADLINE, &what).await
    }

    /// Waits until the minority member refuses a linearizable read
    /// (`answering: false`: the partition is in effect) or answers one again
    /// (`true`: healed).
    async fn until_minority(&self, answering: bool) -> Result<(), ExerciseError> {
        let deadline = Instant::now() + SHOW_DEADLINE;
        let key = format!("{}:probe", self.namespace);
        loop {
            let answered = self.minority.get(&key, Read::Linearizable).await.is_ok();
            if answered == answering {
                return Ok(());
            }
            if Instant::now() > deadline {
                let what = if answering { "heal" } else { "partition" };
                return Err(ExerciseError(format!(
                    "the {what} did not show on the minority etcd member within {} s (the lab must partition after `{WRITING}` and heal after `{MEASURED}`)",
                    SHOW_DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Both sides' clients at once for `partition_ms`.
    async fn measure(&self, ctx: &Ctx) -> Result<Measured, ExerciseError> {
        let pause = Duration::from_millis(ctx.int("interval_ms") as u64);
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let etcd_acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let until = &Window::new(
            Duration::from_millis(ctx.int("partition_ms") as u64),
            etcd_acked.clone(),
        );
        let read = match ctx.text("etcd_reads") {
            "serializable" => Read::Serializable,
            _ => Read::Linearizable,
        };
        let (a, b, c, d) = tokio::join!(
            self.redis_minority(until, pause, &acked),
            self.redis_majority(until, pause, &acked),
            self.etcd_minority(until, pause, read, &etcd_acked),
            self.etcd_majority(until, pause, &etcd_acked),
        );
        let acked = std::mem::take(&mut *acked.lock().expect("acked"));
        let etcd_acked = std::mem::take(&mut *etcd_acked.lock().expect("etcd acked"));
        Ok(Measured {
            redis_minority: a?,
            redis_majority: b?,
            etcd_minority: c?,
            etcd_majority: d?,
            redis_acked_keys: acked,
            etcd_acked_keys: etcd_acked,
        })
    }

    /// Writes to the primary, each new key remembered once acknowledged.
    async fn redis_minority(
        &self,
        until: &Window,
        pause: Duration,
        acked: &Mutex<Vec<String>>,
    ) -> Result<Tally, ExerciseError> {
        let mut conn = client::connect(self.primary).await?;
        let mut t = Tally::default();
        for i in 0.. {
            if until.over() {
                break;
            }
            let key = format!("{}:a:{i}", self.namespace);
            t.sent += 1;
            match timed(self.timeout, conn.set::<_, _, ()>(&key, i)).await {
                Some(Ok(())) => {
                    t.answered += 1;
                    acked.lock().expect("acked").push(key);
                }
                Some(Err(e)) if e.code() == Some("NOREPLICAS") => t.refused += 1,
                _ => {}
            }
            tokio::time::sleep(pause).await;
        }
        Ok(t)
    }

    /// Reads from the replica the key the primary acknowledged last (missing:
    /// stale), and writes to it.
    async fn redis_majority(
        &self,
        until: &Window,
        pause: Duration,
        acked: &Mutex<Vec<String>>,
    ) -> Result<Tally, ExerciseError> {
        let mut conn = client::connect(self.replica).await?;
        let mut t = Tally::default();
        for i in 0.. {
            if until.over() {
                break;
            }
            let last = acked.lock().expect("acked").last().cloned();
            if let Some(key) = last {
                t.sent += 1;
                if let Some(Ok(v)) = timed(self.timeout, conn.get::<_, Option<i64>>(&key)).await {
                    t.answered += 1;
                    t.stale += u64::from(v.is_none());
                }
            }
            let key = format!("{}:b:{i}", self.namespace);
            match timed(self.timeout, conn.set::<_, _, ()>(&key, i)).await {
                Some(Ok(())) => t.writes_acked += 1,
                Some(Err(_)) => t.writes_refused += 1,
                None => {}
            }
            tokio::time::sleep(pause).await;
        }
        Ok(t)
    }

    /// Requests to the cut-off member: a write, then a read of the key the
    /// majority acknowledged last (older or absent: stale).
    async fn etcd_minority(
        &self,
        until: &Window,
        pause: Duration,
        read: Read,
        majority_acked: &Mutex<Vec<String>>,
    ) -> Result<Tally, ExerciseError> {
        let mut t = Tally::default();
        let probe = format!("{}:probe", self.namespace);
        while !until.over() {
            // The key the majority acknowledged last (absent here: stale);
            // before its first, any key, for whether the member answers.
            let last = majority_acked.lock().expect("etcd acked").last().cloned();
            t.sent += 1;
            if let Ok(found) = self
                .minority
                .get(last.as_ref().unwrap_or(&probe), read)
                .await
            {
                t.answered += 1;
                t.stale += u64::from(last.is_some() && found.is_none());
            }
            tokio::time::sleep(pause).await;
        }
        Ok(t)
    }

    /// Writes through the majority members, each in turn until it fails.
    async fn etcd_majority(
        &self,
        until: &Window,
        pause: Duration,
        acked: &Mutex<Vec<String>>,
    ) -> Result<Tally, ExerciseError> {
        let mut t = Tally::default();
        let mut member = 0;
        for i in 0.. {
            if until.over() {
                break;
            }
            let key = format!("{}:etcd:{i}", self.namespace);
            t.sent += 1;
            match self.majority[member].put(&key, "v").await {
                Ok(_) => {
                    t.answered += 1;
                    acked.lock().expect("etcd acked").push(key);
                }
                Err(_) => member = (member + 1) % self.majority.len(),
            }
            tokio::time::sleep(pause).await;
        }
        Ok(t)
    }

    /// After the heal: the old primary follows the promoted replica (when
    /// promoted), then every acknowledged write is looked up where the data
    /// now lives.
    async fn after_heal(&self, ctx: &Ctx, m: &Measured) -> Result<Lost, ExerciseError> {
        let leader = if ctx.flag("promote") {
            let mut old = client::connect(self.primary).await?;
            client::replicaof(&mut old, Some(self.replica.service.as_str())).await?;
            client::until_in_sync(&mut old, SHOW_DEADLINE, "the old primary").await?;
            self.replica
        } else {
            self.primary
        };
        let mut conn = client::connect(leader).await?;
        let mut redis_lost = 0;
        for key in &m.redis_acked_keys {
            let v: Option<i64> = conn.get(key).await.doing("GET after the heal")?;
            redis_lost += u64::from(v.is_none());
        }
        let mut etcd_lost = 0;
        for key in &m.etcd_acked_keys {
            let found = self.majority[0]
                .get(key, Read::Linearizable)
                .await
                .map_err(|e| ExerciseError(format!("etcd read after the heal: {e}")))?;
            etcd_lost += u64::from(found.is_none());
        }
        Ok(Lost {
            redis: redis_lost,
            etcd: etcd_lost,
        })
    }
}

/// The partition's measuring window: `partition_ms` once the partition
/// shows, and on until etcd's majority has acknowledged a write (its new
/// leader's election can outlast a short window on a busy host), at most
/// [`SHOW_DEADLINE`] more.
struct Window {
    earliest: Instant,
    latest: Instant,
    majority_acked: Arc<Mutex<Vec<String>>>,
}

impl Window {
    fn new(length: Duration, majority_acked: Arc<Mutex<Vec<String>>>) -> Self {
        let earliest = Instant::now() + length;
        Window {
            earliest,
            latest: earliest + SHOW_DEADLINE,
            majority_acked,
        }
    }

    fn over(&self) -> bool {
        let now = Instant::now();
        now >= self.latest
            || (now >= self.earliest && !self.majority_acked.lock().expect("etcd acked").is_empty())
    }
}

/// `fut` within `limit`; `None` when it took longer.
async fn timed<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, fut).await.ok()
}

/// One client's counts.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    answered: u64,
    refused: u64,
    stale: u64,
    writes_acked: u64,
    writes_refused: u64,
}

/// What both sides saw during the partition.
struct Measured {
    redis_minority: Tally,
    redis_majority: Tally,
    etcd_minority: Tally,
    etcd_majority: Tally,
    redis_acked_keys: Vec<String>,
    etcd_acked_keys: Vec<String>,
}

impl Measured {
    fn observe(&self) -> Observations {
        let share = |t: &Tally| ratio(t.answered as f64, t.sent as f64).map(round4);
        Observations::from([
            (
                "redis_minority_writes".into(),
                Value::from(self.redis_minority.sent),
            ),
            (
                "redis_minority_acked".into(),
                Value::from(self.redis_minority.answered),
            ),
            (
                "redis_minority_refused".into(),
                Value::from(self.redis_minority.refused),
            ),
            (
                "redis_minority_answered".into(),
                Value::from(share(&self.redis_minority)),
            ),
            (
                "redis_majority_reads".into(),
                Value::from(self.redis_majority.sent),
            ),
            (
                "redis_majority_answered".into(),
                Value::from(share(&self.redis_majority)),
            ),
            (
                "redis_stale_reads".into(),
                Value::from(self.redis_majority.stale),
            ),
            (
                "redis_majority_acked".into(),
                Value::from(self.redis_majority.writes_acked),
            ),
            (
                "redis_majority_refused".into(),
                Value::from(self.redis_majority.writes_refused),
            ),
            (
                "etcd_minority_requests".into(),
                Value::from(self.etcd_minority.sent),
            ),
            (
                "etcd_minority_answered".into(),
                Value::from(share(&self.etcd_minority)),
            ),
            (
                "etcd_stale_reads".into(),
                Value::from(self.etcd_minority.stale),
            ),
            (
                "etcd_majority_acked".into(),
                Value::from(self.etcd_majority.answered),
            ),
        ])
    }
}

/// Acknowledged writes missing after the heal.
struct Lost {
    redis: u64,
    etcd: u64,
}
