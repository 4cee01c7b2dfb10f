//! FalkorDB: a graph database behind the Redis protocol, probed with
//! `GRAPH.LIST` ([`falkordb::probe`]): a plain Redis answers PING but not that.

use async_trait::async_trait;

use super::{Endpoint, RoundTrip, ServiceKind};
use crate::client::falkordb;

/// The `falkordb` kind.
pub struct FalkorDb;

#[async_trait]
impl ServiceKind for FalkorDb {
    fn name(&self) -> &'static str {
        "falkordb"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/falkordb.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        falkordb::probe(endpoint).await
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&falkordb::ROUND_TRIP)
    }
}
