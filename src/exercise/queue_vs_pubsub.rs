//! `queue-vs-pubsub`: one producer, K consumers, M messages, three ways.
//!
//! - `work-queue`: one RabbitMQ queue that all K consumers read (competing
//!   consumers, manual acks, `basic.qos` prefetch). Each message goes to one
//!   consumer; with prefetch 1 a consumer gets the next message only after
//!   acknowledging the last, so the work spreads evenly.
//! - `fanout`: a RabbitMQ fanout exchange with one queue per consumer, bound
//!   when the consumer subscribes. Each consumer gets every message.
//! - `redis-pubsub`: Redis `PUBLISH`/`SUBSCRIBE`. Each subscriber connected at
//!   publish time gets every message; nothing is kept for anyone else.
//!
//! Every payload carries its id and send time, so what each consumer actually
//! received (ids, duplicates, gaps) and how long delivery took is measured on
//! the messages themselves. The K consumers connect and subscribe
//! concurrently and handle nothing before all of them are subscribed (the
//! `consumers-subscribed` milestone), so the order in which they happened to
//! subscribe on a busy machine cannot decide who gets the backlog. Consumers
//! stop once the deliveries a correct broker makes have arrived and nothing
//! more came for `idle_ms` (or after `4 × idle_ms` of silence, for what never
//! arrives).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Acker, BasicProperties, Channel, Connection, ExchangeKind, PublisherConfirm};
use redis::AsyncCommands;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::amqp;
use crate::stats::{join_workers, pacer, percentile_ms, round2, spread};

/// The `queue-vs-pubsub` exercise.
pub struct QueueVsPubsub;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    WorkQueue,
    Fanout,
    RedisPubsub,
}

impl Mode {
    fn parse(s: &str) -> Mode {
        match s {
            "fanout" => Mode::Fanout,
            "redis-pubsub" => Mode::RedisPubsub,
            _ => Mode::WorkQueue,
        }
    }

    /// Whether every subscriber is meant to get every message.
    fn broadcast(self) -> bool {
        self != Mode::WorkQueue
    }
}

#[async_trait]
impl Exercise for QueueVsPubsub {
    fn name(&self) -> &'static str {
        "queue-vs-pubsub"
    }

    fn summary(&self) -> &'static str {
        "one producer, K consumers: a RabbitMQ work queue, a fanout exchange, or Redis pub/sub"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["rabbitmq", "redis"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "mode",
                &["work-queue", "fanout", "redis-pubsub"],
                "work-queue",
                "how messages reach the consumers",
            ),
            ParamSpec::int(
                "consumers",
                1,
                64,
                4,
                "consumers (K), each on its own connection",
            ),
            ParamSpec::int("messages", 1, 100_000, 400, "messages published (M)"),
            ParamSpec::int(
                "rate",
                0,
                1_000_000,
                0,
                "publish rate in messages per second; 0 = as fast as the broker takes them",
            ),
            ParamSpec::int(
                "work_ms",
                0,
                1000,
                2,
                "work per message in a consumer, before it acknowledges",
            ),
            ParamSpec::int(
                "prefetch",
                0,
                10_000,
                1,
                "RabbitMQ consumer prefetch (basic.qos); 0 = unlimited",
            ),
            ParamSpec::flag(
                "late_subscriber",
                false,
                "one more subscriber joins after half of the messages were published",
            ),
            ParamSpec::flag(
                "publish_before_subscribe",
                false,
                "publish everything first, then let the K consumers subscribe",
            ),
            ParamSpec::choice(
                "subscribe",
                &["together", "staggered"],
                "together",
                "together: the K consumers subscribe at once and start working when all are \
                 subscribed; staggered (with a backlog in a work queue): consumer 1 subscribes, \
                 the others once the broker has started handing it the backlog",
            ),
            ParamSpec::int(
                "idle_ms",
                50,
                60_000,
                500,
                "consumers stop after this long without a delivery once every expected delivery \
                 arrived (after four times as long when some never arrive)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "published",
                    "messages the broker took from the producer (RabbitMQ: confirmed; Redis: PUBLISH answered)",
                ),
                ObsSpec::number(
                    "delivered_total",
                    "deliveries to all subscribers together (the late subscriber's included)",
                ),
                ObsSpec::list(
                    "per_consumer",
                    "deliveries to each of the K consumers, in subscription order",
                ),
                ObsSpec::number(
                    "min_per_consumer",
                    "fewest deliveries any of the K consumers got",
                ),
                ObsSpec::number(
                    "max_per_consumer",
                    "most deliveries any of the K consumers got",
                ),
                ObsSpec::number(
                    "duplicates",
                    "deliveries of a message id the same receiver (work queue: anyone) had already got",
                ),
                ObsSpec::number(
                    "missing",
                    "message ids never received (work queue: by anyone; broadcast: summed over the K consumers)",
                ),
                ObsSpec::number(
                    "fairness",
                    "max/min deliveries per consumer; absent when a consumer got none (see min_per_consumer)",
                ),
                ObsSpec::number(
                    "late_subscriber_received",
                    "deliveries to the late subscriber (only with late_subscriber: true)",
                ),
                ObsSpec::number(
                    "published_after_late_join",
                    "messages the broker took after the late subscriber was subscribed (only with late_subscriber: true)",
                ),
                ObsSpec::number(
                    "msgs_per_s",
                    "deliveries per second, from the first publish to the last delivery",
                ),
                ObsSpec::number(
                    "latency_p50_ms",
                    "median time from publish to delivery (send time stamped in the payload; \
                      includes waiting behind earlier messages)",
                ),
                ObsSpec::number(
                    "latency_p99_ms",
                    "99th percentile time from publish to delivery",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("consumers-subscribed", "every consumer is subscribed"),
                Milestone::new("publishing", "the publisher starts"),
                Milestone::new(
                    "late-subscriber-joined",
                    "the late subscriber is subscribed",
                ),
                Milestone::new("published", "every message is published"),
                Milestone::new(
                    "backlog-handed-out",
                    "subscribe: staggered: the broker started handing the backlog to the first consumer",
                ),
                Milestone::new("consumers-stopped", "every consumer has stopped"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let mode = Mode::parse(ctx.text("mode"));
        let cfg = Config {
            mode,
            consumers: ctx.int("consumers") as usize,
            messages: ctx.int("messages") as u32,
            rate: ctx.int("rate") as u32,
            work: Duration::from_millis(ctx.int("work_ms") as u64),
            late_subscriber: ctx.flag("late_subscriber"),
            publish_first: ctx.flag("publish_before_subscribe"),
            staggered: ctx.text("subscribe") == "staggered",
            idle: Duration::from_millis(ctx.int("idle_ms") as u64),
            origin: Instant::now(),
        };
        let mut broker = Broker::setup(ctx, mode, ctx.int("prefetch")).await?;
        let result = drive(ctx, &cfg, &mut broker).await;
        broker.cleanup().await;
        result
    }
}

struct Config {
    mode: Mode,
    consumers: usize,
    messages: u32,
    /// Messages per second, 0 = unpaced.
    rate: u32,
    work: Duration,
    late_subscriber: bool,
    publish_first: bool,
    /// With a backlog in a work queue: the others subscribe only once the
    /// broker has started handing the backlog to the first.
    staggered: bool,
    idle: Duration,
    /// Send and receive times are measured from here.
    origin: Instant,
}

/// What one subscriber received.
#[derive(Default)]
struct Tally {
    ids: Vec<u32>,
    latencies: Vec<Duration>,
}

/// When the last delivery arrived and when anything last happened (µs since origin).
#[derive(Default)]
struct Activity {
    last_delivery_us: AtomicU64,
    last_event_us: AtomicU64,
    /// Deliveries to all consumers so far.
    delivered: AtomicU64,
}

impl Activity {
    fn event(&self, origin: Instant) {
        self.last_event_us
            .fetch_max(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn delivery(&self, origin: Instant) {
        let now = origin.elapsed().as_micros() as u64;
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        self.last_event_us.fetch_max(now, Ordering::Relaxed);
    }
}

/// The producer's side of the broker, and what the exercise declared on it.
// A few values per scenario, never stored in bulk: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Broker {
    Amqp {
        uri: AMQPUri,
        namespace: String,
        mode: Mode,
        prefetch: i64,
        conn: Connection,
        ch: Channel,
        /// Queue (work queue) or exchange (fanout) the producer publishes to.
        target: String,
        pending: Vec<PublisherConfirm>,
    },
    Redis {
        client: redis::Client,
        conn: redis::aio::MultiplexedConnection,
        channel: String,
        /// PUBLISH commands Redis answered since the last flush.
        taken: u32,
    },
}

/// A subscriber whose connection is open; subscribing is a separate step so
/// the moment it joins can be chosen.
// A few values per scenario, never stored in bulk: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Amqp { conn: Connection, ch: Channel },
    Redis(redis::aio::PubSub),
}

/// A subscribed consumer's message source.
// A few values per scenario, never stored in bulk: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Source {
    Amqp {
        conn: Connection,
        ch: Channel,
        consumer: lapin::Consumer,
        /// Its own queue (fanout), deleted when it stops.
        own_queue: Option<String>,
    },
    Redis(redis::aio::PubSub),
}

impl Broker {
    async fn setup(ctx: &Ctx, mode: Mode, prefetch: i64) -> Result<Broker, ExerciseError> {
        let ns = &ctx.namespace;
        if mode == Mode::RedisPubsub {
            let endpoint = ctx.service("redis")?;
            let client = redis::Client::open(endpoint.url.as_str()).doing("redis url")?;
            // The default answer timeout (under a second) is shorter than a
            // stall of a busy machine; a PUBLISH that waits is not a failure.
            let patient = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(30)));
            let conn = client
                .get_multiplexed_async_connection_with_config(&patient)
                .await
                .doing("connecting the producer to redis")?;
            return Ok(Broker::Redis {
                client,
                conn,
                channel: format!("{ns}:pubsub"),
                taken: 0,
            });
        }
        let uri = amqp::parse_uri(&ctx.service("rabbitmq")?.url)?;
        let conn = amqp::connect(&uri, &format!("{ns} producer")).await?;
        let ch = amqp::confirming_channel(&conn).await?;
        let target = if mode == Mode::WorkQueue {
            let queue = format!("{ns}:work-queue");
            amqp::declare_shared_queue(&ch, &queue).await?;
            queue
        } else {
            let exchange = format!("{ns}:fanout");
            ch.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .doing("declaring the fanout exchange")?;
            exchange
        };
        Ok(Broker::Amqp {
            uri,
            namespace: ns.clone(),
            mode,
            prefetch,
            conn,
            ch,
            target,
            pending: Vec::new(),
        })
    }

    /// Opens subscriber `i`'s connection.
    async fn open(&self, i: usize) -> Result<Opened, ExerciseError> {
        match self {
            Broker::Amqp {
                uri,
                namespace,
                prefetch,
                ..
            } => {
                let conn = amqp::connect(uri, &format!("{namespace} consumer {i}")).await?;
                let ch = conn
                    .create_channel()
                    .await
                    .doing("opening a consumer channel")?;
                amqp::prefetch(&ch, *prefetch).await?;
                Ok(Opened::Amqp { conn, ch })
            }
            Broker::Redis { client, .. } => Ok(Opened::Redis(
                client
                    .get_async_pubsub()
                    .await
                    .doing("connecting a subscriber to redis")?,
            )),
        }
    }

    /// Subscribes an opened subscriber; returns once the broker confirmed it.
    async fn subscribe(&self, opened: Opened, i: usize) -> Result<Source, ExerciseError> {
        match (self, opened) {
            (Broker::Amqp { mode, target, .. }, Opened::Amqp { conn, ch }) => {
                let (queue, own_queue) = if *mode == Mode::Fanout {
                    let queue = format!("{target}:sub-{i}");
                    ch.queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .doing("declaring a subscriber queue")?;
                    ch.queue_bind(
                        queue.as_str().into(),
                        target.as_str().into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .doing("binding a subscriber queue to the exchange")?;
                    (queue.clone(), Some(queue))
                } else {
                    (target.clone(), None)
                };
                let consumer = ch
                    .basic_consume(
                        queue.as_str().into(),
                        format!("sub-{i}").as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .doing("starting a consumer (basic.consume)")?;
                Ok(Source::Amqp {
                    conn,
                    ch,
                    consumer,
                    own_queue,
                })
            }
            (Broker::Redis { channel, .. }, Opened::Redis(mut pubsub)) => {
                pubsub
                    .subscribe(channel)
                    .await
                    .doing("subscribing to the redis channel")?;
                Ok(Source::Redis(pubsub))
            }
            _ => Err(ExerciseError("subscriber of the wrong broker".into())),
        }
    }

    async fn publish(&mut self, id: u32, origin: Instant) -> Result<(), ExerciseError> {
        let data = amqp::payload(id, origin);
        match self {
            Broker::Amqp {
                mode,
                ch,
                target,
                pending,
                ..
            } => {
                let (exchange, key) = if *mode == Mode::WorkQueue {
                    ("", target.as_str())
                } else {
                    (target.as_str(), "")
                };
                let confirm = ch
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions::default(),
                        &data,
                        BasicProperties::default(),
                    )
                    .await
                    .doing("publishing")?;
                pending.push(confirm);
            }
            Broker::Redis {
                conn,
                channel,
                taken,
                ..
            } => {
                let _receivers: i64 = conn
                    .publish(channel.as_str(), data)
                    .await
                    .doing("publishing")?;
                *taken += 1;
            }
        }
        Ok(())
    }

    /// Waits until the broker has answered every message published since the
    /// last flush; returns how many it took (RabbitMQ: confirmed with an ack;
    /// Redis: PUBLISH answered).
    async fn flush(&mut self) -> Result<u32, ExerciseError> {
        match self {
            Broker::Amqp { pending, .. } => {
                let mut acked = 0;
                for confirm in pending.drain(..) {
                    let c = confirm.await.doing("waiting for a publisher confirm")?;
                    acked += u32::from(c.is_ack());
                }
                Ok(acked)
            }
            Broker::Redis { taken, .. } => Ok(std::mem::take(taken)),
        }
    }

    /// Returns once the broker has started handing the work queue's backlog
    /// out (fewer than `backlog` messages ready), at most after 10 s.
    async fn handing_out(&self, backlog: u32) -> Result<(), ExerciseError> {
        if let Broker::Amqp { ch, target, .. } = self {
            let until = Instant::now() + Duration::from_secs(10);
            while amqp::queue_state(ch, target).await?.ready >= backlog && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Deletes what the exercise declared (best effort) and closes the producer.
    async fn cleanup(self) {
        if let Broker::Amqp {
            mode,
            conn,
            ch,
            target,
            ..
        } = self
        {
            if mode == Mode::WorkQueue {
                let _ = ch
                    .queue_delete(target.as_str().into(), QueueDeleteOptions::default())
                    .await;
            } else {
                let _ = ch
                    .exchange_delete(target.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "OK".into()).await;
        }
    }
}

impl Source {
    /// The next message and, for AMQP, its acker.
    async fn next(&mut self) -> Option<Result<(Vec<u8>, Option<Acker>), ExerciseError>> {
        match self {
            Source::Amqp { consumer, .. } => consumer.next().await.map(|d| {
                d.map(|d| (d.data, Some(d.acker)))
                    .doing("receiving from rabbitmq")
            }),
            Source::Redis(pubsub) => pubsub
                .on_message()
                .next()
                .await
                .map(|m| Ok((m.get_payload_bytes().to_vec(), None))),
        }
    }

    async fn close(self) {
        if let Source::Amqp {
            conn,
            ch,
            own_queue,
            ..
        } = self
        {
            if let Some(q) = own_queue {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "OK".into()).await;
        }
    }
}

/// A consumer: receive, note id and latency, work, acknowledge; until told to
/// stop. It handles nothing before `start` (every consumer subscribed), so
/// which consumer subscribed first cannot decide how the work is shared: with
/// a prefetch window each holds at most that many until then.
async fn consume(
    mut source: Source,
    origin: Instant,
    work: Duration,
    activity: Arc<Activity>,
    mut start: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<Tally, ExerciseError> {
    let mut tally = Tally::default();
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = start.wait_for(|s| *s) => {}
    }
    loop {
        let item = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            item = source.next() => item,
        };
        let Some(item) = item else { break };
        let (data, acker) = item?;
        activity.delivery(origin);
        let (id, latency) = amqp::read_payload(&data, origin)?;
        tally.ids.push(id);
        tally.latencies.push(latency);
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        if let Some(acker) = acker {
            acker
                .ack(BasicAckOptions::default())
                .await
                .doing("acknowledging")?;
        }
        activity.event(origin);
    }
    source.close().await;
    Ok(tally)
}

type Consumer = JoinHandle<Result<Tally, ExerciseError>>;

/// Starts consumer tasks; they wait for `start` and end on `stop`.
struct Spawner {
    origin: Instant,
    work: Duration,
    activity: Arc<Activity>,
    start: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl Spawner {
    fn spawn(&self, source: Source) -> Consumer {
        tokio::spawn(consume(
            source,
            self.origin,
            self.work,
            self.activity.clone(),
            self.start.subscribe(),
            self.stop.subscribe(),
        ))
    }
}

/// What the producer got the broker to take.
struct Publishing {
    /// Messages the broker took (confirmed by RabbitMQ, accepted by Redis).
    published: u32,
    /// Of those, the ones published after the late subscriber joined.
    after_late_join: Option<u32>,
    /// The late subscriber, if any.
    late: Option<Consumer>,
    /// When the first message was sent.
    first_publish: Duration,
}

async fn drive(
    ctx: &Ctx,
    cfg: &Config,
    broker: &mut Broker,
) -> Result<Observations, ExerciseError> {
    let origin = cfg.origin;
    let spawner = Spawner {
        origin,
        work: cfg.work,
        activity: Arc::new(Activity::default()),
        start: watch::channel(false).0,
        stop: watch::channel(false).0,
    };

    let opened = open_all(broker, cfg.consumers).await?;
    let mut consumers = Vec::new();
    let mut opened = Some(opened);
    if !cfg.publish_first {
        consumers = subscribe_all(ctx, broker, &spawner, opened.take(), 0).await?;
    }
    let publishing = publish_stream(ctx, cfg, broker, &spawner).await?;
    if cfg.publish_first {
        let mut opened = opened.take().unwrap_or_default();
        if cfg.staggered && cfg.mode == Mode::WorkQueue && !opened.is_empty() {
            let rest = opened.split_off(1);
            let first = broker.subscribe(opened.remove(0), 0).await?;
            consumers.push(spawner.spawn(first));
            broker.handing_out(publishing.published).await?;
            ctx.mark("backlog-handed-out");
            let rest = subscribe_all(ctx, broker, &spawner, Some(rest), 1).await?;
            consumers.extend(rest);
        } else {
            consumers = subscribe_all(ctx, broker, &spawner, Some(opened), 0).await?;
        }
    }

    let expected = expected_deliveries(cfg, &publishing);
    wait_until_quiet(cfg, &spawner.activity, expected).await;
    let _ = spawner.stop.send(true);
    let tallies = join_workers(consumers).await?;
    let late = match publishing.late {
        Some(c) => join_workers(vec![c]).await?.pop(),
        None => None,
    };
    ctx.mark("consumers-stopped");

    let last_delivery =
        Duration::from_micros(spawner.activity.last_delivery_us.load(Ordering::Relaxed));
    let window = last_delivery.saturating_sub(publishing.first_publish);
    let received = Received {
        published: publishing.published,
        after_late_join: publishing.after_late_join,
        tallies: &tallies,
        late: late.as_ref(),
        window,
    };
    Ok(observe(cfg, &received))
}

/// Opens every consumer's connection at once.
async fn open_all(broker: &Broker, consumers: usize) -> Result<Vec<Opened>, ExerciseError> {
    join_all((0..consumers).map(|i| broker.open(i)))
        .await
        .into_iter()
        .collect()
}

/// Subscribes every opened consumer at once, records `consumers-subscribed`
/// once the broker confirmed all of them, and lets them start.
async fn subscribe_all(
    ctx: &Ctx,
    broker: &Broker,
    spawner: &Spawner,
    opened: Option<Vec<Opened>>,
    first_index: usize,
) -> Result<Vec<Consumer>, ExerciseError> {
    let opened = opened.unwrap_or_default();
    let sources: Vec<Source> = join_all(
        opened
            .into_iter()
            .enumerate()
            .map(|(i, o)| broker.subscribe(o, first_index + i)),
    )
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    let consumers = sources.into_iter().map(|s| spawner.spawn(s)).collect();
    ctx.mark("consumers-subscribed");
    let _ = spawner.start.send(true);
    spawner.activity.event(spawner.origin);
    Ok(consumers)
}

/// Publishes the M messages (paced when `rate` is set); the late subscriber
/// joins halfway, after everything before it reached the broker.
async fn publish_stream(
    ctx: &Ctx,
    cfg: &Config,
    broker: &mut Broker,
    spawner: &Spawner,
) -> Result<Publishing, ExerciseError> {
    let origin = cfg.origin;
    let late_at = cfg.late_subscriber.then_some(cfg.messages / 2);
    let mut late = None;
    let mut taken = 0;
    let mut taken_before_join = None;
    let mut pace = (cfg.rate > 0).then(|| pacer(f64::from(cfg.rate)));
    ctx.mark("publishing");
    let first_publish = origin.elapsed();
    for id in 0..cfg.messages {
        if late_at == Some(id) {
            // Everything before this point has reached the broker before the
            // late subscriber exists.
            taken += broker.flush().await?;
            let o = broker.open(cfg.consumers).await?;
            late = Some(spawner.spawn(broker.subscribe(o, cfg.consumers).await?));
            taken_before_join = Some(taken);
            ctx.mark("late-subscriber-joined");
        }
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        broker.publish(id, origin).await?;
    }
    taken += broker.flush().await?;
    ctx.mark("published");
    spawner.activity.event(origin);
    Ok(Publishing {
        published: taken,
        after_late_join: taken_before_join.map(|before| taken - before),
        late,
        first_publish,
    })
}

/// Deliveries a correct broker makes for this mode: the stop rule waits for
/// them (and then `idle` more, to catch duplicates), never a verdict.
fn expected_deliveries(cfg: &Config, p: &Publishing) -> u64 {
    let published = u64::from(p.published);
    if cfg.mode.broadcast() {
        published * cfg.consumers as u64 + u64::from(p.after_late_join.unwrap_or(0))
    } else {
        published
    }
}

/// Returns once every expected delivery arrived and nothing happened for
/// `idle`, or nothing happened for four times `idle` (what never comes).
async fn wait_until_quiet(cfg: &Config, activity: &Activity, expected: u64) {
    let tick = (cfg.idle / 5).min(Duration::from_millis(20));
    let give_up = cfg.idle * 4;
    loop {
        tokio::time::sleep(tick).await;
        let last = Duration::from_micros(activity.last_event_us.load(Ordering::Relaxed));
        let quiet = cfg.origin.elapsed().saturating_sub(last);
        let all_in = activity.delivered.load(Ordering::Relaxed) >= expected;
        if (all_in && quiet >= cfg.idle) || quiet >= give_up {
            return;
        }
    }
}

/// What the producer published and the consumers received.
struct Received<'a> {
    published: u32,
    after_late_join: Option<u32>,
    tallies: &'a [Tally],
    late: Option<&'a Tally>,
    /// First publish to last delivery.
    window: Duration,
}

/// Turns what the consumers received into observations.
fn observe(cfg: &Config, r: &Received) -> Observations {
    let m = cfg.messages as usize;
    let per_consumer: Vec<u64> = r.tallies.iter().map(|t| t.ids.len() as u64).collect();
    let late_n = r.late.map_or(0, |t| t.ids.len());
    let delivered_total = per_consumer.iter().sum::<u64>() as usize + late_n;

    let (duplicates, missing) = if cfg.mode.broadcast() {
        // Each consumer should have every message exactly once.
        r.tallies.iter().fold((0, 0), |(dups, miss), t| {
            let unique = unique_in_range(&t.ids, cfg.messages);
            (dups + t.ids.len() - unique, miss + m - unique)
        })
    } else {
        // All consumers together should have every message exactly once.
        let all: Vec<u32> = r
            .tallies
            .iter()
            .chain(r.late)
            .flat_map(|t| t.ids.iter().copied())
            .collect();
        let unique = unique_in_range(&all, cfg.messages);
        (all.len() - unique, m - unique)
    };

    let min = per_consumer.iter().copied().min();
    let max = per_consumer.iter().copied().max();
    let msgs_per_s =
        (!r.window.is_zero()).then(|| round2(delivered_total as f64 / r.window.as_secs_f64()));
    let mut latencies: Vec<Duration> = r
        .tallies
        .iter()
        .chain(r.late)
        .flat_map(|t| t.latencies.iter().copied())
        .collect();

    let mut obs = Observations::from([
        ("published".into(), Value::from(r.published)),
        ("delivered_total".into(), Value::from(delivered_total)),
        ("per_consumer".into(), Value::from(per_consumer.clone())),
        ("min_per_consumer".into(), Value::from(min)),
        ("max_per_consumer".into(), Value::from(max)),
        ("duplicates".into(), Value::from(duplicates)),
        ("missing".into(), Value::from(missing)),
        ("fairness".into(), Value::from(spread(&per_consumer))),
        ("msgs_per_s".into(), Value::from(msgs_per_s)),
        (
            "latency_p50_ms".into(),
            Value::from(percentile_ms(&mut latencies, 50.0)),
        ),
        (
            "latency_p99_ms".into(),
            Value::from(percentile_ms(&mut latencies, 99.0)),
        ),
    ]);
    if cfg.late_subscriber {
        obs.insert("late_subscriber_received".into(), Value::from(late_n));
        obs.insert(
            "published_after_late_join".into(),
            Value::from(r.after_late_join),
        );
    }
    obs
}

fn unique_in_range(ids: &[u32], messages: u32) -> usize {
    ids.iter()
        .filter(|&&id| id < messages)
        .collect::<HashSet<_>>()
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: Mode, messages: u32, late_subscriber: bool) -> Config {
        Config {
            mode,
            consumers: 2,
            messages,
            rate: 0,
            work: Duration::ZERO,
            late_subscriber,
            publish_first: false,
            staggered: false,
            idle: Duration::from_millis(100),
            origin: Instant::now(),
        }
    }

    fn tally(ids: &[u32]) -> Tally {
        Tally {
            ids: ids.to_vec(),
            latencies: ids
                .iter()
                .map(|&i| Duration::from_millis(i as u64))
                .collect(),
        }
    }

    fn received<'a>(published: u32, tallies: &'a [Tally], late: Option<&'a Tally>) -> Received<'a> {
        Received {
            published,
            after_late_join: late.map(|t| t.ids.len() as u32),
            tallies,
            late,
            window: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_work_queue_counts_each_message_once_across_consumers() {
        let c = cfg(Mode::WorkQueue, 6, false);
        let t = [tally(&[0, 2, 4]), tally(&[1, 3, 3])];
        let obs = observe(&c, &received(6, &t, None));
        assert_eq!(obs["delivered_total"], 6);
        assert_eq!(obs["duplicates"], 1);
        assert_eq!(obs["missing"], 1); // 5 never arrived
        assert_eq!(obs["per_consumer"], serde_json::json!([3, 3]));
        assert_eq!(obs["fairness"], 1.0);
        assert_eq!(obs["msgs_per_s"], 6.0);
        assert!(!obs.contains_key("late_subscriber_received"));
    }

    #[test]
    fn broadcast_counts_gaps_per_consumer_and_leaves_the_late_subscriber_out() {
        let c = cfg(Mode::RedisPubsub, 4, true);
        let t = [tally(&[0, 1, 2, 3]), tally(&[0, 1, 3])];
        let late = tally(&[2, 3]);
        let obs = observe(&c, &received(4, &t, Some(&late)));
        assert_eq!(obs["delivered_total"], 9);
        assert_eq!(obs["missing"], 1);
        assert_eq!(obs["duplicates"], 0);
        assert_eq!(obs["late_subscriber_received"], 2);
        assert_eq!(obs["published_after_late_join"], 2);
        assert_eq!(obs["fairness"], 1.33);
        assert_eq!(obs["min_per_consumer"], 3);
    }

    #[test]
    fn a_starved_consumer_leaves_fairness_absent_and_min_zero() {
        let c = cfg(Mode::WorkQueue, 5, false);
        let t = [tally(&[0, 1, 2, 3, 4]), tally(&[])];
        let mut r = received(5, &t, None);
        r.window = Duration::ZERO;
        let obs = observe(&c, &r);
        assert_eq!(obs["fairness"], Value::Null);
        assert_eq!(obs["min_per_consumer"], 0);
        assert_eq!(obs["max_per_consumer"], 5);
        assert_eq!(obs["msgs_per_s"], Value::Null);
    }

    #[test]
    fn the_stop_rule_expects_one_copy_per_subscriber() {
        let p = |after_late_join| Publishing {
            published: 10,
            after_late_join,
            late: None,
            first_publish: Duration::ZERO,
        };
        assert_eq!(
            expected_deliveries(&cfg(Mode::WorkQueue, 10, false), &p(None)),
            10
        );
        assert_eq!(
            expected_deliveries(&cfg(Mode::Fanout, 10, true), &p(Some(5))),
            25
        );
    }
}
