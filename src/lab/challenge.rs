//! A lab's [`Challenge`]: the learner's own program, which the lab's
//! exercise checks as a harness. The model and its validation; running the
//! program is [`crate::challenge`].

use std::collections::BTreeMap;

use serde_json::Value;
use serde_saphyr::Spanned;

use super::raw::{RawChallenge, RawSolution};
use crate::check::predicate::Expr;
use crate::exercise::Exercise;

/// Most instances a challenge may start: they are host processes.
pub const MAX_INSTANCES: u32 = 64;

/// The name faults use for every instance of the learner's program
/// (`solution`), or one of them (`solution-2`).
pub const TARGET: &str = "solution";

/// The instance that reached the fault's `after:` milestone: "kill whoever
/// made the second read", when which instance that is depends on the run.
pub const TARGET_AT_MARK: &str = "solution-at-mark";

/// Which instances of the learner's program a fault reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every instance (`solution`).
    All,
    /// One instance, 1-based (`solution-2`).
    Instance(u32),
    /// The instance that reached the `after:` milestone (`solution-at-mark`).
    AtMark,
}

/// The `challenge:` section of a lab.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// What the program must do, in prose.
    pub task: String,
    /// How it runs.
    pub role: Role,
    /// How many instances run, per scenario.
    pub instances: Instances,
    /// What the harness measures, in prose.
    pub checked: String,
    /// Shipped solutions with the verdicts they must get.
    pub solutions: Vec<SolutionDecl>,
}

/// How the learner's program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Each instance does its share of work and exits.
    Workers,
    /// Each instance runs until stopped, consuming.
    Consumer,
    /// Each instance serves on a port until stopped.
    Server,
}

impl Role {
    /// Every role with its name.
    pub const ALL: &[(&str, Role)] = &[
        ("workers", Role::Workers),
        ("consumer", Role::Consumer),
        ("server", Role::Server),
    ];

    /// The role's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("?", |(n, _)| *n)
    }

    /// One line for `show`.
    pub fn doc(self) -> &'static str {
        match self {
            Role::Workers => "every instance does its work and exits 0",
            Role::Consumer => "every instance runs until it is stopped (SIGTERM)",
            Role::Server => "every instance serves until it is stopped (SIGTERM)",
        }
    }
}

/// How many instances: a number, or arithmetic over the parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Instances {
    /// A fixed count.
    Fixed(u32),
    /// Arithmetic over the scenario's parameters (`workers`).
    Expr(Expr),
}

impl Instances {
    /// The count for a scenario's parameters, within `1..=MAX_INSTANCES`.
    pub fn count(&self, params: &BTreeMap<String, Value>) -> Result<u32, String> {
        let n = match self {
            Instances::Fixed(n) => f64::from(*n),
            Instances::Expr(e) => e.eval(&|name| params.get(name).and_then(Value::as_f64))?,
        };
        if n.fract() != 0.0 || !(1.0..=f64::from(MAX_INSTANCES)).contains(&n) {
            return Err(format!(
                "instances must be a whole number between 1 and {MAX_INSTANCES}, found {n}"
            ));
        }
        Ok(n as u32)
    }

    /// As written.
    pub fn text(&self) -> String {
        match self {
            Instances::Fixed(n) => n.to_string(),
            Instances::Expr(e) => e.to_string(),
        }
    }
}

/// A shipped solution: how to run it and the verdict it must get.
#[derive(Debug, Clone)]
pub struct SolutionDecl {
    /// Name, for `--solution NAME`.
    pub name: String,
    /// What it does (or gets wrong).
    pub description: Option<String>,
    /// Shell command; `{examples}` and `{dir}` are replaced when it runs.
    pub run: String,
    /// The verdict it must get.
    pub expect: SolutionExpect,
    /// A shell command that succeeds when the host has what it needs;
    /// failing, `validate --solutions` skips the solution.
    pub requires: Option<String>,
}

/// The verdict a shipped solution must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SolutionExpect {
    /// Every challenge scenario passes.
    Pass,
    /// `must` fail, each in every run of at least one scenario; `may`
    /// (known consequences of the same mistake) may fail too; nothing else
    /// may fail.
    Fail {
        /// Expectations that must fail.
        must: Vec<String>,
        /// Expectations that may fail as well.
        may: Vec<String>,
    },
}

impl SolutionExpect {
    /// `pass` or `fail: a, b`.
    pub fn text(&self) -> String {
        match self {
            SolutionExpect::Pass => "pass".into(),
            SolutionExpect::Fail { must, may } if may.is_empty() => {
                format!("fail: {}", must.join(", "))
            }
            SolutionExpect::Fail { must, may } => {
                format!("fail: {} (may: {})", must.join(", "), may.join(", "))
            }
        }
    }
}

/// Problems found while checking a challenge section: location and message.
pub type Problems = Vec<(serde_saphyr::Location, String)>;

/// Checks the `challenge:` section; `observations` are the exercise's.
pub fn validate(raw: &Spanned<RawChallenge>, exercise: &dyn Exercise) -> (Challenge, Problems) {
    let mut problems = Problems::new();
    let c = &raw.value;
    let role = Role::ALL
        .iter()
        .find(|(n, _)| *n == c.role.value)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|(n, _)| *n).collect();
            problems.push((
                c.role.referenced,
                format!(
                    "unknown challenge role `{}`; expected one of: {}",
                    c.role.value,
                    names.join(", ")
                ),
            ));
            Role::Workers
        });
    let instances = match &c.instances.value {
        Value::Number(n)
            if n.as_u64()
                .is_some_and(|n| (1..=u64::from(MAX_INSTANCES)).contains(&n)) =>
        {
            Instances::Fixed(n.as_u64().unwrap_or(1) as u32)
        }
        Value::String(s) => match Expr::parse(s) {
            Ok(e) => {
                for name in e.names() {
                    if !exercise.params().iter().any(|p| p.name == name) {
                        problems.push((
                            c.instances.referenced,
                            format!(
                                "`instances` names `{name}`, which is no parameter of exercise `{}`",
                                exercise.name()
                            ),
                        ));
                    }
                }
                Instances::Expr(e)
            }
            Err(e) => {
                problems.push((c.instances.referenced, format!("`instances`: {e}")));
                Instances::Fixed(1)
            }
        },
        other => {
            problems.push((
                c.instances.referenced,
                format!(
                    "`instances` must be a whole number between 1 and {MAX_INSTANCES} or arithmetic over parameters, found {other}"
                ),
            ));
            Instances::Fixed(1)
        }
    };
    if c.task.trim().is_empty() {
        problems.push((raw.referenced, "the challenge needs a `task`".into()));
    }
    let mut solutions: Vec<SolutionDecl> = Vec::new();
    for s in &c.solutions {
        if let Some(decl) = solution(&s.value, exercise, &mut problems) {
            if solutions.iter().any(|d| d.name == decl.name) {
                problems.push((
                    s.value.name.referenced,
                    format!("solution `{}` is declared twice", decl.name),
                ));
            }
            solutions.push(decl);
        }
    }
    let challenge = Challenge {
        task: c.task.clone(),
        role,
        instances,
        checked: c.checked.clone(),
        solutions,
    };
    (challenge, problems)
}

fn solution(
    raw: &RawSolution,
    exercise: &dyn Exercise,
    problems: &mut Problems,
) -> Option<SolutionDecl> {
    let name = &raw.name;
    if name.value.is_empty()
        || !name
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problems.push((
            name.referenced,
            format!(
                "solution name `{}` must be letters, digits, dashes and underscores",
                name.value
            ),
        ));
    }
    if raw.run.value.trim().is_empty() {
        problems.push((raw.run.referenced, "`run` must be a shell command".into()));
    }
    for word in placeholders(&raw.run.value) {
        if !matches!(word.as_str(), "examples" | "dir") {
            problems.push((
                raw.run.referenced,
                format!(
                    "unknown placeholder `{{{word}}}` in `run`; expected {{examples}} or {{dir}}"
                ),
            ));
        }
    }
    let bad_expect = || {
        (
            raw.expect.referenced,
            "`expect` must be `pass` or `{ fail: [OBSERVATION, …], may_fail: [OBSERVATION, …] }`"
                .to_string(),
        )
    };
    let names = |v: Option<&Value>| -> Option<Vec<String>> {
        match v {
            None => Some(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
            Some(_) => None,
        }
    };
    let expect = match &raw.expect.value {
        Value::String(s) if s == "pass" => SolutionExpect::Pass,
        Value::Object(m)
            if m.contains_key("fail") && m.keys().all(|k| k == "fail" || k == "may_fail") =>
        {
            match (names(m.get("fail")), names(m.get("may_fail"))) {
                (Some(must), Some(may)) if !must.is_empty() => {
                    for n in must.iter().chain(&may) {
                        if !exercise.observations().iter().any(|o| o.name == n) {
                            problems.push((
                                raw.expect.referenced,
                                format!(
                                    "solution `{}` must fail `{n}`, which exercise `{}` does not observe",
                                    name.value,
                                    exercise.name()
                                ),
                            ));
                        }
                    }
                    SolutionExpect::Fail { must, may }
                }
                _ => {
                    problems.push(bad_expect());
                    return None;
                }
            }
        }
        _ => {
            problems.push(bad_expect());
            return None;
        }
    };
    Some(SolutionDecl {
        name: name.value.clone(),
        description: raw.description.clone(),
        run: raw.run.value.clone(),
        expect,
        requires: raw.requires.clone(),
    })
}

/// The `{word}` placeholders of a command.
fn placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        match after.find('}') {
            Some(j)
                if after[..j]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && j > 0 =>
            {
                out.push(after[..j].to_string());
                rest = &after[j + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

/// The instances a fault target names, when it names the learner's
/// program; `None` for anything else (a service).
pub fn parse_target(name: &str) -> Option<Target> {
    match name {
        TARGET => Some(Target::All),
        TARGET_AT_MARK => Some(Target::AtMark),
        _ => name
            .strip_prefix("solution-")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .map(Target::Instance),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found() {
        assert_eq!(
            placeholders("{examples}/x --a {dir}/y {}"),
            vec!["examples".to_string(), "dir".to_string()]
        );
        assert!(placeholders("awk '{print $1}'").is_empty());
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("solution"), Some(Target::All));
        assert_eq!(parse_target("solution-3"), Some(Target::Instance(3)));
        assert_eq!(parse_target("solution-at-mark"), Some(Target::AtMark));
        assert_eq!(parse_target("solution-0"), None);
        assert_eq!(parse_target("locks"), None);
    }

    #[test]
    fn instances_from_parameters() {
        let params = BTreeMap::from([("workers".to_string(), Value::from(4))]);
        let e = Instances::Expr(Expr::parse("workers").unwrap());
        assert_eq!(e.count(&params), Ok(4));
        let e = Instances::Expr(Expr::parse("workers * 100").unwrap());
        assert!(e.count(&params).unwrap_err().contains("between 1 and 64"));
        assert_eq!(Instances::Fixed(3).count(&params), Ok(3));
    }
}
