//! Turns a [`RawLab`] into a [`Lab`]: every check that can be made without
//! Docker, each problem reported with its file:line:column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use super::raw::{RawFault, RawLab, RawScenario, RawService};
use super::{
    Challenge, Fault, FaultAction, Lab, LabError, LabErrors, Limits, Scenario, ServicePlan, When,
    challenge, duration, size,
};
use crate::check::Predicate;
use crate::exercise::{self, Exercise, ObsKind};
use crate::{catalog, sections};

struct Validator<'a> {
    path: &'a Path,
    source: &'a str,
    errors: Vec<LabError>,
}

impl Validator<'_> {
    fn error(&mut self, loc: Location, message: impl Into<String>) {
        self.errors
            .push(LabError::at(self.path, self.source, loc, message));
    }
}

/// Parses and validates a lab file's text.
pub fn validate(path: &Path, source: &str) -> Result<Lab, LabErrors> {
    let raw: RawLab = serde_saphyr::from_str(source)
        .map_err(|e| LabErrors(vec![parse_error(path, source, &e)]))?;
    let mut v = Validator {
        path,
        source,
        errors: Vec::new(),
    };

    let name = &raw.name.value;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        v.error(
            raw.name.referenced,
            format!("lab name `{name}` must be lower-case letters, digits and dashes"),
        );
    }
    if sections::find(&raw.section.value).is_none() {
        let known: Vec<&str> = sections::SECTIONS.iter().map(|s| s.0).collect();
        v.error(
            raw.section.referenced,
            format!(
                "unknown section `{}`; expected one of: {}",
                raw.section.value,
                known.join(", ")
            ),
        );
    }

    let services = validate_services(&mut v, &raw);
    let service_names: BTreeSet<String> = services
        .iter()
        .flat_map(|s| std::iter::once(s.name.clone()).chain(s.instances()))
        .collect();

    let exercise = exercise::exercise(&raw.exercise.value);
    let Some(exercise) = exercise else {
        let known: Vec<&str> = exercise::EXERCISES.iter().map(|e| e.name()).collect();
        v.error(
            raw.exercise.referenced,
            format!(
                "unknown exercise `{}`; expected one of: {}",
                raw.exercise.value,
                known.join(", ")
            ),
        );
        return Err(LabErrors(v.errors));
    };
    for need in exercise.needs() {
        if !services.iter().any(|s| s.kind == *need) {
            v.error(
                raw.services.referenced,
                format!(
                    "exercise `{}` needs a service of kind `{need}`, and this lab has none",
                    exercise.name()
                ),
            );
        }
    }

    let mut base = BTreeMap::new();
    for spec in exercise.params() {
        base.insert(spec.name.to_string(), spec.default.clone());
    }
    check_params(&mut v, exercise, &raw.params, &mut base);

    let challenge = raw.challenge.as_ref().map(|c| {
        let (challenge, problems) = challenge::validate(c, exercise);
        for (loc, message) in problems {
            v.error(loc, message);
        }
        challenge
    });

    if raw.scenarios.value.is_empty() {
        v.error(
            raw.scenarios.referenced,
            "a lab needs at least one scenario",
        );
    }
    let mut seen = BTreeSet::new();
    let mut scenarios = Vec::new();
    for s in &raw.scenarios.value {
        if !seen.insert(s.value.name.value.clone()) {
            v.error(
                s.value.name.referenced,
                format!("scenario `{}` is defined twice", s.value.name.value),
            );
        }
        scenarios.push(validate_scenario(
            &mut v,
            exercise,
            &s.value,
            &base,
            (&service_names, challenge.as_ref()),
        ));
    }
    if let (Some(c), Some(raw_c)) = (&challenge, &raw.challenge) {
        if !scenarios.iter().any(|s| s.challenge) {
            v.error(
                raw_c.referenced,
                "a challenge needs at least one scenario marked `challenge: true`",
            );
        }
        for solution in &c.solutions {
            if let super::SolutionExpect::Fail { must: names, .. } = &solution.expect {
                for name in names {
                    let checked = scenarios
                        .iter()
                        .filter(|s| s.challenge)
                        .any(|s| s.expect.contains_key(name));
                    if !checked {
                        v.error(
                            raw_c.referenced,
                            format!(
                                "solution `{}` must fail `{name}`, which no challenge scenario expects anything of",
                                solution.name
                            ),
                        );
                    }
                }
            }
        }
    }

    if !v.errors.is_empty() {
        return Err(LabErrors(v.errors));
    }
    Ok(Lab {
        file: path.to_path_buf(),
        name: raw.name.value,
        title: raw.title,
        section: raw.section.value,
        summary: raw.summary,
        question: raw.question,
        answer: raw.answer,
        briefing: raw.briefing,
        services,
        exercise,
        scenarios,
        challenge,
    })
}

fn parse_error(path: &Path, source: &str, e: &serde_saphyr::Error) -> LabError {
    let message = first_line(&e.to_string());
    match e.location() {
        Some(loc) => LabError::at(path, source, loc, message),
        None => LabError::file(path, message),
    }
}

/// serde-saphyr's message without its own location suffix and snippet, which
/// [`LabError`] renders itself.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let line = match line.split_once(": ") {
        Some((at, rest)) if at.starts_with("line ") && at.contains(" column ") => rest,
        _ => line,
    };
    match line.rfind(" at line ") {
        Some(i) => line[..i].to_string(),
        None => line.to_string(),
    }
}

fn validate_services(v: &mut Validator, raw: &RawLab) -> Vec<ServicePlan> {
    if raw.services.value.is_empty() {
        v.error(raw.services.referenced, "a lab needs at least one service");
    }
    let lab_dir = v.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut plans = Vec::new();
    for (name, service) in &raw.services.value {
        let RawService {
            kind,
            image,
            env,
            command,
            replicas,
            ready_timeout,
            files,
            cpus,
            memory,
        } = &service.value;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            v.error(
                service.referenced,
                format!("service name `{name}` must be letters, digits and dashes"),
            );
        }
        if catalog::kind(&kind.value).is_none() {
            v.error(
                kind.referenced,
                format!(
                    "unknown service kind `{}`; expected one of: {}",
                    kind.value,
                    catalog::kind_names().join(", ")
                ),
            );
            continue;
        }
        let spec = catalog::spec(&kind.value);
        let replicas_n = replicas.as_ref().map(|r| r.value).unwrap_or(1);
        if let Some(r) = replicas
            && !(1..=16).contains(&r.value)
        {
            v.error(
                r.referenced,
                format!("replicas must be between 1 and 16, found {}", r.value),
            );
        }
        let timeout = match ready_timeout {
            Some(t) => duration::parse(&t.value).unwrap_or_else(|e| {
                v.error(t.referenced, e);
                spec.ready_timeout
            }),
            None => spec.ready_timeout,
        };
        if let Some(image) = image
            && image.value.trim().is_empty()
        {
            v.error(image.referenced, "image must not be empty");
        }
        let limits = limits(v, cpus.as_ref(), memory.as_ref());
        let nodes_at = replicas
            .as_ref()
            .map_or(service.referenced, |r| r.referenced);
        topology(
            v,
            raw,
            &kind.value,
            env,
            (replicas_n, nodes_at),
            service.referenced,
        );
        let mut mounts = BTreeMap::new();
        for (target, source) in files {
            let rel = Path::new(&source.value);
            let escapes =
                rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir));
            if escapes {
                v.error(
                    source.referenced,
                    format!("`{}` must be a path inside the lab's folder", source.value),
                );
            } else if !lab_dir.join(rel).is_file() {
                v.error(
                    source.referenced,
                    format!("`{}` does not exist next to the lab file", source.value),
                );
            } else if !target.starts_with('/') {
                v.error(
                    source.referenced,
                    format!("mount target `{target}` must be an absolute path"),
                );
            } else {
                mounts.insert(target.clone(), lab_dir.join(rel));
            }
        }
        plans.push(ServicePlan {
            name: name.clone(),
            kind: kind.value.clone(),
            image: image.as_ref().map(|i| i.value.clone()),
            env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            command: command.clone(),
            replicas: replicas_n,
            ready_timeout: timeout,
            files: mounts,
            limits,
        });
    }
    plans
}

/// The environment that ties Redis services together or shapes a cluster:
/// `REDIS_REPLICA_OF` and a Sentinel's `SENTINEL_MONITOR` name a redis
/// service of the lab; a Redis Cluster's nodes split into primaries with
/// `CLUSTER_REPLICAS` replicas each.
fn topology(
    v: &mut Validator,
    raw: &RawLab,
    kind: &str,
    env: &indexmap::IndexMap<String, String>,
    (nodes, nodes_at): (u32, Location),
    at: Location,
) {
    let is_redis = |name: &str| {
        raw.services
            .value
            .get(name)
            .is_some_and(|s| s.value.kind.value == "redis")
    };
    let named = match kind {
        "redis" => env.get(catalog::redis::REPLICA_OF).map(|p| {
            let host = p.split_once(':').map_or(p.as_str(), |(h, _)| h);
            (catalog::redis::REPLICA_OF, host.to_string())
        }),
        "redis-sentinel" => Some((
            catalog::sentinel::MONITOR,
            env.get(catalog::sentinel::MONITOR)
                .or_else(|| catalog::spec(kind).env.get(catalog::sentinel::MONITOR))
                .cloned()
                .unwrap_or_default(),
        )),
        _ => None,
    };
    if let Some((var, target)) = named
        && !is_redis(&target)
    {
        v.error(
            at,
            format!("{var} names `{target}`, which is no redis service of the lab"),
        );
    }
    if kind == "redis-cluster" {
        let var = catalog::redis_cluster::REPLICAS;
        let per_primary = env
            .get(var)
            .or_else(|| catalog::spec(kind).env.get(var))
            .map(|r| r.trim().parse::<u32>());
        match per_primary {
            Some(Ok(r)) if nodes.is_multiple_of(r + 1) => {}
            Some(Ok(r)) => v.error(
                nodes_at,
                format!(
                    "{nodes} redis-cluster nodes do not split into primaries with {r} replica(s) each: use a multiple of {} (`replicas:`)",
                    r + 1
                ),
            ),
            _ => v.error(at, format!("{var} must be a number of replicas per primary")),
        }
    }
}

/// A service's `cpus:` (more than 0, at most 64) and `memory:` (at least
/// 6 MiB, Docker's minimum).
fn limits(
    v: &mut Validator,
    cpus: Option<&Spanned<f64>>,
    memory: Option<&Spanned<String>>,
) -> Limits {
    let cpus = cpus.and_then(|c| {
        let ok = c.value > 0.0 && c.value <= 64.0;
        if !ok {
            v.error(
                c.referenced,
                format!("cpus must be more than 0 and at most 64, found {}", c.value),
            );
        }
        ok.then_some(c.value)
    });
    let memory = memory.and_then(|m| match size::parse(&m.value) {
        Ok(bytes) if bytes >= 6 << 20 => Some(bytes),
        Ok(_) => {
            v.error(
                m.referenced,
                format!("memory `{}` is below Docker's minimum of 6m", m.value),
            );
            None
        }
        Err(e) => {
            v.error(m.referenced, e);
            None
        }
    });
    Limits { cpus, memory }
}

fn check_params(
    v: &mut Validator,
    exercise: &dyn Exercise,
    given: &indexmap::IndexMap<String, Spanned<Value>>,
    into: &mut BTreeMap<String, Value>,
) {
    let specs = exercise.params();
    for (name, value) in given {
        match specs.iter().find(|p| p.name == name) {
            None => {
                let known: Vec<&str> = specs.iter().map(|p| p.name).collect();
                v.error(
                    value.referenced,
                    format!(
                        "exercise `{}` has no parameter `{name}`; expected one of: {}",
                        exercise.name(),
                        known.join(", ")
                    ),
                );
            }
            Some(spec) => match spec.check(&value.value) {
                Ok(()) => {
                    into.insert(name.clone(), value.value.clone());
                }
                Err(e) => v.error(value.referenced, e),
            },
        }
    }
}

fn validate_scenario(
    v: &mut Validator,
    exercise: &dyn Exercise,
    raw: &RawScenario,
    base: &BTreeMap<String, Value>,
    (services, challenge): (&BTreeSet<String>, Option<&Challenge>),
) -> Scenario {
    let mut params = base.clone();
    check_params(v, exercise, &raw.params, &mut params);

    let expect = validate_expect(v, exercise, &raw.expect, &params);

    let is_challenge = raw.challenge.as_ref().is_some_and(|c| c.value);
    // How many instances of the learner's program this scenario runs: the
    // highest `solution-N` a fault may name.
    let instances = match (is_challenge, challenge, &raw.challenge) {
        (true, None, Some(flag)) => {
            v.error(
                flag.referenced,
                "`challenge: true` needs a `challenge:` section in the lab",
            );
            None
        }
        (true, Some(c), _) => match c.instances.count(&params) {
            Ok(n) => Some(n),
            Err(e) => {
                v.error(
                    raw.name.referenced,
                    format!("scenario `{}`: {e}", raw.name.value),
                );
                None
            }
        },
        _ => None,
    };

    let faults = raw
        .faults
        .iter()
        .filter_map(|f| validate_fault(v, exercise, f, (services, is_challenge, instances)))
        .collect();
    Scenario {
        name: raw.name.value.clone(),
        description: raw.description.clone(),
        params,
        expect,
        faults,
        challenge: is_challenge,
    }
}

/// Each expectation: a known observation, a predicate that fits its kind, and
/// names that are numeric parameters or number observations.
fn validate_expect(
    v: &mut Validator,
    exercise: &dyn Exercise,
    raw: &indexmap::IndexMap<String, Spanned<Value>>,
    params: &BTreeMap<String, Value>,
) -> BTreeMap<String, Predicate> {
    let observations = exercise.observations();
    let mut expect = BTreeMap::new();
    for (name, predicate) in raw {
        let Some(spec) = observations.iter().find(|o| o.name == name) else {
            let produced: Vec<&str> = observations.iter().map(|o| o.name).collect();
            v.error(
                predicate.referenced,
                format!(
                    "exercise `{}` does not observe `{name}`; it observes: {}",
                    exercise.name(),
                    produced.join(", ")
                ),
            );
            continue;
        };
        let parsed = match Predicate::from_scalar(&predicate.value, spec.kind) {
            Ok(p) => p,
            Err(e) => {
                v.error(predicate.referenced, format!("`{name}`: {e}"));
                continue;
            }
        };
        let mut ok = true;
        for word in parsed.names() {
            if let Some(problem) = name_problem(exercise, params, word) {
                let e = LabError::at_word(v.path, v.source, predicate.referenced, word, problem);
                v.errors.push(e);
                ok = false;
            }
        }
        if ok {
            expect.insert(name.clone(), parsed);
        }
    }
    expect
}

/// Why `word` cannot stand in a predicate, if it cannot.
fn name_problem(
    exercise: &dyn Exercise,
    params: &BTreeMap<String, Value>,
    word: &str,
) -> Option<String> {
    if let Some(obs) = exercise.observations().iter().find(|o| o.name == word) {
        return (obs.kind != ObsKind::Number).then(|| {
            format!(
                "`{word}` is {}; arithmetic needs a number observation",
                obs.kind.describe()
            )
        });
    }
    match params.get(word) {
        Some(value) if value.is_number() => None,
        Some(value) => Some(format!(
            "parameter `{word}` is {value}, not a number, so it cannot be used in arithmetic"
        )),
        None => {
            let mut known: Vec<&str> = params
                .iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, _)| k.as_str())
                .collect();
            known.extend(
                exercise
                    .observations()
                    .iter()
                    .filter(|o| o.kind == ObsKind::Number)
                    .map(|o| o.name),
            );
            Some(format!(
                "unknown name `{word}` in the predicate; expected a number, a parameter or an \
                 observation of `{}`: {}",
                exercise.name(),
                known.join(", ")
            ))
        }
    }
}

fn validate_fault(
    v: &mut Validator,
    exercise: &dyn Exercise,
    fault: &Spanned<RawFault>,
    (services, is_challenge, instances): (&BTreeSet<String>, bool, Option<u32>),
) -> Option<Fault> {
    let RawFault {
        at,
        after,
        action,
        service,
        groups,
        lasts,
    } = &fault.value;
    let action_parsed = FaultAction::ALL
        .iter()
        .find(|(n, _)| *n == action.value)
        .map(|(_, a)| *a);
    if action_parsed.is_none() {
        let names: Vec<&str> = FaultAction::ALL.iter().map(|(n, _)| *n).collect();
        v.error(
            action.referenced,
            format!(
                "unknown fault action `{}`; expected one of: {}",
                action.value,
                names.join(", ")
            ),
        );
    }
    let network_wide = action_parsed.is_some_and(FaultAction::network_wide);
    let groups = validate_groups(
        v,
        fault.referenced,
        action_parsed,
        groups.as_ref(),
        services,
    );
    let service = match (service, network_wide) {
        (Some(s), false) => s.clone(),
        (None, false) => {
            v.error(
                fault.referenced,
                "a fault needs `service: NAME` (only `partition` and `heal` name none)",
            );
            return None;
        }
        (Some(s), true) => {
            v.error(
                s.referenced,
                format!(
                    "`{}` concerns the whole lab network and names no `service:`",
                    action.value
                ),
            );
            return None;
        }
        (None, true) => Spanned::new(String::new(), fault.referenced, fault.referenced),
    };
    let solution_target = challenge::parse_target(&service.value);
    if let Some(target) = solution_target {
        if !is_challenge {
            v.error(
                service.referenced,
                format!(
                    "`{}` is the learner's program, which only scenarios marked `challenge: true` run",
                    service.value
                ),
            );
        } else if let (challenge::Target::Instance(n), Some(instances)) = (target, instances)
            && n > instances
        {
            v.error(
                service.referenced,
                format!(
                    "`{}` names instance {n}, but this scenario runs {instances} instance{}",
                    service.value,
                    if instances == 1 { "" } else { "s" }
                ),
            );
        }
        if let Some(a) = action_parsed
            && !a.reaches_processes()
        {
            let names: Vec<&str> = FaultAction::ALL
                .iter()
                .filter(|(_, a)| a.reaches_processes())
                .map(|(n, _)| *n)
                .collect();
            v.error(
                action.referenced,
                format!(
                    "`{}` cannot be done to the learner's program; expected one of: {}",
                    a.name(),
                    names.join(", ")
                ),
            );
        }
    } else if !network_wide && !services.contains(&service.value) {
        v.error(
            service.referenced,
            format!(
                "fault names service `{}`, which the lab does not define; services: {}",
                service.value,
                services.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let when = match (at, after) {
        (Some(at), None) if solution_target == Some(challenge::Target::AtMark) => {
            v.error(
                at.referenced,
                format!(
                    "`{}` is the instance that reached the `after:` milestone: use `after: MILESTONE`, not `at:`",
                    service.value
                ),
            );
            None
        }
        (Some(at), None) => match duration::parse(&at.value) {
            Ok(d) => Some(When::At(d)),
            Err(e) => {
                v.error(at.referenced, e);
                None
            }
        },
        (None, Some(after)) => {
            let milestones = exercise.milestones();
            if !milestones.iter().any(|m| m.name == after.value) {
                let names: Vec<&str> = milestones.iter().map(|m| m.name).collect();
                let known = if names.is_empty() {
                    "it records none, so use `at: DURATION`".to_string()
                } else {
                    format!("it records: {}", names.join(", "))
                };
                v.error(
                    after.referenced,
                    format!(
                        "exercise `{}` never records the milestone `{}`; {known}",
                        exercise.name(),
                        after.value
                    ),
                );
                return None;
            }
            if solution_target == Some(challenge::Target::AtMark)
                && !milestones
                    .iter()
                    .any(|m| m.name == after.value && m.by_instance)
            {
                let names: Vec<&str> = milestones
                    .iter()
                    .filter(|m| m.by_instance)
                    .map(|m| m.name)
                    .collect();
                v.error(
                    service.referenced,
                    format!(
                        "`{}` is the instance that reached the `after:` milestone, and no instance reaches `{}`; milestones an instance reaches: {}",
                        service.value,
                        after.value,
                        if names.is_empty() { "none".to_string() } else { names.join(", ") }
                    ),
                );
            }
            Some(When::After(after.value.clone()))
        }
        _ => {
            v.error(
                fault.referenced,
                "a fault needs exactly one of `at: DURATION` or `after: MILESTONE`",
            );
            None
        }
    };
    let lasts = match (lasts, action_parsed) {
        (None, _) => Some(None),
        (Some(lasts), action) => validate_lasts(v, lasts, action),
    };
    Some(Fault {
        when: when?,
        action: action_parsed?,
        service: service.value.clone(),
        groups: groups?,
        lasts: lasts?,
    })
}

/// `groups:` of a partition: at least two groups, none empty, of services
/// or instances the lab defines, no name twice; refused on other actions.
fn validate_groups(
    v: &mut Validator,
    fault: Location,
    action: Option<FaultAction>,
    groups: Option<&Spanned<Vec<Vec<String>>>>,
    services: &BTreeSet<String>,
) -> Option<Vec<Vec<String>>> {
    let groups = match (action, groups) {
        (Some(FaultAction::Partition), Some(g)) => g,
        (Some(FaultAction::Partition), None) => {
            v.error(
                fault,
                "`action: partition` needs `groups: [[a, b], [c]]`: the services that keep reaching each other",
            );
            return None;
        }
        (_, Some(g)) => {
            v.error(g.referenced, "`groups:` belongs to `action: partition`");
            return None;
        }
        (_, None) => return Some(Vec::new()),
    };
    if groups.value.len() < 2 || groups.value.iter().any(Vec::is_empty) {
        v.error(
            groups.referenced,
            "a partition needs at least two groups, none of them empty",
        );
        return None;
    }
    let mut seen = BTreeSet::new();
    for name in groups.value.iter().flatten() {
        if !services.contains(name) {
            v.error(
                groups.referenced,
                format!(
                    "partition names `{name}`, which the lab does not define; services: {}",
                    services.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            return None;
        }
        if !seen.insert(name) {
            v.error(
                groups.referenced,
                format!("partition names `{name}` twice: a service is in one group"),
            );
            return None;
        }
    }
    Some(groups.value.clone())
}

/// `for: DURATION`: a positive duration, on an action that has an inverse.
/// `None` when it is wrong (the error is recorded).
fn validate_lasts(
    v: &mut Validator,
    lasts: &Spanned<String>,
    action: Option<FaultAction>,
) -> Option<Option<std::time::Duration>> {
    let d = match duration::parse(&lasts.value) {
        Ok(d) if d.is_zero() => {
            v.error(
                lasts.referenced,
                "`for:` must be longer than zero; leave it out to keep the fault until the scenario ends",
            );
            return None;
        }
        Ok(d) => d,
        Err(e) => {
            v.error(lasts.referenced, e);
            return None;
        }
    };
    let action = action?;
    if action.inverse().is_none() {
        let undoable: Vec<&str> = FaultAction::ALL
            .iter()
            .filter(|(_, a)| a.inverse().is_some())
            .map(|(n, _)| *n)
            .collect();
        v.error(
            lasts.referenced,
            format!(
                "`for:` needs an action that can be undone ({}); `{}` has no inverse",
                undoable.join(", "),
                action.name()
            ),
        );
        return None;
    }
    Some(Some(d))
}

/// Fault steps, `for:` above all (kept apart from the expectation tests).
#[cfg(test)]
mod fault_tests {
    use super::*;
    use std::time::Duration;

    fn lab(fault: &str) -> String {
        format!(
            "\
name: t
title: T
section: global-coordination
summary: s
services:
  redis: {{ kind: redis }}
exercise: redis-lock
scenarios:
  - name: a
    params: {{ strategy: setnx }}
    faults:
      - {fault}
    expect: {{ lost_updates: \"== 0\" }}
"
        )
    }

    fn fault(text: &str) -> Result<Fault, Vec<LabError>> {
        validate(Path::new("lab.yaml"), &lab(text))
            .map(|l| l.scenarios[0].faults[0].clone())
            .map_err(|e| e.0)
    }

    #[test]
    fn for_sets_how_long_the_fault_lasts() {
        let f = fault("{ after: holding, action: pause, service: redis, for: 1500ms }").unwrap();
        assert_eq!(f.lasts, Some(Duration::from_millis(1500)));
        assert_eq!(f.when, When::After("holding".into()));
        let f = fault("{ at: 1s, action: kill, service: redis }").unwrap();
        assert_eq!(f.lasts, None);
    }

    #[test]
    fn every_fault_with_an_inverse_accepts_for() {
        for (name, action) in FaultAction::ALL.iter().filter(|(_, a)| !a.network_wide()) {
            let r = fault(&format!(
                "{{ at: 1s, action: {name}, service: redis, for: 2s }}"
            ));
            assert_eq!(r.is_ok(), action.inverse().is_some(), "{name}: {r:?}");
        }
        assert_eq!(FaultAction::Kill.inverse(), Some(FaultAction::Start));
        assert_eq!(FaultAction::Pause.inverse(), Some(FaultAction::Unpause));
        assert_eq!(
            FaultAction::Disconnect.inverse(),
            Some(FaultAction::Connect)
        );
    }

    /// A partition over the test lab's Redis as two replicas.
    fn partition(text: &str) -> Result<Fault, Vec<LabError>> {
        let lab = lab(text).replace(
            "redis: { kind: redis }",
            "redis: { kind: redis, replicas: 2 }",
        );
        validate(Path::new("lab.yaml"), &lab)
            .map(|l| l.scenarios[0].faults[0].clone())
            .map_err(|e| e.0)
    }

    #[test]
    fn a_partition_names_groups_and_heals() {
        let f = partition("{ at: 1s, action: partition, groups: [[redis-1], [redis-2]], for: 2s }")
            .unwrap();
        assert_eq!(
            f.groups,
            vec![vec!["redis-1".to_string()], vec!["redis-2".to_string()]]
        );
        assert_eq!(f.action.inverse(), Some(FaultAction::Heal));
        assert_eq!(f.lasts, Some(Duration::from_secs(2)));
        let f = partition("{ at: 3s, action: heal }").unwrap();
        assert_eq!((f.action, f.service.as_str()), (FaultAction::Heal, ""));
    }

    #[test]
    fn a_bad_partition_is_located() {
        for (text, words) in [
            ("{ at: 1s, action: partition }", "needs `groups:"),
            (
                "{ at: 1s, action: partition, groups: [[redis-1, redis-2]] }",
                "at least two groups",
            ),
            (
                "{ at: 1s, action: partition, groups: [[redis-1], []] }",
                "none of them empty",
            ),
            (
                "{ at: 1s, action: partition, groups: [[redis-1], [redis-9]] }",
                "`redis-9`",
            ),
            (
                "{ at: 1s, action: partition, groups: [[redis-1], [redis-1]] }",
                "twice",
            ),
            (
                "{ at: 1s, action: partition, service: redis, groups: [[redis-1], [redis-2]] }",
                "names no `service:`",
            ),
            (
                "{ at: 1s, action: kill, service: redis, groups: [[redis-1], [redis-2]] }",
                "belongs to `action: partition`",
            ),
            ("{ at: 1s, action: kill }", "needs `service: NAME`"),
        ] {
            let e = partition(text).unwrap_err();
            assert_eq!(e[0].line, 12, "{text}: {}", e[0]);
            assert!(e[0].message.contains(words), "{text}: {}", e[0]);
        }
    }

    #[test]
    fn for_without_inverse_zero_or_garbage_is_located() {
        let e = fault("{ at: 1s, action: restart, service: redis, for: 2s }").unwrap_err();
        assert_eq!((e[0].line, e[0].col), (12, 57), "{}", e[0]);
        assert!(
            e[0].message.contains("`restart` has no inverse"),
            "{}",
            e[0]
        );
        assert!(e[0].message.contains("pause"), "{}", e[0]);
        let e = fault("{ at: 1s, action: pause, service: redis, for: 0s }").unwrap_err();
        assert_eq!((e[0].line, e[0].col), (12, 55), "{}", e[0]);
        assert!(e[0].message.contains("longer than zero"), "{}", e[0]);
        let e = fault("{ at: 1s, action: pause, service: redis, for: soon }").unwrap_err();
        assert!(e[0].message.contains("not a duration"), "{}", e[0]);
        assert_eq!(e.len(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
name: t
title: T
section: global-coordination
summary: s
services:
  redis: { kind: redis }
exercise: redis-lock
params: { workers: 2 }
scenarios:
  - name: a
    params: { strategy: none }
    expect: { lost_updates: \"> 0\" }
";

    fn errors(text: &str) -> Vec<LabError> {
        match validate(Path::new("lab.yaml"), text) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn a_good_lab_resolves_parameters_in_order() {
        let lab = validate(Path::new("lab.yaml"), GOOD).unwrap();
        let s = &lab.scenarios[0];
        assert_eq!(s.params["workers"], Value::from(2));
        assert_eq!(s.params["strategy"], Value::from("none"));
        assert_eq!(s.params["increments"], Value::from(50));
    }

    #[test]
    fn unknown_kind_points_at_the_value() {
        let e = errors(&GOOD.replace("kind: redis", "kind: redis7"));
        assert_eq!((e[0].line, e[0].col), (6, 18));
        assert!(e[0].message.contains("unknown service kind `redis7`"));
        assert!(e[0].to_string().contains("^^^^^^"));
    }

    #[test]
    fn unknown_parameter_and_observation_and_bad_predicate() {
        let text = GOOD
            .replace("workers: 2", "wrokers: 2")
            .replace("lost_updates: \"> 0\"", "lost: \"> 0\"");
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|e| e.message.contains("no parameter `wrokers`") && e.line == 8)
        );
        assert!(
            e.iter()
                .any(|e| e.message.contains("does not observe `lost`") && e.line == 12)
        );
        let e = errors(&GOOD.replace("\"> 0\"", "\"~ 0\""));
        assert!(e[0].message.contains("not a predicate"), "{}", e[0]);
        assert_eq!(e[0].line, 12);
    }

    #[test]
    fn unknown_key_and_syntax_errors_have_locations() {
        let e = errors(&GOOD.replace("summary: s", "summary: s\nsumary: x"));
        assert_eq!(e[0].line, 5, "{}", e[0]);
        let e = errors(&GOOD.replace("  redis: { kind: redis }", "  redis: { kind: redis"));
        assert!(e[0].line > 0, "{}", e[0]);
    }
}

/// The `challenge:` section and the faults that reach the learner's program.
#[cfg(test)]
mod challenge_tests {
    use super::*;
    use crate::lab::{Instances, Role, SolutionExpect};

    const LAB: &str = "\
name: t
title: T
section: global-coordination
summary: s
services:
  locks: { kind: redis }
  ledger: { kind: agent }
exercise: redis-lock
params: { workers: 3 }
scenarios:
  - name: demo
    params: { strategy: none }
    expect: { lost_updates: \"> 0\" }
  - name: mine
    challenge: true
    faults:
      - { after: read-by-1, action: pause, service: solution-1, for: 1s }
    expect: { lost_updates: \"== 0\", stalled: false }
challenge:
  task: do it
  role: workers
  instances: workers
  checked: the ledger
  solutions:
    - { name: good, run: \"{examples}/good\", expect: pass }
    - { name: bad, run: \"python3 {dir}/bad.py\", expect: { fail: [lost_updates] } }
";

    fn errors(text: &str) -> Vec<LabError> {
        match validate(Path::new("lab.yaml"), text) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn a_challenge_lab_resolves() {
        let lab = validate(Path::new("lab.yaml"), LAB).unwrap();
        let c = lab.challenge.as_ref().unwrap();
        assert_eq!(c.role, Role::Workers);
        assert!(matches!(c.instances, Instances::Expr(_)));
        assert_eq!(c.instances.count(&lab.scenarios[1].params), Ok(3));
        assert_eq!(c.solutions[0].expect, SolutionExpect::Pass);
        assert_eq!(
            c.solutions[1].expect,
            SolutionExpect::Fail {
                must: vec!["lost_updates".into()],
                may: vec![]
            }
        );
        assert!(!lab.scenarios[0].challenge);
        assert!(lab.scenarios[1].challenge);
        assert_eq!(lab.scenarios[1].faults[0].service, "solution-1");
    }

    #[test]
    fn role_instances_and_solutions_are_checked_where_written() {
        let e = errors(&LAB.replace("role: workers", "role: worker"));
        assert_eq!((e[0].line, e[0].col), (21, 9), "{}", e[0]);
        assert!(e[0].message.contains("unknown challenge role `worker`"));
        assert!(e[0].message.contains("workers, consumer, server"));
        let e = errors(&LAB.replace("instances: workers", "instances: wrokers"));
        assert!(
            e[0].message.contains("`wrokers`, which is no parameter"),
            "{}",
            e[0]
        );
        assert_eq!(e[0].line, 22);
        let e = errors(&LAB.replace("fail: [lost_updates]", "fail: [lost]"));
        assert!(e[0].message.contains("must fail `lost`"), "{}", e[0]);
        assert_eq!(e[0].line, 26);
        let e = errors(&LAB.replace("{dir}/bad.py", "{lab}/bad.py"));
        assert!(e[0].message.contains("placeholder `{lab}`"), "{}", e[0]);
        let e = errors(&LAB.replace("expect: pass", "expect: passes"));
        assert!(e[0].message.contains("`pass` or `{ fail:"), "{}", e[0]);
    }

    #[test]
    fn faults_on_the_program_are_checked() {
        let e = errors(&LAB.replace("service: solution-1", "service: solution-4"));
        assert_eq!((e[0].line, e[0].col), (17, 53), "{}", e[0]);
        assert!(e[0].message.contains("runs 3 instances"), "{}", e[0]);
        let e = errors(&LAB.replace(
            "action: pause, service: solution-1, for: 1s",
            "action: disconnect, service: solution",
        ));
        assert!(
            e[0].message
                .contains("cannot be done to the learner's program"),
            "{}",
            e[0]
        );
        // The demo scenario runs no program.
        let text = LAB.replace(
            "    expect: { lost_updates: \"> 0\" }",
            "    faults: [{ at: 1s, action: kill, service: solution }]\n    expect: { lost_updates: \"> 0\" }",
        );
        let e = errors(&text);
        assert!(
            e[0].message
                .contains("only scenarios marked `challenge: true`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn the_instance_at_a_mark_needs_a_mark_an_instance_reaches() {
        let ok = LAB.replace(
            "after: read-by-1, action: pause, service: solution-1",
            "after: read-2, action: pause, service: solution-at-mark",
        );
        let lab = validate(Path::new("lab.yaml"), &ok).unwrap();
        assert_eq!(lab.scenarios[1].faults[0].service, "solution-at-mark");
        let e = errors(&LAB.replace(
            "after: read-by-1, action: pause, service: solution-1",
            "after: holding, action: pause, service: solution-at-mark",
        ));
        assert!(
            e[0].message.contains("no instance reaches `holding`")
                && e[0].message.contains("read-1, read-2"),
            "{}",
            e[0]
        );
        // `holding` is two characters shorter than `read-by-1`.
        assert_eq!((e[0].line, e[0].col), (17, 51), "{}", e[0]);
        let e = errors(&LAB.replace(
            "after: read-by-1, action: pause, service: solution-1",
            "at: 1s, action: pause, service: solution-at-mark",
        ));
        assert!(e[0].message.contains("not `at:`"), "{}", e[0]);
    }

    #[test]
    fn challenge_scenarios_need_the_section_and_the_section_needs_them() {
        let without = LAB.split("challenge:\n  task").next().unwrap().to_string();
        let e = errors(&without);
        assert!(
            e[0].message.contains("needs a `challenge:` section"),
            "{}",
            e[0]
        );
        assert_eq!(e[0].line, 15);
        let e = errors(&LAB.replace("    challenge: true\n", ""));
        assert!(
            e.iter()
                .any(|e| e.message.contains("at least one scenario marked")),
            "{e:?}"
        );
    }
}
