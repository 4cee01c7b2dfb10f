//! `consistent-hashing`: K keys spread over Redis cache nodes by `hash mod N`
//! or by a consistent-hash ring with virtual nodes; then a node is added or
//! removed and the exercise counts, on the nodes themselves, how many keys
//! are no longer where the new placement looks for them.
//!
//! The nodes are the lab's Redis instances (a service with `replicas: N`
//! gives `NAME-1` … `NAME-N`). `add` starts with the first N−1 and adds the
//! last; `remove` starts with all N and drops the last. Every key is written
//! to its owner; after the change each key is looked up (EXISTS) on its new
//! owner, a miss is a moved key, and the missing keys are then filled in from
//! the old owner and deleted there, as a cache would on a miss. Load is
//! DBSIZE per node.

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};

/// The `consistent-hashing` exercise.
pub struct ConsistentHashing;

#[async_trait]
impl Exercise for ConsistentHashing {
    fn name(&self) -> &'static str {
        "consistent-hashing"
    }

    fn summary(&self) -> &'static str {
        "keys placed on Redis cache nodes by hash mod N or a consistent-hash ring; a node joins or leaves and the misses are counted"
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
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("nodes_before", "cache nodes before the change"),
                ObsSpec::number("nodes_after", "cache nodes after the change"),
                ObsSpec::number(
                    "read_misses",
                    "keys not found (EXISTS) on their owner after the change",
                ),
                ObsSpec::number("keys_moved_fraction", "read_misses / keys"),
                ObsSpec::number(
                    "remapped_fraction",
                    "keys whose owner changed, by the placement function alone",
                ),
                ObsSpec::number(
                    "ideal_moved_fraction",
                    "the least that must move: the joining or leaving node's fair share, 1/N",
                ),
                ObsSpec::number(
                    "load_max_over_mean_before",
                    "busiest node's keys / mean keys per node, DBSIZE before the change",
                ),
                ObsSpec::number(
                    "load_max_over_mean",
                    "busiest node's keys / mean keys per node, DBSIZE after the change and the refill",
                ),
                ObsSpec::list(
                    "keys_per_node",
                    "DBSIZE of each node after the change (list, node order)",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("keys-written", "every key is written to its node"),
                Milestone::new("keys-read", "every key was read back after the change"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        // The cache nodes: every Redis instance, in replica order.
        let mut nodes: Vec<(&String, &crate::catalog::Endpoint)> = ctx
            .services
            .iter()
            .filter(|(_, e)| e.kind == "redis")
            .collect();
        nodes.sort_by_key(|(name, _)| replica_order(name));
        if nodes.len() < 2 {
            return Err(ExerciseError(format!(
                "needs at least 2 Redis instances (a service with `replicas:`), found {}",
                nodes.len()
            )));
        }
        let mut conns = Vec::new();
        for (name, e) in &nodes {
            let client = redis::Client::open(e.url.as_str()).doing("redis url")?;
            conns.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .doing(&format!("connecting to {name}"))?,
            );
        }
        let names: Vec<String> = nodes.iter().map(|(n, _)| n.to_string()).collect();
        let n = names.len();
        let (before, after): (Vec<usize>, Vec<usize>) = match ctx.text("change") {
            "remove" => ((0..n).collect(), (0..n - 1).collect()),
            _ => ((0..n - 1).collect(), (0..n).collect()),
        };
        let ring = ctx.text("placement") == "ring";
        let vnodes = ctx.int("vnodes") as usize;
        let place_before = Placement::new(&names, &before, ring, vnodes);
        let place_after = Placement::new(&names, &after, ring, vnodes);

        let total = ctx.int("keys") as usize;
        let ns = &ctx.namespace;
        // Placement hashes the key's own name; the namespace only keeps storage apart.
        let keys: Vec<String> = (0..total).map(|i| format!("user:{i}")).collect();
        let stored = |k: &str| format!("{ns}:{k}");

        let baseline = dbsizes(&mut conns).await?;
        let owner_before: Vec<usize> = keys.iter().map(|k| place_before.owner(k)).collect();
        let mut writes: Vec<redis::Pipeline> = (0..n).map(|_| redis::pipe()).collect();
        for (k, &o) in keys.iter().zip(&owner_before) {
            writes[o].cmd("SET").arg(stored(k)).arg(k).ignore();
        }
        run_pipes(&mut conns, writes, "writing keys").await?;
        ctx.mark("keys-written");
        let load_before = loads(&mut conns, &baseline, &before).await?;

        // The change: look every key up on its new owner.
        let owner_after: Vec<usize> = keys.iter().map(|k| place_after.owner(k)).collect();
        let remapped = owner_before
            .iter()
            .zip(&owner_after)
            .filter(|(a, b)| a != b)
            .count();
        let mut per_node: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, &o) in owner_after.iter().enumerate() {
            per_node[o].push(i);
        }
        let mut misses = Vec::new();
        for (node, idx) in per_node.iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for &i in idx {
                pipe.cmd("EXISTS").arg(stored(&keys[i]));
            }
            let found: Vec<i64> = pipe
                .query_async(&mut conns[node])
                .await
                .doing(&format!("reading keys on {}", names[node]))?;
            misses.extend(
                idx.iter()
                    .zip(found)
                    .filter(|(_, f)| *f == 0)
                    .map(|(&i, _)| i),
            );
        }
        ctx.mark("keys-read");

        // Refill the misses on the new owner and drop the stale copies.
        let mut fills: Vec<redis::Pipeline> = (0..n).map(|_| redis::pipe()).collect();
        for &i in &misses {
            let key = stored(&keys[i]);
            fills[owner_after[i]]
                .cmd("SET")
                .arg(&key)
                .arg(&keys[i])
                .ignore();
            fills[owner_before[i]].cmd("DEL").arg(&key).ignore();
        }
        run_pipes(&mut conns, fills, "moving keys").await?;
        let load_after = loads(&mut conns, &baseline, &after).await?;

        // Clean up: every node, every key of this scenario.
        let mut dels: Vec<redis::Pipeline> = (0..n).map(|_| redis::pipe()).collect();
        for chunk in keys.chunks(1000) {
            let batch: Vec<String> = chunk.iter().map(|k| stored(k)).collect();
            for d in &mut dels {
                d.cmd("DEL").arg(&batch).ignore();
            }
        }
        run_pipes(&mut conns, dels, "deleting keys").await?;

        let frac = |x: usize| (x as f64 / total as f64 * 10_000.0).round() / 10_000.0;
        let ideal = 1.0 / before.len().max(after.len()) as f64;
        Ok(Observations::from([
            ("nodes_before".into(), Value::from(before.len())),
            ("nodes_after".into(), Value::from(after.len())),
            ("read_misses".into(), Value::from(misses.len())),
            (
                "keys_moved_fraction".into(),
                Value::from(frac(misses.len())),
            ),
            ("remapped_fraction".into(), Value::from(frac(remapped))),
            (
                "ideal_moved_fraction".into(),
                Value::from((ideal * 10_000.0).round() / 10_000.0),
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

    fn owner(&self, key: &str) -> usize {
        let h = hash64(key);
        match self {
            Placement::Modulo(live) => live[(h % live.len() as u64) as usize],
            Placement::Ring(points) => {
                let at = points.partition_point(|&(p, _)| p < h);
                points[at % points.len()].1
            }
        }
    }
}

async fn dbsizes(
    conns: &mut [redis::aio::MultiplexedConnection],
) -> Result<Vec<i64>, ExerciseError> {
    let mut sizes = Vec::new();
    for c in conns.iter_mut() {
        sizes.push(redis::cmd("DBSIZE").query_async(c).await.doing("DBSIZE")?);
    }
    Ok(sizes)
}

/// Keys of this scenario per live node: DBSIZE minus what was there before.
async fn loads(
    conns: &mut [redis::aio::MultiplexedConnection],
    baseline: &[i64],
    live: &[usize],
) -> Result<Vec<i64>, ExerciseError> {
    let now = dbsizes(conns).await?;
    Ok(live.iter().map(|&i| now[i] - baseline[i]).collect())
}

fn max_over_mean(load: &[i64]) -> f64 {
    let sum: i64 = load.iter().sum();
    if sum == 0 {
        return 0.0;
    }
    let mean = sum as f64 / load.len() as f64;
    let max = load.iter().copied().max().unwrap_or_default() as f64;
    (max / mean * 1000.0).round() / 1000.0
}

async fn run_pipes(
    conns: &mut [redis::aio::MultiplexedConnection],
    pipes: Vec<redis::Pipeline>,
    what: &str,
) -> Result<(), ExerciseError> {
    for (c, p) in conns.iter_mut().zip(pipes) {
        if !p.is_empty() {
            let _: () = p.query_async(c).await.doing(what)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(ring: bool, vnodes: usize) -> f64 {
        let names: Vec<String> = (1..=4).map(|i| format!("cache-{i}")).collect();
        let a = Placement::new(&names, &[0, 1, 2], ring, vnodes);
        let b = Placement::new(&names, &[0, 1, 2, 3], ring, vnodes);
        let keys: Vec<String> = (0..10_000).map(|i| format!("user:{i}")).collect();
        keys.iter().filter(|k| a.owner(k) != b.owner(k)).count() as f64 / keys.len() as f64
    }

    #[test]
    fn modulo_moves_most_keys_and_the_ring_about_a_quarter() {
        assert!(moved(false, 1) > 0.7, "{}", moved(false, 1));
        let ring = moved(true, 100);
        assert!((0.15..=0.35).contains(&ring), "{ring}");
    }

    #[test]
    fn replicas_sort_by_number() {
        let mut v = vec!["c-10", "c-2", "c-1"];
        v.sort_by_key(|n| replica_order(n));
        assert_eq!(v, ["c-1", "c-2", "c-10"]);
    }
}
