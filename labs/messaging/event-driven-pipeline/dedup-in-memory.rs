//! event-driven-pipeline, a broken solution: the reference with one
//! mistake, it remembers the orders it charged in a set in its memory and
//! inserts plainly. Redeliveries within one run are skipped; but a killed
//! consumer forgets the set, and what was charged since the last commit is
//! delivered, and charged, again.
//!
//! `infralab validate --solutions event-driven-pipeline` proves it fails
//! for that reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        dedup_in_memory: true,
        ..Default::default()
    })
    .await
}
