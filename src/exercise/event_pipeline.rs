//! `event-pipeline`: orders flow producer → Kafka → a consumer that charges
//! them in PostgreSQL.
//!
//! A producer publishes `orders` orders (keyed by customer) at `rate` per
//! second while one consumer service reads them in batches of `batch`: it
//! applies a batch to the database in one transaction, then commits the
//! batch's offsets to Kafka. With `crashes: N`, the first N consumer
//! incarnations "crash" after applying their `crash_at_batch`-th batch and
//! before committing its offsets: the consumer is dropped without a commit and
//! a new one joins the same group, so Kafka hands it the batch again from the
//! last committed offset. That redelivery is normal at-least-once behaviour;
//! what it does to the database depends on the consumer:
//!
//! - `naive`: appends a charge row per message and adds to the customer's
//!   balance, so a redelivered order is charged twice.
//! - `idempotent`: the charge row's primary key is the order id and the
//!   balance is raised only by rows that were really inserted
//!   (`INSERT … ON CONFLICT (order_id) DO NOTHING RETURNING …`, one
//!   statement, one transaction), so a redelivered order changes nothing.
//!
//! Every number comes from the database and the broker: rows and totals are
//! read back with SQL, redeliveries are orders the consumer received again.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::kafka_groups::{
    Outgoing, consumer_config, create_topic, delete_topic, produce, producer, topic_name,
};
use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::stats::percentile_ms;

/// The `event-pipeline` exercise.
pub struct EventPipeline;

#[async_trait]
impl Exercise for EventPipeline {
    fn name(&self) -> &'static str {
        "event-pipeline"
    }

    fn summary(&self) -> &'static str {
        "orders flow through Kafka into PostgreSQL; a consumer crash before its commit redelivers a batch"
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
                "orders the consumer applies in one transaction before committing offsets",
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
            ParamSpec::int(
                "crashes",
                0,
                100,
                0,
                "consumer incarnations that crash after applying a batch, before committing it",
            ),
            ParamSpec::int(
                "crash_at_batch",
                1,
                100_000,
                2,
                "which batch of an incarnation is applied but never committed",
            ),
            ParamSpec::int(
                "fetch_wait_ms",
                1,
                10_000,
                10,
                "consumer fetch.wait.max.ms (tansu holds every fetch this long)",
            ),
            ParamSpec::int(
                "idle_ms",
                100,
                600_000,
                5000,
                "give up once nothing new arrived for this long after the end of production",
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
                    "deliveries of an order the consumer had already received (Kafka-side duplicates)",
                ),
                ObsSpec::number(
                    "charged_total",
                    "sum of all customer balances in the database (cents)",
                ),
                ObsSpec::number(
                    "expected_total",
                    "sum of the amounts of the orders sent (cents)",
                ),
                ObsSpec::number("overcharge", "charged_total − expected_total (cents)"),
                ObsSpec::flag(
                    "exact",
                    "one row per order and charged_total == expected_total",
                ),
                ObsSpec::number(
                    "crashes",
                    "consumer crashes between applying a batch and committing it",
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
                Milestone::new("producing", "orders are being produced"),
                Milestone::new("produced", "every order is acknowledged"),
                Milestone::new("consumer-stopped", "the consumer has stopped"),
                Milestone::new(
                    "consumer-crashed",
                    "the consumer crashed between its DB write and its offset commit",
                ),
                Milestone::new("consumer-restarted", "a new consumer took over"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let bootstrap = ctx.service("kafka")?.url.clone();
        let pg_url = ctx.service("postgres")?.url.clone();
        let cfg = Config::from_ctx(ctx);
        let topic = topic_name(&ctx.namespace, "orders");
        let tables = Tables::new(&ctx.namespace);

        let (db, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
            .await
            .doing("connecting to postgres")?;
        let connection = tokio::spawn(connection);
        db.batch_execute(&tables.create(cfg.idempotent))
            .await
            .doing("creating the tables")?;
        create_topic(&bootstrap, &topic, cfg.partitions).await?;
        ctx.mark("ready");

        let base = Instant::now();
        let produced = AtomicBool::new(false);
        let producer = producer(&bootstrap)?;
        let customers = cfg.customers;
        let producing = async {
            ctx.mark("producing");
            let result = produce(&producer, &topic, cfg.orders, cfg.rate, |id| {
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
            .await;
            produced.store(true, Ordering::SeqCst);
            ctx.mark("produced");
            result
        };
        let group = format!("{}:charger", ctx.namespace);
        let consuming = consume(
            ctx, &cfg, &bootstrap, &topic, &group, &db, &tables, base, &produced,
        );
        let (produced_result, consumed) = tokio::join!(producing, consuming);
        produced_result?;
        let stats = consumed?;
        ctx.mark("consumer-stopped");

        let totals = tables.totals(&db).await?;
        db.batch_execute(&tables.drop())
            .await
            .doing("dropping the tables")?;
        drop(db);
        let _ = connection.await;
        let _ = delete_topic(&bootstrap, &topic).await;

        let expected: i64 = (0..cfg.orders).map(amount).sum();
        let mut lat = stats.latencies;
        let mut obs = Observations::from([
            ("orders_sent".into(), Value::from(cfg.orders)),
            ("rows".into(), Value::from(totals.rows)),
            (
                "duplicates_applied".into(),
                Value::from(totals.rows - totals.distinct),
            ),
            (
                "missing".into(),
                Value::from(cfg.orders as i64 - totals.distinct),
            ),
            ("redelivered".into(), Value::from(stats.redelivered)),
            ("charged_total".into(), Value::from(totals.charged)),
            ("expected_total".into(), Value::from(expected)),
            ("overcharge".into(), Value::from(totals.charged - expected)),
            (
                "exact".into(),
                Value::from(
                    totals.rows == cfg.orders as i64
                        && totals.distinct == cfg.orders as i64
                        && totals.charged == expected,
                ),
            ),
            ("crashes".into(), Value::from(stats.crashes)),
            ("batches".into(), Value::from(stats.batches)),
            (
                "end_to_end_p50_ms".into(),
                Value::from(percentile_ms(&mut lat, 50.0)),
            ),
            (
                "end_to_end_p99_ms".into(),
                Value::from(percentile_ms(&mut lat, 99.0)),
            ),
        ]);
        if let Some(last) = stats.last_new {
            let secs = last.saturating_duration_since(base).as_secs_f64();
            if secs > 0.0 {
                obs.insert(
                    "msgs_per_s".into(),
                    Value::from((stats.seen.len() as f64 / secs).round()),
                );
            }
        }
        Ok(obs)
    }
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
    crashes: u64,
    crash_at_batch: u64,
    fetch_wait_ms: i64,
    idle: Duration,
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
            crashes: ctx.int("crashes") as u64,
            crash_at_batch: ctx.int("crash_at_batch") as u64,
            fetch_wait_ms: ctx.int("fetch_wait_ms"),
            idle: Duration::from_millis(ctx.int("idle_ms") as u64),
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
    crashes: u64,
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

/// The consumer service: batches → one transaction each → offset commit; the
/// first `crashes` incarnations die between the transaction and the commit.
#[allow(clippy::too_many_arguments)]
async fn consume(
    ctx: &Ctx,
    cfg: &Config,
    bootstrap: &str,
    topic: &str,
    group: &str,
    db: &tokio_postgres::Client,
    tables: &Tables,
    base: Instant,
    produced: &AtomicBool,
) -> Result<Stats, ExerciseError> {
    let apply = db
        .prepare(&tables.apply(cfg.idempotent))
        .await
        .doing("preparing the charge statement")?;
    let mut stats = Stats::default();
    let mut last_progress = Instant::now();
    let mut produced_at: Option<Instant> = None;
    loop {
        // One incarnation of the consumer service.
        let consumer: StreamConsumer =
            consumer_config(bootstrap, group, "earliest", cfg.fetch_wait_ms)
                .create()
                .doing("creating the Kafka consumer")?;
        consumer.subscribe(&[topic]).doing("subscribing")?;
        let mut batches = 0u64;
        let crashing = stats.crashes < cfg.crashes;
        let finished = loop {
            // Collect a batch: until it is full or `batch_wait` after its first message.
            let mut batch: Vec<Received> = Vec::with_capacity(cfg.batch);
            let mut first_at: Option<Instant> = None;
            let mut done = false;
            while batch.len() < cfg.batch {
                let wait = match first_at {
                    Some(t) => cfg.batch_wait.saturating_sub(t.elapsed()),
                    None => Duration::from_millis(100),
                };
                if wait.is_zero() {
                    break;
                }
                match tokio::time::timeout(wait, consumer.recv()).await {
                    Ok(Ok(msg)) => {
                        if let Some(order) = msg.payload().and_then(Order::parse) {
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
                        if produced.load(Ordering::SeqCst) {
                            let at = *produced_at.get_or_insert_with(Instant::now);
                            let all = stats.seen.len() as u64 >= cfg.orders;
                            if all || last_progress.max(at).elapsed() > cfg.idle {
                                done = true;
                                break;
                            }
                        }
                    }
                }
            }
            if !batch.is_empty() {
                apply_batch(db, &apply, &batch, base, &mut stats).await?;
                last_progress = Instant::now();
                batches += 1;
                stats.batches += 1;
                if crashing && batches == cfg.crash_at_batch {
                    // Applied, never committed: the next incarnation gets it again.
                    stats.crashes += 1;
                    ctx.mark("consumer-crashed");
                    break false;
                }
                commit(&consumer, topic, &batch)?;
            }
            if done {
                break true;
            }
        };
        // Closing leaves the group; it blocks while librdkafka winds down.
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .doing("closing the consumer")?;
        if finished {
            return Ok(stats);
        }
        ctx.mark("consumer-restarted");
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
    fn defaults_are_valid_parameters() {
        for p in EventPipeline.params() {
            p.check(&p.default).unwrap();
        }
    }
}
