//! `kafka-groups`: a partitioned Kafka topic read by consumer groups.
//!
//! One topic with `partitions` partitions (created with the admin API) gets
//! `messages` messages spread over `keys` keys. Each of `groups` consumer
//! groups has `members` consumers that join before anything is produced;
//! `late_groups` more groups join only after everything was produced (a replay
//! from `offset_reset`). Every delivery is recorded per group: which message,
//! which member, at which partition and offset, how long after it was sent.
//!
//! Optional trouble: one member of the first group leaves after consuming
//! `leave_after` messages. With `leave: crash` it goes without committing its
//! latest progress (a crash, as far as offsets go); with `leave: commit` it
//! commits synchronously first (a clean shutdown). The group rebalances and
//! the survivors take its partitions over from the last committed offsets
//! (`commit: periodic`), or from `offset_reset` when nothing was committed
//! (`commit: none`).
//!
//! The end of the run is an event, not a quiet period: once everything is
//! produced and every group holds all its partitions, an end marker is
//! written to every partition (again every [`END_MARKER_EVERY`], for a
//! consumer that starts at `latest` after the first round), and the run ends
//! when every group saw the marker of every partition: a group that saw it
//! has read everything it will ever read there.
//!
//! Everything counted here is counted from what the broker delivered:
//! duplicates are second deliveries of a message within a group, lost
//! messages are sent messages a group never received, an order violation is a
//! message delivered for the first time after a later message of its key.
//! Duplicates after a member left are split by cause: redeliveries of what the
//! leaver processed at or above the committed offset it left behind (at-least-once doing
//! its job), and the rest (on tansu, two members briefly holding one
//! partition during the rebalance).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::kafka::{self, Outgoing};
use crate::stats::percentile_ms;

/// How long the groups may take to settle, and to read up to the end
/// markers: generous, so a busy machine gives a verdict, not a timeout.
const SETTLE_DEADLINE: Duration = Duration::from_secs(90);
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

/// How often the end markers are written again until every group saw them.
const END_MARKER_EVERY: Duration = Duration::from_millis(500);

/// The payload of an end marker (messages carry four numbers).
const END_MARKER: &str = "end";

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
                "`periodic`: commit (asynchronously) every `commit_every` messages and (synchronously) on revocation; `none`: never",
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
                "the first group's first member leaves after processing this many messages (0: nobody leaves)",
            ),
            ParamSpec::choice(
                "leave",
                &["crash", "commit"],
                "crash",
                "how the member leaves: `crash`: without committing its progress since the last periodic commit; `commit`: after a synchronous commit of everything it processed",
            ),
            ParamSpec::int(
                "fetch_wait_ms",
                1,
                10_000,
                10,
                "consumer fetch.wait.max.ms: how long the broker may hold a fetch (tansu holds every fetch this long)",
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
                    "leaver_uncommitted",
                    "messages the leaving member processed at or above the committed offsets the broker reported as it left, per partition, summed (only when a member left)",
                ),
                ObsSpec::number(
                    "duplicates_uncommitted",
                    "redeliveries, to another member, of messages the leaver processed above its last commit (only when a member left)",
                ),
                ObsSpec::number(
                    "duplicates_other",
                    "every other duplicate in the leaver's group: e.g. a partition held by two members at once during the rebalance (only when a member left)",
                ),
                ObsSpec::number(
                    "rebalance_time_ms",
                    "from the member's leaving to the survivors holding every partition (only when a member left)",
                ),
                ObsSpec::list(
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
                Milestone::new(
                    "drained",
                    "every group has read every partition to its end marker",
                ),
                Milestone::new("consumers-closed", "every consumer has left"),
                Milestone::new("member-left", "the leaving member has left its group"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let run = Run {
            ctx,
            cfg: Config::from_ctx(ctx),
            bootstrap: ctx.service("kafka")?.url.clone(),
            topic: kafka::topic_name(&ctx.namespace, "events"),
            base: Instant::now(),
            stop: CancellationToken::new(),
        };
        kafka::create_topic(&run.bootstrap, &run.topic, run.cfg.partitions).await?;
        ctx.mark("topic-created");

        let live: Vec<Arc<Group>> = (0..run.cfg.groups)
            .map(|g| Group::new(&ctx.namespace, g, false, &run.cfg))
            .collect();
        let late: Vec<Arc<Group>> = (0..run.cfg.late_groups)
            .map(|g| Group::new(&ctx.namespace, run.cfg.groups + g, true, &run.cfg))
            .collect();
        let live_members = run.start_members(&live)?;
        let live_run = join_all(live_members.into_iter().map(|m| run.consume(m)));
        // Whatever goes wrong in the driver, the members must stop too.
        let driver = async {
            let driven = run.drive(&live, &late).await;
            run.stop.cancel();
            driven
        };
        let (live_errors, driven) = tokio::join!(live_run, driver);
        let (sent, produce_start, late_errors) = driven?;
        let errors: Vec<String> = live_errors
            .into_iter()
            .chain(late_errors)
            .filter_map(Result::err)
            .collect();
        if !errors.is_empty() {
            return Err(ExerciseError(errors.join("; ")));
        }
        ctx.mark("consumers-closed");
        let _ = kafka::delete_topic(&run.bootstrap, &run.topic).await;
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
    leave_commits: bool,
    fetch_wait_ms: i64,
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
            leave_commits: ctx.text("leave") == "commit",
            fetch_wait_ms: ctx.int("fetch_wait_ms"),
        }
    }
}

/// One run of the exercise: what every step needs.
struct Run<'a> {
    ctx: &'a Ctx,
    cfg: Config,
    bootstrap: String,
    topic: String,
    /// Send times in payloads are measured from here.
    base: Instant,
    /// Stops every member's consume loop.
    stop: CancellationToken,
}

/// What a member task returns: an error message, if any.
type MemberResult = Result<(), String>;

impl Run<'_> {
    /// The script: settle, produce, bring the late groups in, then read up
    /// to the end markers.
    async fn drive(
        &self,
        live: &[Arc<Group>],
        late: &[Arc<Group>],
    ) -> Result<(u64, Instant, Vec<MemberResult>), ExerciseError> {
        wait_stable(live, &self.cfg).await?;
        if !live.is_empty() {
            self.ctx.mark("groups-stable");
        }
        // One message per record batch: see `unbatched_producer` on tansu's `latest`.
        let producer = kafka::unbatched_producer(&self.bootstrap)?;
        let produce_start = Instant::now();
        self.ctx.mark("producing");
        let sent = self.produce_messages(&producer).await?;
        self.ctx.mark("produced");

        if !late.is_empty() {
            self.wait_log_end(sent).await?;
        }
        let late_members = self.start_members(late)?;
        let late_run = join_all(late_members.into_iter().map(|m| self.consume(m)));
        let waiter = async {
            let waited = async {
                wait_stable(late, &self.cfg).await?;
                if !late.is_empty() {
                    self.ctx.mark("late-groups-stable");
                }
                self.drain(&producer, live.iter().chain(late)).await?;
                self.ctx.mark("drained");
                Ok::<_, ExerciseError>(())
            }
            .await;
            self.stop.cancel();
            waited
        };
        let (late_errors, waited) = tokio::join!(late_run, waiter);
        waited?;
        Ok((sent, produce_start, late_errors))
    }

    /// Produces the messages: message i has key `i mod keys` and that key's
    /// sequence number `i div keys`; round-robin ignores the key and puts a
    /// key's messages on partition after partition.
    async fn produce_messages(&self, producer: &FutureProducer) -> Result<u64, ExerciseError> {
        let Config {
            keys,
            partitions,
            round_robin,
            ..
        } = self.cfg;
        kafka::produce(
            producer,
            &self.topic,
            self.cfg.messages,
            self.cfg.rate,
            |i| {
                let (key, seq) = (i % keys, i / keys);
                let sent_us = self.base.elapsed().as_micros() as u64;
                Outgoing {
                    key: (!round_robin).then(|| format!("key-{key}")),
                    partition: round_robin.then_some((seq % partitions as u64) as i32),
                    payload: format!("{i} {key} {seq} {sent_us}"),
                }
            },
        )
        .await
    }

    /// Waits until the broker's log end (ListOffsets) covers every
    /// acknowledged message, so that a late group starting at `latest`
    /// starts after all of them. A check more than a wait: with one message
    /// per record batch tansu answers right away (with batches it answers
    /// the last batch's base offset + 1, see `kafka::unbatched_producer`).
    async fn wait_log_end(&self, sent: u64) -> Result<(), ExerciseError> {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let (bootstrap, topic, partitions) = (
                self.bootstrap.clone(),
                self.topic.clone(),
                self.cfg.partitions,
            );
            let size = tokio::task::spawn_blocking(move || {
                kafka::log_size(&bootstrap, &topic, partitions)
            })
            .await
            .doing("asking for the log end")??;
            if size >= sent as i64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ExerciseError(format!(
                    "the broker's log shows {size} of {sent} acknowledged messages after {} s",
                    SETTLE_DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes an end marker to every partition, again and again, until every
    /// group read every partition to its marker (after the rebalance, if a
    /// member left).
    async fn drain<'g>(
        &self,
        producer: &FutureProducer,
        groups: impl Iterator<Item = &'g Arc<Group>> + Clone,
    ) -> Result<(), ExerciseError> {
        let deadline = Instant::now() + DRAIN_DEADLINE;
        let partitions = self.cfg.partitions;
        loop {
            kafka::produce(producer, &self.topic, partitions as u64, 0, |p| Outgoing {
                key: None,
                partition: Some(p as i32),
                payload: END_MARKER.into(),
            })
            .await?;
            let round = Instant::now() + END_MARKER_EVERY;
            while Instant::now() < round {
                if groups.clone().all(|g| g.state().drained(g.leaver())) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = groups
                    .clone()
                    .map(|g| format!("{}: {:?}", g.id, g.state().ends_seen))
                    .collect();
                return Err(ExerciseError(format!(
                    "the groups did not read up to the end markers within {} s (markers seen per group: {})",
                    DRAIN_DEADLINE.as_secs(),
                    seen.join(", ")
                )));
            }
        }
    }

    /// Creates and subscribes every member of `groups`.
    fn start_members(&self, groups: &[Arc<Group>]) -> Result<Vec<Member>, ExerciseError> {
        let cfg = &self.cfg;
        let mut members = Vec::new();
        for group in groups {
            for index in 0..cfg.members {
                let context = MemberContext {
                    group: group.clone(),
                    member: index,
                    commit_on_revoke: cfg.commit,
                    leaving: AtomicBool::new(false),
                };
                let consumer: StreamConsumer<MemberContext> = kafka::consumer_config(
                    &self.bootstrap,
                    &group.id,
                    &cfg.offset_reset,
                    cfg.fetch_wait_ms,
                )
                .create_with_context(context)
                .doing("creating a Kafka consumer")?;
                consumer
                    .subscribe(&[&self.topic])
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
    async fn consume(&self, member: Member) -> MemberResult {
        let cfg = &self.cfg;
        let leaver = member.group.leaver() == Some(member.index);
        let mut mine = 0u64;
        let mut errors = 0u64;
        let mut processed = Processed::default();
        loop {
            let received = tokio::select! {
                _ = self.stop.cancelled() => break,
                received = member.consumer.recv() => received,
            };
            let Ok(msg) = received else {
                errors += 1;
                if errors > 1000 {
                    return Err(format!(
                        "member {} of {}: too many consumer errors",
                        member.index, member.group.id
                    ));
                }
                continue;
            };
            let now = Instant::now();
            let payload = msg.payload().unwrap_or_default();
            if payload == END_MARKER.as_bytes() {
                member.group.state().end_seen(leaver, msg.partition());
                continue;
            }
            let Some(payload) = Payload::parse(payload) else {
                continue;
            };
            let latency =
                now.saturating_duration_since(self.base + Duration::from_micros(payload.sent_us));
            let at = (msg.partition(), msg.offset());
            member
                .group
                .state()
                .record(member.index, at, payload, latency, now);
            // At least once: the offset is stored (and later committed) only
            // after the message was processed.
            let _ = member.consumer.store_offset_from_message(&msg);
            processed.record(msg.topic(), at);
            mine += 1;
            if cfg.commit && mine.is_multiple_of(cfg.commit_every) {
                processed.commit(&member.consumer);
            }
            if leaver && mine == cfg.leave_after {
                // The message holds a reference into librdkafka: closing
                // the consumer while it lives would wait for it forever.
                drop(msg);
                return self.leave(member).await;
            }
        }
        kafka::close(member.consumer)
            .await
            .map_err(|e| e.to_string())
    }

    /// The leaver goes: with `leave: commit` after a synchronous commit of
    /// everything it processed, else as a crash would, leaving its progress
    /// since the last periodic commit uncommitted.
    async fn leave(&self, member: Member) -> MemberResult {
        let Member {
            group,
            index,
            consumer,
        } = member;
        consumer.context().leaving.store(true, Ordering::SeqCst);
        let commit_first = self.cfg.leave_commits;
        let (consumer, committed) = tokio::task::spawn_blocking(move || {
            let committed = last_commits(&consumer, commit_first);
            (consumer, committed)
        })
        .await
        .map_err(|e| format!("leaving: {e}"))?;
        let committed = committed.map_err(|e| format!("the leaving member: {e}"))?;
        {
            let mut state = group.state();
            for (partition, next) in committed {
                state.committed(index, partition, next);
            }
            state.left = Some((index, Instant::now()));
        }
        self.ctx.mark("member-left");
        kafka::close(consumer).await.map_err(|e| e.to_string())
    }
}

/// What one member processed: per partition, the next offset to read.
#[derive(Default)]
struct Processed {
    topic: String,
    next: BTreeMap<i32, i64>,
}

impl Processed {
    fn record(&mut self, topic: &str, (partition, offset): At) {
        if self.topic.is_empty() {
            self.topic = topic.to_string();
        }
        self.next.insert(partition, offset + 1);
    }

    /// An asynchronous commit of exactly what was processed so far, on the
    /// partitions still assigned. Committing "the stored offsets" instead
    /// would commit whatever is stored when librdkafka's thread gets to the
    /// request: on a busy machine that is later, and so more, than the
    /// periodic commit meant (a crash would then leave nothing uncommitted).
    fn commit<C: ConsumerContext>(&self, consumer: &StreamConsumer<C>) {
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in &self.next {
            if assigned.find_partition(&self.topic, partition).is_some() {
                let _ = offsets.add_partition_offset(&self.topic, partition, Offset::Offset(next));
            }
        }
        if offsets.count() > 0 {
            let _ = consumer.commit(&offsets, CommitMode::Async);
        }
    }
}

/// The leaver's last step before it goes: optionally a synchronous commit
/// of everything it processed, then the offsets the broker holds as
/// committed for its partitions (OffsetFetch, which the broker answers after
/// any commit this consumer sent before it): per partition, the next offset
/// its successor will read. Blocking.
fn last_commits(
    consumer: &StreamConsumer<MemberContext>,
    commit_first: bool,
) -> Result<Vec<(i32, i64)>, String> {
    if commit_first {
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .map_err(|e| format!("committing before leaving: {e}"))?;
    }
    let committed = consumer
        .committed(Duration::from_secs(10))
        .map_err(|e| format!("reading its committed offsets: {e}"))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(next) => Some((e.partition(), next)),
            _ => None,
        })
        .collect())
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

    /// The member that leaves, if this group has one.
    fn leaver(&self) -> Option<usize> {
        self.has_leaver.then_some(0)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Deliveries> {
        self.state.lock().expect("group state lock")
    }
}

/// Where a message sits: (partition, offset).
type At = (i32, i64);

/// Deliveries, commits and partition assignments of one group, fed by its members.
#[derive(Debug)]
struct Deliveries {
    partitions: i32,
    /// Deliveries per message id.
    counts: Vec<u32>,
    /// The first delivery of each message id: which member, where.
    first: Vec<Option<(usize, At)>>,
    /// Every repeated delivery: which member got which message id again.
    repeats: Vec<(usize, u64)>,
    /// Highest sequence number delivered so far, per key.
    max_seq: Vec<i64>,
    deliveries: u64,
    distinct: u64,
    order_violations: u64,
    latencies: Vec<Duration>,
    last_new: Option<Instant>,
    /// Per member, per partition: the committed offset (the next offset to
    /// read) the broker reported to the leaving member as it left.
    committed: Vec<BTreeMap<i32, i64>>,
    /// Partitions whose end marker some member saw (since the rebalance,
    /// if a member left).
    ends_seen: BTreeSet<i32>,
    /// Partitions whose end marker the member that is to leave saw.
    leaver_ends: BTreeSet<i32>,
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

/// Duplicates in the leaver's group, split by cause.
#[derive(Debug, PartialEq)]
struct DuplicateCauses {
    /// Messages the leaver processed above its last commit.
    leaver_uncommitted: u64,
    /// Redeliveries of those to another member.
    uncommitted: u64,
    /// Every other duplicate.
    other: u64,
}

impl Deliveries {
    fn new(messages: usize, keys: usize, members: usize, partitions: i32) -> Self {
        Deliveries {
            partitions,
            counts: vec![0; messages],
            first: vec![None; messages],
            repeats: Vec::new(),
            max_seq: vec![-1; keys],
            deliveries: 0,
            distinct: 0,
            order_violations: 0,
            latencies: Vec::new(),
            last_new: None,
            committed: vec![BTreeMap::new(); members],
            ends_seen: BTreeSet::new(),
            leaver_ends: BTreeSet::new(),
            assignments: vec![None; members],
            stable: None,
            max_owners: 0,
            left: None,
            rebalanced: None,
        }
    }

    /// Records one delivery to `member` of the message at `at`; `latency` is
    /// measured from the send.
    fn record(&mut self, member: usize, at: At, msg: Payload, latency: Duration, now: Instant) {
        self.deliveries += 1;
        let id = msg.id as usize;
        let Some(count) = self.counts.get_mut(id) else {
            return;
        };
        *count += 1;
        if *count > 1 {
            self.repeats.push((member, msg.id));
            return;
        }
        self.first[id] = Some((member, at));
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

    fn duplicates(&self) -> u64 {
        self.repeats.len() as u64
    }

    /// The broker holds `offset` as committed on `partition`, reported to `member`.
    fn committed(&mut self, member: usize, partition: i32, offset: i64) {
        let c = self.committed[member].entry(partition).or_insert(offset);
        *c = (*c).max(offset);
    }

    /// Whether the message at `at`, first processed by `member`, lies at or
    /// above the committed offset on its partition (everything does when
    /// nothing was committed there).
    fn uncommitted_by(&self, member: usize, (partition, offset): At) -> bool {
        self.committed[member]
            .get(&partition)
            .is_none_or(|&next| offset >= next)
    }

    /// Splits the duplicates of a group a member left: redeliveries of what
    /// the leaver processed above its last commit, and the rest.
    fn duplicate_causes(&self) -> Option<DuplicateCauses> {
        let (leaver, _) = self.left?;
        let leavers_uncommitted = |id: u64| {
            self.first[id as usize]
                .is_some_and(|(m, at)| m == leaver && self.uncommitted_by(leaver, at))
        };
        let leaver_uncommitted = (0..self.first.len() as u64)
            .filter(|&id| leavers_uncommitted(id))
            .count() as u64;
        let uncommitted = self
            .repeats
            .iter()
            .filter(|&&(m, id)| m != leaver && leavers_uncommitted(id))
            .count() as u64;
        Some(DuplicateCauses {
            leaver_uncommitted,
            uncommitted,
            other: self.duplicates() - uncommitted,
        })
    }

    /// A member saw the end marker of `partition`.
    fn end_seen(&mut self, by_leaver: bool, partition: i32) {
        self.ends_seen.insert(partition);
        if by_leaver {
            self.leaver_ends.insert(partition);
        }
    }

    /// Whether the group has read everything it will ever read: every
    /// partition up to its end marker, and if a member is to leave, after
    /// the survivors took its partitions over (or once the member read its
    /// partitions to the end without reaching `leave_after`: it never leaves).
    fn drained(&self, leaver: Option<usize>) -> bool {
        let all = self.ends_seen.len() == self.partitions as usize;
        match (leaver, self.left) {
            (None, _) => all,
            (Some(_), Some(_)) => all && self.rebalanced.is_some(),
            (Some(l), None) => {
                all && self.assignments[l]
                    .as_ref()
                    .is_some_and(|a| a.is_subset(&self.leaver_ends))
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
            // The new owners read the leaver's partitions again: the end
            // counts from here on (the markers keep coming).
            self.ends_seen.clear();
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

/// The consumer context: reports assignments to the group, commits what was processed before partitions are taken away
/// (unless the member is leaving the way a crashed process would).
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

/// Waits until every group has all its members and every partition held once.
async fn wait_stable(groups: &[Arc<Group>], cfg: &Config) -> Result<(), ExerciseError> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        if groups.iter().all(|g| g.state().stable.is_some()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let states: Vec<String> = groups
                .iter()
                .map(|g| format!("{:?}", g.state().assignments))
                .collect();
            return Err(ExerciseError(format!(
                "the consumer groups did not settle within {} s ({} members, {} partitions): {}",
                SETTLE_DEADLINE.as_secs(),
                cfg.members,
                cfg.partitions,
                states.join(", ")
            )));
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
        dups += s.duplicates();
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
        observe_first_group(&first.state(), produce_start, &mut obs);
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

/// What only the first group shows: its shares, the rebalance after a
/// member left and the causes of its duplicates, its throughput.
fn observe_first_group(s: &Deliveries, produce_start: Instant, obs: &mut Observations) {
    if let Some(stable) = &s.stable {
        obs.insert(
            "members_with_partitions".into(),
            Value::from(stable.iter().filter(|&&n| n > 0).count()),
        );
        obs.insert("per_member_partitions".into(), Value::from(stable.clone()));
    }
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
    if let Some(causes) = s.duplicate_causes() {
        obs.insert(
            "leaver_uncommitted".into(),
            Value::from(causes.leaver_uncommitted),
        );
        obs.insert(
            "duplicates_uncommitted".into(),
            Value::from(causes.uncommitted),
        );
        obs.insert("duplicates_other".into(), Value::from(causes.other));
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
        assert_eq!(Payload::parse(END_MARKER.as_bytes()), None);
        assert_eq!(Payload::parse(&[0xff, 0x20]), None);
    }

    #[test]
    fn duplicates_and_per_key_order_are_counted_from_deliveries() {
        let now = Instant::now();
        let mut d = Deliveries::new(6, 2, 1, 1);
        // key 0: seq 0, 1, 2 are ids 0, 2, 4; key 1: seq 0, 1, 2 are ids 1, 3, 5.
        for (offset, (id, key, seq)) in [
            (0, 0, 0),
            (2, 0, 1),
            (1, 1, 0),
            (2, 0, 1),
            (5, 1, 2),
            (3, 1, 1),
        ]
        .into_iter()
        .enumerate()
        {
            d.record(
                0,
                (0, offset as i64),
                msg(id, key, seq),
                Duration::from_millis(1),
                now,
            );
        }
        assert_eq!(d.deliveries, 6);
        assert_eq!(d.distinct, 5);
        assert_eq!(d.duplicates(), 1, "id 2 came twice");
        assert_eq!(d.order_violations, 1, "key 1 seq 1 came after seq 2");
        assert_eq!(d.latencies.len(), 5, "latency of first deliveries only");
        // An id outside the range (another run's message) counts as a delivery only.
        d.record(0, (0, 9), msg(99, 0, 9), Duration::ZERO, now);
        assert_eq!((d.deliveries, d.distinct), (7, 5));
        assert_eq!(d.duplicate_causes(), None, "nobody left");
    }

    #[test]
    fn duplicates_are_split_at_the_leavers_last_commit() {
        let now = Instant::now();
        // Two members, two partitions; ids 0..5 on partition 0 (offsets 0..5)
        // read by member 0, ids 5..8 on partition 1 read by member 1.
        let mut d = Deliveries::new(8, 1, 2, 2);
        for id in 0..5 {
            d.record(0, (0, id as i64), msg(id, 0, id), Duration::ZERO, now);
        }
        for id in 5..8 {
            d.record(1, (1, id as i64 - 5), msg(id, 0, id), Duration::ZERO, now);
        }
        // Member 0 committed offset 3 (ids 0, 1, 2 done), an older commit too.
        d.committed(0, 0, 3);
        d.committed(0, 0, 1);
        d.left = Some((0, now));
        // Member 1 takes partition 0 over from offset 3: ids 3 and 4 again.
        d.record(1, (0, 3), msg(3, 0, 3), Duration::ZERO, now);
        d.record(1, (0, 4), msg(4, 0, 4), Duration::ZERO, now);
        // Id 6 delivered twice by another cause (say a double owner).
        d.record(0, (1, 1), msg(6, 0, 6), Duration::ZERO, now);
        assert_eq!(
            d.duplicate_causes(),
            Some(DuplicateCauses {
                leaver_uncommitted: 2,
                uncommitted: 2,
                other: 1
            })
        );
        // Had it committed everything (next offset 5), nothing is uncommitted.
        d.committed(0, 0, 5);
        assert_eq!(
            d.duplicate_causes(),
            Some(DuplicateCauses {
                leaver_uncommitted: 0,
                uncommitted: 0,
                other: 3
            })
        );
    }

    #[test]
    fn a_leaver_that_never_committed_has_everything_uncommitted() {
        let now = Instant::now();
        let mut d = Deliveries::new(3, 1, 2, 1);
        for id in 0..3 {
            d.record(0, (0, id as i64), msg(id, 0, id), Duration::ZERO, now);
        }
        d.left = Some((0, now));
        d.record(1, (0, 0), msg(0, 0, 0), Duration::ZERO, now);
        let causes = d.duplicate_causes().unwrap();
        assert_eq!((causes.leaver_uncommitted, causes.uncommitted), (3, 1));
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
    fn a_group_is_drained_at_the_end_markers_after_its_rebalance() {
        let now = Instant::now();
        let mut d = Deliveries::new(0, 1, 2, 2);
        d.assign(0, set(&[0]), now);
        d.assign(1, set(&[1]), now);
        d.end_seen(false, 1);
        d.end_seen(false, 0);
        assert!(d.drained(None));
        assert!(!d.drained(Some(0)), "member 0 is to leave and has not");
        d.end_seen(true, 0);
        assert!(
            d.drained(Some(0)),
            "it read its partition to the end: it never leaves"
        );
        // It leaves after all: the end counts again once member 1 holds both.
        d.left = Some((0, now));
        d.assign(0, None, now);
        assert!(!d.drained(Some(0)));
        d.assign(1, set(&[0, 1]), now);
        assert!(d.rebalanced.is_some());
        assert!(
            !d.drained(Some(0)),
            "the new owner has not read to the end yet"
        );
        d.end_seen(false, 0);
        d.end_seen(false, 1);
        assert!(d.drained(Some(0)));
    }

    #[test]
    fn defaults_are_valid_parameters() {
        for p in KafkaGroups.params() {
            p.check(&p.default).unwrap();
        }
    }
}
