//! distributed-locking, a broken solution: the reference with one mistake,
//! no fence token on the ledger: a holder frozen past its lease wakes up
//! and writes over the increments made meanwhile (a stale write, lost
//! updates).
//!
//! `infralab validate --solutions distributed-locking` proves it fails for
//! that reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        no_fencing: true,
        ..Default::default()
    })
    .await
}
