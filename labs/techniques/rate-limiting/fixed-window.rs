//! rate-limiting, a broken solution: the reference with one mistake, a
//! fixed one-second window (a counter per second of Redis's clock) instead
//! of the bucket. Shared and atomic, so no window ever admits more than the
//! rate; but each window's whole allowance goes through at its start, so
//! the API sees `rate` calls at once, far more than the bucket's capacity.
//!
//! `infralab validate --solutions rate-limiting` proves it fails for that
//! reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        fixed_window: true,
        ..Default::default()
    })
    .await
}
