//! ClickHouse over its HTTP interface: a query is the body of a POST, the
//! answer is its output (`FORMAT JSON` for rows with names). The HTTP
//! interface is part of every ClickHouse release, the old one Debian ships
//! included, so no native-protocol client is needed.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error_chain;
use super::round_trip::{RoundTrip, Trip, TripInput};
use crate::catalog::Endpoint;
use crate::exercise::{Context, ExerciseError};

/// Longest one probe attempt may take (under the engine's 2 s cap).
const PROBE_ATTEMPT: Duration = Duration::from_millis(1800);

/// A client of one server.
#[derive(Clone)]
pub struct ClickHouse {
    http: reqwest::Client,
    url: String,
}

impl ClickHouse {
    /// For `endpoint`, with a timeout per query.
    pub fn new(endpoint: &Endpoint, timeout: Duration) -> Result<ClickHouse, ExerciseError> {
        Ok(ClickHouse {
            http: super::http::client(timeout)?,
            url: format!("{}/", endpoint.url.trim_end_matches('/')),
        })
    }

    /// Runs `sql`; returns its output as text, or the server's error.
    pub async fn execute(&self, sql: &str) -> Result<String, ExerciseError> {
        self.send(sql, "").await
    }

    /// Runs `sql` under `query_id`, logged in `system.query_log` (where the
    /// server records what the query read).
    pub async fn execute_as(&self, sql: &str, query_id: &str) -> Result<String, ExerciseError> {
        let id: String = query_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        self.send(sql, &format!("?query_id={id}&log_queries=1"))
            .await
    }

    /// POSTs `sql` with `settings` (a URL query string, or empty).
    async fn send(&self, sql: &str, settings: &str) -> Result<String, ExerciseError> {
        let r = self
            .http
            .post(format!("{}{settings}", self.url))
            .body(sql.to_string())
            .send()
            .await
            .doing("sending a query to ClickHouse")?;
        let status = r.status();
        let text = r.text().await.doing("reading ClickHouse's answer")?;
        if !status.is_success() {
            return Err(ExerciseError(format!(
                "ClickHouse refused `{}`: {}",
                sql.split_whitespace().collect::<Vec<_>>().join(" "),
                text.trim()
            )));
        }
        Ok(text)
    }

    /// Runs `sql` with `FORMAT JSON` appended; returns its rows.
    pub async fn rows<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, ExerciseError> {
        let text = self.execute(&format!("{sql} FORMAT JSON")).await?;
        let v: Value = serde_json::from_str(&text).doing("reading ClickHouse's JSON")?;
        serde_json::from_value(v["data"].clone()).doing("reading ClickHouse's rows")
    }
}

/// A number from ClickHouse's JSON output, which quotes 64-bit integers
/// (`output_format_json_quote_64bit_integers`); 0 when it is none.
pub fn number(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

/// Readiness: `SELECT 1` answers `1`.
pub async fn probe(endpoint: &Endpoint) -> Result<(), String> {
    let client = super::http::client(PROBE_ATTEMPT).map_err(|e| e.0)?;
    let url = format!("{}/", endpoint.url.trim_end_matches('/'));
    let r = client
        .post(&url)
        .body("SELECT 1")
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| error_chain(&e))?;
    match (status.is_success(), text.trim()) {
        (true, "1") => Ok(()),
        _ => Err(format!("SELECT 1 answered {status}: {}", text.trim())),
    }
}

/// The smoke round trip: a row inserted into a scenario's own table and
/// selected back.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "clickhouse",
    ok: "INSERT then SELECT returned the row written",
    ms: "INSERT + SELECT round trip",
    error: "why the round trip failed (only when it did)",
    extra: &[],
    params: Vec::new,
    start: |input| Box::pin(round_trip(input)),
};

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let ch = ClickHouse::new(&input.endpoint, Duration::from_secs(5)).map_err(|e| e.0)?;
    let table = crate::client::postgres::table_name("smoke", &input.namespace);
    ch.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (v String) ENGINE = Memory"
    ))
    .await
    .map_err(|e| e.0)?;
    let value = input.token();
    input.gate.wait().await;
    let started = Instant::now();
    ch.execute(&format!("INSERT INTO {table} VALUES ('{value}')"))
        .await
        .map_err(|e| format!("insert: {}", e.0))?;
    let read = ch
        .execute(&format!("SELECT v FROM {table} WHERE v = '{value}'"))
        .await
        .map_err(|e| format!("select: {}", e.0))?;
    let elapsed = started.elapsed();
    Trip::read_back(elapsed, &value, read.trim())
}
