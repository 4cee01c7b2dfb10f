//! Tickets: the offered load of a rate-limiting challenge, served by the
//! agent next to role `http`. The harness sets a schedule (phases of so
//! many requests per second); the learner's instances take tickets as the
//! schedule releases them, and call the protected API only for the tickets
//! their limiter admits. Both sides are recorded here, on the agent's clock,
//! so the harness measures what went through instead of trusting what the
//! program prints.
//!
//! - `PUT /tickets/NAME` with `{"phases":[{"rps":10,"ms":1500},…]}`: the
//!   schedule (again: a fresh one).
//! - `GET /tickets/NAME/next?instance=N`: waits until the next ticket is
//!   due, then answers its number as text; `204 No Content` once the
//!   schedule is over. The schedule's clock starts at the first `next`.
//! - `POST /tickets/NAME/call?ticket=K&instance=N`: the protected API; a
//!   ticket never handed out, or called before, is refused (`409`).
//! - `GET /tickets/NAME/log`: `{ tickets, refused_calls, total }`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Most tickets a schedule may hold, so a wrong schedule cannot exhaust memory.
const MAX_TICKETS: u64 = 1_000_000;

/// One phase of the schedule: `rps` tickets per second for `ms`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Phase {
    /// Tickets per second.
    pub rps: f64,
    /// How long, in milliseconds.
    pub ms: u64,
}

/// `PUT /tickets/NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    /// The phases, in order.
    pub phases: Vec<Phase>,
}

/// One ticket, as the harness reads it back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ticket {
    /// Its number, from 0.
    pub ticket: u64,
    /// The phase it belongs to (index in the schedule).
    pub phase: usize,
    /// Who took it.
    pub instance: Option<u32>,
    /// When it was handed out, µs since the Unix epoch.
    pub issued_us: u64,
    /// When the API was called with it, if it was.
    pub called_us: Option<u64>,
    /// Who called.
    pub called_by: Option<u32>,
}

/// `GET /tickets/NAME/log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Log {
    /// Tickets handed out, in order.
    pub tickets: Vec<Ticket>,
    /// Calls refused: unknown tickets, or tickets called twice.
    pub refused_calls: u64,
    /// Tickets in the whole schedule.
    pub total: u64,
}

#[derive(Default)]
struct Book {
    /// Due offset of every ticket, from the schedule's start.
    due: Vec<Duration>,
    /// Ticket number → phase.
    phase_of: Vec<usize>,
    started: Option<Instant>,
    next: u64,
    tickets: Vec<Ticket>,
    refused: u64,
}

type Books = Arc<Mutex<HashMap<String, Book>>>;

#[derive(Deserialize)]
struct Who {
    instance: Option<u32>,
    ticket: Option<u64>,
}

/// The ticket routes, for any router state.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/tickets/{name}", axum::routing::put(set))
        .route("/tickets/{name}/next", get(next))
        .route("/tickets/{name}/call", post(call))
        .route("/tickets/{name}/log", get(log))
        .with_state(Books::default())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Every ticket's due offset and phase: phase after phase, evenly spaced
/// within each.
fn plan(schedule: &Schedule) -> Result<(Vec<Duration>, Vec<usize>), String> {
    let (mut due, mut phase_of) = (Vec::new(), Vec::new());
    let mut start = Duration::ZERO;
    for (p, phase) in schedule.phases.iter().enumerate() {
        if !(phase.rps.is_finite() && phase.rps >= 0.0) {
            return Err(format!("phase {p}: rps must be a number >= 0\n"));
        }
        let count = (phase.rps * phase.ms as f64 / 1000.0).floor() as u64;
        if due.len() as u64 + count > MAX_TICKETS {
            return Err(format!(
                "the schedule holds more than {MAX_TICKETS} tickets\n"
            ));
        }
        for i in 0..count {
            due.push(start + Duration::from_secs_f64(i as f64 / phase.rps));
            phase_of.push(p);
        }
        start += Duration::from_millis(phase.ms);
    }
    Ok((due, phase_of))
}

async fn set(
    State(books): State<Books>,
    Path(name): Path<String>,
    axum::Json(schedule): axum::Json<Schedule>,
) -> Response {
    match plan(&schedule) {
        Ok((due, phase_of)) => {
            let book = Book {
                due,
                phase_of,
                ..Book::default()
            };
            let total = book.due.len();
            books
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, book);
            format!("{total} tickets\n").into_response()
        }
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

async fn next(
    State(books): State<Books>,
    Path(name): Path<String>,
    Query(who): Query<Who>,
) -> Response {
    let (ticket, at) = {
        let mut all = books.lock().unwrap_or_else(|e| e.into_inner());
        let Some(book) = all.get_mut(&name) else {
            return (StatusCode::NOT_FOUND, "no schedule by that name\n").into_response();
        };
        let k = book.next;
        let Some(offset) = book.due.get(k as usize) else {
            return StatusCode::NO_CONTENT.into_response();
        };
        book.next += 1;
        let started = *book.started.get_or_insert_with(Instant::now);
        (k, started + *offset)
    };
    tokio::time::sleep_until(at).await;
    let mut all = books.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(book) = all.get_mut(&name) {
        let phase = book.phase_of[ticket as usize];
        book.tickets.push(Ticket {
            ticket,
            phase,
            instance: who.instance,
            issued_us: now_us(),
            called_us: None,
            called_by: None,
        });
    }
    format!("{ticket}\n").into_response()
}

impl Book {
    /// Records a call with ticket `k`; false when it was never handed out
    /// or was called before.
    fn call(&mut self, k: u64, instance: Option<u32>) -> bool {
        match self.tickets.iter_mut().find(|t| t.ticket == k) {
            Some(t) if t.called_us.is_none() => {
                t.called_us = Some(now_us());
                t.called_by = instance;
                true
            }
            _ => {
                self.refused += 1;
                false
            }
        }
    }
}

async fn call(
    State(books): State<Books>,
    Path(name): Path<String>,
    Query(who): Query<Who>,
) -> Response {
    let Some(k) = who.ticket else {
        return (StatusCode::BAD_REQUEST, "call with ?ticket=K&instance=N\n").into_response();
    };
    let mut all = books.lock().unwrap_or_else(|e| e.into_inner());
    let Some(book) = all.get_mut(&name) else {
        return (StatusCode::NOT_FOUND, "no schedule by that name\n").into_response();
    };
    if book.call(k, who.instance) {
        "ok\n".into_response()
    } else {
        (
            StatusCode::CONFLICT,
            format!("ticket {k} was never handed out, or was called before\n"),
        )
            .into_response()
    }
}

async fn log(State(books): State<Books>, Path(name): Path<String>) -> Response {
    let all = books.lock().unwrap_or_else(|e| e.into_inner());
    let log = match all.get(&name) {
        Some(b) => Log {
            tickets: b.tickets.clone(),
            refused_calls: b.refused,
            total: b.due.len() as u64,
        },
        None => Log {
            tickets: Vec::new(),
            refused_calls: 0,
            total: 0,
        },
    };
    axum::Json(log).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_space_their_tickets_evenly_one_after_the_other() {
        let s = Schedule {
            phases: vec![Phase { rps: 4.0, ms: 1000 }, Phase { rps: 10.0, ms: 300 }],
        };
        let (due, phase_of) = plan(&s).unwrap();
        let ms: Vec<u128> = due.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 250, 500, 750, 1000, 1100, 1200]);
        assert_eq!(phase_of, [0, 0, 0, 0, 1, 1, 1]);
        let bad = Schedule {
            phases: vec![Phase { rps: -1.0, ms: 10 }],
        };
        assert!(plan(&bad).is_err());
    }

    #[test]
    fn a_ticket_is_called_once_and_only_when_handed_out() {
        let mut b = Book::default();
        b.tickets.push(Ticket {
            ticket: 3,
            phase: 0,
            instance: Some(1),
            issued_us: 1,
            called_us: None,
            called_by: None,
        });
        assert!(b.call(3, Some(2)));
        assert!(!b.call(3, Some(2)), "twice");
        assert!(!b.call(4, Some(1)), "never handed out");
        assert_eq!(b.refused, 2);
        assert_eq!(b.tickets[0].called_by, Some(2));
    }
}
