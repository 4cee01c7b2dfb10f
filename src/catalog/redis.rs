//! Redis: probed with PING, and a replica only once it is in sync.
//!
//! `REDIS_REPLICA_OF: primary` (or `primary:6380`) in a service's `env:`
//! makes its containers replicas of that service: [`Redis::prepare`] adds
//! `--replicaof HOST PORT` to the command, the one way to say it that both
//! the official image and the local one take.
//!
//! Every Redis announces its instance name as a replica
//! (`--replica-announce-ip`), so `INFO replication` and Sentinel name
//! replicas as the lab does, not by addresses that change when a container
//! moves between networks.

use async_trait::async_trait;

use super::{ContainerPlan, Endpoint, RoundTrip, ServiceKind};

/// The environment variable that makes a service a replica.
pub const REPLICA_OF: &str = "REDIS_REPLICA_OF";

/// The `redis` kind.
pub struct Redis;

#[async_trait]
impl ServiceKind for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/redis.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        crate::client::redis::ping(endpoint).await
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&crate::client::redis::ROUND_TRIP)
    }

    fn prepare(&self, plan: &mut ContainerPlan) {
        if plan.cmd.is_none() {
            let mut cmd = image_command(plan.local_image);
            // A primary starts a replica's full sync at once, not after
            // waiting 5 s for more replicas to batch (Redis 7's default).
            cmd.extend(["--repl-diskless-sync-delay".into(), "0".into()]);
            plan.cmd = Some(cmd);
        }
        let cmd = plan.cmd.get_or_insert_with(Vec::new);
        // Flags go to Redis only: a lab's own command may be another
        // program altogether (a service that never answers, in a test).
        if !cmd.first().is_some_and(|p| p.ends_with("redis-server")) {
            return;
        }
        cmd.extend(["--replica-announce-ip".into(), plan.instance.clone()]);
        if let Some(primary) = plan.env.get(REPLICA_OF) {
            let (host, port) = primary.split_once(':').unwrap_or((primary, "6379"));
            cmd.extend(["--replicaof".into(), host.into(), port.into()]);
        }
    }
}

/// The command the image runs by itself: the local image's (which turns off
/// protected mode and persistence, see compose/redis.yaml), or the official
/// image's `redis-server` (built with protected mode off).
fn image_command(local_image: bool) -> Vec<String> {
    if local_image {
        super::spec("redis").local.cmd.clone()
    } else {
        vec!["redis-server".into()]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn plan(cmd: Option<&[&str]>, local_image: bool, env: &[(&str, &str)]) -> ContainerPlan {
        ContainerPlan {
            image: "redis:7.4.2".into(),
            local_image,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cmd: cmd.map(|c| c.iter().map(|s| s.to_string()).collect()),
            host_ports: BTreeMap::new(),
            instance: "replica-1".into(),
            peers: vec!["replica-1".into()],
        }
    }

    #[test]
    fn a_replica_gets_replicaof_on_its_command() {
        let mut official = plan(None, false, &[(REPLICA_OF, "primary")]);
        Redis.prepare(&mut official);
        assert_eq!(
            official.cmd.unwrap(),
            [
                "redis-server",
                "--repl-diskless-sync-delay",
                "0",
                "--replica-announce-ip",
                "replica-1",
                "--replicaof",
                "primary",
                "6379"
            ]
        );
        // A lab's own command is kept as written.
        let mut own = plan(
            Some(&["redis-server", "--save", ""]),
            true,
            &[(REPLICA_OF, "p:6380")],
        );
        Redis.prepare(&mut own);
        assert_eq!(
            own.cmd.unwrap(),
            [
                "redis-server",
                "--save",
                "",
                "--replica-announce-ip",
                "replica-1",
                "--replicaof",
                "p",
                "6380"
            ]
        );
    }

    #[test]
    fn another_program_gets_no_redis_flags() {
        let mut other = plan(Some(&["sleep", "60"]), true, &[(REPLICA_OF, "p")]);
        Redis.prepare(&mut other);
        assert_eq!(other.cmd.unwrap(), ["sleep", "60"]);
    }

    #[test]
    fn the_local_image_keeps_its_own_command() {
        let mut local = plan(None, true, &[]);
        Redis.prepare(&mut local);
        let cmd = local.cmd.unwrap();
        assert!(
            cmd.starts_with(&super::super::spec("redis").local.cmd),
            "{cmd:?}"
        );
        assert!(cmd.contains(&"--protected-mode".to_string()), "{cmd:?}");
        assert!(cmd.ends_with(&[
            "--repl-diskless-sync-delay".into(),
            "0".into(),
            "--replica-announce-ip".into(),
            "replica-1".into()
        ]));
    }
}
