//! Mosquitto: probed with an MQTT CONNECT that must be answered by a
//! successful CONNACK ([`mqtt::probe`]).
//!
//! Quirk: Mosquitto 2 listens on localhost only and refuses anonymous clients
//! unless its config says `listener 1883` and `allow_anonymous true`; the compose
//! file starts it with the official image's `/mosquitto-no-auth.conf`, and the
//! local image ships the same file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{Endpoint, RoundTrip, ServiceKind};
use crate::client::mqtt;

/// How long one probe attempt may take: under the engine's 2 s cap per attempt,
/// so a timeout is reported in the probe's own words.
const ATTEMPT: Duration = Duration::from_millis(1800);

/// The `mosquitto` kind.
pub struct Mosquitto;

#[async_trait]
impl ServiceKind for Mosquitto {
    fn name(&self) -> &'static str {
        "mosquitto"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/mosquitto.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        // Client ids must be unique: the broker drops the older of two sessions.
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "infralab-probe-{}-{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        );
        mqtt::probe(&id, &endpoint.host, endpoint.port(), ATTEMPT).await
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&mqtt::ROUND_TRIP)
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::spec;

    #[test]
    fn starts_with_the_no_auth_config_in_both_images() {
        let s = spec("mosquitto");
        assert_eq!(s.ports, vec![("mqtt".to_string(), 1883)]);
        assert_eq!(s.url, "mqtt://{host}:{port}");
        let command = s.command.as_ref().expect("compose command");
        assert!(command.iter().any(|a| a == "/mosquitto-no-auth.conf"));
        let conf = &s.local.files["/mosquitto-no-auth.conf"];
        assert!(conf.contains("listener 1883") && conf.contains("allow_anonymous true"));
    }
}
