//! Bytes on the wire per reading: the same readings sent once as MQTT PUBLISH
//! packets and once as HTTP POST requests, each through a counting [`Relay`],
//! so what is counted is what the client really sent (framing, topic or
//! request line, headers, payload), not a formula.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::mqtt::disconnect;
use crate::client::relay::Relay;

/// How long one measurement may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// One reading: where it goes (MQTT topic, or HTTP path without the leading
/// slash: the same string) and its bytes.
pub struct Sample {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Publishes every sample at QoS 0 through a relay to the broker at `broker`
/// (`host:port`) and returns the bytes the client sent for them: the PUBLISH
/// packets only (CONNECT and SUBSCRIBE are sent before counting starts).
///
/// The client subscribes to `filter` first and waits until its own messages
/// come back: then the broker has read them all, and the relay (which counts
/// before forwarding) has counted them all.
pub async fn mqtt_bytes(
    broker: &str,
    client_id: &str,
    filter: &str,
    samples: &[Sample],
) -> Result<u64, String> {
    tokio::time::timeout(
        DEADLINE,
        mqtt_bytes_inner(broker, client_id, filter, samples),
    )
    .await
    .map_err(|_| format!("MQTT wire measurement took longer than {DEADLINE:?}"))?
}

async fn mqtt_bytes_inner(
    broker: &str,
    client_id: &str,
    filter: &str,
    samples: &[Sample],
) -> Result<u64, String> {
    let relay = Relay::start(broker)
        .await
        .map_err(|e| format!("starting a relay: {e}"))?;
    let mut options = MqttOptions::new(client_id, "127.0.0.1", relay.addr().port());
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, samples.len() + 16);
    poll_until(&mut eventloop, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await?;
    client
        .try_subscribe(filter, QoS::AtMostOnce)
        .map_err(|e| e.to_string())?;
    poll_until(&mut eventloop, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await?;
    let before = relay.up();
    for s in samples {
        client
            .try_publish(s.topic.as_str(), QoS::AtMostOnce, false, s.payload.clone())
            .map_err(|e| e.to_string())?;
    }
    let mut back = 0;
    while back < samples.len() {
        if let Event::Incoming(Packet::Publish(_)) =
            eventloop.poll().await.map_err(|e| e.to_string())?
        {
            back += 1;
        }
    }
    let sent = relay.up() - before;
    disconnect(&client, &mut eventloop).await;
    Ok(sent)
}

async fn poll_until(
    eventloop: &mut rumqttc::EventLoop,
    want: impl Fn(&Event) -> bool,
) -> Result<(), String> {
    loop {
        let event = eventloop.poll().await.map_err(|e| e.to_string())?;
        if want(&event) {
            return Ok(());
        }
    }
}

/// Sends every sample as `POST /TOPIC` with a JSON body through a relay to the
/// HTTP server at `server` (`host:port`), one keep-alive connection, and
/// returns the bytes of the requests as sent (request line, headers, body).
pub async fn http_bytes(server: &str, samples: &[Sample]) -> Result<u64, String> {
    tokio::time::timeout(DEADLINE, http_bytes_inner(server, samples))
        .await
        .map_err(|_| format!("HTTP wire measurement took longer than {DEADLINE:?}"))?
}

async fn http_bytes_inner(server: &str, samples: &[Sample]) -> Result<u64, String> {
    let relay = Relay::start(server)
        .await
        .map_err(|e| format!("starting a relay: {e}"))?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    for s in samples {
        let url = format!("http://{}/{}", relay.addr(), s.topic);
        let response = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(s.payload.clone())
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        // Reading the body to the end keeps the connection reusable.
        let _ = response.bytes().await;
        if !status.is_success() {
            return Err(format!("POST {url} answered {status}"));
        }
    }
    // Every request was answered, so the server read it all and the relay
    // (which counts before forwarding) counted it all.
    Ok(relay.up())
}

/// A minimal HTTP/1.1 server on loopback for labs without an `agent`: reads a
/// request (head and `content-length` body), answers `200 ok`, keeps the
/// connection open. Dropping it stops listening.
pub struct LocalHttp {
    addr: SocketAddr,
    #[cfg_attr(not(test), allow(dead_code))]
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl LocalHttp {
    pub async fn start() -> std::io::Result<LocalHttp> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, counter.clone()));
            }
        });
        Ok(LocalHttp {
            addr,
            received,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes of requests read so far.
    #[cfg(test)]
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for LocalHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(mut stream: tokio::net::TcpStream, received: Arc<AtomicU64>) {
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n";
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // A whole request in the buffer? Answer it and keep the rest.
        if let Some(len) = request_len(&buf) {
            received.fetch_add(len as u64, Ordering::SeqCst);
            buf.drain(..len);
            if stream.write_all(ANSWER).await.is_err() {
                return;
            }
            continue;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Length of the first complete request in `buf` (head plus body), if any.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + body).then_some(head_end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|k| Sample {
                topic: format!("lab/run/sensors/s{}/temperature", k % 3),
                payload: format!("{{\"sensor\":\"s{}\",\"seq\":{k},\"celsius\":21.5}}", k % 3)
                    .into_bytes(),
            })
            .collect()
    }

    #[test]
    fn request_len_waits_for_head_and_body() {
        let req = b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody";
        assert_eq!(request_len(req), Some(req.len()));
        assert_eq!(request_len(&req[..req.len() - 1]), None);
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n\r\nGET"), Some(18));
    }

    #[tokio::test]
    async fn http_bytes_are_what_the_server_read() {
        let server = LocalHttp::start().await.unwrap();
        let s = samples(10);
        let sent = http_bytes(&server.addr().to_string(), &s).await.unwrap();
        assert_eq!(sent, server.received());
        let payload: usize = s.iter().map(|s| s.payload.len()).sum();
        // Request line and headers come on top of every body.
        assert!(
            sent as usize > payload + 10 * 60,
            "{sent} bytes for {payload} of payload"
        );
    }

    /// A stand-in broker speaking just enough MQTT 3.1.1: CONNACK, SUBACK, and
    /// every PUBLISH echoed back to its sender.
    async fn fake_broker() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    loop {
                        let mut first = [0u8; 1];
                        if s.read_exact(&mut first).await.is_err() {
                            return;
                        }
                        let (mut len, mut shift, mut header) = (0usize, 0, vec![first[0]]);
                        loop {
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b).await.unwrap();
                            header.push(b[0]);
                            len |= ((b[0] & 0x7f) as usize) << shift;
                            shift += 7;
                            if b[0] & 0x80 == 0 {
                                break;
                            }
                        }
                        let mut body = vec![0u8; len];
                        s.read_exact(&mut body).await.unwrap();
                        let answer = match first[0] >> 4 {
                            1 => vec![0x20, 2, 0, 0],
                            8 => vec![0x90, 3, body[0], body[1], 0],
                            3 => [header, body].concat(),
                            12 => vec![0xd0, 0],
                            _ => vec![],
                        };
                        s.write_all(&answer).await.unwrap();
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn mqtt_bytes_are_the_encoded_publish_packets() {
        let broker = fake_broker().await;
        let s = samples(25);
        let sent = mqtt_bytes(
            &broker.to_string(),
            "wire-test",
            "lab/run/sensors/+/temperature",
            &s,
        )
        .await
        .unwrap();
        let encoded: usize = s
            .iter()
            .map(|s| rumqttc::Publish::new(&s.topic, QoS::AtMostOnce, s.payload.clone()).size())
            .sum();
        assert_eq!(sent as usize, encoded);
    }
}
