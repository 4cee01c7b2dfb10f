//! ClickHouse over its HTTP interface: a query is the body of a POST, the
//! answer is its output (`FORMAT JSON` for rows with names). The HTTP
//! interface is part of every ClickHouse release, the old one Debian ships
//! included, so no native-protocol client is needed.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error_chain;
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
