//! `consistent-hashing`: K keys spread over Redis cache nodes by `hash mod N`
//! or by a consistent-hash ring with virtual nodes; then, while readers keep
//! reading, a node is added or removed, and the servers count what the
//! readers missed and what each node holds.
//!
//! The nodes are the lab's Redis instances (a service with `replicas: N`
//! gives `NAME-1` … `NAME-N`). `add` starts with the first N−1 and adds the
//! last; `remove` starts with all N and drops the last.
//!
//! The steps: write every key to its owner; start `readers` cache clients
//! that sweep the keys again and again, each read going to the owner under
//! the placement in force at that moment, a miss filled from "the database"
//! (cache-aside); once every reader has swept once, change the placement
//! under their feet. With `migration: copy-first` the moved keys are first
//! copied to their new owners (DUMP/RESTORE), then the placement changes,
//! and the old copies are dropped once no reader still reads by the old
//! placement. Each reader stops after a full sweep begun after the change.
//!
//! Measured by the servers: misses (INFO keyspace_misses) and lookups
//! during the live reads, RESTOREs accepted, keys per node (DBSIZE).
//! Arithmetic on the hash alone: which keys changed owner.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::redis::{connect, dbsize, keyspace_hits_misses};
use crate::stats::{join_workers, ratio, round4};

/// The `consistent-hashing` exercise.
pub struct ConsistentHashing;

/// Keys per pipeline when writing, copying and deleting.
const BATCH: usize = 1000;
/// Keys a reader looks up at once, under one placement.
const READ_BATCH: usize = 25;

#[async_trait]
impl Exercise for ConsistentHashing {
    fn name(&self) -> &'static str {
        "consistent-hashing"
    }

    fn summary(&self) -> &'static str {
        "keys placed on Redis cache nodes by hash mod N or a consistent-hash ring; a node joins or leaves under live reads and the servers count the misses"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("keys", 1, 1_000_000, 10_000, "keys written to the cache"),
            ParamSpec::choice(
                "placement",
                &["modulo", "ring"],
                "ring",
                "hash(key) mod N, or the next virtual node clockwise on a hash ring",
            ),
            ParamSpec::int(
                "vnodes",
                1,
                10_000,
                100,
                "virtual nodes per cache node on the ring",
            ),
            ParamSpec::choice(
                "change",
                &["add", "remove"],
                "add",
                "add the last node to the others, or remove it from all",
            ),
            ParamSpec::choice(
                "migration",
                &["none", "copy-first"],
                "none",
                "none: switch the placement and let misses refill the cache; copy-first: copy moved keys to their new owners before switching",
            ),
            ParamSpec::int(
                "readers",
                1,
                64,
                8,
                "cache clients reading the keys while the placement changes",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("nodes_before", "cache nodes before the change"),
                ObsSpec::number("nodes_after", "cache nodes after the change"),
                ObsSpec::number(
                    "keys_remapped",
                    "arithmetic: keys whose owner changed, by the placement function alone",
                ),
                ObsSpec::number("remapped_fraction", "arithmetic: keys_remapped / keys"),
                ObsSpec::number(
                    "ideal_moved_fraction",
                    "arithmetic: the least that must move, the joining or leaving node's fair share, 1/N",
                ),
                ObsSpec::number(
                    "read_misses",
                    "measured: lookups the nodes answered with a miss while the readers read (INFO keyspace_misses)",
                ),
                ObsSpec::number(
                    "reads",
                    "measured: lookups the nodes answered while the readers read (keyspace hits + misses)",
                ),
                ObsSpec::number("miss_fraction", "measured: read_misses / keys"),
                ObsSpec::number(
                    "keys_copied",
                    "measured: moved keys the new owners accepted (RESTORE), with copy-first",
                ),
                ObsSpec::number(
                    "keys_stored",
                    "measured: DBSIZE summed over the live nodes after the change, stale copies dropped",
                ),
                ObsSpec::number(
                    "load_max_over_mean_before",
                    "measured: busiest node's keys / mean keys per node, DBSIZE before the change",
                ),
                ObsSpec::number(
                    "load_max_over_mean",
                    "measured: busiest node's keys / mean keys per node, DBSIZE after the change",
                ),
                ObsSpec::list(
                    "keys_per_node",
                    "measured: DBSIZE of each live node after the change (list, node order)",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("keys-written", "every key is written to its node"),
                Milestone::new(
                    "readers-warm",
                    "every reader has swept all its keys once, before the change",
                ),
                Milestone::new(
                    "keys-copied",
                    "copy-first: the moved keys are on their new owners",
                ),
                Milestone::new(
                    "placement-changed",
                    "readers now look keys up by the new placement",
                ),
                Milestone::new(
                    "keys-read",
                    "every reader has swept all its keys after the change",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let mut cache = Cache::connect(ctx).await?;
        let n = cache.names.len();
        let (before, after): (Vec<usize>, Vec<usize>) = match ctx.text("change") {
            "remove" => ((0..n).collect(), (0..n - 1).collect()),
            _ => ((0..n - 1).collect(), (0..n).collect()),
        };
        let ring = ctx.text("placement") == "ring";
        let vnodes = ctx.int("vnodes") as usize;
        let placements = Arc::new([
            Placement::new(&cache.names, &before, ring, vnodes),
            Placement::new(&cache.names, &after, ring, vnodes),
        ]);
        let keys: Arc<Vec<String>> = Arc::new(
            (0..ctx.int("keys"))
                .map(|i| format!("{}:user:{i}", ctx.namespace))
                .collect(),
        );
        let moves = Moves::new(&keys, &placements);

        let baseline = cache.dbsizes().await?;
        cache.write(&keys, &placements[0]).await?;
        ctx.mark("keys-written");
        let load_before = cache.loads(&baseline, &before).await?;

        let stats_before = cache.hits_misses().await?;
        let readers = Readers::start(ctx, &cache, &keys, &placements);
        readers.wait_warm().await;
        ctx.mark("readers-warm");
        let copied = if ctx.text("migration") == "copy-first" {
            let copied = cache.copy(&keys, &moves).await?;
            ctx.mark("keys-copied");
            Some(copied)
        } else {
            None
        };
        readers.change_placement();
        ctx.mark("placement-changed");
        readers.wait_drained().await;
        cache.drop_stale(&keys, &moves).await?;
        readers.finish().await?;
        ctx.mark("keys-read");
        let stats_after = cache.hits_misses().await?;
        let load_after = cache.loads(&baseline, &after).await?;
        cache.delete(&keys).await?;

        let (hits, misses) = stats_after
            .iter()
            .zip(&stats_before)
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
            .fold((0, 0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
        let total = keys.len() as f64;
        let ideal = 1.0 / before.len().max(after.len()) as f64;
        Ok(Observations::from([
            ("nodes_before".into(), Value::from(before.len())),
            ("nodes_after".into(), Value::from(after.len())),
            ("keys_remapped".into(), Value::from(moves.moved.len())),
            (
                "remapped_fraction".into(),
                Value::from(ratio(moves.moved.len() as f64, total)),
            ),
            ("ideal_moved_fraction".into(), Value::from(round4(ideal))),
            ("read_misses".into(), Value::from(misses)),
            ("reads".into(), Value::from(hits + misses)),
            (
                "miss_fraction".into(),
                Value::from(ratio(misses as f64, total)),
            ),
            ("keys_copied".into(), Value::from(copied)),
            (
                "keys_stored".into(),
                Value::from(load_after.iter().sum::<i64>()),
            ),
            (
                "load_max_over_mean_before".into(),
                Value::from(max_over_mean(&load_before)),
            ),
            (
                "load_max_over_mean".into(),
                Value::from(max_over_mean(&load_after)),
            ),
            ("keys_per_node".into(), Value::from(load_after)),
        ]))
    }
}

/// `cache-10` after `cache-9`: by the replica number, then by name.
fn replica_order(name: &str) -> (u64, String) {
    let num = name
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0);
    (num, name.to_string())
}

fn hash64(s: &str) -> u64 {
    let d = Sha256::digest(s.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Where keys go, for one set of live nodes.
enum Placement {
    /// Live node indexes; owner = live[hash mod len].
    Modulo(Vec<usize>),
    /// Sorted (point, node index) on the ring; owner = first point at or after the key.
    Ring(Vec<(u64, usize)>),
}

impl Placement {
    fn new(names: &[String], live: &[usize], ring: bool, vnodes: usize) -> Self {
        if !ring {
            return Placement::Modulo(live.to_vec());
        }
        let mut points: Vec<(u64, usize)> = live
            .iter()
            .flat_map(|&i| (0..vnodes).map(move |v| (hash64(&format!("{}#{v}", names[i])), i)))
            .collect();
        points.sort_unstable();
        Placement::Ring(points)
    }

    /// The owner of a key; placement hashes the key's own name, without the
    /// scenario's namespace, so every run places the same keys alike.
    fn owner(&self, stored_key: &str) -> usize {
        let name = stored_key
            .split_once(":user:")
            .map_or(stored_key, |(_, k)| k);
        let h = hash64(&format!("user:{name}"));
        match self {
            Placement::Modulo(live) => live[(h % live.len() as u64) as usize],
            Placement::Ring(points) => {
                let at = points.partition_point(|&(p, _)| p < h);
                points[at % points.len()].1
            }
        }
    }
}

/// The keys whose owner changes: (key index, old owner, new owner).
struct Moves {
    moved: Vec<(usize, usize, usize)>,
}

impl Moves {
    fn new(keys: &[String], placements: &[Placement; 2]) -> Self {
        let moved = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                let (a, b) = (placements[0].owner(k), placements[1].owner(k));
                (a != b).then_some((i, a, b))
            })
            .collect();
        Moves { moved }
    }
}

/// The cache nodes: every Redis instance, in replica order.
struct Cache {
    names: Vec<String>,
    conns: Vec<MultiplexedConnection>,
}

impl Cache {
    async fn connect(ctx: &Ctx) -> Result<Self, ExerciseError> {
        let mut nodes: Vec<&crate::catalog::Endpoint> = ctx
            .services
            .values()
            .filter(|e| e.kind == "redis")
            .collect();
        nodes.sort_by_key(|e| replica_order(&e.service));
        if nodes.len() < 2 {
            return Err(ExerciseError(format!(
                "needs at least 2 Redis instances (a service with `replicas:`), found {}",
                nodes.len()
            )));
        }
        let mut conns = Vec::new();
        for e in &nodes {
            conns.push(connect(e).await?);
        }
        Ok(Cache {
            names: nodes.iter().map(|e| e.service.clone()).collect(),
            conns,
        })
    }

    async fn dbsizes(&mut self) -> Result<Vec<i64>, ExerciseError> {
        let mut sizes = Vec::new();
        for c in &mut self.conns {
            sizes.push(dbsize(c).await?);
        }
        Ok(sizes)
    }

    /// Keys of this scenario per live node: DBSIZE minus what was there before.
    async fn loads(&mut self, baseline: &[i64], live: &[usize]) -> Result<Vec<i64>, ExerciseError> {
        let now = self.dbsizes().await?;
        Ok(live.iter().map(|&i| now[i] - baseline[i]).collect())
    }

    async fn hits_misses(&mut self) -> Result<Vec<(u64, u64)>, ExerciseError> {
        let mut stats = Vec::new();
        for c in &mut self.conns {
            stats.push(keyspace_hits_misses(c).await?);
        }
        Ok(stats)
    }

    /// Every key on its owner; the value is what "the database" holds.
    async fn write(&mut self, keys: &[String], placement: &Placement) -> Result<(), ExerciseError> {
        let mut per_node: Vec<Vec<&String>> = vec![Vec::new(); self.conns.len()];
        for k in keys {
            per_node[placement.owner(k)].push(k);
        }
        for (conn, mine) in self.conns.iter_mut().zip(per_node) {
            for chunk in mine.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for k in chunk {
                    pipe.cmd("SET").arg(*k).arg(value_of(k)).ignore();
                }
                let _: () = pipe.query_async(conn).await.doing("writing keys")?;
            }
        }
        Ok(())
    }

    /// Copies every moved key from its old owner to its new one (DUMP, then
    /// RESTORE … REPLACE); returns how many RESTOREs the new owners accepted.
    async fn copy(&mut self, keys: &[String], moves: &Moves) -> Result<usize, ExerciseError> {
        let mut accepted = 0;
        for chunk in moves.moved.chunks(BATCH) {
            // One pipeline of DUMPs per old owner, answers put back in chunk order.
            let mut dumps: Vec<Option<Vec<u8>>> = vec![None; chunk.len()];
            for (node, conn) in self.conns.iter_mut().enumerate() {
                let mine: Vec<usize> = (0..chunk.len()).filter(|&j| chunk[j].1 == node).collect();
                if mine.is_empty() {
                    continue;
                }
                let mut pipe = redis::pipe();
                for &j in &mine {
                    pipe.cmd("DUMP").arg(&keys[chunk[j].0]);
                }
                let answers: Vec<Option<Vec<u8>>> = pipe
                    .query_async(conn)
                    .await
                    .doing("DUMP on the old owner")?;
                for (j, dump) in mine.into_iter().zip(answers) {
                    dumps[j] = dump;
                }
            }
            let mut pipes: Vec<(redis::Pipeline, usize)> =
                (0..self.conns.len()).map(|_| (redis::pipe(), 0)).collect();
            for (&(i, _, to), dump) in chunk.iter().zip(dumps) {
                if let Some(dump) = dump {
                    let p = &mut pipes[to];
                    p.0.cmd("RESTORE")
                        .arg(&keys[i])
                        .arg(0)
                        .arg(dump)
                        .arg("REPLACE");
                    p.1 += 1;
                }
            }
            for (conn, (pipe, count)) in self.conns.iter_mut().zip(pipes) {
                if count > 0 {
                    let answers: Vec<String> = pipe
                        .query_async(conn)
                        .await
                        .doing("RESTORE on the new owner")?;
                    accepted += answers.iter().filter(|a| *a == "OK").count();
                }
            }
        }
        Ok(accepted)
    }

    /// Drops the copies left on the old owners of moved keys (a cache would
    /// let them expire; here they go at once so DBSIZE shows the placement).
    async fn drop_stale(&mut self, keys: &[String], moves: &Moves) -> Result<(), ExerciseError> {
        let mut per_node: Vec<Vec<&String>> = vec![Vec::new(); self.conns.len()];
        for &(i, from, _) in &moves.moved {
            per_node[from].push(&keys[i]);
        }
        for (conn, stale) in self.conns.iter_mut().zip(per_node) {
            for chunk in stale.chunks(BATCH) {
                let _: i64 = redis::cmd("DEL")
                    .arg(chunk)
                    .query_async(conn)
                    .await
                    .doing("dropping stale copies")?;
            }
        }
        Ok(())
    }

    /// Every key of this scenario, from every node.
    async fn delete(&mut self, keys: &[String]) -> Result<(), ExerciseError> {
        for conn in &mut self.conns {
            for chunk in keys.chunks(BATCH) {
                let _: i64 = redis::cmd("DEL")
                    .arg(chunk)
                    .query_async(conn)
                    .await
                    .doing("deleting keys")?;
            }
        }
        Ok(())
    }
}

/// What "the database" holds for a key: a miss is filled with it.
fn value_of(key: &str) -> &str {
    key.rsplit_once(':').map_or(key, |(_, id)| id)
}

/// What the readers and the exercise share.
struct Shared {
    /// 0: the placement before the change; 1: after.
    epoch: AtomicUsize,
    /// Readers that have swept their keys once.
    warm: AtomicUsize,
    /// Per reader, the epoch of its latest read (usize::MAX once finished).
    seen: Vec<AtomicUsize>,
}

/// The cache clients reading while the placement changes.
struct Readers {
    shared: Arc<Shared>,
    handles: Vec<tokio::task::JoinHandle<Result<(), ExerciseError>>>,
}

/// How often the exercise looks at the readers' progress.
const POLL: Duration = Duration::from_millis(5);

impl Readers {
    fn start(
        ctx: &Ctx,
        cache: &Cache,
        keys: &Arc<Vec<String>>,
        placements: &Arc<[Placement; 2]>,
    ) -> Self {
        let count = ctx.int("readers") as usize;
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            warm: AtomicUsize::new(0),
            seen: (0..count).map(|_| AtomicUsize::new(0)).collect(),
        });
        let handles = (0..count)
            .map(|r| {
                let reader = Reader {
                    index: r,
                    of: count,
                    conns: cache.conns.clone(),
                    keys: keys.clone(),
                    placements: placements.clone(),
                    shared: shared.clone(),
                };
                tokio::spawn(reader.run())
            })
            .collect();
        Readers { shared, handles }
    }

    async fn wait_warm(&self) {
        while self.shared.warm.load(Ordering::SeqCst) < self.shared.seen.len() && !self.failed() {
            tokio::time::sleep(POLL).await;
        }
    }

    /// A reader ended before the change: it failed, and waiting for it would
    /// hang; the error surfaces when the readers are joined.
    fn failed(&self) -> bool {
        self.shared.epoch.load(Ordering::SeqCst) == 0
            && self.handles.iter().any(|h| h.is_finished())
    }

    fn change_placement(&self) {
        self.shared.epoch.store(1, Ordering::SeqCst);
    }

    /// Waits until no reader can still be reading by the old placement: each
    /// has begun a read after the change (or finished).
    async fn wait_drained(&self) {
        while self
            .shared
            .seen
            .iter()
            .zip(&self.handles)
            .any(|(s, h)| s.load(Ordering::SeqCst) == 0 && !h.is_finished())
        {
            tokio::time::sleep(POLL).await;
        }
    }

    async fn finish(self) -> Result<(), ExerciseError> {
        join_workers(self.handles).await.map(|_| ())
    }
}

struct Reader {
    index: usize,
    of: usize,
    conns: Vec<MultiplexedConnection>,
    keys: Arc<Vec<String>>,
    placements: Arc<[Placement; 2]>,
    shared: Arc<Shared>,
}

impl Reader {
    /// Sweeps its keys until a sweep begun after the change is complete.
    async fn run(mut self) -> Result<(), ExerciseError> {
        let mut first = true;
        loop {
            let sweep_epoch = self.shared.epoch.load(Ordering::SeqCst);
            self.sweep().await?;
            if first {
                self.shared.warm.fetch_add(1, Ordering::SeqCst);
                first = false;
            }
            if sweep_epoch == 1 {
                self.shared.seen[self.index].store(usize::MAX, Ordering::SeqCst);
                return Ok(());
            }
        }
    }

    /// One read of each of its keys, on the owner by the placement in force
    /// at that read; a miss is filled from the database (cache-aside). Keys
    /// go in small batches, one MGET per owner (each key still a lookup the
    /// node counts), so a sweep is quick even on a busy machine.
    async fn sweep(&mut self) -> Result<(), ExerciseError> {
        let mine: Vec<usize> = (self.index..self.keys.len()).step_by(self.of).collect();
        for batch in mine.chunks(READ_BATCH) {
            let epoch = self.shared.epoch.load(Ordering::SeqCst);
            self.shared.seen[self.index].store(epoch, Ordering::SeqCst);
            let mut per_owner: Vec<Vec<&String>> = vec![Vec::new(); self.conns.len()];
            for &i in batch {
                let key = &self.keys[i];
                per_owner[self.placements[epoch].owner(key)].push(key);
            }
            for (conn, keys) in self.conns.iter_mut().zip(per_owner) {
                if keys.is_empty() {
                    continue;
                }
                let got: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(conn)
                    .await
                    .doing("reading keys")?;
                let mut fill = redis::pipe();
                for (key, _) in keys.iter().zip(got).filter(|(_, v)| v.is_none()) {
                    fill.cmd("SET").arg(*key).arg(value_of(key)).ignore();
                }
                if !fill.is_empty() {
                    let _: () = fill.query_async(conn).await.doing("filling misses")?;
                }
            }
        }
        Ok(())
    }
}

fn max_over_mean(load: &[i64]) -> Option<f64> {
    let sum: i64 = load.iter().sum();
    let mean = sum as f64 / load.len() as f64;
    let max = *load.iter().max()? as f64;
    ratio(max, mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(ring: bool, vnodes: usize) -> f64 {
        let names: Vec<String> = (1..=4).map(|i| format!("cache-{i}")).collect();
        let p = [
            Placement::new(&names, &[0, 1, 2], ring, vnodes),
            Placement::new(&names, &[0, 1, 2, 3], ring, vnodes),
        ];
        let keys: Vec<String> = (0..10_000).map(|i| format!("ns:user:{i}")).collect();
        Moves::new(&keys, &p).moved.len() as f64 / keys.len() as f64
    }

    #[test]
    fn modulo_moves_most_keys_and_the_ring_about_a_quarter() {
        assert!(moved(false, 1) > 0.7, "{}", moved(false, 1));
        let ring = moved(true, 100);
        assert!((0.15..=0.35).contains(&ring), "{ring}");
    }

    #[test]
    fn placement_ignores_the_namespace() {
        let names: Vec<String> = (1..=4).map(|i| format!("cache-{i}")).collect();
        let p = Placement::new(&names, &[0, 1, 2, 3], true, 100);
        assert_eq!(p.owner("a:user:7"), p.owner("b:user:7"));
        assert_eq!(value_of("a:user:7"), "7");
    }

    #[test]
    fn replicas_sort_by_number() {
        let mut v = vec!["c-10", "c-2", "c-1"];
        v.sort_by_key(|n| replica_order(n));
        assert_eq!(v, ["c-1", "c-2", "c-10"]);
    }

    #[test]
    fn balance_without_keys_is_absent() {
        assert_eq!(max_over_mean(&[]), None);
        assert_eq!(max_over_mean(&[0, 0]), None);
        assert_eq!(max_over_mean(&[1, 3]), Some(1.5));
    }
}
