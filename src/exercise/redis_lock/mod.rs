//! `redis-lock`: N workers increment one counter with a non-atomic
//! read-modify-write, guarded (or not) by a lock kept on a Redis lock server.
//!
//! Two services: `locks`, the lock server, and `storage`, a separate Redis
//! that holds the counter (the resource the lock protects). Strategies:
//! `none` (no lock: updates are lost) and `setnx`: one Lua script on the lock
//! server does `SET lock owner NX PX ttl` and, only when that succeeds, INCR
//! of a fence counter, and returns the new value as the grant's fence token.
//! Grant and token are one atomic step, so tokens increase in grant order.
//! The holder releases with a script that deletes the lock only while it
//! still holds its own owner id.
//!
//! A lease shorter than the work (`ttl_ms` < `hold_ms`) lets a second worker
//! in while the first still works; both read the same value and one
//! increment is lost. With `fencing: true` every storage access carries the
//! holder's token and the storage refuses a token lower than the highest it
//! has seen. Reads are fenced too: a holder whose read is older than a newer
//! holder's read would otherwise write back a value computed from stale data
//! (fencing writes alone lets two holders that read the same value both
//! write, in token order, and still lose one increment).
//!
//! With a challenge scenario and `--solution`, the exercise is the harness
//! of the learner's lock instead ([`challenge`]).
//!
//! Everything counted here is counted by the servers: grants, busy answers
//! and failed releases by the lock server; the counter, accepted and refused
//! accesses and the most clients inside the critical section by the storage.
//! Only the acquisition latency is the client's own measurement.

mod challenge;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::sync::Barrier;

use super::{
    Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec, Timeline,
};
use crate::client::redis::{Lua, connect, connect_patient, delete_namespace};
use crate::stats::{join_workers, percentile_ms};

/// The `redis-lock` exercise.
pub struct RedisLock;

/// Lock server. KEYS: lock, fence counter, busy counter. ARGV: owner, ttl ms.
/// Returns the fence token of the grant, or 0 when the lock is taken.
const GRANT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
redis.call('INCR', KEYS[3])
return 0";

/// Lock server. KEYS: lock, lost counter. ARGV: owner. Deletes the lock only
/// while it is still this owner's; otherwise counts a lost lock.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
redis.call('INCR', KEYS[2])
return 0";

/// Storage. KEYS: inside gauge, most inside. Counts a client entering the
/// critical section and keeps the highest count seen.
const ENTER: &str = r"
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n";

/// Storage. KEYS: counter, highest token, refused counter. ARGV: token (0 =
/// unfenced). A fenced read registers its token; an older one is refused (-1).
const READ: &str = r"
local token = tonumber(ARGV[1])
if token > 0 then
  if token < tonumber(redis.call('GET', KEYS[2]) or '0') then
    redis.call('INCR', KEYS[3])
    return -1
  end
  redis.call('SET', KEYS[2], token)
end
return tonumber(redis.call('GET', KEYS[1]) or '0')";

/// Storage. KEYS: counter, highest token, refused counter, accepted counter.
/// ARGV: new value, token (0 = unfenced). Returns 1 if written, 0 if refused.
const WRITE: &str = r"
local token = tonumber(ARGV[2])
if token > 0 then
  if token < tonumber(redis.call('GET', KEYS[2]) or '0') then
    redis.call('INCR', KEYS[3])
    return 0
  end
  redis.call('SET', KEYS[2], token)
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[4])
return 1";

#[async_trait]
impl Exercise for RedisLock {
    fn name(&self) -> &'static str {
        "redis-lock"
    }

    fn summary(&self) -> &'static str {
        "workers increment a counter on a storage Redis with read-modify-write, guarded by a SET NX PX lock on a lock server, with or without fencing tokens"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["redis"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int(
                "workers",
                1,
                256,
                8,
                "concurrent workers, each with its own connections",
            ),
            ParamSpec::int("increments", 1, 100_000, 50, "increments per worker"),
            ParamSpec::choice(
                "strategy",
                &["none", "setnx"],
                "setnx",
                "how the critical section is guarded",
            ),
            ParamSpec::int("ttl_ms", 1, 600_000, 5000, "lock lease (PX)"),
            ParamSpec::int(
                "hold_ms",
                0,
                10_000,
                0,
                "work time between reading and writing the counter",
            ),
            ParamSpec::int("retry_ms", 0, 1000, 1, "pause before retrying a busy lock"),
            ParamSpec::flag(
                "fencing",
                false,
                "storage accesses carry the grant's fence token; the storage refuses older tokens",
            ),
            ParamSpec::int(
                "stall_ms",
                100,
                600_000,
                3000,
                "challenge: this long without an accepted ledger write, while instances still run, is no progress (the harness stops them)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "final_counter",
                    "counter value read back from the storage at the end",
                ),
                ObsSpec::number(
                    "writes_accepted",
                    "increments the storage accepted (each wrote value + 1)",
                ),
                ObsSpec::number(
                    "lost_updates",
                    "accepted writes whose increment is not in the final value: writes_accepted − final_counter",
                ),
                ObsSpec::number(
                    "fenced_rejections",
                    "reads and writes the storage refused because it had seen a newer fence token",
                ),
                ObsSpec::number(
                    "max_concurrent_holders",
                    "most workers inside the critical section at once, counted by the storage",
                ),
                ObsSpec::number(
                    "acquisitions",
                    "locks granted, counted by the lock server (the last fence token)",
                ),
                ObsSpec::number(
                    "retries",
                    "acquisition attempts the lock server answered busy",
                ),
                ObsSpec::number(
                    "lock_lost",
                    "releases the lock server found gone or taken by another worker",
                ),
                ObsSpec::number(
                    "stale_writes",
                    "challenge: accepted ledger writes over another instance's write made after their read",
                ),
                ObsSpec::flag(
                    "stalled",
                    "challenge: no ledger write was accepted for stall_ms while instances still ran",
                ),
                ObsSpec::number("acquire_p50_ms", "median time to acquire the lock"),
                ObsSpec::number("acquire_p99_ms", "99th percentile time to acquire the lock"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("workers-started", "every worker is connected and starts"),
                Milestone::new(
                    "holding",
                    "the first lock is granted (fence token 1); its holder enters the critical section",
                ),
                Milestone::new("workers-finished", "every worker has done its increments"),
                Milestone::by_instance(
                    "read-1",
                    "challenge: the ledger saw the first accepted read, by any instance (which then holds the lock, if the lock works); `solution-at-mark` is that instance",
                ),
                Milestone::by_instance(
                    "read-2",
                    "challenge: the second accepted read, by any instance",
                ),
                Milestone::by_instance(
                    "read-3",
                    "challenge: the third accepted read, by any instance",
                ),
                Milestone::by_instance(
                    "read-4",
                    "challenge: the fourth accepted read, by any instance",
                ),
                Milestone::by_instance(
                    "read-by-1",
                    "challenge: the ledger saw instance 1's first read (it holds the lock, if the lock works)",
                ),
                Milestone::by_instance(
                    "read-by-2",
                    "challenge: the ledger saw instance 2's first read",
                ),
                Milestone::by_instance(
                    "read-by-3",
                    "challenge: the ledger saw instance 3's first read",
                ),
                Milestone::by_instance(
                    "read-by-4",
                    "challenge: the ledger saw instance 4's first read",
                ),
            ]
        }
    }

    fn harness_env(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "LEDGER_URL",
            "the ledger: GET the value, PUT value + 1 (?instance=N&token=T)",
        )]
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        if let Some(solution) = ctx.solution() {
            return challenge::run(ctx, solution).await;
        }
        let keys = Keys::new(&ctx.namespace);
        let cfg = Config::from(ctx)?;
        let (locks, storage) = (service(ctx, "locks")?, service(ctx, "storage")?);
        let workers = connect_workers(ctx, locks, storage).await?;

        ctx.mark("workers-started");
        let durations = run_workers(workers, &keys, &cfg, ctx.timeline()).await?;
        ctx.mark("workers-finished");

        let mut lock_conn = connect(locks).await?;
        let mut storage_conn = connect(storage).await?;
        let counts = Counts::read(&mut lock_conn, &mut storage_conn, &keys).await?;
        delete_namespace(&mut lock_conn, &ctx.namespace).await?;
        delete_namespace(&mut storage_conn, &ctx.namespace).await?;
        Ok(counts.observations(durations))
    }
}

/// A service by name; the lab must define both `locks` and `storage`.
fn service<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a crate::catalog::Endpoint, ExerciseError> {
    ctx.services.get(name).ok_or_else(|| {
        ExerciseError(format!(
            "redis-lock needs a Redis service named `{name}` (the lock server is `locks`, the storage it guards is `storage`)"
        ))
    })
}

/// Every key of a scenario, under its namespace.
#[derive(Clone)]
struct Keys {
    lock: String,
    fence: String,
    busy: String,
    lost: String,
    counter: String,
    highest: String,
    refused: String,
    accepted: String,
    inside: String,
    most_inside: String,
}

impl Keys {
    fn new(ns: &str) -> Self {
        let k = |s: &str| format!("{ns}:{s}");
        Keys {
            lock: k("lock"),
            fence: k("fence"),
            busy: k("busy"),
            lost: k("lost"),
            counter: k("counter"),
            highest: k("highest-token"),
            refused: k("refused"),
            accepted: k("accepted"),
            inside: k("inside"),
            most_inside: k("most-inside"),
        }
    }
}

struct Config {
    increments: i64,
    locked: bool,
    fencing: bool,
    ttl_ms: i64,
    hold: Duration,
    retry: Duration,
}

impl Config {
    fn from(ctx: &Ctx) -> Result<Self, ExerciseError> {
        let cfg = Config {
            increments: ctx.int("increments"),
            locked: ctx.text("strategy") == "setnx",
            fencing: ctx.flag("fencing"),
            ttl_ms: ctx.int("ttl_ms"),
            hold: Duration::from_millis(ctx.int("hold_ms") as u64),
            retry: Duration::from_millis(ctx.int("retry_ms") as u64),
        };
        if cfg.fencing && !cfg.locked {
            return Err(ExerciseError(
                "fencing needs a lock: fence tokens come with the lock grant (strategy: setnx)"
                    .into(),
            ));
        }
        Ok(cfg)
    }
}

/// One worker's connections: to the lock server and to the storage.
struct Worker {
    locks: MultiplexedConnection,
    storage: MultiplexedConnection,
}

/// Connects every worker before any starts, so they all race from the same
/// moment instead of the first finishing before the last has connected.
async fn connect_workers(
    ctx: &Ctx,
    locks: &crate::catalog::Endpoint,
    storage: &crate::catalog::Endpoint,
) -> Result<Vec<Worker>, ExerciseError> {
    let mut workers = Vec::new();
    for _ in 0..ctx.int("workers") {
        workers.push(Worker {
            locks: connect_patient(locks).await?,
            storage: connect_patient(storage).await?,
        });
    }
    Ok(workers)
}

/// Runs the workers behind one start barrier; returns every acquisition's
/// latency.
async fn run_workers(
    workers: Vec<Worker>,
    keys: &Keys,
    cfg: &Config,
    timeline: Timeline,
) -> Result<Vec<Duration>, ExerciseError> {
    let start = Arc::new(Barrier::new(workers.len()));
    let scripts = Scripts::default();
    let handles = workers
        .into_iter()
        .enumerate()
        .map(|(id, w)| {
            let job = Job {
                id,
                keys: keys.clone(),
                scripts: scripts.clone(),
                increments: cfg.increments,
                locked: cfg.locked,
                fencing: cfg.fencing,
                ttl_ms: cfg.ttl_ms,
                hold: cfg.hold,
                retry: cfg.retry,
                // The first grant (token 1) is announced, so a lab can time a
                // fault (`after: holding`) to land while a lease is held.
                timeline: timeline.clone(),
            };
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                job.work(w).await
            })
        })
        .collect();
    Ok(join_workers(handles).await?.concat())
}

#[derive(Clone)]
struct Scripts {
    grant: Lua,
    release: Lua,
    enter: Lua,
    read: Lua,
    write: Lua,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            grant: Lua::new(GRANT),
            release: Lua::new(RELEASE),
            enter: Lua::new(ENTER),
            read: Lua::new(READ),
            write: Lua::new(WRITE),
        }
    }
}

struct Job {
    id: usize,
    keys: Keys,
    scripts: Scripts,
    increments: i64,
    locked: bool,
    fencing: bool,
    ttl_ms: i64,
    hold: Duration,
    retry: Duration,
    timeline: Timeline,
}

impl Job {
    /// The worker's loop: lock, enter, read, work, write, leave, release.
    async fn work(self, mut w: Worker) -> Result<Vec<Duration>, ExerciseError> {
        let mut latencies = Vec::new();
        for i in 0..self.increments {
            let owner = format!("w{}-{i}", self.id);
            let token = if self.locked {
                let started = Instant::now();
                let token = self.acquire(&mut w.locks, &owner).await?;
                latencies.push(started.elapsed());
                if token == 1 {
                    self.timeline.record("exercise", "holding");
                }
                token
            } else {
                0
            };
            self.increment(&mut w.storage, if self.fencing { token } else { 0 })
                .await?;
            if self.locked {
                let k = &self.keys;
                let _: i64 = self
                    .scripts
                    .release
                    .call(
                        &mut w.locks,
                        &[&k.lock, &k.lost],
                        &[&owner],
                        "releasing the lock",
                    )
                    .await?;
            }
        }
        Ok(latencies)
    }

    /// Asks the lock server until it grants the lock; returns the fence token.
    async fn acquire(
        &self,
        locks: &mut MultiplexedConnection,
        owner: &str,
    ) -> Result<i64, ExerciseError> {
        let k = &self.keys;
        loop {
            let token: i64 = self
                .scripts
                .grant
                .call(
                    locks,
                    &[&k.lock, &k.fence, &k.busy],
                    &[&owner, &self.ttl_ms],
                    "acquiring the lock",
                )
                .await?;
            if token > 0 {
                return Ok(token);
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    /// The critical section on the storage: read, work, write value + 1.
    /// `token` 0 means unfenced.
    async fn increment(
        &self,
        storage: &mut MultiplexedConnection,
        token: i64,
    ) -> Result<(), ExerciseError> {
        let k = &self.keys;
        let s = &self.scripts;
        let _: i64 = s
            .enter
            .call(storage, &[&k.inside, &k.most_inside], &[], "entering")
            .await?;
        let value: i64 = s
            .read
            .call(
                storage,
                &[&k.counter, &k.highest, &k.refused],
                &[&token],
                "reading the counter",
            )
            .await?;
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        // A refused read (-1): a newer holder has been at the storage; this
        // increment is given up.
        if value >= 0 {
            let _: i64 = s
                .write
                .call(
                    storage,
                    &[&k.counter, &k.highest, &k.refused, &k.accepted],
                    &[&(value + 1), &token],
                    "writing the counter",
                )
                .await?;
        }
        let _: i64 = redis::cmd("DECR")
            .arg(&k.inside)
            .query_async(storage)
            .await
            .doing("leaving")?;
        Ok(())
    }
}

/// What the servers counted.
struct Counts {
    grants: i64,
    busy: i64,
    lost: i64,
    counter: i64,
    accepted: i64,
    refused: i64,
    most_inside: i64,
}

impl Counts {
    async fn read(
        locks: &mut MultiplexedConnection,
        storage: &mut MultiplexedConnection,
        k: &Keys,
    ) -> Result<Self, ExerciseError> {
        let [grants, busy, lost] = get_counts(locks, [&k.fence, &k.busy, &k.lost]).await?;
        let [counter, accepted, refused, most_inside] = get_counts(
            storage,
            [&k.counter, &k.accepted, &k.refused, &k.most_inside],
        )
        .await?;
        Ok(Counts {
            grants,
            busy,
            lost,
            counter,
            accepted,
            refused,
            most_inside,
        })
    }

    fn observations(&self, mut latencies: Vec<Duration>) -> Observations {
        Observations::from([
            ("final_counter".into(), Value::from(self.counter)),
            ("writes_accepted".into(), Value::from(self.accepted)),
            (
                "lost_updates".into(),
                Value::from(self.accepted - self.counter),
            ),
            ("fenced_rejections".into(), Value::from(self.refused)),
            (
                "max_concurrent_holders".into(),
                Value::from(self.most_inside),
            ),
            ("acquisitions".into(), Value::from(self.grants)),
            ("retries".into(), Value::from(self.busy)),
            ("lock_lost".into(), Value::from(self.lost)),
            (
                "acquire_p50_ms".into(),
                Value::from(percentile_ms(&mut latencies, 50.0)),
            ),
            (
                "acquire_p99_ms".into(),
                Value::from(percentile_ms(&mut latencies, 99.0)),
            ),
        ])
    }
}

/// Integer keys at once (MGET); a missing key counts 0.
async fn get_counts<const N: usize>(
    conn: &mut MultiplexedConnection,
    keys: [&str; N],
) -> Result<[i64; N], ExerciseError> {
    let values: Vec<Option<i64>> = redis::cmd("MGET")
        .arg(&keys[..])
        .query_async(conn)
        .await
        .doing("reading the servers' counts")?;
    let mut out = [0; N];
    for (o, v) in out.iter_mut().zip(values) {
        *o = v.unwrap_or(0);
    }
    Ok(out)
}
