//! The agent: infralab's own backend (`infralab serve http`, see
//! [`crate::agent`]), probed with `GET /health`.

use async_trait::async_trait;

use super::{Endpoint, RoundTrip, ServiceKind};

/// The `agent` kind.
pub struct Agent;

#[async_trait]
impl ServiceKind for Agent {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/agent.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        let url = format!("{}/health", endpoint.url.trim_end_matches('/'));
        match crate::client::http::probe_get(&url).await? {
            s if s.is_success() => Ok(()),
            s => Err(format!("GET /health answered {s}")),
        }
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&crate::client::http::ROUND_TRIP)
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::spec;

    #[test]
    fn image_is_the_infralab_binary() {
        let s = spec("agent");
        assert_eq!(
            s.ports,
            vec![("http".to_string(), crate::agent::DEFAULT_PORT)]
        );
        assert!(s.local.copy_self);
        assert_eq!(s.local.entrypoint, vec!["/usr/local/bin/infralab"]);
        assert_eq!(s.local.cmd, vec!["serve", "http"]);
        // Never pulled from a public registry by accident.
        assert!(s.image.starts_with("localhost/"));
    }
}
