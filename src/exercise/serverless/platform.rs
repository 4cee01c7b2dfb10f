//! The platform: it sends each invocation to an idle warm instance, starts
//! an instance when none is idle (a cold start), holds the limit on
//! instances by queuing or refusing what is over it, and stops instances
//! left idle for their keep-warm time (scale to zero). One invocation at a
//! time per instance, as on AWS Lambda.
//!
//! Instances are containers of the lab's function service, started and
//! stopped through [`Functions`]; the engine's record of each one's life is
//! what the cost is made of.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Notify;

use crate::catalog::Endpoint;
use crate::exercise::functions::{Functions, Lifetime};
use crate::exercise::{Context, ExerciseError, Timeline};

/// How the platform is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The lab service whose containers are the function's instances.
    pub service: String,
    /// The handler's work per invocation.
    pub work_ms: u64,
    /// Idle time after which an instance is stopped; `None`: never.
    pub keep_warm: Option<Duration>,
    /// Instances started at once and kept warm (provisioned concurrency).
    pub pool: usize,
    /// Most instances at once.
    pub max_instances: usize,
    /// An invocation over the limit waits (true) or is refused.
    pub queue: bool,
    /// How the limit is counted (see [`Scheduler`]).
    pub scheduler: Scheduler,
    /// Whether an instance serves more than one invocation.
    pub reuse: bool,
}

/// How the platform counts its instances against the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheduler {
    /// An instance counts from the moment its start is decided, under the
    /// same lock as the decision.
    Reserve,
    /// An instance counts once it is up, as when a scheduler counts the
    /// instances it can see running: the broken one. A burst sees room for
    /// every invocation while the first instances are still starting.
    CountRunning,
}

/// What one invocation got.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The function answered.
    Answered {
        /// From arrival at the platform to the answer.
        latency: Duration,
        /// The instance had served no invocation before this one.
        first_on_instance: bool,
        /// Time spent waiting for room under the limit, when it waited.
        queued: Option<Duration>,
    },
    /// Refused: the limit was reached.
    Refused,
    /// No answer, in words.
    Failed(String),
}

/// One cold start, in its parts.
#[derive(Debug, Clone, Copy)]
pub struct ColdStart {
    /// The engine's create and start of the container.
    pub engine: Duration,
    /// From the container's start to the function's first answer.
    pub init: Duration,
}

/// An instance that answers.
struct Warm {
    endpoint: Endpoint,
    last_used: Instant,
    /// Part of the provisioned pool: never stopped for idling.
    pooled: bool,
}

#[derive(Default)]
struct State {
    idle: Vec<Warm>,
    /// Instances counted against the limit.
    counted: usize,
    lifetimes: Vec<Lifetime>,
    cold_starts: Vec<ColdStart>,
    /// Instances stopped for idling.
    reaped: usize,
    errors: Vec<String>,
}

/// What the agent answers an invocation with.
#[derive(Deserialize)]
struct Answer {
    /// Invocations this instance has served, this one included.
    requests: u64,
}

/// The serverless platform of one scenario.
pub struct Platform {
    functions: Arc<dyn Functions>,
    settings: Settings,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Woken whenever an instance is freed or stopped.
    freed: Notify,
    timeline: Timeline,
}

/// How long an instance may take from its container's start to answering.
const INIT_DEADLINE: Duration = Duration::from_secs(30);
/// How often a starting instance is asked whether it answers.
const INIT_PROBE_EVERY: Duration = Duration::from_millis(5);
/// How often the reaper looks for instances idle too long.
const REAP_EVERY: Duration = Duration::from_millis(10);

/// What [`Platform::claim`] decided.
enum Claim {
    Warm(Warm),
    Start,
    Full,
}

impl Platform {
    /// A platform with no instance yet.
    pub fn new(
        functions: Arc<dyn Functions>,
        settings: Settings,
        timeline: Timeline,
    ) -> Result<Self, ExerciseError> {
        Ok(Platform {
            functions,
            settings,
            http: crate::client::http::client(Duration::from_secs(60))?,
            state: Mutex::default(),
            freed: Notify::new(),
            timeline,
        })
    }

    /// Starts the provisioned pool and sends each instance one warm-up
    /// invocation, as a platform runs the function's initialisation before
    /// it counts an instance as provisioned.
    pub async fn provision(&self) -> Result<(), ExerciseError> {
        for _ in 0..self.settings.pool {
            if self.settings.scheduler == Scheduler::Reserve {
                self.state.lock().expect("state").counted += 1;
            }
            let endpoint = self.cold_start().await?;
            self.get(&endpoint, 0).await?;
            self.release(Warm {
                endpoint,
                last_used: Instant::now(),
                pooled: true,
            })
            .await;
        }
        Ok(())
    }

    /// One invocation, from arrival to answer.
    pub async fn invoke(&self) -> Outcome {
        let arrived = Instant::now();
        let mut waiting_since = None;
        loop {
            // Listening before looking, so an instance freed in between
            // still wakes this invocation.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let warm = match self.claim() {
                Claim::Warm(warm) => warm,
                Claim::Start => match self.cold_start().await {
                    Ok(endpoint) => Warm {
                        endpoint,
                        last_used: Instant::now(),
                        pooled: false,
                    },
                    Err(e) => {
                        if self.settings.scheduler == Scheduler::Reserve {
                            self.state.lock().expect("state").counted -= 1;
                        }
                        return Outcome::Failed(e.0);
                    }
                },
                Claim::Full if !self.settings.queue => return Outcome::Refused,
                Claim::Full => {
                    waiting_since.get_or_insert_with(Instant::now);
                    freed.await;
                    continue;
                }
            };
            let queued = waiting_since.map(|since| since.elapsed());
            let answer = self.get(&warm.endpoint, self.settings.work_ms).await;
            let latency = arrived.elapsed();
            self.release(warm).await;
            return match answer {
                Ok(a) => Outcome::Answered {
                    latency,
                    first_on_instance: a.requests == 1,
                    queued,
                },
                Err(e) => Outcome::Failed(e.0),
            };
        }
    }

    /// Takes an idle instance, or decides to start one, or finds no room.
    fn claim(&self) -> Claim {
        let mut state = self.state.lock().expect("state");
        if let Some(warm) = state.idle.pop() {
            return Claim::Warm(warm);
        }
        if state.counted >= self.settings.max_instances {
            return Claim::Full;
        }
        if self.settings.scheduler == Scheduler::Reserve {
            state.counted += 1;
        }
        Claim::Start
    }

    /// Starts an instance and waits until it answers.
    async fn cold_start(&self) -> Result<Endpoint, ExerciseError> {
        let asked = Instant::now();
        let endpoint = self.functions.start(&self.settings.service).await?;
        let started = Instant::now();
        self.until_it_answers(&endpoint).await?;
        let init = started.elapsed();
        let mut state = self.state.lock().expect("state");
        if self.settings.scheduler == Scheduler::CountRunning {
            state.counted += 1;
        }
        state.cold_starts.push(ColdStart {
            engine: started - asked,
            init,
        });
        drop(state);
        self.timeline.record(
            "platform",
            format!(
                "started {} in {} ms",
                endpoint.service,
                asked.elapsed().as_millis()
            ),
        );
        Ok(endpoint)
    }

    /// Asks a starting instance for `/health` until it answers 200.
    async fn until_it_answers(&self, endpoint: &Endpoint) -> Result<(), ExerciseError> {
        let url = format!("{}/health", endpoint.url.trim_end_matches('/'));
        let until = Instant::now() + INIT_DEADLINE;
        loop {
            let probe = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(ExerciseError(format!(
                    "{} did not answer within {} s of its start",
                    endpoint.service,
                    INIT_DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(INIT_PROBE_EVERY).await;
        }
    }

    /// One invocation on an instance: the handler works `work_ms`.
    async fn get(&self, endpoint: &Endpoint, work_ms: u64) -> Result<Answer, ExerciseError> {
        let url = format!("{}/delay/{work_ms}", endpoint.url.trim_end_matches('/'));
        let what = format!("invoking {}", endpoint.service);
        self.http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .doing(&what)?
            .json::<Answer>()
            .await
            .doing(&what)
    }

    /// Gives an instance back after an invocation: idle again, or stopped
    /// when instances are not reused.
    async fn release(&self, mut warm: Warm) {
        if self.settings.reuse || warm.pooled {
            warm.last_used = Instant::now();
            self.state.lock().expect("state").idle.push(warm);
            self.freed.notify_waiters();
        } else {
            self.retire(warm, "after its invocation").await;
        }
    }

    /// Stops an instance and keeps the engine's record of its life.
    async fn retire(&self, warm: Warm, why: &str) {
        let stopped = self.functions.stop(&warm.endpoint).await;
        let mut state = self.state.lock().expect("state");
        state.counted -= 1;
        match stopped {
            Ok(lifetime) => state.lifetimes.push(lifetime),
            Err(e) => state.errors.push(e.0),
        }
        drop(state);
        self.freed.notify_waiters();
        self.timeline.record(
            "platform",
            format!("stopped {} {why}", warm.endpoint.service),
        );
    }

    /// Stops, until `stop` is told, every instance idle for longer than the
    /// keep-warm time, pool excepted.
    pub async fn reap(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(keep_warm) = self.settings.keep_warm else {
            return;
        };
        loop {
            let expired: Vec<Warm> = {
                let mut state = self.state.lock().expect("state");
                let (old, kept) = std::mem::take(&mut state.idle)
                    .into_iter()
                    .partition(|w: &Warm| !w.pooled && w.last_used.elapsed() >= keep_warm);
                state.idle = kept;
                state.reaped += old.len();
                old
            };
            for warm in expired {
                self.retire(warm, "after idling").await;
            }
            tokio::select! {
                _ = tokio::time::sleep(REAP_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Whether every instance the reaper would stop is stopped: only the
    /// pool is left (and instances kept warm forever, with no keep-warm time).
    pub fn settled(&self) -> bool {
        let state = self.state.lock().expect("state");
        self.settings.keep_warm.is_none() || state.counted <= self.settings.pool
    }

    /// Stops every instance left and returns what the platform recorded.
    pub async fn shut_down(&self) -> Record {
        let left = std::mem::take(&mut self.state.lock().expect("state").idle);
        for warm in left {
            self.retire(warm, "at the end").await;
        }
        let state = self.state.lock().expect("state");
        Record {
            lifetimes: state.lifetimes.clone(),
            cold_starts: state.cold_starts.clone(),
            reaped: state.reaped,
            errors: state.errors.clone(),
        }
    }
}

/// What the platform did, for the observations.
pub struct Record {
    /// Each instance's life, by the engine.
    pub lifetimes: Vec<Lifetime>,
    /// Each cold start, in its parts.
    pub cold_starts: Vec<ColdStart>,
    /// Instances stopped for idling.
    pub reaped: usize,
    /// Instances the engine could not stop, in words.
    pub errors: Vec<String>,
}
