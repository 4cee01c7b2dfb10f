//! `etcd-consensus`: a writer keeps writing to an etcd cluster while the
//! lab kills or cuts off members; what the members and the client see is
//! recorded from events, not from a clock.
//!
//! Before anything else the exercise hands leadership to the member named
//! by `leader` (etcd's own move-leader), so a fault on that member hits the
//! leader. Then three tasks run side by side:
//! - the writer puts one new key per write (`NS/w/000042`), through every
//!   member in turn as etcd's clients do (it stays on a member until it
//!   fails), or through the one `leader` member (`client: one-member`);
//! - a monitor asks every member for its status every 50 ms (who leads, in
//!   which term);
//! - in `minority` mode, once `observer` knows no leader, it is asked
//!   `probes` times for the written keys, linearizably and serializably.
//!
//! The end is an event: enough writes acknowledged after the first fault
//! (`failover`), the probes done (`minority`), or `writes_after` more writes
//! (`steady`); `deadline_ms` only bounds a wait that would never end.
//! Every acknowledged write is then looked up with a linearizable read.
//!
//! `mode: election` is leader election for application instances on top
//! of etcd, with leases and fencing ([`election`]).

mod election;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;

use super::{Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::etcd::{Etcd, Read};
use crate::stats::round2;

/// The `etcd-consensus` exercise.
pub struct EtcdConsensus;

const MODES: &[&str] = &["steady", "failover", "minority", "election"];
const CLIENTS: &[&str] = &["all-members", "one-member"];

/// How often the monitor asks every member for its status.
const MONITOR_EVERY: Duration = Duration::from_millis(50);

#[async_trait]
impl Exercise for EtcdConsensus {
    fn name(&self) -> &'static str {
        "etcd-consensus"
    }

    fn summary(&self) -> &'static str {
        "a writer and a status monitor against an etcd cluster while members are killed or cut off"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["etcd"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "mode",
                MODES,
                "steady",
                "steady: write and stop; failover: wait for the first fault, then for writes_after acknowledged writes; minority: wait until `observer` knows no leader, then probe its reads; election: application instances elect a leader on etcd leases",
            ),
            ParamSpec::text(
                "leader",
                "etcd-1",
                "the member leadership is moved to before the faults (so a fault on it hits the leader)",
            ),
            ParamSpec::text(
                "observer",
                "etcd-1",
                "minority mode: the member whose reads are probed once it knows no leader",
            ),
            ParamSpec::choice(
                "client",
                CLIENTS,
                "all-members",
                "all-members: the writer moves to the next member when one fails; one-member: it knows only `leader`",
            ),
            ParamSpec::int("interval_ms", 0, 1000, 20, "pause between two writes"),
            ParamSpec::int(
                "writes_before",
                1,
                10_000,
                25,
                "acknowledged writes before the `writing` milestone",
            ),
            ParamSpec::int(
                "writes_after",
                1,
                10_000,
                25,
                "acknowledged writes wanted after the first fault (steady: after `writing`)",
            ),
            ParamSpec::int(
                "probes",
                1,
                100,
                3,
                "minority mode: reads of each kind asked of `observer`",
            ),
            ParamSpec::int(
                "candidates",
                2,
                10,
                3,
                "election: application instances campaigning",
            ),
            ParamSpec::int(
                "ttl_s",
                1,
                60,
                2,
                "election: the lease TTL, renewed every third of it",
            ),
            ParamSpec::int(
                "work_ms",
                5,
                1000,
                50,
                "election: the leader writes one work item this often",
            ),
            ParamSpec::int(
                "work_before",
                1,
                1000,
                10,
                "election: work items before the leader freezes, and after it (by whoever leads then)",
            ),
            ParamSpec::int(
                "freeze_ms",
                0,
                60_000,
                1000,
                "election: how long the leader freezes (no renewals, no work), like a long GC pause; with freeze: past-lease, at least this long",
            ),
            ParamSpec::choice(
                "freeze",
                &["past-lease", "fixed"],
                "past-lease",
                "election: past-lease: the frozen leader wakes once another candidate has won (at least freeze_ms); fixed: after freeze_ms exactly",
            ),
            ParamSpec::int(
                "late_writes",
                1,
                100,
                5,
                "election: work items the leader sends after its freeze, unaware of it",
            ),
            ParamSpec::flag(
                "fencing",
                true,
                "election: each work item is a transaction that holds only while the leader key keeps the leader's create revision",
            ),
            ParamSpec::int(
                "request_ms",
                100,
                10_000,
                1000,
                "the client's deadline for one request",
            ),
            ParamSpec::int(
                "deadline_ms",
                1000,
                120_000,
                20_000,
                "the longest wait for an event (a fault, a new leader, a lost leader)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "members",
                    "members that answered a status request at the start",
                ),
                ObsSpec::flag(
                    "leaders_agree",
                    "every member named the same leader at the start",
                ),
                ObsSpec::number("writes_acked", "writes the cluster acknowledged"),
                ObsSpec::number(
                    "writes_failed",
                    "writes refused or unanswered (each member tried counts once)",
                ),
                ObsSpec::number(
                    "acked_after_fault",
                    "writes sent after the first fault and acknowledged",
                ),
                ObsSpec::number(
                    "acked_lost",
                    "acknowledged writes a linearizable read cannot find at the end (absent when no quorum answers)",
                ),
                ObsSpec::number(
                    "failed_but_applied",
                    "writes the client saw fail that are there at the end all the same (absent when no quorum answers)",
                ),
                ObsSpec::number(
                    "write_gap_ms",
                    "the longest time without an acknowledged write, from the writer's side",
                ),
                ObsSpec::number(
                    "election_ms",
                    "first fault to the first status, from a member still answering, that names a new leader",
                ),
                ObsSpec::number(
                    "leader_changes",
                    "distinct leaders the members named after the start, other than the one placed there",
                ),
                ObsSpec::number(
                    "linearizable_answered",
                    "minority: linearizable reads `observer` answered",
                ),
                ObsSpec::number(
                    "linearizable_refused",
                    "minority: linearizable reads `observer` refused or left unanswered",
                ),
                ObsSpec::number(
                    "serializable_answered",
                    "minority: serializable reads `observer` answered",
                ),
                ObsSpec::number(
                    "stale_reads",
                    "minority: answered reads missing writes acknowledged before the read was sent",
                ),
                ObsSpec::number("leaders_elected", "election: campaigns won"),
                ObsSpec::number(
                    "terms_in_store",
                    "election: leader terms (create revisions) among the stored work items",
                ),
                ObsSpec::number(
                    "writes_by_deposed",
                    "election: work items etcd stored from a term after a newer term's first item",
                ),
                ObsSpec::number(
                    "late_writes_accepted",
                    "election: the frozen leader's late items etcd stored",
                ),
                ObsSpec::number(
                    "late_writes_refused",
                    "election: the frozen leader's late items the fence refused",
                ),
                ObsSpec::number(
                    "failover_ms",
                    "election: the freeze's start to the next campaign won (absent: nobody else won)",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("leader-placed", "leadership is on the `leader` member"),
                Milestone::new("writing", "writes_before writes are acknowledged"),
                Milestone::new(
                    "leader-frozen",
                    "election: the leader stops renewing and working",
                ),
                Milestone::new(
                    "leader-thawed",
                    "election: the frozen leader goes on, unaware",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let cluster = Cluster::connect(ctx)?;
        if ctx.text("mode") == "election" {
            return election::run(ctx, &cluster).await;
        }
        let mut obs = Observations::new();
        let start = cluster.survey().await;
        obs.insert("members".into(), Value::from(start.len()));
        let leaders: BTreeSet<u64> = start.values().copied().collect();
        obs.insert(
            "leaders_agree".into(),
            Value::from(leaders.len() == 1 && !leaders.contains(&0)),
        );
        let leader = ctx.text("leader").to_string();
        let old_leader = cluster.place_leader(&leader, deadline(ctx)).await?;
        ctx.mark("leader-placed");

        let clock = Instant::now();
        let (stop, stopped) = watch::channel(false);
        let writes = Arc::new(Mutex::new(Vec::<Write>::new()));
        let writer = tokio::spawn(write_loop(
            cluster.writer_order(&leader, ctx.text("client")),
            writes_prefix(&ctx.namespace),
            Duration::from_millis(ctx.int("interval_ms") as u64),
            clock,
            writes.clone(),
            stopped.clone(),
        ));
        let polls = Arc::new(Mutex::new(Vec::<Poll>::new()));
        let monitor = tokio::spawn(monitor_loop(cluster.clone(), clock, polls.clone(), stopped));

        let acked = || acked_count(&writes);
        let until = Instant::now() + deadline(ctx);
        wait(until, || acked() >= ctx.int("writes_before") as usize).await;
        ctx.mark("writing");
        let mut probes = None;
        match ctx.text("mode") {
            "failover" => {
                let fault = first_fault(ctx, clock, until).await;
                if let Some(fault) = fault {
                    let wanted = ctx.int("writes_after") as usize;
                    wait(until, || acked_after(&writes, fault) >= wanted).await;
                }
            }
            "minority" => {
                if first_fault(ctx, clock, until).await.is_some() {
                    let observer = cluster.member(ctx.text("observer"))?;
                    wait_async(until, || async {
                        matches!(observer.status().await, Ok(s) if s.leader == 0)
                    })
                    .await;
                    probes = Some(probe_reads(ctx, &observer, &writes, clock).await);
                }
            }
            _ => {
                let wanted = acked() + ctx.int("writes_after") as usize;
                wait(until, || acked() >= wanted).await;
            }
        }
        let _ = stop.send(true);
        let _ = writer.await;
        let _ = monitor.await;

        let writes = std::mem::take(&mut *writes.lock().expect("writes"));
        let polls = std::mem::take(&mut *polls.lock().expect("polls"));
        let fault = fault_at(ctx, clock);
        record_writes(&mut obs, &writes, fault);
        record_leadership(ctx, &mut obs, &polls, fault, old_leader);
        if let Some(p) = probes {
            p.record(&mut obs);
        }
        if let Some((lost, applied)) = cluster.audit(&ctx.namespace, &writes, ctx).await {
            obs.insert("acked_lost".into(), Value::from(lost));
            obs.insert("failed_but_applied".into(), Value::from(applied));
        }
        Ok(obs)
    }
}

/// One write as the writer saw it (times since the writer started).
#[derive(Debug, Clone)]
struct Write {
    seq: u64,
    sent: Duration,
    done: Duration,
    ok: bool,
}

/// One status answer from the monitor.
#[derive(Debug, Clone)]
struct Poll {
    at: Duration,
    member: String,
    leader: u64,
}

/// The members by instance name, each with its client.
#[derive(Clone)]
struct Cluster {
    members: BTreeMap<String, Etcd>,
}

impl Cluster {
    fn connect(ctx: &Ctx) -> Result<Self, ExerciseError> {
        let request = Duration::from_millis(ctx.int("request_ms") as u64);
        let mut members = BTreeMap::new();
        for endpoint in ctx.services.values().filter(|e| e.kind == "etcd") {
            let client = Etcd::new(endpoint, request).map_err(ExerciseError)?;
            members.insert(endpoint.service.clone(), client);
        }
        Ok(Cluster { members })
    }

    fn member(&self, name: &str) -> Result<Etcd, ExerciseError> {
        self.members.get(name).cloned().ok_or_else(|| {
            ExerciseError(format!(
                "no etcd member `{name}` (members: {})",
                self.members.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Every answering member's leader.
    async fn survey(&self) -> BTreeMap<String, u64> {
        let answers = futures_util::future::join_all(
            self.members
                .iter()
                .map(|(name, c)| async move { (name.clone(), c.status().await) }),
        )
        .await;
        answers
            .into_iter()
            .filter_map(|(name, s)| s.ok().map(|s| (name, s.leader)))
            .collect()
    }

    /// Moves leadership to `name` (when it is not there already) and waits
    /// until every member names it (the others learn of a transfer a
    /// heartbeat later, and a poll of one still naming the old leader would
    /// read as a leader change); returns its member id.
    async fn place_leader(&self, name: &str, within: Duration) -> Result<u64, ExerciseError> {
        let target = self.member(name)?;
        let until = Instant::now() + within;
        loop {
            let status = target.status().await;
            if let Ok(s) = &status
                && s.leader == s.member
                && s.member != 0
                && self.all_name(s.member).await
            {
                return Ok(s.member);
            }
            if Instant::now() > until {
                return Err(ExerciseError(format!(
                    "leadership did not move to `{name}` within {within:?} (last status: {status:?})"
                )));
            }
            if let Ok(s) = status
                && s.leader != 0
            {
                // Only the current leader accepts a transfer.
                for c in self.members.values() {
                    if matches!(c.status().await, Ok(l) if l.member == s.leader) {
                        let _ = c.move_leader(s.member).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether every member answers and names `leader`.
    async fn all_name(&self, leader: u64) -> bool {
        for c in self.members.values() {
            if !matches!(c.status().await, Ok(s) if s.leader == leader) {
                return false;
            }
        }
        true
    }

    /// The members the writer tries, in order: `leader` first.
    fn writer_order(&self, leader: &str, client: &str) -> Vec<Etcd> {
        let mut names: Vec<&String> = self.members.keys().collect();
        names.sort_by_key(|n| (n.as_str() != leader, n.to_string()));
        if client == "one-member" {
            names.truncate(1);
        }
        names.iter().map(|n| self.members[*n].clone()).collect()
    }

    /// Looks every write up with a linearizable read, asked of each member
    /// until one answers: acknowledged writes missing, and failed writes
    /// present (None: no quorum answers).
    async fn audit(&self, ns: &str, writes: &[Write], ctx: &Ctx) -> Option<(usize, usize)> {
        let prefix = writes_prefix(ns);
        for c in self.members.values() {
            let Ok(kvs) = c.get_prefix(&prefix, Read::Linearizable).await else {
                continue;
            };
            let found: BTreeSet<String> = kvs.into_iter().map(|kv| kv.value).collect();
            let lost: Vec<u64> = writes
                .iter()
                .filter(|w| w.ok && !found.contains(&w.seq.to_string()))
                .map(|w| w.seq)
                .collect();
            if let Some(first) = lost.first() {
                ctx.evidence(
                    "acked_lost",
                    format!(
                        "write {first} was acknowledged but is not there ({} such writes)",
                        lost.len()
                    ),
                );
            }
            let applied = writes
                .iter()
                .filter(|w| !w.ok && found.contains(&w.seq.to_string()))
                .count();
            return Some((lost.len(), applied));
        }
        None
    }
}

/// Where the writer's keys live: `NS/w/000042`.
fn writes_prefix(ns: &str) -> String {
    format!("{ns}/w/")
}

/// The longest wait for an event.
fn deadline(ctx: &Ctx) -> Duration {
    Duration::from_millis(ctx.int("deadline_ms") as u64)
}

/// The writer: one new key per write; on a failure, the next member.
async fn write_loop(
    order: Vec<Etcd>,
    prefix: String,
    interval: Duration,
    clock: Instant,
    writes: Arc<Mutex<Vec<Write>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut at = 0;
    let mut seq = 0u64;
    while !*stop.borrow() {
        seq += 1;
        let sent = clock.elapsed();
        let result = order[at]
            .put(&format!("{prefix}{seq:06}"), &seq.to_string())
            .await;
        let ok = result.is_ok();
        writes.lock().expect("writes").push(Write {
            seq,
            sent,
            done: clock.elapsed(),
            ok,
        });
        if !ok {
            at = (at + 1) % order.len();
        }
        let pause = if ok {
            interval
        } else {
            // Refusals come fast: do not spin on a member without a leader.
            interval.max(Duration::from_millis(20))
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The monitor: every member's leader, every [`MONITOR_EVERY`].
async fn monitor_loop(
    cluster: Cluster,
    clock: Instant,
    polls: Arc<Mutex<Vec<Poll>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(MONITOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let answers = futures_util::future::join_all(
            cluster
                .members
                .iter()
                .map(|(name, c)| async move { (name.clone(), c.status().await, clock.elapsed()) }),
        )
        .await;
        let mut polls = polls.lock().expect("polls");
        for (member, status, at) in answers {
            if let Ok(s) = status {
                polls.push(Poll {
                    at,
                    member,
                    leader: s.leader,
                });
            }
        }
    }
}

/// Waits until `done` holds or `until` passes, checking every 10 ms.
async fn wait(until: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_async<F, Fut>(until: Instant, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while Instant::now() < until && !done().await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When the scenario's first fault fired, on the writer's clock.
fn fault_at(ctx: &Ctx, clock: Instant) -> Option<Duration> {
    let timeline = ctx.timeline();
    let clock_at = timeline.elapsed().checked_sub(clock.elapsed())?;
    timeline
        .events()
        .into_iter()
        .find(|e| e.source == "fault")
        .map(|e| Duration::from_millis(e.at_ms).saturating_sub(clock_at))
}

async fn first_fault(ctx: &Ctx, clock: Instant, until: Instant) -> Option<Duration> {
    while Instant::now() < until {
        if let Some(at) = fault_at(ctx, clock) {
            return Some(at);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn acked_count(writes: &Mutex<Vec<Write>>) -> usize {
    writes
        .lock()
        .expect("writes")
        .iter()
        .filter(|w| w.ok)
        .count()
}

fn acked_after(writes: &Mutex<Vec<Write>>, fault: Duration) -> usize {
    count_after(&writes.lock().expect("writes"), fault)
}

/// Acknowledged writes sent after the fault *hit the writer*: after its
/// first failed write that followed the fault, or after the fault when no
/// write failed. The fault is recorded just before the engine applies it,
/// so a write sent in that instant may still be acknowledged by the member
/// about to die; the writer's own failure is the event that says it died.
fn count_after(writes: &[Write], fault: Duration) -> usize {
    let hit = writes
        .iter()
        .find(|w| !w.ok && w.sent >= fault)
        .map_or(fault, |w| w.sent);
    writes.iter().filter(|w| w.ok && w.sent > hit).count()
}

fn record_writes(obs: &mut Observations, writes: &[Write], fault: Option<Duration>) {
    let acked: Vec<&Write> = writes.iter().filter(|w| w.ok).collect();
    obs.insert("writes_acked".into(), Value::from(acked.len()));
    obs.insert(
        "writes_failed".into(),
        Value::from(writes.len() - acked.len()),
    );
    if let Some(fault) = fault {
        obs.insert(
            "acked_after_fault".into(),
            Value::from(count_after(writes, fault)),
        );
    }
    let gaps = acked
        .windows(2)
        .map(|p| p[1].done.saturating_sub(p[0].done))
        .max();
    if let Some(gap) = gaps {
        obs.insert(
            "write_gap_ms".into(),
            Value::from(round2(gap.as_secs_f64() * 1000.0)),
        );
    }
}

fn record_leadership(
    ctx: &Ctx,
    obs: &mut Observations,
    polls: &[Poll],
    fault: Option<Duration>,
    old: u64,
) {
    // Distinct new leaders: members naming the old and the new one in turn
    // during an election must not count twice.
    let new_leaders: BTreeSet<u64> = polls
        .iter()
        .filter(|p| p.leader != 0 && p.leader != old)
        .map(|p| p.leader)
        .collect();
    obs.insert("leader_changes".into(), Value::from(new_leaders.len()));
    if let Some(fault) = fault
        && let Some(first) = polls
            .iter()
            .find(|p| p.at >= fault && p.leader != 0 && p.leader != old)
    {
        let ms = first.at.saturating_sub(fault).as_secs_f64() * 1000.0;
        obs.insert("election_ms".into(), Value::from(round2(ms)));
        ctx.evidence(
            "election_ms",
            format!(
                "{} named leader {:x} {ms:.0} ms after the first fault",
                first.member, first.leader
            ),
        );
    }
}

/// What `observer` answered once it knew no leader.
#[derive(Default)]
struct Probes {
    linearizable_answered: usize,
    linearizable_refused: usize,
    serializable_answered: usize,
    stale: usize,
}

impl Probes {
    fn record(&self, obs: &mut Observations) {
        obs.insert(
            "linearizable_answered".into(),
            Value::from(self.linearizable_answered),
        );
        obs.insert(
            "linearizable_refused".into(),
            Value::from(self.linearizable_refused),
        );
        obs.insert(
            "serializable_answered".into(),
            Value::from(self.serializable_answered),
        );
        obs.insert("stale_reads".into(), Value::from(self.stale));
    }
}

/// Asks `observer` for every written key, each way, `probes` times; a read
/// is stale when it misses a write acknowledged before it was sent.
async fn probe_reads(
    ctx: &Ctx,
    observer: &Etcd,
    writes: &Mutex<Vec<Write>>,
    clock: Instant,
) -> Probes {
    let prefix = writes_prefix(&ctx.namespace);
    let mut p = Probes::default();
    let request = Duration::from_millis(ctx.int("request_ms") as u64);
    let acked = || acked_count(writes);
    for _ in 0..ctx.int("probes") {
        // Each round after the next acknowledged write, when the rest of the
        // cluster still takes writes (at most one request deadline), so a
        // stale copy has something to miss.
        let before = acked();
        wait(Instant::now() + request, || acked() > before).await;
        for read in [Read::Serializable, Read::Linearizable] {
            let sent = clock.elapsed();
            let acked: BTreeSet<String> = writes
                .lock()
                .expect("writes")
                .iter()
                .filter(|w| w.ok && w.done <= sent)
                .map(|w| w.seq.to_string())
                .collect();
            match observer.get_prefix(&prefix, read).await {
                Ok(kvs) => {
                    match read {
                        Read::Serializable => p.serializable_answered += 1,
                        Read::Linearizable => p.linearizable_answered += 1,
                    }
                    let seen: BTreeSet<String> = kvs.into_iter().map(|kv| kv.value).collect();
                    let missing = acked.difference(&seen).count();
                    if missing > 0 {
                        p.stale += 1;
                        ctx.evidence(
                            "stale_reads",
                            format!(
                                "a {read:?} read answered {} keys but missed {missing} acknowledged writes",
                                seen.len()
                            ),
                        );
                    }
                }
                // Refused, or no answer within the deadline.
                Err(_) => {
                    if read == Read::Linearizable {
                        p.linearizable_refused += 1;
                    }
                }
            }
        }
    }
    p
}
