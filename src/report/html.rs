//! The HTML report: [`write`] renders a [`RunReport`] as one self-contained
//! page (inline CSS and SVG, no script, no font or image to fetch), so it can
//! be mailed, attached to a CI run or opened offline.
//!
//! This module writes the page frame, the run summary and the text helpers;
//! [`lab`] each lab (services and readiness, scenario durations, latency
//! percentiles across scenarios), [`scenario`] each scenario (verdict table,
//! parameters, timeline, list bars). Charts come from [`charts`] and
//! [`timeline`] (plotters, SVG backend). Every verdict is written as a word
//! next to its colour.

mod charts;
mod lab;
mod scenario;
mod timeline;

use std::fmt::Write as _;
use std::io::{self, Write};

use serde_json::Value;

use crate::check::{CheckResult, Verdict};
use crate::event::{LabReport, RunReport, ScenarioReport};

/// Writes `report` as one HTML page.
pub fn write(report: &RunReport, out: &mut dyn Write) -> io::Result<()> {
    out.write_all(render(report)?.as_bytes())
}

/// The page as a string.
pub fn render(report: &RunReport) -> io::Result<String> {
    let mut page = String::new();
    page.push_str(HEAD);
    summary(report, &mut page);
    for lab in &report.labs {
        lab::lab_section(lab, &mut page)?;
    }
    page.push_str("<footer>Written by infralab. The same data as <code>--format json</code>.</footer>\n</main>\n</body>\n</html>\n");
    Ok(page)
}

const HEAD: &str = concat!(
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    "<title>infralab report</title>\n<style>\n",
    include_str!("html/style.css"),
    "</style>\n</head>\n<body>\n<main>\n"
);

// ---------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A fragment identifier made of `[a-z0-9-]`.
fn slug(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("--")
}

/// A value as people read it: integers as integers, floats with at most two
/// decimals, strings bare, lists as `[3, 4, 3]`.
fn value_text(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => {
            let s = format!("{:.2}", n.as_f64().unwrap_or(f64::NAN));
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s == "-0" { "0".into() } else { s.into() }
        }
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(value_text).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// `312 ms` below a second, `4.2 s` above.
fn ms_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The verdict as a coloured badge that also reads without colour.
fn badge(verdict: Verdict) -> String {
    let (class, mark) = match verdict {
        Verdict::Pass => ("pass", "✓"),
        Verdict::Fail => ("fail", "✗"),
        Verdict::Unknown => ("unknown", "?"),
    };
    format!(
        "<span class=\"badge {class}\"><span aria-hidden=\"true\">{mark}</span> {}</span>",
        verdict.label()
    )
}

fn verdict_class(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Unknown => "unknown",
    }
}

/// One check that did not pass, in words.
fn check_problem(check: &CheckResult) -> String {
    let observed = check
        .observed
        .as_ref()
        .map_or("not observed".to_string(), |v| {
            format!("observed {}", value_text(v))
        });
    format!(
        "{}: expected {}, {observed}",
        check.observation, check.expect
    )
}

/// Why a scenario did not pass: its error, then its failed and undecided
/// checks.
fn problems(s: &ScenarioReport) -> Vec<String> {
    let mut out: Vec<String> = s.error.iter().cloned().collect();
    for verdict in [Verdict::Fail, Verdict::Unknown] {
        out.extend(
            s.checks
                .iter()
                .filter(|c| c.verdict == verdict)
                .map(check_problem),
        );
    }
    out
}

/// An SVG chart in a captioned figure.
fn figure(page: &mut String, caption: &str, svg: &str) {
    let _ = write!(
        page,
        "<figure><figcaption>{}</figcaption>\n{svg}</figure>\n",
        esc(caption)
    );
}

// ---------------------------------------------------------------------------
// Run summary
// ---------------------------------------------------------------------------

fn summary(report: &RunReport, page: &mut String) {
    let scenarios: Vec<(&LabReport, &ScenarioReport)> = report
        .labs
        .iter()
        .flat_map(|l| l.scenarios.iter().map(move |s| (l, s)))
        .collect();
    let count = |v: Verdict| scenarios.iter().filter(|(_, s)| s.verdict == v).count();
    let _ = write!(
        page,
        "<header class=\"run {}\">\n<h1>infralab report {}</h1>\n\
         <p class=\"meta\">{}, {}: {} passed, {} failed, {} unknown · \
         {} · run <code>{}</code></p>\n</header>\n",
        verdict_class(report.verdict),
        badge(report.verdict),
        plural(report.labs.len(), "lab", "labs"),
        plural(scenarios.len(), "scenario", "scenarios"),
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Unknown),
        ms_text(report.duration_ms),
        esc(&report.run_id),
    );
    if report.labs.is_empty() {
        page.push_str("<p>No labs ran.</p>\n");
        return;
    }
    page.push_str(
        "<nav aria-label=\"contents\"><table class=\"overview\">\n<thead><tr>\
         <th>lab</th><th>scenario</th><th>verdict</th><th class=\"num\">time</th>\
         <th>why not PASS</th></tr></thead>\n<tbody>\n",
    );
    for lab in &report.labs {
        // The lab's name once, spanning its rows.
        let rows = lab.scenarios.len() + usize::from(lab.error.is_some());
        let mut lab_cell = format!(
            "<td rowspan=\"{}\" class=\"lab-cell\"><a href=\"#{}\">{}</a></td>",
            rows.max(1),
            slug(&["lab", &lab.name]),
            esc(&lab.name)
        );
        if let Some(error) = &lab.error {
            let _ = writeln!(
                page,
                "<tr class=\"{}\">{}<td class=\"name\">—</td><td>{}</td>\
                 <td class=\"num\">{}</td><td class=\"why\">{}</td></tr>",
                verdict_class(lab.verdict),
                std::mem::take(&mut lab_cell),
                badge(lab.verdict),
                ms_text(lab.duration_ms),
                esc(error)
            );
        }
        for s in &lab.scenarios {
            let why = problems(s)
                .iter()
                .map(|p| esc(p))
                .collect::<Vec<_>>()
                .join("<br>");
            let _ = writeln!(
                page,
                "<tr class=\"{}\">{}<td class=\"name\"><a href=\"#{}\">{}</a></td>\
                 <td>{}</td><td class=\"num\">{}</td><td class=\"why\">{why}</td></tr>",
                verdict_class(s.verdict),
                std::mem::take(&mut lab_cell),
                slug(&["lab", &lab.name, &s.name]),
                esc(&s.name),
                badge(s.verdict),
                ms_text(s.duration_ms),
            );
        }
    }
    page.push_str("</tbody></table></nav>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TimelineEvent;
    use crate::report::sample;
    use serde_json::json;

    fn sample_with_charts() -> RunReport {
        let mut report = sample::report();
        let lab = &mut report.labs[0];
        let setnx = &mut lab.scenarios[0];
        setnx
            .observations
            .insert("per_consumer".into(), json!([400, 398, 402]));
        setnx.observations.insert("p50_ms".into(), json!(1.25));
        setnx.checks[0].expect = "== workers - workers".into();
        setnx.checks[0].resolved = Some("== 0".into());
        setnx.timeline.push(TimelineEvent {
            at_ms: 100,
            source: "fault".into(),
            what: "pause redis".into(),
        });
        report
    }

    #[test]
    fn page_shows_every_lab_and_scenario_with_charts_and_no_addresses() {
        let report = sample_with_charts();
        let html = render(&report).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.ends_with("</html>\n"));
        for lab in &report.labs {
            let id = format!("id=\"{}\"", slug(&["lab", &lab.name]));
            assert!(html.contains(&id), "{id}");
            for s in &lab.scenarios {
                let id = format!("id=\"{}\"", slug(&["lab", &lab.name, &s.name]));
                assert!(html.contains(&id), "{id}");
            }
        }
        // Charts: durations, services, percentiles, the timeline, the list.
        let svgs = html.matches("<svg ").count();
        assert!(svgs >= 5, "{svgs} charts");
        assert!(html.contains("Scenario durations"));
        assert!(html.contains("latency: percentiles per scenario"));
        assert!(html.contains("per_consumer: 3 values, total 1200"));
        assert!(html.contains("redis paused until the end"));
        assert!(html.contains(
            "<code>== workers - workers</code> <span class=\"resolved\">→ <code>== 0</code></span>"
        ));
        // Self-contained: nothing to fetch, no script.
        assert!(!html.contains("http://") && !html.contains("https://"));
        for banned in ["<script", "<link", "src=", "@import", "url("] {
            assert!(!html.contains(banned), "{banned}");
        }
    }

    #[test]
    fn verdicts_read_without_colour() {
        let html = render(&sample::report()).unwrap();
        for label in ["✓</span> PASS", "✗</span> FAIL", "?</span> UNKNOWN"] {
            assert!(html.contains(label), "{label}");
        }
        // The verdict table: as written, observed, note; unchecked rows.
        assert!(html.contains(
            "<td class=\"name\"><code>lost_updates</code></td><td><code>&gt; 0</code></td>"
        ));
        assert!(html.contains("not observed"));
        assert!(html.contains("<td class=\"num\">3.46</td><td class=\"muted\">not checked</td>"));
        assert!(html.contains(&esc(sample::SETUP_ERROR)));
        assert!(html.contains("lost_updates: expected &gt; 0, observed 0"));
        assert!(html.contains("2 labs, 3 scenarios: 1 passed, 1 failed, 1 unknown"));
    }

    #[test]
    fn text_is_escaped() {
        let mut report = sample::report();
        report.labs[0].scenarios[0].name = "<script>alert(1)</script>".into();
        let html = render(&report).unwrap();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn list_items_are_named_from_the_observation() {
        assert_eq!(scenario::item_word("per_consumer"), "consumer");
        assert_eq!(scenario::item_word("keys_per_node"), "node");
        assert_eq!(scenario::item_word("per_group_received"), "group");
        assert_eq!(scenario::item_word("counts"), "item");
    }

    #[test]
    fn percentiles_group_by_family_in_order() {
        let report = sample_with_charts();
        let families = lab::percentile_families(&report.labs[0].scenarios);
        assert_eq!(families.len(), 1);
        let (family, bars) = &families[0];
        assert_eq!(family, "latency");
        let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["setnx · p50", "setnx · p99"]);
    }
}
