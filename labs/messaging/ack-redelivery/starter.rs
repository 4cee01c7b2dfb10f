//! ack-redelivery, the starter: it runs, and it fails.
//!
//! Each instance consumes the queue with auto-ack: the broker counts a
//! message as done the moment it sends it, and pushes as many as the
//! connection takes (prefetch does not apply). When an instance dies, every
//! message it had received but not finished is gone. Your job: nothing
//! lost, whoever is killed.
//!
//! Run it: `infralab run ack-redelivery --solution starter`; yours: copy
//! it, add it as an `[[example]]`, and `infralab run ack-redelivery
//! --solution 'cargo run -q --example my-consumer'`.

use std::error::Error;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

fn var(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let instance = var("INFRALAB_INSTANCE")?;
    let report = format!("{}?instance={instance}", var("SINK_URL")?);
    let work = Duration::from_millis(var("INFRALAB_PARAM_WORK_MS")?.parse()?);
    let http = reqwest::Client::builder().no_proxy().build()?;
    let conn = Connection::connect(&var("AMQP_URL")?, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    // TODO: a prefetch window of INFRALAB_PARAM_PREFETCH (basic_qos).
    let mut deliveries = ch
        .basic_consume(
            var("QUEUE")?.as_str().into(),
            format!("instance-{instance}").as_str().into(),
            BasicConsumeOptions {
                no_ack: true, // TODO: acknowledge yourself, once the work is done
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let id = String::from_utf8_lossy(&delivery.data).trim().to_string();
        tokio::time::sleep(work).await; // the work
        let answer = http.post(&report).body(id.clone()).send().await?;
        if !answer.status().is_success() {
            // TODO: the sink refused it: the work is not done.
            eprintln!("the sink refused {id}");
        }
        // TODO: ack here, and only here.
    }
    Err("the broker ended the consumer".into())
}
