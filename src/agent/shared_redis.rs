//! One Redis connection an agent role shares between its requests: made on
//! first use and made again after an error, since Redis may start after the
//! agent or restart under it.

use redis::aio::MultiplexedConnection;

pub(super) struct SharedRedis {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl SharedRedis {
    /// For `url` (`redis://HOST:PORT`); no connection is made yet.
    pub(super) fn open(url: &str) -> redis::RedisResult<SharedRedis> {
        Ok(SharedRedis {
            client: redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// The client, for connections of their own (blocking reads, pub/sub).
    pub(super) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Runs `cmd` on the shared connection.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        let mut slot = self.conn.lock().await;
        let mut c = match slot.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = self
                    .client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                *slot = Some(c.clone());
                c
            }
        };
        drop(slot);
        match cmd.query_async::<T>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                *self.conn.lock().await = None;
                Err(e.to_string())
            }
        }
    }
}
