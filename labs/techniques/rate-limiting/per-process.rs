//! rate-limiting, a broken solution: the reference with one mistake, the
//! token bucket lives in each process's memory. Every instance allows the
//! whole rate on its own, so N instances let N times the limit through.
//!
//! `infralab validate --solutions rate-limiting` proves it fails for that
//! reason.

#[path = "reference.rs"]
mod reference;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    reference::run(reference::Mistakes {
        per_process: true,
        ..Default::default()
    })
    .await
}
