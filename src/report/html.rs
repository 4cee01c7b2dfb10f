//! The HTML report: [`write`] renders a [`RunReport`] as one self-contained
//! page (inline CSS and SVG, no script, no font or image to fetch), so it can
//! be mailed, attached to a CI run or opened offline.
//!
//! Per lab: services with their time to readiness, scenario durations and
//! latency percentiles compared across scenarios. Per scenario: the verdict
//! table, the parameters, the timeline (milestones and fault windows) and a
//! bar chart for each list observation (per consumer, per instance …).
//! Charts come from [`charts`] and [`timeline`] (plotters, SVG backend).
//! Every verdict is written as a word next to its colour.

mod charts;
mod timeline;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Write};

use serde_json::Value;

use super::{LabReport, RunReport, ScenarioReport};
use crate::check::{CheckResult, Verdict};
use charts::Bar;

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
        lab_section(lab, &mut page)?;
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
         <p class=\"meta\">{} lab(s), {} scenario(s): {} passed, {} failed, {} unknown · \
         {} · run <code>{}</code></p>\n</header>\n",
        verdict_class(report.verdict),
        badge(report.verdict),
        report.labs.len(),
        scenarios.len(),
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

// ---------------------------------------------------------------------------
// One lab
// ---------------------------------------------------------------------------

fn lab_section(lab: &LabReport, page: &mut String) -> io::Result<()> {
    let _ = write!(
        page,
        "<section class=\"lab\" id=\"{}\">\n<h2>{} <small>{}</small> {}</h2>\n\
         <p class=\"meta\"><code>{}</code> · {} · run <code>{}</code></p>\n",
        slug(&["lab", &lab.name]),
        esc(&lab.title),
        esc(&lab.name),
        badge(lab.verdict),
        esc(&lab.file),
        ms_text(lab.duration_ms),
        esc(&lab.run_id),
    );
    if let Some(error) = &lab.error {
        let _ = writeln!(
            page,
            "<p class=\"error\"><strong>Could not run:</strong> {}</p>",
            esc(error)
        );
    }
    services(lab, page)?;
    if lab.scenarios.len() > 1 {
        let bars: Vec<Bar> = lab
            .scenarios
            .iter()
            .map(|s| Bar {
                label: s.name.clone(),
                value: s.duration_ms as f64,
                color: charts::verdict_color(s.verdict),
                note: format!("{} · {}", s.verdict.label(), ms_text(s.duration_ms)),
            })
            .collect();
        figure(
            page,
            "Scenario durations (bar colour and label give the verdict)",
            &charts::hbars(&bars, "wall time", true)?,
        );
    }
    for (family, bars) in percentile_families(&lab.scenarios) {
        figure(
            page,
            &format!("{family}: percentiles per scenario (ms)"),
            &charts::hbars(&bars, "milliseconds", false)?,
        );
    }
    for s in &lab.scenarios {
        scenario_section(lab, s, page)?;
    }
    page.push_str("</section>\n");
    Ok(())
}

/// The services table and, beside it, their time from creation to the first
/// successful protocol probe (they are started together).
fn services(lab: &LabReport, page: &mut String) -> io::Result<()> {
    if lab.services.is_empty() {
        return Ok(());
    }
    page.push_str(
        "<h3 class=\"sub\">Services</h3>\n<table class=\"services\">\n<thead><tr><th>service</th>\
         <th>kind</th><th>image</th><th>connection</th><th class=\"num\">ready after</th></tr></thead>\n<tbody>\n",
    );
    for s in &lab.services {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>\
             <td class=\"num\">{}</td></tr>",
            esc(&s.name),
            esc(&s.kind),
            esc(&s.image),
            esc(&s.url),
            ms_text(s.ready_ms)
        );
    }
    page.push_str("</tbody></table>\n");
    let bars: Vec<Bar> = lab
        .services
        .iter()
        .map(|s| Bar {
            label: s.name.clone(),
            value: s.ready_ms as f64,
            color: charts::NEUTRAL,
            note: format!("ready after {}", ms_text(s.ready_ms)),
        })
        .collect();
    figure(
        page,
        "Service start → ready (containers start together; ready = first successful protocol probe)",
        &charts::hbars(&bars, "time since the container was created", true)?,
    );
    Ok(())
}

/// Observations named `<family>_p<NN>_ms` (or `p<NN>_ms`), grouped by family
/// as bars `scenario · pNN`, shaded by percentile. Families with fewer than
/// two values are left to the tables.
fn percentile_families(scenarios: &[ScenarioReport]) -> Vec<(String, Vec<Bar>)> {
    let parse = |name: &str| -> Option<(String, u32)> {
        let stem = name.strip_suffix("_ms")?;
        let (family, pct) = match stem.rsplit_once("_p") {
            Some((family, pct)) => (family.to_string(), pct),
            None => (String::new(), stem.strip_prefix('p')?),
        };
        let pct = pct.parse::<u32>().ok()?;
        Some((
            if family.is_empty() {
                "latency".into()
            } else {
                family
            },
            pct,
        ))
    };
    let mut families: Vec<String> = Vec::new();
    for s in scenarios {
        for name in s.observations.keys() {
            if let Some((family, _)) = parse(name)
                && !families.contains(&family)
            {
                families.push(family);
            }
        }
    }
    families
        .into_iter()
        .filter_map(|family| {
            let mut bars = Vec::new();
            for s in scenarios {
                let mut pcts: Vec<(u32, f64)> = s
                    .observations
                    .iter()
                    .filter_map(|(name, v)| {
                        let (f, pct) = parse(name)?;
                        (f == family).then_some((pct, v.as_f64()?))
                    })
                    .collect();
                pcts.sort_by_key(|(pct, _)| *pct);
                let shades = charts::PERCENTILE_SHADES.len();
                for (i, (pct, v)) in pcts.iter().enumerate() {
                    bars.push(Bar {
                        label: format!("{} · p{pct}", s.name),
                        value: *v,
                        color: charts::PERCENTILE_SHADES[i.min(shades - 1)],
                        note: format!("p{pct} {} ms", value_text(&Value::from(*v))),
                    });
                }
            }
            (bars.len() >= 2).then(|| (family.replace('_', " "), bars))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// One scenario
// ---------------------------------------------------------------------------

fn scenario_section(lab: &LabReport, s: &ScenarioReport, page: &mut String) -> io::Result<()> {
    let _ = write!(
        page,
        "<section class=\"scenario {}\" id=\"{}\">\n<h3>{} {} <small>{}</small></h3>\n",
        verdict_class(s.verdict),
        slug(&["lab", &lab.name, &s.name]),
        esc(&s.name),
        badge(s.verdict),
        ms_text(s.duration_ms),
    );
    if let Some(error) = &s.error {
        let _ = writeln!(
            page,
            "<p class=\"error\"><strong>Error:</strong> {}</p>",
            esc(error)
        );
    }
    checks_table(s, page);
    params(s, page);
    if let Some(svg) = timeline::svg_for(&s.timeline, s.duration_ms)? {
        figure(
            page,
            "Timeline: exercise milestones (●) and faults (▲); shaded = a service impaired",
            &svg,
        );
    }
    for (name, value) in &s.observations {
        let Some(items) = value.as_array() else {
            continue;
        };
        let numbers: Option<Vec<f64>> = items.iter().map(Value::as_f64).collect();
        match numbers {
            Some(values) if !values.is_empty() => {
                let sum: f64 = values.iter().sum();
                figure(
                    page,
                    &format!(
                        "{name}: {} values, total {}",
                        values.len(),
                        value_text(&Value::from(sum))
                    ),
                    &charts::vbars(&values, item_word(name), charts::NEUTRAL)?,
                );
            }
            _ => {}
        }
    }
    page.push_str("</section>\n");
    Ok(())
}

/// What one entry of a list observation stands for: `per_consumer` →
/// `consumer`, `keys_per_node` → `node`, `per_group_received` → `group`.
fn item_word(name: &str) -> &str {
    name.split_once("per_")
        .map(|(_, rest)| rest.split('_').next().unwrap_or(rest))
        .filter(|w| !w.is_empty())
        .unwrap_or("item")
}

/// Observation | expected (as written) | resolved | observed | verdict |
/// note; observations without an expectation follow, unjudged.
fn checks_table(s: &ScenarioReport, page: &mut String) {
    let checked: BTreeSet<&str> = s.checks.iter().map(|c| c.observation.as_str()).collect();
    let unchecked: Vec<(&String, &Value)> = s
        .observations
        .iter()
        .filter(|(name, _)| !checked.contains(name.as_str()))
        .collect();
    if s.checks.is_empty() && unchecked.is_empty() {
        return;
    }
    page.push_str(
        "<table class=\"checks\">\n<thead><tr><th>observation</th><th>expected</th>\
         <th class=\"num\">observed</th><th>verdict</th><th>note</th></tr></thead>\n<tbody>\n",
    );
    for c in &s.checks {
        let _ = writeln!(
            page,
            "<tr class=\"{}\"><td class=\"name\"><code>{}</code></td><td><code>{}</code>{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            verdict_class(c.verdict),
            esc(&c.observation),
            esc(&c.expect),
            // The predicate with its names replaced by their values.
            c.resolved.as_deref().map_or(String::new(), |r| format!(
                " <span class=\"resolved\">→ <code>{}</code></span>",
                esc(r)
            )),
            c.observed
                .as_ref()
                .map_or("—".to_string(), |v| esc(&value_text(v))),
            badge(c.verdict),
            esc(c.note.as_deref().unwrap_or("")),
        );
    }
    for (name, value) in unchecked {
        let _ = writeln!(
            page,
            "<tr class=\"info\"><td class=\"name\"><code>{}</code></td><td></td>\
             <td class=\"num\">{}</td><td class=\"muted\">not checked</td><td></td></tr>",
            esc(name),
            esc(&value_text(value)),
        );
    }
    page.push_str("</tbody></table>\n");
}

fn params(s: &ScenarioReport, page: &mut String) {
    if s.params.is_empty() {
        return;
    }
    page.push_str("<div class=\"params\"><span class=\"head\">parameters</span><dl>");
    for (name, value) in &s.params {
        let _ = write!(
            page,
            "<div><dt>{}</dt><dd>{}</dd></div>",
            esc(name),
            esc(&value_text(value))
        );
    }
    page.push_str("</dl></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::TimelineEvent;
    use crate::report::terminal::sample;
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
        assert_eq!(item_word("per_consumer"), "consumer");
        assert_eq!(item_word("keys_per_node"), "node");
        assert_eq!(item_word("per_group_received"), "group");
        assert_eq!(item_word("counts"), "item");
    }

    #[test]
    fn percentiles_group_by_family_in_order() {
        let report = sample_with_charts();
        let families = percentile_families(&report.labs[0].scenarios);
        assert_eq!(families.len(), 1);
        let (family, bars) = &families[0];
        assert_eq!(family, "latency");
        let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["setnx · p50", "setnx · p99"]);
    }
}
