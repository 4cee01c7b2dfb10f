//! [`Engine`]: the only place that talks to the container engine (Docker, or
//! Podman's Docker-compatible API).
//!
//! `stack` starts a lab's services (network, containers, readiness) and tears
//! them down; `faults` disturbs them; `gc` removes what a killed process left.
//! Every resource carries the `io.infralab.*` labels from the moment it is
//! created, so teardown and gc find everything by label.

mod compat;
pub mod faults;
pub mod gc;
pub mod labels;
mod limits;
pub mod ready;
pub mod stack;

use bollard::Docker;

pub use stack::Stack;

/// Something in the environment is wrong (exit code 3). `hint` is the command
/// or step that fixes it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct EnvError {
    /// What happened.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl EnvError {
    /// An error without a hint.
    pub fn new(message: impl Into<String>) -> Self {
        EnvError {
            message: message.into(),
            hint: None,
        }
    }

    /// An error with a fix.
    pub fn hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        EnvError {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

impl From<crate::images::ImageError> for EnvError {
    fn from(e: crate::images::ImageError) -> Self {
        EnvError {
            message: e.message,
            hint: e.hint,
        }
    }
}

/// A connected engine: Docker, or Podman through its Docker-compatible API.
#[derive(Clone)]
pub struct Engine {
    /// The negotiated client.
    pub docker: Docker,
    /// Where it was reached (`unix:///var/run/docker.sock`, DOCKER_HOST …).
    pub host: String,
    /// Product, engine version and negotiated API version, for `doctor`:
    /// `Docker 20.10.24 (API 1.41)`, `Podman 4.3.1 (API 1.41)`.
    pub version: String,
    /// Which engine answers behind the API.
    pub product: Product,
    /// Whether the engine runs on this machine, which decides where the
    /// published ports can be reached.
    pub place: Place,
}

/// The engine behind the Docker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// Docker Engine (dockerd).
    Docker,
    /// Podman's Docker-compatible service (`podman system service`).
    Podman,
}

impl Product {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Product::Docker => "Docker",
            Product::Podman => "Podman",
        }
    }
}

/// Where the engine runs, seen from this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// On this machine (a unix socket, or TCP/SSH to a loopback address):
    /// ports published on its 127.0.0.1 are this machine's 127.0.0.1.
    Local,
    /// On another machine (`tcp://HOST`, `ssh://HOST`): ports are published on
    /// *that* machine's loopback, which this machine cannot reach.
    Remote {
        /// The engine's host name or address, from DOCKER_HOST.
        host: String,
    },
}

/// The engine infralab uses when DOCKER_HOST is not set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

impl Engine {
    /// Connects to DOCKER_HOST (`unix://`, `tcp://` with TLS when
    /// DOCKER_TLS_VERIFY is set and the certificates in DOCKER_CERT_PATH,
    /// `https://`, `ssh://`), negotiates the API version so older engines work,
    /// pings it, and finds out which engine it is.
    pub async fn connect() -> Result<Engine, EnvError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.into());
        let place = place_of(&host);
        let unreachable = |e: &dyn std::fmt::Display| {
            EnvError::hint(
                format!("cannot reach the Docker engine at {host}: {e}"),
                connect_hint(&host),
            )
        };
        let docker = connect_to(&host).map_err(|e| unreachable(&e))?;
        let docker = docker
            .with_request_modifier(compat::repeat_changes)
            .negotiate_version()
            .await
            .map_err(|e| unreachable(&e))?;
        docker.ping().await.map_err(|e| unreachable(&e))?;
        let v = docker.version().await.map_err(|e| unreachable(&e))?;
        let podman = v
            .components
            .iter()
            .flatten()
            .find(|c| c.name == "Podman Engine");
        let (product, engine_version) = match podman {
            Some(c) => (Product::Podman, c.version.clone()),
            None => (Product::Docker, v.version.clone().unwrap_or_default()),
        };
        let version = format!(
            "{} {engine_version} (API {})",
            product.name(),
            docker.client_version()
        );
        Ok(Engine {
            docker,
            host,
            version,
            product,
            place,
        })
    }

    /// The ulimits to ask for explicitly: none on Docker (containers get the
    /// daemon's), the service's own hard limits on Podman (see [`limits`]).
    pub fn ulimits(&self) -> Option<Vec<bollard::models::ResourcesUlimits>> {
        (self.product == Product::Podman)
            .then(|| limits::for_podman(self.host.trim_start_matches("unix://")))
    }

    /// Where published ports are and who can reach them, for `doctor`.
    pub fn ports_summary(&self) -> String {
        match &self.place {
            Place::Local => "published on 127.0.0.1 of this machine".into(),
            Place::Remote { host } => format!(
                "published on 127.0.0.1 of {host}, out of reach from here: \
                 labs cannot run against this engine (run infralab on {host})"
            ),
        }
    }

    /// Fails when the services' ports could not be reached from here: infralab
    /// publishes them on the engine host's loopback only (never on a network
    /// interface), so a remote engine's services are out of reach of the
    /// exercises, probes and connection strings on this machine.
    pub fn check_ports_reachable(&self) -> Result<(), EnvError> {
        match &self.place {
            Place::Local => Ok(()),
            Place::Remote { host } => Err(EnvError::hint(
                format!(
                    "the engine at {} runs on {host}: infralab publishes service ports on that \
                     machine's 127.0.0.1 only (never beyond loopback), which this machine cannot \
                     reach, and the lab's clients run here",
                    self.host
                ),
                format!(
                    "run infralab on {host} itself (e.g. `ssh {host} infralab run LAB`), \
                     where the ports are on loopback; `infralab doctor` shows where the engine runs"
                ),
            )),
        }
    }
}

/// A bollard client for `host`. For `tcp://`, TLS is on when
/// DOCKER_TLS_VERIFY is non-empty, as for the docker CLI; bollard then reads
/// key.pem, cert.pem and ca.pem from DOCKER_CERT_PATH (else `~/.docker`).
fn connect_to(host: &str) -> Result<Docker, bollard::errors::Error> {
    const TIMEOUT_S: u64 = 120;
    if host.starts_with("unix://") || host.starts_with('/') {
        let path = host.trim_start_matches("unix://");
        return Docker::connect_with_unix(path, TIMEOUT_S, bollard::API_DEFAULT_VERSION);
    }
    let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty());
    if host.starts_with("tcp://") && !tls {
        return Docker::connect_with_http(host, TIMEOUT_S, bollard::API_DEFAULT_VERSION);
    }
    Docker::connect_with_host(host)
}

/// What fixes a failed connection, by scheme.
fn connect_hint(host: &str) -> String {
    if host.starts_with("ssh://") {
        "ssh:// needs the `ssh` client, a key that logs in without a prompt (BatchMode), \
         the host in known_hosts, and the `docker` command on the remote host \
         (infralab runs `docker system dial-stdio` there); `infralab doctor` checks"
            .into()
    } else if host.starts_with("tcp://") || host.starts_with("https://") {
        "check the address; for TLS set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to a folder \
         with ca.pem, cert.pem and key.pem; `infralab doctor` checks"
            .into()
    } else {
        "start the engine (`sudo systemctl start docker`, or for Podman \
         `podman system service --time=0 unix:///run/podman/podman.sock &`) \
         or point DOCKER_HOST at a running one; `infralab doctor` checks"
            .into()
    }
}

/// Where an engine runs, from its DOCKER_HOST address: unix sockets and
/// loopback addresses are this machine.
pub fn place_of(host: &str) -> Place {
    let Some((scheme, rest)) = host.split_once("://") else {
        return Place::Local;
    };
    if scheme == "unix" || scheme == "npipe" {
        return Place::Local;
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let name = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    let loopback = name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Place::Local
    } else {
        Place::Remote {
            host: name.to_string(),
        }
    }
}

/// True for Docker answers that mean "already done" during teardown:
/// not found, conflict (removal in progress), not modified.
pub fn already_done(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409 | 304,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_loopback_are_local() {
        for h in [
            "unix:///var/run/docker.sock",
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2376",
            "tcp://[::1]:2375",
            "ssh://me@localhost",
        ] {
            assert_eq!(place_of(h), Place::Local, "{h}");
        }
    }

    #[test]
    fn a_remote_engine_is_refused_with_its_host_named() {
        let host = "tcp://10.0.0.5:2375";
        let engine = Engine {
            docker: Docker::connect_with_http(host, 1, bollard::API_DEFAULT_VERSION).unwrap(),
            host: host.into(),
            version: "Docker 27.0.0 (API 1.47)".into(),
            product: Product::Docker,
            place: place_of(host),
        };
        let e = engine.check_ports_reachable().unwrap_err();
        assert!(e.message.contains("runs on 10.0.0.5") && e.message.contains("127.0.0.1"));
        assert!(e.hint.unwrap().contains("ssh 10.0.0.5 infralab run LAB"));
        assert!(engine.ports_summary().contains("of 10.0.0.5, out of reach"));
        assert_eq!(engine.ulimits(), None);
    }

    #[test]
    fn other_hosts_are_remote() {
        let remote = |h: &str| Place::Remote { host: h.into() };
        assert_eq!(place_of("tcp://10.0.0.5:2376"), remote("10.0.0.5"));
        assert_eq!(place_of("ssh://me@build-1:2222"), remote("build-1"));
        assert_eq!(
            place_of("https://engine.example:2376/"),
            remote("engine.example")
        );
    }
}
