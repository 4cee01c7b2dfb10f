//! The ledger: a protected resource for challenges, served by the agent
//! next to role `http`. It records every access with time, instance and
//! fence token, so the harness measures what the learner's program did
//! instead of trusting what it prints.
//!
//! - `GET /ledger/NAME?instance=N&token=T`: the value, as decimal text.
//! - `PUT /ledger/NAME?instance=N&token=T` with a decimal body: sets it.
//! - `GET /ledger/NAME/log?since=K`: `{ value, highest_token, entries }`,
//!   the accesses from sequence number K on.
//!
//! A token is optional. With one, an access whose token is lower than the
//! highest the ledger has seen (on a read or a write) is refused with
//! `409 Conflict`: a fenced storage. Reads register their token too, or two
//! holders that read the same value could both write, in token order, and
//! lose an increment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

/// Most entries a ledger keeps, so a runaway client cannot exhaust memory.
const MAX_ENTRIES: usize = 1_000_000;

/// One access, as the harness reads it back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Wall-clock time it arrived, in microseconds since the Unix epoch.
    pub at_us: u64,
    /// `INFRALAB_INSTANCE` of the caller, when it said.
    pub instance: Option<u32>,
    /// `read` or `write`.
    pub op: Op,
    /// The value read, or the value written (or refused).
    pub value: i64,
    /// The fence token it carried.
    pub token: Option<i64>,
    /// Whether the ledger accepted it (false: refused with 409).
    pub accepted: bool,
}

/// What an access did.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// GET.
    Read,
    /// PUT.
    Write,
}

/// `GET /ledger/NAME/log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Log {
    /// The current value.
    pub value: i64,
    /// The highest token seen.
    pub highest_token: Option<i64>,
    /// Accesses from `since` on.
    pub entries: Vec<Entry>,
}

#[derive(Default)]
struct Ledger {
    value: i64,
    highest: Option<i64>,
    entries: Vec<Entry>,
}

type Ledgers = Arc<Mutex<HashMap<String, Ledger>>>;

#[derive(Deserialize)]
struct Access {
    instance: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
struct Since {
    since: Option<u64>,
}

/// The ledger's routes, for any router state.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ledger/{name}", get(read).put(write))
        .route("/ledger/{name}/log", get(log))
        .with_state(Ledgers::default())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn parse(access: &Access) -> Result<(Option<u32>, Option<i64>), String> {
    let bad = |what: &str, text: &str| format!("{what} `{text}` is not a whole number\n");
    let instance = match access.instance.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => Some(t.parse().map_err(|_| bad("instance", t))?),
        None => None,
    };
    let token = match access.token.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => Some(t.parse().map_err(|_| bad("token", t))?),
        None => None,
    };
    Ok((instance, token))
}

impl Ledger {
    /// Records an access; refuses a token lower than the highest seen.
    fn access(&mut self, op: Op, instance: Option<u32>, token: Option<i64>, value: i64) -> bool {
        let accepted = match (token, self.highest) {
            (Some(t), Some(h)) => t >= h,
            _ => true,
        };
        if accepted {
            if let Some(t) = token {
                self.highest = Some(self.highest.map_or(t, |h| h.max(t)));
            }
            if op == Op::Write {
                self.value = value;
            }
        }
        if self.entries.len() < MAX_ENTRIES {
            self.entries.push(Entry {
                seq: self.entries.len() as u64,
                at_us: now_us(),
                instance,
                op,
                value: if op == Op::Read { self.value } else { value },
                token,
                accepted,
            });
        }
        accepted
    }
}

fn refused(token: Option<i64>, highest: Option<i64>) -> Response {
    (
        StatusCode::CONFLICT,
        format!(
            "fence token {} is lower than {}, the highest this ledger has seen\n",
            token.unwrap_or_default(),
            highest.unwrap_or_default()
        ),
    )
        .into_response()
}

async fn read(
    State(ledgers): State<Ledgers>,
    Path(name): Path<String>,
    Query(access): Query<Access>,
) -> Response {
    let (instance, token) = match parse(&access) {
        Ok(x) => x,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let mut all = ledgers.lock().unwrap_or_else(|e| e.into_inner());
    let ledger = all.entry(name).or_default();
    let value = ledger.value;
    if ledger.access(Op::Read, instance, token, value) {
        format!("{value}\n").into_response()
    } else {
        refused(token, ledger.highest)
    }
}

async fn write(
    State(ledgers): State<Ledgers>,
    Path(name): Path<String>,
    Query(access): Query<Access>,
    body: String,
) -> Response {
    let (instance, token) = match parse(&access) {
        Ok(x) => x,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let Ok(value) = body.trim().parse::<i64>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("the body must be a whole number, found `{}`\n", body.trim()),
        )
            .into_response();
    };
    let mut all = ledgers.lock().unwrap_or_else(|e| e.into_inner());
    let ledger = all.entry(name).or_default();
    if ledger.access(Op::Write, instance, token, value) {
        "ok\n".into_response()
    } else {
        refused(token, ledger.highest)
    }
}

async fn log(
    State(ledgers): State<Ledgers>,
    Path(name): Path<String>,
    Query(since): Query<Since>,
) -> Response {
    let all = ledgers.lock().unwrap_or_else(|e| e.into_inner());
    let from = since.since.unwrap_or(0) as usize;
    let log = match all.get(&name) {
        Some(l) => Log {
            value: l.value,
            highest_token: l.highest,
            entries: l.entries.get(from..).unwrap_or_default().to_vec(),
        },
        None => Log {
            value: 0,
            highest_token: None,
            entries: Vec::new(),
        },
    };
    axum::Json(log).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_token_is_refused_on_reads_and_writes() {
        let mut l = Ledger::default();
        assert!(l.access(Op::Read, Some(1), Some(3), 0));
        assert!(l.access(Op::Write, Some(1), Some(3), 1));
        assert!(l.access(Op::Read, Some(2), Some(4), 1));
        assert!(!l.access(Op::Write, Some(1), Some(3), 7), "stale holder");
        assert!(!l.access(Op::Read, Some(1), Some(2), 0));
        assert!(
            l.access(Op::Write, Some(2), None, 2),
            "unfenced writes pass"
        );
        assert_eq!(l.value, 2);
        assert_eq!(l.highest, Some(4));
        let refused: Vec<u64> = l
            .entries
            .iter()
            .filter(|e| !e.accepted)
            .map(|e| e.seq)
            .collect();
        assert_eq!(refused, [3, 4]);
        assert_eq!(l.entries[3].value, 7, "a refused write logs what it tried");
    }
}
