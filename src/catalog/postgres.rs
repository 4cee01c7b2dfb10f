//! PostgreSQL: probed with a real login and `SELECT 1`.
//!
//! Quirk: on first start the server runs twice (a socket-only one for
//! initialisation, then the real one), so "ready" in the log or an open port
//! means nothing; only a query over TCP with the lab's credentials does.

use std::time::Duration;

use async_trait::async_trait;

use super::{Endpoint, RoundTrip, ServiceKind};
use crate::client;

/// How long one probe attempt may take: under the engine's 2 s cap per attempt,
/// so a timeout is reported in the probe's own words.
const ATTEMPT: Duration = Duration::from_millis(1800);

/// The `postgres` kind.
pub struct Postgres;

#[async_trait]
impl ServiceKind for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/postgres.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        tokio::time::timeout(ATTEMPT, client::postgres::select_one(&endpoint.url))
            .await
            .map_err(|_| format!("no answer to SELECT 1 within {ATTEMPT:?}"))?
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&client::postgres::ROUND_TRIP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{render_url, spec};

    #[test]
    fn url_carries_the_credentials_of_the_container() {
        let s = spec("postgres");
        assert_eq!(s.ports, vec![("postgres".to_string(), 5432)]);
        assert_eq!(s.image, "postgres:17.2");
        let endpoint = Endpoint {
            service: "db".into(),
            kind: "postgres".into(),
            host: "127.0.0.1".into(),
            ports: [("postgres".to_string(), 40000)].into(),
            env: s.env.clone(),
            url: String::new(),
            container: "c".into(),
        };
        assert_eq!(
            render_url(&s.url, &endpoint, "postgres"),
            "postgres://infralab:infralab@127.0.0.1:40000/infralab"
        );
    }

    /// Compose (v2) interpolates `x-infralab` too: a single `$` in a recipe's
    /// script would be replaced, or rejected as a bad variable, by `docker compose`.
    /// Catalog-wide; it lives here because the entrypoint above is its main case.
    #[test]
    fn recipes_escape_dollars_for_compose() {
        for k in crate::catalog::KINDS {
            let extras = k.compose().split("\nx-infralab:").nth(1).unwrap_or("");
            assert!(
                !extras.replace("$$", "").contains('$'),
                "compose/{}.yaml: a single `$` under x-infralab (write `$$`)",
                k.name()
            );
        }
    }

    #[test]
    fn local_recipe_initialises_like_the_official_image() {
        let local = &spec("postgres").local;
        let entrypoint = &local.files["/usr/local/bin/docker-entrypoint.sh"];
        for needle in [
            "POSTGRES_PASSWORD",
            "POSTGRES_DB",
            "listen_addresses = '*'",
            "host all all all",
        ] {
            assert!(entrypoint.contains(needle), "entrypoint lacks {needle}");
        }
        assert_eq!(local.cmd, vec!["postgres"]);
    }
}
