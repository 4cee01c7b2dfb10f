//! Nginx: probed with an HTTP request on the published port (reqwest).
//!
//! Any HTTP response counts: a lab's own config may well answer 404 or 502 on
//! `/`, and that is still a server that is up. docker-proxy accepts TCP before
//! nginx listens, so only a parsed HTTP response proves readiness.

use std::time::Duration;

use async_trait::async_trait;

use super::{Endpoint, ServiceKind};

/// How long one probe attempt may take: under the engine's 2 s cap per attempt,
/// so a timeout is reported in the probe's own words.
const ATTEMPT: Duration = Duration::from_millis(1800);

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
        http_get(&endpoint.url).await.map(|_| ())
    }
}

/// One GET with a short timeout and no proxy (a proxy from the environment must
/// not sit between infralab and a loopback port); returns the status.
pub(crate) async fn http_get(url: &str) -> Result<reqwest::StatusCode, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        // A redirect is an answer too (e.g. HTTP → HTTPS on a port not published as 443).
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    })?;
    Ok(response.status())
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[tokio::test]
    async fn any_http_status_is_an_answer_and_a_closed_port_is_not() {
        // A server that answers 404 to everything.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        assert_eq!(http_get(&format!("http://{addr}/")).await.unwrap(), 404);
        // A port nobody listens on (bound, then freed).
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(http_get(&format!("http://{free}/")).await.is_err());
    }
}
