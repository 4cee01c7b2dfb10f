//! `http2-multiplexing`: N slow requests through Nginx (TLS) to the agent, over
//! HTTP/1.1 with a bounded number of connections, or over HTTP/2.
//!
//! HTTP/1.1 carries one request at a time on a connection: with `pool: 1` the
//! requests queue behind each other and take about `requests × delay_ms`; to
//! run them at once a client needs as many connections as requests in flight.
//! HTTP/2, negotiated with ALPN during the TLS handshake, multiplexes every
//! request as its own stream over a single connection: they all wait at once
//! and take about one `delay_ms`.
//!
//! Connections are counted by Nginx, not guessed by the client: every answer
//! carries `$connection` (the serial number of the TCP connection it arrived
//! on) and `$server_protocol`. The client opens its connections before the
//! clock starts, so `wall_ms` measures the requests, not the handshakes; over
//! HTTP/2 it also waits for one answer first, so it knows the server's limit
//! on concurrent streams (see [`warm_up`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::tls::{TlsConn, client_config, connect_tls, lab_ca, tls_port};
use crate::stats::{ratio, round2};

/// The name the client connects as (the lab certificate's name).
const SERVER_NAME: &str = "localhost";

/// Header in which the lab's Nginx reports `$connection`.
const CONNECTION_HEADER: &str = "x-connection";

/// Header in which the lab's Nginx reports `$server_protocol`.
const PROTOCOL_HEADER: &str = "x-protocol";

/// The `http2-multiplexing` exercise.
pub struct Http2Multiplexing;

/// What Nginx said about one request.
struct Seen {
    connection: String,
    protocol: String,
}

#[async_trait]
impl Exercise for Http2Multiplexing {
    fn name(&self) -> &'static str {
        "http2-multiplexing"
    }

    fn summary(&self) -> &'static str {
        "concurrent slow requests through Nginx over HTTP/1.1 with a small pool, or multiplexed over one HTTP/2 connection"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["nginx", "agent"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "protocol",
                &["http1", "http2"],
                "http2",
                "what the client offers in ALPN: `http1` only HTTP/1.1, `http2` h2 first",
            ),
            ParamSpec::int("requests", 1, 256, 8, "requests sent at once"),
            ParamSpec::int(
                "pool",
                1,
                64,
                1,
                "HTTP/1.1 only: connections the client may open (one request in flight on each)",
            ),
            ParamSpec::int(
                "delay_ms",
                1,
                10_000,
                200,
                "how long the agent takes to answer each request",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "connections_used",
                    "distinct TCP connections the requests arrived on, counted by Nginx ($connection)",
                ),
                ObsSpec::text(
                    "negotiated_protocol",
                    "protocol Nginx served the requests with: `h2` or `http/1.1` ($server_protocol)",
                ),
                ObsSpec::text(
                    "alpn",
                    "protocol agreed in the TLS handshake (ALPN), as the client saw it",
                ),
                ObsSpec::number(
                    "wall_ms",
                    "from the first request sent to the last answer read",
                ),
                ObsSpec::number(
                    "ratio",
                    "wall_ms ÷ delay_ms: about `requests` when they queue on one connection, about 1 when they all run at once",
                ),
                ObsSpec::number(
                    "max_requests_per_connection",
                    "the most requests Nginx saw arrive on one connection",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(
                    "requests-started",
                    "the connections are open and the clock starts: every request is sent",
                ),
                Milestone::new("requests-finished", "every answer has been read"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let nginx = ctx.service("nginx")?;
        let port = tls_port(nginx)?;
        let requests = ctx.int("requests") as usize;
        let delay_ms = ctx.int("delay_ms") as u64;
        let pool = (ctx.int("pool") as usize).min(requests);
        let alpn: &[&str] = match ctx.text("protocol") {
            "http1" => &["http/1.1"],
            _ => &["h2", "http/1.1"],
        };
        let config = client_config(lab_ca()?, rustls::ALL_VERSIONS, alpn)?;
        let first = connect(port, config.clone()).await?;
        let agreed = first.alpn();
        let path = format!("/delay/{delay_ms}");
        // Generous: every request one after another, plus slack.
        let deadline = Duration::from_millis(delay_ms) * requests as u32 + Duration::from_secs(30);

        let batch = Batch {
            requests,
            path,
            deadline,
        };
        let (seen, wall) = if agreed == "h2" {
            over_http2(ctx, first, &batch).await?
        } else {
            let mut conns = vec![first];
            while conns.len() < pool {
                conns.push(connect(port, config.clone()).await?);
            }
            over_http1(ctx, conns, &batch).await?
        };
        ctx.mark("requests-finished");

        if seen.len() != requests {
            return Err(ExerciseError(format!(
                "{} answers for {requests} requests",
                seen.len()
            )));
        }
        Ok(observe(&seen, &agreed, wall, delay_ms))
    }
}

/// The requests to send at once.
struct Batch {
    requests: usize,
    path: String,
    /// Longest the whole batch may take.
    deadline: Duration,
}

/// HTTP/2: one connection; every request is a stream on it, all sent at once.
async fn over_http2(
    ctx: &Ctx,
    conn: TlsConn,
    batch: &Batch,
) -> Result<(Vec<Seen>, Duration), ExerciseError> {
    let (send, driver) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn.stream))
            .await
            .doing("starting HTTP/2")?;
    tokio::spawn(driver);
    warm_up(send.clone()).await?;
    ctx.mark("requests-started");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..batch.requests {
        let mut send = send.clone();
        let uri = format!("https://{SERVER_NAME}{}", batch.path);
        tasks.spawn(async move {
            send.ready()
                .await
                .doing("waiting for the HTTP/2 connection")?;
            let request = hyper::Request::get(uri)
                .body(Empty::<Bytes>::new())
                .doing("building a request")?;
            let response = send.send_request(request).await.doing("HTTP/2 request")?;
            read(response).await
        });
    }
    let seen = within(batch.deadline, collect(tasks)).await?;
    Ok((seen, started.elapsed()))
}

/// One answered request before the clock starts. The server's first frame is
/// its SETTINGS, which carry how many streams it runs at once; after an answer
/// the client has certainly read them, so the batch queues within that limit
/// instead of racing it (a stream beyond the limit is refused, not queued).
async fn warm_up(
    mut send: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
) -> Result<(), ExerciseError> {
    send.ready()
        .await
        .doing("waiting for the HTTP/2 connection")?;
    let request = hyper::Request::get(format!("https://{SERVER_NAME}/health"))
        .body(Empty::<Bytes>::new())
        .doing("building a request")?;
    let response = send
        .send_request(request)
        .await
        .doing("HTTP/2 warm-up request")?;
    response
        .into_body()
        .collect()
        .await
        .doing("reading the warm-up answer")?;
    Ok(())
}

/// HTTP/1.1: every connection carries one request at a time; each takes the
/// next request as soon as its previous answer is read.
async fn over_http1(
    ctx: &Ctx,
    conns: Vec<TlsConn>,
    batch: &Batch,
) -> Result<(Vec<Seen>, Duration), ExerciseError> {
    let mut senders = Vec::new();
    for conn in conns {
        let (send, driver) = hyper::client::conn::http1::handshake(TokioIo::new(conn.stream))
            .await
            .doing("starting HTTP/1.1")?;
        tokio::spawn(driver);
        senders.push(send);
    }
    ctx.mark("requests-started");
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let requests = batch.requests;
    let mut tasks = tokio::task::JoinSet::new();
    for mut send in senders {
        let next = next.clone();
        let path = batch.path.clone();
        tasks.spawn(async move {
            let mut seen = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < requests {
                send.ready()
                    .await
                    .doing("waiting for the HTTP/1.1 connection")?;
                let request = hyper::Request::get(path.as_str())
                    .header(hyper::header::HOST, SERVER_NAME)
                    .body(Empty::<Bytes>::new())
                    .doing("building a request")?;
                let response = send.send_request(request).await.doing("HTTP/1.1 request")?;
                seen.extend(read(response).await?);
            }
            Ok(seen)
        });
    }
    let seen = within(batch.deadline, collect(tasks)).await?;
    Ok((seen, started.elapsed()))
}

/// Counts what Nginx said about the answers into observations.
fn observe(seen: &[Seen], agreed: &str, wall: Duration, delay_ms: u64) -> Observations {
    let mut per_connection: BTreeMap<&str, u64> = BTreeMap::new();
    for s in seen {
        *per_connection.entry(s.connection.as_str()).or_default() += 1;
    }
    let protocols: BTreeSet<String> = seen.iter().map(|s| alpn_id(&s.protocol)).collect();
    let protocol = protocols.into_iter().collect::<Vec<_>>().join(",");
    let wall_ms = round2(wall.as_secs_f64() * 1000.0);
    Observations::from([
        ("connections_used".into(), Value::from(per_connection.len())),
        ("negotiated_protocol".into(), Value::from(protocol)),
        ("alpn".into(), Value::from(agreed)),
        ("wall_ms".into(), Value::from(wall_ms)),
        (
            "ratio".into(),
            Value::from(ratio(wall_ms, delay_ms as f64).map(round2)),
        ),
        (
            "max_requests_per_connection".into(),
            Value::from(per_connection.values().max().copied()),
        ),
    ])
}

/// A verified TLS connection to Nginx.
async fn connect(port: u16, config: Arc<rustls::ClientConfig>) -> Result<TlsConn, ExerciseError> {
    connect_tls(port, SERVER_NAME, config)
        .await?
        .map_err(|r| ExerciseError(format!("the TLS handshake with nginx failed: {}", r.detail)))
}

/// Reads an answer to the end and notes what Nginx said about it.
async fn read(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<Vec<Seen>, ExerciseError> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.doing("reading an answer")?.to_bytes();
    if parts.status != hyper::StatusCode::OK {
        return Err(ExerciseError(format!(
            "nginx answered {}: {}",
            parts.status,
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                ExerciseError(format!(
                    "nginx's answer has no `{name}` header: the lab's nginx.conf must add it"
                ))
            })
    };
    Ok(vec![Seen {
        connection: header(CONNECTION_HEADER)?,
        protocol: header(PROTOCOL_HEADER)?,
    }])
}

/// Waits for every task; the first error wins.
async fn collect(
    mut tasks: tokio::task::JoinSet<Result<Vec<Seen>, ExerciseError>>,
) -> Result<Vec<Seen>, ExerciseError> {
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(|e| ExerciseError(format!("a request task panicked: {e}")))??);
    }
    Ok(all)
}

async fn within<T>(
    deadline: Duration,
    fut: impl std::future::Future<Output = Result<T, ExerciseError>>,
) -> Result<T, ExerciseError> {
    tokio::time::timeout(deadline, fut)
        .await
        .map_err(|_| ExerciseError(format!("the requests took longer than {deadline:?}")))?
}

/// `$server_protocol` as an ALPN id: `HTTP/2.0` → `h2`, `HTTP/1.1` → `http/1.1`.
fn alpn_id(server_protocol: &str) -> String {
    match server_protocol {
        "HTTP/2.0" => "h2".into(),
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_protocols_read_as_alpn_ids() {
        assert_eq!(alpn_id("HTTP/2.0"), "h2");
        assert_eq!(alpn_id("HTTP/1.1"), "http/1.1");
        assert_eq!(alpn_id("HTTP/1.0"), "http/1.0");
    }

    #[test]
    fn connections_and_protocols_are_counted_from_what_nginx_said() {
        let seen = |c: &str, p: &str| Seen {
            connection: c.into(),
            protocol: p.into(),
        };
        let obs = observe(
            &[
                seen("3", "HTTP/1.1"),
                seen("4", "HTTP/1.1"),
                seen("3", "HTTP/1.1"),
            ],
            "http/1.1",
            Duration::from_millis(410),
            200,
        );
        assert_eq!(obs["connections_used"], 2);
        assert_eq!(obs["max_requests_per_connection"], 2);
        assert_eq!(obs["negotiated_protocol"], "http/1.1");
        assert_eq!(obs["ratio"], 2.05);
        assert_eq!(obs["wall_ms"], 410.0);
        // No delay: no ratio rather than an infinite one.
        assert!(
            observe(&[seen("1", "HTTP/2.0")], "h2", Duration::from_millis(5), 0)["ratio"].is_null()
        );
    }

    #[test]
    fn the_defaults_are_valid_parameters() {
        for p in Http2Multiplexing.params() {
            p.check(&p.default).unwrap();
        }
    }
}
