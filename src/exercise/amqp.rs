//! Shared pieces of the messaging exercises: AMQP connections, timestamped
//! payloads, and a severable TCP link that kills a connection the way a
//! crashed process does (the socket closes, no AMQP `connection.close`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Context, ExerciseError};

/// Opens an AMQP connection to `uri`, named so it shows in the broker's UI.
pub(crate) async fn connect(uri: &AMQPUri, name: &str) -> Result<Connection, ExerciseError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(uri.clone(), props)
        .await
        .doing(&format!("connecting to rabbitmq as {name}"))
}

/// Parses the service's connection string.
pub(crate) fn parse_uri(url: &str) -> Result<AMQPUri, ExerciseError> {
    AMQPUri::from_str(url).map_err(|e| ExerciseError(format!("rabbitmq url `{url}`: {e}")))
}

/// A channel with publisher confirms on.
pub(crate) async fn confirming_channel(conn: &Connection) -> Result<Channel, ExerciseError> {
    let ch = conn.create_channel().await.doing("opening a channel")?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .doing("enabling publisher confirms")?;
    Ok(ch)
}

/// Sets the consumer prefetch window; 0 leaves it unlimited.
pub(crate) async fn prefetch(ch: &Channel, count: i64) -> Result<(), ExerciseError> {
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
pub(crate) async fn declare_shared_queue(ch: &Channel, name: &str) -> Result<(), ExerciseError> {
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

/// Messages ready in a queue (not counting those delivered and unacknowledged).
pub(crate) async fn ready_count(ch: &Channel, name: &str) -> Result<u32, ExerciseError> {
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
    Ok(q.message_count())
}

/// The payload of message `id`, stamped with its send time (µs since `origin`).
pub(crate) fn payload(id: u32, origin: Instant) -> Vec<u8> {
    format!("{id} {}", origin.elapsed().as_micros()).into_bytes()
}

/// Reads a payload back: the message id and how long it took to arrive.
pub(crate) fn read_payload(data: &[u8], origin: Instant) -> Result<(u32, Duration), ExerciseError> {
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

/// A TCP relay on a loopback port in front of the broker. Clients connected
/// through it lose their connection the moment it is [cut](Self::cut): both
/// sockets close without any protocol goodbye, as when a process is killed.
pub(crate) struct Severable {
    /// The loopback port to connect to instead of the broker's.
    pub port: u16,
    accept: JoinHandle<()>,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Severable {
    /// Starts relaying connections to `target`.
    pub(crate) async fn to(target: SocketAddr) -> Result<Self, ExerciseError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .doing("binding the relay")?;
        let port = listener.local_addr().doing("relay address")?.port();
        let pipes: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = pipes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                registry.lock().expect("relay pipes").push(pipe);
            }
        });
        Ok(Severable {
            port,
            accept,
            pipes,
        })
    }

    /// The broker URI rewritten to go through the relay.
    pub(crate) fn uri(&self, broker: &AMQPUri) -> AMQPUri {
        let mut uri = broker.clone();
        uri.authority.host = "127.0.0.1".into();
        uri.authority.port = self.port;
        uri
    }

    /// Closes every relayed connection at once; returns when the sockets are gone.
    pub(crate) async fn cut(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let pipes = std::mem::take(&mut *self.pipes.lock().expect("relay pipes"));
        for pipe in pipes {
            pipe.abort();
            let _ = pipe.await;
        }
    }
}

/// The broker's address as a socket address (the host is loopback).
pub(crate) async fn broker_addr(uri: &AMQPUri) -> Result<SocketAddr, ExerciseError> {
    tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port))
        .await
        .doing("resolving the broker address")?
        .next()
        .ok_or_else(|| ExerciseError(format!("no address for {}", uri.authority.host)))
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

    #[tokio::test]
    async fn relay_uri_keeps_credentials_and_vhost() {
        let broker = parse_uri("amqp://user:pass@127.0.0.1:5672/%2f").unwrap();
        let relay = Severable::to("127.0.0.1:9".parse().unwrap()).await.unwrap();
        let uri = relay.uri(&broker);
        assert_eq!(uri.authority.port, relay.port);
        assert_eq!(uri.authority.userinfo.username, "user");
        assert_eq!(uri.authority.userinfo.password, "pass");
        assert_eq!(uri.vhost, "/");
        relay.cut().await;
    }

    #[tokio::test]
    async fn a_cut_relay_closes_the_client_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let relay = Severable::to(target).await.unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
        let (mut upstream, _) = server.accept().await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        relay.cut().await;
        // Both ends see the connection end without any goodbye from the peer.
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        let n = tokio::time::timeout(Duration::from_secs(5), upstream.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
