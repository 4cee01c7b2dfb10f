//! Redis Cluster: creating one from empty nodes, reading who serves which
//! slot, and [`Router`], a client that routes each key to its slot's node
//! (or, as a naive client does, does not).
//!
//! Nodes name each other by hostname in redirects (see
//! compose/redis-cluster.yaml), and those names are the lab's instance
//! names, which a client on the host maps to published ports. The redis
//! crate's own cluster client connects to the names it is given and has no
//! such map, so the routing client is here.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{connect, info_field as field};
use crate::catalog::{Endpoint, Member};
use crate::exercise::{Context, ExerciseError};

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long the nodes may take to agree on the cluster once told.
const AGREE_DEADLINE: Duration = Duration::from_secs(25);

/// The slot of a key: CRC16 (XMODEM) of the key, or of its hash tag (the
/// text between the first `{` and the next `}`, when not empty), modulo
/// 16384, as the Redis Cluster specification defines it.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// Makes empty nodes one cluster, as `redis-cli --cluster create` does: the
/// first `n / (per_primary + 1)` members are primaries with the slots split
/// evenly, the others replicate them in turn. Nodes that already form this
/// cluster are left as they are. Returns once every node agrees.
pub async fn create(members: &[Member], per_primary: usize) -> Result<(), String> {
    let n = members.len();
    let primaries = n / (per_primary + 1);
    if primaries == 0 || !n.is_multiple_of(per_primary + 1) {
        return Err(format!(
            "{n} nodes do not split into primaries with {per_primary} replica(s) each: use a multiple of {}",
            per_primary + 1
        ));
    }
    let mut conns = Vec::with_capacity(n);
    for m in members {
        conns.push(connect(&m.endpoint).await.map_err(|e| e.0)?);
    }
    if formed(&mut conns, n).await? {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(n);
    for conn in conns.iter_mut() {
        ids.push(query::<String>(conn, redis::cmd("CLUSTER").arg("MYID")).await?);
    }
    for (i, conn) in conns.iter_mut().enumerate().take(primaries) {
        let (first, last) = share(i, primaries);
        query::<()>(
            conn,
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last),
        )
        .await?;
    }
    // Distinct epochs before the nodes meet, or they would have to resolve
    // the collision among themselves first.
    for (i, conn) in conns.iter_mut().enumerate() {
        query::<()>(
            conn,
            redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1),
        )
        .await?;
    }
    for conn in conns.iter_mut().skip(1) {
        query::<()>(
            conn,
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg(&members[0].address)
                .arg(6379),
        )
        .await?;
    }
    until(&mut conns, "every node to know the others", |info, _| {
        field(info, "cluster_known_nodes") == Some(n.to_string().as_str())
    })
    .await?;
    for j in primaries..n {
        let primary = &ids[(j - primaries) % primaries];
        let deadline = Instant::now() + AGREE_DEADLINE;
        // A node replicates only a primary it has heard of by gossip.
        while let Err(e) = query::<()>(
            &mut conns[j],
            redis::cmd("CLUSTER").arg("REPLICATE").arg(primary),
        )
        .await
        {
            if Instant::now() > deadline {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    until(&mut conns, "every slot to be served", |info, slots| {
        field(info, "cluster_state") == Some("ok")
            && field(info, "cluster_slots_ok") == Some("16384")
            && slots.is_some_and(|s| s.named() && s.primaries().len() == primaries)
    })
    .await?;
    // A replica shows in CLUSTER SLOTS only once gossip carried its
    // offset, seconds later; its own link to its primary says it sooner.
    for (j, conn) in conns.iter_mut().enumerate().skip(primaries) {
        let what = format!("`{}`", members[j].endpoint.service);
        super::until_in_sync(conn, AGREE_DEADLINE, &what)
            .await
            .map_err(|e| e.0)?;
    }
    Ok(())
}

/// Whether the nodes already form a cluster of `n` with every slot served.
async fn formed(conns: &mut [MultiplexedConnection], n: usize) -> Result<bool, String> {
    for conn in conns.iter_mut() {
        let info = cluster_info(conn).await?;
        if field(&info, "cluster_state") != Some("ok")
            || field(&info, "cluster_known_nodes") != Some(n.to_string().as_str())
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Slots `first..=last` of primary `i` of `primaries`.
fn share(i: usize, primaries: usize) -> (u16, u16) {
    let total = usize::from(SLOTS);
    let first = i * total / primaries;
    let last = (i + 1) * total / primaries - 1;
    (first as u16, last as u16)
}

/// Waits until `ok(CLUSTER INFO, CLUSTER SLOTS)` holds on every node.
async fn until(
    conns: &mut [MultiplexedConnection],
    what: &str,
    ok: impl Fn(&str, Option<&SlotMap>) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + AGREE_DEADLINE;
    loop {
        let mut all = true;
        for conn in conns.iter_mut() {
            let info = cluster_info(conn).await?;
            let slots = SlotMap::read(conn).await.ok();
            if !ok(&info, slots.as_ref()) {
                all = false;
                break;
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("waited {} s for {what}", AGREE_DEADLINE.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster_info(conn: &mut MultiplexedConnection) -> Result<String, String> {
    query(conn, redis::cmd("CLUSTER").arg("INFO")).await
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
) -> Result<T, String> {
    cmd.query_async(conn).await.map_err(|e| e.to_string())
}

/// Who serves which slots, as one node sees it (`CLUSTER SLOTS`).
#[derive(Debug, Clone, Default)]
pub struct SlotMap {
    /// `(first, last, primary, replicas)` per range, by announced name
    /// (`?` while a name is not known yet).
    pub ranges: Vec<(u16, u16, String, Vec<String>)>,
}

impl SlotMap {
    /// Reads the map from one node.
    pub async fn read(conn: &mut MultiplexedConnection) -> Result<SlotMap, ExerciseError> {
        let raw: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(conn)
            .await
            .doing("CLUSTER SLOTS")?;
        Ok(SlotMap {
            ranges: raw.iter().filter_map(range).collect(),
        })
    }

    /// The primary serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(first, last, ..)| (*first..=*last).contains(&slot))
            .map(|(_, _, primary, _)| primary.as_str())
    }

    /// The primaries, in slot order, each once.
    pub fn primaries(&self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for (_, _, p, _) in &self.ranges {
            if !seen.contains(p) {
                seen.push(p.clone());
            }
        }
        seen
    }

    /// Every node is known by name.
    fn named(&self) -> bool {
        self.ranges
            .iter()
            .all(|(_, _, p, r)| p != "?" && r.iter().all(|r| r != "?"))
    }
}

/// One `CLUSTER SLOTS` entry: `[first, last, [host, port, id, …], replicas…]`.
fn range(entry: &redis::Value) -> Option<(u16, u16, String, Vec<String>)> {
    let redis::Value::Array(items) = entry else {
        return None;
    };
    let number = |v: &redis::Value| redis::from_redis_value_ref::<u16>(v).ok();
    let host = |v: &redis::Value| match v {
        redis::Value::Array(node) => redis::from_redis_value_ref::<String>(node.first()?).ok(),
        _ => None,
    };
    let first = number(items.first()?)?;
    let last = number(items.get(1)?)?;
    let primary = host(items.get(2)?)?;
    let replicas = items.iter().skip(3).filter_map(host).collect();
    Some((first, last, primary, replicas))
}

/// How a [`Router`] treats redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Routes by slot, follows MOVED (updating its map) and ASK (once,
    /// with ASKING, map unchanged): a cluster-aware client.
    Follow,
    /// Routes by slot and follows MOVED, but takes ASK for an error: a
    /// client written before it met a slot in migration.
    MovedOnly,
    /// Sends everything to one node; every redirect is an error.
    Naive,
}

/// What a router has seen.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouterCounts {
    /// MOVED redirects followed.
    pub moved: u64,
    /// ASK redirects followed.
    pub ask: u64,
    /// Commands that ended in an error (redirects not followed included).
    pub errors: u64,
}

/// A Redis Cluster client that routes by slot over published ports.
pub struct Router {
    nodes: BTreeMap<String, Endpoint>,
    conns: HashMap<String, MultiplexedConnection>,
    owners: Vec<String>,
    mode: Redirects,
    last_refresh: Option<Instant>,
    /// What it has seen so far.
    pub counts: RouterCounts,
}

/// How often a router may reload its slot map while a node is unreachable.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// Redirects one command may follow before it is an error.
const MAX_REDIRECTS: usize = 5;

impl Router {
    /// A router over `nodes` (instance name → endpoint), with the slot map
    /// of the first node that answers (a naive one sends everything to the
    /// first node).
    pub async fn new(
        nodes: BTreeMap<String, Endpoint>,
        mode: Redirects,
    ) -> Result<Router, ExerciseError> {
        let first = nodes
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| ExerciseError("no cluster node".into()))?;
        let mut router = Router {
            nodes,
            conns: HashMap::new(),
            owners: vec![first.clone(); usize::from(SLOTS)],
            mode,
            last_refresh: None,
            counts: RouterCounts::default(),
        };
        if mode != Redirects::Naive {
            router.refresh(None).await?;
        }
        Ok(router)
    }

    /// Reloads the slot map from the first node that answers, but `except`.
    async fn refresh(&mut self, except: Option<&str>) -> Result<(), ExerciseError> {
        self.last_refresh = Some(Instant::now());
        let names: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| Some(n.as_str()) != except)
            .cloned()
            .collect();
        let mut why = ExerciseError("no cluster node answers".into());
        for name in names {
            let read = match self.conn(&name).await {
                Ok(conn) => SlotMap::read(conn).await,
                Err(e) => Err(e),
            };
            match read {
                Ok(map) => {
                    for slot in 0..SLOTS {
                        if let Some(owner) = map.owner(slot) {
                            self.owners[usize::from(slot)] = owner.to_string();
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.conns.remove(&name);
                    why = e;
                }
            }
        }
        Err(why)
    }

    /// A node did not answer: its connection is dropped and, as a
    /// cluster-aware client does, the slot map is read again elsewhere (a
    /// dead primary sends no MOVED; only the others' map shows who took
    /// its slots).
    async fn unreachable(&mut self, node: &str) {
        self.conns.remove(node);
        let due = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= REFRESH_EVERY);
        if self.mode != Redirects::Naive && due {
            let _ = self.refresh(Some(node)).await;
        }
    }

    async fn conn(&mut self, node: &str) -> Result<&mut MultiplexedConnection, ExerciseError> {
        if !self.conns.contains_key(node) {
            let endpoint = self.nodes.get(node).ok_or_else(|| {
                ExerciseError(format!(
                    "a redirect named `{node}`, which is no node of the lab"
                ))
            })?;
            let conn = connect(endpoint).await?;
            self.conns.insert(node.to_string(), conn);
        }
        Ok(self.conns.get_mut(node).expect("just inserted"))
    }

    /// Runs `cmd` on `key`'s node, following redirects as the mode allows.
    /// `Err` is the server's error (or the redirect not followed).
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        let result = self.route(key, cmd).await;
        if result.is_err() {
            self.counts.errors += 1;
        }
        result
    }

    async fn route<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        let slot = usize::from(slot(key));
        let mut node = self.owners[slot].clone();
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let conn = match self.conn(&node).await {
                Ok(conn) => conn,
                Err(e) => {
                    self.unreachable(&node).await;
                    return Err(e.0);
                }
            };
            let reply = if asking {
                redis::pipe()
                    .cmd("ASKING")
                    .ignore()
                    .add_command(cmd.clone())
                    .query_async::<(T,)>(conn)
                    .await
                    .map(|(v,)| v)
            } else {
                cmd.query_async::<T>(conn).await
            };
            let e = match reply {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
            {
                self.unreachable(&node).await;
                return Err(e.to_string());
            }
            let code = e.code().unwrap_or_default().to_string();
            let Some((to, _)) = e.redirect_node() else {
                return Err(e.to_string());
            };
            let to = to.rsplit_once(':').map_or(to, |(host, _)| host).to_string();
            match (code.as_str(), self.mode) {
                ("MOVED", Redirects::Follow | Redirects::MovedOnly) => {
                    self.counts.moved += 1;
                    self.owners[slot] = to.clone();
                    asking = false;
                }
                ("ASK", Redirects::Follow) => {
                    self.counts.ask += 1;
                    asking = true;
                }
                _ => return Err(e.to_string()),
            }
            node = to;
        }
        Err(format!("more than {MAX_REDIRECTS} redirects for `{key}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_split_evenly_and_cover_all() {
        assert_eq!(share(0, 3), (0, 5460));
        assert_eq!(share(1, 3), (5461, 10921));
        assert_eq!(share(2, 3), (10922, 16383));
        assert_eq!(share(0, 1), (0, 16383));
    }

    #[test]
    fn a_hash_tag_picks_the_slot() {
        // The example from the Redis Cluster specification.
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo"), 12182);
    }

    #[test]
    fn cluster_slots_entries_read_as_ranges() {
        use redis::Value::{Array, BulkString, Int};
        let node = |h: &str| Array(vec![BulkString(h.as_bytes().to_vec()), Int(6379)]);
        let entry = Array(vec![Int(0), Int(5460), node("shard-1"), node("shard-4")]);
        let map = SlotMap {
            ranges: vec![range(&entry).unwrap()],
        };
        assert_eq!(map.owner(100), Some("shard-1"));
        assert_eq!(map.owner(6000), None);
        assert!(map.named());
        assert_eq!(map.primaries(), ["shard-1"]);
    }
}
