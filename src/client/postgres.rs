//! PostgreSQL through tokio-postgres: connecting (with the connection task
//! spawned), the server's own words for an error, and the per-scenario table
//! names and schema steps the exercises share. The `postgres` kind's readiness
//! probe connects through here too.

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

/// Connects to `url` and spawns the task that does the connection's I/O; it
/// ends when the returned client is dropped.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
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
