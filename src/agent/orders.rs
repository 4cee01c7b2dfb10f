//! Orders: the same operations as REST (JSON over HTTP/1.1 or HTTP/2) and as
//! gRPC (protobuf over HTTP/2, the `infralab.Orders` service of
//! [`crate::client::grpc`]), on the agent's one port.
//!
//! - `GET /orders/ID?work_ms=N` and gRPC `Orders.Get`: the order, after N ms
//!   of work. `Orders.Get` also answers under `infralab.OrdersProxied`, the
//!   name the grpc-vs-rest lab's Nginx sends on with `proxy_pass`.
//! - The feed: `POST /feed/start` with `{"count": N, "interval_ms": MS}`
//!   makes N updates, one every MS; `GET /feed?after=SEQ` returns those
//!   after SEQ (polling), gRPC `Orders.Watch` streams them (backlog first).
//! - Work and callers: a caller that leaves before its answer (a deadline,
//!   a cancelled call) drops the request. With the work inside the request
//!   it stops too; `PUT /orders-config` `{"detached": true}` runs the work
//!   on a task of its own, which finishes for nobody. `GET /orders-stats`
//!   counts both, and the config call resets the counters.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tonic::Status;
use tonic_prost::ProstCodec;

use crate::client::grpc::{GET, GET_VIA_PROXY_PASS, GetOrder, Order, Update, WATCH, WatchFeed};

/// Longest work or feed interval, so a typo cannot hang a lab.
const MAX_MS: u64 = 60_000;

#[derive(Default)]
struct Orders {
    detached: AtomicBool,
    stats: Counters,
    feed: Mutex<Vec<Update>>,
    live: Option<broadcast::Sender<Update>>,
}

#[derive(Default)]
struct Counters {
    grpc_calls: AtomicU64,
    json_calls: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    left: AtomicU64,
    wasted: AtomicU64,
    working: AtomicU64,
}

/// What `/orders-stats` returns.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub grpc_calls: u64,
    pub json_calls: u64,
    /// Requests with work to do.
    pub started: u64,
    /// Work that ran to its end.
    pub completed: u64,
    /// Requests whose caller left before the answer.
    pub left: u64,
    /// Work that ran to its end after its caller had left.
    pub wasted: u64,
    /// Work running now.
    pub working: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    detached: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedStart {
    count: u64,
    interval_ms: u64,
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

#[derive(Deserialize)]
struct Work {
    #[serde(default)]
    work_ms: u64,
}

/// The order routes, for any router state.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let orders = Arc::new(Orders {
        live: Some(broadcast::channel(4096).0),
        ..Orders::default()
    });
    Router::new()
        .route("/orders/{id}", get(json_get))
        .route(GET, post(grpc_get))
        .route(GET_VIA_PROXY_PASS, post(grpc_get))
        .route(WATCH, post(grpc_watch))
        .route("/feed", get(poll))
        .route("/feed/start", post(start_feed))
        .route("/orders-config", put(config))
        .route("/orders-stats", get(stats))
        .with_state(orders)
}

async fn json_get(
    State(orders): State<Arc<Orders>>,
    Path(id): Path<u64>,
    Query(work): Query<Work>,
) -> Json<Order> {
    orders.stats.json_calls.fetch_add(1, Ordering::Relaxed);
    orders.work(work.work_ms).await;
    Json(Order::sample(id))
}

async fn grpc_get(State(orders): State<Arc<Orders>>, req: Request) -> Response {
    orders.stats.grpc_calls.fetch_add(1, Ordering::Relaxed);
    tonic::server::Grpc::new(ProstCodec::<Order, GetOrder>::default())
        .unary(GetService(orders), req)
        .await
        .map(Body::new)
}

async fn grpc_watch(State(orders): State<Arc<Orders>>, req: Request) -> Response {
    orders.stats.grpc_calls.fetch_add(1, Ordering::Relaxed);
    tonic::server::Grpc::new(ProstCodec::<Update, WatchFeed>::default())
        .server_streaming(WatchService(orders), req)
        .await
        .map(Body::new)
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<tonic::Response<T>, Status>> + Send>>;
type Updates = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;

/// `Orders.Get`, as tonic's generated code would implement it.
struct GetService(Arc<Orders>);

impl tonic::server::UnaryService<GetOrder> for GetService {
    type Response = Order;
    type Future = Answer<Order>;

    fn call(&mut self, request: tonic::Request<GetOrder>) -> Self::Future {
        let orders = self.0.clone();
        Box::pin(async move {
            let ask = request.into_inner();
            orders.work(u64::from(ask.work_ms)).await;
            Ok(tonic::Response::new(Order::sample(ask.id)))
        })
    }
}

/// `Orders.Watch`: the backlog after `after`, then each new update.
struct WatchService(Arc<Orders>);

impl tonic::server::ServerStreamingService<WatchFeed> for WatchService {
    type Response = Update;
    type ResponseStream = Updates;
    type Future = Answer<Updates>;

    fn call(&mut self, request: tonic::Request<WatchFeed>) -> Self::Future {
        let orders = self.0.clone();
        Box::pin(async move {
            let after = request.into_inner().after;
            // Subscribe before reading the backlog: nothing falls between.
            let live = orders.live.as_ref().map(broadcast::Sender::subscribe);
            let stream: Updates = Box::pin(futures_util::stream::unfold(
                (orders, live, after, Vec::<Update>::new()),
                |(orders, mut live, mut last, mut pending)| async move {
                    loop {
                        if pending.is_empty() {
                            pending = orders.since(last);
                            pending.reverse();
                        }
                        if let Some(u) = pending.pop() {
                            last = u.seq;
                            return Some((Ok(u), (orders, live, last, pending)));
                        }
                        // Caught up: wait for the next update (any gap is
                        // read from the feed on the next turn).
                        match live.as_mut()?.recv().await {
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                },
            ));
            Ok(tonic::Response::new(stream))
        })
    }
}

async fn poll(State(orders): State<Arc<Orders>>, Query(q): Query<After>) -> Json<Vec<Update>> {
    orders.stats.json_calls.fetch_add(1, Ordering::Relaxed);
    Json(orders.since(q.after))
}

async fn start_feed(State(orders): State<Arc<Orders>>, Json(f): Json<FeedStart>) -> Response {
    let interval = Duration::from_millis(f.interval_ms.min(MAX_MS));
    let count = f.count.min(100_000);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        for _ in 0..count {
            tick.tick().await;
            orders.publish();
        }
    });
    axum::http::StatusCode::ACCEPTED.into_response()
}

async fn config(State(orders): State<Arc<Orders>>, Json(c): Json<Config>) -> Json<Stats> {
    orders.detached.store(c.detached, Ordering::Relaxed);
    let s = &orders.stats;
    for c in [
        &s.grpc_calls,
        &s.json_calls,
        &s.started,
        &s.completed,
        &s.left,
        &s.wasted,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    Json(orders.snapshot())
}

async fn stats(State(orders): State<Arc<Orders>>) -> Json<Stats> {
    Json(orders.snapshot())
}

/// Marks the caller as gone when the request is dropped unanswered.
struct Caller {
    answered: bool,
    left: Arc<AtomicBool>,
    orders: Arc<Orders>,
}

impl Drop for Caller {
    fn drop(&mut self) {
        if !self.answered {
            self.left.store(true, Ordering::Relaxed);
            self.orders.stats.left.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts work running; dropped when it ends or is cancelled.
struct Working(Arc<Orders>);

impl Working {
    fn start(orders: &Arc<Orders>) -> Self {
        orders.stats.working.fetch_add(1, Ordering::Relaxed);
        Working(orders.clone())
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.stats.working.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Orders {
    /// `ms` of work, in this request or on a task of its own.
    async fn work(self: &Arc<Self>, ms: u64) {
        if ms == 0 {
            return;
        }
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        let mut caller = Caller {
            answered: false,
            left: Arc::default(),
            orders: self.clone(),
        };
        let took = Duration::from_millis(ms.min(MAX_MS));
        let me = self.clone();
        let left = caller.left.clone();
        let working = Working::start(self);
        let job = async move {
            let _working = working;
            tokio::time::sleep(took).await;
            me.stats.completed.fetch_add(1, Ordering::Relaxed);
            if left.load(Ordering::Relaxed) {
                me.stats.wasted.fetch_add(1, Ordering::Relaxed);
            }
        };
        if self.detached.load(Ordering::Relaxed) {
            let _ = tokio::spawn(job).await;
        } else {
            job.await;
        }
        caller.answered = true;
    }

    fn publish(&self) {
        let made_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let update = {
            let mut feed = self.feed.lock().expect("feed lock");
            let seq = feed.last().map_or(0, |u| u.seq) + 1;
            let u = Update { seq, made_unix_us };
            feed.push(u.clone());
            u
        };
        if let Some(live) = &self.live {
            let _ = live.send(update);
        }
    }

    fn since(&self, after: u64) -> Vec<Update> {
        let feed = self.feed.lock().expect("feed lock");
        let from = feed.partition_point(|u| u.seq <= after);
        feed[from..].to_vec()
    }

    fn snapshot(&self) -> Stats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            grpc_calls: get(&s.grpc_calls),
            json_calls: get(&s.json_calls),
            started: get(&s.started),
            completed: get(&s.completed),
            left: get(&s.left),
            wasted: get(&s.wasted),
            working: get(&s.working),
        }
    }
}
