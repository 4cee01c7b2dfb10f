//! `grpc-rest`: the agent's orders, asked for as REST (JSON over HTTP/1.1
//! and over HTTP/2) and as gRPC (protobuf over HTTP/2), one `part` per
//! scenario:
//! - `wire`: `calls` orders each way at `concurrency`, each way through its
//!   own counting relay: bytes on the wire per call (both directions,
//!   connection setup included) and latency;
//! - `stream`: the agent makes `updates` updates; one client watches them
//!   on a gRPC server stream, another polls `GET /feed` every `poll_ms`:
//!   how late each update arrives and how many requests each way costs.
//!   The stream runs through a relay that cuts its connection halfway
//!   (`stream_cut`); the watcher opens it again after the last update it
//!   saw, or (`watcher: once`, broken) stops there;
//! - `deadline`: calls whose work takes `work_ms`, with a `deadline_ms`
//!   deadline: what the client saw, and what the agent counted (callers that
//!   left, work that finished for nobody); `server: detached` is the agent
//!   that does not stop working when its caller leaves;
//! - `nginx`: gRPC calls through Nginx, routed with `grpc_pass`, or with
//!   `proxy_pass` (HTTP/1.1, `nginx_route: proxy_pass`), the misconfiguration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Mutex;
use tonic::Streaming;

use super::{Context, Ctx, Exercise, ExerciseError, ObsSpec, Observations, ParamSpec, Timeline};
use crate::agent::orders::Stats;
use crate::catalog::Endpoint;
use crate::client::grpc::{self, GET, GET_VIA_PROXY_PASS, GetOrder, Order, Update};
use crate::client::http;
use crate::client::relay::Relay;
use crate::stats::{join_workers, percentile_ms};

/// The `grpc-rest` exercise.
pub struct GrpcRest;

/// How long any one REST call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The three ways of asking.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Grpc,
    JsonH2,
    JsonH1,
}

impl Way {
    fn prefix(self) -> &'static str {
        match self {
            Way::Grpc => "grpc",
            Way::JsonH2 => "json_h2",
            Way::JsonH1 => "json_h1",
        }
    }
}

#[async_trait]
impl Exercise for GrpcRest {
    fn name(&self) -> &'static str {
        "grpc-rest"
    }

    fn summary(&self) -> &'static str {
        "the same orders as REST (JSON over HTTP/1.1 and HTTP/2) and gRPC (protobuf over HTTP/2): bytes per call, latency, a server stream against polling, deadlines, and gRPC through Nginx"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["agent"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "part",
                &["wire", "stream", "deadline", "nginx"],
                "wire",
                "what the scenario measures (see the exercise's description)",
            ),
            ParamSpec::int(
                "calls",
                1,
                1_000_000,
                2_000,
                "calls made each way (wire, nginx)",
            ),
            ParamSpec::int(
                "concurrency",
                1,
                256,
                8,
                "calls in flight at once (wire, nginx)",
            ),
            ParamSpec::int("updates", 1, 10_000, 60, "updates the agent makes (stream)"),
            ParamSpec::int(
                "update_interval_ms",
                1,
                10_000,
                50,
                "time between two updates (stream)",
            ),
            ParamSpec::int("poll_ms", 1, 60_000, 250, "time between two polls (stream)"),
            ParamSpec::int(
                "deadline_calls",
                1,
                1_000,
                10,
                "calls made with a deadline (deadline)",
            ),
            ParamSpec::int(
                "work_ms",
                1,
                60_000,
                2_000,
                "the agent's work per call (deadline)",
            ),
            ParamSpec::int(
                "deadline_ms",
                1,
                60_000,
                200,
                "each call's deadline (deadline)",
            ),
            ParamSpec::choice(
                "client_deadline",
                &["set", "none"],
                "set",
                "whether the deadline calls carry `deadline_ms` (broken: none, gRPC's default, so they wait as long as the work takes)",
            ),
            ParamSpec::choice(
                "poller",
                &["cursor", "latest"],
                "cursor",
                "the polling client asks for every update after the last it saw, or (broken) keeps only the latest of each answer, as a dashboard of current values does",
            ),
            ParamSpec::choice(
                "stream_cut",
                &["halfway", "none"],
                "halfway",
                "whether the stream's connection is cut once the watcher has half the updates, as a proxy restart or a dropped link would (stream)",
            ),
            ParamSpec::choice(
                "watcher",
                &["resume", "once"],
                "resume",
                "when its stream ends early, the watcher reopens it after the last update it saw, or (broken) takes the end of the stream for the end of the feed",
            ),
            ParamSpec::choice(
                "server",
                &["inline", "detached"],
                "inline",
                "the agent's work: inside the request (stops with it), or on a task of its own",
            ),
            ParamSpec::choice(
                "nginx_route",
                &["grpc_pass", "proxy_pass"],
                "grpc_pass",
                "how Nginx sends the gRPC calls on: grpc_pass (HTTP/2), or proxy_pass (HTTP/1.1)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "grpc_bytes_per_call",
                    "bytes both ways per gRPC call, counted by a relay (wire)",
                ),
                ObsSpec::number("json_h2_bytes_per_call", "the same for JSON over HTTP/2"),
                ObsSpec::number("json_h1_bytes_per_call", "the same for JSON over HTTP/1.1"),
                ObsSpec::number("grpc_p50_ms", "median gRPC call (wire)"),
                ObsSpec::number("grpc_p99_ms", "99th percentile gRPC call (wire)"),
                ObsSpec::number("json_h2_p50_ms", "median JSON call over HTTP/2"),
                ObsSpec::number("json_h2_p99_ms", "99th percentile over HTTP/2"),
                ObsSpec::number("json_h1_p50_ms", "median JSON call over HTTP/1.1"),
                ObsSpec::number("json_h1_p99_ms", "99th percentile over HTTP/1.1"),
                ObsSpec::number("grpc_connections", "TCP connections the gRPC client opened"),
                ObsSpec::number("json_h1_connections", "TCP connections over HTTP/1.1"),
                ObsSpec::number(
                    "stream_delay_p50_ms",
                    "median time from an update's making to its arrival on the stream",
                ),
                ObsSpec::number("poll_delay_p50_ms", "the same by polling"),
                ObsSpec::number(
                    "stream_requests",
                    "requests the agent received from the stream client (gRPC calls)",
                ),
                ObsSpec::number(
                    "poll_requests",
                    "requests the agent received from the polling client",
                ),
                ObsSpec::number("poll_empty", "polls that brought nothing new"),
                ObsSpec::number("stream_missed", "updates the stream client never got"),
                ObsSpec::number(
                    "stream_reopened",
                    "times the watcher opened its stream again after it ended early",
                ),
                ObsSpec::number("poll_missed", "updates the polling client never got"),
                ObsSpec::number(
                    "deadline_errors",
                    "calls that ended with DEADLINE_EXCEEDED or CANCELLED on the client",
                ),
                ObsSpec::number("client_wait_p50_ms", "median time a deadline call took"),
                ObsSpec::number(
                    "server_left",
                    "requests the agent counted as left by their caller",
                ),
                ObsSpec::number(
                    "server_wasted",
                    "work the agent finished after its caller had left",
                ),
                ObsSpec::number("nginx_ok", "gRPC calls through Nginx that succeeded"),
                ObsSpec::number("nginx_failed", "gRPC calls through Nginx that failed"),
                ObsSpec::number("nginx_p50_ms", "median gRPC call through Nginx"),
                ObsSpec::text("nginx_error", "the first failure through Nginx, in words"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let agent = ctx.service("agent")?;
        let mut obs = Observations::new();
        match ctx.text("part") {
            "stream" => stream_part(ctx, agent, &mut obs).await?,
            "deadline" => deadline_part(ctx, agent, &mut obs).await?,
            "nginx" => nginx_part(ctx, &mut obs).await?,
            _ => {
                for way in [Way::Grpc, Way::JsonH2, Way::JsonH1] {
                    wire(ctx, agent, way, &mut obs).await?;
                }
            }
        }
        Ok(obs)
    }
}

/// `calls` orders one way through a relay: bytes per call, latency,
/// connections. Every call must bring the right order: bytes per call
/// compare only between ways that all did the same work, so a failed call
/// is an error, not an observation.
async fn wire(
    ctx: &Ctx,
    agent: &Endpoint,
    way: Way,
    obs: &mut Observations,
) -> Result<(), ExerciseError> {
    let relay = Relay::start(format!("127.0.0.1:{}", agent.port()))
        .await
        .doing("starting the byte-counting relay")?;
    let url = format!("http://{}", relay.addr());
    let caller = Caller::new(way, &url).await?;
    let calls = ctx.int("calls") as u64;
    let workers = (ctx.int("concurrency") as u64).min(calls).max(1);
    let handles = (0..workers)
        .map(|w| {
            let caller = caller.clone();
            tokio::spawn(async move {
                let (mut times, mut failed, mut error) = (Vec::new(), 0u64, None);
                for id in (w..calls).step_by(workers as usize) {
                    let began = Instant::now();
                    match caller.get(id).await {
                        Ok(order) if order == Order::sample(id) => times.push(began.elapsed()),
                        Ok(_) => failed += 1,
                        Err(e) => {
                            failed += 1;
                            error.get_or_insert(e);
                        }
                    }
                }
                Ok((times, failed, error))
            })
        })
        .collect();
    let results = join_workers(handles).await?;
    let failed: u64 = results.iter().map(|(_, f, _)| f).sum();
    if failed > 0 {
        let first = results
            .iter()
            .find_map(|(_, _, e)| e.clone())
            .unwrap_or_else(|| "an answer with another order than the one asked for".into());
        return Err(ExerciseError(format!(
            "{failed} of {calls} {} calls failed (first: {first})",
            way.prefix()
        )));
    }
    let mut times: Vec<Duration> = results.into_iter().flat_map(|(t, _, _)| t).collect();
    let answered = times.len() as u64;
    let p = way.prefix();
    if answered > 0 {
        obs.insert(
            format!("{p}_bytes_per_call"),
            json!((relay.up() + relay.down()) as f64 / answered as f64),
        );
    }
    obs.insert(
        format!("{p}_p50_ms"),
        json!(percentile_ms(&mut times, 50.0)),
    );
    obs.insert(
        format!("{p}_p99_ms"),
        json!(percentile_ms(&mut times, 99.0)),
    );
    if way != Way::JsonH2 {
        obs.insert(format!("{p}_connections"), json!(relay.accepted()));
    }
    Ok(())
}

/// One client of one way, shared by the workers (one gRPC channel and one
/// HTTP connection pool, as an application would have).
#[derive(Clone)]
enum Caller {
    Grpc(tonic::transport::Channel),
    Json(reqwest::Client, String),
}

impl Caller {
    async fn new(way: Way, url: &str) -> Result<Self, ExerciseError> {
        Ok(match way {
            Way::Grpc => Caller::Grpc(grpc::channel(url).await?),
            Way::JsonH2 => Caller::Json(
                http::builder(CALL_TIMEOUT)
                    .http2_prior_knowledge()
                    .build()
                    .doing("building the HTTP/2 client")?,
                url.to_string(),
            ),
            Way::JsonH1 => Caller::Json(
                http::builder(CALL_TIMEOUT)
                    .http1_only()
                    .build()
                    .doing("building the HTTP/1.1 client")?,
                url.to_string(),
            ),
        })
    }

    async fn get(&self, id: u64) -> Result<Order, String> {
        match self {
            Caller::Grpc(channel) => {
                grpc::get(channel.clone(), GET, GetOrder { id, work_ms: 0 }, None)
                    .await
                    .map_err(|s| s.to_string())
            }
            Caller::Json(client, url) => {
                let answer = client
                    .get(format!("{url}/orders/{id}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                answer.json::<Order>().await.map_err(|e| e.to_string())
            }
        }
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Arrival delays (ms) of the updates one client got.
type Arrivals = Arc<Mutex<Vec<f64>>>;

/// A channel of its own and the `Watch` stream from update `after` on.
async fn open_watch(url: &str, after: u64) -> Result<Streaming<Update>, tonic::Status> {
    let channel = grpc::channel(url)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc::watch(channel, after).await
}

/// The stream client: it records when each update arrives, cuts its own
/// connection once (the fault) and, when its stream ends before the last
/// update, opens it again after the last update it saw, or (broken) stops.
struct Watcher {
    url: String,
    relay: Relay,
    timeline: Timeline,
    /// The update after which the connection is cut, if any.
    cut_at: Option<u64>,
    resume: bool,
    last_seq: u64,
    /// Shared with the caller, which reads them even when it had to stop
    /// the watcher at its time limit.
    arrivals: Arrivals,
    reopened: Arc<AtomicU64>,
}

impl Watcher {
    async fn run(self, mut stream: Streaming<Update>, mut seen: u64) {
        loop {
            while let Ok(Some(u)) = stream.message().await {
                if u.seq <= seen || u.seq > self.last_seq {
                    continue;
                }
                seen = u.seq;
                let delay = unix_us().saturating_sub(u.made_unix_us) as f64 / 1000.0;
                self.arrivals.lock().await.push(delay);
                if seen >= self.last_seq {
                    return;
                }
                if self.cut_at == Some(seen) {
                    self.timeline.record("fault", "cut stream");
                    self.relay.cut();
                }
            }
            if !self.resume {
                return;
            }
            stream = self.reopen(seen).await;
            self.reopened.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Opens the stream again after `seen`, trying until it opens (the
    /// caller's time limit ends a watcher that never gets back).
    async fn reopen(&self, seen: u64) -> Streaming<Update> {
        loop {
            match open_watch(&self.url, seen).await {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Sets where the agent's work runs, and resets its counters.
async fn configure(
    http: &reqwest::Client,
    agent: &Endpoint,
    detached: bool,
) -> Result<(), ExerciseError> {
    http.put(format!("{}/orders-config", agent.url))
        .json(&json!({ "detached": detached }))
        .send()
        .await
        .doing("configuring the agent")?
        .error_for_status()
        .doing("configuring the agent")?;
    Ok(())
}

/// The agent's counters.
async fn agent_stats(http: &reqwest::Client, agent: &Endpoint) -> Result<Stats, ExerciseError> {
    http.get(format!("{}/orders-stats", agent.url))
        .send()
        .await
        .doing("reading the agent's counters")?
        .json()
        .await
        .doing("reading the agent's counters")
}

/// The same updates watched on a gRPC stream and polled over REST.
async fn stream_part(
    ctx: &Ctx,
    agent: &Endpoint,
    obs: &mut Observations,
) -> Result<(), ExerciseError> {
    let updates = ctx.int("updates") as usize;
    let poll_every = Duration::from_millis(ctx.int("poll_ms") as u64);
    let interval = ctx.int("update_interval_ms") as u64;
    let http = http::client(CALL_TIMEOUT)?;
    let base = agent.url.clone();
    // Updates of earlier scenarios are not this one's.
    let before: Vec<Update> = http
        .get(format!("{base}/feed?after=0"))
        .send()
        .await
        .doing("reading the feed")?
        .json()
        .await
        .doing("reading the feed")?;
    let start_seq = before.last().map_or(0, |u| u.seq);
    // From here the agent counts the requests of each client.
    configure(&http, agent, false).await?;
    let last_seq = start_seq + updates as u64;
    // The stream goes through a relay, so its connection can be cut.
    let relay = Relay::start(format!("127.0.0.1:{}", agent.port()))
        .await
        .doing("starting the stream's relay")?;
    let stream_url = format!("http://{}", relay.addr());
    let first = open_watch(&stream_url, start_seq)
        .await
        .map_err(|s| ExerciseError(format!("opening the Watch stream: {s}")))?;
    let watcher = Watcher {
        url: stream_url,
        relay,
        timeline: ctx.timeline(),
        cut_at: (ctx.text("stream_cut") == "halfway")
            .then(|| start_seq + (updates as u64 / 2).max(1))
            .filter(|&at| at < last_seq),
        resume: ctx.text("watcher") == "resume",
        last_seq,
        arrivals: Arc::default(),
        reopened: Arc::default(),
    };
    let (streamed, reopened) = (watcher.arrivals.clone(), watcher.reopened.clone());
    let polled: Arrivals = Arc::default();
    let limit = Duration::from_millis(interval * updates as u64) + Duration::from_secs(15);
    let watcher = tokio::spawn(watcher.run(first, start_seq));
    let latest_only = ctx.text("poller") == "latest";
    let poller = {
        let (polled, http, base) = (polled.clone(), http.clone(), base.clone());
        tokio::spawn(async move {
            let (mut after, mut empty) = (start_seq, 0u64);
            let mut tick = tokio::time::interval(poll_every);
            while after < last_seq {
                tick.tick().await;
                let mut got: Vec<Update> =
                    match http.get(format!("{base}/feed?after={after}")).send().await {
                        Ok(r) => r.json().await.unwrap_or_default(),
                        Err(_) => continue,
                    };
                if latest_only && got.len() > 1 {
                    got.drain(..got.len() - 1);
                }
                let now = unix_us();
                if got.is_empty() {
                    empty += 1;
                }
                for u in got.into_iter().filter(|u| u.seq <= last_seq) {
                    after = after.max(u.seq);
                    let delay = now.saturating_sub(u.made_unix_us) as f64 / 1000.0;
                    polled.lock().await.push(delay);
                }
            }
            empty
        })
    };
    http.post(format!("{base}/feed/start"))
        .json(&json!({ "count": updates, "interval_ms": interval }))
        .send()
        .await
        .doing("starting the feed")?;
    // A client still waiting at the limit has missed what it lacks (and
    // stops: a dropped handle would leave its task running).
    let (stop_watcher, stop_poller) = (watcher.abort_handle(), poller.abort_handle());
    let (_, polls) = tokio::join!(
        tokio::time::timeout(limit, watcher),
        tokio::time::timeout(limit, poller)
    );
    stop_watcher.abort();
    stop_poller.abort();
    if let Ok(Ok(empty)) = polls {
        obs.insert("poll_empty".into(), json!(empty));
    }
    for (name, arrivals) in [("stream", &streamed), ("poll", &polled)] {
        let mut delays = arrivals.lock().await.clone();
        let got = delays.len();
        obs.insert(
            format!("{name}_delay_p50_ms"),
            json!(crate::stats::percentile(&mut delays, 50.0)),
        );
        obs.insert(format!("{name}_missed"), json!(updates.saturating_sub(got)));
    }
    obs.insert(
        "stream_reopened".into(),
        json!(reopened.load(Ordering::SeqCst)),
    );
    // What the agent received: gRPC calls (the stream) and JSON requests
    // (the polls).
    let counted = agent_stats(&http, agent).await?;
    obs.insert("stream_requests".into(), json!(counted.grpc_calls));
    obs.insert("poll_requests".into(), json!(counted.json_calls));
    Ok(())
}

/// Calls past their deadline: what the client saw and what the agent did.
async fn deadline_part(
    ctx: &Ctx,
    agent: &Endpoint,
    obs: &mut Observations,
) -> Result<(), ExerciseError> {
    let http = http::client(CALL_TIMEOUT)?;
    configure(&http, agent, ctx.text("server") == "detached").await?;
    let channel = grpc::channel(&agent.url).await?;
    let n = ctx.int("deadline_calls") as u64;
    let work_ms = ctx.int("work_ms") as u32;
    let deadline = (ctx.text("client_deadline") == "set")
        .then(|| Duration::from_millis(ctx.int("deadline_ms") as u64));
    let handles = (0..n)
        .map(|id| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let began = Instant::now();
                let answer = grpc::get(channel, GET, GetOrder { id, work_ms }, deadline).await;
                let timed_out = matches!(
                    answer.as_ref().map_err(tonic::Status::code),
                    Err(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
                );
                Ok((began.elapsed(), timed_out))
            })
        })
        .collect();
    let results = join_workers(handles).await?;
    let mut waits: Vec<Duration> = results.iter().map(|(w, _)| *w).collect();
    let errors = results.iter().filter(|(_, t)| *t).count();
    // The agent's own account, once nothing is working any more: every
    // request answered or left, and no work still running.
    let began = Instant::now();
    let settle = Duration::from_millis(u64::from(work_ms)) + Duration::from_secs(15);
    let stats = loop {
        let s = agent_stats(&http, agent).await?;
        if (s.completed + s.left >= s.started && s.working == 0) || began.elapsed() > settle {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    obs.insert("deadline_errors".into(), json!(errors));
    obs.insert(
        "client_wait_p50_ms".into(),
        json!(percentile_ms(&mut waits, 50.0)),
    );
    obs.insert("server_left".into(), json!(stats.left));
    obs.insert("server_wasted".into(), json!(stats.wasted));
    Ok(())
}

/// gRPC calls through Nginx.
async fn nginx_part(ctx: &Ctx, obs: &mut Observations) -> Result<(), ExerciseError> {
    let nginx = ctx.service("nginx")?;
    // The lab's Nginx speaks cleartext HTTP/2 on the kind's second port.
    let port = nginx
        .named_port("tls")
        .ok_or_else(|| ExerciseError("the nginx service publishes no second port".into()))?;
    let channel = grpc::channel(&format!("http://127.0.0.1:{port}")).await?;
    let path = match ctx.text("nginx_route") {
        "proxy_pass" => GET_VIA_PROXY_PASS,
        _ => GET,
    };
    let calls = ctx.int("calls") as u64;
    let (mut times, mut failed, mut first_error) = (Vec::new(), 0u64, None);
    for id in 0..calls {
        let began = Instant::now();
        match grpc::get(channel.clone(), path, GetOrder { id, work_ms: 0 }, None).await {
            Ok(order) if order == Order::sample(id) => times.push(began.elapsed()),
            Ok(_) => failed += 1,
            Err(status) => {
                failed += 1;
                first_error.get_or_insert_with(|| status.to_string());
            }
        }
    }
    obs.insert("nginx_ok".into(), json!(times.len()));
    obs.insert("nginx_failed".into(), json!(failed));
    obs.insert(
        "nginx_p50_ms".into(),
        json!(percentile_ms(&mut times, 50.0)),
    );
    if let Some(e) = first_error {
        obs.insert("nginx_error".into(), json!(e));
    }
    Ok(())
}
