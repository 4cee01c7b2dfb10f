//! The service catalog: every kind infralab can start, as [`ServiceKind`]s.
//!
//! A kind is one file here. Its image, ports and environment come from
//! `compose/KIND.yaml` (see [`spec`]); the file adds what Compose cannot say: how to
//! probe the service at protocol level, and which client round trip proves it
//! works (the `smoke` exercise runs it). Kinds return plain data; only `engine`
//! talks to Docker.

pub mod agent;
pub mod clickhouse;
pub mod etcd;
pub mod falkordb;
pub mod kafka;
pub mod mosquitto;
pub mod nginx;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod redis_cluster;
pub mod sentinel;
pub mod spec;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use async_trait::async_trait;

pub use crate::client::round_trip::RoundTrip;
pub use spec::{KindSpec, LocalRecipe};

/// Where a started service can be reached from the host, handed to exercises and
/// printed for learners.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoint {
    /// Service name in the lab (`redis`, or `web-2` for a replica).
    pub service: String,
    /// Kind name.
    pub kind: String,
    /// Host address the ports are published on (always loopback).
    pub host: String,
    /// Port name → published host port.
    pub ports: BTreeMap<String, u16>,
    /// Environment the container was started with (credentials for the URL).
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
    /// Connection string for clients on the host.
    pub url: String,
    /// Container name, for faults and logs.
    pub container: String,
}

impl Endpoint {
    /// The published host port of the kind's primary port.
    pub fn port(&self) -> u16 {
        let spec = spec(&self.kind);
        self.ports[&spec.ports[0].0]
    }

    /// The published host port named `name`.
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.ports.get(name).copied()
    }
}

/// One service kind. Default methods cover what most kinds share.
#[async_trait]
pub trait ServiceKind: Send + Sync {
    /// Kind name as written in labs (`kind: redis`).
    fn name(&self) -> &'static str;
    /// The kind's Compose file, embedded at build time.
    fn compose(&self) -> &'static str;
    /// One protocol-level readiness check; `Err` means "not yet" (with why).
    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String>;

    /// One write read back with the kind's ordinary client library, which the
    /// `smoke` exercise runs for every kind a lab has; `None`: the kind has
    /// none (it must then be listed as such in this module's tests).
    fn round_trip(&self) -> Option<&'static RoundTrip> {
        None
    }

    /// Last changes to the container before it is created (environment,
    /// command), e.g. the advertised listener of a broker.
    fn prepare(&self, _plan: &mut ContainerPlan) {}

    /// What [`ServiceKind::bootstrap`] does, for progress (`None`: nothing;
    /// the kind's instances work on their own).
    fn bootstrap_step(&self) -> Option<&'static str> {
        None
    }

    /// One step once every instance of a service is ready, for kinds whose
    /// instances form one cluster only when told (Redis Cluster). `Err`
    /// says what failed, in the server's words.
    async fn bootstrap(&self, _members: &[Member]) -> Result<(), String> {
        Ok(())
    }
}

/// One instance of a service, as a bootstrap step sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// How the host reaches it.
    pub endpoint: Endpoint,
    /// Its IP address on the lab network, where its peers reach it.
    pub address: String,
}

/// The container the engine is about to create, open to [`ServiceKind::prepare`].
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Image reference.
    pub image: String,
    /// Whether the image is a local build (its command may differ from the official one).
    pub local_image: bool,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Command (`None`: the image's own).
    pub cmd: Option<Vec<String>>,
    /// Port name → host port, reserved before the start (kept across restarts).
    pub host_ports: BTreeMap<String, u16>,
    /// Instance id (`web-2` for a replica), also given as `INFRALAB_INSTANCE`.
    pub instance: String,
    /// Every instance of the same service, this one included, in order: the
    /// members a clustered kind bootstraps with (`etcd-1`, `etcd-2`, `etcd-3`).
    pub peers: Vec<String>,
}

/// The only list of kinds.
pub static KINDS: &[&dyn ServiceKind] = &[
    &redis::Redis,
    &postgres::Postgres,
    &rabbitmq::Rabbitmq,
    &kafka::Kafka,
    &mosquitto::Mosquitto,
    &nginx::Nginx,
    &agent::Agent,
    &etcd::Etcd,
    &clickhouse::ClickHouse,
    &falkordb::FalkorDb,
    &sentinel::Sentinel,
    &redis_cluster::RedisCluster,
];

/// Looks a kind up by name.
pub fn kind(name: &str) -> Option<&'static dyn ServiceKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// Names of all kinds, for error messages.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// The parsed Compose file of a kind. Panics on an unknown kind (validated earlier)
/// or a broken embedded file (caught by the catalog's unit tests).
pub fn spec(name: &str) -> &'static KindSpec {
    static SPECS: OnceLock<Vec<KindSpec>> = OnceLock::new();
    let specs = SPECS.get_or_init(|| {
        KINDS
            .iter()
            .map(|k| {
                KindSpec::parse(&format!("compose/{}.yaml", k.name()), k.compose())
                    .unwrap_or_else(|e| panic!("embedded catalog file is broken: {e}"))
            })
            .collect()
    });
    specs
        .iter()
        .find(|s| s.kind == name)
        .unwrap_or_else(|| panic!("unknown kind {name}"))
}

/// Fills a URL template: `{host}`, `{port}`, `{port:NAME}`, `{env:VAR}`.
pub fn render_url(template: &str, endpoint: &Endpoint, primary: &str) -> String {
    let mut out = template.replace("{host}", &endpoint.host);
    for (name, port) in &endpoint.ports {
        out = out.replace(&format!("{{port:{name}}}"), &port.to_string());
        if name == primary {
            out = out.replace("{port}", &port.to_string());
        }
    }
    for (var, value) in &endpoint.env {
        out = out.replace(&format!("{{env:{var}}}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kinds that have no smoke round trip, on purpose. A new kind declares
    /// one ([`ServiceKind::round_trip`]) or is named here, so none is left
    /// out of `smoke` by oversight.
    ///
    /// A Sentinel stores nothing: what it answers (where the primary is) is
    /// its readiness probe.
    /// A cluster node serves only its own slots: the sharding exercise
    /// is its client.
    const WITHOUT_ROUND_TRIP: &[&str] = &["redis-sentinel", "redis-cluster"];

    #[test]
    fn every_kind_has_a_round_trip_or_is_listed_without_one() {
        for name in WITHOUT_ROUND_TRIP {
            assert!(kind(name).is_some(), "{name} is not a kind");
        }
        for k in KINDS {
            let listed = WITHOUT_ROUND_TRIP.contains(&k.name());
            match (k.round_trip(), listed) {
                (Some(_), true) => {
                    panic!("{} has a round trip but is listed without one", k.name())
                }
                (None, false) => panic!(
                    "{} has no round trip: declare one in its client module or list it in WITHOUT_ROUND_TRIP",
                    k.name()
                ),
                _ => {}
            }
        }
    }

    #[test]
    fn round_trips_name_everything_after_their_prefix_and_kinds_sharing_one_share_it() {
        for k in KINDS {
            let Some(trip) = k.round_trip() else {
                continue;
            };
            // No `_` in a prefix: then no two prefixes' `PREFIX_…` names can meet.
            assert!(!trip.prefix.is_empty() && !trip.prefix.contains('_'));
            let prefix = format!("{}_", trip.prefix);
            for o in trip.extra {
                assert!(o.name.starts_with(&prefix), "{}: {}", k.name(), o.name);
            }
            for p in (trip.params)() {
                assert!(p.name.starts_with(&prefix), "{}: {}", k.name(), p.name);
            }
            for other in KINDS {
                if let Some(theirs) = other.round_trip()
                    && theirs.prefix == trip.prefix
                {
                    assert!(
                        std::ptr::eq(theirs, trip),
                        "{} and {} share the prefix {} but not the round trip",
                        k.name(),
                        other.name(),
                        trip.prefix
                    );
                }
            }
        }
    }

    #[test]
    fn every_embedded_compose_file_parses_and_names_its_kind() {
        for k in KINDS {
            let s = spec(k.name());
            assert_eq!(s.kind, k.name());
            assert!(!s.ports.is_empty(), "{} has no port", s.kind);
            assert!(s.image.contains(':'), "{} image is not pinned", s.kind);
            assert!(
                !s.image.ends_with(":latest"),
                "{} image is not pinned",
                s.kind
            );
        }
    }
}
