//! `infralab show LAB`: everything an instructor needs to write a variant of
//! a lab without opening the README: the briefing, services, scenarios, and
//! the exercise's reference (parameters with defaults and ranges,
//! observations with their kinds, milestones faults may wait for).

use serde_json::{Value, json};

use super::{CliError, Format};
use crate::exercise::{Exercise, ParamKind, ParamSpec};
use crate::lab::{Challenge, Lab, Limits, When};
use crate::report::words::{aligned, format_value};
use crate::{catalog, challenge, exit, sections};

/// `infralab show LAB`: the briefing, or (`--format json`) the same facts
/// for tools.
pub fn show(lab: &Lab, format: Format) -> Result<i32, CliError> {
    match format {
        Format::Text => print!("{}", text(lab)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json(lab)).unwrap_or_default()
        ),
    }
    Ok(exit::PASSED)
}

fn text(lab: &Lab) -> String {
    let mut out = String::new();
    let section = sections::find(&lab.section).map(|s| s.1).unwrap_or("");
    out += &format!(
        "{}\n{}\n\n",
        lab.title,
        "=".repeat(lab.title.chars().count())
    );
    out += &format!(
        "lab:      {}  ({section})\nfile:     {}\n\n{}\n",
        lab.name,
        lab.file.display(),
        lab.summary
    );
    if let Some(b) = &lab.briefing {
        out += &format!("\n{}\n", b.trim_end());
    }
    if let Some(q) = &lab.question {
        out += &format!("\nThe question: {}\n", q.trim_end());
    }
    out += "\nServices:\n";
    for s in &lab.services {
        let spec = catalog::spec(&s.kind);
        let image = s.image.clone().unwrap_or_else(|| spec.image.clone());
        let replicas = if s.replicas > 1 {
            format!(" ×{}", s.replicas)
        } else {
            String::new()
        };
        out += &format!(
            "  {}{replicas}: {} ({image}){}, {}\n",
            s.name,
            s.kind,
            limits_text(s.limits),
            spec.summary
        );
    }
    let ex = lab.exercise;
    out += &format!("\nExercise: {}: {}\n", ex.name(), ex.summary());
    out += &exercise_reference(ex);
    out += "\nScenarios:\n";
    for s in &lab.scenarios {
        out += &format!("  {}", s.name);
        if let Some(d) = &s.description {
            out += &format!(": {}", d.trim_end());
        }
        out += "\n";
        let changed: Vec<String> = s
            .params
            .iter()
            .filter(|(k, v)| {
                ex.params()
                    .iter()
                    .any(|p| p.name == k.as_str() && p.default != **v)
            })
            .map(|(k, v)| format!("{k}={}", format_value(v)))
            .collect();
        if !changed.is_empty() {
            out += &format!("      params: {}\n", changed.join(", "));
        }
        for f in &s.faults {
            let when = match &f.when {
                When::At(d) => format!("at {}", humantime::format_duration(*d)),
                When::After(m) => format!("after {m}"),
            };
            let lasts = f
                .lasts
                .map(|d| format!(", for {}", humantime::format_duration(d)))
                .unwrap_or_default();
            out += &format!(
                "      fault: {} {} {when}{lasts}\n",
                f.action.name(),
                f.service
            );
        }
        for (obs, p) in &s.expect {
            out += &format!("      expect: {obs} {p}\n");
        }
    }
    if let Some(a) = &lab.answer {
        out += &format!("\nWhat to look for: {}\n", a.trim_end());
    }
    if let Some(c) = &lab.challenge {
        out += &challenge_text(lab, c);
    }
    out += &format!(
        "\nRun it:   infralab run {}\nExplore:  infralab up {}\n",
        lab.name, lab.name
    );
    if lab.challenge.is_some() {
        out += &format!("Yours:    infralab run {} --solution 'CMD'\n", lab.name);
    }
    out
}

/// The challenge: task, role, instances, the environment contract, what is
/// checked and the shipped solutions.
fn challenge_text(lab: &Lab, c: &Challenge) -> String {
    let mut out = String::from("\nChallenge: write the program yourself\n");
    out += &format!("\n{}\n", c.task.trim_end());
    out += &format!(
        "\nRole:       {} ({})\nInstances:  {}\n",
        c.role.name(),
        c.role.doc(),
        c.instances.text()
    );
    out += "\nEnvironment (what your program gets):\n";
    let mut vars: Vec<Vec<String>> = Vec::new();
    let mut first = |var: &str, what: String| {
        if !vars.iter().any(|v| v[0] == var) {
            vars.push(vec![var.to_string(), what]);
        }
    };
    for s in &lab.services {
        let what = format!("the `{}` service ({})", s.name, s.kind);
        match s.kind.as_str() {
            "redis" => first("REDIS_URL", what),
            "postgres" => first("DATABASE_URL, PG*", what),
            "rabbitmq" => first("AMQP_URL", what),
            "kafka" => first("KAFKA_BOOTSTRAP_SERVERS", what),
            "mosquitto" => first("MQTT_URL", what),
            "agent" | "nginx" => first("HTTP_URL", what),
            _ => {}
        }
    }
    for s in &lab.services {
        first(
            &format!("INFRALAB_URL_{}", challenge::env::var_name(&s.name)),
            format!("the `{}` service", s.name),
        );
    }
    for (var, what) in lab.exercise.harness_env() {
        first(var, what.to_string());
    }
    first("INFRALAB_INSTANCE", "this instance, 1..N".into());
    first("INFRALAB_INSTANCES", "N".into());
    first(
        "INFRALAB_NAMESPACE",
        "prefix for your keys, queues and topics".into(),
    );
    first(
        "INFRALAB_PARAM_<NAME>",
        "every parameter of the scenario (INFRALAB_PARAM_INCREMENTS …)".into(),
    );
    out += &aligned(&["variable", "value"], &vars);
    out += &format!("\nChecked: {}\n", c.checked.trim_end());
    let checking: Vec<&str> = lab
        .scenarios
        .iter()
        .filter(|s| s.challenge)
        .map(|s| s.name.as_str())
        .collect();
    out += &format!("\nChallenge scenarios: {}\n", checking.join(", "));
    if !c.solutions.is_empty() {
        out += "\nShipped solutions (`--solution NAME`; `infralab validate --solutions` proves their verdicts):\n";
        let rows: Vec<Vec<String>> = c
            .solutions
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.expect.text(),
                    s.description.clone().unwrap_or_else(|| s.run.clone()),
                ]
            })
            .collect();
        out += &aligned(&["name", "must", "what"], &rows);
    }
    out
}

/// The exercise's parameters, observations and milestones as aligned tables.
fn exercise_reference(ex: &dyn Exercise) -> String {
    let mut out = String::new();
    let params: Vec<Vec<String>> = ex
        .params()
        .iter()
        .map(|p| {
            vec![
                p.name.to_string(),
                format_value(&p.default),
                accepts(p),
                p.doc.to_string(),
            ]
        })
        .collect();
    if !params.is_empty() {
        out += "\nParameters (set them under `params:`, in the lab or a scenario):\n";
        out += &aligned(&["name", "default", "accepts", "meaning"], &params);
    }
    let observations: Vec<Vec<String>> = ex
        .observations()
        .iter()
        .map(|o| vec![o.name.to_string(), o.kind.name().into(), o.doc.into()])
        .collect();
    if !observations.is_empty() {
        out += "\nObservations (check them under `expect:`; numbers may appear in expressions):\n";
        out += &aligned(&["name", "kind", "meaning"], &observations);
    }
    let milestones: Vec<Vec<String>> = ex
        .milestones()
        .iter()
        .map(|m| {
            let name = if m.by_instance {
                format!("{} *", m.name)
            } else {
                m.name.to_string()
            };
            vec![name, m.doc.to_string()]
        })
        .collect();
    if milestones.is_empty() {
        out += "\nMilestones: none; time faults with `at: DURATION`.\n";
    } else {
        out += "\nMilestones (a fault may fire `after:` one):\n";
        out += &aligned(&["name", "recorded when"], &milestones);
        if ex.milestones().iter().any(|m| m.by_instance) {
            out += "  * reached by one instance of your program: a fault `after:` it may name that instance as `solution-at-mark`\n";
        }
    }
    out
}

/// What values a parameter accepts, in the words of a lab file.
fn accepts(p: &ParamSpec) -> String {
    match &p.kind {
        ParamKind::Int { min, max } => format!("{min}..{max}"),
        ParamKind::Float => "a number".into(),
        ParamKind::Bool => "true | false".into(),
        ParamKind::Choice(options) => options.join(" | "),
        ParamKind::Text => "text".into(),
    }
}

/// `show --format json`: the lab and its exercise's reference.
fn json(lab: &Lab) -> Value {
    let ex = lab.exercise;
    json!({
        "name": lab.name,
        "title": lab.title,
        "section": lab.section,
        "file": lab.file,
        "summary": lab.summary,
        "question": lab.question,
        "answer": lab.answer,
        "services": lab.services.iter().map(|s| json!({
            "name": s.name, "kind": s.kind, "replicas": s.replicas,
            "cpus": s.limits.cpus, "memory_bytes": s.limits.memory,
            "image": s.image.clone().unwrap_or_else(|| catalog::spec(&s.kind).image.clone()),
        })).collect::<Vec<_>>(),
        "exercise": {
            "name": ex.name(),
            "summary": ex.summary(),
            "params": ex.params().iter().map(|p| json!({
                "name": p.name, "default": p.default, "accepts": accepts(p), "meaning": p.doc,
            })).collect::<Vec<_>>(),
            "observations": ex.observations().iter().map(|o| json!({
                "name": o.name, "kind": o.kind.name(), "meaning": o.doc,
            })).collect::<Vec<_>>(),
            "milestones": ex.milestones().iter().map(|m| json!({
                "name": m.name, "recorded_when": m.doc, "by_instance": m.by_instance,
            })).collect::<Vec<_>>(),
        },
        "scenarios": lab.scenarios.iter().map(|s| json!({
            "name": s.name,
            "description": s.description,
            "params": s.params,
            "faults": s.faults.iter().map(|f| json!({
                "action": f.action.name(),
                "service": f.service,
                "at_ms": match &f.when { When::At(d) => Some(d.as_millis() as u64), When::After(_) => None },
                "after": match &f.when { When::After(m) => Some(m.as_str()), When::At(_) => None },
                "for_ms": f.lasts.map(|d| d.as_millis() as u64),
            })).collect::<Vec<_>>(),
            "expect": s.expect.iter().map(|(k, p)| (k.clone(), Value::from(p.to_string()))).collect::<serde_json::Map<_, _>>(),
            "challenge": s.challenge,
        })).collect::<Vec<_>>(),
        "challenge": lab.challenge.as_ref().map(|c| json!({
            "task": c.task,
            "role": c.role.name(),
            "instances": c.instances.text(),
            "checked": c.checked,
            "solutions": c.solutions.iter().map(|s| json!({
                "name": s.name, "run": s.run, "expect": s.expect.text(),
                "description": s.description, "requires": s.requires,
            })).collect::<Vec<_>>(),
        })),
    })
}

/// ` with 0.25 CPU, 64 MiB` when a service has limits.
fn limits_text(limits: Limits) -> String {
    let mut parts = Vec::new();
    if let Some(c) = limits.cpus {
        parts.push(format!("{c} CPU"));
    }
    if let Some(m) = limits.memory {
        parts.push(format!("{} MiB", m >> 20));
    }
    match parts.is_empty() {
        true => String::new(),
        false => format!(" with {}", parts.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exercise::redis_lock::RedisLock;

    #[test]
    fn the_reference_lists_params_observations_and_milestones() {
        let text = exercise_reference(&RedisLock);
        assert!(text.contains("\nParameters"), "{text}");
        let workers = text
            .lines()
            .find(|l| l.trim_start().starts_with("workers "))
            .unwrap_or_else(|| panic!("workers in {text}"));
        assert!(
            workers.contains(" 8 ") && workers.contains("1.."),
            "{workers}"
        );
        let strategy = text
            .lines()
            .find(|l| l.trim_start().starts_with("strategy "))
            .unwrap();
        assert!(strategy.contains("none | setnx"), "{strategy}");
        let lost = text
            .lines()
            .find(|l| l.trim_start().starts_with("lost_updates "))
            .unwrap();
        assert!(lost.contains(" number "), "{lost}");
        assert!(text.contains("\n  holding "), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "trailing spaces");
    }

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["a".to_string(), "1".into(), "x".into()],
            vec!["long-name".to_string(), "22".into(), "y".into()],
        ];
        assert_eq!(
            aligned(&["name", "n", "meaning"], &rows),
            "  name       n   meaning\n  a          1   x\n  long-name  22  y\n"
        );
    }
}
