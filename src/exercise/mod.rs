//! Exercises: the client code a lab runs against its services, one per file.
//!
//! An exercise declares its parameters (with defaults), the service kinds it
//! needs and the observations it produces, so a lab can be validated without
//! Docker. Running it returns observations measured on the real services and
//! records milestones in the scenario timeline.

pub mod ack_redelivery;
pub mod agent_record;
pub mod cache_eviction;
pub mod cache_patterns;
pub mod cap_partition;
pub mod capacity;
pub mod cluster_sharding;
pub mod columnar;
pub mod consistent_hashing;
pub mod documents;
pub mod etcd_consensus;
pub mod event_pipeline;
pub mod fanout;
pub mod functions;
pub mod graph_traversal;
pub mod grpc_rest;
pub mod http2_multiplexing;
pub mod https;
pub mod kafka_groups;
pub mod load_balancing;
pub mod mqtt_telemetry;
pub mod queue_vs_pubsub;
pub mod rate_limit;
pub mod redis_lock;
pub mod replica_reads;
pub mod sentinel_failover;
pub mod serverless;
pub mod service_chain;
pub mod sessions;
pub mod smoke;
pub mod sql_transfers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use crate::catalog::Endpoint;
use crate::challenge::Solution;
use crate::event::{Evidence, TimelineEvent};
pub use functions::Functions;

/// Observations an exercise returns: name → number, boolean, string or list.
pub type Observations = BTreeMap<String, Value>;

/// The type of a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamKind {
    /// Whole number within `min..=max`.
    Int { min: i64, max: i64 },
    /// Any finite number.
    Float,
    /// `true` / `false`.
    Bool,
    /// One of the listed words.
    Choice(&'static [&'static str]),
    /// Free text.
    Text,
}

/// A parameter an exercise accepts.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Name as written in `params:`.
    pub name: &'static str,
    /// Type and range.
    pub kind: ParamKind,
    /// Used when neither the lab nor the scenario sets it.
    pub default: Value,
    /// One line for `infralab show`.
    pub doc: &'static str,
}

impl ParamSpec {
    /// An integer parameter.
    pub fn int(name: &'static str, min: i64, max: i64, default: i64, doc: &'static str) -> Self {
        ParamSpec {
            name,
            kind: ParamKind::Int { min, max },
            default: Value::from(default),
            doc,
        }
    }

    /// A choice among words.
    pub fn choice(
        name: &'static str,
        options: &'static [&'static str],
        default: &'static str,
        doc: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            kind: ParamKind::Choice(options),
            default: Value::from(default),
            doc,
        }
    }

    /// A free-text parameter (a member name, say).
    pub fn text(name: &'static str, default: &'static str, doc: &'static str) -> Self {
        ParamSpec {
            name,
            kind: ParamKind::Text,
            default: Value::from(default),
            doc,
        }
    }

    /// A boolean parameter.
    pub fn flag(name: &'static str, default: bool, doc: &'static str) -> Self {
        ParamSpec {
            name,
            kind: ParamKind::Bool,
            default: Value::from(default),
            doc,
        }
    }

    /// Checks a value written in a lab; the error says what was expected.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        match (&self.kind, value) {
            (ParamKind::Int { min, max }, Value::Number(n)) if n.is_i64() => {
                let n = n.as_i64().unwrap_or_default();
                if (*min..=*max).contains(&n) {
                    Ok(())
                } else {
                    Err(format!(
                        "`{}` must be between {min} and {max}, found {n}",
                        self.name
                    ))
                }
            }
            (ParamKind::Int { .. }, v) => {
                Err(format!("`{}` expects a whole number, found {v}", self.name))
            }
            (ParamKind::Float, Value::Number(_)) => Ok(()),
            (ParamKind::Float, v) => Err(format!("`{}` expects a number, found {v}", self.name)),
            (ParamKind::Bool, Value::Bool(_)) => Ok(()),
            (ParamKind::Bool, v) => {
                Err(format!("`{}` expects true or false, found {v}", self.name))
            }
            (ParamKind::Choice(options), Value::String(s)) if options.contains(&s.as_str()) => {
                Ok(())
            }
            (ParamKind::Choice(options), v) => Err(format!(
                "`{}` expects one of {}, found {v}",
                self.name,
                options.join(", ")
            )),
            (ParamKind::Text, Value::String(_)) => Ok(()),
            (ParamKind::Text, v) => Err(format!("`{}` expects text, found {v}", self.name)),
        }
    }
}

/// What kind of value an observation is, so a predicate that cannot fit it
/// (`> 0` on a text, `=== 400` anywhere) is refused before anything starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObsKind {
    /// A count, ratio or duration.
    Number,
    /// `true` / `false`.
    Bool,
    /// A word or short text.
    Text,
    /// A list of numbers (per consumer, per node …).
    List,
}

impl ObsKind {
    /// "a number", "true or false", … for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ObsKind::Number => "a number",
            ObsKind::Bool => "true or false",
            ObsKind::Text => "a text",
            ObsKind::List => "a list",
        }
    }

    /// Whether a JSON value is of this kind.
    pub fn fits(self, v: &Value) -> bool {
        match self {
            ObsKind::Number => v.is_number(),
            ObsKind::Bool => v.is_boolean(),
            ObsKind::Text => v.is_string(),
            ObsKind::List => v.is_array(),
        }
    }

    /// The name `infralab show` prints.
    pub fn name(self) -> &'static str {
        match self {
            ObsKind::Number => "number",
            ObsKind::Bool => "boolean",
            ObsKind::Text => "text",
            ObsKind::List => "list",
        }
    }
}

/// An observation an exercise produces.
#[derive(Debug, Clone)]
pub struct ObsSpec {
    /// Name used in `expect:`.
    pub name: &'static str,
    /// Its type.
    pub kind: ObsKind,
    /// One line for `infralab show` and the README.
    pub doc: &'static str,
}

impl ObsSpec {
    /// A number observation.
    pub const fn number(name: &'static str, doc: &'static str) -> Self {
        ObsSpec {
            name,
            kind: ObsKind::Number,
            doc,
        }
    }

    /// A boolean observation.
    pub const fn flag(name: &'static str, doc: &'static str) -> Self {
        ObsSpec {
            name,
            kind: ObsKind::Bool,
            doc,
        }
    }

    /// A text observation.
    pub const fn text(name: &'static str, doc: &'static str) -> Self {
        ObsSpec {
            name,
            kind: ObsKind::Text,
            doc,
        }
    }

    /// A list observation.
    pub const fn list(name: &'static str, doc: &'static str) -> Self {
        ObsSpec {
            name,
            kind: ObsKind::List,
            doc,
        }
    }
}

/// A milestone an exercise records in the timeline; faults can fire
/// `after:` it, so a lab may name only declared ones.
#[derive(Debug, Clone, Copy)]
pub struct Milestone {
    /// Name as written in `after:`.
    pub name: &'static str,
    /// When it is recorded, for `infralab show`.
    pub doc: &'static str,
    /// Reached by one instance of the learner's program, which a fault can
    /// then name as `solution-at-mark`.
    pub by_instance: bool,
}

impl Milestone {
    /// A milestone.
    pub const fn new(name: &'static str, doc: &'static str) -> Self {
        Milestone {
            name,
            doc,
            by_instance: false,
        }
    }

    /// A milestone reached by one instance of the learner's program.
    pub const fn by_instance(name: &'static str, doc: &'static str) -> Self {
        Milestone {
            name,
            doc,
            by_instance: true,
        }
    }
}

/// What an exercise gets to work with.
pub struct Ctx {
    /// Effective parameters: defaults, then the lab's, then the scenario's.
    pub params: BTreeMap<String, Value>,
    /// Started services by name (replicas appear as `NAME-1`, `NAME-2`, …).
    pub services: BTreeMap<String, Endpoint>,
    /// Unique per run and scenario: prefix keys, queues and topics with it so
    /// scenarios and concurrent runs never see each other's data.
    pub namespace: String,
    timeline: Timeline,
    solution: Option<Arc<Solution>>,
    functions: Option<Arc<dyn Functions>>,
    evidence: Arc<Mutex<Vec<Evidence>>>,
}

/// Shared, timestamped event log of a scenario (exercise milestones and faults).
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    events: Arc<Mutex<Vec<TimelineEvent>>>,
    marks: tokio::sync::watch::Sender<Vec<String>>,
    /// The instance of the learner's program that reached a milestone.
    reached_by: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            start: Instant::now(),
            events: Arc::default(),
            marks: tokio::sync::watch::channel(Vec::new()).0,
            reached_by: Arc::default(),
        }
    }
}

impl Timeline {
    /// Records an event now.
    pub fn record(&self, source: &str, what: impl Into<String>) {
        let at_ms = self.start.elapsed().as_millis() as u64;
        let what = what.into();
        self.events
            .lock()
            .expect("timeline lock")
            .push(TimelineEvent {
                at_ms,
                source: source.to_string(),
                what: what.clone(),
            });
        self.marks.send_modify(|m| m.push(what));
    }

    /// Records a milestone that instance `instance` of the learner's program
    /// reached (before the mark, so a fault waiting for it finds who).
    pub fn record_by(&self, source: &str, what: impl Into<String>, instance: u32) {
        let what = what.into();
        self.reached_by
            .lock()
            .expect("timeline lock")
            .insert(what.clone(), instance);
        self.record(source, what);
    }

    /// The instance that reached milestone `mark`, when one did.
    pub fn reached_by(&self, mark: &str) -> Option<u32> {
        self.reached_by
            .lock()
            .expect("timeline lock")
            .get(mark)
            .copied()
    }

    /// Waits until an event named `mark` was recorded.
    pub async fn wait_for(&self, mark: &str) {
        let mut rx = self.marks.subscribe();
        let _ = rx.wait_for(|m| m.iter().any(|x| x == mark)).await;
    }

    /// Time since the scenario started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The wall-clock time the scenario started (services log wall time).
    pub fn started_at(&self) -> std::time::SystemTime {
        std::time::SystemTime::now() - self.start.elapsed()
    }

    /// All events so far.
    pub fn events(&self) -> Vec<TimelineEvent> {
        self.events.lock().expect("timeline lock").clone()
    }
}

impl Ctx {
    /// A context for one scenario.
    pub fn new(
        params: BTreeMap<String, Value>,
        services: BTreeMap<String, Endpoint>,
        namespace: String,
        timeline: Timeline,
    ) -> Self {
        Ctx {
            params,
            services,
            namespace,
            timeline,
            solution: None,
            functions: None,
            evidence: Arc::default(),
        }
    }

    /// The context of a challenge scenario: the exercise is the harness of
    /// the learner's program.
    pub fn with_solution(mut self, solution: Arc<Solution>) -> Self {
        self.solution = Some(solution);
        self
    }

    /// The context of a scenario whose exercise may start instances of the
    /// lab's services while it runs.
    pub fn with_functions(mut self, functions: Arc<dyn Functions>) -> Self {
        self.functions = Some(functions);
        self
    }

    /// Starts and stops instances of the lab's services on demand.
    pub fn functions(&self) -> Result<&Arc<dyn Functions>, ExerciseError> {
        self.functions
            .as_ref()
            .ok_or_else(|| ExerciseError("this run cannot start instances on demand".into()))
    }

    /// The learner's program, in a challenge scenario: the harness starts
    /// it, waits for it and measures what it did.
    pub fn solution(&self) -> Option<&Arc<Solution>> {
        self.solution.as_ref()
    }

    /// Records an offending operation behind `observation`, in words; shown
    /// when that observation's expectation fails.
    pub fn evidence(&self, observation: &str, what: impl Into<String>) {
        self.evidence.lock().expect("evidence lock").push(Evidence {
            observation: observation.to_string(),
            what: what.into(),
        });
    }

    /// Everything recorded with [`Ctx::evidence`].
    pub fn take_evidence(&self) -> Vec<Evidence> {
        std::mem::take(&mut *self.evidence.lock().expect("evidence lock"))
    }

    /// An integer parameter (validated before the run).
    pub fn int(&self, name: &str) -> i64 {
        self.params
            .get(name)
            .and_then(Value::as_i64)
            .unwrap_or_default()
    }

    /// A number parameter.
    pub fn float(&self, name: &str) -> f64 {
        self.params
            .get(name)
            .and_then(Value::as_f64)
            .unwrap_or_default()
    }

    /// A boolean parameter.
    pub fn flag(&self, name: &str) -> bool {
        self.params
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or_default()
    }

    /// A text or choice parameter.
    pub fn text(&self, name: &str) -> &str {
        self.params
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The first service of a kind (validation guarantees one exists).
    pub fn service(&self, kind: &str) -> Result<&Endpoint, ExerciseError> {
        self.services
            .values()
            .find(|e| e.kind == kind)
            .ok_or_else(|| ExerciseError(format!("the lab has no `{kind}` service")))
    }

    /// The instances of the lab's service `name` of kind `kind`: the service
    /// itself, or its replicas `NAME-1` … in order. Errors name `param`, the
    /// parameter that chose the service.
    pub fn instances(
        &self,
        name: &str,
        kind: &str,
        param: &str,
    ) -> Result<Vec<&Endpoint>, ExerciseError> {
        let found: Vec<&Endpoint> = self
            .services
            .iter()
            .filter(|(instance, e)| e.kind == kind && is_instance_of(instance, name))
            .map(|(_, e)| e)
            .collect();
        if found.is_empty() {
            return Err(ExerciseError(format!(
                "`{param}`: the lab has no {kind} service `{name}`"
            )));
        }
        Ok(found)
    }

    /// Records a milestone; faults declared `after: NAME` fire on it.
    pub fn mark(&self, what: impl Into<String>) {
        self.timeline.record("exercise", what);
    }

    /// Records a milestone that one instance of the learner's program
    /// reached; a fault on `solution-at-mark` after it reaches that instance.
    pub fn mark_by(&self, what: impl Into<String>, instance: u32) {
        self.timeline.record_by("exercise", what, instance);
    }

    /// The scenario's timeline, for tasks that outlive a borrow of the context
    /// and still record milestones.
    pub fn timeline(&self) -> Timeline {
        self.timeline.clone()
    }
}

/// Why an exercise could not produce its observations (the verdict is Unknown).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExerciseError(pub String);

/// Turns any displayable error into an [`ExerciseError`] with context.
pub trait Context<T> {
    /// Adds what was being done.
    fn doing(self, what: &str) -> Result<T, ExerciseError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn doing(self, what: &str) -> Result<T, ExerciseError> {
        self.map_err(|e| ExerciseError(format!("{what}: {e}")))
    }
}

/// One exercise.
#[async_trait]
pub trait Exercise: Send + Sync {
    /// Name as written in labs (`exercise: redis-lock`).
    fn name(&self) -> &'static str;
    /// One line for `infralab show`.
    fn summary(&self) -> &'static str;
    /// Service kinds the lab must provide.
    fn needs(&self) -> &'static [&'static str];
    /// Accepted parameters with defaults.
    fn params(&self) -> Vec<ParamSpec>;
    /// Observations it produces.
    fn observations(&self) -> &'static [ObsSpec];
    /// Milestones it records, which faults may wait for (`after:`).
    fn milestones(&self) -> &'static [Milestone] {
        const { &[] }
    }
    /// Variables the exercise adds to the learner's environment when it is
    /// a challenge's harness (its own endpoints), with their meaning.
    fn harness_env(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// Runs once against the started services.
    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError>;
}

/// Whether `instance` is the service `name` itself or one of its replicas
/// (`NAME-3`).
fn is_instance_of(instance: &str, name: &str) -> bool {
    instance == name
        || instance
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// The only list of exercises.
pub static EXERCISES: &[&dyn Exercise] = &[
    &redis_lock::RedisLock,
    &queue_vs_pubsub::QueueVsPubsub,
    &ack_redelivery::AckRedelivery,
    &https::Https,
    &http2_multiplexing::Http2Multiplexing,
    &mqtt_telemetry::MqttTelemetry,
    &kafka_groups::KafkaGroups,
    &event_pipeline::EventPipeline,
    &rate_limit::RateLimit,
    &consistent_hashing::ConsistentHashing,
    &load_balancing::LoadBalancing,
    &capacity::Capacity,
    &replica_reads::ReplicaReads,
    &cap_partition::CapPartition,
    &sentinel_failover::SentinelFailover,
    &cluster_sharding::ClusterSharding,
    &service_chain::ServiceChain,
    &serverless::Serverless,
    &sessions::SessionsExercise,
    &fanout::Fanout,
    &columnar::Columnar,
    &graph_traversal::GraphTraversal,
    &documents::Documents,
    &grpc_rest::GrpcRest,
    &sql_transfers::SqlTransfers,
    &etcd_consensus::EtcdConsensus,
    &cache_patterns::CachePatterns,
    &cache_eviction::CacheEviction,
    &smoke::Smoke,
];

/// Looks an exercise up by name.
pub fn exercise(name: &str) -> Option<&'static dyn Exercise> {
    EXERCISES.iter().copied().find(|e| e.name() == name)
}

/// Drops observations without a value (null: no samples) and lists the ones
/// an exercise got wrong (undeclared, or not of their declared kind) and the
/// milestones it recorded without declaring them: bugs in the exercise, which
/// make the scenario Unknown rather than letting a check pass on them.
pub fn tidy(
    exercise: &dyn Exercise,
    mut obs: Observations,
    marks: &[String],
) -> (Observations, Vec<String>) {
    obs.retain(|_, v| !v.is_null());
    let mut problems = Vec::new();
    for (name, value) in &obs {
        match exercise.observations().iter().find(|o| o.name == name) {
            None => problems.push(format!(
                "exercise `{}` produced the undeclared observation `{name}`",
                exercise.name()
            )),
            Some(spec) if !spec.kind.fits(value) => problems.push(format!(
                "exercise `{}` produced `{name}` = {value}, declared as {}",
                exercise.name(),
                spec.kind.describe()
            )),
            Some(_) => {}
        }
    }
    for mark in marks {
        if !exercise.milestones().iter().any(|m| m.name == mark) {
            problems.push(format!(
                "exercise `{}` recorded the undeclared milestone `{mark}`",
                exercise.name()
            ));
        }
    }
    (obs, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_belong_to_their_service_only() {
        assert!(is_instance_of("small", "small"));
        assert!(is_instance_of("small-3", "small"));
        assert!(!is_instance_of("small-x", "small"));
        assert!(!is_instance_of("smaller-1", "small"));
        assert!(!is_instance_of("big", "small"));
    }

    #[test]
    fn no_number_observation_shares_a_name_with_a_number_parameter() {
        // An expression names either; one name for both would be ambiguous.
        for e in EXERCISES {
            let params: Vec<&str> = e
                .params()
                .iter()
                .filter(|p| matches!(p.kind, ParamKind::Int { .. } | ParamKind::Float))
                .map(|p| p.name)
                .collect();
            for o in e
                .observations()
                .iter()
                .filter(|o| o.kind == ObsKind::Number)
            {
                assert!(
                    !params.contains(&o.name),
                    "exercise `{}`: `{}` is a parameter and an observation",
                    e.name(),
                    o.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique_and_milestones_declared_once() {
        for e in EXERCISES {
            let mut seen = std::collections::BTreeSet::new();
            for name in e.observations().iter().map(|o| o.name) {
                assert!(seen.insert(name), "{}: observation {name} twice", e.name());
            }
            let mut seen = std::collections::BTreeSet::new();
            for m in e.milestones() {
                assert!(
                    seen.insert(m.name),
                    "{}: milestone {} twice",
                    e.name(),
                    m.name
                );
            }
        }
    }
}
