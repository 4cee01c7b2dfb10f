//! ClickHouse: probed over its HTTP interface with `SELECT 1`, which answers
//! only once the server has loaded its tables ([`clickhouse::probe`]).

use async_trait::async_trait;

use super::{Endpoint, RoundTrip, ServiceKind};
use crate::client::clickhouse;

/// The `clickhouse` kind.
pub struct ClickHouse;

#[async_trait]
impl ServiceKind for ClickHouse {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn compose(&self) -> &'static str {
        include_str!("../../compose/clickhouse.yaml")
    }

    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        clickhouse::probe(endpoint).await
    }

    fn round_trip(&self) -> Option<&'static RoundTrip> {
        Some(&clickhouse::ROUND_TRIP)
    }
}
