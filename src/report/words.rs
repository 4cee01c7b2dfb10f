//! How values, durations and checks read in words: shared by every renderer
//! (and `show`), so no renderer imports another.

use serde_json::Value;

use crate::check::{CheckResult, Verdict};
use crate::event::ScenarioReport;

/// Formats an observed value for people: integers as integers, floats with at
/// most two decimals, strings without quotes, anything else as compact JSON.
pub fn format_value(value: &Value) -> String {
    match value {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (_, Some(u)) => u.to_string(),
            _ => format_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn format_float(f: f64) -> String {
    let s = format!("{f:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// A duration as people read it: `312 ms` below a second, `4.2 s` above.
pub fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// The predicate as written, with its value when it names parameters or
/// observations: `== workers * increments (= 400)`.
pub fn expectation(check: &CheckResult) -> String {
    match &check.resolved {
        Some(r) => format!("{} ({})", check.expect, r),
        None => check.expect.clone(),
    }
}

/// One check that did not pass, in words:
/// `lost_updates: expected > 0, observed 0`.
pub fn check_line(check: &CheckResult) -> String {
    let head = format!("{}: expected {}", check.observation, expectation(check));
    match (&check.observed, &check.note) {
        (Some(v), None) => format!("{head}, observed {}", format_value(v)),
        (Some(v), Some(note)) => format!("{head}, observed {} ({note})", format_value(v)),
        (None, Some(note)) => format!("{head}, {note}"),
        (None, None) => format!("{head}, not observed"),
    }
}

/// Why a scenario did not pass: the exercise error, then every failed check,
/// then every undecided one. Empty for a passing scenario.
pub fn problems(scenario: &ScenarioReport) -> Vec<String> {
    let mut out: Vec<String> = scenario.error.iter().cloned().collect();
    for verdict in [Verdict::Fail, Verdict::Unknown] {
        out.extend(
            scenario
                .checks
                .iter()
                .filter(|c| c.verdict == verdict)
                .map(check_line),
        );
    }
    out
}

pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Rows under a header, columns padded to their widest cell, indented by two;
/// the last column is not padded (no trailing spaces).
pub fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_formatted_for_people() {
        assert_eq!(format_value(&json!(42)), "42");
        assert_eq!(format_value(&json!(u64::MAX)), u64::MAX.to_string());
        assert_eq!(format_value(&json!(0.33333)), "0.33");
        assert_eq!(format_value(&json!(1.5)), "1.5");
        assert_eq!(format_value(&json!(2.0)), "2");
        assert_eq!(format_value(&json!(-0.001)), "0");
        assert_eq!(format_value(&json!("h2")), "h2");
        assert_eq!(format_value(&json!(true)), "true");
        assert_eq!(format_ms(312), "312 ms");
        assert_eq!(format_ms(4204), "4.2 s");
    }
}
