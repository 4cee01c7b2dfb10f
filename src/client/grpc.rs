//! gRPC through tonic: the agent's `infralab.Orders` service (its messages,
//! written as prost structs instead of generated from a `.proto` file, so a
//! build needs no `protoc`), and the client calls exercises make: a unary
//! `Get` with an optional deadline, and the server stream `Watch`.
//!
//! The same messages are JSON for the agent's REST side (serde), so both
//! protocols carry exactly the same data.
//!
//! ```proto
//! service Orders {
//!   rpc Get(GetOrder) returns (Order);
//!   rpc Watch(WatchFeed) returns (stream Update);
//! }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::exercise::ExerciseError;

/// `Orders.Get`, routed by Nginx with `grpc_pass`.
pub const GET: &str = "/infralab.Orders/Get";
/// The same method under another service name, which the lab's Nginx sends
/// on with `proxy_pass` (HTTP/1.1) instead: the misconfiguration.
pub const GET_VIA_PROXY_PASS: &str = "/infralab.OrdersProxied/Get";
/// `Orders.Watch`.
pub const WATCH: &str = "/infralab.Orders/Watch";

/// Which order, and how long the server works on it.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct GetOrder {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Milliseconds of work before the answer (a slow backend).
    #[prost(uint32, tag = "2")]
    pub work_ms: u32,
}

/// An order: what both protocols return.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Order {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub customer: String,
    #[prost(string, tag = "3")]
    pub status: String,
    #[prost(message, repeated, tag = "4")]
    pub items: Vec<Item>,
    /// In cents: money as an integer, exact in both encodings.
    #[prost(uint64, tag = "5")]
    pub total_cents: u64,
}

/// One line of an order.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Item {
    #[prost(string, tag = "1")]
    pub sku: String,
    #[prost(uint32, tag = "2")]
    pub qty: u32,
    #[prost(uint32, tag = "3")]
    pub price_cents: u32,
}

/// Updates wanted: those after `after`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct WatchFeed {
    #[prost(uint64, tag = "1")]
    pub after: u64,
}

/// One update of the agent's feed, stamped when the agent made it.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Update {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub made_unix_us: u64,
}

impl Order {
    /// The order with id `id`: the same content every time, eight lines.
    pub fn sample(id: u64) -> Self {
        let items: Vec<Item> = (0..8u64)
            .map(|line| Item {
                sku: format!("sku-{:05}", (id * 7_919 + line * 104_729) % 100_000),
                qty: 1 + ((id + line) % 4) as u32,
                price_cents: 100 + ((id * 31 + line * 17) % 10_000) as u32,
            })
            .collect();
        let total_cents = items
            .iter()
            .map(|i| u64::from(i.qty) * u64::from(i.price_cents))
            .sum();
        Order {
            id,
            customer: format!("customer-{:04}", id % 5_000),
            status: ["placed", "paid", "shipped", "delivered"][(id % 4) as usize].into(),
            items,
            total_cents,
        }
    }
}

/// A gRPC channel (HTTP/2 without TLS) to `url` (`http://host:port`).
pub async fn channel(url: &str) -> Result<Channel, ExerciseError> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| ExerciseError(format!("gRPC endpoint {url}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| ExerciseError(format!("gRPC connect to {url}: {}", super::error_chain(&e))))
}

/// One unary `Get` on `path`, with a deadline when given (sent as
/// `grpc-timeout`, and enforced by the client: the call is cancelled then).
pub async fn get(
    channel: Channel,
    path: &'static str,
    request: GetOrder,
    deadline: Option<Duration>,
) -> Result<Order, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(request);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let call = grpc.unary(
        request,
        PathAndQuery::from_static(path),
        ProstCodec::<GetOrder, Order>::default(),
    );
    let answer = match deadline {
        Some(deadline) => tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| Status::deadline_exceeded("deadline passed on the client"))?,
        None => call.await,
    };
    answer.map(tonic::Response::into_inner)
}

/// Opens the `Watch` stream from update `after` on.
pub async fn watch(channel: Channel, after: u64) -> Result<Streaming<Update>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.server_streaming(
        Request::new(WatchFeed { after }),
        PathAndQuery::from_static(WATCH),
        ProstCodec::<WatchFeed, Update>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn an_order_is_smaller_as_protobuf_than_as_json() {
        let order = Order::sample(42);
        assert_eq!(order, Order::sample(42));
        let proto = order.encode_to_vec();
        let json = serde_json::to_vec(&order).unwrap();
        assert!(
            proto.len() * 3 / 2 < json.len(),
            "{} {}",
            proto.len(),
            json.len()
        );
        assert_eq!(Order::decode(proto.as_slice()).unwrap(), order);
        let back: Order = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, order);
    }
}
