//! Kafka: probed with a metadata request ([`kafka::broker_addresses`]) whose
//! answer must advertise the host-mapped port.
//!
//! Quirk: a Kafka client bootstraps from one address and then connects to the
//! address the broker *advertises*. Inside the container the broker listens on
//! 9092, but clients on the host must be sent to the published port, so the
//! engine reserves the host ports before the start (for every kind) and
//! [`Kafka::prepare`] puts
//! it in the advertised listener: `KAFKA_ADVERTISED_LISTENERS` for apache/kafka,
//! `ADVERTISED_LISTENER_URL` for tansu (the local image).

use std::time::Duration;

use async_trait::async_trait;

use super::{ContainerPlan, Endpoint, RoundTrip, ServiceKind};
use crate::client::kafka;

/// How long one probe attempt may take: under the engine's 2 s cap per attempt,
/// so a timeout is reported in the probe's own words.
const ATTEMPT: Duration = Duration::from_millis(1800);

/// The primary port's name in compose/kafka.yaml.
const PORT: &str = "kafka";

/// The `kafka` kind.
pub struct Kafka;

#[async_trait]
impl ServiceKind for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/kafka.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        let bootstrap = endpoint.url.clone();
        let expected = endpoint.port();
        // librdkafka's calls block: keep them off the async workers.
        tokio::task::spawn_blocking(move || probe_blocking(&bootstrap, expected))
            .await
            .map_err(|e| format!("probe task failed: {e}"))?
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&kafka::ROUND_TRIP)
    }

    fn prepare(&self, plan: &mut ContainerPlan) {
        let Some(port) = plan.host_ports.get(PORT).copied() else {
            // Nothing reserved: the probe will say what the broker advertises.
            return;
        };
        // Each image reads its own variable and ignores the other's; both are
        // set so neither keeps the Compose file's default.
        plan.env.insert(
            "KAFKA_ADVERTISED_LISTENERS".into(),
            format!("PLAINTEXT://127.0.0.1:{port}"),
        );
        plan.env.insert(
            "ADVERTISED_LISTENER_URL".into(),
            format!("tcp://127.0.0.1:{port}"),
        );
        // A lab's own tansu command line would win over the variable.
        if let (true, Some(cmd)) = (plan.local_image, plan.cmd.as_mut()) {
            set_flag(
                cmd,
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{port}"),
            );
        }
    }
}

/// Replaces the value of `flag` (as `--flag VALUE` or `--flag=VALUE`) if present.
fn set_flag(cmd: &mut [String], flag: &str, value: &str) {
    let prefix = format!("{flag}=");
    for i in 0..cmd.len() {
        if cmd[i] == flag && i + 1 < cmd.len() {
            cmd[i + 1] = value.to_string();
        } else if cmd[i].starts_with(&prefix) {
            cmd[i] = format!("{prefix}{value}");
        }
    }
}

fn probe_blocking(bootstrap: &str, expected_port: u16) -> Result<(), String> {
    let brokers = kafka::broker_addresses(bootstrap, ATTEMPT)?;
    match brokers.as_slice() {
        [] => Err("metadata lists no broker yet".into()),
        list if list
            .iter()
            .any(|(_, port)| *port == i32::from(expected_port)) =>
        {
            Ok(())
        }
        list => Err(format!(
            "the broker advertises {} but clients on the host need port {expected_port} \
             (advertised listener not set to the published port)",
            list.iter()
                .map(|(host, port)| format!("{host}:{port}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn plan(local_image: bool, cmd: Option<Vec<String>>) -> ContainerPlan {
        let s = crate::catalog::spec("kafka");
        ContainerPlan {
            image: if local_image {
                "infralab-local/kafka:x".into()
            } else {
                s.image.clone()
            },
            local_image,
            env: s.env.clone(),
            cmd,
            host_ports: BTreeMap::from([(PORT.to_string(), 41234)]),
            instance: "kafka".into(),
            peers: vec!["kafka".into()],
        }
    }

    #[test]
    fn the_broker_port_is_9092_inside_the_container() {
        assert_eq!(
            crate::catalog::spec("kafka").ports,
            vec![(PORT.to_string(), 9092)]
        );
    }

    #[test]
    fn official_image_advertises_the_host_port() {
        let mut p = plan(false, None);
        Kafka.prepare(&mut p);
        assert_eq!(
            p.env["KAFKA_ADVERTISED_LISTENERS"],
            "PLAINTEXT://127.0.0.1:41234"
        );
        // The rest of the KRaft config stays as the Compose file has it.
        assert_eq!(p.env["KAFKA_PROCESS_ROLES"], "broker,controller");
        assert_eq!(p.cmd, None);
    }

    #[test]
    fn local_image_advertises_the_host_port() {
        let mut p = plan(true, None);
        Kafka.prepare(&mut p);
        assert_eq!(p.env["ADVERTISED_LISTENER_URL"], "tcp://127.0.0.1:41234");
        let cmd = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut p = plan(
            true,
            cmd(&[
                "broker",
                "--advertised-listener-url",
                "tcp://localhost:9092",
            ]),
        );
        Kafka.prepare(&mut p);
        assert_eq!(
            p.cmd,
            cmd(&[
                "broker",
                "--advertised-listener-url",
                "tcp://127.0.0.1:41234"
            ])
        );
        let mut p = plan(
            true,
            cmd(&["broker", "--advertised-listener-url=tcp://x:1"]),
        );
        Kafka.prepare(&mut p);
        assert_eq!(
            p.cmd,
            cmd(&["broker", "--advertised-listener-url=tcp://127.0.0.1:41234"])
        );
    }

    #[test]
    fn without_a_reserved_port_nothing_changes() {
        let mut p = plan(false, None);
        p.host_ports.clear();
        let before = p.env.clone();
        Kafka.prepare(&mut p);
        assert_eq!(p.env, before);
    }

    #[test]
    fn local_recipe_carries_tansu() {
        let local = &crate::catalog::spec("kafka").local;
        let tansu = local.cargo_install.as_ref().expect("cargo_install");
        assert_eq!(
            (
                tansu.krate.as_str(),
                tansu.version.as_str(),
                tansu.bin.as_str()
            ),
            ("tansu", "0.6.0", "tansu")
        );
        assert_eq!(tansu.features, vec!["dynostore"]);
        assert!(local.cmd.iter().any(|a| a == "memory://tansu/"));
    }
}
