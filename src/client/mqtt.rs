//! MQTT 3.1.1 through rumqttc: client options, the readiness probe (a CONNACK
//! that says yes), a clean goodbye, a watcher that waits for one message,
//! topic names made from a namespace, and the smoke round trip (subscribe,
//! publish, receive).

use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::error_chain;
use super::round_trip::{RoundTrip, Trip, TripInput};

/// Options for client `id` at `host:port`: a keep-alive long enough that a
/// client waiting at a gate or behind a busy machine is not dropped, and room
/// for packets up to 1 MiB both ways.
pub fn options(id: impl Into<String>, host: impl Into<String>, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// The readiness probe: CONNECT as `id` and expect a CONNACK with return code
/// 0 within `limit`, then say goodbye (DISCONNECT), so the broker logs a
/// clean exit rather than a dropped socket.
pub async fn probe(id: &str, host: &str, port: u16, limit: Duration) -> Result<(), String> {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(o, 1);
    let event = tokio::time::timeout(limit, eventloop.poll())
        .await
        .map_err(|_| format!("no CONNACK within {limit:?}"))?
        .map_err(|e| e.to_string())?;
    match event {
        Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
            disconnect(&client, &mut eventloop).await;
            Ok(())
        }
        Event::Incoming(Packet::ConnAck(ack)) => Err(format!("CONNACK refused: {:?}", ack.code)),
        other => Err(format!("expected CONNACK, got {other:?}")),
    }
}

/// Sends DISCONNECT and drives the event loop until it is on the wire (at most
/// 1 s), so the broker sees a clean goodbye and publishes no last will.
pub async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(e) = eventloop.poll().await {
            if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

/// A client subscribed (at QoS 2) to one topic filter, to wait for live
/// messages there: a last will, which tells that the broker noticed a client
/// is gone, or a count of messages, which tells that the broker has routed
/// them to every subscriber it had.
pub struct Watcher {
    client: AsyncClient,
    payloads: mpsc::UnboundedReceiver<Vec<u8>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Connects and subscribes to `topic`; returns once the broker confirmed
    /// the subscription (retained messages on it then arrive first).
    pub async fn subscribe(options: MqttOptions, topic: &str) -> Result<Watcher, String> {
        let (client, mut eventloop) = AsyncClient::new(options, 8);
        let (tx, payloads) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (sub, topic) = (client.clone(), topic.to_string());
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.try_subscribe(topic.as_str(), QoS::ExactlyOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(Ok(()));
                        }
                    }
                    // Live messages only: a retained replay is old news.
                    Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => {
                        let _ = tx.send(p.payload.to_vec());
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let watcher = Watcher {
            client,
            payloads,
            task,
        };
        match tokio::time::timeout(Duration::from_secs(10), ready).await {
            Ok(Ok(Ok(()))) => Ok(watcher),
            Ok(Ok(Err(e))) => Err(e),
            _ => Err("no SUBACK within 10 s".into()),
        }
    }

    /// Waits (at most `limit`) until `n` messages arrived; returns how many did.
    pub async fn wait_count(&mut self, n: usize, limit: Duration) -> usize {
        let mut got = 0;
        let _ = tokio::time::timeout(limit, async {
            while got < n && self.payloads.recv().await.is_some() {
                got += 1;
            }
        })
        .await;
        got
    }

    /// Says goodbye (DISCONNECT), waiting at most 1 s.
    pub async fn close(mut self) {
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
    }

    /// Waits (at most `limit`) for a message whose payload is `payload`, then
    /// says goodbye. Returns whether it came.
    pub async fn wait_for(mut self, payload: &[u8], limit: Duration) -> bool {
        let seen = tokio::time::timeout(limit, async {
            while let Some(p) = self.payloads.recv().await {
                if p == payload {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        self.close().await;
        seen
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A namespace as a topic prefix: `infralab:RUN:SCENARIO` becomes
/// `infralab/RUN/SCENARIO`; anything but letters, digits, `-`, `_` and `.`
/// becomes `-`, so no wildcard (`+`, `#`) or `$` can sneak in.
pub fn topic_root(namespace: &str) -> String {
    namespace
        .split([':', '/'])
        .map(|part| {
            part.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// The MQTT round trip on Mosquitto: subscribe, publish at QoS 1, receive
/// the message back.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "mqtt",
    ok: "a QoS 1 message published on Mosquitto reached a subscriber",
    ms: "publish to delivery",
    error: "why the round trip failed (only when it did)",
    extra: &[],
    params: Vec::new,
    start: |input| Box::pin(round_trip(input)),
};

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let root = topic_root(&input.namespace);
    let topic = format!("{root}/smoke");
    let id = format!("{}-smoke", root.replace('/', "-"));
    let (host, port) = (input.endpoint.host.clone(), input.endpoint.port());
    let (client, mut eventloop) = AsyncClient::new(options(id, host, port), 16);
    let value = input.token();
    let mut started: Option<Instant> = None;
    let result = loop {
        let event = match eventloop.poll().await {
            Ok(event) => event,
            Err(e) => {
                break Err(format!(
                    "connection to {}: {}",
                    input.endpoint.url,
                    error_chain(&e)
                ));
            }
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                if let Err(e) = client.try_subscribe(&topic, QoS::AtLeastOnce) {
                    break Err(format!("subscribing: {e}"));
                }
            }
            Event::Incoming(Packet::SubAck(_)) => {
                input.gate.wait().await;
                started = Some(Instant::now());
                if let Err(e) = client.try_publish(&topic, QoS::AtLeastOnce, false, value.clone()) {
                    break Err(format!("publishing: {e}"));
                }
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == topic => {
                let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
                break Trip::read_back(elapsed, &value, &String::from_utf8_lossy(&p.payload));
            }
            _ => {}
        }
    };
    disconnect(&client, &mut eventloop).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_root_is_mqtt_safe() {
        assert_eq!(
            topic_root("infralab:1a2b3c4d:qos-offline"),
            "infralab/1a2b3c4d/qos-offline"
        );
        let odd = topic_root("x:+#/$sys:a b");
        assert!(!odd.contains(['+', '#', '$', ' ']), "{odd}");
        assert!(!odd.starts_with('/') && !odd.contains("//"), "{odd}");
    }

    #[tokio::test]
    async fn a_probe_of_a_closed_port_says_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = probe("t", "127.0.0.1", port, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(!err.is_empty());
    }
}
