//! RabbitMQ: probed by opening an AMQP connection with the lab's credentials
//! ([`amqp::probe`]).
//!
//! Quirk: the broker accepts TCP well before it accepts AMQP logins (the Erlang
//! VM boots, then RabbitMQ's boot steps run); an open port means nothing.

use std::time::Duration;

use async_trait::async_trait;

use super::{Endpoint, RoundTrip, ServiceKind};
use crate::client::amqp;

/// How long one probe attempt may take: under the engine's 2 s cap per attempt,
/// so a timeout is reported in the probe's own words.
const ATTEMPT: Duration = Duration::from_millis(1800);

/// The `rabbitmq` kind.
pub struct Rabbitmq;

#[async_trait]
impl ServiceKind for Rabbitmq {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/rabbitmq.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        amqp::probe(&endpoint.url, ATTEMPT).await
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&amqp::ROUND_TRIP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{render_url, spec};

    #[test]
    fn amqp_is_primary_and_url_names_the_default_vhost() {
        let s = spec("rabbitmq");
        assert_eq!(s.ports[0], ("amqp".to_string(), 5672));
        assert_eq!(s.ports[1], ("management".to_string(), 15672));
        let endpoint = Endpoint {
            service: "mq".into(),
            kind: "rabbitmq".into(),
            host: "127.0.0.1".into(),
            ports: [
                ("amqp".to_string(), 40001),
                ("management".to_string(), 40002),
            ]
            .into(),
            env: s.env.clone(),
            url: String::new(),
            container: "c".into(),
        };
        assert_eq!(
            render_url(&s.url, &endpoint, "amqp"),
            "amqp://infralab:infralab@127.0.0.1:40001/%2f"
        );
        assert!(s.ready_timeout >= Duration::from_secs(60));
    }
}
