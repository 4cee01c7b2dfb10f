//! HTTP through reqwest and hyper: the client every exercise and probe builds
//! the same way (no proxy from the environment between infralab and a loopback
//! port, redirects observed rather than followed), the agent's instance header,
//! a readiness probe, the smoke round trip of nginx and the agent, and one
//! HTTP/1.1 request over a stream the caller opened (a TLS connection it
//! timed itself, a plain TCP socket).

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::error_chain;
use super::round_trip::{RoundTrip, Trip, TripInput};
use crate::exercise::{Context, ExerciseError, ObsSpec, Observations, ParamKind, ParamSpec};

/// The header the agent names itself in (`agent`, `agent-2`, …).
pub use crate::agent::INSTANCE_HEADER;

/// Longest one plain request (no deliberate delay) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one probe attempt may take: under the engine's 2 s cap per attempt,
/// so a timeout is reported in the probe's own words.
const PROBE_ATTEMPT: Duration = Duration::from_millis(1800);

/// A reqwest builder with what every lab client needs: no proxy (a proxy from
/// the environment must not sit between infralab and a loopback port), no
/// redirects followed (a redirect is an answer the lab wants to see), and a
/// timeout for each whole request.
pub fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
}

/// [`builder`], built.
pub fn client(timeout: Duration) -> Result<reqwest::Client, ExerciseError> {
    builder(timeout).build().doing("building the HTTP client")
}

/// The agent instance an answer names (from [`INSTANCE_HEADER`]).
pub fn instance(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// How long a proxy may take to hand requests to every instance again.
const ROTATION_DEADLINE: Duration = Duration::from_secs(15);

/// Returns once GETs of `url` (through a proxy in front of replicas) have been
/// answered 200 by `instances` distinct agent instances: a replica a proxy
/// marked failed comes back into its rotation only after a while.
pub async fn until_every_instance(
    client: &reqwest::Client,
    url: &str,
    instances: usize,
) -> Result<(), ExerciseError> {
    let deadline = Instant::now() + ROTATION_DEADLINE;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < instances {
        if Instant::now() > deadline {
            return Err(ExerciseError(format!(
                "{url}: requests reached {} of {instances} instances within {} s ({seen:?})",
                seen.len(),
                ROTATION_DEADLINE.as_secs()
            )));
        }
        let answered = client.get(url).send().await;
        if let Ok(response) = answered
            && response.status() == reqwest::StatusCode::OK
            && let Some(instance) = instance(response.headers())
        {
            seen.insert(instance);
        }
    }
    Ok(())
}

/// Polls `health` (an instance's own URL, fresh connections) until it fails
/// to answer twice in a row: once could be a slow moment on a busy machine.
pub async fn until_down(health: &str) -> Result<(), ExerciseError> {
    let client = builder(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()
        .doing("building the HTTP client")?;
    let mut failures = 0;
    while failures < 2 {
        let ok = matches!(client.get(health).send().await, Ok(r) if r.status().is_success());
        failures = if ok { 0 } else { failures + 1 };
        if ok {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Readiness probe: one GET with a short timeout, on a fresh client. Any HTTP
/// status counts as an answer (a lab's own config may answer 404 or 301 on `/`);
/// only a failure to get a parsed answer is an error. Returns the status.
pub async fn probe_get(url: &str) -> Result<reqwest::StatusCode, String> {
    let client = builder(PROBE_ATTEMPT)
        .build()
        .map_err(|e| error_chain(&e))?;
    let response = client.get(url).send().await.map_err(|e| error_chain(&e))?;
    Ok(response.status())
}

/// An HTTP answer (its body read and dropped).
pub struct Answer {
    /// The status line's code.
    pub status: hyper::StatusCode,
    /// Every header.
    pub headers: hyper::HeaderMap,
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 `GET path` with `Host: host` over `io` (a connection the caller
/// opened and timed: TCP, TLS …), the body read to the end.
pub async fn get_over<S>(io: S, host: &str, path: &str) -> Result<Answer, ExerciseError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .doing("starting HTTP/1.1")?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .doing("building a request")?;
    let what = format!("GET {path}");
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let response = send.send_request(request).await?;
        let (parts, body) = response.into_parts();
        body.collect().await?;
        Ok::<_, hyper::Error>(Answer {
            status: parts.status,
            headers: parts.headers,
        })
    })
    .await
    .map_err(|_| ExerciseError(format!("{what}: timed out")))?
    .doing(&what)
}

/// The HTTP round trip: `GET http_path` (reqwest), timed with its TCP
/// connection; through Nginx the answer names the agent instance behind it.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "http",
    ok: "GET `http_path` through Nginx (or the agent directly) answered 2xx",
    ms: "the GET's round trip, TCP connection included",
    error: "why the GET failed, with the status line (only when it did)",
    extra: &[INSTANCE],
    params: round_trip_params,
    start: |input| Box::pin(round_trip(input)),
};

/// The agent instance that answered the round trip.
const INSTANCE: ObsSpec = ObsSpec::text(
    "http_instance",
    "the agent instance that answered (x-infralab-instance)",
);

fn round_trip_params() -> Vec<ParamSpec> {
    vec![ParamSpec {
        name: "http_path",
        kind: ParamKind::Text,
        default: Value::from("/"),
        doc: "path the HTTP client GETs through Nginx (or from the agent directly)",
    }]
}

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let client = builder(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| error_chain(&e))?;
    let target = format!(
        "{}/{}",
        input.endpoint.url.trim_end_matches('/'),
        input.text("http_path").trim_start_matches('/')
    );
    input.gate.wait().await;
    let started = Instant::now();
    let response = client
        .get(&target)
        .send()
        .await
        .map_err(|e| format!("GET {target}: {}", error_chain(&e)))?;
    let status = response.status();
    let header = instance(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {target}: reading the body: {}", error_chain(&e)))?;
    let elapsed = started.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("GET {target} answered {status} {first}"));
    }
    let from_body = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("instance")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let mut extra = Observations::new();
    if let Some(instance) = header.or(from_body) {
        extra.insert(INSTANCE.name.into(), Value::from(instance));
    }
    Ok(Trip { elapsed, extra })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_http_status_is_an_answer_and_a_closed_port_is_not() {
        // A server that answers 404 to everything.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        assert_eq!(probe_get(&format!("http://{addr}/")).await.unwrap(), 404);
        // A port nobody listens on (bound, then freed).
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe_get(&format!("http://{free}/")).await.is_err());
    }

    #[test]
    fn the_instance_comes_from_the_agents_header() {
        let mut headers = hyper::HeaderMap::new();
        assert_eq!(instance(&headers), None);
        headers.insert(INSTANCE_HEADER, "agent-2".parse().unwrap());
        assert_eq!(instance(&headers).as_deref(), Some("agent-2"));
    }
}
