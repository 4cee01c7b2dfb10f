//! Nginx: probed with an HTTP request on the published port
//! ([`crate::client::http::probe_get`]).
//!
//! Any HTTP response counts: a lab's own config may well answer 404 or 502 on
//! `/`, and that is still a server that is up. docker-proxy accepts TCP before
//! nginx listens, so only a parsed HTTP response proves readiness.

use async_trait::async_trait;

use super::{Endpoint, RoundTrip, ServiceKind};
use crate::client::http;

/// The `nginx` kind.
pub struct Nginx;

#[async_trait]
impl ServiceKind for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/nginx.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        http::probe_get(&endpoint.url).await.map(|_| ())
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&http::ROUND_TRIP)
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::spec;

    #[test]
    fn local_image_has_the_official_layout() {
        let s = spec("nginx");
        assert_eq!(
            s.ports,
            vec![("http".to_string(), 80), ("tls".to_string(), 443)]
        );
        let local = &s.local;
        assert_eq!(local.cmd, vec!["nginx", "-g", "daemon off;"]);
        assert!(local.files["/etc/nginx/nginx.conf"].contains("include /etc/nginx/conf.d/*.conf;"));
        assert!(local.files.contains_key("/etc/nginx/conf.d/default.conf"));
    }
}
