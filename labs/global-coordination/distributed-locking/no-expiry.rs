//! distributed-locking, a broken solution: the reference with one mistake,
//! SET NX without PX: when a holder dies, its lock is never freed and the
//! others wait forever (the harness sees no progress).
//!
//! `infralab validate --solutions distributed-locking` proves it fails for
//! that reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        no_expiry: true,
        ..Default::default()
    })
    .await
}
