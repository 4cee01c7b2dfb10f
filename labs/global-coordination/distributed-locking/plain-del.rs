//! distributed-locking, a broken solution: the reference with one mistake,
//! release by plain DEL: after its lease ran out under a pause, a holder
//! deletes the lock the next holder got, and a third one gets in beside it
//! (two holders).
//!
//! `infralab validate --solutions distributed-locking` proves it fails for
//! that reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        plain_del: true,
        ..Default::default()
    })
    .await
}
