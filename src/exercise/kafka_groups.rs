//! `kafka-groups`: a partitioned Kafka topic read by consumer groups.
//!
//! One topic with `partitions` partitions (created with the admin API) gets
//! `messages` messages spread over `keys` keys. Each of `groups` consumer
//! groups has `members` consumers that join before anything is produced;
//! `late_groups` more groups join only after everything was produced (a replay
//! from `offset_reset`). Every delivery is recorded per group: which message,
//! which member, in which order, how long after it was sent.
//!
//! Optional trouble: one member of the first group leaves after consuming
//! `leave_after` messages without committing its latest progress (a crash,
//! as far as offsets go). The group rebalances, the survivors take its
//! partitions over from the last committed offsets (`commit: periodic`), or
//! from `offset_reset` when nothing was committed (`commit: none`).
//!
//! Everything counted here is counted from what the broker delivered:
//! duplicates are second deliveries of a message within a group, lost
//! messages are sent messages a group never received, an order violation is a
//! message delivered for the first time after a later message of its key.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::stats::percentile_ms;

/// The `kafka-groups` exercise.
pub struct KafkaGroups;

#[async_trait]
impl Exercise for KafkaGroups {
    fn name(&self) -> &'static str {
        "kafka-groups"
    }

    fn summary(&self) -> &'static str {
        "consumer groups split a partitioned Kafka topic among their members; every group gets every message"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["kafka"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("partitions", 1, 64, 6, "partitions of the topic"),
            ParamSpec::int("messages", 1, 1_000_000, 3000, "messages produced"),
            ParamSpec::int(
                "keys",
                1,
                100_000,
                24,
                "distinct message keys (message i has key i mod keys)",
            ),
            ParamSpec::int("members", 1, 32, 3, "consumers per group"),
            ParamSpec::int(
                "groups",
                0,
                8,
                1,
                "groups that join before the first message is produced",
            ),
            ParamSpec::int(
                "late_groups",
                0,
                8,
                0,
                "groups that join only after the last message was produced",
            ),
            ParamSpec::choice(
                "partitioning",
                &["key", "round-robin"],
                "key",
                "`key`: the key picks the partition; `round-robin`: a key's messages rotate over all partitions",
            ),
            ParamSpec::int(
                "rate",
                0,
                1_000_000,
                0,
                "messages per second produced (0: as fast as possible)",
            ),
            ParamSpec::choice(
                "offset_reset",
                &["earliest", "latest"],
                "earliest",
                "where a member starts on a partition its group has no committed offset for",
            ),
            ParamSpec::choice(
                "commit",
                &["periodic", "none"],
                "periodic",
                "`periodic`: commit every `commit_every` messages and on revocation; `none`: never",
            ),
            ParamSpec::int(
                "commit_every",
                1,
                1_000_000,
                100,
                "messages a member processes between two commits",
            ),
            ParamSpec::int(
                "leave_after",
                0,
                1_000_000,
                0,
                "the first group's first member leaves, uncommitted progress and all, after this many messages (0: nobody leaves)",
            ),
            ParamSpec::int(
                "fetch_wait_ms",
                1,
                10_000,
                10,
                "consumer fetch.wait.max.ms: how long the broker may hold a fetch (tansu holds every fetch this long)",
            ),
            ParamSpec::int(
                "idle_ms",
                100,
                600_000,
                3000,
                "stop waiting once nothing new arrived for this long after the end of production",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("messages_sent", "messages the broker acknowledged"),
                ObsSpec::number(
                    "consumed_total",
                    "deliveries over all groups and members, duplicates included",
                ),
                ObsSpec::list(
                    "per_group_received",
                    "distinct messages each group received (live groups first, then late ones)",
                ),
                ObsSpec::number("groups_complete", "groups that received every message sent"),
                ObsSpec::number(
                    "late_received",
                    "distinct messages the late groups received, summed",
                ),
                ObsSpec::list(
                    "per_member_partitions",
                    "partitions each member of the first group held once the group was stable",
                ),
                ObsSpec::number(
                    "members_with_partitions",
                    "members of the first group that held at least one partition",
                ),
                ObsSpec::number(
                    "max_owners_per_partition",
                    "most members of one group ever holding the same partition at once",
                ),
                ObsSpec::number(
                    "order_violations_per_key",
                    "first deliveries that came after a later message of the same key (all groups)",
                ),
                ObsSpec::number(
                    "lost",
                    "messages a group never received, summed over groups",
                ),
                ObsSpec::number(
                    "duplicates",
                    "repeated deliveries of a message within a group, summed over groups",
                ),
                ObsSpec::number(
                    "rebalance_time_ms",
                    "from the member's leaving to the survivors holding every partition (only when a member left)",
                ),
                ObsSpec::number(
                    "partitions_after_rebalance",
                    "partitions each surviving member held after the rebalance (only when a member left)",
                ),
                ObsSpec::number(
                    "msgs_per_s",
                    "messages the first group received per second, from the first send to its last delivery",
                ),
                ObsSpec::number(
                    "latency_p50_ms",
                    "median time from send to first delivery (live groups)",
                ),
                ObsSpec::number(
                    "latency_p99_ms",
                    "99th percentile time from send to first delivery (live groups)",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("topic-created", "the topic exists"),
                Milestone::new("groups-stable", "every group has its partitions"),
                Milestone::new("producing", "the producer starts"),
                Milestone::new("produced", "every message is acknowledged"),
                Milestone::new(
                    "late-groups-stable",
                    "the late groups have their partitions",
                ),
                Milestone::new("drained", "every group has read everything"),
                Milestone::new("consumers-closed", "every consumer has left"),
                Milestone::new("member-left", "the leaving member has left its group"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let bootstrap = ctx.service("kafka")?.url.clone();
        let cfg = Config::from_ctx(ctx);
        let topic = topic_name(&ctx.namespace, "events");
        create_topic(&bootstrap, &topic, cfg.partitions).await?;
        ctx.mark("topic-created");

        let base = Instant::now();
        let live: Vec<Arc<Group>> = (0..cfg.groups)
            .map(|g| Group::new(&ctx.namespace, g, false, &cfg))
            .collect();
        let late: Vec<Arc<Group>> = (0..cfg.late_groups)
            .map(|g| Group::new(&ctx.namespace, cfg.groups + g, true, &cfg))
            .collect();
        let stop = CancellationToken::new();
        let mut errors: Vec<String> = Vec::new();

        let live_members = start_members(&bootstrap, &topic, &live, &cfg)?;
        let live_run = join_all(
            live_members
                .into_iter()
                .map(|m| consume(m, &cfg, base, &stop, ctx)),
        );
        let drive = async {
            wait_stable(&live, &cfg, &stop).await?;
            if !live.is_empty() {
                ctx.mark("groups-stable");
            }
            let producer = producer(&bootstrap)?;
            let produce_start = Instant::now();
            ctx.mark("producing");
            let keys = cfg.keys;
            let partitions = cfg.partitions;
            let round_robin = cfg.round_robin;
            let sent = produce(&producer, &topic, cfg.messages, cfg.rate, |i| {
                let (key, seq) = (i % keys, i / keys);
                let sent_us = base.elapsed().as_micros() as u64;
                Outgoing {
                    key: (!round_robin).then(|| format!("key-{key}")),
                    partition: round_robin.then_some((seq % partitions as u64) as i32),
                    payload: format!("{i} {key} {seq} {sent_us}"),
                }
            })
            .await;
            let produced_at = Instant::now();
            ctx.mark("produced");
            sent?;
            let sent = cfg.messages;

            let late_members = start_members(&bootstrap, &topic, &late, &cfg)?;
            let late_run = join_all(
                late_members
                    .into_iter()
                    .map(|m| consume(m, &cfg, base, &stop, ctx)),
            );
            let waiter = async {
                wait_stable(&late, &cfg, &stop).await?;
                if !late.is_empty() {
                    ctx.mark("late-groups-stable");
                }
                let since = Instant::now().max(produced_at);
                wait_drained(live.iter().chain(&late), sent, since, &cfg).await;
                ctx.mark("drained");
                stop.cancel();
                Ok::<_, ExerciseError>(())
            };
            let (late_errors, waited) = tokio::join!(late_run, waiter);
            waited?;
            Ok((sent, produce_start, late_errors))
        };
        // Whatever goes wrong in the driver, the members must stop too.
        let driver = async {
            let driven = drive.await;
            if driven.is_err() {
                stop.cancel();
            }
            driven
        };
        let (live_errors, driven) = tokio::join!(live_run, driver);
        let (sent, produce_start, late_errors) = driven?;
        errors.extend(live_errors.into_iter().filter_map(Result::err));
        errors.extend(late_errors.into_iter().filter_map(Result::err));
        if !errors.is_empty() {
            return Err(ExerciseError(errors.join("; ")));
        }
        let _ = delete_topic(&bootstrap, &topic).await;
        ctx.mark("consumers-closed");
        Ok(observe(&live, &late, sent, produce_start))
    }
}

/// The effective parameters.
#[derive(Debug, Clone)]
struct Config {
    partitions: i32,
    messages: u64,
    keys: u64,
    members: usize,
    groups: usize,
    late_groups: usize,
    round_robin: bool,
    rate: u64,
    offset_reset: String,
    commit: bool,
    commit_every: u64,
    leave_after: u64,
    fetch_wait_ms: i64,
    idle: Duration,
}

impl Config {
    fn from_ctx(ctx: &Ctx) -> Self {
        Config {
            partitions: ctx.int("partitions") as i32,
            messages: ctx.int("messages") as u64,
            keys: ctx.int("keys") as u64,
            members: ctx.int("members") as usize,
            groups: ctx.int("groups") as usize,
            late_groups: ctx.int("late_groups") as usize,
            round_robin: ctx.text("partitioning") == "round-robin",
            rate: ctx.int("rate") as u64,
            offset_reset: ctx.text("offset_reset").to_string(),
            commit: ctx.text("commit") == "periodic",
            commit_every: ctx.int("commit_every") as u64,
            leave_after: ctx.int("leave_after") as u64,
            fetch_wait_ms: ctx.int("fetch_wait_ms"),
            idle: Duration::from_millis(ctx.int("idle_ms") as u64),
        }
    }
}

/// One consumer group and everything its members received.
struct Group {
    id: String,
    late: bool,
    /// Whether member 0 of this group is the one that leaves.
    has_leaver: bool,
    state: Mutex<Deliveries>,
}

impl Group {
    fn new(namespace: &str, index: usize, late: bool, cfg: &Config) -> Arc<Group> {
        Arc::new(Group {
            id: format!("{namespace}:group-{index}"),
            late,
            has_leaver: index == 0 && !late && cfg.leave_after > 0,
            state: Mutex::new(Deliveries::new(
                cfg.messages as usize,
                cfg.keys as usize,
                cfg.members,
                cfg.partitions,
            )),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Deliveries> {
        self.state.lock().expect("group state lock")
    }
}

/// Deliveries and partition assignments of one group, fed by its members.
#[derive(Debug)]
struct Deliveries {
    partitions: i32,
    /// Deliveries per message id.
    counts: Vec<u32>,
    /// Highest sequence number delivered so far, per key.
    max_seq: Vec<i64>,
    deliveries: u64,
    distinct: u64,
    duplicates: u64,
    order_violations: u64,
    latencies: Vec<Duration>,
    last_new: Option<Instant>,
    last_delivery: Option<Instant>,
    /// Partitions each member holds now (`None`: not joined yet, or gone).
    assignments: Vec<Option<BTreeSet<i32>>>,
    /// Partition counts per member the first time the group was stable.
    stable: Option<Vec<usize>>,
    max_owners: usize,
    /// The member that left and when.
    left: Option<(usize, Instant)>,
    /// When the survivors held every partition again, and how many each.
    rebalanced: Option<(Instant, Vec<usize>)>,
}

/// One message as decoded from its payload.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Payload {
    id: u64,
    key: u64,
    seq: u64,
    sent_us: u64,
}

impl Payload {
    fn parse(bytes: &[u8]) -> Option<Payload> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut it = text.split(' ').map(str::parse::<u64>);
        let p = Payload {
            id: it.next()?.ok()?,
            key: it.next()?.ok()?,
            seq: it.next()?.ok()?,
            sent_us: it.next()?.ok()?,
        };
        it.next().is_none().then_some(p)
    }
}

impl Deliveries {
    fn new(messages: usize, keys: usize, members: usize, partitions: i32) -> Self {
        Deliveries {
            partitions,
            counts: vec![0; messages],
            max_seq: vec![-1; keys],
            deliveries: 0,
            distinct: 0,
            duplicates: 0,
            order_violations: 0,
            latencies: Vec::new(),
            last_new: None,
            last_delivery: None,
            assignments: vec![None; members],
            stable: None,
            max_owners: 0,
            left: None,
            rebalanced: None,
        }
    }

    /// Records one delivery; `latency` is measured from the send.
    fn record(&mut self, msg: Payload, latency: Duration, now: Instant) {
        self.deliveries += 1;
        self.last_delivery = Some(now);
        let Some(count) = self.counts.get_mut(msg.id as usize) else {
            return;
        };
        *count += 1;
        if *count > 1 {
            self.duplicates += 1;
            return;
        }
        self.distinct += 1;
        self.last_new = Some(now);
        self.latencies.push(latency);
        if let Some(max) = self.max_seq.get_mut(msg.key as usize) {
            if (msg.seq as i64) < *max {
                self.order_violations += 1;
            } else {
                *max = msg.seq as i64;
            }
        }
    }

    /// A member's assignment changed (`None`: it left the group).
    fn assign(&mut self, member: usize, partitions: Option<BTreeSet<i32>>, now: Instant) {
        self.assignments[member] = partitions;
        let mut owners = vec![0usize; self.partitions as usize];
        for p in self.assignments.iter().flatten().flatten() {
            if let Some(n) = owners.get_mut(*p as usize) {
                *n += 1;
            }
        }
        self.max_owners = self
            .max_owners
            .max(owners.iter().copied().max().unwrap_or(0));
        if self.stable.is_none() && self.covered(None) {
            self.stable = Some(self.counts_per_member(None));
        }
        if let Some((leaver, _)) = self.left
            && self.rebalanced.is_none()
            && self.covered(Some(leaver))
        {
            self.rebalanced = Some((now, self.counts_per_member(Some(leaver))));
        }
    }

    /// Every member (but `except`) has joined and the partitions are split
    /// among them with each partition held exactly once.
    fn covered(&self, except: Option<usize>) -> bool {
        let mut held = BTreeSet::new();
        let mut total = 0;
        for (m, a) in self.assignments.iter().enumerate() {
            if Some(m) == except {
                continue;
            }
            let Some(a) = a else { return false };
            total += a.len();
            held.extend(a.iter().copied());
        }
        total == self.partitions as usize && held.len() == self.partitions as usize
    }

    fn counts_per_member(&self, except: Option<usize>) -> Vec<usize> {
        self.assignments
            .iter()
            .enumerate()
            .filter(|(m, _)| Some(*m) != except)
            .map(|(_, a)| a.as_ref().map_or(0, BTreeSet::len))
            .collect()
    }
}

/// The consumer context: reports assignments to the group, commits what was
/// processed before partitions are taken away (unless the member is leaving
/// the way a crashed process would).
struct MemberContext {
    group: Arc<Group>,
    member: usize,
    commit_on_revoke: bool,
    leaving: AtomicBool,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance
            && self.commit_on_revoke
            && !self.leaving.load(Ordering::SeqCst)
        {
            // Nothing stored since the last commit is not an error worth reporting.
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let now = Instant::now();
        let leaving = self.leaving.load(Ordering::SeqCst);
        let held = match rebalance {
            Rebalance::Assign(list) => {
                Some(list.elements().iter().map(|e| e.partition()).collect())
            }
            Rebalance::Revoke(_) if leaving => None,
            Rebalance::Revoke(_) => Some(BTreeSet::new()),
            Rebalance::Error(_) => return,
        };
        self.group.state().assign(self.member, held, now);
    }
}

struct Member {
    group: Arc<Group>,
    index: usize,
    consumer: StreamConsumer<MemberContext>,
}

fn start_members(
    bootstrap: &str,
    topic: &str,
    groups: &[Arc<Group>],
    cfg: &Config,
) -> Result<Vec<Member>, ExerciseError> {
    let mut members = Vec::new();
    for group in groups {
        for index in 0..cfg.members {
            let context = MemberContext {
                group: group.clone(),
                member: index,
                commit_on_revoke: cfg.commit,
                leaving: AtomicBool::new(false),
            };
            let consumer: StreamConsumer<MemberContext> =
                consumer_config(bootstrap, &group.id, &cfg.offset_reset, cfg.fetch_wait_ms)
                    .create_with_context(context)
                    .doing("creating a Kafka consumer")?;
            consumer
                .subscribe(&[topic])
                .doing("subscribing to the topic")?;
            members.push(Member {
                group: group.clone(),
                index,
                consumer,
            });
        }
    }
    Ok(members)
}

/// One member's consume loop, until `stop` or until it leaves.
async fn consume(
    member: Member,
    cfg: &Config,
    base: Instant,
    stop: &CancellationToken,
    ctx: &Ctx,
) -> Result<(), String> {
    let leaver = member.group.has_leaver && member.index == 0;
    let mut mine = 0u64;
    let mut errors = 0u64;
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            received = member.consumer.recv() => received,
        };
        let msg = match received {
            Ok(msg) => msg,
            Err(_) => {
                errors += 1;
                if errors > 1000 {
                    return Err(format!(
                        "member {} of {}: too many consumer errors",
                        member.index, member.group.id
                    ));
                }
                continue;
            }
        };
        let now = Instant::now();
        let Some(payload) = msg.payload().and_then(Payload::parse) else {
            continue;
        };
        let latency = now.saturating_duration_since(base + Duration::from_micros(payload.sent_us));
        member.group.state().record(payload, latency, now);
        // At least once: the offset is stored (and later committed) only
        // after the message was processed.
        let _ = member.consumer.store_offset_from_message(&msg);
        mine += 1;
        if cfg.commit && mine.is_multiple_of(cfg.commit_every) {
            let _ = member.consumer.commit_consumer_state(CommitMode::Async);
        }
        if leaver && mine == cfg.leave_after {
            member
                .consumer
                .context()
                .leaving
                .store(true, Ordering::SeqCst);
            member.group.state().left = Some((member.index, Instant::now()));
            ctx.mark("member-left");
            break;
        }
    }
    // Closing leaves the group (LeaveGroup) and blocks while librdkafka winds down.
    let Member { consumer, .. } = member;
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .map_err(|e| format!("closing a consumer: {e}"))
}

/// Waits until every group has all its members and every partition held once.
async fn wait_stable(
    groups: &[Arc<Group>],
    cfg: &Config,
    stop: &CancellationToken,
) -> Result<(), ExerciseError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if groups.iter().all(|g| g.state().stable.is_some()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            stop.cancel();
            let states: Vec<String> = groups
                .iter()
                .map(|g| format!("{:?}", g.state().assignments))
                .collect();
            return Err(ExerciseError(format!(
                "the consumer groups did not settle within 60 s ({} members, {} partitions): {}",
                cfg.members,
                cfg.partitions,
                states.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every group has every message, or nothing new arrived for `idle`.
async fn wait_drained<'a>(
    groups: impl Iterator<Item = &'a Arc<Group>> + Clone,
    sent: u64,
    since: Instant,
    cfg: &Config,
) {
    loop {
        let mut all = true;
        let mut last = since;
        for g in groups.clone() {
            let s = g.state();
            all &= s.distinct >= sent;
            if let Some(t) = s.last_delivery {
                last = last.max(t);
            }
        }
        if all || last.elapsed() > cfg.idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn observe(
    live: &[Arc<Group>],
    late: &[Arc<Group>],
    sent: u64,
    produce_start: Instant,
) -> Observations {
    let all: Vec<&Arc<Group>> = live.iter().chain(late).collect();
    let mut obs = Observations::new();
    let mut latencies = Vec::new();
    let (mut consumed, mut lost, mut dups, mut violations, mut max_owners) = (0, 0, 0, 0, 0);
    let mut per_group = Vec::new();
    let mut late_received = 0;
    for g in &all {
        let s = g.state();
        consumed += s.deliveries;
        lost += sent.saturating_sub(s.distinct);
        dups += s.duplicates;
        violations += s.order_violations;
        max_owners = max_owners.max(s.max_owners);
        per_group.push(s.distinct);
        if g.late {
            late_received += s.distinct;
        } else {
            latencies.extend(s.latencies.iter().copied());
        }
    }
    obs.insert("messages_sent".into(), Value::from(sent));
    obs.insert("consumed_total".into(), Value::from(consumed));
    obs.insert(
        "groups_complete".into(),
        Value::from(per_group.iter().filter(|&&n| n >= sent).count()),
    );
    obs.insert("per_group_received".into(), Value::from(per_group));
    obs.insert("late_received".into(), Value::from(late_received));
    obs.insert("lost".into(), Value::from(lost));
    obs.insert("duplicates".into(), Value::from(dups));
    obs.insert("order_violations_per_key".into(), Value::from(violations));
    obs.insert("max_owners_per_partition".into(), Value::from(max_owners));
    if let Some(first) = all.first() {
        let s = first.state();
        let stable = s.stable.clone().unwrap_or_default();
        obs.insert(
            "members_with_partitions".into(),
            Value::from(stable.iter().filter(|&&n| n > 0).count()),
        );
        obs.insert("per_member_partitions".into(), Value::from(stable));
        if let (Some((_, left_at)), Some((at, counts))) = (s.left, &s.rebalanced) {
            obs.insert(
                "rebalance_time_ms".into(),
                Value::from(at.saturating_duration_since(left_at).as_millis() as u64),
            );
            obs.insert(
                "partitions_after_rebalance".into(),
                Value::from(counts.clone()),
            );
        }
        if let Some(last) = s.last_new {
            let secs = last.saturating_duration_since(produce_start).as_secs_f64();
            if secs > 0.0 {
                obs.insert(
                    "msgs_per_s".into(),
                    Value::from((s.distinct as f64 / secs).round()),
                );
            }
        }
    }
    obs.insert(
        "latency_p50_ms".into(),
        Value::from(percentile_ms(&mut latencies, 50.0)),
    );
    obs.insert(
        "latency_p99_ms".into(),
        Value::from(percentile_ms(&mut latencies, 99.0)),
    );
    obs
}

// ---- Kafka helpers shared with the other Kafka exercises ----

/// A topic name from the scenario's namespace (Kafka allows `[A-Za-z0-9._-]`).
pub(super) fn topic_name(namespace: &str, what: &str) -> String {
    let ns: String = namespace
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{ns}-{what}")
}

/// Settings every client shares.
pub(super) fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("log_level", "3");
    c
}

/// A consumer in `group` with manual, at-least-once offset handling: offsets
/// are stored by the application after processing and committed explicitly.
///
/// `fetch_wait_ms` matters on tansu 0.6: it answers every Fetch only after
/// the full `fetch.wait.max.ms` (Apache Kafka answers as soon as
/// `fetch.min.bytes` are there), so it bounds the end-to-end latency.
pub(super) fn consumer_config(
    bootstrap: &str,
    group: &str,
    offset_reset: &str,
    fetch_wait_ms: i64,
) -> ClientConfig {
    let mut c = client_config(bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", offset_reset)
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "250")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string());
    c
}

/// A producer that waits for the broker's acknowledgement of every message.
pub(super) fn producer(bootstrap: &str) -> Result<FutureProducer, ExerciseError> {
    client_config(bootstrap)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000")
        .create()
        .doing("creating a Kafka producer")
}

/// Creates `topic` with the admin API and waits until its metadata shows every partition.
pub(super) async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<(), ExerciseError> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .doing("creating a Kafka admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .doing("creating the topic")?;
    for r in results {
        r.map_err(|(t, e)| ExerciseError(format!("creating topic {t}: {e}")))?;
    }
    let probe: BaseConsumer = client_config(bootstrap)
        .create()
        .doing("creating a Kafka metadata client")?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = probe
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len())
                })
                .unwrap_or(0);
            if seen == partitions as usize {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ExerciseError(format!(
                    "topic {topic} shows {seen} of {partitions} partitions after 20 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .doing("waiting for the topic")?
}

/// Deletes a topic; brokers that cannot are left to the container's removal.
pub(super) async fn delete_topic(bootstrap: &str, topic: &str) -> Result<(), ExerciseError> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .doing("creating a Kafka admin client")?;
    let results = admin
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .doing("deleting the topic")?;
    for r in results {
        r.map_err(|(t, e)| ExerciseError(format!("deleting topic {t}: {e}")))?;
    }
    Ok(())
}

/// One message to produce.
pub(super) struct Outgoing {
    pub key: Option<String>,
    pub partition: Option<i32>,
    pub payload: String,
}

/// Produces `n` messages made by `make(i)` at `rate` per second (0: as fast
/// as possible) and waits for the broker to acknowledge all of them.
pub(super) async fn produce(
    producer: &FutureProducer,
    topic: &str,
    n: u64,
    rate: u64,
    mut make: impl FnMut(u64) -> Outgoing,
) -> Result<(), ExerciseError> {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(n as usize);
    for i in 0..n {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let out = make(i);
        let mut record = FutureRecord::to(topic).payload(&out.payload);
        if let Some(key) = &out.key {
            record = record.key(key);
        }
        if let Some(p) = out.partition {
            record = record.partition(p);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(ExerciseError(format!("producing message {i}: {e}"))),
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .doing("waiting for a delivery report")?
            .map_err(|(e, _)| ExerciseError(format!("the broker refused a message: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, key: u64, seq: u64) -> Payload {
        Payload {
            id,
            key,
            seq,
            sent_us: 0,
        }
    }

    fn set(p: &[i32]) -> Option<BTreeSet<i32>> {
        Some(p.iter().copied().collect())
    }

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        assert_eq!(
            Payload::parse(b"7 3 2 1500"),
            Some(msg(7, 3, 2)).map(|p| Payload { sent_us: 1500, ..p })
        );
        assert_eq!(Payload::parse(b"7 3 2"), None);
        assert_eq!(Payload::parse(b"7 3 2 1 9"), None);
        assert_eq!(Payload::parse(b"seven 3 2 1"), None);
        assert_eq!(Payload::parse(&[0xff, 0x20]), None);
    }

    #[test]
    fn duplicates_and_per_key_order_are_counted_from_deliveries() {
        let now = Instant::now();
        let mut d = Deliveries::new(6, 2, 1, 1);
        // key 0: seq 0, 1, 2 are ids 0, 2, 4; key 1: seq 0, 1, 2 are ids 1, 3, 5.
        for (id, key, seq) in [
            (0, 0, 0),
            (2, 0, 1),
            (1, 1, 0),
            (2, 0, 1),
            (5, 1, 2),
            (3, 1, 1),
        ] {
            d.record(msg(id, key, seq), Duration::from_millis(1), now);
        }
        assert_eq!(d.deliveries, 6);
        assert_eq!(d.distinct, 5);
        assert_eq!(d.duplicates, 1, "id 2 came twice");
        assert_eq!(d.order_violations, 1, "key 1 seq 1 came after seq 2");
        assert_eq!(d.latencies.len(), 5, "latency of first deliveries only");
        // An id outside the range (another run's message) counts as a delivery only.
        d.record(msg(99, 0, 9), Duration::ZERO, now);
        assert_eq!((d.deliveries, d.distinct), (7, 5));
    }

    #[test]
    fn the_group_is_stable_once_every_member_holds_a_disjoint_share() {
        let now = Instant::now();
        let mut d = Deliveries::new(0, 1, 3, 6);
        d.assign(0, set(&[0, 1, 2, 3, 4, 5]), now);
        assert!(d.stable.is_none(), "two members have not joined");
        d.assign(0, set(&[]), now);
        d.assign(1, set(&[2, 3]), now);
        d.assign(2, set(&[4, 5]), now);
        assert!(d.stable.is_none(), "partitions 0 and 1 are held by nobody");
        d.assign(0, set(&[0, 1]), now);
        assert_eq!(d.stable, Some(vec![2, 2, 2]));
        assert_eq!(d.max_owners, 1);
    }

    #[test]
    fn the_rebalance_ends_when_the_survivors_hold_every_partition() {
        let t0 = Instant::now();
        let mut d = Deliveries::new(0, 1, 3, 6);
        for (m, p) in [(0, [0, 1]), (1, [2, 3]), (2, [4, 5])] {
            d.assign(m, set(&p), t0);
        }
        d.left = Some((0, t0));
        d.assign(0, None, t0);
        d.assign(1, set(&[]), t0);
        d.assign(1, set(&[3, 4, 5]), t0);
        assert!(d.rebalanced.is_none(), "member 2 still holds its old share");
        assert_eq!(d.max_owners, 2, "partition 4 is held twice for a moment");
        d.assign(2, set(&[]), t0);
        let t1 = t0 + Duration::from_millis(30);
        d.assign(2, set(&[0, 1, 2]), t1);
        assert_eq!(d.rebalanced, Some((t1, vec![3, 3])));
    }

    #[test]
    fn topic_names_keep_only_characters_kafka_allows() {
        assert_eq!(
            topic_name("infralab:1a2b:one group", "events"),
            "infralab-1a2b-one-group-events"
        );
    }

    #[test]
    fn defaults_are_valid_parameters() {
        for p in KafkaGroups.params() {
            p.check(&p.default).unwrap();
        }
    }
}
