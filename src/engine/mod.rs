//! [`Engine`]: the only place that talks to Docker.
//!
//! `stack` starts a lab's services (network, containers, readiness) and tears
//! them down; `faults` disturbs them; `gc` removes what a killed process left.
//! Every resource carries the `io.infralab.*` labels from the moment it is
//! created, so teardown and gc find everything by label.

pub mod faults;
pub mod gc;
pub mod labels;
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

/// A connected Docker engine.
#[derive(Clone)]
pub struct Engine {
    /// The negotiated client.
    pub docker: Docker,
    /// Where it was reached (`unix:///var/run/docker.sock`, DOCKER_HOST …).
    pub host: String,
    /// Engine version and negotiated API version, for `doctor`.
    pub version: String,
}

impl Engine {
    /// Connects (honouring DOCKER_HOST), negotiates the API version with the
    /// engine so older engines work, and pings it.
    pub async fn connect() -> Result<Engine, EnvError> {
        let host =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let unreachable = |e: &dyn std::fmt::Display| {
            EnvError::hint(
                format!("cannot reach the Docker engine at {host}: {e}"),
                "start it (`sudo systemctl start docker`) or point DOCKER_HOST at a running engine; `infralab doctor` checks",
            )
        };
        let docker = Docker::connect_with_defaults().map_err(|e| unreachable(&e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(&e))?;
        docker.ping().await.map_err(|e| unreachable(&e))?;
        let v = docker.version().await.map_err(|e| unreachable(&e))?;
        let version = format!(
            "engine {} (API {})",
            v.version.unwrap_or_default(),
            docker.client_version()
        );
        Ok(Engine {
            docker,
            host,
            version,
        })
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
