//! Role `http`: answers every request with the instance id, optionally late.
//!
//! - `GET /health`: `200 ok`, for readiness probes and the healthcheck.
//! - `GET /delay/MS`: waits MS milliseconds, then answers like any request.
//! - `GET /cpu/MS`: spends MS milliseconds of CPU time, then answers like any
//!   request; `GET /cpu-stat`: the container's CPU accounting ([`super::cpu`]).
//! - `/ledger/NAME…`: the ledger of challenges ([`super::ledger`]).
//! - `/tickets/NAME…`: the offered load of rate-limiting challenges ([`super::tickets`]).
//! - `/sink/NAME…`: the sink of challenges ([`super::sink`]).
//! - `/chain…`: one service of a chain of microservices ([`super::chain`]).
//! - `/session/…`: logins kept in memory or in Redis ([`super::sessions`]).
//! - `/events/…`: events from Redis pushed over WebSockets or polled ([`super::events`]).
//! - any other request: answers at once, or after `?delay_ms=MS`.
//!
//! The answer is JSON (`instance`, `role`, `path`, `delay_ms`, `requests`) with an
//! `x-infralab-instance` header: a load-balancing lab counts who served what, a
//! caching lab tells a backend hit (the counter moves) from a cache hit.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

/// Longest delay a request may ask for, so a typo cannot hang a lab.
const MAX_DELAY_MS: u64 = 60_000;

/// How long in-flight requests may finish after SIGTERM before the server
/// exits anyway (well inside Docker's 10 s stop grace period).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The header naming the instance that answered.
pub const INSTANCE_HEADER: &str = "x-infralab-instance";

struct Agent {
    instance: String,
    requests: AtomicU64,
}

#[derive(Deserialize)]
struct DelayQuery {
    delay_ms: Option<String>,
}

#[derive(Serialize)]
struct Answer<'a> {
    instance: &'a str,
    role: &'static str,
    path: &'a str,
    delay_ms: u64,
    /// Requests this instance has answered so far, this one included.
    requests: u64,
}

/// Serves on `0.0.0.0:port` until SIGTERM or Ctrl-C.
pub(super) async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
    let instance = super::instance_id();
    // The container log's first line: which instance this is and where it listens.
    eprintln!(
        "infralab agent: role http, instance {instance}, listening on {}",
        listener.local_addr()?
    );
    serve_on(listener, instance, super::shutdown_signal()).await
}

/// Serves on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish for at most [`SHUTDOWN_GRACE`].
pub(crate) async fn serve_on(
    listener: tokio::net::TcpListener,
    instance: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut graceful_rx = rx.clone();
    let graceful = async move {
        let _ = graceful_rx.wait_for(|stop| *stop).await;
    };
    let mut deadline_rx = rx;
    let deadline = async move {
        let _ = deadline_rx.wait_for(|stop| *stop).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let server = axum::serve(listener, router(instance)).with_graceful_shutdown(graceful);
    tokio::select! {
        result = server => result.context("the HTTP server failed")?,
        () = deadline => {}
    }
    Ok(())
}

fn router(instance: String) -> Router {
    let agent = Arc::new(Agent {
        instance,
        requests: AtomicU64::new(0),
    });
    Router::new()
        .route("/health", get(health))
        .route("/delay/{ms}", get(delay_path))
        .route("/cpu/{ms}", get(cpu_path))
        .merge(super::cpu::routes())
        .merge(super::ledger::routes())
        .merge(super::tickets::routes())
        .merge(super::sink::routes())
        .merge(super::chain::routes())
        .merge(super::sessions::routes())
        .merge(super::events::routes())
        .merge(super::orders::routes())
        .fallback(any_request)
        .with_state(agent)
}

async fn health() -> &'static str {
    "ok\n"
}

async fn delay_path(State(agent): State<Arc<Agent>>, Path(ms): Path<String>, uri: Uri) -> Response {
    match parse_delay(&ms) {
        Ok(ms) => answer(&agent, uri.path(), ms).await,
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

async fn cpu_path(State(agent): State<Arc<Agent>>, Path(ms): Path<String>, uri: Uri) -> Response {
    match ms.parse::<u64>() {
        Ok(ms) if ms <= super::cpu::MAX_CPU_MS => {
            super::cpu::burn(Duration::from_millis(ms));
            answer(&agent, uri.path(), 0).await
        }
        _ => (
            StatusCode::BAD_REQUEST,
            format!(
                "CPU time `{ms}` is not a number of milliseconds up to {}\n",
                super::cpu::MAX_CPU_MS
            ),
        )
            .into_response(),
    }
}

async fn any_request(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<DelayQuery>,
    uri: Uri,
) -> Response {
    match query.delay_ms.as_deref().map(parse_delay).transpose() {
        Ok(ms) => answer(&agent, uri.path(), ms.unwrap_or(0)).await,
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

async fn answer(agent: &Agent, path: &str, delay_ms: u64) -> Response {
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let requests = agent.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let body = Answer {
        instance: &agent.instance,
        role: "http",
        path,
        delay_ms,
        requests,
    };
    let mut response = axum::Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&agent.instance) {
        response.headers_mut().insert(INSTANCE_HEADER, value);
    }
    response
}

fn parse_delay(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(ms) if ms <= MAX_DELAY_MS => Ok(ms),
        Ok(_) => Err(format!(
            "delay {text} ms is over the limit of {MAX_DELAY_MS} ms\n"
        )),
        Err(_) => Err(format!("delay `{text}` is not a number of milliseconds\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Starts the role on an ephemeral loopback port; dropping the sender stops it.
    async fn start(instance: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let instance = instance.to_string();
        tokio::spawn(async move {
            serve_on(listener, instance, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        (url, tx)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn answers_with_instance_and_counts_requests() {
        let (url, _stop) = start("web-2").await;
        let c = client();
        let first = c.get(format!("{url}/anything")).send().await.unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()[INSTANCE_HEADER], "web-2");
        let body: serde_json::Value = first.json().await.unwrap();
        assert_eq!(body["instance"], "web-2");
        assert_eq!(body["path"], "/anything");
        assert_eq!(body["requests"], 1);
        let second: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(second["requests"], 2);
    }

    #[tokio::test]
    async fn health_is_ok() {
        let (url, _stop) = start("a").await;
        let r = client().get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok\n");
    }

    #[tokio::test]
    async fn delays_by_path_and_by_query() {
        let (url, _stop) = start("a").await;
        let c = client();
        let t = Instant::now();
        let body: serde_json::Value = c
            .get(format!("{url}/delay/120"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(120));
        assert_eq!(body["delay_ms"], 120);
        let t = Instant::now();
        let r = c.get(format!("{url}/x?delay_ms=80")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(t.elapsed() >= Duration::from_millis(80));
    }

    #[tokio::test]
    async fn bad_delays_are_rejected() {
        let (url, _stop) = start("a").await;
        let c = client();
        for path in ["/delay/soon", "/delay/600000", "/?delay_ms=-1"] {
            let r = c.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 400, "{path}");
        }
    }

    #[tokio::test]
    async fn the_sink_records_reports_and_refuses_when_told() {
        let (url, _stop) = start("a").await;
        let c = client();
        let sink = format!("{url}/sink/ns-1");
        let put = c
            .put(format!("{sink}/refuse"))
            .body("2")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
        let post = |id: &'static str| c.post(format!("{sink}?instance=2")).body(id).send();
        assert_eq!(post("4").await.unwrap().status(), 503);
        assert_eq!(post("4").await.unwrap().status(), 200);
        assert_eq!(post("x").await.unwrap().status(), 400);
        let log: super::super::sink::Log = c
            .get(format!("{sink}/log?since=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(log.entries.len(), 1);
        assert_eq!((log.entries[0].id, log.entries[0].instance), (4, Some(2)));
        assert!(log.entries[0].accepted);
    }

    #[tokio::test]
    async fn stops_when_asked() {
        let (url, stop) = start("a").await;
        drop(stop);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(client().get(&url).send().await.is_err());
    }
}
