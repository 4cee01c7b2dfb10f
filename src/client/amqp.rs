//! AMQP 0-9-1 (RabbitMQ), through lapin: connecting (the readiness probe
//! too), confirming channels, prefetch, shared queues, queue depth, the
//! timestamped payloads the messaging exercises send, and the smoke round
//! trip (publish, consume). To kill a connection
//! the way a crashed process does, connect through a
//! [`Relay`](crate::client::relay::Relay) and [`via_port`] its port.

use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::round_trip::{RoundTrip, Trip, TripInput};
use crate::exercise::{Context, ExerciseError};

/// Opens an AMQP connection to `uri`, named so it shows in the broker's UI.
pub async fn connect(uri: &AMQPUri, name: &str) -> Result<Connection, ExerciseError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(uri.clone(), props)
        .await
        .doing(&format!("connecting to rabbitmq as {name}"))
}

/// Parses the service's connection string.
pub fn parse_uri(url: &str) -> Result<AMQPUri, ExerciseError> {
    AMQPUri::from_str(url).map_err(|e| ExerciseError(format!("rabbitmq url `{url}`: {e}")))
}

/// A channel with publisher confirms on.
pub async fn confirming_channel(conn: &Connection) -> Result<Channel, ExerciseError> {
    let ch = conn.create_channel().await.doing("opening a channel")?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .doing("enabling publisher confirms")?;
    Ok(ch)
}

/// Sets the consumer prefetch window; 0 leaves it unlimited.
pub async fn prefetch(ch: &Channel, count: i64) -> Result<(), ExerciseError> {
    if count > 0 {
        ch.basic_qos(
            count.min(u16::MAX as i64) as u16,
            BasicQosOptions::default(),
        )
        .await
        .doing("setting the prefetch window (basic.qos)")?;
    }
    Ok(())
}

/// Declares a durable, non-exclusive queue shared by several connections.
///
/// Durable on purpose: RabbitMQ 3.13 deprecates transient non-exclusive
/// queues (and 4.x refuses them by default); durable queues behave the same in
/// the Debian package (3.10) and the official image.
pub async fn declare_shared_queue(ch: &Channel, name: &str) -> Result<(), ExerciseError> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .doing(&format!("declaring queue {name}"))?;
    Ok(())
}

/// A queue as the broker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery (not counting those delivered and unacknowledged).
    pub ready: u32,
    /// Consumers subscribed to it.
    pub consumers: u32,
}

/// The broker's count of a queue's ready messages and consumers (a passive declare).
pub async fn queue_state(ch: &Channel, name: &str) -> Result<QueueState, ExerciseError> {
    let q = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .doing(&format!("inspecting queue {name}"))?;
    Ok(QueueState {
        ready: q.message_count(),
        consumers: q.consumer_count(),
    })
}

/// The payload of message `id`, stamped with its send time (µs since `origin`).
pub fn payload(id: u32, origin: Instant) -> Vec<u8> {
    format!("{id} {}", origin.elapsed().as_micros()).into_bytes()
}

/// Reads a payload back: the message id and how long it took to arrive.
pub fn read_payload(data: &[u8], origin: Instant) -> Result<(u32, Duration), ExerciseError> {
    let now = origin.elapsed();
    let text = std::str::from_utf8(data).map_err(|_| bad_payload(data))?;
    let (id, sent) = text.split_once(' ').ok_or_else(|| bad_payload(data))?;
    let id = id.parse().map_err(|_| bad_payload(data))?;
    let sent: u64 = sent.parse().map_err(|_| bad_payload(data))?;
    Ok((id, now.saturating_sub(Duration::from_micros(sent))))
}

fn bad_payload(data: &[u8]) -> ExerciseError {
    ExerciseError(format!(
        "unexpected message payload {:?}",
        String::from_utf8_lossy(data)
    ))
}

/// The broker URI rewritten to reach it through a loopback relay on `port`
/// (credentials and vhost kept).
pub fn via_port(broker: &AMQPUri, port: u16) -> AMQPUri {
    let mut uri = broker.clone();
    uri.authority.host = "127.0.0.1".into();
    uri.authority.port = port;
    uri
}

/// The readiness probe: an AMQP connection opened with the service's
/// credentials within `limit`, then closed politely (which keeps "client
/// unexpectedly closed TCP connection" out of the broker's log).
pub async fn probe(url: &str, limit: Duration) -> Result<(), String> {
    let uri = parse_uri(url).map_err(|e| e.0)?;
    let connect = Connection::connect_uri(uri, ConnectionProperties::default());
    let connection = tokio::time::timeout(limit, connect)
        .await
        .map_err(|_| format!("no AMQP connection within {limit:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(limit, connection.close(200, "infralab probe".into())).await;
    Ok(())
}

/// The broker's `host:port`, e.g. for a [`Relay`](crate::client::relay::Relay).
pub fn address(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// The RabbitMQ round trip: publish (confirmed) to an exclusive queue, then
/// consume the message back.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "rabbitmq",
    ok: "a confirmed message published to a queue was consumed back",
    ms: "publish to delivery, confirm included",
    error: "why the round trip failed (only when it did)",
    extra: &[],
    params: Vec::new,
    start: |input| Box::pin(round_trip(input)),
};

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let uri = parse_uri(&input.endpoint.url).map_err(|e| e.0)?;
    let conn = connect(&uri, &format!("{} smoke", input.namespace))
        .await
        .map_err(|e| e.0)?;
    let result = publish_and_consume(&conn, &mut input).await;
    let _ = conn.close(200, "OK".into()).await;
    result
}

async fn publish_and_consume(conn: &Connection, input: &mut TripInput) -> Result<Trip, String> {
    let ch = confirming_channel(conn).await.map_err(|e| e.0)?;
    let queue = format!("{}:smoke", input.namespace);
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| format!("declaring queue {queue}: {e}"))?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "smoke".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consuming from {queue}: {e}"))?;
    let value = input.token();
    input.gate.wait().await;
    let started = Instant::now();
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            value.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .map_err(|e| format!("publishing: {e}"))?
        .await
        .map_err(|e| format!("waiting for the publisher confirm: {e}"))?;
    if !confirm.is_ack() {
        return Err("the broker refused the message (nack)".to_string());
    }
    let delivery = consumer
        .next()
        .await
        .ok_or("the consumer's stream ended before the message came back")?
        .map_err(|e| format!("consuming: {e}"))?;
    let elapsed = started.elapsed();
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map_err(|e| format!("acknowledging: {e}"))?;
    Trip::read_back(elapsed, &value, &String::from_utf8_lossy(&delivery.data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_with_a_latency() {
        let origin = Instant::now();
        let p = payload(42, origin);
        let (id, lat) = read_payload(&p, origin).unwrap();
        assert_eq!(id, 42);
        assert!(lat < Duration::from_secs(1));
        assert!(read_payload(b"nope", origin).is_err());
    }

    #[test]
    fn a_uri_through_a_relay_keeps_credentials_and_vhost() {
        let broker = parse_uri("amqp://user:pass@127.0.0.1:5672/%2f").unwrap();
        let uri = via_port(&broker, 40123);
        assert_eq!(uri.authority.port, 40123);
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.authority.userinfo.username, "user");
        assert_eq!(uri.authority.userinfo.password, "pass");
        assert_eq!(uri.vhost, "/");
    }
}
