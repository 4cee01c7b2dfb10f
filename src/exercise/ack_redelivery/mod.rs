//! `ack-redelivery`: a RabbitMQ consumer dies while it holds messages, and a
//! second consumer takes over.
//!
//! The producer puts M messages in a queue (publisher confirms on). Consumer A
//! connects through a local TCP [`Relay`], handles `kill_after` messages and is
//! then killed: the relay closes both sockets at once, so the broker sees the
//! connection vanish without an AMQP `connection.close`, exactly as when the
//! process crashes. Once the broker has noticed (the queue reports no
//! consumer), consumer B drains the queue.
//!
//! - `ack_mode: manual`: A acknowledges each message after its work. What A
//!   held unacknowledged when it died (up to `prefetch`) goes back to the
//!   queue and reaches B with the `redelivered` flag: nothing is lost. With
//!   `crash_after_work: true` A finishes one more message's work but dies
//!   before acknowledging it, so B handles it a second time (at-least-once:
//!   a duplicate).
//! - `ack_mode: auto`: the broker counts a message as done when it sends it.
//!   It pushes the whole queue to A at once (prefetch does not apply to
//!   auto-ack consumers); what A had received but not handled dies with it.
//!
//! What A and B handled comes from the message ids they received; what A
//! held and what came back come from the broker's own queue counts.
//!
//! With a challenge scenario and `--solution`, the exercise is the harness
//! of the learner's consumer instead ([`challenge`]).

mod challenge;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::amqp::{self, QueueState};
use crate::client::relay::Relay;

/// The `ack-redelivery` exercise.
pub struct AckRedelivery;

/// How long the doomed consumer may wait for a message before the exercise gives up.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait for the broker to fill the doomed consumer's window, or to
/// notice its death; both usually take milliseconds, and the waits end on the
/// event, so a wide margin costs nothing on a quiet machine.
const BROKER_DEADLINE: Duration = Duration::from_secs(10);
/// How often the broker's queue counts are read while waiting for it.
const POLL: Duration = Duration::from_millis(20);

#[async_trait]
impl Exercise for AckRedelivery {
    fn name(&self) -> &'static str {
        "ack-redelivery"
    }

    fn summary(&self) -> &'static str {
        "a RabbitMQ consumer is killed while holding messages; manual acks redeliver them, auto-ack loses them"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["rabbitmq"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "ack_mode",
                &["manual", "auto"],
                "manual",
                "manual: ack after the work; auto: the broker forgets a message once sent",
            ),
            ParamSpec::int("messages", 1, 100_000, 200, "messages in the queue (M)"),
            ParamSpec::int(
                "prefetch",
                0,
                10_000,
                10,
                "unacknowledged messages the consumer may hold (basic.qos); 0 = unlimited",
            ),
            ParamSpec::int(
                "kill_after",
                0,
                100_000,
                20,
                "messages the first consumer handles before it is killed (challenge: the report after which `mid-work` comes)",
            ),
            ParamSpec::int("work_ms", 0, 1000, 5, "work per message"),
            ParamSpec::flag(
                "crash_after_work",
                false,
                "the first consumer does one more message's work but dies before acking it",
            ),
            ParamSpec::int(
                "idle_ms",
                50,
                60_000,
                500,
                "the second consumer stops after this long without a delivery, once the broker has nothing ready",
            ),
            ParamSpec::int(
                "consumers",
                1,
                64,
                2,
                "challenge: instances of the learner's consumer",
            ),
            ParamSpec::int(
                "refuse_every",
                0,
                100_000,
                0,
                "challenge: the sink refuses (503) the first report of every id that is a multiple of this; 0 = never",
            ),
            ParamSpec::int(
                "stall_ms",
                100,
                600_000,
                3000,
                "challenge: this long without a new id in the sink ends the scenario (the harness stops the program)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "published",
                    "messages the broker confirmed into the queue (publisher confirms)",
                ),
                ObsSpec::number(
                    "killed_consumer_handled",
                    "messages the first consumer handled (did the work for) before it died",
                ),
                ObsSpec::number(
                    "in_flight_at_kill",
                    "messages sent to the first consumer and not acknowledged when it died \
                      (published − acknowledged − ready in the queue, as the broker counts them)",
                ),
                ObsSpec::number(
                    "requeued",
                    "messages the broker put back in the queue when the first consumer died \
                      (its ready count after the death minus before)",
                ),
                ObsSpec::number(
                    "redelivered",
                    "deliveries the second consumer got with the redelivered flag set",
                ),
                ObsSpec::number(
                    "delivered_total",
                    "messages handled by both consumers together",
                ),
                ObsSpec::number(
                    "duplicates",
                    "messages handled more than once (challenge: ids the sink accepted again)",
                ),
                ObsSpec::number(
                    "lost",
                    "messages never handled by anyone (challenge: ids that never reached the sink \
                      and are no longer in the queue: the broker counted them as done)",
                ),
                ObsSpec::number("processed", "challenge: distinct ids the sink accepted"),
                ObsSpec::number(
                    "left_in_queue",
                    "challenge: messages still in the queue once the program was stopped \
                      and never reported to the sink (not done, but not lost)",
                ),
                ObsSpec::number(
                    "refused",
                    "challenge: reports the sink refused (503), as refuse_every asks",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("published", "every message is confirmed into the queue"),
                Milestone::new("consumer-a-started", "the doomed consumer is subscribed"),
                Milestone::new(
                    "consumer-a-holding",
                    "the doomed consumer did its work and the broker filled its window",
                ),
                Milestone::new(
                    "consumer-a-killed",
                    "the doomed consumer's connection was cut",
                ),
                Milestone::new(
                    "consumer-a-gone",
                    "the broker noticed: the queue has no consumer left",
                ),
                Milestone::new("consumer-b-started", "the second consumer is subscribed"),
                Milestone::new("consumer-b-idle", "the second consumer drained the queue"),
                Milestone::new(
                    "subscribed",
                    "challenge: the broker lists one consumer per instance on the queue (before publishing)",
                ),
                Milestone::by_instance(
                    "mid-work",
                    "challenge: half of work_ms after the sink accepted the kill_after-th report: its instance \
                      should be inside its next message's work; `solution-at-mark` is that instance",
                ),
                Milestone::new(
                    "all-reported",
                    "challenge: every published id reached the sink",
                ),
            ]
        }
    }

    fn harness_env(&self) -> &'static [(&'static str, &'static str)] {
        &[
            (
                "QUEUE",
                "the queue to consume (it exists: durable, holds the message ids)",
            ),
            (
                "SINK_URL",
                "the sink: POST each finished message id (?instance=N), 200 accepted, 503 refused",
            ),
        ]
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        if let Some(solution) = ctx.solution() {
            return challenge::run(ctx, solution).await;
        }
        let plan = Plan::from(ctx);
        if plan.kill_after + usize::from(plan.crash_after_work) > plan.messages as usize {
            return Err(ExerciseError(format!(
                "kill_after ({}) must leave a message to hold: it must be below messages ({})",
                plan.kill_after, plan.messages
            )));
        }
        let uri = amqp::parse_uri(&ctx.service("rabbitmq")?.url)?;
        let ns = &ctx.namespace;
        let admin = amqp::connect(&uri, &format!("{ns} producer")).await?;
        let ch = amqp::confirming_channel(&admin).await?;
        let queue = format!("{ns}:tasks");
        amqp::declare_shared_queue(&ch, &queue).await?;
        let result = scenario(ctx, &plan, &uri, &ch, &queue).await;
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = admin.close(200, "OK".into()).await;
        result
    }
}

/// The scenario's parameters.
struct Plan {
    messages: u32,
    manual: bool,
    prefetch: u16,
    kill_after: usize,
    crash_after_work: bool,
    work: Duration,
    idle: Duration,
}

impl From<&Ctx> for Plan {
    fn from(ctx: &Ctx) -> Self {
        Plan {
            messages: ctx.int("messages") as u32,
            manual: ctx.text("ack_mode") == "manual",
            prefetch: ctx.int("prefetch").min(u16::MAX as i64) as u16,
            kill_after: ctx.int("kill_after") as usize,
            crash_after_work: ctx.flag("crash_after_work"),
            work: Duration::from_millis(ctx.int("work_ms") as u64),
            idle: Duration::from_millis(ctx.int("idle_ms") as u64),
        }
    }
}

/// The doomed consumer: its connection runs through a relay that can cut it.
struct Doomed {
    relay: Relay,
    /// Held until the cut and never closed: closing it would say goodbye.
    _conn: Connection,
    ch: Channel,
    consumer: Consumer,
}

/// What the broker and the doomed consumer reported around its death.
struct Death {
    /// Ids A handled (did the work for).
    handled: Vec<u32>,
    in_flight: i64,
    requeued: i64,
}

async fn scenario(
    ctx: &Ctx,
    plan: &Plan,
    uri: &AMQPUri,
    admin: &Channel,
    queue: &str,
) -> Result<Observations, ExerciseError> {
    let origin = Instant::now();
    let published =
        publish_all(admin, queue, plan.messages, |id| amqp::payload(id, origin)).await?;
    ctx.mark("published");

    let mut a = start_doomed(ctx, plan, uri, queue).await?;
    ctx.mark("consumer-a-started");
    let (handled, acked) = work_then_stop(plan, &mut a, origin).await?;
    let held = wait_for_window(plan, admin, queue, acked).await?;
    ctx.mark("consumer-a-holding");

    a.relay.cut_and_wait(BROKER_DEADLINE).await;
    drop(a);
    ctx.mark("consumer-a-killed");
    let after = wait_until_gone(admin, queue).await?;
    ctx.mark("consumer-a-gone");
    let death = Death {
        handled,
        in_flight: i64::from(plan.messages) - i64::from(acked) - i64::from(held.ready),
        requeued: i64::from(after.ready) - i64::from(held.ready),
    };

    let (by_b, redelivered) = drain(ctx, plan, uri, admin, queue, origin).await?;
    ctx.mark("consumer-b-idle");
    Ok(observe(
        plan.messages,
        published,
        &death,
        &by_b,
        redelivered,
    ))
}

/// Publishes M messages, ids 0..M with `body(id)`, and returns how many the
/// broker confirmed.
async fn publish_all(
    ch: &Channel,
    queue: &str,
    messages: u32,
    body: impl Fn(u32) -> Vec<u8>,
) -> Result<u32, ExerciseError> {
    let mut confirms = Vec::with_capacity(messages as usize);
    for id in 0..messages {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(id),
                BasicProperties::default(),
            )
            .await
            .doing("publishing")?,
        );
    }
    let mut confirmed = 0;
    for c in confirms {
        if c.await.doing("waiting for a publisher confirm")?.is_ack() {
            confirmed += 1;
        }
    }
    Ok(confirmed)
}

/// Consumer A, through a relay that can be cut like a crashing process.
async fn start_doomed(
    ctx: &Ctx,
    plan: &Plan,
    uri: &AMQPUri,
    queue: &str,
) -> Result<Doomed, ExerciseError> {
    let relay = Relay::start(amqp::address(uri))
        .await
        .doing("starting the relay")?;
    let conn = amqp::connect(
        &amqp::via_port(uri, relay.port()),
        &format!("{} consumer A", ctx.namespace),
    )
    .await?;
    let ch = conn
        .create_channel()
        .await
        .doing("opening consumer A's channel")?;
    if plan.manual {
        ch.basic_qos(plan.prefetch, BasicQosOptions::default())
            .await
            .doing("setting the prefetch window (basic.qos)")?;
    }
    let consumer = ch
        .basic_consume(
            queue.into(),
            "consumer-a".into(),
            BasicConsumeOptions {
                no_ack: !plan.manual,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .doing("starting consumer A")?;
    Ok(Doomed {
        relay,
        _conn: conn,
        ch,
        consumer,
    })
}

/// A handles `kill_after` messages (one more without its ack with
/// `crash_after_work`); returns the ids it handled and how many the broker
/// counts as done (acknowledged, or sent with auto-ack).
async fn work_then_stop(
    plan: &Plan,
    a: &mut Doomed,
    origin: Instant,
) -> Result<(Vec<u32>, u32), ExerciseError> {
    let mut handled = Vec::new();
    let mut acked = 0u32;
    let to_handle = plan.kill_after + usize::from(plan.crash_after_work);
    while handled.len() < to_handle {
        let delivery = tokio::time::timeout(RECEIVE_DEADLINE, a.consumer.next())
            .await
            .map_err(|_| ExerciseError("consumer A received nothing for 10 s".into()))?
            .ok_or_else(|| ExerciseError("consumer A's stream ended".into()))?
            .doing("consumer A receiving")?;
        let (id, _) = amqp::read_payload(&delivery.data, origin)?;
        if !plan.work.is_zero() {
            tokio::time::sleep(plan.work).await;
        }
        handled.push(id);
        let dies_before_ack = plan.crash_after_work && handled.len() == to_handle;
        if plan.manual && !dies_before_ack {
            delivery
                .ack(BasicAckOptions::default())
                .await
                .doing("consumer A acknowledging")?;
            acked += 1;
        }
    }
    if !plan.manual {
        // Auto-ack: the broker counted each message as done when it sent it.
        acked = handled.len() as u32;
    }
    // A round trip on A's channel: the broker has processed every ack sent before it.
    a.ch.basic_qos(plan.prefetch, BasicQosOptions::default())
        .await
        .doing("consumer A's channel round trip")?;
    Ok((handled, acked))
}

/// Waits until the broker has topped A's window up again: A then holds
/// min(prefetch, rest) (manual acks) or everything left (auto-ack, or no
/// prefetch limit). Returns the queue as the broker counts it then.
async fn wait_for_window(
    plan: &Plan,
    admin: &Channel,
    queue: &str,
    acked: u32,
) -> Result<QueueState, ExerciseError> {
    let rest = i64::from(plan.messages) - i64::from(acked);
    let window = if plan.manual && plan.prefetch > 0 {
        rest.min(i64::from(plan.prefetch))
    } else {
        rest
    };
    let until = Instant::now() + BROKER_DEADLINE;
    loop {
        let state = amqp::queue_state(admin, queue).await?;
        if rest - i64::from(state.ready) >= window || Instant::now() >= until {
            return Ok(state);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the broker has noticed A's death (the queue has no consumer);
/// by then it has requeued whatever A held unacknowledged.
async fn wait_until_gone(admin: &Channel, queue: &str) -> Result<QueueState, ExerciseError> {
    let until = Instant::now() + BROKER_DEADLINE;
    loop {
        let state = amqp::queue_state(admin, queue).await?;
        if state.consumers == 0 {
            return Ok(state);
        }
        if Instant::now() >= until {
            return Err(ExerciseError(format!(
                "the broker still lists consumer A {BROKER_DEADLINE:?} after its connection was cut"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Consumer B, manual acks: drains whatever the broker still has. It stops
/// once nothing arrived for `idle` and the broker has nothing ready.
/// Returns the ids it handled and how many came flagged `redelivered`.
async fn drain(
    ctx: &Ctx,
    plan: &Plan,
    uri: &AMQPUri,
    admin: &Channel,
    queue: &str,
    origin: Instant,
) -> Result<(Vec<u32>, u32), ExerciseError> {
    let conn = amqp::connect(uri, &format!("{} consumer B", ctx.namespace)).await?;
    let ch = conn
        .create_channel()
        .await
        .doing("opening consumer B's channel")?;
    ch.basic_qos(50, BasicQosOptions::default())
        .await
        .doing("setting consumer B's prefetch")?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "consumer-b".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .doing("starting consumer B")?;
    ctx.mark("consumer-b-started");
    let mut handled = Vec::new();
    let mut redelivered = 0u32;
    loop {
        let delivery = match tokio::time::timeout(plan.idle, consumer.next()).await {
            Ok(Some(d)) => d.doing("consumer B receiving")?,
            Ok(None) => break,
            Err(_) if amqp::queue_state(admin, queue).await?.ready == 0 => break,
            Err(_) => continue,
        };
        let (id, _) = amqp::read_payload(&delivery.data, origin)?;
        redelivered += u32::from(delivery.redelivered);
        handled.push(id);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .doing("consumer B acknowledging")?;
    }
    drop(consumer);
    let _ = ch.close(200, "OK".into()).await;
    let _ = conn.close(200, "OK".into()).await;
    Ok((handled, redelivered))
}

/// Turns what the consumers handled and the broker counted into observations.
fn observe(
    messages: u32,
    published: u32,
    death: &Death,
    by_b: &[u32],
    redelivered: u32,
) -> Observations {
    let all: Vec<u32> = death.handled.iter().chain(by_b).copied().collect();
    let unique = all
        .iter()
        .filter(|&&id| id < messages)
        .collect::<HashSet<_>>()
        .len();
    Observations::from([
        ("published".into(), Value::from(published)),
        (
            "killed_consumer_handled".into(),
            Value::from(death.handled.len()),
        ),
        ("in_flight_at_kill".into(), Value::from(death.in_flight)),
        ("requeued".into(), Value::from(death.requeued)),
        ("redelivered".into(), Value::from(redelivered)),
        ("delivered_total".into(), Value::from(all.len())),
        ("duplicates".into(), Value::from(all.len() - unique)),
        ("lost".into(), Value::from(messages as usize - unique)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_duplicates_come_from_the_handled_ids() {
        let death = Death {
            handled: vec![0, 1],
            in_flight: 2,
            requeued: 2,
        };
        let obs = observe(5, 5, &death, &[1, 3], 1);
        assert_eq!(obs["delivered_total"], 4);
        assert_eq!(obs["duplicates"], 1);
        assert_eq!(obs["lost"], 2);
        assert_eq!(obs["killed_consumer_handled"], 2);
        assert_eq!(obs["requeued"], 2);
        assert_eq!(obs["published"], 5);
    }

    #[test]
    fn every_recorded_milestone_is_declared() {
        let names: Vec<_> = AckRedelivery.milestones().iter().map(|m| m.name).collect();
        let src = [include_str!("mod.rs"), include_str!("challenge.rs")].concat();
        for line in src.lines() {
            if let Some(rest) = line.trim().strip_prefix("ctx.mark(\"") {
                let name = rest.split('"').next().unwrap();
                assert!(names.contains(&name), "{name}");
            }
        }
    }
}
