//! ack-redelivery, a broken solution: the reference with one mistake: it
//! acknowledges each message on receipt, before its work: a message in hand
//! when the instance dies was already counted as done by the broker, and is
//! lost.
//!
//! `infralab validate --solutions ack-redelivery` proves it fails for that
//! reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        ack_before_work: true,
        ..Default::default()
    })
    .await
}
