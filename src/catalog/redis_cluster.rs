//! Redis Cluster nodes: probed with PING, then made one cluster.
//!
//! Each node announces its instance name (`--cluster-announce-hostname`),
//! and the Compose file makes redirects name nodes by hostname, so MOVED
//! and ASK point at names the lab defines. Once every instance answers,
//! [`RedisCluster::bootstrap`] creates the cluster: slots spread evenly over
//! the primaries, `CLUSTER_REPLICAS` replicas each. It is ready when every
//! node serves all 16384 slots' map, sees every other node, and knows each
//! slot owner's name.

use async_trait::async_trait;

use super::{ContainerPlan, Endpoint, Member, ServiceKind};

/// The environment variable with the replicas per primary.
pub const REPLICAS: &str = "CLUSTER_REPLICAS";

/// The `redis-cluster` kind.
pub struct RedisCluster;

#[async_trait]
impl ServiceKind for RedisCluster {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/redis-cluster.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        crate::client::redis::ping(endpoint).await
    }

    fn prepare(&self, plan: &mut ContainerPlan) {
        let cmd = plan.cmd.get_or_insert_with(Vec::new);
        cmd.extend(["--cluster-announce-hostname".into(), plan.instance.clone()]);
    }

    fn bootstrap_step(&self) -> Option<&'static str> {
        Some("creating the cluster (slots, replicas)")
    }

    async fn bootstrap(&self, members: &[Member]) -> Result<(), String> {
        let per_primary = members
            .first()
            .and_then(|m| m.endpoint.env.get(REPLICAS))
            .map_or(Ok(0), |v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{REPLICAS} must be a number, not {v:?}"))
            })?;
        crate::client::redis::cluster::create(members, per_primary).await
    }
}
