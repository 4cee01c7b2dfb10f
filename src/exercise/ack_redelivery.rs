//! `ack-redelivery`: a RabbitMQ consumer dies while it holds messages, and a
//! second consumer takes over.
//!
//! The producer puts M messages in a queue (publisher confirms on). Consumer A
//! connects through a local TCP relay, handles `kill_after` messages and is
//! then killed: the relay closes both sockets at once, so the broker sees the
//! connection vanish without an AMQP `connection.close`, exactly as when the
//! process crashes. Consumer B then drains the queue.
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

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::Value;

use super::amqp;
use super::{Context, Ctx, Exercise, ExerciseError, ObsSpec, Observations, ParamSpec};

/// The `ack-redelivery` exercise.
pub struct AckRedelivery;

/// How long the doomed consumer may wait for a message before the exercise gives up.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(10);
/// How long to wait for the broker to fill the doomed consumer's prefetch window.
const SETTLE_DEADLINE: Duration = Duration::from_secs(2);

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
                "messages the first consumer handles before it is killed",
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
                "the second consumer stops after this long without a delivery",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("published", "messages confirmed into the queue (M)"),
                ObsSpec::number(
                    "killed_consumer_handled",
                    "messages the first consumer handled (did the work for) before it died",
                ),
                ObsSpec::number(
                    "in_flight_at_kill",
                    "messages sent to the first consumer and not acknowledged when it died \
                      (M − acknowledged − ready in the queue, as the broker counts them)",
                ),
                ObsSpec::number(
                    "redelivered",
                    "deliveries the second consumer got with the redelivered flag set",
                ),
                ObsSpec::number(
                    "delivered_total",
                    "messages handled by both consumers together",
                ),
                ObsSpec::number("duplicates", "messages handled more than once"),
                ObsSpec::number("lost", "messages never handled by anyone"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let messages = ctx.int("messages") as u32;
        let kill_after = ctx.int("kill_after") as u32;
        let crash_after_work = ctx.flag("crash_after_work");
        if kill_after + u32::from(crash_after_work) > messages {
            return Err(ExerciseError(format!(
                "kill_after ({kill_after}) leaves no message in flight: it must be below messages ({messages})"
            )));
        }
        let uri = amqp::parse_uri(&ctx.service("rabbitmq")?.url)?;
        let ns = &ctx.namespace;
        let admin = amqp::connect(&uri, &format!("{ns} producer")).await?;
        let ch = amqp::confirming_channel(&admin).await?;
        let queue = format!("{ns}:tasks");
        amqp::declare_shared_queue(&ch, &queue).await?;
        let result = scenario(ctx, &uri, &ch, &queue).await;
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = admin.close(200, "OK".into()).await;
        result
    }
}

async fn scenario(
    ctx: &Ctx,
    uri: &lapin::uri::AMQPUri,
    admin: &Channel,
    queue: &str,
) -> Result<Observations, ExerciseError> {
    let ns = &ctx.namespace;
    let messages = ctx.int("messages") as u32;
    let manual = ctx.text("ack_mode") == "manual";
    let prefetch = ctx.int("prefetch").min(u16::MAX as i64) as u16;
    let kill_after = ctx.int("kill_after") as usize;
    let crash_after_work = ctx.flag("crash_after_work");
    let work = Duration::from_millis(ctx.int("work_ms") as u64);
    let idle = Duration::from_millis(ctx.int("idle_ms") as u64);
    let origin = Instant::now();

    // The producer: M messages, each confirmed by the broker.
    let mut confirms = Vec::with_capacity(messages as usize);
    for id in 0..messages {
        confirms.push(
            admin
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &amqp::payload(id, origin),
                    BasicProperties::default(),
                )
                .await
                .doing("publishing")?,
        );
    }
    for c in confirms {
        if !c.await.doing("waiting for a publisher confirm")?.is_ack() {
            return Err(ExerciseError("the broker refused a message (nack)".into()));
        }
    }
    ctx.mark("published");

    // Consumer A, through a relay that can be cut like a crashing process.
    let relay = amqp::Severable::to(amqp::broker_addr(uri).await?).await?;
    let conn_a = amqp::connect(&relay.uri(uri), &format!("{ns} consumer A")).await?;
    let ch_a = conn_a
        .create_channel()
        .await
        .doing("opening consumer A's channel")?;
    if manual {
        ch_a.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .doing("setting the prefetch window (basic.qos)")?;
    }
    let mut consumer_a = ch_a
        .basic_consume(
            queue.into(),
            "consumer-a".into(),
            BasicConsumeOptions {
                no_ack: !manual,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .doing("starting consumer A")?;
    ctx.mark("consumer-a-started");

    let mut handled = Vec::new();
    let mut acked = 0u32;
    let to_handle = kill_after + usize::from(crash_after_work);
    while handled.len() < to_handle {
        let delivery = tokio::time::timeout(RECEIVE_DEADLINE, consumer_a.next())
            .await
            .map_err(|_| ExerciseError("consumer A received nothing for 10 s".into()))?
            .ok_or_else(|| ExerciseError("consumer A's stream ended".into()))?
            .doing("consumer A receiving")?;
        let (id, _) = amqp::read_payload(&delivery.data, origin)?;
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        handled.push(id);
        let dies_before_ack = crash_after_work && handled.len() == to_handle;
        if manual && !dies_before_ack {
            delivery
                .ack(BasicAckOptions::default())
                .await
                .doing("consumer A acknowledging")?;
            acked += 1;
        }
    }
    if !manual {
        // Auto-ack: the broker counted each message as done when it sent it.
        acked = handled.len() as u32;
    }
    // A round trip on A's channel: the broker has processed every ack sent before it.
    ch_a.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .doing("consumer A's channel round trip")?;
    // Let the broker top the window up again: A then holds min(prefetch, rest)
    // (manual acks) or everything left (auto-ack, or no prefetch limit).
    let rest = i64::from(messages) - i64::from(acked);
    let window = if manual && prefetch > 0 {
        rest.min(i64::from(prefetch))
    } else {
        rest
    };
    let settle_until = Instant::now() + SETTLE_DEADLINE;
    let in_flight = loop {
        let ready = amqp::ready_count(admin, queue).await?;
        let in_flight = rest - i64::from(ready);
        if in_flight >= window || Instant::now() >= settle_until {
            break in_flight;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ctx.mark("consumer-a-holding");

    relay.cut().await;
    drop(consumer_a);
    drop(ch_a);
    drop(conn_a);
    ctx.mark("consumer-a-killed");

    // Consumer B: manual acks, drains whatever the broker still has.
    let conn_b = amqp::connect(uri, &format!("{ns} consumer B")).await?;
    let ch_b = conn_b
        .create_channel()
        .await
        .doing("opening consumer B's channel")?;
    ch_b.basic_qos(50, BasicQosOptions::default())
        .await
        .doing("setting consumer B's prefetch")?;
    let mut consumer_b = ch_b
        .basic_consume(
            queue.into(),
            "consumer-b".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .doing("starting consumer B")?;
    ctx.mark("consumer-b-started");
    let mut redelivered = 0u32;
    let handled_by_a = handled.len();
    while let Ok(Some(delivery)) = tokio::time::timeout(idle, consumer_b.next()).await {
        let delivery = delivery.doing("consumer B receiving")?;
        let (id, _) = amqp::read_payload(&delivery.data, origin)?;
        redelivered += u32::from(delivery.redelivered);
        handled.push(id);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .doing("consumer B acknowledging")?;
    }
    ctx.mark("consumer-b-idle");
    drop(consumer_b);
    let _ = ch_b.close(200, "OK".into()).await;
    let _ = conn_b.close(200, "OK".into()).await;

    Ok(observe(
        messages,
        &handled,
        handled_by_a,
        in_flight,
        redelivered,
    ))
}

fn observe(
    messages: u32,
    handled: &[u32],
    handled_by_a: usize,
    in_flight: i64,
    redelivered: u32,
) -> Observations {
    let unique = handled
        .iter()
        .filter(|&&id| id < messages)
        .collect::<HashSet<_>>()
        .len();
    Observations::from([
        ("published".into(), Value::from(messages)),
        ("killed_consumer_handled".into(), Value::from(handled_by_a)),
        ("in_flight_at_kill".into(), Value::from(in_flight)),
        ("redelivered".into(), Value::from(redelivered)),
        ("delivered_total".into(), Value::from(handled.len())),
        ("duplicates".into(), Value::from(handled.len() - unique)),
        ("lost".into(), Value::from(messages as usize - unique)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_duplicates_come_from_the_handled_ids() {
        let obs = observe(5, &[0, 1, 1, 3], 2, 2, 1);
        assert_eq!(obs["delivered_total"], 4);
        assert_eq!(obs["duplicates"], 1);
        assert_eq!(obs["lost"], 2);
        assert_eq!(obs["killed_consumer_handled"], 2);
    }
}
