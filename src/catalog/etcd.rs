//! etcd: ready when the member knows a leader, not merely when it answers.
//!
//! Replicas of one `etcd` service form one cluster: [`Etcd::prepare`] names
//! each member after its instance (`etcd-2`) and hands every member the same
//! initial cluster, with peer URLs on the network aliases. Static bootstrap:
//! the members start together and elect a leader among themselves.

use async_trait::async_trait;

use super::{ContainerPlan, Endpoint, RoundTrip, ServiceKind};

/// The `etcd` kind.
pub struct Etcd;

#[async_trait]
impl ServiceKind for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/etcd.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        crate::client::etcd::probe(endpoint).await
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&crate::client::etcd::ROUND_TRIP)
    }

    fn prepare(&self, plan: &mut ContainerPlan) {
        let defaults = &super::spec("etcd").env;
        for (name, value) in member_env(&plan.instance, &plan.peers) {
            // The Compose file's values describe a cluster of one named
            // `etcd`; a lab's own `env:` wins, as for every kind.
            if plan.env.get(name) == defaults.get(name) {
                plan.env.insert(name.to_string(), value);
            }
        }
    }
}

/// Member `instance` of a cluster of `peers` (instance names, also aliases).
fn member_env(instance: &str, peers: &[String]) -> Vec<(&'static str, String)> {
    let cluster = peers
        .iter()
        .map(|p| format!("{p}=http://{p}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        ("ETCD_NAME", instance.to_string()),
        (
            "ETCD_ADVERTISE_CLIENT_URLS",
            format!("http://{instance}:2379"),
        ),
        (
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            format!("http://{instance}:2380"),
        ),
        ("ETCD_INITIAL_CLUSTER", cluster),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn plan(instance: &str, peers: &[&str], env: &[(&str, &str)]) -> ContainerPlan {
        let mut all = super::super::spec("etcd").env.clone();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ContainerPlan {
            image: "infralab/etcd:x".into(),
            local_image: true,
            env: all,
            cmd: None,
            host_ports: BTreeMap::new(),
            instance: instance.into(),
            peers: peers.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn replicas_bootstrap_one_cluster_named_after_their_instances() {
        let mut p = plan("etcd-2", &["etcd-1", "etcd-2", "etcd-3"], &[]);
        Etcd.prepare(&mut p);
        assert_eq!(p.env["ETCD_NAME"], "etcd-2");
        assert_eq!(
            p.env["ETCD_INITIAL_CLUSTER"],
            "etcd-1=http://etcd-1:2380,etcd-2=http://etcd-2:2380,etcd-3=http://etcd-3:2380"
        );
        assert_eq!(
            p.env["ETCD_INITIAL_ADVERTISE_PEER_URLS"],
            "http://etcd-2:2380"
        );
    }

    #[test]
    fn a_lab_setting_wins_over_the_derived_one() {
        let mut p = plan("etcd", &["etcd"], &[("ETCD_NAME", "mine")]);
        Etcd.prepare(&mut p);
        assert_eq!(p.env["ETCD_NAME"], "mine");
        assert_eq!(p.env["ETCD_INITIAL_CLUSTER"], "etcd=http://etcd:2380");
    }
}
