//! distributed-locking, the starter: it runs, and it fails.
//!
//! Each instance adds 1 to the ledger's value INFRALAB_PARAM_INCREMENTS
//! times by read-modify-write, with no lock at all: instances read the same
//! value and overwrite each other's increments. Your job is the lock.
//!
//! Run it: `infralab run distributed-locking --solution starter`; yours:
//! `cargo build --examples && infralab run distributed-locking --solution
//! target/debug/examples/distributed-locking-starter` after editing.

use std::error::Error;
use std::time::Duration;

fn var(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let ledger = var("LEDGER_URL")?;
    let instance = var("INFRALAB_INSTANCE")?;
    let increments: u64 = var("INFRALAB_PARAM_INCREMENTS")?.parse()?;
    let hold = Duration::from_millis(var("INFRALAB_PARAM_HOLD_MS")?.parse()?);
    // TODO: connect to REDIS_URL; the lock's keys go under INFRALAB_NAMESPACE.
    let http = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..increments {
        // TODO: take the lock (leased for INFRALAB_PARAM_TTL_MS, retried
        // every INFRALAB_PARAM_RETRY_MS) and get a fence token with it.
        let url = format!("{ledger}?instance={instance}"); // TODO: &token=T
        let value: i64 = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?
            .trim()
            .parse()?;
        tokio::time::sleep(hold).await;
        http.put(&url)
            .body((value + 1).to_string())
            .send()
            .await?
            .error_for_status()?;
        // TODO: a 409 means your token is too old: release and retry.
        // TODO: release the lock, but only if it is still yours.
    }
    Ok(())
}
