//! The agent: infralab's own backend, run in lab containers as
//! `infralab serve ROLE` (the `agent` kind, `compose/agent.yaml`).
//!
//! Labs need backends whose behaviour they control (which instance answered,
//! how slowly) and no official image offers that, so the infralab binary itself
//! is the server. Each role is one small module; [`serve`] picks it.

pub mod chain;
pub mod cpu;
pub mod events;
mod http;
pub mod ledger;
pub mod orders;
pub mod sessions;
mod shared_redis;
pub mod sink;
pub mod tickets;

pub use http::INSTANCE_HEADER;

/// Roles `infralab serve` knows, for error messages and `--help`.
pub const ROLES: &[&str] = &["http"];

/// The port a role listens on when none is given (the agent kind's container port).
pub const DEFAULT_PORT: u16 = 8080;

/// Serves `role` on `0.0.0.0:port` until SIGTERM or Ctrl-C.
pub async fn serve(role: &str, port: u16) -> anyhow::Result<()> {
    match role {
        "http" => http::serve(port).await,
        other => anyhow::bail!(
            "unknown agent role `{other}`: known roles are {}",
            ROLES.join(", ")
        ),
    }
}

/// Who is answering: `INFRALAB_INSTANCE` (set by the engine per container, e.g.
/// `web-2`), else the container's hostname, else `agent`.
pub fn instance_id() -> String {
    ["INFRALAB_INSTANCE", "HOSTNAME"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "agent".to_string())
}

/// Resolves when the process is asked to stop. The agent is PID 1 in its
/// container, where the kernel ignores SIGTERM unless a handler is installed:
/// without this, `docker stop` would wait its full grace period.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_role_names_the_known_ones() {
        let err = serve("grpc-ish", 0).await.unwrap_err().to_string();
        assert!(err.contains("grpc-ish"), "{err}");
        assert!(err.contains("http"), "{err}");
    }
}
