//! PostgreSQL through tokio-postgres: connecting (with the connection task
//! spawned), the server's own words for an error, and the per-scenario table
//! names and schema steps the exercises share. The `postgres` kind's readiness
//! probe and smoke round trip (INSERT, SELECT) connect through here too.

use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Config, NoTls};

use super::round_trip::{RoundTrip, Trip, TripInput};
use crate::exercise::{ParamKind, ParamSpec};

/// Connects to `url` and spawns the task that does the connection's I/O; it
/// ends when the returned client is dropped.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    connect_with(&url.parse()?).await
}

/// [`connect`] with a configuration the caller adjusted (another password, a
/// connect timeout).
pub async fn connect_with(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The server's own message when there is one ("could not serialize access
/// due to concurrent update", "password authentication failed …"), else the
/// client's error with its cause.
pub fn why(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            if let Some(source) = std::error::Error::source(e) {
                text = format!("{text}: {source}");
            }
            text
        }
    }
}

/// A table name unique to a scenario's namespace (`PREFIX_` and 16 hex
/// digits): a plain identifier, far below PostgreSQL's 63-byte limit, so
/// scenarios and concurrent runs sharing a server never see each other's rows.
pub fn table_name(prefix: &str, namespace: &str) -> String {
    let digest = Sha256::digest(namespace.as_bytes());
    format!("{prefix}_{}", hex::encode(&digest[..8]))
}

/// What PostgreSQL did for `sql`: the plan of `EXPLAIN (ANALYZE, BUFFERS,
/// FORMAT JSON)`, run through the simple protocol (which answers in text
/// whatever the column's type). The query runs for real.
pub async fn explain(client: &Client, sql: &str) -> Result<Value, String> {
    let text = client
        .simple_query(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"))
        .await
        .map_err(|e| why(&e))?
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default();
    let plan: Value = serde_json::from_str(&text).map_err(|e| format!("reading the plan: {e}"))?;
    Ok(plan[0].clone())
}

/// Pages (shared buffers hit or read) the whole plan touched: its top node
/// counts its children's.
pub fn pages_touched(plan: &Value) -> u64 {
    ["Shared Hit Blocks", "Shared Read Blocks"]
        .iter()
        .map(|k| plan["Plan"][*k].as_u64().unwrap_or(0))
        .sum()
}

/// The server's block size (8192 unless compiled otherwise).
pub async fn block_size(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let size: i64 = client
        .query_one("SELECT current_setting('block_size')::bigint", &[])
        .await?
        .get(0);
    Ok(size as u64)
}

/// Drops the scenario's tables (if they exist), so a server shared by several
/// scenarios ends as it began.
pub async fn drop_tables(client: &Client, tables: &[&str]) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {}", tables.join(", ")))
        .await
}

/// Runs `SELECT 1` over a fresh connection: the readiness probe's question.
pub async fn select_one(url: &str) -> Result<(), String> {
    let client = connect(url).await.map_err(|e| why(&e))?;
    let rows = client.simple_query("SELECT 1").await.map_err(|e| why(&e))?;
    let one = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    });
    match one.as_deref() {
        Some("1") => Ok(()),
        other => Err(format!("SELECT 1 returned {other:?}")),
    }
}

/// The PostgreSQL round trip: `CREATE TEMP TABLE`, then `INSERT` and `SELECT`
/// of one row, logged in with the URL's credentials unless
/// `postgres_password` says otherwise.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "postgres",
    ok: "a row INSERTed into a new table came back from SELECT",
    ms: "INSERT + SELECT round trip",
    error: "why the round trip failed, in PostgreSQL's words when it sent any",
    extra: &[],
    params: round_trip_params,
    start: |input| Box::pin(round_trip(input)),
};

fn round_trip_params() -> Vec<ParamSpec> {
    vec![ParamSpec {
        name: "postgres_password",
        kind: ParamKind::Text,
        default: Value::from(""),
        doc: "password the postgres client logs in with (empty: the one in the connection string)",
    }]
}

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let mut config: Config = input
        .endpoint
        .url
        .parse()
        .map_err(|e| format!("connection string: {e}"))?;
    let password = input.text("postgres_password");
    let own_password = !password.is_empty();
    if own_password {
        config.password(password.as_bytes());
    }
    config.connect_timeout(Duration::from_secs(10));
    let client = connect_with(&config).await.map_err(|e| {
        if own_password {
            format!(
                "{} (the client logged in with the `postgres_password` parameter, not the password of the connection string)",
                why(&e)
            )
        } else {
            why(&e)
        }
    })?;
    client
        .batch_execute("CREATE TEMP TABLE smoke (id integer PRIMARY KEY, note text NOT NULL)")
        .await
        .map_err(|e| format!("CREATE TABLE: {}", why(&e)))?;
    let value = input.token();
    input.gate.wait().await;
    let started = Instant::now();
    client
        .execute(
            "INSERT INTO smoke (id, note) VALUES ($1, $2)",
            &[&1i32, &value],
        )
        .await
        .map_err(|e| format!("INSERT: {}", why(&e)))?;
    let row = client
        .query_one("SELECT note FROM smoke WHERE id = $1", &[&1i32])
        .await
        .map_err(|e| format!("SELECT: {}", why(&e)))?;
    let elapsed = started.elapsed();
    let read: String = row.try_get(0).map_err(|e| format!("SELECT: {e}"))?;
    Trip::read_back(elapsed, &value, &read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers_per_namespace() {
        let a = table_name("accounts", "infralab:abc:naive");
        assert_ne!(a, table_name("accounts", "infralab:abc:serializable"));
        assert_eq!(a, table_name("accounts", "infralab:abc:naive"));
        assert!(a.len() < 63);
        assert!(a.starts_with("accounts_"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
