//! Redis Sentinel: ready once it knows the address of the primary it watches.
//!
//! The Sentinels of a lab find each other and the primary's replicas by
//! themselves (through the primary); an exercise that needs the whole
//! topology known waits for it ([`crate::client::redis::sentinel::until_known`]).

use async_trait::async_trait;

use super::{Endpoint, ServiceKind};

/// The environment variable naming the service a Sentinel watches; the same
/// name is the primary's name in Sentinel's API.
pub const MONITOR: &str = "SENTINEL_MONITOR";

/// The `redis-sentinel` kind.
pub struct Sentinel;

#[async_trait]
impl ServiceKind for Sentinel {
    fn name(&self) -> &'static str {
        "redis-sentinel"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/redis-sentinel.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        crate::client::redis::sentinel::probe(endpoint).await
    }
}
