//! `event-pipeline`: orders flow producer → Kafka → a consumer that charges
//! them in PostgreSQL.
//!
//! A producer publishes `orders` orders (keyed by customer) at `rate` per
//! second while one consumer service reads them in batches of `batch`. Each
//! batch has two effects in two systems: the charges are written to the
//! database in one transaction, and the batch's offsets are committed to
//! Kafka. `commit` says which comes first, and that decides the guarantee:
//!
//! - `after-write` (at least once): a crash between the write and the commit
//!   leaves the batch uncommitted, so the next incarnation gets it again;
//! - `before-write` (at most once): a crash between the commit and the write
//!   leaves the batch committed but never written, so nobody gets it again.
//!
//! With `crashes: N`, the first N consumer incarnations "crash" between the
//! two steps of their `crash_at_batch`-th batch: the consumer is dropped and
//! a new one joins the same group, resuming from the committed offsets. What
//! a redelivery does to the database depends on the consumer:
//!
//! - `naive`: appends a charge row per message and adds to the customer's
//!   balance, so a redelivered order is charged twice.
//! - `idempotent`: the charge row's primary key is the order id and the
//!   balance is raised only by rows that were really inserted
//!   (`INSERT … ON CONFLICT (order_id) DO NOTHING RETURNING …`, one
//!   statement, one transaction), so a redelivered order changes nothing.
//!
//! The run ends on an event: after the last order, an end marker goes to
//! every partition, and the consumer stops once one incarnation has read
//! every partition up to its marker (a quiet period would race the ~3 s
//! group join of a restarted consumer on tansu).
//!
//! Every number comes from the database and the clients: rows and totals are
//! read back with SQL, redeliveries are orders the consumer applied again,
//! the orders in flight at a crash are those of the interrupted batches.

mod challenge;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::kafka::{self, Outgoing};
use crate::stats::percentile_ms;

/// How long after the last order the consumer may take to read everything:
/// generous, so a busy machine gives a verdict, not a timeout.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

/// How long the first consumer may take to join its group.
const JOIN_DEADLINE: Duration = Duration::from_secs(90);

/// The payload of an end marker (orders carry four numbers).
const END_MARKER: &str = "end";

/// The `event-pipeline` exercise.
pub struct EventPipeline;

#[async_trait]
impl Exercise for EventPipeline {
    fn name(&self) -> &'static str {
        "event-pipeline"
    }

    fn summary(&self) -> &'static str {
        "orders flow through Kafka into PostgreSQL; where the offset commit sits decides what a consumer crash does"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["kafka", "postgres"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("orders", 1, 1_000_000, 600, "orders produced"),
            ParamSpec::int("partitions", 1, 64, 3, "partitions of the orders topic"),
            ParamSpec::int(
                "customers",
                1,
                100_000,
                20,
                "customers (the message key: one customer's orders stay in order)",
            ),
            ParamSpec::int(
                "rate",
                0,
                1_000_000,
                2000,
                "orders per second produced (0: as fast as possible)",
            ),
            ParamSpec::int(
                "batch",
                1,
                100_000,
                50,
                "orders the consumer applies in one transaction and commits together",
            ),
            ParamSpec::int(
                "batch_wait_ms",
                1,
                60_000,
                50,
                "longest wait for a batch to fill before applying what arrived",
            ),
            ParamSpec::choice(
                "consumer",
                &["naive", "idempotent"],
                "idempotent",
                "`naive`: every delivery is charged; `idempotent`: ON CONFLICT on the order id",
            ),
            ParamSpec::choice(
                "commit",
                &["after-write", "before-write"],
                "after-write",
                "where the offset commit sits: after the DB write (at least once) or before it (at most once)",
            ),
            ParamSpec::int(
                "crashes",
                0,
                100,
                0,
                "consumer incarnations that crash between the two steps of a batch (DB write and offset commit, in the order `commit` says)",
            ),
            ParamSpec::int(
                "crash_at_batch",
                1,
                100_000,
                2,
                "which batch of an incarnation the crash interrupts",
            ),
            ParamSpec::int(
                "fetch_wait_ms",
                1,
                10_000,
                10,
                "consumer fetch.wait.max.ms (tansu holds every fetch this long)",
            ),
            ParamSpec::int(
                "work_ms",
                0,
                10_000,
                40,
                "challenge: how long charging one order takes (the payment provider), before its row is written",
            ),
            ParamSpec::int(
                "session_timeout_ms",
                1000,
                300_000,
                6000,
                "challenge: the session.timeout.ms the program sets: how long a killed consumer keeps its partitions",
            ),
            ParamSpec::int(
                "stall_ms",
                1000,
                600_000,
                30_000,
                "challenge: this long without a new charge or commit, while orders remain, is no progress (the harness stops the program)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("orders_sent", "orders the broker acknowledged"),
                ObsSpec::number("rows", "charge rows in the database"),
                ObsSpec::number(
                    "duplicates_applied",
                    "charge rows beyond one per order (orders charged more than once)",
                ),
                ObsSpec::number("missing", "orders sent that have no charge row"),
                ObsSpec::number(
                    "redelivered",
                    "deliveries of an order the consumer had already applied (Kafka-side duplicates)",
                ),
                ObsSpec::number(
                    "in_flight_at_crash",
                    "orders in the batches a crash interrupted between their DB write and their offset commit",
                ),
                ObsSpec::number(
                    "charged_total",
                    "sum of all customer balances in the database (cents)",
                ),
                ObsSpec::number(
                    "expected_total",
                    "sum of the amounts of the orders the broker acknowledged (cents)",
                ),
                ObsSpec::number("overcharge", "charged_total − expected_total (cents)"),
                ObsSpec::flag(
                    "exact",
                    "one row per order and charged_total == expected_total",
                ),
                ObsSpec::number(
                    "crashed",
                    "consumer incarnations that crashed between the two steps of a batch",
                ),
                ObsSpec::number(
                    "batches",
                    "batches applied to the database, redelivered ones included",
                ),
                ObsSpec::number(
                    "msgs_per_s",
                    "orders applied per second, from the first send to the last new order applied",
                ),
                ObsSpec::number(
                    "end_to_end_p50_ms",
                    "median time from an order's send to the commit of its first application",
                ),
                ObsSpec::number("end_to_end_p99_ms", "99th percentile of the same"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("ready", "topic, tables and consumer are ready"),
                Milestone::new(
                    "consumer-assigned",
                    "the first consumer holds its partitions: production starts",
                ),
                Milestone::new("producing", "orders are being produced"),
                Milestone::new("produced", "every order is acknowledged"),
                Milestone::new("consumer-stopped", "the consumer has stopped"),
                Milestone::new(
                    "consumer-crashed",
                    "the consumer crashed between the two steps of a batch",
                ),
                Milestone::new("consumer-restarted", "a new consumer took over"),
                Milestone::by_instance(
                    "charged-10",
                    "challenge: half of work_ms after the 10th order has its charge row (the consumer is in the next order's work); `solution-at-mark` is the instance the row names",
                ),
                Milestone::by_instance("charged-30", "challenge: the same after the 30th"),
                Milestone::by_instance("charged-50", "challenge: the same after the 50th"),
                Milestone::by_instance("charged-70", "challenge: the same after the 70th"),
                Milestone::by_instance("charged-90", "challenge: the same after the 90th"),
            ]
        }
    }

    fn harness_env(&self) -> &'static [(&'static str, &'static str)] {
        &[
            (
                "ORDERS_TOPIC",
                "the topic the orders are in (JSON: order, customer, amount)",
            ),
            ("KAFKA_GROUP", "the consumer group to read it with"),
            (
                "CHARGES_TABLE",
                "the table of charges: (order_id, customer, amount, instance); your own tables start with this name",
            ),
        ]
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        if let Some(solution) = ctx.solution() {
            return challenge::run(ctx, solution).await;
        }
        let bootstrap = ctx.service("kafka")?.url.clone();
        let cfg = Config::from_ctx(ctx);
        let topic = kafka::topic_name(&ctx.namespace, "orders");
        let tables = Tables::new(&ctx.namespace);
        let (db, connection) =
            tokio_postgres::connect(&ctx.service("postgres")?.url, tokio_postgres::NoTls)
                .await
                .doing("connecting to postgres")?;
        let connection = tokio::spawn(connection);
        db.batch_execute(&tables.create(cfg.idempotent))
            .await
            .doing("creating the tables")?;
        kafka::create_topic(&bootstrap, &topic, cfg.partitions).await?;
        ctx.mark("ready");

        let base = Instant::now();
        let produced = OnceLock::new();
        let assigned = Notify::new();
        let service = Service {
            ctx,
            cfg: &cfg,
            bootstrap: &bootstrap,
            topic: &topic,
            group: format!("{}:charger", ctx.namespace),
            db: &db,
            tables: &tables,
            base,
            produced: &produced,
            assigned: &assigned,
        };
        let producing = async {
            wait_assigned(&assigned).await?;
            ctx.mark("consumer-assigned");
            produce_orders(ctx, &cfg, &bootstrap, &topic, base, &produced).await
        };
        let (sent, stats) = tokio::join!(producing, service.run());
        let (sent, stats) = (sent?, stats?);
        ctx.mark("consumer-stopped");

        let totals = tables.totals(&db).await?;
        db.batch_execute(&tables.drop())
            .await
            .doing("dropping the tables")?;
        drop(db);
        let _ = connection.await;
        let _ = kafka::delete_topic(&bootstrap, &topic).await;
        let (sent, started) = sent;
        Ok(observe(sent, &totals, stats, started))
    }
}

/// Waits until the consumer holds its partitions, so that the end-to-end
/// latency measures the pipeline, not the consumer's first group join
/// (seconds on tansu).
async fn wait_assigned(assigned: &Notify) -> Result<(), ExerciseError> {
    tokio::time::timeout(JOIN_DEADLINE, assigned.notified())
        .await
        .map_err(|_| {
            ExerciseError(format!(
                "the consumer got no partitions within {} s",
                JOIN_DEADLINE.as_secs()
            ))
        })
}

/// Produces the orders, keyed by customer, then an end marker per partition.
/// Returns how many orders the broker acknowledged, and when production started.
async fn produce_orders(
    ctx: &Ctx,
    cfg: &Config,
    bootstrap: &str,
    topic: &str,
    base: Instant,
    produced: &OnceLock<Instant>,
) -> Result<(u64, Instant), ExerciseError> {
    let producer = kafka::producer(bootstrap)?;
    let started = Instant::now();
    ctx.mark("producing");
    let customers = cfg.customers;
    let sent = kafka::produce(&producer, topic, cfg.orders, cfg.rate, |id| {
        let customer = id % customers;
        Outgoing {
            key: Some(format!("customer-{customer}")),
            partition: None,
            payload: format!(
                "{id} {customer} {} {}",
                amount(id),
                base.elapsed().as_micros()
            ),
        }
    })
    .await?;
    let _ = produced.set(Instant::now());
    ctx.mark("produced");
    kafka::produce(&producer, topic, cfg.partitions as u64, 0, |p| Outgoing {
        key: None,
        partition: Some(p as i32),
        payload: END_MARKER.into(),
    })
    .await?;
    Ok((sent, started))
}

/// The observations, from what the database holds and what the consumer saw
/// (`started`: when production started).
fn observe(sent: u64, totals: &Totals, mut stats: Stats, started: Instant) -> Observations {
    let expected: i64 = (0..sent).map(amount).sum();
    let sent_i = sent as i64;
    let mut obs = Observations::from([
        ("orders_sent".into(), Value::from(sent)),
        ("rows".into(), Value::from(totals.rows)),
        (
            "duplicates_applied".into(),
            Value::from(totals.rows - totals.distinct),
        ),
        ("missing".into(), Value::from(sent_i - totals.distinct)),
        ("redelivered".into(), Value::from(stats.redelivered)),
        (
            "in_flight_at_crash".into(),
            Value::from(stats.in_flight_at_crash),
        ),
        ("charged_total".into(), Value::from(totals.charged)),
        ("expected_total".into(), Value::from(expected)),
        ("overcharge".into(), Value::from(totals.charged - expected)),
        (
            "exact".into(),
            Value::from(
                totals.rows == sent_i && totals.distinct == sent_i && totals.charged == expected,
            ),
        ),
        ("crashed".into(), Value::from(stats.crashed)),
        ("batches".into(), Value::from(stats.batches)),
        (
            "end_to_end_p50_ms".into(),
            Value::from(percentile_ms(&mut stats.latencies, 50.0)),
        ),
        (
            "end_to_end_p99_ms".into(),
            Value::from(percentile_ms(&mut stats.latencies, 99.0)),
        ),
    ]);
    if let Some(last) = stats.last_new {
        let secs = last.saturating_duration_since(started).as_secs_f64();
        if secs > 0.0 {
            obs.insert(
                "msgs_per_s".into(),
                Value::from((stats.seen.len() as f64 / secs).round()),
            );
        }
    }
    obs
}

/// An order's amount in cents, spread over 1.00–99.99 and derived from its id
/// so the expected total is known without a side channel.
fn amount(id: u64) -> i64 {
    100 + (id.wrapping_mul(7919) % 9900) as i64
}

#[derive(Debug, Clone)]
struct Config {
    orders: u64,
    partitions: i32,
    customers: u64,
    rate: u64,
    batch: usize,
    batch_wait: Duration,
    idempotent: bool,
    commit_before_write: bool,
    crashes: u64,
    crash_at_batch: u64,
    fetch_wait_ms: i64,
}

impl Config {
    fn from_ctx(ctx: &Ctx) -> Self {
        Config {
            orders: ctx.int("orders") as u64,
            partitions: ctx.int("partitions") as i32,
            customers: ctx.int("customers") as u64,
            rate: ctx.int("rate") as u64,
            batch: ctx.int("batch") as usize,
            batch_wait: Duration::from_millis(ctx.int("batch_wait_ms") as u64),
            idempotent: ctx.text("consumer") == "idempotent",
            commit_before_write: ctx.text("commit") == "before-write",
            crashes: ctx.int("crashes") as u64,
            crash_at_batch: ctx.int("crash_at_batch") as u64,
            fetch_wait_ms: ctx.int("fetch_wait_ms"),
        }
    }
}

/// One order as carried in a message.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Order {
    id: i64,
    customer: i32,
    amount: i64,
    sent_us: u64,
}

impl Order {
    fn parse(bytes: &[u8]) -> Option<Order> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut it = text.split(' ');
        let order = Order {
            id: it.next()?.parse().ok()?,
            customer: it.next()?.parse().ok()?,
            amount: it.next()?.parse().ok()?,
            sent_us: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(order)
    }
}

/// The scenario's tables, named from its namespace (identifiers stay short).
struct Tables {
    charges: String,
    balances: String,
}

struct Totals {
    rows: i64,
    distinct: i64,
    charged: i64,
}

impl Tables {
    fn new(namespace: &str) -> Self {
        let digest = hex::encode(Sha256::digest(namespace.as_bytes()));
        let tag = &digest[..12];
        Tables {
            charges: format!("charges_{tag}"),
            balances: format!("balances_{tag}"),
        }
    }

    fn create(&self, idempotent: bool) -> String {
        let Tables { charges, balances } = self;
        let charges_table = if idempotent {
            // The order id is the key: a second charge of one order cannot exist.
            format!(
                "CREATE TABLE {charges} (order_id bigint PRIMARY KEY, customer int NOT NULL, amount bigint NOT NULL)"
            )
        } else {
            format!(
                "CREATE TABLE {charges} (id bigserial PRIMARY KEY, order_id bigint NOT NULL, customer int NOT NULL, amount bigint NOT NULL)"
            )
        };
        format!(
            "DROP TABLE IF EXISTS {charges}, {balances};
             {charges_table};
             CREATE TABLE {balances} (customer int PRIMARY KEY, charged bigint NOT NULL);"
        )
    }

    /// One statement that records the batch's charges and raises the
    /// balances by what was actually recorded.
    fn apply(&self, idempotent: bool) -> String {
        let Tables { charges, balances } = self;
        let on_conflict = if idempotent {
            "ON CONFLICT (order_id) DO NOTHING"
        } else {
            ""
        };
        format!(
            "WITH applied AS (
               INSERT INTO {charges} (order_id, customer, amount)
               SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[])
               {on_conflict}
               RETURNING customer, amount)
             INSERT INTO {balances} (customer, charged)
             SELECT customer, sum(amount) FROM applied GROUP BY customer
             ON CONFLICT (customer) DO UPDATE SET charged = {balances}.charged + excluded.charged"
        )
    }

    async fn totals(&self, db: &tokio_postgres::Client) -> Result<Totals, ExerciseError> {
        let Tables { charges, balances } = self;
        let row = db
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {charges}),
                            (SELECT count(DISTINCT order_id) FROM {charges}),
                            (SELECT coalesce(sum(charged), 0)::bigint FROM {balances})"
                ),
                &[],
            )
            .await
            .doing("reading the totals")?;
        Ok(Totals {
            rows: row.get(0),
            distinct: row.get(1),
            charged: row.get(2),
        })
    }

    fn drop(&self) -> String {
        format!("DROP TABLE IF EXISTS {}, {}", self.charges, self.balances)
    }
}

#[derive(Default)]
struct Stats {
    seen: HashSet<i64>,
    redelivered: u64,
    in_flight_at_crash: u64,
    crashed: u64,
    batches: u64,
    latencies: Vec<Duration>,
    last_new: Option<Instant>,
}

/// A received message, owned (the consumer's borrowed message cannot wait
/// across the batch).
struct Received {
    partition: i32,
    offset: i64,
    order: Order,
}

/// How one incarnation of the consumer service ended.
enum Ended {
    /// It read every partition up to its end marker.
    Finished,
    /// It crashed between the two steps of a batch.
    Crashed,
}

/// The consumer service: batches → one transaction and one offset commit
/// each, in the configured order; the first `crashes` incarnations die
/// between the two.
struct Service<'a> {
    ctx: &'a Ctx,
    cfg: &'a Config,
    bootstrap: &'a str,
    topic: &'a str,
    group: String,
    db: &'a tokio_postgres::Client,
    tables: &'a Tables,
    base: Instant,
    /// When the last order was acknowledged.
    produced: &'a OnceLock<Instant>,
    /// Told once a consumer holds partitions.
    assigned: &'a Notify,
}

impl Service<'_> {
    /// Runs incarnation after incarnation until one finishes.
    async fn run(&self) -> Result<Stats, ExerciseError> {
        let apply = self
            .db
            .prepare(&self.tables.apply(self.cfg.idempotent))
            .await
            .doing("preparing the charge statement")?;
        let mut stats = Stats::default();
        loop {
            let consumer: StreamConsumer = kafka::consumer_config(
                self.bootstrap,
                &self.group,
                "earliest",
                self.cfg.fetch_wait_ms,
            )
            .create()
            .doing("creating the Kafka consumer")?;
            consumer.subscribe(&[self.topic]).doing("subscribing")?;
            let ended = self.incarnation(&consumer, &apply, &mut stats).await;
            kafka::close(consumer).await?;
            match ended? {
                Ended::Finished => return Ok(stats),
                Ended::Crashed => self.ctx.mark("consumer-restarted"),
            }
        }
    }

    /// One incarnation: batch after batch, write and commit in the
    /// configured order, until the end markers or its crash.
    async fn incarnation(
        &self,
        consumer: &StreamConsumer,
        apply: &tokio_postgres::Statement,
        stats: &mut Stats,
    ) -> Result<Ended, ExerciseError> {
        let crashing = stats.crashed < self.cfg.crashes;
        let mut ends = BTreeSet::new();
        let mut batches = 0u64;
        loop {
            let batch = self.collect_batch(consumer, &mut ends).await?;
            if !batch.is_empty() {
                batches += 1;
                let crash = crashing && batches == self.cfg.crash_at_batch;
                if self.cfg.commit_before_write {
                    commit(consumer, self.topic, &batch)?;
                    if crash {
                        return Ok(self.crash(&batch, stats));
                    }
                    apply_batch(self.db, apply, &batch, self.base, stats).await?;
                } else {
                    apply_batch(self.db, apply, &batch, self.base, stats).await?;
                    if crash {
                        return Ok(self.crash(&batch, stats));
                    }
                    commit(consumer, self.topic, &batch)?;
                }
            }
            if ends.len() == self.cfg.partitions as usize {
                return Ok(Ended::Finished);
            }
        }
    }

    /// The crash between the two steps: the next incarnation resumes from
    /// the committed offsets.
    fn crash(&self, batch: &[Received], stats: &mut Stats) -> Ended {
        stats.crashed += 1;
        stats.in_flight_at_crash += batch.len() as u64;
        self.ctx.mark("consumer-crashed");
        Ended::Crashed
    }

    /// Collects a batch: until it is full, `batch_wait` after its first
    /// message, or every partition's end marker was read (noted in `ends`).
    async fn collect_batch(
        &self,
        consumer: &StreamConsumer,
        ends: &mut BTreeSet<i32>,
    ) -> Result<Vec<Received>, ExerciseError> {
        let mut batch: Vec<Received> = Vec::with_capacity(self.cfg.batch);
        let mut first_at: Option<Instant> = None;
        while batch.len() < self.cfg.batch && ends.len() < self.cfg.partitions as usize {
            let wait = match first_at {
                Some(t) => self.cfg.batch_wait.saturating_sub(t.elapsed()),
                None => Duration::from_millis(100),
            };
            if wait.is_zero() {
                break;
            }
            match tokio::time::timeout(wait, consumer.recv()).await {
                Ok(Ok(msg)) => {
                    let payload = msg.payload().unwrap_or_default();
                    if payload == END_MARKER.as_bytes() {
                        ends.insert(msg.partition());
                    } else if let Some(order) = Order::parse(payload) {
                        batch.push(Received {
                            partition: msg.partition(),
                            offset: msg.offset(),
                            order,
                        });
                        first_at.get_or_insert_with(Instant::now);
                    }
                }
                // Transient consumer errors (a rebalance, a broker hiccup): keep going.
                Ok(Err(_)) => {}
                Err(_) if !batch.is_empty() => break,
                Err(_) => {
                    if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                        // A stored permit: the producer may start waiting later.
                        self.assigned.notify_one();
                    }
                    self.check_deadline(ends)?;
                }
            }
        }
        Ok(batch)
    }

    /// Gives up (the verdict is Unknown) when the consumer has not read
    /// everything long after the last order was acknowledged.
    fn check_deadline(&self, ends: &BTreeSet<i32>) -> Result<(), ExerciseError> {
        match self.produced.get() {
            Some(at) if at.elapsed() > DRAIN_DEADLINE => Err(ExerciseError(format!(
                "the consumer did not read every partition to its end marker within {} s of the last order (markers seen on {ends:?})",
                DRAIN_DEADLINE.as_secs()
            ))),
            _ => Ok(()),
        }
    }
}

/// Applies one batch in one transaction and records what it saw.
async fn apply_batch(
    db: &tokio_postgres::Client,
    apply: &tokio_postgres::Statement,
    batch: &[Received],
    base: Instant,
    stats: &mut Stats,
) -> Result<(), ExerciseError> {
    let ids: Vec<i64> = batch.iter().map(|r| r.order.id).collect();
    let customers: Vec<i32> = batch.iter().map(|r| r.order.customer).collect();
    let amounts: Vec<i64> = batch.iter().map(|r| r.order.amount).collect();
    // `db` is shared, so no `Client::transaction` (it needs `&mut`): the
    // statement runs between BEGIN and COMMIT on the one connection.
    db.batch_execute("BEGIN")
        .await
        .doing("starting a transaction")?;
    let applied = db.execute(apply, &[&ids, &customers, &amounts]).await;
    if let Err(e) = applied {
        let _ = db.batch_execute("ROLLBACK").await;
        return Err(ExerciseError(format!("applying a batch: {e}")));
    }
    db.batch_execute("COMMIT")
        .await
        .doing("committing a batch")?;
    stats.batches += 1;
    let now = Instant::now();
    for r in batch {
        if stats.seen.insert(r.order.id) {
            stats
                .latencies
                .push(now.saturating_duration_since(base + Duration::from_micros(r.order.sent_us)));
            stats.last_new = Some(now);
        } else {
            stats.redelivered += 1;
        }
    }
    Ok(())
}

/// Commits, per partition, the offset after the batch's last message.
fn commit(consumer: &StreamConsumer, topic: &str, batch: &[Received]) -> Result<(), ExerciseError> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in batch {
        let n = next.entry(r.partition).or_insert(0);
        *n = (*n).max(r.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in next {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .doing("building the offset list")?;
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .doing("committing offsets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_round_trip_and_garbage_is_refused() {
        assert_eq!(
            Order::parse(b"12 3 4599 777"),
            Some(Order {
                id: 12,
                customer: 3,
                amount: 4599,
                sent_us: 777
            })
        );
        assert_eq!(Order::parse(b"12 3 4599"), None);
        assert_eq!(Order::parse(b"12 3 4599 777 1"), None);
        assert_eq!(Order::parse(b"x 3 4599 777"), None);
    }

    #[test]
    fn amounts_are_between_one_and_a_hundred_and_vary() {
        let amounts: HashSet<i64> = (0..1000).map(amount).collect();
        assert!(amounts.iter().all(|a| (100..10_000).contains(a)));
        assert!(amounts.len() > 500);
    }

    #[test]
    fn table_names_are_short_distinct_identifiers() {
        let a =
            Tables::new("infralab:0123abcd:a-very-long-scenario-name-that-goes-on-and-on-and-on");
        let b = Tables::new("infralab:0123abcd:another");
        assert!(a.charges.len() < 64 && a.balances.len() < 64);
        assert!(
            a.charges
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_ne!(a.charges, b.charges);
    }

    #[test]
    fn only_the_idempotent_consumer_ignores_a_second_charge() {
        let t = Tables::new("ns");
        assert!(t.apply(true).contains("ON CONFLICT (order_id) DO NOTHING"));
        assert!(!t.apply(false).contains("(order_id) DO NOTHING"));
        assert!(t.create(true).contains("order_id bigint PRIMARY KEY"));
        assert!(!t.create(false).contains("order_id bigint PRIMARY KEY"));
    }

    #[test]
    fn observations_compare_the_database_with_the_orders_sent() {
        let base = Instant::now();
        let expected: i64 = (0..4).map(amount).sum();
        // Five rows for four orders: order 1 charged twice.
        let totals = Totals {
            rows: 5,
            distinct: 4,
            charged: expected + amount(1),
        };
        let stats = Stats {
            redelivered: 1,
            in_flight_at_crash: 1,
            crashed: 1,
            ..Stats::default()
        };
        let obs = observe(4, &totals, stats, base);
        assert_eq!(obs["duplicates_applied"], 1);
        assert_eq!(obs["missing"], 0);
        assert_eq!(obs["overcharge"], amount(1));
        assert_eq!(obs["exact"], false);
        assert!(obs["end_to_end_p50_ms"].is_null(), "no samples: absent");
        // Three rows for four orders: one lost.
        let totals = Totals {
            rows: 3,
            distinct: 3,
            charged: expected - amount(3),
        };
        let obs = observe(4, &totals, Stats::default(), base);
        assert_eq!(
            (obs["missing"].as_i64(), obs["exact"].as_bool()),
            (Some(1), Some(false))
        );
    }

    #[test]
    fn defaults_are_valid_parameters() {
        for p in EventPipeline.params() {
            p.check(&p.default).unwrap();
        }
    }
}
