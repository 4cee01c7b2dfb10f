//! TLS clients through rustls: a client configuration that trusts exactly the
//! given CAs (the lab CA compiled in, or one made up for a run), a timed
//! connect + handshake that tells a refused certificate from an unreachable
//! server, and the published port of Nginx's TLS listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::catalog::Endpoint;
use crate::exercise::{Context, ExerciseError};

/// The lab catalog's test CA: it signed the certificate the protocol labs'
/// Nginx serves (`labs/protocols/tls/localhost.pem`, valid for `localhost` and
/// `127.0.0.1`). Its private key was thrown away after signing.
pub const LAB_CA_PEM: &str = include_str!("../../labs/protocols/tls/lab-ca.pem");

/// Longest a TCP connect or TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The published host port of Nginx's TLS port (443, named `tls`).
pub fn tls_port(nginx: &Endpoint) -> Result<u16, ExerciseError> {
    nginx.named_port("tls").ok_or_else(|| {
        ExerciseError(format!(
            "service `{}` publishes no `tls` port (443); compose/nginx.yaml must declare it",
            nginx.service
        ))
    })
}

/// TLS versions for a choice: `1.2`, `1.3`, anything else both.
pub fn versions(choice: &str) -> &'static [&'static SupportedProtocolVersion] {
    static TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    match choice {
        "1.2" => TLS12,
        "1.3" => TLS13,
        _ => rustls::ALL_VERSIONS,
    }
}

/// The lab CA as a trust anchor.
pub fn lab_ca() -> Result<Vec<CertificateDer<'static>>, ExerciseError> {
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
pub fn made_up_ca() -> Result<CertificateDer<'static>, ExerciseError> {
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
pub fn client_config(
    roots: Vec<CertificateDer<'static>>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
) -> Result<Arc<ClientConfig>, ExerciseError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root).doing("adding a trusted CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .doing("configuring TLS")?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration that accepts any certificate from anyone: the
/// classic `curl -k` / `verify=False` client. The handshake still proves that
/// the server holds the key of the certificate it showed, but nothing ties that
/// certificate to a CA or to the name asked for, so a man in the middle is
/// accepted just the same. For showing the hole only.
pub fn insecure_client_config(
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
) -> Result<Arc<ClientConfig>, ExerciseError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnything(provider.signature_verification_algorithms));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .doing("configuring TLS")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Accepts every certificate chain and name; checks only the handshake
/// signature against the certificate shown.
#[derive(Debug)]
struct AcceptAnything(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A verified TLS connection and what it cost.
pub struct TlsConn {
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
pub struct Refusal {
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
pub async fn connect_tls(
    port: u16,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<Result<TlsConn, Refusal>, ExerciseError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ExerciseError(format!("`{server_name}` is not a server name: {e}")))?;
    let started = Instant::now();
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| ExerciseError(format!("connecting to 127.0.0.1:{port}: timed out")))?
        .doing(&format!("connecting to 127.0.0.1:{port}"))?;
    let _ = tcp.set_nodelay(true);
    let connected = started.elapsed();
    let started = Instant::now();
    let handshake = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| ExerciseError("the TLS handshake timed out".into()))?;
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
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
    async fn the_insecure_client_accepts_any_ca_and_any_name() {
        let port = lab_server().await;
        for name in ["localhost", "example.com"] {
            let config = insecure_client_config(versions("any"), &[]).unwrap();
            let conn = connect_tls(port, name, config).await.unwrap();
            assert!(conn.is_ok(), "{name}");
        }
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
