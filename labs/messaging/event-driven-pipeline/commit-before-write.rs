//! event-driven-pipeline, a broken solution: the reference with one
//! mistake, it commits an order's offset before charging it (at most
//! once). Killed between the commit and the write, the order is committed
//! and never charged: nobody gets it again. Idempotence repairs duplicates,
//! not losses.
//!
//! `infralab validate --solutions event-driven-pipeline` proves it fails
//! for that reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        commit_before_write: true,
        ..Default::default()
    })
    .await
}
