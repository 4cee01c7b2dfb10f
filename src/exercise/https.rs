//! `https`: Nginx terminates TLS in front of the agent.
//!
//! Three clients talk to the same Nginx:
//!
//! - one trusts the lab's CA (`labs/protocols/tls/lab-ca.pem`, compiled in):
//!   it checks the certificate's chain and name during the handshake, then asks
//!   for `/` and gets the agent's answer through Nginx. Nginx itself reports the
//!   TLS version it negotiated (`$ssl_protocol`) in a response header;
//! - one trusts only a CA made up for this run (rcgen): the server's certificate
//!   does not chain to it, and the handshake is refused with a certificate error;
//! - one speaks plain HTTP to port 80 and is redirected to HTTPS (the redirect is
//!   observed, not followed: the HTTPS port is published on an ephemeral port).
//!
//! TCP connects and TLS handshakes are timed separately, so the cost TLS adds on
//! top of TCP shows.
//!
//! The TLS helpers here ([`client_config`], [`connect_tls`], [`get`]) are shared
//! with `http2-multiplexing`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{
    Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamKind, ParamSpec,
};
use crate::catalog::Endpoint;
use crate::stats::percentile_ms;

/// The lab catalog's test CA: it signed the certificate the protocol labs'
/// Nginx serves (`labs/protocols/tls/localhost.pem`, valid for `localhost` and
/// `127.0.0.1`). Its private key was thrown away after signing.
pub(crate) const LAB_CA_PEM: &str = include_str!("../../labs/protocols/tls/lab-ca.pem");

/// Longest a TCP connect or TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one plain request (no deliberate delay) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Header in which the labs' Nginx reports `$ssl_protocol`.
const TLS_HEADER: &str = "x-tls-protocol";

/// The header the agent names itself in.
const INSTANCE_HEADER: &str = "x-infralab-instance";

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
            ParamSpec::int(
                "handshakes",
                1,
                1000,
                20,
                "fresh connections the trusting client opens and times",
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
                    "the client trusting the lab CA verified the certificate (chain and name) and completed the handshake",
                ),
                ObsSpec::text(
                    "verify_error",
                    "why that client refused the server (`none`, `unknown-issuer`, `wrong-name`, …)",
                ),
                ObsSpec::number(
                    "https_status",
                    "HTTP status of GET / over the verified connection",
                ),
                ObsSpec::text(
                    "backend",
                    "instance id of the agent that answered through Nginx",
                ),
                ObsSpec::flag("hsts", "the HTTPS answer carries Strict-Transport-Security"),
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
                    "untrusted-client-done",
                    "the client without the lab CA was refused (or not)",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let nginx = ctx.service("nginx")?;
        let tls_port = tls_port(nginx)?;
        let server_name = ctx.text("server_name").to_string();
        let versions = versions(ctx.text("tls_version"));
        let mut obs = Observations::new();

        // 1. The client that trusts the lab's CA: fresh connections, timed.
        let trusting = client_config(lab_ca()?, versions, &["http/1.1"])?;
        let mut tcp = Vec::new();
        let mut handshakes = Vec::new();
        let mut verified = None;
        let mut verify_error = "none";
        ctx.mark("handshakes-started");
        for _ in 0..ctx.int("handshakes") {
            match connect_tls(tls_port, &server_name, trusting.clone()).await? {
                Ok(conn) => {
                    tcp.push(conn.tcp);
                    handshakes.push(conn.handshake);
                    verified = Some(conn.stream);
                }
                Err(refused) => {
                    verify_error = refused.kind;
                    verified = None;
                    break;
                }
            }
        }
        ctx.mark("handshakes-finished");
        obs.insert("verified".into(), Value::from(verified.is_some()));
        obs.insert("verify_error".into(), Value::from(verify_error));
        if !handshakes.is_empty() {
            obs.insert(
                "handshake_ms".into(),
                Value::from(percentile_ms(&mut handshakes, 50.0)),
            );
            obs.insert(
                "tcp_connect_ms".into(),
                Value::from(percentile_ms(&mut tcp, 50.0)),
            );
        }
        if let Some(stream) = verified {
            let answer = get(stream, &server_name, "/").await?;
            obs.insert("https_status".into(), Value::from(answer.status.as_u16()));
            if let Some(v) = answer.header(TLS_HEADER) {
                obs.insert("tls_version".into(), Value::from(v));
            }
            if let Some(v) = answer.header(INSTANCE_HEADER) {
                obs.insert("backend".into(), Value::from(v));
            }
            obs.insert(
                "hsts".into(),
                Value::from(answer.header("strict-transport-security").is_some()),
            );
        }

        // 2. A client that trusts some other CA (made up for this run).
        let stranger = client_config(vec![made_up_ca()?], versions, &["http/1.1"])?;
        let (rejected, error) = match connect_tls(tls_port, &server_name, stranger).await? {
            Ok(_) => (false, "none"),
            Err(refused) => (refused.certificate, refused.kind),
        };
        ctx.mark("untrusted-client-done");
        obs.insert("untrusted_rejected".into(), Value::from(rejected));
        obs.insert("untrusted_error".into(), Value::from(error));

        // 3. Plain HTTP on port 80.
        let plain = within(
            "connecting to nginx's HTTP port",
            TcpStream::connect(("127.0.0.1", nginx.port())),
        )
        .await?;
        let answer = get(plain, &server_name, "/").await?;
        obs.insert(
            "redirect_status".into(),
            Value::from(answer.status.as_u16()),
        );
        obs.insert(
            "redirects_to_https".into(),
            Value::from(
                answer
                    .header("location")
                    .is_some_and(|l| l.starts_with("https://")),
            ),
        );
        Ok(obs)
    }
}

/// The published host port of Nginx's TLS port (443, named `tls`).
pub(crate) fn tls_port(nginx: &Endpoint) -> Result<u16, ExerciseError> {
    nginx.named_port("tls").ok_or_else(|| {
        ExerciseError(format!(
            "service `{}` publishes no `tls` port (443); compose/nginx.yaml must declare it",
            nginx.service
        ))
    })
}

/// TLS versions for the `tls_version` parameter.
fn versions(choice: &str) -> &'static [&'static SupportedProtocolVersion] {
    static TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    match choice {
        "1.2" => TLS12,
        "1.3" => TLS13,
        _ => rustls::ALL_VERSIONS,
    }
}

/// The lab CA as a trust anchor.
pub(crate) fn lab_ca() -> Result<Vec<CertificateDer<'static>>, ExerciseError> {
    let certs = CertificateDer::pem_slice_iter(LAB_CA_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .doing("reading the lab CA")?;
    if certs.is_empty() {
        return Err(ExerciseError("the lab CA file holds no certificate".into()));
    }
    Ok(certs)
}

/// A CA nobody else knows, made up for this run: a client trusting only it must
/// refuse the lab's server.
fn made_up_ca() -> Result<CertificateDer<'static>, ExerciseError> {
    let key = rcgen::KeyPair::generate().doing("generating a key")?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "some other CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).doing("signing a CA")?;
    Ok(cert.der().clone())
}

/// A client configuration trusting exactly `roots`, offering `versions` and the
/// ALPN protocols `alpn` (e.g. `h2`, `http/1.1`).
pub(crate) fn client_config(
    roots: Vec<CertificateDer<'static>>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
) -> Result<Arc<ClientConfig>, ExerciseError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root).doing("adding a trusted CA")?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .doing("configuring TLS")?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// A verified TLS connection and what it cost.
pub(crate) struct TlsConn {
    /// The connection, ready for HTTP.
    pub stream: TlsStream<TcpStream>,
    /// TCP connect time.
    pub tcp: Duration,
    /// TLS handshake time, after the TCP connect.
    pub handshake: Duration,
}

impl TlsConn {
    /// The ALPN protocol the server chose (`h2`, `http/1.1`), or `none`.
    pub fn alpn(&self) -> String {
        self.stream
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_else(|| "none".into())
    }
}

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// Short kind: `unknown-issuer`, `wrong-name`, `expired`, … or `tls-error`.
    pub kind: &'static str,
    /// Whether the client refused the server's certificate.
    pub certificate: bool,
    /// The full error.
    pub detail: String,
}

/// Connects to `127.0.0.1:port` and runs a TLS handshake for `server_name`.
/// `Ok(Err(_))`: the handshake failed (the lesson, e.g. an untrusted
/// certificate); `Err(_)`: the server could not be reached at all.
pub(crate) async fn connect_tls(
    port: u16,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<Result<TlsConn, Refusal>, ExerciseError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ExerciseError(format!("`{server_name}` is not a server name: {e}")))?;
    let started = Instant::now();
    let tcp = within(
        "connecting to nginx's TLS port",
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await?;
    let _ = tcp.set_nodelay(true);
    let connected = started.elapsed();
    let started = Instant::now();
    let handshake = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| ExerciseError("the TLS handshake with nginx timed out".into()))?;
    Ok(match handshake {
        Ok(stream) => Ok(TlsConn {
            stream,
            tcp: connected,
            handshake: started.elapsed(),
        }),
        Err(e) => Err(refusal(&e)),
    })
}

/// Classifies a failed handshake.
fn refusal(e: &std::io::Error) -> Refusal {
    use rustls::CertificateError as C;
    let detail = e.to_string();
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return Refusal {
            kind: "io-error",
            certificate: false,
            detail,
        };
    };
    let (kind, certificate) = match tls {
        rustls::Error::InvalidCertificate(c) => (
            match c {
                C::UnknownIssuer => "unknown-issuer",
                C::NotValidForName | C::NotValidForNameContext { .. } => "wrong-name",
                C::Expired | C::ExpiredContext { .. } => "expired",
                C::NotValidYet | C::NotValidYetContext { .. } => "not-yet-valid",
                C::BadSignature => "bad-signature",
                C::Revoked => "revoked",
                _ => "invalid-certificate",
            },
            true,
        ),
        _ => ("tls-error", false),
    };
    Refusal {
        kind,
        certificate,
        detail,
    }
}

/// An HTTP answer (its body read and dropped).
pub(crate) struct Answer {
    pub status: hyper::StatusCode,
    pub headers: hyper::HeaderMap,
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 `GET path` with `Host: host` over `io`, body read to the end.
pub(crate) async fn get<S>(io: S, host: &str, path: &str) -> Result<Answer, ExerciseError>
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
    within("GET /", async {
        let response = send.send_request(request).await?;
        let (parts, body) = response.into_parts();
        body.collect().await?;
        Ok::<_, hyper::Error>(Answer {
            status: parts.status,
            headers: parts.headers,
        })
    })
    .await
}

/// Awaits `fut` for at most [`REQUEST_TIMEOUT`], naming `what` in errors.
async fn within<T, E: std::fmt::Display>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ExerciseError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| ExerciseError(format!("{what}: timed out")))?
        .doing(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/labs/protocols/tls");

    /// Makes a new lab CA and server certificate and checks that a client
    /// trusting the new CA verifies the new server. They are written to a
    /// temporary folder; to renew the committed ones, run
    /// `INFRALAB_RENEW_LAB_CERTS=1 cargo test renewed_lab_certificates`, which
    /// writes them to `labs/protocols/tls/`. The CA's key is never kept:
    /// nothing else can ever be signed by it.
    #[tokio::test]
    async fn renewed_lab_certificates_verify() {
        let temp = tempfile::tempdir().unwrap();
        let dir = match std::env::var_os("INFRALAB_RENEW_LAB_CERTS") {
            Some(_) => std::path::PathBuf::from(TLS_DIR),
            None => temp.path().to_path_buf(),
        };
        write_lab_certificates(&dir);
        let ca: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("lab-ca.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let port = lab_server_from(&dir).await;
        let config = client_config(ca, versions("any"), &["h2"]).unwrap();
        let conn = connect_tls(port, "localhost", config).await.unwrap();
        assert!(
            conn.is_ok(),
            "a client trusting the new CA verifies the new server"
        );
    }

    fn write_lab_certificates(dir: &std::path::Path) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, date_time_ymd,
        };
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "infralab lab CA (test only)");
        ca.distinguished_name
            .push(DnType::OrganizationName, "infralab");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = date_time_ymd(2025, 1, 1);
        ca.not_after = date_time_ymd(2125, 1, 1);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = date_time_ymd(2025, 1, 1);
        leaf.not_after = date_time_ymd(2125, 1, 1);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("lab-ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("localhost.pem"), leaf_cert.pem()).unwrap();
        std::fs::write(dir.join("localhost.key"), leaf_key.serialize_pem()).unwrap();
    }

    /// A TLS server on a free loopback port serving the committed certificate.
    async fn lab_server() -> u16 {
        lab_server_from(std::path::Path::new(TLS_DIR)).await
    }

    /// A TLS server on a free loopback port serving the certificate in `dir`.
    async fn lab_server_from(dir: &std::path::Path) -> u16 {
        use rustls::pki_types::PrivateKeyDer;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("localhost.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("localhost.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("the committed key belongs to the committed certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        use tokio::io::AsyncWriteExt;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn the_committed_certificate_verifies_against_the_lab_ca_for_localhost_and_its_ip() {
        let port = lab_server().await;
        for name in ["localhost", "127.0.0.1"] {
            for v in ["1.2", "1.3", "any"] {
                let config = client_config(lab_ca().unwrap(), versions(v), &["h2"]).unwrap();
                let conn = connect_tls(port, name, config).await.unwrap();
                let conn = conn.unwrap_or_else(|r| panic!("{name} over TLS {v}: {r:?}"));
                assert_eq!(conn.alpn(), "h2");
                assert!(conn.handshake > Duration::ZERO);
            }
        }
    }

    #[tokio::test]
    async fn other_cas_and_other_names_are_refused_with_a_certificate_error() {
        let port = lab_server().await;
        let stranger = client_config(vec![made_up_ca().unwrap()], versions("any"), &[]).unwrap();
        let refused = connect_tls(port, "localhost", stranger)
            .await
            .unwrap()
            .err()
            .expect("a made-up CA must not verify the lab's server");
        assert_eq!(refused.kind, "unknown-issuer", "{refused:?}");
        assert!(refused.certificate);

        let trusting = client_config(lab_ca().unwrap(), versions("any"), &[]).unwrap();
        let refused = connect_tls(port, "example.com", trusting)
            .await
            .unwrap()
            .err()
            .expect("the certificate is not valid for example.com");
        assert_eq!(refused.kind, "wrong-name", "{refused:?}");
        assert!(refused.certificate);
    }

    #[tokio::test]
    async fn an_unreachable_port_is_an_exercise_error_not_a_refusal() {
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = client_config(lab_ca().unwrap(), versions("any"), &[]).unwrap();
        assert!(connect_tls(free, "localhost", config).await.is_err());
    }

    #[test]
    fn the_lab_ca_is_a_single_certificate() {
        assert_eq!(lab_ca().unwrap().len(), 1);
    }
}
