//! HTTP through reqwest and hyper: the client every exercise and probe builds
//! the same way (no proxy from the environment between infralab and a loopback
//! port, redirects observed rather than followed), the agent's instance header,
//! a readiness probe, and one HTTP/1.1 request over a stream the caller opened
//! (a TLS connection it timed itself, a plain TCP socket).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::exercise::{Context, ExerciseError};

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

/// An error with its chain of sources, as one line (`error sending request:
/// connection refused`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
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
