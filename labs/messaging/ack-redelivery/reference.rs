//! ack-redelivery, the reference solution: a work-queue consumer that loses
//! nothing when it is killed mid-work.
//!
//! - manual acknowledgements, and the ack only once the work is done and
//!   the sink has accepted the report: a message this instance dies with is
//!   still unacknowledged, so the broker gives it to another consumer;
//! - a bounded prefetch window (basic.qos), so a dying instance holds a
//!   few messages, not the whole queue, and the others share the work;
//! - a refused report (the sink answers 503) is not done: `basic.nack` with
//!   requeue puts the message back for another try.
//!
//! At-least-once: an instance killed after its report and before its ack
//! has that message done twice. The sink counts duplicates; they are
//! allowed, losses are not.
//!
//! The broken solutions beside this file reuse it with one mistake each
//! ([`Mistakes`]).
//!
//! Run it: `infralab run ack-redelivery --solution reference`.

use std::error::Error;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// The mistakes the broken solutions make (all false here).
#[derive(Default, Clone, Copy)]
pub struct Mistakes {
    /// Acknowledge on receipt, before the work.
    pub ack_before_work: bool,
    /// Reject a refused message without requeue (`requeue: false`).
    pub drop_on_error: bool,
    /// Never acknowledge.
    pub no_ack: bool,
}

/// What the environment says.
pub struct Contract {
    amqp_url: String,
    queue: String,
    sink: String,
    instance: String,
    prefetch: u16,
    work: Duration,
}

fn var(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run me with `infralab run ack-redelivery --solution CMD`")
            .into()
    })
}

fn number(name: &str) -> Result<u64, Box<dyn Error>> {
    Ok(var(name)?.parse().map_err(|e| format!("{name}: {e}"))?)
}

impl Contract {
    /// Reads the variables infralab sets.
    pub fn from_env() -> Result<Contract, Box<dyn Error>> {
        Ok(Contract {
            amqp_url: var("AMQP_URL")?,
            queue: var("QUEUE")?,
            sink: var("SINK_URL")?,
            instance: var("INFRALAB_INSTANCE")?,
            prefetch: number("INFRALAB_PARAM_PREFETCH")?.clamp(1, u64::from(u16::MAX)) as u16,
            work: Duration::from_millis(number("INFRALAB_PARAM_WORK_MS")?),
        })
    }
}

/// Consumes until stopped: work, report, then ack.
pub async fn run(mistakes: Mistakes) -> Result<(), Box<dyn Error>> {
    let c = Contract::from_env()?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let report = format!("{}?instance={}", c.sink, c.instance);
    let conn = Connection::connect(&c.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(c.prefetch, BasicQosOptions::default()).await?;
    let mut deliveries = ch
        .basic_consume(
            c.queue.as_str().into(),
            format!("instance-{}", c.instance).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("instance {}: consuming {}", c.instance, c.queue);

    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let id = String::from_utf8_lossy(&delivery.data).trim().to_string();
        if mistakes.ack_before_work {
            delivery.ack(BasicAckOptions::default()).await?;
        }
        tokio::time::sleep(c.work).await;
        let accepted = match http.post(&report).body(id.clone()).send().await {
            Ok(r) => r.status().is_success(),
            Err(e) => {
                eprintln!("reporting {id}: {e}");
                false
            }
        };
        if mistakes.ack_before_work || mistakes.no_ack {
            continue;
        }
        if accepted {
            delivery.ack(BasicAckOptions::default()).await?;
        } else {
            eprintln!("the sink refused {id}; back to the queue");
            let requeue = !mistakes.drop_on_error;
            delivery
                .nack(BasicNackOptions {
                    requeue,
                    ..Default::default()
                })
                .await?;
        }
    }
    Err("the broker ended the consumer".into())
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run(Mistakes::default()).await
}
