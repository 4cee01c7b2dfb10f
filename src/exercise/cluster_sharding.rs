//! `cluster-sharding`: clients against a Redis Cluster, each key on the
//! primary that serves its hash slot.
//!
//! `clients` clients run one workload at once, each with its own
//! [`Router`] (cluster-aware, naive, or following MOVED but not ASK):
//!
//! - `spread`: `keys` distinct keys written, then read back by a
//!   cluster-aware checker; each primary's share of the keys is counted on
//!   the primary itself (SCAN);
//! - `hot-key`: `keys` increments of one key;
//! - `migrate`: `slot_keys` keys of one slot (one hash tag) are written,
//!   then read and added to by the clients while the exercise moves that
//!   slot to another primary, as `redis-cli --cluster reshard` does
//!   (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE` in batches of
//!   `migrate_batch`, `CLUSTER SETSLOT … NODE`); afterwards every key the
//!   slot should hold is looked up;
//! - `primary-down`: distinct keys written while the lab kills a primary,
//!   until its slots take writes again (its replica promoted), each write
//!   counted by the primary that owned its slot at the start.
//!
//! The primaries the cluster was made with are made primaries again first,
//! where an earlier scenario's kill left them replicas.
//!
//! Every workload also counts the commands each primary processed during it
//! (`INFO stats`), so the busiest primary's share of the load is measured
//! where the load landed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::catalog::Endpoint;
use crate::client::redis as client;
use crate::client::redis::cluster::{Redirects, Router, RouterCounts, SlotMap, slot};
use crate::stats::{ratio, round2, round4};

/// Recorded when the clients start.
pub const WORKING: &str = "working";

/// Recorded once the clients' writes go through (`primary-down`).
pub const WRITING: &str = "writing";

/// How long a node that was a primary may take to be one again.
const RESTORE_DEADLINE: Duration = Duration::from_secs(30);

/// Recorded when a migrated slot is served by its new primary.
pub const MIGRATED: &str = "migrated";

/// Operations the clients do before the migration starts or the lab kills
/// a primary (`writing`), so either happens under load.
const WARMUP_OPS: u64 = 200;

/// The `cluster-sharding` exercise.
pub struct ClusterSharding;

#[async_trait]
impl Exercise for ClusterSharding {
    fn name(&self) -> &'static str {
        "cluster-sharding"
    }

    fn summary(&self) -> &'static str {
        "clients against a Redis Cluster: keys spread over the primaries, MOVED and ASK redirects, a slot migrated under load, a hot key"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis-cluster"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::text("cluster", "shard", "the redis-cluster service"),
            ParamSpec::choice(
                "client",
                &["cluster", "naive", "moved-only"],
                "cluster",
                "cluster: routes by slot and follows MOVED and ASK; naive: sends everything to one node; moved-only: follows MOVED, takes ASK for an error",
            ),
            ParamSpec::choice(
                "workload",
                &["spread", "hot-key", "migrate", "primary-down"],
                "spread",
                "distinct keys, one key, one slot's keys while that slot moves, or distinct keys while the lab kills a primary",
            ),
            ParamSpec::int("clients", 1, 64, 4, "clients at once"),
            ParamSpec::int(
                "keys",
                10,
                1_000_000,
                3_000,
                "keys written (spread) or increments (hot-key), over all clients",
            ),
            ParamSpec::int("slot_keys", 10, 100_000, 2_000, "keys in the migrated slot"),
            ParamSpec::int(
                "after_writes",
                1,
                100_000,
                100,
                "writes a killed primary's slots must take again before the clients stop (primary-down)",
            ),
            ParamSpec::int(
                "give_up_ms",
                1_000,
                300_000,
                30_000,
                "how long after `writing` the clients wait for that (primary-down)",
            ),
            ParamSpec::int("migrate_batch", 1, 10_000, 20, "keys per MIGRATE"),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("primaries", "primaries serving slots (CLUSTER SLOTS)"),
                ObsSpec::number("requests", "commands the clients sent"),
                ObsSpec::number("client_errors", "commands that ended in an error"),
                ObsSpec::number("moved_redirects", "MOVED redirects the clients followed"),
                ObsSpec::number("ask_redirects", "ASK redirects the clients followed"),
                ObsSpec::list(
                    "keys_per_primary",
                    "the scenario's keys on each primary, counted there (spread)",
                ),
                ObsSpec::number(
                    "quietest_share",
                    "the emptiest primary's share of the keys (spread)",
                ),
                ObsSpec::number(
                    "busiest_node_share",
                    "the busiest primary's share of the commands all primaries processed during the workload",
                ),
                ObsSpec::number(
                    "keys_lost",
                    "keys acknowledged to a client (or written before a migration) that a lookup does not find",
                ),
                ObsSpec::text(
                    "down_primary",
                    "the primary whose slots failed (primary-down)",
                ),
                ObsSpec::number(
                    "down_errors",
                    "writes to its slots that failed (primary-down)",
                ),
                ObsSpec::number(
                    "down_writes_after",
                    "writes to its slots that succeeded after the first failure (primary-down)",
                ),
                ObsSpec::number(
                    "other_errors",
                    "writes to the other primaries' slots that failed (primary-down)",
                ),
                ObsSpec::number(
                    "slots_back_ms",
                    "from the first failed write to its slots until the first that succeeded again (primary-down)",
                ),
                ObsSpec::number(
                    "node_timeout_ms",
                    "the nodes' cluster-node-timeout (primary-down)",
                ),
                ObsSpec::flag(
                    "slot_moved",
                    "the migrated slot is served by its new primary (migrate)",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(WORKING, "the clients start"),
                Milestone::new(
                    WRITING,
                    "the clients' writes go through; the lab kills a primary after it (primary-down)",
                ),
                Milestone::new(MIGRATED, "the slot is served by its new primary (migrate)"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let cluster = Cluster::from_ctx(ctx).await?;
        let before = cluster.commands().await;
        let mut obs = match ctx.text("workload") {
            "hot-key" => hot_key(ctx, &cluster).await?,
            "migrate" => migrate(ctx, &cluster).await?,
            "primary-down" => primary_down(ctx, &cluster).await?,
            _ => spread(ctx, &cluster).await?,
        };
        // A primary the lab killed answers neither count: it is left out.
        let after = cluster.commands().await;
        let load: Vec<f64> = after
            .iter()
            .zip(&before)
            .filter_map(|(a, b)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?) as f64))
            .collect();
        let busiest = load.iter().copied().fold(0.0, f64::max);
        obs.insert(
            "busiest_node_share".into(),
            Value::from(ratio(busiest, load.iter().sum()).map(round4)),
        );
        obs.insert("primaries".into(), Value::from(cluster.primaries.len()));
        Ok(obs)
    }
}

/// The cluster's nodes and who serves slots.
struct Cluster {
    nodes: BTreeMap<String, Endpoint>,
    primaries: Vec<String>,
    mode: Redirects,
    namespace: String,
}

impl Cluster {
    async fn from_ctx(ctx: &Ctx) -> Result<Cluster, ExerciseError> {
        let mut instances = ctx.instances(ctx.text("cluster"), "redis-cluster", "cluster")?;
        instances.sort_by_key(|e| number(&e.service));
        let first = instances[0];
        let map = SlotMap::read(&mut client::connect(first).await?).await?;
        // The cluster was made with the first instances as primaries; a
        // primary an earlier scenario killed came back as a replica.
        let primaries = map.primaries().len();
        for node in instances.iter().take(primaries) {
            restore_primary(node).await?;
        }
        let map = SlotMap::read(&mut client::connect(first).await?).await?;
        let nodes: BTreeMap<String, Endpoint> = instances
            .into_iter()
            .map(|e| (e.service.clone(), e.clone()))
            .collect();
        let mode = match ctx.text("client") {
            "naive" => Redirects::Naive,
            "moved-only" => Redirects::MovedOnly,
            _ => Redirects::Follow,
        };
        Ok(Cluster {
            nodes,
            primaries: map.primaries(),
            mode,
            namespace: ctx.namespace.clone(),
        })
    }

    fn node(&self, name: &str) -> Result<&Endpoint, ExerciseError> {
        self.nodes.get(name).ok_or_else(|| {
            ExerciseError(format!("CLUSTER SLOTS names `{name}`, no node of the lab"))
        })
    }

    /// A client of the mode under test.
    async fn client(&self) -> Result<Router, ExerciseError> {
        Router::new(self.nodes.clone(), self.mode).await
    }

    /// A cluster-aware client for the exercise's own setup and checks.
    async fn checker(&self) -> Result<Router, ExerciseError> {
        Router::new(self.nodes.clone(), Redirects::Follow).await
    }

    /// Commands each primary has processed since it started (`None`: it
    /// does not answer).
    async fn commands(&self) -> Vec<Option<u64>> {
        let mut all = Vec::new();
        for p in &self.primaries {
            let count = match self.node(p) {
                Ok(endpoint) => match client::connect(endpoint).await {
                    Ok(mut conn) => client::commands_processed(&mut conn).await.ok(),
                    Err(_) => None,
                },
                Err(_) => None,
            };
            all.push(count);
        }
        all
    }

    /// Keys of this scenario on each primary, counted there.
    async fn keys_per_primary(&self) -> Result<Vec<u64>, ExerciseError> {
        let mut all = Vec::new();
        for p in &self.primaries {
            let mut conn = client::connect(self.node(p)?).await?;
            all.push(count_keys(&mut conn, &format!("{}:*", self.namespace)).await?);
        }
        Ok(all)
    }
}

/// The number after an instance's last dash (`shard-10` → 10), for order.
fn number(instance: &str) -> u32 {
    instance
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// Makes `node` a primary again if it is a replica, with a manual failover
/// (`CLUSTER FAILOVER`: its primary stops taking writes until the replica
/// has caught up, so nothing is lost), once it is in sync.
async fn restore_primary(node: &Endpoint) -> Result<(), ExerciseError> {
    let mut conn = client::connect(node).await?;
    if client::replication(&mut conn).await?.role != "slave" {
        return Ok(());
    }
    let what = format!("`{}`", node.service);
    client::until_in_sync(&mut conn, RESTORE_DEADLINE, &what).await?;
    let deadline = Instant::now() + RESTORE_DEADLINE;
    loop {
        // Retried: a manual failover gives up after 5 s without catching up.
        let _: Result<(), _> = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut conn)
            .await;
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            if client::replication(&mut conn).await?.role == "master" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if Instant::now() > deadline {
            return Err(ExerciseError(format!(
                "{what} did not become a primary again within {} s",
                RESTORE_DEADLINE.as_secs()
            )));
        }
    }
}

/// Keys matching `pattern` on one node (SCAN).
async fn count_keys(conn: &mut MultiplexedConnection, pattern: &str) -> Result<u64, ExerciseError> {
    let mut cursor = 0u64;
    let mut count = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .doing("SCAN")?;
        count += keys.len() as u64;
        if next == 0 {
            return Ok(count);
        }
        cursor = next;
    }
}

/// Everything the clients counted.
#[derive(Default)]
struct Tally {
    requests: u64,
    counts: RouterCounts,
    acked: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.counts.moved += other.counts.moved;
        self.counts.ask += other.counts.ask;
        self.counts.errors += other.counts.errors;
        self.acked.extend(other.acked);
    }

    fn observe(&self) -> Observations {
        Observations::from([
            ("requests".into(), Value::from(self.requests)),
            ("client_errors".into(), Value::from(self.counts.errors)),
            ("moved_redirects".into(), Value::from(self.counts.moved)),
            ("ask_redirects".into(), Value::from(self.counts.ask)),
        ])
    }
}

/// Runs `clients` copies of `work` at once and adds up their tallies.
async fn clients<F, Fut>(ctx: &Ctx, cluster: &Cluster, work: F) -> Result<Tally, ExerciseError>
where
    F: Fn(usize, Router) -> Fut,
    Fut: std::future::Future<Output = Tally>,
{
    let n = ctx.int("clients") as usize;
    let mut routers = Vec::with_capacity(n);
    for _ in 0..n {
        routers.push(cluster.client().await?);
    }
    ctx.mark(WORKING);
    let mut total = Tally::default();
    for t in join_all(routers.into_iter().enumerate().map(|(i, r)| work(i, r))).await {
        total.add(t);
    }
    Ok(total)
}

/// Distinct keys, read back, counted per primary.
async fn spread(ctx: &Ctx, cluster: &Cluster) -> Result<Observations, ExerciseError> {
    let keys = ctx.int("keys") as usize;
    let n = ctx.int("clients") as usize;
    let ns = &cluster.namespace;
    let tally = clients(ctx, cluster, |c, mut router| async move {
        let mut t = Tally::default();
        for i in (c..keys).step_by(n) {
            let key = format!("{ns}:k:{i}");
            t.requests += 1;
            let set = router
                .query::<()>(&key, redis::cmd("SET").arg(&key).arg(i))
                .await;
            if set.is_ok() {
                t.acked.push(key);
            }
        }
        t.counts = router.counts;
        t
    })
    .await?;
    let lost = missing(cluster, &tally.acked).await?;
    let per_primary = cluster.keys_per_primary().await?;
    let total: u64 = per_primary.iter().sum();
    let quietest = per_primary.iter().copied().min().unwrap_or_default();
    let mut obs = tally.observe();
    obs.insert("keys_lost".into(), Value::from(lost));
    obs.insert("keys_per_primary".into(), Value::from(per_primary));
    obs.insert(
        "quietest_share".into(),
        Value::from(ratio(quietest as f64, total as f64).map(round4)),
    );
    Ok(obs)
}

/// How many of `keys` a cluster-aware lookup does not find.
async fn missing(cluster: &Cluster, keys: &[String]) -> Result<u64, ExerciseError> {
    let mut checker = cluster.checker().await?;
    let mut lost = 0;
    for key in keys {
        let v: Option<String> = checker
            .query(key, redis::cmd("GET").arg(key))
            .await
            .map_err(|e| ExerciseError(format!("looking `{key}` up: {e}")))?;
        lost += u64::from(v.is_none());
    }
    Ok(lost)
}

/// Every client increments one key.
async fn hot_key(ctx: &Ctx, cluster: &Cluster) -> Result<Observations, ExerciseError> {
    let per_client = ctx.int("keys") as usize / ctx.int("clients") as usize;
    let key = format!("{}:hot", cluster.namespace);
    let key = key.as_str();
    let tally = clients(ctx, cluster, |_, mut router| async move {
        let mut t = Tally::default();
        for _ in 0..per_client {
            t.requests += 1;
            let _ = router.query::<i64>(key, redis::cmd("INCR").arg(key)).await;
        }
        t.counts = router.counts;
        t
    })
    .await?;
    Ok(tally.observe())
}

/// What the clients saw of one primary's slots (by the owner when the
/// workload started).
#[derive(Default, Clone, Copy)]
struct Shard {
    errors: u64,
    first_error: Option<Instant>,
    back_at: Option<Instant>,
    writes_after: u64,
}

/// Distinct keys written by every client while the lab kills a primary,
/// until one primary's slots failed and then took `after_writes` writes
/// again, or `give_up_ms` after `writing`.
async fn primary_down(ctx: &Ctx, cluster: &Cluster) -> Result<Observations, ExerciseError> {
    let first = cluster.node(&cluster.primaries[0])?;
    let start_map = SlotMap::read(&mut client::connect(first).await?).await?;
    let node_timeout_ms = node_timeout(first).await?;
    let after = ctx.int("after_writes") as u64;
    let give_up = Duration::from_millis(ctx.int("give_up_ms") as u64);
    let shards: Arc<Mutex<BTreeMap<String, Shard>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let (ns, map_ref) = (&cluster.namespace, &start_map);
    let work = clients(ctx, cluster, |c, mut router| {
        let (done, ops, shards) = (done.clone(), ops.clone(), shards.clone());
        async move {
            let mut t = Tally::default();
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let key = format!("{ns}:d:{c}:{i}");
                let owner = map_ref.owner(slot(&key)).unwrap_or("?").to_string();
                t.requests += 1;
                let sent = Instant::now();
                let ok = router
                    .query::<()>(&key, redis::cmd("SET").arg(&key).arg(i))
                    .await
                    .is_ok();
                let failed = record(&shards, owner, ok, sent);
                if ok {
                    t.acked.push(key);
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ops.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            t.counts = router.counts;
            t
        }
    });
    let watch = async {
        while ops.load(Ordering::Relaxed) < WARMUP_OPS {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ctx.mark(WRITING);
        let marked = Instant::now();
        while marked.elapsed() < give_up {
            let recovered = shards
                .lock()
                .expect("shards")
                .values()
                .any(|s| s.writes_after >= after);
            if recovered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done.store(true, Ordering::Relaxed);
    };
    let (tally, ()) = tokio::join!(work, watch);
    let tally = tally?;
    let shards = std::mem::take(&mut *shards.lock().expect("shards"));
    let lost = missing(cluster, &tally.acked).await?;
    Ok(down_observations(&tally, &shards, node_timeout_ms, lost))
}

/// Counts one write, sent at `sent`, against the shard that owned its slot
/// at the start; `true` when it failed. A success counts as the shard being
/// back only when it was sent after the shard's first failure was seen
/// (another client's answer may arrive just after that failure).
fn record(shards: &Mutex<BTreeMap<String, Shard>>, owner: String, ok: bool, sent: Instant) -> bool {
    let now = Instant::now();
    let mut all = shards.lock().expect("shards");
    let shard = all.entry(owner).or_default();
    if ok {
        if shard.first_error.is_some_and(|first| sent > first) {
            shard.back_at.get_or_insert(now);
            shard.writes_after += 1;
        }
    } else {
        shard.errors += 1;
        shard.first_error.get_or_insert(now);
    }
    !ok
}

/// The observations of `primary-down`: the shard with the most errors is
/// the one that went down.
fn down_observations(
    tally: &Tally,
    shards: &BTreeMap<String, Shard>,
    node_timeout_ms: u64,
    lost: u64,
) -> Observations {
    let victim = shards
        .iter()
        .filter(|(_, s)| s.errors > 0)
        .max_by_key(|(_, s)| s.errors)
        .map(|(name, s)| (name.clone(), *s));
    let others: u64 = shards
        .iter()
        .filter(|(name, _)| victim.as_ref().is_none_or(|(v, _)| v != *name))
        .map(|(_, s)| s.errors)
        .sum();
    let back_ms = victim.as_ref().and_then(|(_, s)| {
        let gap = s.back_at?.saturating_duration_since(s.first_error?);
        Some(round2(gap.as_secs_f64() * 1000.0))
    });
    let mut obs = tally.observe();
    obs.insert("keys_lost".into(), Value::from(lost));
    obs.insert("node_timeout_ms".into(), Value::from(node_timeout_ms));
    obs.insert(
        "down_primary".into(),
        Value::from(victim.as_ref().map(|(name, _)| name.clone())),
    );
    obs.insert(
        "down_errors".into(),
        Value::from(victim.as_ref().map_or(0, |(_, s)| s.errors)),
    );
    obs.insert(
        "down_writes_after".into(),
        Value::from(victim.as_ref().map_or(0, |(_, s)| s.writes_after)),
    );
    obs.insert("other_errors".into(), Value::from(others));
    obs.insert("slots_back_ms".into(), Value::from(back_ms));
    obs
}

/// A node's `cluster-node-timeout`.
async fn node_timeout(node: &Endpoint) -> Result<u64, ExerciseError> {
    let (_, value): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("cluster-node-timeout")
        .query_async(&mut client::connect(node).await?)
        .await
        .doing("CONFIG GET cluster-node-timeout")?;
    value
        .parse()
        .map_err(|_| ExerciseError(format!("cluster-node-timeout is {value:?}")))
}

/// One slot's keys read and added to while the slot moves.
async fn migrate(ctx: &Ctx, cluster: &Cluster) -> Result<Observations, ExerciseError> {
    let tag = format!("{{{}}}", cluster.namespace);
    let the_slot = slot(&tag);
    let slot_keys = ctx.int("slot_keys") as usize;
    let mut setup = cluster.checker().await?;
    let mut written = Vec::with_capacity(slot_keys);
    for i in 0..slot_keys {
        let key = format!("{tag}:m:{i}");
        setup
            .query::<()>(&key, redis::cmd("SET").arg(&key).arg(i))
            .await
            .map_err(|e| ExerciseError(format!("writing the slot's keys: {e}")))?;
        written.push(key);
    }
    let map =
        SlotMap::read(&mut client::connect(cluster.node(&cluster.primaries[0])?).await?).await?;
    let source = map
        .owner(the_slot)
        .ok_or_else(|| ExerciseError(format!("no primary serves slot {the_slot}")))?
        .to_string();
    let target = cluster
        .primaries
        .iter()
        .find(|p| **p != source)
        .ok_or_else(|| ExerciseError("a migration needs two primaries".into()))?
        .clone();

    let done = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let (tag_ref, written_ref) = (&tag, &written);
    let work = clients(ctx, cluster, |c, mut router| {
        let (done, ops) = (done.clone(), ops.clone());
        async move {
            let mut t = Tally::default();
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                let key = &written_ref[(c * 7919 + i) % written_ref.len()];
                t.requests += 1;
                let _ = router
                    .query::<Option<String>>(key, redis::cmd("GET").arg(key))
                    .await;
                let new = format!("{tag_ref}:c{c}:{i}");
                t.requests += 1;
                if router
                    .query::<()>(&new, redis::cmd("SET").arg(&new).arg(i))
                    .await
                    .is_ok()
                {
                    t.acked.push(new);
                }
                ops.fetch_add(2, Ordering::Relaxed);
                i += 1;
            }
            t.counts = router.counts;
            t
        }
    });
    let mover = async {
        while ops.load(Ordering::Relaxed) < WARMUP_OPS {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let moved = move_slot(ctx, cluster, the_slot, &source, &target).await;
        if moved.is_ok() {
            ctx.mark(MIGRATED);
        }
        // A little traffic after the move, to follow MOVED too.
        let after = ops.load(Ordering::Relaxed) + WARMUP_OPS;
        while ops.load(Ordering::Relaxed) < after {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        done.store(true, Ordering::Relaxed);
        moved
    };
    let (tally, moved) = tokio::join!(work, mover);
    let tally = tally?;
    moved?;

    let owner_now = SlotMap::read(&mut client::connect(cluster.node(&target)?).await?)
        .await?
        .owner(the_slot)
        .map(str::to_string);
    let mut expected = written;
    expected.extend(tally.acked.iter().cloned());
    let lost = missing(cluster, &expected).await?;
    let mut obs = tally.observe();
    obs.insert("keys_lost".into(), Value::from(lost));
    obs.insert(
        "slot_moved".into(),
        Value::from(owner_now.as_deref() == Some(target.as_str())),
    );
    Ok(obs)
}

/// Moves `slot` from `source` to `target` as `redis-cli --cluster reshard`
/// does, `migrate_batch` keys per MIGRATE.
async fn move_slot(
    ctx: &Ctx,
    cluster: &Cluster,
    slot: u16,
    source: &str,
    target: &str,
) -> Result<(), ExerciseError> {
    let mut from = client::connect(cluster.node(source)?).await?;
    let mut to = client::connect(cluster.node(target)?).await?;
    let from_id = node_id(&mut from).await?;
    let to_id = node_id(&mut to).await?;
    setslot(&mut to, slot, "IMPORTING", &from_id).await?;
    setslot(&mut from, slot, "MIGRATING", &to_id).await?;
    let batch = ctx.int("migrate_batch");
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(batch)
            .query_async(&mut from)
            .await
            .doing("CLUSTER GETKEYSINSLOT")?;
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg(target)
            .arg(6379)
            .arg("")
            .arg(0)
            .arg(10_000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut from)
            .await
            .doing("MIGRATE")?;
    }
    // The new owner first, then the old one, then every other primary.
    setslot(&mut to, slot, "NODE", &to_id).await?;
    setslot(&mut from, slot, "NODE", &to_id).await?;
    for p in cluster
        .primaries
        .iter()
        .filter(|p| *p != source && *p != target)
    {
        setslot(
            &mut client::connect(cluster.node(p)?).await?,
            slot,
            "NODE",
            &to_id,
        )
        .await?;
    }
    Ok(())
}

async fn node_id(conn: &mut MultiplexedConnection) -> Result<String, ExerciseError> {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(conn)
        .await
        .doing("CLUSTER MYID")
}

async fn setslot(
    conn: &mut MultiplexedConnection,
    slot: u16,
    state: &str,
    node: &str,
) -> Result<(), ExerciseError> {
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(node)
        .query_async(conn)
        .await
        .doing(&format!("CLUSTER SETSLOT {state}"))
}
