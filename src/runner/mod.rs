//! The runner: lab → started stack → scenarios (exercise beside its faults) →
//! verdicts → [`RunReport`]. It never prints; progress goes out as events.
//!
//! Every run id is registered while its resources may exist, so Ctrl-C and
//! panics still tear them down ([`teardown_active`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;

use crate::challenge::{self, Solution};
use crate::check::{self, Verdict};
use crate::engine::stack::{self, StackOptions, Started};
use crate::engine::{Engine, EnvError, Stack, faults};
use crate::event::{Event, LabReport, Reporter, RunReport, ScenarioReport, ServiceReport};
use crate::exercise::{self, Ctx, Timeline};
use crate::images::Source;
use crate::lab::challenge::Target;
use crate::lab::{Fault, FaultAction, Lab, Scenario, When};
use crate::repeat;

mod on_demand;
use on_demand::OnDemand;

/// How labs are run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where images come from.
    pub source: Source,
    /// Only these scenarios (all when empty).
    pub scenarios: Vec<String>,
    /// Deadline for one scenario's exercise.
    pub scenario_timeout: Duration,
    /// How many times every scenario runs (`--repeat N`; 1 = once).
    pub repeat: u32,
    /// How many labs run at once (`--jobs N`).
    pub jobs: usize,
    /// `--solution`: the learner's program (a declared solution's name or a
    /// shell command). With it only challenge scenarios run; without, only
    /// the others.
    pub solution: Option<String>,
}

/// Labs at once by default: one per core, at most four. Labs mostly wait on
/// services and networks, but their timing-sensitive scenarios need a core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

static ACTIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn register(run_id: &str) {
    ACTIVE
        .lock()
        .expect("active runs")
        .insert(run_id.to_string());
}

fn unregister(run_id: &str) {
    ACTIVE.lock().expect("active runs").remove(run_id);
}

/// Tears down every run of this process that may still have resources: the
/// Ctrl-C path. Returns how many resources were removed.
pub async fn teardown_active(engine: &Engine) -> usize {
    let ids: Vec<String> = ACTIVE
        .lock()
        .expect("active runs")
        .iter()
        .cloned()
        .collect();
    let mut removed = 0;
    for id in ids {
        removed += stack::teardown(engine, &id).await.unwrap_or(0);
        unregister(&id);
    }
    removed
}

/// Runs labs one after another and returns the whole report.
pub async fn run_labs(
    engine: &Engine,
    labs: Vec<Arc<Lab>>,
    opts: &RunOptions,
    reporter: Arc<dyn Reporter>,
) -> RunReport {
    let started = Instant::now();
    let run_id = stack::new_run_id();
    let mut report = RunReport {
        run_id: run_id.clone(),
        ..Default::default()
    };
    // Up to `jobs` labs at once, each with its own run id (network, labels,
    // namespace); reports keep the order the labs were given in.
    let runs = labs.into_iter().enumerate().map(|(i, lab)| {
        let lab_run = if i == 0 {
            run_id.clone()
        } else {
            stack::new_run_id()
        };
        let reporter = reporter.clone();
        async move { run_lab(engine, lab, &lab_run, opts, reporter).await }
    });
    report.labs = futures_util::stream::iter(runs)
        .buffered(opts.jobs.max(1))
        .collect()
        .await;
    report.verdict = Verdict::merge_all(report.labs.iter().map(|l| l.verdict));
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

/// Runs one lab in its own task (so a panic in an exercise is contained) and
/// always tears it down afterwards.
pub async fn run_lab(
    engine: &Engine,
    lab: Arc<Lab>,
    run_id: &str,
    opts: &RunOptions,
    reporter: Arc<dyn Reporter>,
) -> LabReport {
    let started = Instant::now();
    register(run_id);
    reporter.event(&Event::LabStarted {
        lab: lab.name.clone(),
        title: lab.title.clone(),
        scenarios: selected(&lab, opts).len(),
    });
    let task = {
        let (engine, lab, run_id, opts, reporter) = (
            engine.clone(),
            lab.clone(),
            run_id.to_string(),
            opts.clone(),
            reporter.clone(),
        );
        tokio::spawn(async move { run_stack(&engine, &lab, &run_id, &opts, reporter).await })
    };
    let outcome = match task.await {
        Ok(result) => result,
        Err(e) => Err(EnvError::new(format!("the run crashed: {e}"))),
    };
    let removed = stack::teardown(engine, run_id).await;
    unregister(run_id);
    reporter.event(&Event::TornDown {
        lab: lab.name.clone(),
        removed: *removed.as_ref().unwrap_or(&0),
    });

    let (services, scenarios, mut error) = match outcome {
        Ok((services, scenarios)) => (services, scenarios, None),
        Err(e) => (Vec::new(), Vec::new(), Some(describe(&e))),
    };
    if let Err(e) = removed {
        error.get_or_insert(format!("teardown: {}", describe(&e)));
    }
    let verdict = if error.is_some() {
        Verdict::Unknown
    } else {
        Verdict::merge_all(scenarios.iter().map(|s: &ScenarioReport| s.verdict))
    };
    let report = LabReport {
        name: lab.name.clone(),
        run_id: run_id.to_string(),
        title: lab.title.clone(),
        file: lab.file.display().to_string(),
        services,
        scenarios,
        verdict,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    reporter.event(&Event::LabFinished {
        report: report.clone(),
    });
    report
}

/// An environment error with its fix, as one text.
pub fn describe(e: &EnvError) -> String {
    match &e.hint {
        Some(h) => format!("{}\n  fix: {h}", e.message),
        None => e.message.clone(),
    }
}

async fn run_stack(
    engine: &Engine,
    lab: &Lab,
    run_id: &str,
    opts: &RunOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<(Vec<ServiceReport>, Vec<ScenarioReport>), EnvError> {
    let stack = Arc::new(
        Stack::start(
            engine,
            run_id,
            lab,
            StackOptions {
                keep: false,
                source: opts.source,
            },
            reporter.as_ref(),
        )
        .await?,
    );
    let on_demand = Arc::new(OnDemand::new(stack.clone(), lab.services.clone()));
    let announced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let services = service_reports(&stack);
    let selected = selected(lab, opts);
    let rounds = opts.repeat.max(1);
    let mut runs: Vec<Vec<ScenarioReport>> = vec![Vec::new(); selected.len()];
    for round in 1..=rounds {
        if rounds > 1 {
            reporter.event(&Event::RoundStarted {
                lab: lab.name.clone(),
                round,
                rounds,
            });
        }
        for (scenario, runs) in selected.iter().zip(&mut runs) {
            let solution = solution_for(&stack, lab, scenario, round, opts, &reporter, &announced);
            let run = ScenarioRun {
                lab,
                scenario,
                round,
                opts,
                solution,
                on_demand: &on_demand,
            };
            runs.push(run_and_heal(&stack, run, &reporter).await?);
        }
    }
    let scenarios = runs.into_iter().map(repeat::fold).collect();
    Ok((services, scenarios))
}

/// The scenarios `--scenario` selects (all when it names none), in file
/// order: with `--solution` the challenge scenarios, else the others.
pub fn selected<'a>(lab: &'a Lab, opts: &RunOptions) -> Vec<&'a Scenario> {
    lab.scenarios
        .iter()
        .filter(|s| s.challenge == opts.solution.is_some())
        .filter(|s| opts.scenarios.is_empty() || opts.scenarios.contains(&s.name))
        .collect()
}

/// Sends the program's start and lines to the reporter; the start (command
/// and environment) is told once per lab.
struct ToReporter {
    reporter: Arc<dyn Reporter>,
    lab: String,
    scenario: String,
    announced: Arc<std::sync::atomic::AtomicBool>,
}

impl challenge::Listener for ToReporter {
    fn started(&self, command: &str, instances: u32, env: &[(String, String)]) {
        if self
            .announced
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        self.reporter.event(&Event::SolutionStarted {
            lab: self.lab.clone(),
            scenario: self.scenario.clone(),
            command: command.to_string(),
            instances,
            env: env.to_vec(),
        });
    }

    fn line(&self, instance: u32, line: &str) {
        self.reporter.event(&Event::SolutionOutput {
            lab: self.lab.clone(),
            instance: format!("solution-{instance}"),
            line: line.to_string(),
        });
    }
}

/// The learner's program for a challenge scenario run with `--solution`.
fn solution_for(
    stack: &Stack,
    lab: &Lab,
    scenario: &Scenario,
    round: u32,
    opts: &RunOptions,
    reporter: &Arc<dyn Reporter>,
    announced: &Arc<std::sync::atomic::AtomicBool>,
) -> Option<Arc<Solution>> {
    let given = opts.solution.as_deref()?;
    let c = lab.challenge.as_ref()?;
    if !scenario.challenge {
        return None;
    }
    // Validation made sure the count is within bounds.
    let instances = c.instances.count(&scenario.params).unwrap_or(1);
    let endpoints: Vec<_> = stack.services.iter().map(|s| s.endpoint.clone()).collect();
    let env = challenge::env::contract(
        &endpoints,
        &namespace(&stack.run_id, &scenario.name, round),
        &scenario.params,
        instances,
    );
    let listener = Arc::new(ToReporter {
        reporter: reporter.clone(),
        lab: lab.name.clone(),
        scenario: scenario.name.clone(),
        announced: announced.clone(),
    });
    Some(Solution::new(
        challenge::command_for(lab, given),
        instances,
        c.role,
        env,
        listener,
    ))
}

/// One scenario's run: what it runs, and with what.
struct ScenarioRun<'a> {
    lab: &'a Lab,
    scenario: &'a Scenario,
    round: u32,
    opts: &'a RunOptions,
    /// The learner's program, in a challenge scenario.
    solution: Option<Arc<Solution>>,
    /// Instances the exercise starts while it runs.
    on_demand: &'a Arc<OnDemand>,
}

/// Runs one scenario once, reports it, and heals the stack if it had faults
/// so the next scenario (or the next round) starts healthy.
async fn run_and_heal(
    stack: &Stack,
    run: ScenarioRun<'_>,
    reporter: &Arc<dyn Reporter>,
) -> Result<ScenarioReport, EnvError> {
    let (lab, scenario) = (run.lab, run.scenario);
    reporter.event(&Event::ScenarioStarted {
        lab: lab.name.clone(),
        scenario: scenario.name.clone(),
    });
    let report = run_scenario(stack, run).await;
    reporter.event(&Event::ScenarioFinished {
        lab: lab.name.clone(),
        report: report.clone(),
    });
    if !scenario.faults.is_empty() {
        faults::heal(stack).await?;
    }
    Ok(report)
}

/// One fault step: waits for its moment, applies the action to every target
/// and, with `for:`, applies the inverse that long after the action returned
/// (never earlier, however slow the action was). Both go in the timeline;
/// errors are collected, not fatal, so the exercise still ends and reports.
async fn fault_step(
    stack: &Stack,
    fault: &Fault,
    timeline: &Timeline,
    errors: &Mutex<Vec<String>>,
    solution: Option<&Arc<Solution>>,
) {
    let failed = |e: EnvError| errors.lock().expect("fault errors").push(describe(&e));
    match &fault.when {
        When::At(d) => tokio::time::sleep(d.saturating_sub(timeline.elapsed())).await,
        When::After(mark) => timeline.wait_for(mark).await,
    }
    if let Some(target) = crate::lab::challenge::parse_target(&fault.service) {
        let target = match (target, &fault.when) {
            (Target::All, _) => None,
            (Target::Instance(i), _) => Some(i),
            (Target::AtMark, When::After(mark)) => match timeline.reached_by(mark) {
                Some(i) => Some(i),
                None => {
                    failed(EnvError::new(format!(
                        "fault on `{}`: no instance is recorded as reaching `{mark}`",
                        fault.service
                    )));
                    return;
                }
            },
            // Validation allows `solution-at-mark` only with `after:`.
            (Target::AtMark, When::At(_)) => return,
        };
        let Some(solution) = solution else {
            failed(EnvError::new(format!(
                "fault on `{}`, but no program runs",
                fault.service
            )));
            return;
        };
        // Name the instance a `solution-at-mark` fault resolved to.
        let name = match target {
            Some(i) if fault.service != format!("solution-{i}") => {
                format!("solution-{i} ({})", fault.service)
            }
            _ => fault.service.clone(),
        };
        timeline.record("fault", format!("{} {name}", fault.action.name()));
        if let Err(e) = solution.apply(target, fault.action).await {
            failed(EnvError::new(e));
            return;
        }
        if let (Some(lasts), Some(inverse)) = (fault.lasts, fault.action.inverse()) {
            tokio::time::sleep(lasts).await;
            timeline.record("fault", format!("{} {name}", inverse.name()));
            if let Err(e) = solution.apply(target, inverse).await {
                failed(EnvError::new(e));
            }
        }
        return;
    }
    if fault.action.network_wide() {
        network_fault(stack, fault, timeline, &failed).await;
        return;
    }
    let mut heals = Vec::new();
    for target in stack.targets(&fault.service) {
        timeline.record(
            "fault",
            format!("{} {}", fault.action.name(), target.instance),
        );
        match faults::apply(stack, target, fault.action).await {
            Ok(()) => {
                if let (Some(lasts), Some(inverse)) = (fault.lasts, fault.action.inverse()) {
                    heals.push((tokio::time::Instant::now() + lasts, target, inverse));
                }
            }
            Err(e) => failed(e),
        }
    }
    for (at, target, inverse) in heals {
        tokio::time::sleep_until(at).await;
        timeline.record("fault", format!("{} {}", inverse.name(), target.instance));
        if let Err(e) = faults::apply(stack, target, inverse).await {
            failed(e);
        }
    }
}

/// `partition` (and its `heal` after `for:`), or `heal`: the lab network
/// split into groups, or made whole again.
async fn network_fault(
    stack: &Stack,
    fault: &Fault,
    timeline: &Timeline,
    failed: &impl Fn(EnvError),
) {
    if fault.action == FaultAction::Partition {
        let groups: Vec<Vec<&Started>> = fault
            .groups
            .iter()
            .map(|g| g.iter().flat_map(|name| stack.targets(name)).collect())
            .collect();
        let sides: Vec<String> = fault
            .groups
            .iter()
            .map(|g| format!("[{}]", g.join(", ")))
            .collect();
        timeline.record("fault", format!("partition {}", sides.join(" | ")));
        if let Err(e) = faults::partition(stack, &groups).await {
            failed(e);
            return;
        }
        let Some(lasts) = fault.lasts else { return };
        tokio::time::sleep(lasts).await;
    }
    timeline.record("fault", "heal");
    if let Err(e) = faults::heal_partition(stack).await {
        failed(e);
    }
}

/// What `up` and the report show of each service.
pub fn service_reports(stack: &Stack) -> Vec<ServiceReport> {
    stack
        .services
        .iter()
        .map(|s| ServiceReport {
            name: s.instance.clone(),
            kind: s.kind.clone(),
            image: s.image.clone(),
            url: s.endpoint.url.clone(),
            ready_ms: s.ready_ms,
        })
        .collect()
}

/// The exercise's namespace: unique per run, scenario and round, so a
/// repeated scenario never sees the keys, queues or topics of its last run.
fn namespace(run_id: &str, scenario: &str, round: u32) -> String {
    match round {
        1 => format!("infralab:{run_id}:{scenario}"),
        n => format!("infralab:{run_id}:{scenario}:{n}"),
    }
}

async fn run_scenario(stack: &Stack, run: ScenarioRun<'_>) -> ScenarioReport {
    let ScenarioRun {
        lab,
        scenario,
        round,
        opts,
        solution,
        on_demand,
    } = run;
    let started = Instant::now();
    let timeline = Timeline::default();
    let mut ctx = Ctx::new(
        scenario.params.clone(),
        stack.endpoints(),
        namespace(&stack.run_id, &scenario.name, round),
        timeline.clone(),
    );
    if let Some(s) = &solution {
        ctx = ctx.with_solution(s.clone());
    }
    ctx = ctx.with_functions(on_demand.clone());
    let fault_errors = Mutex::new(Vec::new());
    let fault_steps = join_all(
        scenario
            .faults
            .iter()
            .map(|fault| fault_step(stack, fault, &timeline, &fault_errors, solution.as_ref())),
    );
    let exercise = tokio::time::timeout(opts.scenario_timeout, lab.exercise.run(&ctx));
    // Faults still waiting when the exercise ends never fire.
    let outcome = tokio::select! {
        outcome = exercise => outcome,
        _ = async { fault_steps.await; std::future::pending::<()>().await } => unreachable!(),
    };
    let (observations, mut error) = match outcome {
        Ok(Ok(obs)) => (obs, None),
        Ok(Err(e)) => (Default::default(), Some(e.to_string())),
        Err(_) => (
            Default::default(),
            Some(format!(
                "the exercise did not finish within {} s",
                opts.scenario_timeout.as_secs()
            )),
        ),
    };
    // Instances the exercise started and left go with the scenario.
    on_demand.clear().await;
    // The program stops with the scenario (SIGTERM, grace, SIGKILL); a
    // program that failed on its own, or never ran, leaves no PASS.
    if let Some(s) = &solution {
        s.stop().await;
        let mut problems = s.failures();
        if !s.was_started() && error.is_none() {
            problems.push(format!(
                "exercise `{}` never started the program",
                lab.exercise.name()
            ));
        }
        append_errors(&mut error, problems);
    }
    append_errors(&mut error, fault_errors.into_inner().expect("fault errors"));
    let marks: Vec<String> = timeline
        .events()
        .into_iter()
        .filter(|e| e.source == "exercise")
        .map(|e| e.what)
        .collect();
    let (observations, problems) = exercise::tidy(lab.exercise, observations, &marks);
    if !problems.is_empty() {
        error = Some(
            error
                .into_iter()
                .chain(problems)
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    let checks = check::evaluate(&scenario.expect, &observations, &scenario.params);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.observation.as_str())
        .collect();
    let evidence = ctx
        .take_evidence()
        .into_iter()
        .filter(|e| failed.contains(&e.observation.as_str()))
        .collect();
    let mut verdict = Verdict::merge_all(checks.iter().map(|c| c.verdict));
    if error.is_some() {
        verdict = verdict.merge(Verdict::Unknown);
    }
    ScenarioReport {
        name: scenario.name.clone(),
        params: scenario.params.clone(),
        observations,
        checks,
        verdict,
        error,
        timeline: timeline.events(),
        duration_ms: started.elapsed().as_millis() as u64,
        repeats: None,
        evidence,
        solution: solution.as_ref().map(|s| s.report()),
    }
}

/// Adds `more` to a scenario's error, `; `-separated; nothing to add leaves it as it is.
fn append_errors(error: &mut Option<String>, more: Vec<String>) {
    if !more.is_empty() {
        *error = Some(
            error
                .take()
                .into_iter()
                .chain(more)
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_of_a_scenario_gets_its_own_namespace() {
        assert_eq!(namespace("ab12", "setnx", 1), "infralab:ab12:setnx");
        assert_eq!(namespace("ab12", "setnx", 2), "infralab:ab12:setnx:2");
        assert_ne!(namespace("ab12", "setnx", 2), namespace("ab12", "setnx", 3));
    }
}
