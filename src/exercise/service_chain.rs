//! `service-chain`: a chain of agent services (gateway → orders → inventory,
//! and gateway → catalog), one of them made slow while clients keep
//! arriving, under the gateway's call policy (timeouts, retries with backoff,
//! a circuit breaker; see `agent::chain`).
//!
//! Clients arrive open-loop at `rate` a second, alternating the two routes,
//! so a stall does not slow the arrivals down, as with real users. The
//! scenario has three phases, each a milestone: `slowed` (every instance of
//! `sick` answers after `slow_ms`), `healed` after `fault_ms`, and
//! `recovered` when the first request of the slow route sent after the heal
//! is answered 200; then `after_ms` more of traffic. What the clients saw
//! gives latencies and failures per phase; what the services counted
//! (`/chain-stats`) gives the calls that reached the sick service and the
//! gateway's queue and breaker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::agent::chain::{Config, Stats};
use crate::catalog::Endpoint;
use crate::client::http;
use crate::stats::{pacer, percentile_ms};

const SLOWED: &str = "slowed";
const HEALED: &str = "healed";
const RECOVERED: &str = "recovered";

/// How long the slow route may take to answer 200 again after the heal.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

/// The `service-chain` exercise.
pub struct ServiceChain;

/// Which route a request took.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    /// Through the sick service.
    Slow,
    /// Never touching it.
    Other,
}

/// One request as the client saw it.
#[derive(Clone, Debug)]
struct Sent {
    route: Route,
    /// Sent, from the scenario's start.
    at: Duration,
    /// Until the answer, or until the client gave up.
    took: Duration,
    ok: bool,
}

/// When each phase began, from the scenario's start.
#[derive(Clone, Copy, Debug, Default)]
struct Phases {
    slowed: Duration,
    healed: Duration,
    /// When the first post-heal request of the slow route was answered 200.
    recovered: Option<Duration>,
}

#[async_trait]
impl Exercise for ServiceChain {
    fn name(&self) -> &'static str {
        "service-chain"
    }

    fn summary(&self) -> &'static str {
        "open-loop clients through a chain of agent services while one is slow: latency on every route, calls counted on the sick service, the gateway's queue and breaker"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["agent"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::text(
                "gateway",
                "gateway",
                "the service the clients call; it applies the call policy",
            ),
            ParamSpec::text(
                "slow_route",
                "orders/inventory",
                "services a request of the first route passes after the gateway; its last one is `sick`",
            ),
            ParamSpec::text(
                "other_route",
                "catalog",
                "services a request of the second route passes after the gateway (never the sick one)",
            ),
            ParamSpec::int(
                "rate",
                1,
                1_000,
                60,
                "requests a second from the clients, the routes alternating",
            ),
            ParamSpec::int(
                "slow_ms",
                1,
                30_000,
                3_000,
                "how long the sick service takes per request while it is slow",
            ),
            ParamSpec::int("fault_ms", 100, 60_000, 5_000, "how long it stays slow"),
            ParamSpec::int("before_ms", 100, 60_000, 1_500, "healthy traffic first"),
            ParamSpec::int(
                "after_ms",
                100,
                60_000,
                2_000,
                "traffic after the slow route answers again",
            ),
            ParamSpec::int(
                "timeout_ms",
                0,
                60_000,
                0,
                "the gateway's timeout per attempt to call the next service (0: none)",
            ),
            ParamSpec::int(
                "retries",
                0,
                10,
                0,
                "the gateway's retries after a failed attempt",
            ),
            ParamSpec::int(
                "backoff_ms",
                0,
                10_000,
                50,
                "wait before the gateway's first retry, doubled for each next one, with jitter",
            ),
            ParamSpec::int(
                "breaker_failures",
                0,
                1_000,
                0,
                "consecutive failed attempts that open the gateway's circuit breaker (0: no breaker)",
            ),
            ParamSpec::int(
                "breaker_open_ms",
                1,
                60_000,
                2_000,
                "how long the open breaker refuses calls before letting some through again",
            ),
            ParamSpec::int(
                "client_timeout_ms",
                100,
                120_000,
                20_000,
                "how long a client waits for an answer",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "other_p99_ms_before",
                    "p99 latency of the route that avoids the sick service, before it is slowed",
                ),
                ObsSpec::number(
                    "other_p99_ms_during",
                    "the same for requests sent while the sick service is slow",
                ),
                ObsSpec::number(
                    "other_failed_during",
                    "requests of that route sent meanwhile that failed or timed out at the client",
                ),
                ObsSpec::number(
                    "slow_sent_during",
                    "requests of the slow route sent while the sick service is slow",
                ),
                ObsSpec::number(
                    "slow_p99_ms_during",
                    "their p99 latency, answered or given up",
                ),
                ObsSpec::number("slow_failed_during", "how many of them failed"),
                ObsSpec::number(
                    "sick_calls_during",
                    "requests the sick service's instances received while slow (counted on them)",
                ),
                ObsSpec::number(
                    "gateway_workers",
                    "requests the gateway works on at once (its CHAIN_WORKERS; 0: unlimited)",
                ),
                ObsSpec::number(
                    "gateway_max_waiting",
                    "most requests waiting for a gateway worker at once (counted on it)",
                ),
                ObsSpec::number(
                    "gateway_max_in_flight",
                    "most requests in the gateway at once, waiting or worked on",
                ),
                ObsSpec::number(
                    "gateway_calls",
                    "attempts the gateway sent to the next services, retries included",
                ),
                ObsSpec::number("breaker_opened", "times the gateway's breaker opened"),
                ObsSpec::number(
                    "breaker_refused",
                    "calls the open breaker refused without sending them",
                ),
                ObsSpec::number(
                    "recovery_ms",
                    "from the heal to the first 200 of the slow route for a request sent after it",
                ),
                ObsSpec::number(
                    "slow_failed_after_recovery",
                    "requests of the slow route sent after that first 200 that failed",
                ),
                ObsSpec::number("sent", "requests the clients sent in all"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(
                    SLOWED,
                    "every instance of the sick service answers after `slow_ms`",
                ),
                Milestone::new(HEALED, "it answers at once again"),
                Milestone::new(
                    RECOVERED,
                    "the first request of the slow route sent after the heal was answered 200",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let chain = Topology::from_ctx(ctx)?;
        chain.configure_all(ctx).await?;
        chain.warm_up().await?;
        let traffic = Traffic::start(ctx, &chain)?;
        let (phases, sick_calls) = chain.inject(ctx, &traffic).await?;
        let sent = traffic.finish().await;
        let gateway = chain.stats(&chain.gateway).await?;
        Ok(observe(&sent, &phases, sick_calls, &gateway))
    }
}

/// The services of the chain, as the exercise reaches them from the host.
struct Topology {
    control: reqwest::Client,
    gateway: Endpoint,
    sick: Vec<Endpoint>,
    slow_url: String,
    other_url: String,
    policy: Config,
    slow_ms: u64,
}

impl Topology {
    fn from_ctx(ctx: &Ctx) -> Result<Topology, ExerciseError> {
        let gateway = ctx
            .instances(ctx.text("gateway"), "agent", "gateway")?
            .first()
            .copied()
            .cloned()
            .ok_or_else(|| ExerciseError("no gateway".into()))?;
        let slow_route = ctx.text("slow_route").trim_matches('/');
        let sick_name = slow_route.rsplit('/').next().unwrap_or_default();
        let sick = ctx
            .instances(sick_name, "agent", "slow_route")?
            .into_iter()
            .cloned()
            .collect();
        for name in ctx.text("other_route").trim_matches('/').split('/') {
            if name == sick_name {
                return Err(ExerciseError(format!(
                    "`other_route` passes the sick service `{sick_name}`"
                )));
            }
        }
        let base = gateway.url.trim_end_matches('/');
        let int = |name: &str| ctx.int(name).max(0) as u64;
        Ok(Topology {
            control: http::client(Duration::from_secs(10))?,
            slow_url: format!("{base}/chain/{slow_route}"),
            other_url: format!("{base}/chain/{}", ctx.text("other_route").trim_matches('/')),
            gateway,
            sick,
            policy: Config {
                slow_ms: 0,
                timeout_ms: int("timeout_ms"),
                retries: int("retries") as u32,
                backoff_ms: int("backoff_ms"),
                breaker_failures: int("breaker_failures") as u32,
                breaker_open_ms: int("breaker_open_ms"),
            },
            slow_ms: int("slow_ms"),
        })
    }

    /// Gives the gateway its policy and every other agent none (a plain
    /// client without timeout), which also zeroes every instance's counters.
    async fn configure_all(&self, ctx: &Ctx) -> Result<(), ExerciseError> {
        for e in ctx.services.values().filter(|e| e.kind == "agent") {
            let config = match e.service == self.gateway.service {
                true => self.policy,
                false => Config::default(),
            };
            self.configure(e, config).await?;
        }
        Ok(())
    }

    async fn configure(&self, e: &Endpoint, config: Config) -> Result<(), ExerciseError> {
        let url = format!("{}/chain-config", e.url.trim_end_matches('/'));
        let r = self
            .control
            .put(&url)
            .json(&config)
            .send()
            .await
            .doing(&format!("configuring {}", e.service))?;
        if !r.status().is_success() {
            return Err(ExerciseError(format!(
                "{} refused its configuration: {}",
                e.service,
                r.status()
            )));
        }
        Ok(())
    }

    async fn stats(&self, e: &Endpoint) -> Result<Stats, ExerciseError> {
        let url = format!("{}/chain-stats", e.url.trim_end_matches('/'));
        self.control
            .get(&url)
            .send()
            .await
            .doing(&format!("reading the counters of {}", e.service))?
            .json()
            .await
            .doing(&format!("reading the counters of {}", e.service))
    }

    /// Both routes answer 200 once before the clients start, so the first
    /// measured requests do not pay for name lookups and connections.
    async fn warm_up(&self) -> Result<(), ExerciseError> {
        for url in [&self.slow_url, &self.other_url] {
            let r = self.control.get(url).send().await.doing("warming up")?;
            if !r.status().is_success() {
                return Err(ExerciseError(format!(
                    "{url} answered {} before any fault: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    async fn set_slow(&self, slow_ms: u64) -> Result<(), ExerciseError> {
        let config = Config {
            slow_ms,
            ..Config::default()
        };
        for e in &self.sick {
            self.configure(e, config).await?;
        }
        Ok(())
    }

    /// Healthy traffic, the slow phase, the heal and the wait for recovery;
    /// returns the phases and the calls the sick service received while slow.
    async fn inject(&self, ctx: &Ctx, traffic: &Traffic) -> Result<(Phases, u64), ExerciseError> {
        tokio::time::sleep(Duration::from_millis(ctx.int("before_ms") as u64)).await;
        // Setting the slowness zeroes the sick instances' counters.
        self.set_slow(self.slow_ms).await?;
        let slowed = ctx.timeline().elapsed();
        ctx.mark(SLOWED);
        tokio::time::sleep(Duration::from_millis(ctx.int("fault_ms") as u64)).await;
        let mut sick_calls = 0;
        for e in &self.sick {
            sick_calls += self.stats(e).await?.received;
        }
        self.set_slow(0).await?;
        let healed = ctx.timeline().elapsed();
        ctx.mark(HEALED);
        traffic.heal_at(healed);
        let recovered = traffic.recovered(RECOVERY_DEADLINE).await;
        if recovered.is_some() {
            ctx.mark(RECOVERED);
        }
        tokio::time::sleep(Duration::from_millis(ctx.int("after_ms") as u64)).await;
        Ok((
            Phases {
                slowed,
                healed,
                recovered,
            },
            sick_calls,
        ))
    }
}

/// The open-loop clients: a pacer spawning one request per tick.
struct Traffic {
    sent: Arc<Mutex<Vec<Sent>>>,
    healed: Arc<Mutex<Option<Duration>>>,
    recovered: tokio::sync::watch::Receiver<Option<Duration>>,
    stop: tokio::sync::oneshot::Sender<()>,
    pacer: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl Traffic {
    fn start(ctx: &Ctx, chain: &Topology) -> Result<Traffic, ExerciseError> {
        let client = http::client(Duration::from_millis(ctx.int("client_timeout_ms") as u64))?;
        let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let healed: Arc<Mutex<Option<Duration>>> = Arc::default();
        let (recovered_tx, recovered) = tokio::sync::watch::channel(None);
        let recovered_tx = Arc::new(recovered_tx);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let timeline = ctx.timeline();
        let urls = [
            (Route::Slow, chain.slow_url.clone()),
            (Route::Other, chain.other_url.clone()),
        ];
        let mut tick = pacer(ctx.int("rate") as f64);
        let (sent2, healed2) = (sent.clone(), healed.clone());
        let pacer = tokio::spawn(async move {
            let mut requests = Vec::new();
            for n in 0usize.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let (route, url) = urls[n % 2].clone();
                let (client, timeline) = (client.clone(), timeline.clone());
                let (sent, healed, recovered) =
                    (sent2.clone(), healed2.clone(), recovered_tx.clone());
                requests.push(tokio::spawn(async move {
                    let at = timeline.elapsed();
                    let start = Instant::now();
                    let ok = match client.get(&url).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let took = start.elapsed();
                    let after_heal = healed.lock().expect("heal lock").is_some_and(|h| at >= h);
                    if ok && route == Route::Slow && after_heal {
                        let answered = timeline.elapsed();
                        recovered.send_if_modified(|r| match r {
                            None => {
                                *r = Some(answered);
                                true
                            }
                            Some(_) => false,
                        });
                    }
                    sent.lock().expect("sent lock").push(Sent {
                        route,
                        at,
                        took,
                        ok,
                    });
                }));
            }
            requests
        });
        Ok(Traffic {
            sent,
            healed,
            recovered,
            stop,
            pacer,
        })
    }

    fn heal_at(&self, at: Duration) {
        *self.healed.lock().expect("heal lock") = Some(at);
    }

    /// When the first request of the slow route sent after the heal was
    /// answered 200; `None` if none was within `deadline`.
    async fn recovered(&self, deadline: Duration) -> Option<Duration> {
        let mut rx = self.recovered.clone();
        tokio::time::timeout(deadline, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|v| *v))
    }

    /// Stops sending and waits for every request's outcome.
    async fn finish(self) -> Vec<Sent> {
        let _ = self.stop.send(());
        if let Ok(requests) = self.pacer.await {
            for r in requests {
                let _ = r.await;
            }
        }
        let mut sent = self.sent.lock().expect("sent lock").clone();
        sent.sort_by_key(|s| s.at);
        sent
    }
}

fn observe(sent: &[Sent], phases: &Phases, sick_calls: u64, gateway: &Stats) -> Observations {
    let during = |s: &&Sent| s.at >= phases.slowed && s.at < phases.healed;
    let before = |s: &&Sent| s.at < phases.slowed;
    let p99 = |route: Route, phase: &dyn Fn(&&Sent) -> bool| {
        let mut took: Vec<Duration> = sent
            .iter()
            .filter(|s| s.route == route && phase(s))
            .map(|s| s.took)
            .collect();
        percentile_ms(&mut took, 99.0)
    };
    let count = |route: Route, phase: &dyn Fn(&&Sent) -> bool, failed: bool| {
        sent.iter()
            .filter(|s| s.route == route && phase(s) && (!failed || !s.ok))
            .count()
    };
    let after_recovery = |s: &&Sent| phases.recovered.is_some_and(|r| s.at >= r);
    let mut obs = Observations::new();
    let mut put = |name: &str, v: Value| {
        obs.insert(name.to_string(), v);
    };
    put("other_p99_ms_before", json!(p99(Route::Other, &before)));
    put("other_p99_ms_during", json!(p99(Route::Other, &during)));
    put(
        "other_failed_during",
        json!(count(Route::Other, &during, true)),
    );
    put(
        "slow_sent_during",
        json!(count(Route::Slow, &during, false)),
    );
    put("slow_p99_ms_during", json!(p99(Route::Slow, &during)));
    put(
        "slow_failed_during",
        json!(count(Route::Slow, &during, true)),
    );
    put("sick_calls_during", json!(sick_calls));
    put("gateway_workers", json!(gateway.workers));
    put("gateway_max_waiting", json!(gateway.max_waiting));
    put("gateway_max_in_flight", json!(gateway.max_in_flight));
    put("gateway_calls", json!(gateway.calls));
    put("breaker_opened", json!(gateway.breaker_opened));
    put("breaker_refused", json!(gateway.rejected));
    put(
        "recovery_ms",
        json!(
            phases
                .recovered
                .map(|r| (r.saturating_sub(phases.healed)).as_millis() as u64)
        ),
    );
    put(
        "slow_failed_after_recovery",
        json!(
            phases
                .recovered
                .map(|_| count(Route::Slow, &after_recovery, true))
        ),
    );
    put("sent", json!(sent.len()));
    obs
}
