//! Other engines: a small lab on Podman's Docker-compatible API (a private
//! `podman system service` on a socket in a temp folder) and on this machine's
//! Docker engine reached over TCP on 127.0.0.1 (a relay from a loopback port to
//! the Docker socket, as a remote `tcp://` engine is reached). Each asserts the
//! verdicts and that nothing labelled is left on that engine.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{infralab, json_report, scenario, shared, text};

/// A Redis round trip, plain and while the engine pauses a second Redis the
/// exercise does not use (pausing the one it uses would only measure how long
/// the pause lasts), then the heal that unpauses it before the next scenario.
fn lab(name: &str) -> (tempfile::TempDir, PathBuf) {
    crate::common::write_lab(&format!(
        r#"name: {name}
title: A Redis round trip on another engine
section: getting-started
summary: A Redis write and read-back, plain and beside a pause.
services:
  redis: {{ kind: redis }}
  spare: {{ kind: redis }}
exercise: smoke
scenarios:
  - name: round-trip
    description: SET then GET
    expect:
      redis_ok: true
      services_checked: 1
  - name: round-trip-beside-a-pause
    description: the other Redis is paused at once and unpaused (or healed) after
    faults:
      - {{ at: 0ms, action: pause, service: spare }}
      - {{ at: 300ms, action: unpause, service: spare }}
    expect:
      redis_ok: true
  - name: round-trip-after-the-heal
    description: SET then GET once every container is back
    expect:
      redis_ok: true
"#
    ))
}

/// infralab pointed at the engine at `docker_host`, with `env` (TLS settings).
fn infralab_on(docker_host: &str, env: &[(&str, &str)]) -> Command {
    let mut c = infralab();
    c.env("DOCKER_HOST", docker_host)
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .envs(env.iter().copied());
    c
}

/// Runs the lab against `docker_host` and checks both scenarios passed and
/// nothing labelled with the lab's name is left there.
fn run_lab_on(docker_host: &str, env: &[(&str, &str)], name: &str) -> Duration {
    let (_dir, path) = lab(name);
    let _cpu = shared();
    let started = Instant::now();
    let out = infralab_on(docker_host, env)
        .args(["run", path.to_str().unwrap(), "--format", "json"])
        .output()
        .expect("infralab runs");
    let took = started.elapsed();
    let report = json_report(&out);
    for name in [
        "round-trip",
        "round-trip-beside-a-pause",
        "round-trip-after-the-heal",
    ] {
        assert_eq!(
            scenario(&report, name)["verdict"],
            "pass",
            "{name} on {docker_host}:\n{}",
            text(&out)
        );
    }
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_nothing_left_on(docker_host, env, name);
    took
}

/// Containers and networks labelled with the lab's name on the engine at
/// `docker_host`, listed with the docker CLI pointed at it.
fn assert_nothing_left_on(docker_host: &str, env: &[(&str, &str)], lab: &str) {
    let ids = |what: &[&str]| {
        let out = Command::new("docker")
            .env("DOCKER_HOST", docker_host)
            .envs(env.iter().copied())
            .args(what)
            .args([
                "--filter",
                &format!("label=io.infralab.lab={lab}"),
                "--format",
                "{{.ID}}",
            ])
            .output()
            .expect("docker cli");
        assert!(out.status.success(), "docker {what:?} on {docker_host}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (containers, networks) = (ids(&["ps", "-a"]), ids(&["network", "ls"]));
    assert!(
        containers.is_empty() && networks.is_empty(),
        "lab {lab} left containers {containers:?} and networks {networks:?} on {docker_host}"
    );
}

/// `podman system service` on a socket of its own, stopped on drop.
struct PodmanService {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl PodmanService {
    fn start() -> PodmanService {
        let found = Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "podman is not installed: sudo apt-get install -y podman catatonit"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("podman.sock");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service starts");
        let service = PodmanService {
            child,
            socket,
            _dir: dir,
        };
        wait_for_socket(&service.socket);
        service
    }

    fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        // SIGTERM lets the service remove its socket and exit cleanly.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

fn wait_for_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_lab_runs_on_podman() {
    let podman = PodmanService::start();
    let host = podman.docker_host();
    let doctor = infralab_on(&host, &[])
        .arg("doctor")
        .output()
        .expect("doctor runs");
    let doctor_text = text(&doctor);
    assert!(
        doctor_text.contains("engine      Podman ") && doctor_text.contains(&host),
        "{doctor_text}"
    );
    let took = run_lab_on(&host, &[], &format!("engine-podman-{}", std::process::id()));
    eprintln!("lab on Podman: {:.1} s", took.as_secs_f64());
}

/// Relays every connection to a loopback TCP port to the Docker socket, the
/// way `socat TCP-LISTEN:PORT,bind=127.0.0.1,fork UNIX-CONNECT:…` would.
fn tcp_relay(socket: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("loopback port");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(engine) = UnixStream::connect(socket) else {
                continue;
            };
            let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
            let (mut e_in, mut e_out) = (engine.try_clone().unwrap(), engine);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut e_out);
                let _ = e_out.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = copy_stream(&mut e_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

fn copy_stream(from: &mut UnixStream, to: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

#[test]
fn a_lab_runs_on_docker_over_tcp() {
    let port = tcp_relay("/var/run/docker.sock");
    let host = format!("tcp://127.0.0.1:{port}");
    let doctor = infralab_on(&host, &[])
        .arg("doctor")
        .output()
        .expect("doctor runs");
    let doctor_text = text(&doctor);
    assert!(
        doctor_text.contains("engine      Docker ")
            && doctor_text.contains(&host)
            && doctor_text.contains("127.0.0.1 of this machine"),
        "{doctor_text}"
    );
    let took = run_lab_on(&host, &[], &format!("engine-tcp-{}", std::process::id()));
    eprintln!("lab on Docker over TCP: {:.1} s", took.as_secs_f64());
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written
/// as DOCKER_CERT_PATH expects them (ca.pem, cert.pem, key.pem); returns the
/// server's certificate chain and key.
fn tls_files(
    dir: &Path,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
    rustls::pki_types::CertificateDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "engine test CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let leaf = |names: Vec<String>, usage: rcgen::ExtendedKeyUsagePurpose| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        (p.signed_by(&key, &ca).unwrap(), key)
    };
    let (server, server_key) = leaf(
        vec!["127.0.0.1".into()],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(vec![], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), client_key.serialize_pem()).unwrap();
    (
        vec![server.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        ca.der().clone(),
    )
}

/// A TLS endpoint on a loopback port that requires a client certificate from
/// `ca` and relays to the Docker socket: a `tcp://` engine with
/// `--tlsverify`, as dockerd serves it.
fn tls_relay(dir: &Path, socket: &'static str) -> u16 {
    let (chain, key, ca) = tls_files(dir);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").expect("loopback port");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut engine) = tokio::net::UnixStream::connect(socket).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut engine).await;
                });
            }
        });
    });
    port
}

#[test]
fn a_lab_runs_on_docker_over_tcp_with_tls() {
    let certs = tempfile::tempdir().expect("temp dir");
    let port = tls_relay(certs.path(), "/var/run/docker.sock");
    let host = format!("tcp://127.0.0.1:{port}");
    let cert_path = certs.path().to_str().unwrap();
    let tls = [("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", cert_path)];
    // Without TLS the engine does not answer: the relay really requires it.
    let plain = infralab_on(&host, &[]).arg("doctor").output().unwrap();
    assert_eq!(plain.status.code(), Some(3), "{}", text(&plain));
    let doctor = infralab_on(&host, &tls).arg("doctor").output().unwrap();
    let doctor_text = text(&doctor);
    assert!(
        doctor.status.success() && doctor_text.contains("engine      Docker "),
        "{doctor_text}"
    );
    let took = run_lab_on(&host, &tls, &format!("engine-tls-{}", std::process::id()));
    eprintln!(
        "lab on Docker over TCP with TLS: {:.1} s",
        took.as_secs_f64()
    );
}
