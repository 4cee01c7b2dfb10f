//! event-driven-pipeline, the reference solution.
//!
//! A consumer in the group KAFKA_GROUP charges every order of ORDERS_TOPIC
//! in CHARGES_TABLE, and stays exact when it is killed and started again:
//!
//! - at least once: an order's offset is stored only after its charge is
//!   written (`enable.auto.offset.store=false`, then `store_offset`), and
//!   the client's auto-commit commits what was stored; a kill between the
//!   write and the commit makes Kafka deliver the order again;
//! - idempotent: the order id is unique in the table (an index the program
//!   creates) and the insert does nothing on a conflict, so a second
//!   delivery charges nothing.
//!
//! The broken solutions beside this file reuse it with one mistake each
//! ([`Mistakes`]).
//!
//! Run it: `infralab run event-driven-pipeline --solution reference`.

use std::collections::HashSet;
use std::error::Error;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;

/// The mistakes the broken solutions make (all false here).
#[derive(Default, Clone, Copy)]
pub struct Mistakes {
    /// Commit the order's offset before charging it.
    pub commit_before_write: bool,
    /// Remember the orders charged in a set in memory instead of the
    /// database; a plain insert.
    pub dedup_in_memory: bool,
}

fn var(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| {
        format!(
            "{name} is not set: run me with `infralab run event-driven-pipeline --solution CMD`"
        )
        .into()
    })
}

/// One order, as the topic carries it.
#[derive(serde::Deserialize)]
struct Order {
    order: i64,
    customer: i32,
    amount: i64,
}

/// Runs the consumer until it is stopped.
pub async fn run(mistakes: Mistakes) -> Result<(), Box<dyn Error>> {
    let table = var("CHARGES_TABLE")?;
    let instance: i32 = var("INFRALAB_INSTANCE")?.parse()?;
    let work = Duration::from_millis(var("INFRALAB_PARAM_WORK_MS")?.parse()?);
    let (db, connection) =
        tokio_postgres::connect(&var("DATABASE_URL")?, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let idempotent = !mistakes.dedup_in_memory;
    if idempotent {
        db.batch_execute(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {table}_order ON {table} (order_id)"
        ))
        .await?;
    }
    let insert = db
        .prepare(&format!(
            "INSERT INTO {table} (order_id, customer, amount, instance) VALUES ($1, $2, $3, $4){}",
            if idempotent {
                " ON CONFLICT (order_id) DO NOTHING"
            } else {
                ""
            }
        ))
        .await?;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", var("KAFKA_BOOTSTRAP_SERVERS")?)
        .set("group.id", var("KAFKA_GROUP")?)
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            var("INFRALAB_PARAM_SESSION_TIMEOUT_MS")?,
        )
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "10")
        .set(
            "enable.auto.commit",
            (!mistakes.commit_before_write).to_string(),
        )
        // Offsets are stored by hand, after the charge.
        .set("enable.auto.offset.store", "false")
        .create()?;
    consumer.subscribe(&[&var("ORDERS_TOPIC")?])?;

    let mut seen = HashSet::new();
    loop {
        let message = consumer.recv().await?;
        let order: Order = serde_json::from_slice(message.payload().unwrap_or_default())?;
        if mistakes.commit_before_write {
            consumer.commit_message(&message, CommitMode::Sync)?;
        }
        if mistakes.dedup_in_memory && !seen.insert(order.order) {
            continue;
        }
        tokio::time::sleep(work).await; // the payment provider
        db.execute(
            &insert,
            &[&order.order, &order.customer, &order.amount, &instance],
        )
        .await?;
        if !mistakes.commit_before_write {
            consumer.store_offset_from_message(&message)?;
        }
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run(Mistakes::default()).await
}
