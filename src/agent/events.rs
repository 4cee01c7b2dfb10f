//! Events: the agent as a fan-out server, pushing events it reads from Redis
//! to WebSocket clients or handing them to HTTP pollers, served next to role
//! `http`. `EVENTS_REDIS` (environment) names the Redis (`redis://HOST:PORT`).
//!
//! - `GET /events/ws?key=K&mode=pubsub`: a WebSocket that gets every message
//!   published on channel K from now on (Redis pub/sub: whatever is published
//!   while the socket is not subscribed is gone for it).
//! - `GET /events/ws?key=K&mode=stream&from=ID`: a WebSocket that gets every
//!   entry of stream K after ID (`XREAD BLOCK`), or after the newest one
//!   without `from`. Each frame carries the entry's id, so a client that
//!   reconnects with `from=` its last id misses nothing.
//! - `GET /events/poll?key=K&since=ID`: the entries of stream K after ID
//!   (`XRANGE`, at most 1000), for clients that poll instead.
//!
//! Every frame and every polled entry is an [`Event`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::shared_redis::SharedRedis;

/// The environment variable naming the Redis the events come from.
pub const REDIS_ENV: &str = "EVENTS_REDIS";

/// The stream entry's field holding the event.
pub const FIELD: &str = "d";

/// How long one `XREAD` blocks before the server checks its socket again.
const BLOCK_MS: u64 = 1000;

/// Most entries one poll returns.
const POLL_MAX: usize = 1000;

/// Stream entries as Redis returns them: `(id, [(field, value)])`.
type Entries = Vec<(String, Vec<(String, String)>)>;

/// One event as clients get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The stream entry id; absent for pub/sub.
    pub id: Option<String>,
    /// What was published.
    pub d: String,
}

/// `GET /events/poll`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Polled {
    /// Entries after `since`, oldest first.
    pub events: Vec<Event>,
}

#[derive(Deserialize)]
struct WsQuery {
    key: String,
    mode: Option<String>,
    from: Option<String>,
}

#[derive(Deserialize)]
struct PollQuery {
    key: String,
    since: Option<String>,
}

struct Events {
    redis: Option<SharedRedis>,
}

/// The event routes, for any router state.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let redis = std::env::var(REDIS_ENV)
        .ok()
        .filter(|url| !url.trim().is_empty())
        .and_then(|url| match SharedRedis::open(url.trim()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("infralab agent: {REDIS_ENV}={url} is not a Redis URL: {e}");
                None
            }
        });
    Router::new()
        .route("/events/ws", get(ws))
        .route("/events/poll", get(poll))
        .with_state(Arc::new(Events { redis }))
}

fn no_redis() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no Redis for events: set {REDIS_ENV}=redis://HOST:PORT\n"),
    )
        .into_response()
}

async fn ws(
    State(ev): State<Arc<Events>>,
    Query(q): Query<WsQuery>,
    up: WebSocketUpgrade,
) -> Response {
    let Some(client) = ev.redis.as_ref().map(|r| r.client().clone()) else {
        return no_redis();
    };
    match q.mode.as_deref().unwrap_or("stream") {
        "pubsub" => up.on_upgrade(move |socket| async move {
            let _ = push_pubsub(client, q.key, socket).await;
        }),
        "stream" => up.on_upgrade(move |socket| async move {
            let _ = push_stream(client, q.key, q.from, socket).await;
        }),
        other => (
            StatusCode::BAD_REQUEST,
            format!("mode `{other}`: expected pubsub or stream\n"),
        )
            .into_response(),
    }
}

/// Forwards channel `key` to the socket until either side ends.
async fn push_pubsub(
    client: redis::Client,
    key: String,
    mut socket: WebSocket,
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&key).await?;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let d: String = msg.get_payload()?;
        if !send(&mut socket, &Event { id: None, d }).await {
            break;
        }
    }
    Ok(())
}

/// Forwards stream `key` after `from` (or after its newest entry) to the
/// socket until either side ends.
async fn push_stream(
    client: redis::Client,
    key: String,
    from: Option<String>,
    mut socket: WebSocket,
) -> redis::RedisResult<()> {
    // A connection of its own: XREAD BLOCK holds it.
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut last = match from.filter(|f| !f.is_empty()) {
        Some(id) => id,
        None => newest_id(&mut conn, &key).await?,
    };
    loop {
        let reply: Option<Vec<(String, Entries)>> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("COUNT")
            .arg(POLL_MAX)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async(&mut conn)
            .await?;
        let entries = reply.into_iter().flatten().flat_map(|(_, entries)| entries);
        let mut sent = 0;
        for (id, fields) in entries {
            let d = field(&fields);
            last = id.clone();
            if !send(&mut socket, &Event { id: Some(id), d }).await {
                return Ok(());
            }
            sent += 1;
        }
        // Nothing new for a while: make sure the client is still there.
        if sent == 0
            && socket
                .send(Message::Ping(Default::default()))
                .await
                .is_err()
        {
            return Ok(());
        }
    }
}

/// The id of the newest entry of `key` ("0-0" for an empty stream), so a
/// reader starts after it without missing what is added meanwhile (`$`
/// would, between two `XREAD` calls).
async fn newest_id(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<String> {
    let newest: Entries = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(newest
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_string(), |(id, _)| id))
}

fn field(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .find(|(k, _)| k == FIELD)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Sends one event as a text frame; false once the client is gone.
async fn send(socket: &mut WebSocket, event: &Event) -> bool {
    match serde_json::to_string(event) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn poll(State(ev): State<Arc<Events>>, Query(q): Query<PollQuery>) -> Response {
    let Some(redis) = ev.redis.as_ref() else {
        return no_redis();
    };
    let since = q
        .since
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "0-0".into());
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(&q.key)
        .arg(format!("({since}"))
        .arg("+")
        .arg("COUNT")
        .arg(POLL_MAX);
    let result = redis.query::<Entries>(&cmd).await;
    match result {
        Ok(entries) => Json(Polled {
            events: entries
                .into_iter()
                .map(|(id, fields)| Event {
                    d: field(&fields),
                    id: Some(id),
                })
                .collect(),
        })
        .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")).into_response(),
    }
}
