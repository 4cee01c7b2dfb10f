//! `fanout`: events published into Redis reach `clients` clients through the
//! agent's event routes (see `agent::events`): pushed over WebSockets, or
//! fetched by polling over HTTP every `poll_ms`.
//!
//! The exercise publishes `events` events at `rate` a second, each carrying
//! its sequence number and the host clock at publication, so every client
//! times each delivery on the same clock. The milestone `half-published` is
//! recorded halfway; a lab may restart the hub then. A WebSocket client whose
//! connection ends connects again (every 50 ms until it gets through), with
//! `from=` its last stream id when `resume` is set. A client is done once it
//! has the last event, or 3 s after the last publication.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::agent::events::{Event, FIELD, Polled};
use crate::catalog::Endpoint;
use crate::client::{http, redis as redis_client};
use crate::stats::{join_workers, pacer, percentile, ratio};

const HALF_PUBLISHED: &str = "half-published";
const PUBLISHED: &str = "published";

/// How long clients wait for stragglers after the last publication.
const GRACE: Duration = Duration::from_secs(3);

/// Between two connection attempts to a hub that is down.
const RECONNECT_EVERY: Duration = Duration::from_millis(50);

/// The `fanout` exercise.
pub struct Fanout;

/// What one client got.
#[derive(Debug, Default)]
struct Got {
    seqs: BTreeSet<u64>,
    duplicates: u64,
    latencies_ms: Vec<f64>,
    requests: u64,
    empty_polls: u64,
    reconnects: u64,
}

impl Got {
    fn take(&mut self, event: &Event) {
        let Some((seq, sent_us)) = event
            .d
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        else {
            return;
        };
        if !self.seqs.insert(seq) {
            self.duplicates += 1;
            return;
        }
        self.latencies_ms
            .push(now_us().saturating_sub(sent_us) as f64 / 1000.0);
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What every client needs to know.
#[derive(Clone)]
struct Plan {
    base: String,
    ws_base: String,
    key: String,
    last_seq: u64,
    mode: String,
    resume: bool,
    poll: Duration,
    /// Set once everything is published: clients give up `GRACE` later.
    published: tokio::sync::watch::Receiver<Option<Instant>>,
}

impl Plan {
    fn deadline(&self) -> Option<Instant> {
        self.published.borrow().map(|at| at + GRACE)
    }

    fn over(&self, got: &Got) -> bool {
        got.seqs.contains(&self.last_seq) || self.deadline().is_some_and(|d| Instant::now() >= d)
    }
}

#[async_trait]
impl Exercise for Fanout {
    fn name(&self) -> &'static str {
        "fanout"
    }

    fn summary(&self) -> &'static str {
        "events from Redis to many clients through the agent: WebSocket push against HTTP polling, delivery latency and requests, and what a hub restart costs"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["agent", "redis"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "transport",
                &["websocket", "polling"],
                "websocket",
                "how clients get events: pushed over a WebSocket, or polled over HTTP",
            ),
            ParamSpec::choice(
                "mode",
                &["stream", "pubsub"],
                "stream",
                "where the hub reads events: a Redis stream (ids, replayable) or pub/sub (fire and forget)",
            ),
            ParamSpec::flag(
                "resume",
                true,
                "a WebSocket client reconnects with `from=` its last stream id",
            ),
            ParamSpec::text("hub", "hub", "the agent service the clients connect to"),
            ParamSpec::int("clients", 1, 500, 20, "connected clients"),
            ParamSpec::int("events", 2, 100_000, 300, "events published"),
            ParamSpec::int("rate", 1, 10_000, 50, "events published a second"),
            ParamSpec::int(
                "poll_ms",
                10,
                60_000,
                1_000,
                "`polling`: how often each client asks for new events",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("published", "events published into Redis"),
                ObsSpec::number(
                    "deliveries",
                    "distinct events received, summed over the clients",
                ),
                ObsSpec::number(
                    "missed",
                    "events a client never received, summed over the clients",
                ),
                ObsSpec::number("duplicates", "events a client received more than once"),
                ObsSpec::number(
                    "latency_p50_ms",
                    "median time from publication to a client having the event",
                ),
                ObsSpec::number("latency_p99_ms", "its 99th percentile"),
                ObsSpec::number(
                    "requests",
                    "HTTP requests the clients made: WebSocket handshakes, or polls",
                ),
                ObsSpec::number("empty_polls", "polls that brought nothing new"),
                ObsSpec::number("requests_per_delivery", "requests ÷ deliveries"),
                ObsSpec::number(
                    "reconnects",
                    "times a WebSocket client connected again after its connection ended",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(HALF_PUBLISHED, "half of the events are published"),
                Milestone::new(PUBLISHED, "every event is published"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let hub = ctx
            .instances(ctx.text("hub"), "agent", "hub")?
            .first()
            .copied()
            .cloned()
            .ok_or_else(|| ExerciseError("no hub".into()))?;
        let redis = ctx.service("redis")?;
        let (published_tx, published) = tokio::sync::watch::channel(None);
        let plan = plan(ctx, &hub, published);
        let clients = (0..ctx.int("clients"))
            .map(|_| {
                let plan = plan.clone();
                match ctx.text("transport") {
                    "polling" => tokio::spawn(poller(plan)),
                    _ => tokio::spawn(subscriber(plan)),
                }
            })
            .collect::<Vec<_>>();
        let publisher = Publisher::connect(redis, &plan).await?;
        publisher
            .until_subscribed(ctx.int("clients") as u64)
            .await?;
        publisher
            .publish(ctx, ctx.int("events") as u64, ctx.int("rate") as f64)
            .await?;
        published_tx.send_replace(Some(Instant::now()));
        ctx.mark(PUBLISHED);
        let got = join_workers(clients).await?;
        Ok(observe(&got, ctx.int("events") as u64))
    }
}

fn plan(
    ctx: &Ctx,
    hub: &Endpoint,
    published: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Plan {
    let base = hub.url.trim_end_matches('/').to_string();
    Plan {
        ws_base: base.replacen("http://", "ws://", 1),
        base,
        key: format!("{}:events", ctx.namespace),
        last_seq: ctx.int("events") as u64 - 1,
        mode: match ctx.text("transport") {
            "polling" => "stream".into(),
            _ => ctx.text("mode").to_string(),
        },
        resume: ctx.flag("resume"),
        poll: Duration::from_millis(ctx.int("poll_ms") as u64),
        published,
    }
}

/// Publishes into Redis from the host.
struct Publisher {
    conn: redis::aio::MultiplexedConnection,
    key: String,
    pubsub: bool,
}

impl Publisher {
    async fn connect(redis: &Endpoint, plan: &Plan) -> Result<Publisher, ExerciseError> {
        Ok(Publisher {
            conn: redis_client::connect(redis).await?,
            key: plan.key.clone(),
            pubsub: plan.mode == "pubsub",
        })
    }

    /// Pub/sub keeps nothing for late subscribers: wait until the hub has
    /// subscribed for every client before the first event (a stream client
    /// starts from the stream's beginning and needs no wait).
    async fn until_subscribed(&self, clients: u64) -> Result<(), ExerciseError> {
        if !self.pubsub {
            return Ok(());
        }
        let start = Instant::now();
        let mut conn = self.conn.clone();
        loop {
            let (_, n): (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&self.key)
                .query_async::<Vec<(String, u64)>>(&mut conn)
                .await
                .doing("counting subscribers")?
                .into_iter()
                .next()
                .unwrap_or_default();
            if n >= clients {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(ExerciseError(format!(
                    "only {n} of {clients} clients subscribed within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn publish(&self, ctx: &Ctx, events: u64, rate: f64) -> Result<(), ExerciseError> {
        let mut tick = pacer(rate);
        let mut conn = self.conn.clone();
        for seq in 0..events {
            tick.tick().await;
            let d = format!("{seq}:{}", now_us());
            let mut cmd = match self.pubsub {
                true => redis::cmd("PUBLISH"),
                false => redis::cmd("XADD"),
            };
            match self.pubsub {
                true => cmd.arg(&self.key).arg(&d),
                false => cmd.arg(&self.key).arg("*").arg(FIELD).arg(&d),
            };
            cmd.query_async::<redis::Value>(&mut conn)
                .await
                .doing("publishing an event")?;
            if seq + 1 == events / 2 {
                ctx.mark(HALF_PUBLISHED);
            }
        }
        Ok(())
    }
}

/// A WebSocket client: reads until done, connecting again whenever its
/// connection ends.
async fn subscriber(plan: Plan) -> Result<Got, ExerciseError> {
    let mut got = Got::default();
    // Start from the stream's beginning: the stream is new for this run.
    let mut last_id = "0-0".to_string();
    let mut first = true;
    while !plan.over(&got) {
        let from = match (first || plan.resume, plan.mode.as_str()) {
            (true, "stream") => format!("&from={last_id}"),
            _ => String::new(),
        };
        let url = format!(
            "{}/events/ws?key={}&mode={}{from}",
            plan.ws_base, plan.key, plan.mode
        );
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(RECONNECT_EVERY).await;
            continue;
        };
        got.requests += 1;
        if !first {
            got.reconnects += 1;
        }
        first = false;
        loop {
            let wait = plan
                .deadline()
                .map_or(Duration::from_millis(200), |d| {
                    d.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(200));
            match tokio::time::timeout(wait, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    if let Ok(event) = serde_json::from_str::<Event>(&text) {
                        if let Some(id) = &event.id {
                            last_id = id.clone();
                        }
                        got.take(&event);
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                Ok(Some(Ok(_))) => {}
                Err(_) => {}
            }
            if plan.over(&got) {
                let _ = ws.close(None).await;
                return Ok(got);
            }
        }
    }
    Ok(got)
}

/// A polling client: asks for what is new every `poll`.
async fn poller(plan: Plan) -> Result<Got, ExerciseError> {
    let client = http::client(Duration::from_secs(10))?;
    let mut got = Got::default();
    let mut since = "0-0".to_string();
    let mut tick = pacer(1.0 / plan.poll.as_secs_f64());
    while !plan.over(&got) {
        tick.tick().await;
        got.requests += 1;
        let url = format!("{}/events/poll?key={}&since={since}", plan.base, plan.key);
        let polled: Polled = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            _ => continue,
        };
        if polled.events.is_empty() {
            got.empty_polls += 1;
        }
        for event in &polled.events {
            if let Some(id) = &event.id {
                since = id.clone();
            }
            got.take(event);
        }
    }
    Ok(got)
}

fn observe(got: &[Got], published: u64) -> Observations {
    let deliveries: u64 = got.iter().map(|g| g.seqs.len() as u64).sum();
    let requests: u64 = got.iter().map(|g| g.requests).sum();
    let mut latencies: Vec<f64> = got
        .iter()
        .flat_map(|g| g.latencies_ms.iter().copied())
        .collect();
    let mut obs = Observations::new();
    obs.insert("published".into(), json!(published));
    obs.insert("deliveries".into(), json!(deliveries));
    obs.insert(
        "missed".into(),
        json!((published * got.len() as u64).saturating_sub(deliveries)),
    );
    obs.insert(
        "duplicates".into(),
        json!(got.iter().map(|g| g.duplicates).sum::<u64>()),
    );
    obs.insert(
        "latency_p50_ms".into(),
        json!(percentile(&mut latencies, 50.0).map(crate::stats::round2)),
    );
    obs.insert(
        "latency_p99_ms".into(),
        json!(percentile(&mut latencies, 99.0).map(crate::stats::round2)),
    );
    obs.insert("requests".into(), json!(requests));
    obs.insert(
        "empty_polls".into(),
        json!(got.iter().map(|g| g.empty_polls).sum::<u64>()),
    );
    obs.insert(
        "requests_per_delivery".into(),
        json!(ratio(requests as f64, deliveries as f64)),
    );
    obs.insert(
        "reconnects".into(),
        json!(got.iter().map(|g| g.reconnects).sum::<u64>()),
    );
    obs
}
