//! ack-redelivery, a broken solution: the reference with one mistake: it
//! rejects a message the sink refused with requeue false: the broker drops
//! it, and it is lost.
//!
//! `infralab validate --solutions ack-redelivery` proves it fails for that
//! reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        drop_on_error: true,
        ..Default::default()
    })
    .await
}
