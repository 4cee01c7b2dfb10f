//! Kafka through rdkafka: the settings every client shares, topic creation
//! and deletion, a paced producer, the consumer settings of the labs, the
//! metadata request the readiness probe makes, and the smoke round trip
//! (produce, consume).
//!
//! tansu (the local image's broker) answers every Fetch only after the
//! consumer's full `fetch.wait.max.ms`, even when data is waiting (Apache
//! Kafka answers as soon as `fetch.min.bytes` arrived): consumers here take
//! that wait as a parameter, and it bounds their end-to-end latency.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::round_trip::{RoundTrip, Trip, TripInput};
use crate::exercise::{Context, ExerciseError};

/// A topic name from the scenario's namespace (Kafka allows `[A-Za-z0-9._-]`).
pub fn topic_name(namespace: &str, what: &str) -> String {
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
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("log_level", "3");
    c
}

/// A consumer in `group` with manual offset handling: the application stores
/// an offset once it processed the message and commits explicitly, so where
/// the commit sits relative to the side effect is the application's choice
/// (after it: at least once; before it: at most once).
///
/// `fetch_wait_ms` is `fetch.wait.max.ms`; on tansu every fetch lasts that long.
pub fn consumer_config(
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
pub fn producer(bootstrap: &str) -> Result<FutureProducer, ExerciseError> {
    client_config(bootstrap)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000")
        .create()
        .doing("creating a Kafka producer")
}

/// A producer like [`producer`] that sends every message in a record batch
/// of its own. tansu 0.6 answers ListOffsets (latest) with the last record
/// batch's base offset + 1 instead of the log end, so a consumer starting at
/// `latest` re-reads the rest of each partition's last batch; with one
/// message per batch its answer is right. Apache Kafka needs none of this.
pub fn unbatched_producer(bootstrap: &str) -> Result<FutureProducer, ExerciseError> {
    client_config(bootstrap)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("batch.num.messages", "1")
        .set("message.timeout.ms", "30000")
        .create()
        .doing("creating a Kafka producer")
}

/// Closes a consumer off the async workers: closing leaves the group
/// (LeaveGroup), waits for outstanding commits and serves their callbacks,
/// all of which blocks while librdkafka winds down.
pub async fn close<C: Send + 'static>(consumer: C) -> Result<(), ExerciseError> {
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .doing("closing a Kafka consumer")
}

/// Creates `topic` with the admin API and waits until its metadata shows every partition.
pub async fn create_topic(
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
pub async fn delete_topic(bootstrap: &str, topic: &str) -> Result<(), ExerciseError> {
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
pub struct Outgoing {
    /// The key (picks the partition unless `partition` is set).
    pub key: Option<String>,
    /// An explicit partition.
    pub partition: Option<i32>,
    /// The value.
    pub payload: String,
}

/// How far the producer may fall behind its schedule before it stops trying
/// to catch up: after a stall it resumes at `rate` instead of bursting.
const MAX_LAG: Duration = Duration::from_millis(10);

/// Produces `n` messages made by `make(i)` at `rate` per second (0: as fast
/// as possible) and waits for the broker to acknowledge all of them;
/// returns how many it acknowledged (all, or an error says which failed).
///
/// The schedule is kept per message (tokio's timer has millisecond ticks, so
/// an interval per message could not go above 1000/s), and a stall longer
/// than [`MAX_LAG`] moves the schedule instead of being caught up in a burst.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    n: u64,
    rate: u64,
    mut make: impl FnMut(u64) -> Outgoing,
) -> Result<u64, ExerciseError> {
    let period = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let mut due = Instant::now();
    let mut pending = Vec::with_capacity(n as usize);
    for i in 0..n {
        if let Some(period) = period {
            let now = Instant::now();
            if due > now {
                tokio::time::sleep_until(due.into()).await;
            } else if now - due > MAX_LAG {
                due = now;
            }
            due += period;
        }
        let out = make(i);
        pending.push(send(producer, topic, &out, i).await?);
    }
    let mut acknowledged = 0;
    for delivery in pending {
        delivery
            .await
            .doing("waiting for a delivery report")?
            .map_err(|(e, _)| ExerciseError(format!("the broker refused a message: {e}")))?;
        acknowledged += 1;
    }
    Ok(acknowledged)
}

/// Hands one message to the producer's queue, waiting while the queue is full.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    out: &Outgoing,
    i: u64,
) -> Result<rdkafka::producer::DeliveryFuture, ExerciseError> {
    let mut record = FutureRecord::to(topic).payload(&out.payload);
    if let Some(key) = &out.key {
        record = record.key(key);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(ExerciseError(format!("producing message {i}: {e}"))),
        }
    }
}

/// Messages in `topic` by the broker's own account: the sum over its
/// partitions of the log end offset (high watermark, ListOffsets latest)
/// minus the log start. Blocking: call it off the async workers.
pub fn log_size(bootstrap: &str, topic: &str, partitions: i32) -> Result<i64, ExerciseError> {
    let client: BaseConsumer = client_config(bootstrap)
        .create()
        .doing("creating a Kafka metadata client")?;
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = client
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .doing("asking for the log end")?;
        total += high - low;
    }
    Ok(total)
}

/// The brokers (`host:port`) a metadata request lists, asked of `bootstrap`
/// with every socket timeout at `timeout`. Blocking: call it off the async
/// workers. librdkafka's own logging is silenced: connection errors are
/// expected while a broker boots, and the caller reports the outcome.
pub fn broker_addresses(bootstrap: &str, timeout: Duration) -> Result<Vec<(String, i32)>, String> {
    let timeout_ms = timeout.as_millis().to_string();
    let consumer: BaseConsumer<Quiet> = client_config(bootstrap)
        .set("socket.timeout.ms", &timeout_ms)
        .set("socket.connection.setup.timeout.ms", &timeout_ms)
        .set("log.connection.close", "false")
        .set_log_level(RDKafkaLogLevel::Emerg)
        .create_with_context(Quiet)
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("no metadata: {e}"))?;
    Ok(metadata
        .brokers()
        .iter()
        .map(|b| (b.host().to_string(), b.port()))
        .collect())
}

/// A client context that drops librdkafka's logs and errors.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _message: &str) {}
    fn error(&self, _error: KafkaError, _reason: &str) {}
}

impl ConsumerContext for Quiet {}

/// The Kafka round trip: a one-partition topic, produce (acks=all), then
/// consume from the offset produced.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "kafka",
    ok: "a message produced to a new topic was consumed back",
    ms: "produce (acks=all) to consume",
    error: "why the round trip failed (only when it did)",
    extra: &[],
    params: Vec::new,
    start: |input| Box::pin(round_trip(input)),
};

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let bootstrap = input.endpoint.url.clone();
    let topic = topic_name(&input.namespace, "smoke");
    create_topic(&bootstrap, &topic, 1).await.map_err(|e| e.0)?;
    let result = produce_and_consume(&bootstrap, &topic, &mut input).await;
    let _ = delete_topic(&bootstrap, &topic).await;
    result
}

async fn produce_and_consume(
    bootstrap: &str,
    topic: &str,
    input: &mut TripInput,
) -> Result<Trip, String> {
    let producer = producer(bootstrap).map_err(|e| e.0)?;
    // assign() needs a group id (librdkafka keeps assignments in the
    // group's state) but, unlike subscribe(), joins no group. tansu holds
    // every fetch for the full fetch.wait.max.ms before answering.
    let consumer: StreamConsumer = consumer_config(bootstrap, topic, "earliest", 10)
        .create()
        .map_err(|e| format!("creating a consumer: {e}"))?;
    let value = input.token();
    input.gate.wait().await;
    let started = Instant::now();
    let delivered = producer
        .send(
            FutureRecord::to(topic).key("smoke").payload(&value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| format!("producing to {topic}: {e}"))?;
    // No group: read the partition from the offset just written.
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, delivered.partition, Offset::Offset(delivered.offset))
        .map_err(|e| format!("assigning {topic}: {e}"))?;
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assigning {topic}: {e}"))?;
    let message = consumer
        .recv()
        .await
        .map_err(|e| format!("consuming from {topic}: {e}"))?;
    let elapsed = started.elapsed();
    let read = message
        .payload()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    Trip::read_back(elapsed, &value, &read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_keep_only_characters_kafka_allows() {
        assert_eq!(
            topic_name("infralab:1a2b:one group", "events"),
            "infralab-1a2b-one-group-events"
        );
    }

    #[test]
    fn consumers_store_and_commit_offsets_themselves() {
        let c = consumer_config("127.0.0.1:9092", "g", "latest", 10);
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("10"));
    }
}
