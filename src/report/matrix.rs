//! The matrix of `validate --solutions`: each declared solution × each
//! challenge scenario, with the verdict it got against the one it declared;
//! as data (JSON) and as a text table.

use serde::Serialize;

use crate::check::Verdict;
use crate::report::words::{aligned, format_ms};

/// One solution's row of the matrix.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Solution name.
    pub solution: String,
    /// The declared verdict (`pass`, `fail: a, b`).
    pub declared: String,
    /// The command that ran.
    pub command: String,
    /// Why it did not run (a missing program), if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// One cell per challenge scenario.
    pub scenarios: Vec<Cell>,
    /// Where it did not get its declared verdict.
    pub defects: Vec<String>,
    /// Got its declared verdict in every run.
    pub ok: bool,
    /// Wall time (services, scenarios, teardown).
    pub duration_ms: u64,
}

/// One solution on one scenario.
#[derive(Debug, Serialize, PartialEq)]
pub struct Cell {
    /// Scenario name.
    pub scenario: String,
    /// Merged verdict over the runs.
    pub verdict: Verdict,
    /// Runs.
    pub runs: u32,
    /// Runs that passed.
    pub passed: u32,
    /// Expectations that failed, with how many runs they failed in.
    pub failed: Vec<(String, u32)>,
    /// Expectations that could not be decided.
    pub unknown: Vec<String>,
    /// Why it could not run, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One lab's matrix.
#[derive(Debug, Serialize)]
pub struct Matrix {
    /// Lab name.
    pub lab: String,
    /// Runs per scenario.
    pub repeat: u32,
    /// Challenge scenarios, in file order.
    pub scenarios: Vec<String>,
    /// One row per solution.
    pub solutions: Vec<Row>,
    /// Wall time.
    pub duration_ms: u64,
}

fn cell_text(c: &Cell) -> String {
    let mut text = c.verdict.label().to_string();
    if !c.failed.is_empty() {
        let names: Vec<&str> = c.failed.iter().map(|(n, _)| n.as_str()).collect();
        text += &format!(" {}", names.join(","));
    }
    if c.runs > 1 {
        text += &format!(" ({}/{} passed)", c.passed, c.runs);
    }
    text
}

/// The matrix as a text table, then the defects.
pub fn render(m: &Matrix) -> String {
    let mut header = vec!["solution".to_string(), "declared".to_string()];
    header.extend(m.scenarios.iter().cloned());
    header.push("result".into());
    header.push("time".into());
    let rows: Vec<Vec<String>> = m
        .solutions
        .iter()
        .map(|r| {
            let mut cells = vec![r.solution.clone(), r.declared.clone()];
            for s in &m.scenarios {
                cells.push(
                    r.scenarios
                        .iter()
                        .find(|c| &c.scenario == s)
                        .map_or("—".into(), cell_text),
                );
            }
            cells.push(match (&r.skipped, r.ok) {
                (Some(_), _) => "skipped".into(),
                (None, true) => "ok".into(),
                (None, false) => "DEFECT".into(),
            });
            cells.push(format_ms(r.duration_ms));
            cells
        })
        .collect();
    let runs = if m.repeat > 1 {
        format!(", {} runs each", m.repeat)
    } else {
        String::new()
    };
    let mut out = format!(
        "\n{}: {} solutions × {} challenge scenarios{runs} ({})\n",
        m.lab,
        m.solutions.len(),
        m.scenarios.len(),
        format_ms(m.duration_ms)
    );
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    out += &aligned(&header, &rows);
    for r in &m.solutions {
        if let Some(why) = &r.skipped {
            out += &format!("  {} skipped: {why}\n", r.solution);
        }
        for d in &r.defects {
            out += &format!("  {} DEFECT: {d}\n", r.solution);
        }
    }
    let defects = m.solutions.iter().filter(|r| !r.ok).count();
    out += &if defects == 0 {
        "  every solution got its declared verdict\n".to_string()
    } else {
        format!("  {defects} solution(s) did not get their declared verdict\n")
    };
    out
}
