//! Mosquitto: probed with an MQTT CONNECT that must be answered by a
//! successful CONNACK (rumqttc).
//!
//! Quirk: Mosquitto 2 listens on localhost only and refuses anonymous clients
//! unless its config says `listener 1883` and `allow_anonymous true`; the compose
//! file starts it with the official image's `/mosquitto-no-auth.conf`, and the
//! local image ships the same file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{ConnectReturnCode, Event, EventLoop, MqttOptions, Packet};

use super::{Endpoint, ServiceKind};

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
        let mut options = MqttOptions::new(id, endpoint.host.clone(), endpoint.port());
        options.set_keep_alive(Duration::from_secs(5));
        let mut eventloop = EventLoop::new(options, 1);
        let event = tokio::time::timeout(ATTEMPT, eventloop.poll())
            .await
            .map_err(|_| format!("no CONNACK within {ATTEMPT:?}"))?
            .map_err(|e| e.to_string())?;
        match event {
            Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                Ok(())
            }
            Event::Incoming(Packet::ConnAck(ack)) => {
                Err(format!("CONNACK refused: {:?}", ack.code))
            }
            other => Err(format!("expected CONNACK, got {other:?}")),
        }
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
