//! The chain: the agent as one service of a chain of microservices
//! (gateway → orders → inventory), served next to role `http`.
//!
//! - `GET /chain` answers as the last service of a route, after the
//!   instance's `slow_ms`. `GET /chain/NEXT/REST…` calls
//!   `http://NEXT:8080/chain/REST…` and answers with what it got: the path
//!   names the whole route, so one image plays every service.
//! - Every `/chain` request takes one of the instance's `CHAIN_WORKERS`
//!   (environment; unset or 0: unlimited) and keeps it until its work is done,
//!   even after its caller gave up, as a thread-per-request server does (it
//!   does not notice the caller leaving). Requests beyond the workers wait.
//! - `PUT /chain-config` with a JSON [`Config`]: how this instance answers and
//!   how it calls the next service (timeout per attempt, retries with
//!   exponential backoff and jitter, a consecutive-failures circuit breaker).
//!   It also resets the counters, so a scenario starts from zero.
//! - `GET /chain-stats`: the counters ([`Stats`]), so a lab counts what each
//!   service saw instead of inferring it from the client.
//!
//! Answers: 200 with the route's instances; 502 when the next service failed
//! or could not be reached, 503 when the breaker refused the call, 504 when
//! the last attempt timed out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use backon::{ExponentialBuilder, Retryable};
use failsafe::futures::CircuitBreaker;
use serde::{Deserialize, Serialize};

/// The environment variable bounding the requests worked on at once.
pub const WORKERS_ENV: &str = "CHAIN_WORKERS";

/// The port every service of a chain listens on (the agent kind's).
const NEXT_PORT: u16 = super::DEFAULT_PORT;

/// Longest `slow_ms`, so a typo cannot hang a lab.
const MAX_SLOW_MS: u64 = 60_000;

/// How an instance answers and calls the next service. Zero switches a
/// mechanism off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How long the last service of a route takes to answer (the slowness a
    /// lab injects into a sick service).
    pub slow_ms: u64,
    /// Timeout of each attempt to call the next service; 0: none, the call
    /// waits as long as the next service takes.
    pub timeout_ms: u64,
    /// Attempts after the first failed one (a refusal of the breaker is not
    /// retried).
    pub retries: u32,
    /// Wait before the first retry, doubled for each next one, with jitter.
    pub backoff_ms: u64,
    /// Consecutive failed attempts that open the breaker; 0: no breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before it lets calls through
    /// again (half-open: a success closes it, a failure opens it again).
    pub breaker_open_ms: u64,
}

/// What an instance counted since its last [`Config`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Who counted.
    pub instance: String,
    /// `CHAIN_WORKERS` (0: unlimited).
    pub workers: u64,
    /// `/chain` requests that arrived.
    pub received: u64,
    /// Requests answered 200.
    pub answered: u64,
    /// Requests answered with an error.
    pub failed: u64,
    /// Requests arrived and not yet worked off, abandoned ones included.
    pub in_flight: u64,
    /// Most of them at once.
    pub max_in_flight: u64,
    /// Most requests waiting for a worker at once.
    pub max_waiting: u64,
    /// Attempts sent to a next service.
    pub calls: u64,
    /// Attempts that timed out.
    pub call_timeouts: u64,
    /// Calls the open breaker refused without sending them.
    pub rejected: u64,
    /// Times a breaker opened.
    pub breaker_opened: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    waiting: AtomicU64,
    max_waiting: AtomicU64,
    calls: AtomicU64,
    call_timeouts: AtomicU64,
    rejected: AtomicU64,
    breaker_opened: AtomicU64,
}

impl Counters {
    fn reset(&self) {
        for c in [
            &self.received,
            &self.answered,
            &self.failed,
            &self.calls,
            &self.call_timeouts,
            &self.rejected,
            &self.breaker_opened,
        ] {
            c.store(0, Ordering::SeqCst);
        }
        self.max_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        self.max_waiting
            .store(self.waiting.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Raises a gauge and its high-water mark; [`lower`] undoes the raise.
fn raise(gauge: &AtomicU64, max: &AtomicU64) {
    let now = gauge.fetch_add(1, Ordering::SeqCst) + 1;
    max.fetch_max(now, Ordering::SeqCst);
}

fn lower(gauge: &AtomicU64) {
    gauge.fetch_sub(1, Ordering::SeqCst);
}

/// Counts the breaker's openings and refusals.
#[derive(Clone)]
struct BreakerEvents(Arc<Counters>);

impl failsafe::Instrument for BreakerEvents {
    fn on_call_rejected(&self) {
        self.0.rejected.fetch_add(1, Ordering::SeqCst);
    }
    fn on_open(&self) {
        self.0.breaker_opened.fetch_add(1, Ordering::SeqCst);
    }
    fn on_half_open(&self) {}
    fn on_closed(&self) {}
}

type Breaker = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    BreakerEvents,
>;

/// Why a call to the next service failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CallError {
    Timeout,
    Unreachable(String),
    Answered(u16),
    Refused,
}

impl CallError {
    fn status(&self) -> StatusCode {
        match self {
            CallError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            CallError::Refused => StatusCode::SERVICE_UNAVAILABLE,
            CallError::Unreachable(_) | CallError::Answered(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn describe(&self, next: &str) -> String {
        match self {
            CallError::Timeout => format!("{next} did not answer in time"),
            CallError::Unreachable(why) => format!("{next} could not be reached: {why}"),
            CallError::Answered(code) => format!("{next} answered {code}"),
            CallError::Refused => format!("the breaker for {next} is open"),
        }
    }
}

struct Chain {
    instance: String,
    workers: Option<Arc<tokio::sync::Semaphore>>,
    worker_count: usize,
    config: RwLock<Config>,
    breakers: Mutex<std::collections::HashMap<String, Breaker>>,
    counters: Arc<Counters>,
    client: reqwest::Client,
}

/// The answer of a service that served its part of the route.
#[derive(Debug, Serialize, Deserialize)]
struct Served {
    /// The instances of the route that answered, this one first.
    route: Vec<String>,
}

#[derive(Serialize)]
struct Failed {
    instance: String,
    error: String,
}

/// The chain's routes, for any router state.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let workers = std::env::var(WORKERS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    routes_with(super::instance_id(), workers)
}

fn routes_with<S: Clone + Send + Sync + 'static>(instance: String, workers: usize) -> Router<S> {
    let chain = Arc::new(Chain {
        instance,
        workers: (workers > 0).then(|| Arc::new(tokio::sync::Semaphore::new(workers))),
        worker_count: workers,
        config: RwLock::default(),
        breakers: Mutex::default(),
        counters: Arc::default(),
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a plain-HTTP client builds"),
    });
    Router::new()
        .route("/chain", get(last))
        .route("/chain/{*route}", get(forward))
        .route("/chain-config", put(configure))
        .route("/chain-stats", get(stats))
        .with_state(chain)
}

async fn last(State(chain): State<Arc<Chain>>) -> Response {
    chain.accept(String::new()).await
}

async fn forward(State(chain): State<Arc<Chain>>, Path(route): Path<String>) -> Response {
    chain.accept(route).await
}

async fn configure(State(chain): State<Arc<Chain>>, Json(config): Json<Config>) -> Response {
    if config.slow_ms > MAX_SLOW_MS {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "slow_ms {} is over the limit of {MAX_SLOW_MS}\n",
                config.slow_ms
            ),
        )
            .into_response();
    }
    *chain.config.write().expect("config lock") = config;
    chain.breakers.lock().expect("breakers lock").clear();
    chain.counters.reset();
    Json(config).into_response()
}

async fn stats(State(chain): State<Arc<Chain>>) -> Json<Stats> {
    let c = &chain.counters;
    let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
    Json(Stats {
        instance: chain.instance.clone(),
        workers: chain.worker_count as u64,
        received: get(&c.received),
        answered: get(&c.answered),
        failed: get(&c.failed),
        in_flight: get(&c.in_flight),
        max_in_flight: get(&c.max_in_flight),
        max_waiting: get(&c.max_waiting),
        calls: get(&c.calls),
        call_timeouts: get(&c.call_timeouts),
        rejected: get(&c.rejected),
        breaker_opened: get(&c.breaker_opened),
    })
}

impl Chain {
    /// Works on a request in a task of its own, which finishes even when the
    /// caller stops waiting for it.
    async fn accept(self: Arc<Self>, route: String) -> Response {
        let c = &self.counters;
        c.received.fetch_add(1, Ordering::SeqCst);
        raise(&c.in_flight, &c.max_in_flight);
        let chain = self.clone();
        let work = tokio::spawn(async move {
            let answer = chain.clone().work(&route).await;
            let c = &chain.counters;
            match &answer {
                Ok(_) => c.answered.fetch_add(1, Ordering::SeqCst),
                Err(_) => c.failed.fetch_add(1, Ordering::SeqCst),
            };
            lower(&c.in_flight);
            answer
        });
        match work.await {
            Ok(Ok(served)) => Json(served).into_response(),
            Ok(Err((status, error))) => (
                status,
                Json(Failed {
                    instance: self.instance.clone(),
                    error,
                }),
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        }
    }

    /// Waits for a worker, then serves this instance's part of the route.
    async fn work(self: Arc<Self>, route: &str) -> Result<Served, (StatusCode, String)> {
        let _worker = match &self.workers {
            Some(pool) => match pool.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                // Every worker is busy: wait in line, and count it.
                Err(_) => {
                    let c = &self.counters;
                    raise(&c.waiting, &c.max_waiting);
                    let permit = pool.clone().acquire_owned().await;
                    lower(&c.waiting);
                    Some(permit.expect("the worker pool is never closed"))
                }
            },
            None => None,
        };
        let config = *self.config.read().expect("config lock");
        let (next, rest) = match route.split_once('/') {
            Some((next, rest)) => (next, rest),
            None => (route, ""),
        };
        if next.is_empty() {
            tokio::time::sleep(Duration::from_millis(config.slow_ms)).await;
            return Ok(Served {
                route: vec![self.instance.clone()],
            });
        }
        match self.call(next, rest, &config).await {
            Ok(mut served) => {
                served.route.insert(0, self.instance.clone());
                Ok(served)
            }
            Err(e) => Err((e.status(), e.describe(next))),
        }
    }

    /// Calls `next` under the policy: attempts with a timeout each, retried
    /// with backoff, through the breaker for `next` when there is one.
    async fn call(&self, next: &str, rest: &str, config: &Config) -> Result<Served, CallError> {
        let url = match next.contains(':') {
            true => format!("http://{next}/chain/{rest}"),
            false => format!("http://{next}:{NEXT_PORT}/chain/{rest}"),
        };
        let url = url.trim_end_matches('/').to_string();
        let breaker = self.breaker(next, config);
        let attempt = || async {
            match &breaker {
                Some(b) => b
                    .call(self.attempt(&url, config))
                    .await
                    .map_err(|e| match e {
                        failsafe::Error::Rejected => CallError::Refused,
                        failsafe::Error::Inner(e) => e,
                    }),
                None => self.attempt(&url, config).await,
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(config.backoff_ms))
            .with_max_times(config.retries as usize)
            .with_jitter();
        attempt
            .retry(backoff)
            .when(|e| *e != CallError::Refused)
            .await
    }

    /// One attempt, with the configured timeout.
    async fn attempt(&self, url: &str, config: &Config) -> Result<Served, CallError> {
        self.counters.calls.fetch_add(1, Ordering::SeqCst);
        let send = async {
            let response = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            if !response.status().is_success() {
                return Err(CallError::Answered(response.status().as_u16()));
            }
            response
                .json::<Served>()
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))
        };
        if config.timeout_ms == 0 {
            return send.await;
        }
        match tokio::time::timeout(Duration::from_millis(config.timeout_ms), send).await {
            Ok(result) => result,
            Err(_) => {
                self.counters.call_timeouts.fetch_add(1, Ordering::SeqCst);
                Err(CallError::Timeout)
            }
        }
    }

    /// The breaker for calls to `next`, made on first use after a new config.
    fn breaker(&self, next: &str, config: &Config) -> Option<Breaker> {
        if config.breaker_failures == 0 {
            return None;
        }
        let mut breakers = self.breakers.lock().expect("breakers lock");
        let b = breakers.entry(next.to_string()).or_insert_with(|| {
            let policy = failsafe::failure_policy::consecutive_failures(
                config.breaker_failures,
                failsafe::backoff::constant(Duration::from_millis(config.breaker_open_ms)),
            );
            failsafe::Config::new()
                .failure_policy(policy)
                .instrument(BreakerEvents(self.counters.clone()))
                .build()
        });
        Some(b.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Serves the chain routes on a loopback port; returns `127.0.0.1:PORT`.
    async fn start(instance: &str, workers: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app: Router = routes_with(instance.to_string(), workers);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    async fn configure(addr: &str, config: Config) {
        let r = client()
            .put(format!("http://{addr}/chain-config"))
            .json(&config)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn stats(addr: &str) -> Stats {
        client()
            .get(format!("http://{addr}/chain-stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_route_is_served_hop_by_hop() {
        let leaf = start("inventory-1", 0).await;
        let mid = start("orders-1", 0).await;
        let r = client()
            .get(format!("http://{mid}/chain/{leaf}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let served: Served = r.json().await.unwrap();
        assert_eq!(served.route, ["orders-1", "inventory-1"]);
        assert_eq!(stats(&leaf).await.received, 1);
        assert_eq!(stats(&mid).await.calls, 1);
    }

    #[tokio::test]
    async fn a_timeout_fails_the_call_and_retries_repeat_it() {
        let leaf = start("inventory-1", 0).await;
        let mid = start("orders-1", 0).await;
        configure(
            &leaf,
            Config {
                slow_ms: 400,
                ..Config::default()
            },
        )
        .await;
        configure(
            &mid,
            Config {
                timeout_ms: 50,
                retries: 2,
                backoff_ms: 10,
                ..Config::default()
            },
        )
        .await;
        let t = Instant::now();
        let r = client()
            .get(format!("http://{mid}/chain/{leaf}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 504);
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        let s = stats(&mid).await;
        assert_eq!((s.calls, s.call_timeouts, s.failed), (3, 3, 1));
        assert_eq!(stats(&leaf).await.received, 3);
    }

    #[tokio::test]
    async fn an_open_breaker_refuses_without_calling() {
        let mid = start("orders-1", 0).await;
        // Nothing listens on port 9 of the loopback: every attempt fails fast.
        configure(
            &mid,
            Config {
                breaker_failures: 2,
                breaker_open_ms: 10_000,
                ..Config::default()
            },
        )
        .await;
        let mut codes = Vec::new();
        for _ in 0..4 {
            let r = client()
                .get(format!("http://{mid}/chain/127.0.0.1:9"))
                .send()
                .await
                .unwrap();
            codes.push(r.status().as_u16());
        }
        assert_eq!(codes, [502, 502, 503, 503]);
        let s = stats(&mid).await;
        assert_eq!((s.calls, s.rejected, s.breaker_opened), (2, 2, 1));
    }

    #[tokio::test]
    async fn busy_workers_make_other_requests_wait_and_abandoned_work_finishes() {
        let leaf = start("inventory-1", 0).await;
        let gateway = start("gateway", 1).await;
        configure(
            &leaf,
            Config {
                slow_ms: 300,
                ..Config::default()
            },
        )
        .await;
        // A caller that gives up after 50 ms: the gateway keeps the worker.
        let impatient = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let _ = impatient
            .get(format!("http://{gateway}/chain/{leaf}"))
            .send()
            .await;
        let t = Instant::now();
        let r = client()
            .get(format!("http://{gateway}/chain"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        let s = stats(&gateway).await;
        assert_eq!((s.workers, s.received, s.max_waiting), (1, 2, 1));
        assert_eq!(s.in_flight, 0);
    }
}
