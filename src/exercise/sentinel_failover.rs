//! `sentinel-failover`: a Redis primary with replicas under write load,
//! watched by Sentinels; the lab kills the primary or cuts it off.
//!
//! First the exercise puts the lab's topology in place, whatever an earlier
//! scenario's failover left: the Sentinels forget the primary, the primary
//! is a primary again and the replicas follow it, then the Sentinels watch
//! it afresh and the exercise waits until each knows every replica and every
//! other Sentinel.
//!
//! One writer then sets a new key at a time and counts a write acknowledged
//! when the primary says OK (and, with `wait_replicas`, when `WAIT` confirms
//! that many replicas have it). After `warmup_writes` it records `writing`;
//! the lab kills or cuts off the primary then. A writer that asks Sentinel
//! (`client: sentinel`) moves to the primary Sentinel names, when a write
//! fails and when a Sentinel announces `+switch-master`; a pinned one keeps
//! the primary's address. Once `after_writes` writes are acknowledged by a
//! new primary (or `give_up_ms` after `writing`) it records `failed-over`,
//! and every acknowledged key is looked up on the primary Sentinel names.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::sync::watch;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::catalog::Endpoint;
use crate::client::redis as client;
use crate::client::redis::sentinel::{self, Announcement, Announcements, SWITCH_MASTER, Watch};
use crate::stats::round2;

/// Recorded once writes are acknowledged; the lab kills or cuts off the
/// primary after it.
pub const WRITING: &str = "writing";

/// Recorded when the writer is done; the lab heals after it.
pub const FAILED_OVER: &str = "failed-over";

/// How long the topology may take to be in place and known.
const TOPOLOGY_DEADLINE: Duration = Duration::from_secs(30);

/// The `sentinel-failover` exercise.
pub struct SentinelFailover;

#[async_trait]
impl Exercise for SentinelFailover {
    fn name(&self) -> &'static str {
        "sentinel-failover"
    }

    fn summary(&self) -> &'static str {
        "a Redis primary killed or cut off under write load, Sentinels promoting a replica: failover time, clients that follow, acknowledged writes lost"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis", "redis-sentinel"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::text(
                "primary",
                "primary",
                "the Redis primary the Sentinels watch",
            ),
            ParamSpec::text(
                "replica",
                "replica",
                "its replicas: a redis service with `REDIS_REPLICA_OF`",
            ),
            ParamSpec::text("sentinel", "sentinel", "the redis-sentinel service"),
            ParamSpec::choice(
                "client",
                &["sentinel", "pinned"],
                "sentinel",
                "how the writer finds the primary: asking Sentinel, or keeping the address it started with",
            ),
            ParamSpec::int(
                "wait_replicas",
                0,
                16,
                0,
                "0: a write counts once the primary says OK; N: once `WAIT N` confirms N replicas have it",
            ),
            ParamSpec::int(
                "wait_timeout_ms",
                1,
                10_000,
                100,
                "how long `WAIT` may block",
            ),
            ParamSpec::int(
                "warmup_writes",
                1,
                100_000,
                100,
                "acknowledged writes before `writing`",
            ),
            ParamSpec::int(
                "after_writes",
                1,
                100_000,
                100,
                "writes a new primary must acknowledge before the writer stops",
            ),
            ParamSpec::int("interval_ms", 0, 1_000, 5, "pause between writes"),
            ParamSpec::int(
                "request_timeout_ms",
                100,
                30_000,
                1_000,
                "how long the writer waits for one answer",
            ),
            // Longer than TILT (30 s): a Sentinel stalled on a busy machine
            // still fails over, late, within it.
            ParamSpec::int(
                "give_up_ms",
                1_000,
                300_000,
                60_000,
                "how long after `writing` the writer waits for a new primary",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("writes_acked", "writes counted as acknowledged"),
                ObsSpec::number(
                    "writes_failed",
                    "writes that got an error or no answer in time",
                ),
                ObsSpec::number(
                    "writes_unconfirmed",
                    "writes the primary took but `WAIT` did not confirm (not counted as acknowledged)",
                ),
                ObsSpec::number(
                    "old_primary_acked_after",
                    "writes the old primary acknowledged after `writing`",
                ),
                ObsSpec::number(
                    "new_primary_writes",
                    "writes acknowledged by a primary other than the old one",
                ),
                ObsSpec::number(
                    "failover_ms",
                    "from `writing` until a new primary acknowledged the writer's first write",
                ),
                ObsSpec::number(
                    "switch_ms",
                    "from `writing` until a Sentinel announced `+switch-master`",
                ),
                ObsSpec::number(
                    "acked_lost",
                    "acknowledged writes the primary Sentinel names at the end does not have",
                ),
                ObsSpec::number(
                    "down_after_ms",
                    "the Sentinels' down-after-milliseconds, as they report it",
                ),
                ObsSpec::text(
                    "promoted",
                    "the instance Sentinel names as primary at the end",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(
                    WRITING,
                    "writes are acknowledged; the lab kills or cuts off the primary after it",
                ),
                Milestone::new(
                    FAILED_OVER,
                    "a new primary took `after_writes` writes, or the writer gave up; the lab heals after it",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let lab = Topology::from_ctx(ctx)?;
        let down_after_ms = lab.put_in_place().await?;
        let switches = lab.listen_for_switches(ctx).await?;
        let written = Writer::new(ctx, &lab, switches.latest.clone())
            .run()
            .await?;
        ctx.mark(FAILED_OVER);
        let switch_ms = switches.first_after(written.marked_at);
        let promoted = lab.primary_now().await?;
        let lost = lab.lost(promoted, &written.acked).await?;
        let mut obs = written.observe();
        obs.insert("acked_lost".into(), Value::from(lost));
        obs.insert("down_after_ms".into(), Value::from(down_after_ms));
        obs.insert("switch_ms".into(), Value::from(switch_ms));
        obs.insert("promoted".into(), Value::from(promoted.service.clone()));
        Ok(obs)
    }
}

/// The lab's services, by role.
struct Topology<'a> {
    ctx: &'a Ctx,
    primary: &'a Endpoint,
    replicas: Vec<&'a Endpoint>,
    sentinels: Vec<&'a Endpoint>,
}

impl<'a> Topology<'a> {
    fn from_ctx(ctx: &'a Ctx) -> Result<Self, ExerciseError> {
        Ok(Topology {
            ctx,
            primary: ctx.instances(ctx.text("primary"), "redis", "primary")?[0],
            replicas: ctx.instances(ctx.text("replica"), "redis", "replica")?,
            sentinels: ctx.instances(ctx.text("sentinel"), "redis-sentinel", "sentinel")?,
        })
    }

    /// The lab's topology, known to every Sentinel; returns the Sentinels'
    /// down-after-milliseconds.
    async fn put_in_place(&self) -> Result<u64, ExerciseError> {
        let host = self.primary.service.as_str();
        let watches = self
            .sentinels
            .iter()
            .map(|s| Watch::from_env(s, host))
            .collect::<Result<Vec<_>, _>>()?;
        let mut conns = sentinel::connect_all(&self.sentinels).await?;
        for (conn, w) in conns.iter_mut().zip(&watches) {
            w.forget(conn).await?;
        }
        let mut primary = client::connect(self.primary).await?;
        client::replicaof(&mut primary, None).await?;
        for r in &self.replicas {
            // A fresh link: after a partition a replica may still trust a
            // connection to the primary's old address.
            let mut conn = client::connect(r).await?;
            client::replicaof(&mut conn, None).await?;
            client::replicaof(&mut conn, Some(host)).await?;
            let what = format!("`{}`", r.service);
            client::until_in_sync(&mut conn, TOPOLOGY_DEADLINE, &what).await?;
        }
        for (conn, w) in conns.iter_mut().zip(&watches) {
            w.start(conn).await?;
        }
        let peers = self.sentinels.len() - 1;
        for (conn, w) in conns.iter_mut().zip(&watches) {
            sentinel::until_known(conn, w.name, self.replicas.len(), peers, TOPOLOGY_DEADLINE)
                .await?;
        }
        let state = sentinel::state(&mut conns[0], watches[0].name).await?;
        state
            .get("down-after-milliseconds")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ExerciseError("SENTINEL MASTER has no down-after-milliseconds".into()))
    }

    /// One listener per Sentinel: the latest primary any of them announced,
    /// and when the first announcement came. Every step of the failover goes
    /// in the timeline, so a slow one shows why (a split vote, TILT).
    async fn listen_for_switches(&self, ctx: &Ctx) -> Result<SwitchLog, ExerciseError> {
        let (latest, _) = watch::channel(self.primary.service.clone());
        let latest = Arc::new(latest);
        let first = Arc::new(Mutex::new(None::<Instant>));
        let mut tasks = Vec::new();
        for s in &self.sentinels {
            let mut announcements = Announcements::subscribe(s).await?;
            let (latest, first, timeline) = (latest.clone(), first.clone(), ctx.timeline());
            let source = s.service.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(a) = announcements.next().await {
                    match a {
                        Announcement::Switch { host, .. } => {
                            first
                                .lock()
                                .expect("switch")
                                .get_or_insert_with(Instant::now);
                            timeline.record(&source, format!("{SWITCH_MASTER} {host}"));
                            latest.send_replace(host);
                        }
                        Announcement::Step(step) => timeline.record(&source, step),
                    }
                }
            }));
        }
        Ok(SwitchLog {
            latest,
            first,
            tasks,
        })
    }

    /// The endpoint of the primary the Sentinels name now.
    async fn primary_now(&self) -> Result<&'a Endpoint, ExerciseError> {
        let mut conn = client::connect(self.sentinels[0]).await?;
        let name = sentinel::watched(self.sentinels[0])?;
        let host = sentinel::primary(&mut conn, name)
            .await?
            .ok_or_else(|| ExerciseError(format!("no Sentinel watches `{name}` any more")))?;
        self.endpoint(&host)
    }

    /// The lab instance named `host` by Sentinel.
    fn endpoint(&self, host: &str) -> Result<&'a Endpoint, ExerciseError> {
        self.ctx.services.get(host).ok_or_else(|| {
            ExerciseError(format!(
                "Sentinel named `{host}` as the primary, which is no instance of the lab"
            ))
        })
    }

    /// How many of the acknowledged keys `primary` does not have.
    async fn lost(&self, primary: &Endpoint, acked: &[String]) -> Result<u64, ExerciseError> {
        let mut conn = client::connect(primary).await?;
        let mut lost = 0;
        for chunk in acked.chunks(500) {
            let found: Vec<Option<String>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .doing("MGET of the acknowledged keys")?;
            lost += found.iter().filter(|v| v.is_none()).count() as u64;
        }
        Ok(lost)
    }
}

/// What the Sentinels announced while the writer ran.
struct SwitchLog {
    latest: Arc<watch::Sender<String>>,
    first: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SwitchLog {
    /// Milliseconds from `from` to the first announcement (`None`: none came).
    fn first_after(&self, from: Option<Instant>) -> Option<f64> {
        let first = (*self.first.lock().expect("switch"))?;
        let from = from?;
        Some(round2(
            first.saturating_duration_since(from).as_secs_f64() * 1000.0,
        ))
    }
}

impl Drop for SwitchLog {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// The one writer and what it counted.
struct Writer<'a, 'b> {
    ctx: &'a Ctx,
    lab: &'b Topology<'a>,
    latest: Arc<watch::Sender<String>>,
    timeout: Duration,
    pause: Duration,
    ask_sentinel: bool,
    wait_replicas: i64,
}

/// What the writer saw.
#[derive(Default)]
struct Written {
    acked: Vec<String>,
    failed: u64,
    unconfirmed: u64,
    old_acked_after: u64,
    new_writes: u64,
    marked_at: Option<Instant>,
    first_new_at: Option<Instant>,
}

impl<'a, 'b> Writer<'a, 'b> {
    fn new(ctx: &'a Ctx, lab: &'b Topology<'a>, latest: Arc<watch::Sender<String>>) -> Self {
        Writer {
            ctx,
            lab,
            latest,
            timeout: Duration::from_millis(ctx.int("request_timeout_ms") as u64),
            pause: Duration::from_millis(ctx.int("interval_ms") as u64),
            ask_sentinel: ctx.text("client") == "sentinel",
            wait_replicas: ctx.int("wait_replicas"),
        }
    }

    /// Writes until a new primary took `after_writes`, or `give_up_ms`
    /// after `writing`.
    async fn run(&self) -> Result<Written, ExerciseError> {
        let old = self.lab.primary.service.clone();
        let warmup = self.ctx.int("warmup_writes") as usize;
        let after = self.ctx.int("after_writes") as u64;
        let give_up = Duration::from_millis(self.ctx.int("give_up_ms") as u64);
        let mut w = Written::default();
        let mut target = old.clone();
        let mut conn = Some(client::connect(self.lab.primary).await?);
        for i in 0u64.. {
            if w.new_writes >= after || w.marked_at.is_some_and(|m| m.elapsed() > give_up) {
                break;
            }
            if self.ask_sentinel {
                let named = self.latest.borrow().clone();
                if named != target {
                    target = named;
                    conn = None;
                }
            }
            if conn.is_none() {
                conn = self.reconnect(&target).await;
            }
            let key = format!("{}:w:{i}", self.ctx.namespace);
            let outcome = match conn.as_mut() {
                Some(c) => self.write(c, &key, i).await,
                None => Outcome::Failed,
            };
            match outcome {
                Outcome::Acked => {
                    w.acked.push(key);
                    if target != old {
                        w.new_writes += 1;
                        w.first_new_at.get_or_insert_with(Instant::now);
                    } else if w.marked_at.is_some() {
                        w.old_acked_after += 1;
                    }
                    if w.marked_at.is_none() && w.acked.len() >= warmup {
                        w.marked_at = Some(Instant::now());
                        self.ctx.mark(WRITING);
                    }
                }
                Outcome::Unconfirmed => w.unconfirmed += 1,
                Outcome::Failed => {
                    w.failed += 1;
                    conn = None;
                    if self.ask_sentinel {
                        target = self.ask(&target).await;
                    }
                    tokio::time::sleep(self.pause.max(Duration::from_millis(20))).await;
                    continue;
                }
            }
            tokio::time::sleep(self.pause).await;
        }
        Ok(w)
    }

    /// A connection to `target`, or `None` while it cannot be reached.
    async fn reconnect(&self, target: &str) -> Option<MultiplexedConnection> {
        let endpoint = self.lab.endpoint(target).ok()?;
        tokio::time::timeout(self.timeout, client::connect(endpoint))
            .await
            .ok()?
            .ok()
    }

    /// One write (and `WAIT`).
    async fn write(&self, conn: &mut MultiplexedConnection, key: &str, i: u64) -> Outcome {
        let set = tokio::time::timeout(self.timeout, conn.set::<_, _, ()>(key, i)).await;
        if !matches!(set, Ok(Ok(()))) {
            return Outcome::Failed;
        }
        if self.wait_replicas == 0 {
            return Outcome::Acked;
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_replicas)
            .arg(self.ctx.int("wait_timeout_ms"));
        let waited = wait.query_async::<i64>(conn);
        match tokio::time::timeout(self.timeout + self.timeout, waited).await {
            Ok(Ok(n)) if n >= self.wait_replicas => Outcome::Acked,
            Ok(Ok(_)) => Outcome::Unconfirmed,
            _ => Outcome::Failed,
        }
    }

    /// The primary the Sentinels name now (each asked in turn until one
    /// answers); `current` when none does.
    async fn ask(&self, current: &str) -> String {
        for s in &self.lab.sentinels {
            let Ok(Ok(mut conn)) = tokio::time::timeout(self.timeout, client::connect(s)).await
            else {
                continue;
            };
            let Ok(name) = sentinel::watched(s) else {
                continue;
            };
            if let Ok(Ok(Some(host))) =
                tokio::time::timeout(self.timeout, sentinel::primary(&mut conn, name)).await
            {
                return host;
            }
        }
        current.to_string()
    }
}

/// What became of one write.
enum Outcome {
    Acked,
    Unconfirmed,
    Failed,
}

impl Written {
    fn observe(&self) -> Observations {
        let ms_since = |t: Option<Instant>| {
            let (from, to) = (self.marked_at?, t?);
            Some(round2(
                to.saturating_duration_since(from).as_secs_f64() * 1000.0,
            ))
        };
        Observations::from([
            ("writes_acked".into(), Value::from(self.acked.len())),
            ("writes_failed".into(), Value::from(self.failed)),
            ("writes_unconfirmed".into(), Value::from(self.unconfirmed)),
            (
                "old_primary_acked_after".into(),
                Value::from(self.old_acked_after),
            ),
            ("new_primary_writes".into(), Value::from(self.new_writes)),
            (
                "failover_ms".into(),
                Value::from(ms_since(self.first_new_at)),
            ),
        ])
    }
}
