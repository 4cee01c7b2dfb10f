//! The sink: where a challenge's program reports each piece of work it
//! finished (a message id), served by the agent next to role `http`. It
//! records every report with time and instance, so the harness counts what
//! arrived (lost, duplicated) instead of trusting what the program prints.
//!
//! - `POST /sink/NAME?instance=N` with a decimal id as body: `200 ok`, or
//!   `503` when the sink refuses it (below); both are recorded.
//! - `PUT /sink/NAME/refuse` with a decimal body K (0: never): the sink
//!   refuses the first report of every id that is a multiple of K, as a
//!   flaky downstream does; the program must not count that work as done.
//! - `GET /sink/NAME/log?since=S`: `{ entries }`, the reports from sequence
//!   number S on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use serde::{Deserialize, Serialize};

/// Most reports a sink keeps, so a runaway client cannot exhaust memory.
const MAX_ENTRIES: usize = 1_000_000;

/// One report, as the harness reads it back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Wall-clock time it arrived, in microseconds since the Unix epoch.
    pub at_us: u64,
    /// `INFRALAB_INSTANCE` of the caller, when it said.
    pub instance: Option<u32>,
    /// The id reported.
    pub id: u64,
    /// Whether the sink accepted it (false: refused with 503).
    pub accepted: bool,
}

/// `GET /sink/NAME/log`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Log {
    /// Reports from `since` on.
    pub entries: Vec<Report>,
}

#[derive(Default)]
struct Sink {
    refuse_every: u64,
    refused: HashSet<u64>,
    entries: Vec<Report>,
}

type Sinks = Arc<Mutex<HashMap<String, Sink>>>;

#[derive(Deserialize)]
struct Caller {
    instance: Option<String>,
}

#[derive(Deserialize)]
struct Since {
    since: Option<u64>,
}

/// The sink's routes, for any router state.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/sink/{name}", post(report))
        .route("/sink/{name}/refuse", put(refuse))
        .route("/sink/{name}/log", axum::routing::get(log))
        .with_state(Sinks::default())
}

impl Sink {
    /// Records a report; refuses the first one of a multiple of `refuse_every`.
    fn report(&mut self, instance: Option<u32>, id: u64, at_us: u64) -> bool {
        let accepted = self.refuse_every == 0
            || !id.is_multiple_of(self.refuse_every)
            || !self.refused.insert(id);
        if self.entries.len() < MAX_ENTRIES {
            self.entries.push(Report {
                seq: self.entries.len() as u64,
                at_us,
                instance,
                id,
                accepted,
            });
        }
        accepted
    }
}

/// A decimal number, or the 400 answer's text.
fn number(text: &str, what: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{what} must be a whole number, found `{}`\n", text.trim()))
}

fn bad_request(why: String) -> Response {
    (StatusCode::BAD_REQUEST, why).into_response()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn report(
    State(sinks): State<Sinks>,
    Path(name): Path<String>,
    Query(caller): Query<Caller>,
    body: String,
) -> Response {
    let instance = match caller.instance.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => match number(t, "instance") {
            Ok(i) => Some(i as u32),
            Err(why) => return bad_request(why),
        },
        None => None,
    };
    let id = match number(&body, "the body (a message id)") {
        Ok(id) => id,
        Err(why) => return bad_request(why),
    };
    let mut all = sinks.lock().unwrap_or_else(|e| e.into_inner());
    if all.entry(name).or_default().report(instance, id, now_us()) {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the sink refuses {id} this time: try again later\n"),
        )
            .into_response()
    }
}

async fn refuse(State(sinks): State<Sinks>, Path(name): Path<String>, body: String) -> Response {
    match number(&body, "the body (refuse every K-th id)") {
        Ok(every) => {
            let mut all = sinks.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(name).or_default().refuse_every = every;
            "ok\n".into_response()
        }
        Err(why) => bad_request(why),
    }
}

async fn log(
    State(sinks): State<Sinks>,
    Path(name): Path<String>,
    Query(since): Query<Since>,
) -> Response {
    let all = sinks.lock().unwrap_or_else(|e| e.into_inner());
    let from = since.since.unwrap_or(0) as usize;
    let entries = all
        .get(&name)
        .and_then(|s| s.entries.get(from..))
        .unwrap_or_default()
        .to_vec();
    axum::Json(Log { entries }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_report_of_every_kth_id_is_refused_once() {
        let mut s = Sink {
            refuse_every: 3,
            ..Default::default()
        };
        let accepted: Vec<bool> = [(1, 2), (1, 3), (2, 3), (2, 4), (1, 6), (1, 2)]
            .iter()
            .map(|&(i, id)| s.report(Some(i), id, 10))
            .collect();
        assert_eq!(accepted, [true, false, true, true, false, true]);
        assert_eq!(s.entries[2].instance, Some(2));
        assert_eq!(s.entries[5].seq, 5);
    }

    #[test]
    fn a_sink_without_refusals_accepts_everything() {
        let mut s = Sink::default();
        assert!((0..5).all(|id| s.report(None, id, 1)));
    }
}
