//! `smoke`: one real round trip per service kind the lab has, all at once.
//!
//! The exercise adapts to the lab: for every kind present it takes the first
//! service of that kind and does one write-then-read-back with that kind's
//! ordinary client library, the way a learner's first program would:
//!
//! - redis: `SET` then `GET` of a namespaced key (redis-rs);
//! - postgres: `CREATE TEMP TABLE`, `INSERT`, `SELECT` (tokio-postgres), with the
//!   URL's credentials unless `postgres_password` says otherwise;
//! - rabbitmq: publish (confirmed) to an exclusive queue, consume it back (lapin);
//! - kafka: create a one-partition topic, produce, consume from the produced
//!   offset (rdkafka);
//! - mosquitto: subscribe, publish at QoS 1, receive it back (rumqttc);
//! - nginx (or, without nginx, the agent directly): `GET /` (reqwest); through
//!   Nginx the answer names the agent instance behind it.
//!
//! A failed round trip is an observation like a successful one: `KIND_ok` is
//! false and `KIND_error` holds the cause in the server's or client's own
//! words (`password authentication failed for user "lab"`), so the lab's
//! `KIND_ok: true` FAILs and the report says why; the other kinds are still
//! measured. Every client first connects and sets up (table, queue, topic,
//! subscription); then all clocks start together, and a round trip is timed
//! from the write to the value read back (for HTTP: the GET, its TCP
//! connection included).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use redis::AsyncCommands;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::watch;

use super::{Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamKind, ParamSpec};
use crate::client::{amqp, http, kafka, mqtt};

/// The `smoke` exercise.
pub struct Smoke;

/// How long one round trip may take, setup included.
const DEADLINE: Duration = Duration::from_secs(30);

/// How long a client that is set up waits for the others before it starts anyway.
const GATE_WAIT: Duration = Duration::from_secs(10);

/// What a successful round trip reports.
struct Trip {
    /// Write to read-back.
    elapsed: Duration,
    /// The agent instance that answered (HTTP only).
    instance: Option<String>,
}

/// A round trip running as its own task, tagged with its observation prefix.
type TripTask = tokio::task::JoinHandle<(&'static str, Result<Trip, String>)>;

#[async_trait]
impl Exercise for Smoke {
    fn name(&self) -> &'static str {
        "smoke"
    }

    fn summary(&self) -> &'static str {
        "one real client round trip per service in the lab (redis, postgres, rabbitmq, kafka, mqtt, http), concurrently"
    }

    fn needs(&self) -> &'static [&'static str] {
        // Adapts to whatever the lab has.
        &[]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "postgres_password",
                kind: ParamKind::Text,
                default: Value::from(""),
                doc: "password the postgres client logs in with (empty: the one in the connection string)",
            },
            ParamSpec {
                name: "http_path",
                kind: ParamKind::Text,
                default: Value::from("/"),
                doc: "path the HTTP client GETs through Nginx (or from the agent directly)",
            },
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::flag("redis_ok", "SET then GET returned the value written"),
                ObsSpec::number("redis_ms", "SET + GET round trip"),
                ObsSpec::text(
                    "redis_error",
                    "why the round trip failed (only when it did)",
                ),
                ObsSpec::flag(
                    "postgres_ok",
                    "a row INSERTed into a new table came back from SELECT",
                ),
                ObsSpec::number("postgres_ms", "INSERT + SELECT round trip"),
                ObsSpec::text(
                    "postgres_error",
                    "why the round trip failed, in PostgreSQL's words when it sent any",
                ),
                ObsSpec::flag(
                    "rabbitmq_ok",
                    "a confirmed message published to a queue was consumed back",
                ),
                ObsSpec::number("rabbitmq_ms", "publish to delivery, confirm included"),
                ObsSpec::text(
                    "rabbitmq_error",
                    "why the round trip failed (only when it did)",
                ),
                ObsSpec::flag(
                    "kafka_ok",
                    "a message produced to a new topic was consumed back",
                ),
                ObsSpec::number("kafka_ms", "produce (acks=all) to consume"),
                ObsSpec::text(
                    "kafka_error",
                    "why the round trip failed (only when it did)",
                ),
                ObsSpec::flag(
                    "mqtt_ok",
                    "a QoS 1 message published on Mosquitto reached a subscriber",
                ),
                ObsSpec::number("mqtt_ms", "publish to delivery"),
                ObsSpec::text("mqtt_error", "why the round trip failed (only when it did)"),
                ObsSpec::flag(
                    "http_ok",
                    "GET `http_path` through Nginx (or the agent directly) answered 2xx",
                ),
                ObsSpec::number("http_ms", "the GET's round trip, TCP connection included"),
                ObsSpec::text(
                    "http_error",
                    "why the GET failed, with the status line (only when it did)",
                ),
                ObsSpec::text(
                    "http_instance",
                    "the agent instance that answered (x-infralab-instance)",
                ),
                ObsSpec::number(
                    "services_checked",
                    "round trips attempted (one per kind present; nginx and agent count once)",
                ),
                ObsSpec::number("services_ok", "round trips that read back what they wrote"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("round-trips-started", "every round trip begins"),
                Milestone::new("round-trips-finished", "every round trip has ended"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let first = |kind: &str| {
            ctx.services
                .values()
                .find(|e| e.kind == kind)
                .map(|e| e.url.clone())
        };
        let ns = ctx.namespace.clone();
        let (redis, postgres, rabbitmq, kafka, mosquitto) = (
            first("redis"),
            first("postgres"),
            first("rabbitmq"),
            first("kafka"),
            first("mosquitto"),
        );
        let http = first("nginx").or_else(|| first("agent"));
        let count = [&redis, &postgres, &rabbitmq, &kafka, &mosquitto, &http]
            .iter()
            .filter(|url| url.is_some())
            .count();
        let gate = Gate::new(count);
        // Each on its own task, so one client's blocking work (a SCRAM password
        // hash, librdkafka's setup) does not stall the others.
        let mut trips: Vec<TripTask> = Vec::new();
        if let Some(url) = redis {
            trips.push(timed("redis", redis_trip(url, ns.clone(), gate.ticket())));
        }
        if let Some(url) = postgres {
            let password = ctx.text("postgres_password").to_string();
            trips.push(timed(
                "postgres",
                postgres_trip(url, password, gate.ticket()),
            ));
        }
        if let Some(url) = rabbitmq {
            trips.push(timed(
                "rabbitmq",
                rabbitmq_trip(url, ns.clone(), gate.ticket()),
            ));
        }
        if let Some(url) = kafka {
            trips.push(timed("kafka", kafka_trip(url, ns.clone(), gate.ticket())));
        }
        if let Some(url) = mosquitto {
            trips.push(timed("mqtt", mqtt_trip(url, ns.clone(), gate.ticket())));
        }
        if let Some(url) = http {
            let path = ctx.text("http_path").to_string();
            trips.push(timed("http", http_trip(url, path, gate.ticket())));
        }
        let checked = trips.len();
        ctx.mark("round-trips-started");
        let mut results = Vec::new();
        for joined in join_all(trips).await {
            let joined = joined.map_err(|e| ExerciseError(format!("a round trip panicked: {e}")));
            results.push(joined?);
        }
        ctx.mark("round-trips-finished");

        Ok(observe(results, checked))
    }
}

/// Every round trip's outcome as observations: a failed one is `KIND_ok:
/// false` with its cause in `KIND_error`, so the check on it FAILs with the
/// reason beside it instead of the whole scenario being Unknown.
fn observe(results: Vec<(&'static str, Result<Trip, String>)>, checked: usize) -> Observations {
    let mut obs = Observations::new();
    let mut ok = 0;
    for (what, result) in results {
        obs.insert(format!("{what}_ok"), Value::Bool(result.is_ok()));
        match result {
            Ok(trip) => {
                ok += 1;
                obs.insert(format!("{what}_ms"), Value::from(ms(trip.elapsed)));
                if let Some(instance) = trip.instance {
                    obs.insert(format!("{what}_instance"), Value::from(instance));
                }
            }
            Err(why) => {
                obs.insert(format!("{what}_error"), Value::from(why));
            }
        }
    }
    obs.insert("services_checked".into(), Value::from(checked));
    obs.insert("services_ok".into(), Value::from(ok));
    obs
}

/// Milliseconds with 0.01 ms precision.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

/// Starts a round trip bounded by [`DEADLINE`] on a task of its own.
fn timed(
    what: &'static str,
    trip: impl Future<Output = Result<Trip, String>> + Send + 'static,
) -> TripTask {
    tokio::spawn(async move {
        let result = tokio::time::timeout(DEADLINE, trip)
            .await
            .unwrap_or_else(|_| Err(format!("no round trip within {} s", DEADLINE.as_secs())));
        (what, result)
    })
}

/// Lets every client connect and set up (table, queue, topic, subscription)
/// before any round-trip clock starts, so the times measure the round trips
/// and not each other's setup work. A client that fails or gives up before
/// reaching the gate still counts as arrived (its ticket is dropped).
struct Gate {
    arrived: Arc<watch::Sender<usize>>,
    expected: usize,
}

/// One client's place at the [`Gate`].
struct Ticket {
    arrived: Arc<watch::Sender<usize>>,
    expected: usize,
    used: bool,
}

impl Gate {
    fn new(expected: usize) -> Self {
        Gate {
            arrived: Arc::new(watch::channel(0).0),
            expected,
        }
    }

    fn ticket(&self) -> Ticket {
        Ticket {
            arrived: self.arrived.clone(),
            expected: self.expected,
            used: false,
        }
    }
}

impl Ticket {
    /// Arrives and waits (at most [`GATE_WAIT`]) for every other client.
    async fn wait(&mut self) {
        if !self.used {
            self.used = true;
            self.arrived.send_modify(|n| *n += 1);
        }
        let mut rx = self.arrived.subscribe();
        let expected = self.expected;
        let _ = tokio::time::timeout(GATE_WAIT, rx.wait_for(|n| *n >= expected)).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.used {
            self.arrived.send_modify(|n| *n += 1);
        }
    }
}

/// An error with its chain of sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// The value a round trip writes and expects back.
fn token(ns: &str, kind: &str) -> String {
    format!("{kind} round trip {ns} {}", std::process::id())
}

fn mismatch(wrote: &str, read: &str) -> String {
    format!("wrote {wrote:?} but read back {read:?}")
}

async fn redis_trip(url: String, ns: String, mut gate: Ticket) -> Result<Trip, String> {
    let client = redis::Client::open(url.as_str()).map_err(|e| format!("url `{url}`: {e}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("connecting to {url}: {}", chain(&e)))?;
    let key = format!("{ns}:smoke");
    let value = token(&ns, "redis");
    gate.wait().await;
    let started = Instant::now();
    let _: () = conn
        .set(&key, &value)
        .await
        .map_err(|e| format!("SET: {e}"))?;
    let read: Option<String> = conn.get(&key).await.map_err(|e| format!("GET: {e}"))?;
    let elapsed = started.elapsed();
    let _: Result<(), _> = conn.del(&key).await;
    match read {
        Some(read) if read == value => Ok(Trip {
            elapsed,
            instance: None,
        }),
        other => Err(mismatch(&value, other.as_deref().unwrap_or("(nil)"))),
    }
}

/// The server's own words when it sent any (`password authentication failed
/// for user "lab"`), else the client's error chain.
fn pg_why(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => chain(e),
    }
}

async fn postgres_trip(url: String, password: String, mut gate: Ticket) -> Result<Trip, String> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| format!("connection string: {e}"))?;
    let own_password = !password.is_empty();
    if own_password {
        config.password(password.as_bytes());
    }
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        let why = pg_why(&e);
        if own_password {
            format!("{why} (the client logged in with the `postgres_password` parameter, not the password of the connection string)")
        } else {
            why
        }
    })?;
    // The connection object does the I/O; it ends when the client is dropped.
    let io = tokio::spawn(connection);
    let result = async {
        client
            .batch_execute("CREATE TEMP TABLE smoke (id integer PRIMARY KEY, note text NOT NULL)")
            .await
            .map_err(|e| format!("CREATE TABLE: {}", pg_why(&e)))?;
        let value = token("", "postgres");
        gate.wait().await;
        let started = Instant::now();
        client
            .execute(
                "INSERT INTO smoke (id, note) VALUES ($1, $2)",
                &[&1i32, &value],
            )
            .await
            .map_err(|e| format!("INSERT: {}", pg_why(&e)))?;
        let row = client
            .query_one("SELECT note FROM smoke WHERE id = $1", &[&1i32])
            .await
            .map_err(|e| format!("SELECT: {}", pg_why(&e)))?;
        let elapsed = started.elapsed();
        let read: String = row.try_get(0).map_err(|e| format!("SELECT: {e}"))?;
        if read == value {
            Ok(Trip {
                elapsed,
                instance: None,
            })
        } else {
            Err(mismatch(&value, &read))
        }
    }
    .await;
    drop(client);
    let _ = io.await;
    result
}

async fn rabbitmq_trip(url: String, ns: String, mut gate: Ticket) -> Result<Trip, String> {
    let e = |e: ExerciseError| e.0;
    let uri = amqp::parse_uri(&url).map_err(e)?;
    let conn = amqp::connect(&uri, &format!("{ns} smoke"))
        .await
        .map_err(e)?;
    let result = async {
        let ch = amqp::confirming_channel(&conn).await.map_err(e)?;
        let queue = format!("{ns}:smoke");
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
        .map_err(|e| format!("declaring queue {queue}: {e}"))?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "smoke".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming from {queue}: {e}"))?;
        let value = token(&ns, "rabbitmq");
        gate.wait().await;
        let started = Instant::now();
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                value.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .map_err(|e| format!("publishing: {e}"))?
            .await
            .map_err(|e| format!("waiting for the publisher confirm: {e}"))?;
        if !confirm.is_ack() {
            return Err("the broker refused the message (nack)".to_string());
        }
        let delivery = consumer
            .next()
            .await
            .ok_or("the consumer's stream ended before the message came back")?
            .map_err(|e| format!("consuming: {e}"))?;
        let elapsed = started.elapsed();
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| format!("acknowledging: {e}"))?;
        let read = String::from_utf8_lossy(&delivery.data);
        if read == value {
            Ok(Trip {
                elapsed,
                instance: None,
            })
        } else {
            Err(mismatch(&value, &read))
        }
    }
    .await;
    let _ = conn.close(200, "OK".into()).await;
    result
}

async fn kafka_trip(bootstrap: String, ns: String, mut gate: Ticket) -> Result<Trip, String> {
    let e = |e: ExerciseError| e.0;
    let topic = kafka::topic_name(&ns, "smoke");
    kafka::create_topic(&bootstrap, &topic, 1)
        .await
        .map_err(e)?;
    let result = async {
        let producer = kafka::producer(&bootstrap).map_err(e)?;
        // assign() needs a group id (librdkafka keeps assignments in the
        // group's state) but, unlike subscribe(), joins no group. tansu holds
        // every fetch for the full fetch.wait.max.ms before answering.
        let consumer: StreamConsumer = kafka::consumer_config(&bootstrap, &topic, "earliest", 10)
            .create()
            .map_err(|e| format!("creating a consumer: {e}"))?;
        let value = token(&ns, "kafka");
        gate.wait().await;
        let started = Instant::now();
        let delivered = producer
            .send(
                FutureRecord::to(&topic).key("smoke").payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| format!("producing to {topic}: {e}"))?;
        // No group: read the partition from the offset just written.
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(
                &topic,
                delivered.partition,
                Offset::Offset(delivered.offset),
            )
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
        if read == value {
            Ok(Trip {
                elapsed,
                instance: None,
            })
        } else {
            Err(mismatch(&value, &read))
        }
    }
    .await;
    let _ = kafka::delete_topic(&bootstrap, &topic).await;
    result
}

/// `mqtt://HOST:PORT` → (host, port).
fn mqtt_address(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("`{url}` is not an mqtt:// URL"))?;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(|| format!("`{url}` has no port"))?;
    let port = port.parse().map_err(|_| format!("`{url}`: bad port"))?;
    Ok((host.to_string(), port))
}

/// The namespace as an MQTT topic (no wildcards) and a client id.
fn mqtt_safe(ns: &str) -> String {
    ns.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

async fn mqtt_trip(url: String, ns: String, mut gate: Ticket) -> Result<Trip, String> {
    let (host, port) = mqtt_address(&url)?;
    let safe = mqtt_safe(&ns);
    let topic = format!("infralab/smoke/{safe}");
    let mut options = MqttOptions::new(format!("{safe}-smoke"), host, port);
    // Long enough not to matter while the client waits at the gate.
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let value = token(&ns, "mqtt");
    let mut started: Option<Instant> = None;
    let result = loop {
        let event = match eventloop.poll().await {
            Ok(event) => event,
            Err(e) => break Err(format!("connection to {url}: {}", chain(&e))),
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                if let Err(e) = client.try_subscribe(&topic, QoS::AtLeastOnce) {
                    break Err(format!("subscribing: {e}"));
                }
            }
            Event::Incoming(Packet::SubAck(_)) => {
                gate.wait().await;
                started = Some(Instant::now());
                if let Err(e) = client.try_publish(&topic, QoS::AtLeastOnce, false, value.clone()) {
                    break Err(format!("publishing: {e}"));
                }
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == topic => {
                let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
                let read = String::from_utf8_lossy(&p.payload);
                break if read == value {
                    Ok(Trip {
                        elapsed,
                        instance: None,
                    })
                } else {
                    Err(mismatch(&value, &read))
                };
            }
            _ => {}
        }
    };
    mqtt::disconnect(&client, &mut eventloop).await;
    result
}

async fn http_trip(url: String, path: String, mut gate: Ticket) -> Result<Trip, String> {
    let client = http::builder(Duration::from_secs(10))
        .build()
        .map_err(|e| http::error_chain(&e))?;
    let target = format!(
        "{}/{}",
        url.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    gate.wait().await;
    let started = Instant::now();
    let response = client
        .get(&target)
        .send()
        .await
        .map_err(|e| format!("GET {target}: {}", http::error_chain(&e)))?;
    let status = response.status();
    let header = http::instance(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {target}: reading the body: {}", http::error_chain(&e)))?;
    let elapsed = started.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("GET {target} answered {status} {first}"));
    }
    let from_body = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("instance")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    Ok(Trip {
        elapsed,
        instance: header.or(from_body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_and_topics() {
        assert_eq!(
            mqtt_address("mqtt://127.0.0.1:41883").unwrap(),
            ("127.0.0.1".to_string(), 41883)
        );
        assert!(mqtt_address("http://127.0.0.1:1").is_err());
        assert_eq!(
            mqtt_safe("infralab:ab12:round-trips"),
            "infralab-ab12-round-trips"
        );
        assert!(!mqtt_safe("a/+/#").contains(['+', '#', '/']));
    }

    #[test]
    fn declares_no_needs_and_a_text_password_param() {
        assert!(Smoke.needs().is_empty());
        let p = Smoke.params();
        assert_eq!(p[0].name, "postgres_password");
        assert!(p[0].check(&Value::from("wrong")).is_ok());
        assert!(p[0].check(&Value::from(3)).is_err());
    }

    #[test]
    fn a_failed_round_trip_is_false_with_its_cause_and_the_others_still_count() {
        let obs = observe(
            vec![
                (
                    "redis",
                    Ok(Trip {
                        elapsed: Duration::from_millis(2),
                        instance: None,
                    }),
                ),
                (
                    "postgres",
                    Err("password authentication failed for user \"lab\"".into()),
                ),
            ],
            2,
        );
        assert_eq!(obs["redis_ok"], true);
        assert_eq!(obs["redis_ms"], 2.0);
        assert!(!obs.contains_key("redis_error"));
        assert_eq!(obs["postgres_ok"], false);
        assert_eq!(
            obs["postgres_error"],
            "password authentication failed for user \"lab\""
        );
        assert!(!obs.contains_key("postgres_ms"));
        assert_eq!(obs["services_checked"], 2);
        assert_eq!(obs["services_ok"], 1);
    }

    #[tokio::test]
    async fn the_gate_opens_when_every_client_arrived_or_gave_up() {
        let gate = Gate::new(3);
        let (mut a, mut b, gone) = (gate.ticket(), gate.ticket(), gate.ticket());
        // A client that failed during setup drops its ticket: it counts as arrived.
        drop(gone);
        let started = Instant::now();
        tokio::join!(a.wait(), b.wait());
        assert!(started.elapsed() < GATE_WAIT / 2);
    }
}
