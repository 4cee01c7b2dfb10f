//! Redis: probed with PING.

use async_trait::async_trait;

use super::{Endpoint, RoundTrip, ServiceKind};

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
}
