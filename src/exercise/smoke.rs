//! `smoke`: one real round trip per service kind the lab has, all at once.
//!
//! The exercise names no kind: every kind of the catalog declares its round
//! trip ([`ServiceKind::round_trip`], written in its protocol's client module:
//! one write read back with the kind's ordinary client library, the way a
//! learner's first program would). The exercise runs one per observation
//! prefix the lab has, on the first service of the first kind in catalog
//! order with that prefix: nginx and the agent share `http`, so it is the
//! GET through Nginx, or to the agent directly when there is no Nginx. The
//! observations and parameters it declares are the round trips' own, so a
//! kind added to the catalog is checked, shown and validated with no line
//! written here.
//!
//! A failed round trip is an observation like a successful one: `PREFIX_ok`
//! is false and `PREFIX_error` holds the cause in the server's or client's
//! own words (`password authentication failed for user "lab"`), so the lab's
//! `PREFIX_ok: true` FAILs and the report says why; the other kinds are still
//! measured. Every client first connects and sets up (table, queue, topic,
//! subscription); then all clocks start together at a [`Gate`], and a round
//! trip is timed from the write to the value read back (for HTTP: the GET,
//! its TCP connection included).
//!
//! [`ServiceKind::round_trip`]: crate::catalog::ServiceKind::round_trip

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde_json::Value;

use super::{Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::catalog::{Endpoint, KINDS, RoundTrip};
use crate::client::round_trip::{Gate, Trip, TripInput};
use crate::stats::round2;

/// The `smoke` exercise.
pub struct Smoke;

/// How long one round trip may take, setup included.
const DEADLINE: Duration = Duration::from_secs(30);

/// A round trip running as its own task, tagged with its observation prefix.
type TripTask = tokio::task::JoinHandle<(&'static str, Result<Trip, String>)>;

#[async_trait]
impl Exercise for Smoke {
    fn name(&self) -> &'static str {
        "smoke"
    }

    fn summary(&self) -> &'static str {
        "one real client round trip (write, read back) per service kind in the lab, all at once"
    }

    fn needs(&self) -> &'static [&'static str] {
        // Adapts to whatever the lab has.
        &[]
    }

    fn params(&self) -> Vec<ParamSpec> {
        round_trips()
            .into_iter()
            .flat_map(|trip| (trip.params)())
            .collect()
    }

    fn observations(&self) -> &'static [ObsSpec] {
        static DECLARED: OnceLock<Vec<ObsSpec>> = OnceLock::new();
        DECLARED.get_or_init(declared)
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("round-trips-started", "every round trip begins"),
                Milestone::new("round-trips-finished", "every round trip has ended"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let picked = pick(&ctx.services);
        let gate = Gate::new(picked.len());
        // Each on its own task, so one client's blocking work (a SCRAM password
        // hash, librdkafka's setup) does not stall the others.
        let trips: Vec<TripTask> = picked
            .into_iter()
            .map(|(trip, endpoint)| {
                let input = TripInput {
                    endpoint: endpoint.clone(),
                    namespace: ctx.namespace.clone(),
                    params: ctx.params.clone(),
                    gate: gate.ticket(),
                };
                timed(trip.prefix, (trip.start)(input))
            })
            .collect();
        let checked = trips.len();
        ctx.mark("round-trips-started");
        let mut results = Vec::new();
        for joined in join_all(trips).await {
            let joined = joined.map_err(|e| ExerciseError(format!("a round trip panicked: {e}")));
            results.push(joined?);
        }
        ctx.mark("round-trips-finished");

        Ok(observe(results, checked))
    }
}

/// Every round trip of the catalog, one per prefix, in catalog order (kinds
/// sharing a prefix share the round trip).
fn round_trips() -> Vec<&'static RoundTrip> {
    let mut trips: Vec<&'static RoundTrip> = Vec::new();
    for trip in KINDS.iter().filter_map(|k| k.round_trip()) {
        if !trips.iter().any(|t| t.prefix == trip.prefix) {
            trips.push(trip);
        }
    }
    trips
}

/// The round trips to make: per prefix, the first kind in catalog order that
/// the lab has (nginx, or the agent without nginx), on its first service.
fn pick(services: &BTreeMap<String, Endpoint>) -> Vec<(&'static RoundTrip, &Endpoint)> {
    let mut picked: Vec<(&'static RoundTrip, &Endpoint)> = Vec::new();
    for kind in KINDS {
        let Some(trip) = kind.round_trip() else {
            continue;
        };
        if picked.iter().any(|(t, _)| t.prefix == trip.prefix) {
            continue;
        }
        if let Some(endpoint) = services.values().find(|e| e.kind == kind.name()) {
            picked.push((trip, endpoint));
        }
    }
    picked
}

/// The observations of every round trip (`PREFIX_ok`, `PREFIX_ms`,
/// `PREFIX_error` and its extras), then the totals. Built once per process;
/// the names live as long as it does.
fn declared() -> Vec<ObsSpec> {
    let mut specs = Vec::new();
    for trip in round_trips() {
        let name = |suffix: &str| -> &'static str {
            Box::leak(format!("{}_{suffix}", trip.prefix).into_boxed_str())
        };
        specs.push(ObsSpec::flag(name("ok"), trip.ok));
        specs.push(ObsSpec::number(name("ms"), trip.ms));
        specs.push(ObsSpec::text(name("error"), trip.error));
        specs.extend_from_slice(trip.extra);
    }
    specs.push(ObsSpec::number(
        "services_checked",
        "round trips attempted (one per prefix: kinds that share one, like nginx and the agent, count once)",
    ));
    specs.push(ObsSpec::number(
        "services_ok",
        "round trips that read back what they wrote",
    ));
    specs
}

/// Every round trip's outcome as observations: a failed one is `PREFIX_ok:
/// false` with its cause in `PREFIX_error`, so the check on it FAILs with the
/// reason beside it instead of the whole scenario being Unknown.
fn observe(results: Vec<(&'static str, Result<Trip, String>)>, checked: usize) -> Observations {
    let mut obs = Observations::new();
    let mut ok = 0;
    for (prefix, result) in results {
        obs.insert(format!("{prefix}_ok"), Value::Bool(result.is_ok()));
        match result {
            Ok(trip) => {
                ok += 1;
                obs.insert(
                    format!("{prefix}_ms"),
                    Value::from(round2(trip.elapsed.as_secs_f64() * 1000.0)),
                );
                obs.extend(trip.extra);
            }
            Err(why) => {
                obs.insert(format!("{prefix}_error"), Value::from(why));
            }
        }
    }
    obs.insert("services_checked".into(), Value::from(checked));
    obs.insert("services_ok".into(), Value::from(ok));
    obs
}

/// Starts a round trip bounded by [`DEADLINE`] on a task of its own.
fn timed(
    prefix: &'static str,
    trip: impl Future<Output = Result<Trip, String>> + Send + 'static,
) -> TripTask {
    tokio::spawn(async move {
        let result = tokio::time::timeout(DEADLINE, trip)
            .await
            .unwrap_or_else(|_| Err(format!("no round trip within {} s", DEADLINE.as_secs())));
        (prefix, result)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::exercise::ObsKind;

    fn endpoint(service: &str, kind: &str) -> Endpoint {
        Endpoint {
            service: service.into(),
            kind: kind.into(),
            host: "127.0.0.1".into(),
            ports: BTreeMap::new(),
            env: BTreeMap::new(),
            url: format!("{kind}://{service}"),
            container: service.into(),
        }
    }

    fn lab(services: &[(&str, &str)]) -> BTreeMap<String, Endpoint> {
        services
            .iter()
            .map(|(service, kind)| (service.to_string(), endpoint(service, kind)))
            .collect()
    }

    fn picked(services: &BTreeMap<String, Endpoint>) -> Vec<(&'static str, String)> {
        pick(services)
            .into_iter()
            .map(|(trip, e)| (trip.prefix, e.service.clone()))
            .collect()
    }

    #[test]
    fn declares_no_needs_and_a_text_password_param() {
        assert!(Smoke.needs().is_empty());
        let p = Smoke.params();
        assert_eq!(p[0].name, "postgres_password");
        assert!(p[0].check(&Value::from("wrong")).is_ok());
        assert!(p[0].check(&Value::from(3)).is_err());
    }

    #[test]
    fn derived_observation_and_parameter_names_are_unique() {
        let mut seen = BTreeSet::new();
        for o in Smoke.observations() {
            assert!(seen.insert(o.name), "observation {} twice", o.name);
        }
        let mut seen = BTreeSet::new();
        for p in Smoke.params() {
            assert!(seen.insert(p.name), "parameter {} twice", p.name);
        }
    }

    #[test]
    fn every_kind_with_a_round_trip_has_its_observations_declared() {
        let declared = |name: String| {
            Smoke
                .observations()
                .iter()
                .find(|o| o.name == name)
                .map(|o| o.kind)
                .unwrap_or_else(|| panic!("{name} is not declared"))
        };
        for trip in KINDS.iter().filter_map(|k| k.round_trip()) {
            let p = trip.prefix;
            assert_eq!(declared(format!("{p}_ok")), ObsKind::Bool);
            assert_eq!(declared(format!("{p}_ms")), ObsKind::Number);
            assert_eq!(declared(format!("{p}_error")), ObsKind::Text);
            for extra in trip.extra {
                assert_eq!(declared(extra.name.to_string()), extra.kind);
            }
        }
        // The names labs use today.
        for name in [
            "redis_ok",
            "postgres_ok",
            "rabbitmq_ok",
            "kafka_ok",
            "mqtt_ok",
        ] {
            declared(name.to_string());
        }
        assert_eq!(declared("http_instance".into()), ObsKind::Text);
        assert_eq!(declared("services_ok".into()), ObsKind::Number);
    }

    #[test]
    fn one_round_trip_per_prefix_on_the_first_service_of_the_first_kind() {
        // nginx before the agent; services by name within a kind.
        let all = lab(&[
            ("cache-b", "redis"),
            ("cache-a", "redis"),
            ("app", "agent"),
            ("web", "nginx"),
            ("broker", "mosquitto"),
        ]);
        assert_eq!(
            picked(&all),
            vec![
                ("redis", "cache-a".to_string()),
                ("mqtt", "broker".to_string()),
                ("http", "web".to_string()),
            ]
        );
        // Without nginx, the agent directly.
        let agent_only = lab(&[("app", "agent"), ("db", "postgres")]);
        assert_eq!(
            picked(&agent_only),
            vec![("postgres", "db".to_string()), ("http", "app".to_string())]
        );
        assert!(picked(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_failed_round_trip_is_false_with_its_cause_and_the_others_still_count() {
        let obs = observe(
            vec![
                ("redis", Trip::read_back(Duration::from_millis(2), "v", "v")),
                (
                    "postgres",
                    Err("password authentication failed for user \"lab\"".into()),
                ),
            ],
            2,
        );
        assert_eq!(obs["redis_ok"], true);
        assert_eq!(obs["redis_ms"], 2.0);
        assert!(!obs.contains_key("redis_error"));
        assert_eq!(obs["postgres_ok"], false);
        assert_eq!(
            obs["postgres_error"],
            "password authentication failed for user \"lab\""
        );
        assert!(!obs.contains_key("postgres_ms"));
        assert_eq!(obs["services_checked"], 2);
        assert_eq!(obs["services_ok"], 1);
    }

    #[test]
    fn a_round_trips_extra_observations_are_reported() {
        let mut trip = Trip::read_back(Duration::from_millis(1), "v", "v").unwrap();
        trip.extra
            .insert("http_instance".into(), Value::from("agent-2"));
        let obs = observe(vec![("http", Ok(trip))], 1);
        assert_eq!(obs["http_instance"], "agent-2");
        assert_eq!(obs["services_ok"], 1);
    }
}
