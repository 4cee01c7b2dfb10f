//! ack-redelivery, a broken solution: the reference with one mistake: it
//! never acknowledges: once every instance holds its prefetch window of
//! unacknowledged messages, the broker sends nothing more (the work stalls,
//! the rest stays in the queue).
//!
//! `infralab validate --solutions ack-redelivery` proves it fails for that
//! reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        no_ack: true,
        ..Default::default()
    })
    .await
}
