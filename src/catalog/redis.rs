//! Redis: probed with PING.

use async_trait::async_trait;

use super::{Endpoint, ServiceKind};

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
        let client = redis::Client::open(endpoint.url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("PING answered {pong:?}"))
        }
    }
}
