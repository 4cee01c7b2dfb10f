//! rate-limiting, the starter: it runs, and it fails.
//!
//! Each instance takes tickets (the offered load) until there are none
//! left, and calls the API for every one of them: no limiter at all, so
//! the burst goes straight through. Your job is the limiter, shared by
//! every instance.
//!
//! Run it: `infralab run rate-limiting --solution starter`; yours:
//! `cargo build --release --examples && infralab run rate-limiting
//! --solution target/release/examples/rate-limiting-starter` after editing.

use std::error::Error;

fn var(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let tickets = var("TICKETS_URL")?;
    let instance = var("INFRALAB_INSTANCE")?;
    // TODO: connect to REDIS_URL; the limiter's keys go under INFRALAB_NAMESPACE.
    let http = reqwest::Client::builder().no_proxy().build()?;
    loop {
        let next = http
            .get(format!("{tickets}/next?instance={instance}"))
            .send()
            .await?
            .error_for_status()?;
        if next.status() == reqwest::StatusCode::NO_CONTENT {
            break;
        }
        let ticket = next.text().await?.trim().to_string();
        // TODO: admit it only within INFRALAB_PARAM_RATE per second, with
        // bursts of at most INFRALAB_PARAM_CAPACITY, across all instances.
        http.post(format!(
            "{tickets}/call?ticket={ticket}&instance={instance}"
        ))
        .send()
        .await?
        .error_for_status()?;
    }
    Ok(())
}
