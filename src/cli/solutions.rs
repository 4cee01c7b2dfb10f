//! `infralab validate --solutions`: every solution a challenge declares runs
//! on the challenge scenarios, and must get its declared verdict: `pass`
//! everywhere, or fail exactly the declared expectations (each steadily, in
//! at least one scenario) and nothing else. Failing for another reason, an
//! undecided scenario, or passing when it should fail is a defect of the lab.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CliError, Format};
use crate::check::Verdict;
use crate::engine::Engine;
use crate::engine::stack;
use crate::event::{LabReport, Reporter, ScenarioReport, Tagged};
use crate::images::Source;
use crate::lab::{Lab, SolutionDecl, SolutionExpect};
use crate::report::matrix::{Cell, Matrix, Row, render};
use crate::report::terminal::{ColorChoice, Progress};
use crate::runner::{self, RunOptions};
use crate::{challenge, exit};
use futures_util::StreamExt;

/// How `validate --solutions` runs.
pub struct Settings {
    /// Where images come from.
    pub source: Source,
    /// Runs of every scenario per solution.
    pub repeat: u32,
    /// Solutions at once (`--jobs N`), each on services of its own.
    pub jobs: usize,
    /// Text matrix or JSON.
    pub format: Format,
    /// Colour of the progress.
    pub color: ColorChoice,
    /// `-v`: the programs' output.
    pub verbose: bool,
}

/// Runs every declared solution of every lab and prints the matrices.
pub async fn validate(labs: Vec<Arc<Lab>>, settings: &Settings) -> Result<i32, CliError> {
    if labs.is_empty() {
        return Err(CliError::Input(
            "no lab with a challenge; `infralab list` marks the labs that have one".into(),
        ));
    }
    for lab in &labs {
        let names = lab.challenge.iter().flat_map(|c| &c.solutions);
        if let Some(why) = challenge::unbuilt_examples(lab, names.map(|s| s.name.as_str())) {
            return Err(CliError::Env(crate::engine::EnvError::new(why)));
        }
    }
    let engine = Engine::connect().await?;
    let progress = Arc::new(Progress::new(settings.color));
    progress.set_verbose(settings.verbose);
    progress.set_parallel(settings.jobs > 1);
    let reporter: Arc<dyn Reporter> = progress.clone();
    let all = async {
        let mut matrices = Vec::new();
        for lab in &labs {
            matrices.push(lab_matrix(&engine, lab, settings, reporter.clone()).await);
        }
        matrices
    };
    let matrices = tokio::select! {
        m = all => m,
        _ = super::commands::interrupted() => {
            return Ok(super::commands::tear_down_interrupted(&progress, &engine).await);
        }
    };
    progress.finish();
    match settings.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "labs": matrices }))
                .unwrap_or_default()
        ),
        Format::Text => {
            for m in &matrices {
                print!("{}", render(m));
            }
        }
    }
    let ok = matrices.iter().all(|m| m.solutions.iter().all(|r| r.ok));
    Ok(if ok { exit::PASSED } else { exit::CHECK_FAILED })
}

async fn lab_matrix(
    engine: &Engine,
    lab: &Arc<Lab>,
    settings: &Settings,
    reporter: Arc<dyn Reporter>,
) -> Matrix {
    let started = Instant::now();
    let scenarios: Vec<String> = lab
        .scenarios
        .iter()
        .filter(|s| s.challenge)
        .map(|s| s.name.clone())
        .collect();
    let declared = lab
        .challenge
        .as_ref()
        .map(|c| c.solutions.clone())
        .unwrap_or_default();
    // Up to `jobs` solutions at once, each with its own run id (services,
    // network); the rows keep the order the lab declares. The progress
    // names the solution, and a broken one as meant to fail, so its red
    // FAIL line reads as the verdict it should get.
    let runs = declared.iter().map(|decl| {
        let reporter: Arc<dyn Reporter> = Arc::new(Tagged {
            inner: reporter.clone(),
            tag: match decl.expect {
                SolutionExpect::Pass => decl.name.clone(),
                SolutionExpect::Fail { .. } => format!("{}, meant to fail", decl.name),
            },
        });
        solution_row(engine, lab, decl, settings, reporter)
    });
    let rows = futures_util::stream::iter(runs)
        .buffered(settings.jobs.max(1))
        .collect()
        .await;
    Matrix {
        lab: lab.name.clone(),
        repeat: settings.repeat,
        scenarios,
        solutions: rows,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

/// One declared solution on the challenge scenarios, on services of its
/// own: its row of the matrix.
async fn solution_row(
    engine: &Engine,
    lab: &Arc<Lab>,
    decl: &SolutionDecl,
    settings: &Settings,
    reporter: Arc<dyn Reporter>,
) -> Row {
    let command = challenge::command_for(lab, &decl.name);
    if let Some(check) = decl.requires.as_deref()
        && !challenge::available(check).await
    {
        return Row {
            solution: decl.name.clone(),
            declared: decl.expect.text(),
            command,
            skipped: Some(format!("its requirement `{check}` fails on this host")),
            scenarios: Vec::new(),
            defects: Vec::new(),
            ok: true,
            duration_ms: 0,
        };
    }
    let opts = RunOptions {
        source: settings.source,
        scenarios: Vec::new(),
        scenario_timeout: Duration::from_secs(300),
        repeat: settings.repeat,
        jobs: 1,
        solution: Some(decl.name.clone()),
    };
    let run_id = stack::new_run_id();
    let report = runner::run_lab(engine, lab.clone(), &run_id, &opts, reporter).await;
    assess(decl, command, &report)
}

fn cell(s: &ScenarioReport) -> Cell {
    let (runs, passed) = match &s.repeats {
        Some(r) => (r.runs, r.passed),
        None => (1, u32::from(s.verdict == Verdict::Pass)),
    };
    let (failed, unknown) = match &s.repeats {
        Some(r) => (
            r.expectations
                .iter()
                .filter(|t| t.failed > 0)
                .map(|t| (t.observation.clone(), t.failed))
                .collect(),
            r.expectations
                .iter()
                .filter(|t| t.unknown > 0)
                .map(|t| t.observation.clone())
                .collect(),
        ),
        None => (
            s.checks
                .iter()
                .filter(|c| c.verdict == Verdict::Fail)
                .map(|c| (c.observation.clone(), 1))
                .collect(),
            s.checks
                .iter()
                .filter(|c| c.verdict == Verdict::Unknown)
                .map(|c| c.observation.clone())
                .collect(),
        ),
    };
    Cell {
        scenario: s.name.clone(),
        verdict: s.verdict,
        runs,
        passed,
        failed,
        unknown,
        error: s.error.clone(),
    }
}

/// Whether a solution got its declared verdict, from its lab report.
pub fn assess(decl: &SolutionDecl, command: String, report: &LabReport) -> Row {
    let cells: Vec<Cell> = report.scenarios.iter().map(cell).collect();
    let mut defects = Vec::new();
    if let Some(e) = &report.error {
        defects.push(format!("could not run: {e}"));
    }
    for c in &cells {
        if let Some(e) = &c.error {
            defects.push(format!("{}: could not be decided: {e}", c.scenario));
        } else if !c.unknown.is_empty() {
            defects.push(format!(
                "{}: undecided: {}",
                c.scenario,
                c.unknown.join(", ")
            ));
        }
    }
    match &decl.expect {
        SolutionExpect::Pass => {
            for c in &cells {
                for (name, times) in &c.failed {
                    defects.push(format!(
                        "{}: failed `{name}` in {times} of {} runs, but is declared to pass",
                        c.scenario, c.runs
                    ));
                }
            }
        }
        SolutionExpect::Fail { must: names, may } => {
            for c in &cells {
                for (name, times) in c
                    .failed
                    .iter()
                    .filter(|(n, _)| !names.contains(n) && !may.contains(n))
                {
                    defects.push(format!(
                        "{}: failed `{name}` in {times} of {} runs, which it is not declared to fail (it failed for another reason)",
                        c.scenario, c.runs
                    ));
                }
            }
            for name in names {
                let steady = cells
                    .iter()
                    .any(|c| c.failed.iter().any(|(n, t)| n == name && *t == c.runs));
                if !steady {
                    let seen: u32 = cells
                        .iter()
                        .flat_map(|c| c.failed.iter().filter(|(n, _)| n == name).map(|(_, t)| *t))
                        .max()
                        .unwrap_or(0);
                    defects.push(if seen == 0 {
                        format!("never failed `{name}`, which it is declared to fail")
                    } else {
                        format!(
                            "failed `{name}` in only {seen} of {} runs of any scenario",
                            cells.first().map_or(1, |c| c.runs)
                        )
                    });
                }
            }
        }
    }
    if cells.is_empty() && report.error.is_none() {
        defects.push("no challenge scenario ran".into());
    }
    Row {
        solution: decl.name.clone(),
        declared: decl.expect.text(),
        command,
        skipped: None,
        ok: defects.is_empty(),
        scenarios: cells,
        defects,
        duration_ms: report.duration_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckResult;
    use std::collections::BTreeMap;

    fn scenario(name: &str, failed: &[&str], passed: &[&str]) -> ScenarioReport {
        let check = |o: &&str, verdict| CheckResult {
            observation: o.to_string(),
            expect: "== 0".into(),
            resolved: None,
            observed: Some(serde_json::json!(1)),
            verdict,
            note: None,
        };
        let checks: Vec<CheckResult> = failed
            .iter()
            .map(|o| check(o, Verdict::Fail))
            .chain(passed.iter().map(|o| check(o, Verdict::Pass)))
            .collect();
        ScenarioReport {
            name: name.into(),
            params: BTreeMap::new(),
            observations: BTreeMap::new(),
            verdict: Verdict::merge_all(checks.iter().map(|c| c.verdict)),
            checks,
            error: None,
            timeline: vec![],
            duration_ms: 1,
            repeats: None,
            evidence: vec![],
            solution: None,
        }
    }

    fn lab(scenarios: Vec<ScenarioReport>) -> LabReport {
        LabReport {
            name: "l".into(),
            run_id: "r".into(),
            title: "t".into(),
            file: "f".into(),
            services: vec![],
            verdict: Verdict::Pass,
            scenarios,
            error: None,
            duration_ms: 1,
        }
    }

    fn decl(expect: SolutionExpect) -> SolutionDecl {
        SolutionDecl {
            name: "s".into(),
            description: None,
            run: "true".into(),
            expect,
            requires: None,
        }
    }

    #[test]
    fn a_broken_solution_must_fail_for_its_declared_reason_only() {
        let fail = decl(SolutionExpect::Fail {
            must: vec!["stalled".into()],
            may: vec!["final_counter".into()],
        });
        let right = lab(vec![
            scenario("a", &[], &["stalled", "lost_updates"]),
            scenario("b", &["stalled"], &["lost_updates"]),
        ]);
        assert!(assess(&fail, "x".into(), &right).ok);
        let with_consequence = lab(vec![scenario("b", &["stalled", "final_counter"], &[])]);
        assert!(assess(&fail, "x".into(), &with_consequence).ok);
        let other_reason = lab(vec![scenario("b", &["stalled", "lost_updates"], &[])]);
        let row = assess(&fail, "x".into(), &other_reason);
        assert!(!row.ok);
        assert!(
            row.defects[0].contains("another reason"),
            "{:?}",
            row.defects
        );
        let passing = lab(vec![scenario("b", &[], &["stalled"])]);
        let row = assess(&fail, "x".into(), &passing);
        assert!(
            row.defects[0].contains("never failed `stalled`"),
            "{:?}",
            row.defects
        );
    }

    #[test]
    fn a_reference_must_pass_everywhere() {
        let pass = decl(SolutionExpect::Pass);
        assert!(assess(&pass, "x".into(), &lab(vec![scenario("a", &[], &["x"])])).ok);
        let row = assess(&pass, "x".into(), &lab(vec![scenario("a", &["x"], &[])]));
        assert!(!row.ok);
        let mut broken = scenario("a", &[], &[]);
        broken.error = Some("`x` (solution-1) ended with exit 2".into());
        let row = assess(&pass, "x".into(), &lab(vec![broken]));
        assert!(
            row.defects[0].contains("could not be decided"),
            "{:?}",
            row.defects
        );
    }
}
