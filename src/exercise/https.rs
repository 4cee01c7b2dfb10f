//! `https`: Nginx terminates TLS in front of the agent.
//!
//! Three clients talk to the same Nginx:
//!
//! - one trusts the lab's CA (compiled in, see [`crate::client::tls`]): it checks
//!   the certificate's chain and name during the handshake. It opens
//!   `handshakes` fresh connections, timing TCP connect and TLS handshake
//!   separately, then sends `requests` GETs over one kept-alive connection.
//!   Nginx itself reports the TLS version it negotiated (`$ssl_protocol`) and
//!   the serial number of the connection each request arrived on
//!   (`$connection`), so both are counted by the server;
//! - one trusts only a CA made up for this run: the server's certificate does
//!   not chain to it, and the handshake is refused with a certificate error;
//! - one speaks plain HTTP to port 80 and is redirected to HTTPS (the redirect is
//!   observed, not followed).
//!
//! With `verify: false` the first two clients check nothing about the
//! certificate (the `curl -k` client): the one trusting another CA then gets
//! through, as a man in the middle would.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, SupportedProtocolVersion};
use serde_json::Value;
use tokio::net::TcpStream;

use super::{
    Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamKind, ParamSpec,
};
use crate::client::http::{self, Answer};
use crate::client::tls::{self, TlsConn};
use crate::stats::percentile_ms;

/// Header in which the labs' Nginx reports `$ssl_protocol`.
const TLS_HEADER: &str = "x-tls-protocol";

/// Header in which the labs' Nginx reports `$connection`.
const CONNECTION_HEADER: &str = "x-connection";

/// Longest one request over the kept-alive connection may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `https` exercise.
pub struct Https;

#[async_trait]
impl Exercise for Https {
    fn name(&self) -> &'static str {
        "https"
    }

    fn summary(&self) -> &'static str {
        "clients that do and do not trust the CA talk TLS to Nginx; plain HTTP is redirected"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["nginx", "agent"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "tls_version",
                &["any", "1.2", "1.3"],
                "any",
                "TLS versions the clients offer (`any`: 1.2 and 1.3)",
            ),
            ParamSpec {
                name: "server_name",
                kind: ParamKind::Text,
                default: Value::from("localhost"),
                doc: "name the clients ask for (SNI) and check the certificate against",
            },
            ParamSpec::flag(
                "verify",
                true,
                "the clients check the certificate (chain to a trusted CA, name); false: they accept anything, like `curl -k`",
            ),
            ParamSpec::int(
                "handshakes",
                1,
                1000,
                20,
                "fresh connections the trusting client opens and times",
            ),
            ParamSpec::int(
                "requests",
                1,
                1000,
                10,
                "GETs the trusting client then sends over one kept-alive connection",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::text(
                    "tls_version",
                    "TLS version Nginx negotiated with the trusting client (`TLSv1.3`), reported by Nginx",
                ),
                ObsSpec::flag(
                    "verified",
                    "the trusting client completed its handshakes (with `verify`, after checking chain and name)",
                ),
                ObsSpec::text(
                    "verify_error",
                    "why that client refused the server (`none`, `unknown-issuer`, `wrong-name`, …)",
                ),
                ObsSpec::number(
                    "handshakes_completed",
                    "fresh connections whose TLS handshake the trusting client completed",
                ),
                ObsSpec::number(
                    "https_status",
                    "HTTP status of the first GET / over a completed handshake",
                ),
                ObsSpec::text(
                    "backend",
                    "instance id of the agent that answered through Nginx",
                ),
                ObsSpec::flag("hsts", "the HTTPS answer carries Strict-Transport-Security"),
                ObsSpec::number(
                    "requests_answered",
                    "GETs answered 200 over the kept-alive connection(s)",
                ),
                ObsSpec::number(
                    "connections_seen",
                    "distinct TCP connections Nginx saw those GETs arrive on ($connection): 1 when the connection is kept alive",
                ),
                ObsSpec::number(
                    "request_ms",
                    "median time of one of those GETs once the connection is up",
                ),
                ObsSpec::flag(
                    "untrusted_rejected",
                    "a client trusting another CA was refused with a certificate error",
                ),
                ObsSpec::text(
                    "untrusted_error",
                    "the error that client got (`unknown-issuer` expected; `none` if it got through)",
                ),
                ObsSpec::number(
                    "redirect_status",
                    "HTTP status of a plain-HTTP GET / on port 80",
                ),
                ObsSpec::flag(
                    "redirects_to_https",
                    "that answer's Location starts with https://",
                ),
                ObsSpec::number(
                    "handshake_ms",
                    "median TLS handshake time of the trusting client, after the TCP connect",
                ),
                ObsSpec::number("tcp_connect_ms", "median TCP connect time, for comparison"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("handshakes-started", "the timed TLS handshakes begin"),
                Milestone::new("handshakes-finished", "the timed handshakes are done"),
                Milestone::new(
                    "requests-finished",
                    "the GETs over the kept-alive connection are answered",
                ),
                Milestone::new(
                    "untrusted-client-done",
                    "the client without the lab CA was refused (or not)",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let nginx = ctx.service("nginx")?;
        let port = tls::tls_port(nginx)?;
        let server_name = ctx.text("server_name").to_string();
        let versions = tls::versions(ctx.text("tls_version"));
        let verify = ctx.flag("verify");
        let trusting = config(verify, tls::lab_ca, versions)?;
        let mut obs = Observations::new();

        ctx.mark("handshakes-started");
        let handshakes =
            timed_handshakes(port, &server_name, &trusting, ctx.int("handshakes")).await?;
        ctx.mark("handshakes-finished");
        let verified = handshakes.refused.is_none();
        handshakes.observe(&mut obs);
        if verified {
            let served =
                kept_alive_requests(port, &server_name, &trusting, ctx.int("requests") as usize)
                    .await?;
            ctx.mark("requests-finished");
            served.observe(&mut obs);
        }

        let stranger = config(verify, || Ok(vec![tls::made_up_ca()?]), versions)?;
        let (rejected, error) = match tls::connect_tls(port, &server_name, stranger).await? {
            Ok(_) => (false, "none"),
            Err(refused) => (refused.certificate, refused.kind),
        };
        ctx.mark("untrusted-client-done");
        obs.insert("untrusted_rejected".into(), Value::from(rejected));
        obs.insert("untrusted_error".into(), Value::from(error));

        let redirect = plain_http(nginx.port(), &server_name).await?;
        obs.insert(
            "redirect_status".into(),
            Value::from(redirect.status.as_u16()),
        );
        obs.insert(
            "redirects_to_https".into(),
            Value::from(
                redirect
                    .header("location")
                    .is_some_and(|l| l.starts_with("https://")),
            ),
        );
        Ok(obs)
    }
}

/// A client configuration trusting `roots` (or, without `verify`, anything).
fn config(
    verify: bool,
    roots: impl FnOnce() -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ExerciseError>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, ExerciseError> {
    if verify {
        tls::client_config(roots()?, versions, &["http/1.1"])
    } else {
        tls::insecure_client_config(versions, &["http/1.1"])
    }
}

/// What the fresh, timed connections showed.
struct Handshakes {
    tcp: Vec<Duration>,
    tls: Vec<Duration>,
    refused: Option<tls::Refusal>,
}

/// Opens `n` fresh connections one after another, timing TCP and TLS apart;
/// stops at the first refused handshake.
async fn timed_handshakes(
    port: u16,
    server_name: &str,
    config: &Arc<ClientConfig>,
    n: i64,
) -> Result<Handshakes, ExerciseError> {
    let mut seen = Handshakes {
        tcp: Vec::new(),
        tls: Vec::new(),
        refused: None,
    };
    for _ in 0..n {
        match tls::connect_tls(port, server_name, config.clone()).await? {
            Ok(conn) => {
                seen.tcp.push(conn.tcp);
                seen.tls.push(conn.handshake);
            }
            Err(refused) => {
                seen.refused = Some(refused);
                break;
            }
        }
    }
    Ok(seen)
}

impl Handshakes {
    fn observe(mut self, obs: &mut Observations) {
        obs.insert("verified".into(), Value::from(self.refused.is_none()));
        obs.insert(
            "verify_error".into(),
            Value::from(self.refused.as_ref().map_or("none", |r| r.kind)),
        );
        obs.insert("handshakes_completed".into(), Value::from(self.tls.len()));
        obs.insert(
            "handshake_ms".into(),
            Value::from(percentile_ms(&mut self.tls, 50.0)),
        );
        obs.insert(
            "tcp_connect_ms".into(),
            Value::from(percentile_ms(&mut self.tcp, 50.0)),
        );
    }
}

/// What the GETs over the kept-alive connection showed.
struct Served {
    /// Answers in order.
    answers: Vec<Answer>,
    /// Time of each request once its connection was up.
    times: Vec<Duration>,
}

/// Sends `n` GETs, one after another, over one TLS connection; if the server
/// closes it (no keep-alive), opens another and goes on: the connections Nginx
/// reports then show what keep-alive saves.
async fn kept_alive_requests(
    port: u16,
    server_name: &str,
    config: &Arc<ClientConfig>,
    n: usize,
) -> Result<Served, ExerciseError> {
    let mut served = Served {
        answers: Vec::new(),
        times: Vec::new(),
    };
    let mut send: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while served.answers.len() < n {
        let mut open = match send.take() {
            Some(mut kept) => match kept.ready().await {
                Ok(()) => kept,
                // The server closed it after the last answer.
                Err(_) => start_http1(port, server_name, config).await?,
            },
            None => start_http1(port, server_name, config).await?,
        };
        let request = hyper::Request::get("/")
            .header(hyper::header::HOST, server_name)
            .body(Empty::<Bytes>::new())
            .doing("building a request")?;
        let started = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = open.send_request(request).await?;
            let (parts, body) = response.into_parts();
            body.collect().await?;
            Ok::<_, hyper::Error>(Answer {
                status: parts.status,
                headers: parts.headers,
            })
        })
        .await
        .map_err(|_| ExerciseError("GET / over TLS: timed out".into()))?
        .doing("GET / over TLS")?;
        served.times.push(started.elapsed());
        let closing = answer
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        served.answers.push(answer);
        if !closing {
            send = Some(open);
        }
    }
    Ok(served)
}

/// A new verified TLS connection carrying HTTP/1.1.
async fn start_http1(
    port: u16,
    server_name: &str,
    config: &Arc<ClientConfig>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, ExerciseError> {
    let conn: TlsConn = tls::connect_tls(port, server_name, config.clone())
        .await?
        .map_err(|r| {
            ExerciseError(format!(
                "a handshake that had passed was refused: {}",
                r.detail
            ))
        })?;
    let (send, driver) = hyper::client::conn::http1::handshake(TokioIo::new(conn.stream))
        .await
        .doing("starting HTTP/1.1")?;
    tokio::spawn(driver);
    Ok(send)
}

impl Served {
    fn observe(mut self, obs: &mut Observations) {
        let Some(first) = self.answers.first() else {
            return;
        };
        obs.insert("https_status".into(), Value::from(first.status.as_u16()));
        if let Some(v) = first.header(TLS_HEADER) {
            obs.insert("tls_version".into(), Value::from(v));
        }
        if let Some(v) = http::instance(&first.headers) {
            obs.insert("backend".into(), Value::from(v));
        }
        obs.insert(
            "hsts".into(),
            Value::from(first.header("strict-transport-security").is_some()),
        );
        let ok = self
            .answers
            .iter()
            .filter(|a| a.status == hyper::StatusCode::OK)
            .count();
        obs.insert("requests_answered".into(), Value::from(ok));
        // Only when Nginx said which connection every answer came on.
        let connections: Option<BTreeSet<&str>> = self
            .answers
            .iter()
            .map(|a| a.header(CONNECTION_HEADER))
            .collect();
        if let Some(c) = connections {
            obs.insert("connections_seen".into(), Value::from(c.len()));
        }
        obs.insert(
            "request_ms".into(),
            Value::from(percentile_ms(&mut self.times, 50.0)),
        );
    }
}

/// A plain-HTTP `GET /` on Nginx's port 80.
async fn plain_http(port: u16, server_name: &str) -> Result<Answer, ExerciseError> {
    let plain = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| ExerciseError("connecting to nginx's HTTP port: timed out".into()))?
        .doing("connecting to nginx's HTTP port")?;
    http::get_over(plain, server_name, "/").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_parameters() {
        for p in Https.params() {
            p.check(&p.default).unwrap();
        }
    }

    #[test]
    fn kept_alive_answers_count_the_connections_nginx_reported() {
        let answer = |conn: Option<&str>| {
            let mut headers = hyper::HeaderMap::new();
            if let Some(c) = conn {
                headers.insert(CONNECTION_HEADER, c.parse().unwrap());
            }
            headers.insert(TLS_HEADER, "TLSv1.3".parse().unwrap());
            Answer {
                status: hyper::StatusCode::OK,
                headers,
            }
        };
        let mut obs = Observations::new();
        Served {
            answers: vec![answer(Some("7")), answer(Some("7")), answer(Some("9"))],
            times: vec![Duration::from_millis(1); 3],
        }
        .observe(&mut obs);
        assert_eq!(obs["connections_seen"], 2);
        assert_eq!(obs["requests_answered"], 3);
        assert_eq!(obs["tls_version"], "TLSv1.3");
        // An answer without the header: not counted rather than counted wrong.
        let mut obs = Observations::new();
        Served {
            answers: vec![answer(Some("7")), answer(None)],
            times: vec![Duration::from_millis(1); 2],
        }
        .observe(&mut obs);
        assert!(!obs.contains_key("connections_seen"));
    }
}
