//! event-driven-pipeline, the starter: it runs, and it fails.
//!
//! A consumer with the client's defaults (offsets committed on a timer)
//! that inserts a charge for every message it gets. Killed and started
//! again, it gets again what it had charged since the last commit, and
//! charges it twice. Your job: stay exact.
//!
//! Run it: `infralab run event-driven-pipeline --solution starter`; yours:
//! `cargo build --release --examples && infralab run event-driven-pipeline
//! --solution target/release/examples/event-driven-pipeline-starter` after
//! editing.

use std::error::Error;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

fn var(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

#[derive(serde::Deserialize)]
struct Order {
    order: i64,
    customer: i32,
    amount: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let table = var("CHARGES_TABLE")?;
    let instance: i32 = var("INFRALAB_INSTANCE")?.parse()?;
    let work = Duration::from_millis(var("INFRALAB_PARAM_WORK_MS")?.parse()?);
    let (db, connection) =
        tokio_postgres::connect(&var("DATABASE_URL")?, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", var("KAFKA_BOOTSTRAP_SERVERS")?)
        .set("group.id", var("KAFKA_GROUP")?)
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            var("INFRALAB_PARAM_SESSION_TIMEOUT_MS")?,
        )
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[&var("ORDERS_TOPIC")?])?;
    loop {
        let message = consumer.recv().await?;
        let order: Order = serde_json::from_slice(message.payload().unwrap_or_default())?;
        tokio::time::sleep(work).await; // the payment provider
        // TODO: a second delivery of an order must not charge it again.
        db.execute(
            &format!(
                "INSERT INTO {table} (order_id, customer, amount, instance) VALUES ($1, $2, $3, $4)"
            ),
            &[&order.order, &order.customer, &order.amount, &instance],
        )
        .await?;
        // TODO: when is this order's offset committed: before or after its charge?
    }
}
