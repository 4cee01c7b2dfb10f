//! FalkorDB through the redis crate: openCypher sent as `GRAPH.QUERY GRAPH
//! QUERY`, its answer (header, rows, statistics) read back into rows of
//! values, the readiness probe (`GRAPH.LIST`, which only a server with the
//! module loaded answers) and the smoke round trip (CREATE, then MATCH).

use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::round_trip::{RoundTrip, Trip, TripInput};
use crate::catalog::Endpoint;
use crate::exercise::{Context, ExerciseError};

/// One graph on a FalkorDB server.
pub struct Graph {
    conn: MultiplexedConnection,
    name: String,
}

/// What a query returned: its rows, and the server's own execution time.
#[derive(Debug, Default)]
pub struct Answer {
    pub rows: Vec<Vec<Value>>,
    /// `Query internal execution time`, in milliseconds.
    pub server_ms: Option<f64>,
}

impl Answer {
    /// The first column of the first row as an integer (`RETURN count(…)`).
    pub fn int(&self) -> Option<i64> {
        match self.rows.first()?.first()? {
            Value::Int(i) => Some(*i),
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            Value::SimpleString(s) => s.parse().ok(),
            _ => None,
        }
    }
}

impl Graph {
    /// Connects to `endpoint` and names the graph queries go to. Answers may
    /// take long (a load of thousands of edges): a minute before giving up.
    pub async fn open(endpoint: &Endpoint, name: &str) -> Result<Self, ExerciseError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        let conn = redis::Client::open(endpoint.url.as_str())
            .doing("falkordb url")?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .doing(&format!("connecting to {}", endpoint.service))?;
        Ok(Graph {
            conn,
            name: name.to_string(),
        })
    }

    /// Runs one Cypher query.
    pub async fn query(&mut self, cypher: &str) -> Result<Answer, ExerciseError> {
        let reply: Value = redis::cmd("GRAPH.QUERY")
            .arg(&self.name)
            .arg(cypher)
            .query_async(&mut self.conn)
            .await
            .map_err(|e| ExerciseError(format!("GRAPH.QUERY `{}`: {e}", short(cypher))))?;
        Ok(answer(reply))
    }

    /// Whether the graph exists on the server.
    pub async fn exists(&mut self) -> Result<bool, ExerciseError> {
        let graphs: Vec<String> = redis::cmd("GRAPH.LIST")
            .query_async(&mut self.conn)
            .await
            .doing("GRAPH.LIST")?;
        Ok(graphs.contains(&self.name))
    }

    /// Deletes the graph (nothing when there is none).
    pub async fn delete(&mut self) -> Result<(), ExerciseError> {
        if self.exists().await? {
            let _: Value = redis::cmd("GRAPH.DELETE")
                .arg(&self.name)
                .query_async(&mut self.conn)
                .await
                .doing("GRAPH.DELETE")?;
        }
        Ok(())
    }
}

/// The start of a query, for error messages (a load query holds thousands
/// of edges).
fn short(cypher: &str) -> String {
    match cypher.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &cypher[..i]),
        None => cypher.to_string(),
    }
}

/// Reads the reply: `[header, rows, stats]` for a query that returns
/// something, `[stats]` for one that only writes.
fn answer(reply: Value) -> Answer {
    let Value::Array(parts) = reply else {
        return Answer::default();
    };
    let stats = parts.last().cloned();
    let rows = match parts.len() {
        3 => match &parts[1] {
            Value::Array(rows) => rows
                .iter()
                .map(|r| match r {
                    Value::Array(cols) => cols.clone(),
                    other => vec![other.clone()],
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let server_ms = match stats {
        Some(Value::Array(lines)) => lines.iter().find_map(|l| {
            let text = match l {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            text.strip_prefix("Query internal execution time: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }),
        _ => None,
    };
    Answer { rows, server_ms }
}

/// The readiness probe: `GRAPH.LIST` answers once the module is loaded.
pub async fn probe(endpoint: &Endpoint) -> Result<(), String> {
    let client = redis::Client::open(endpoint.url.as_str()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let _: Value = redis::cmd("GRAPH.LIST")
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("GRAPH.LIST: {e}"))?;
    Ok(())
}

/// The FalkorDB round trip: a node created, then matched by its value.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "falkordb",
    ok: "CREATE then MATCH returned the node written",
    ms: "CREATE + MATCH round trip",
    error: "why the round trip failed (only when it did)",
    extra: &[],
    params: Vec::new,
    start: |input| Box::pin(round_trip(input)),
};

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let name = format!("{}:smoke", input.namespace);
    let mut graph = Graph::open(&input.endpoint, &name).await.map_err(|e| e.0)?;
    let value = input.token();
    input.gate.wait().await;
    let started = Instant::now();
    graph
        .query(&format!("CREATE (:Smoke {{v: '{value}'}})"))
        .await
        .map_err(|e| format!("create: {}", e.0))?;
    let read = graph
        .query(&format!("MATCH (n:Smoke {{v: '{value}'}}) RETURN n.v"))
        .await
        .map_err(|e| format!("match: {}", e.0))?;
    let elapsed = started.elapsed();
    let _ = graph.delete().await;
    let got = match read.rows.first().and_then(|r| r.first()) {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => "(no row)".into(),
    };
    Trip::read_back(elapsed, &value, &got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_returning_query_gives_rows_and_the_server_time() {
        let reply = Value::Array(vec![
            Value::Array(vec![bulk("count(DISTINCT b)")]),
            Value::Array(vec![Value::Array(vec![Value::Int(1085)])]),
            Value::Array(vec![
                bulk("Cached execution: 0"),
                bulk("Query internal execution time: 1.121933 milliseconds"),
            ]),
        ]);
        let a = answer(reply);
        assert_eq!(a.int(), Some(1085));
        assert_eq!(a.server_ms, Some(1.121933));
    }

    #[test]
    fn a_write_gives_no_rows() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("Nodes created: 2"),
            bulk("Query internal execution time: 0.39 milliseconds"),
        ])]);
        let a = answer(reply);
        assert!(a.rows.is_empty());
        assert_eq!(a.int(), None);
        assert_eq!(a.server_ms, Some(0.39));
    }
}
