//! One scenario's part of the page: verdict table, parameters, timeline and
//! a bar chart per list observation.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;

use serde_json::Value;

use super::charts;
use super::timeline;
use super::{badge, esc, figure, ms_text, slug, value_text, verdict_class};
use crate::event::{LabReport, ScenarioReport};

pub(super) fn scenario_section(
    lab: &LabReport,
    s: &ScenarioReport,
    page: &mut String,
) -> io::Result<()> {
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
    if !s.evidence.is_empty() {
        page.push_str("<p><strong>Evidence</strong> (from the harness's record):</p>\n<ul>\n");
        for e in &s.evidence {
            let _ = writeln!(
                page,
                "<li><code>{}</code>: {}</li>",
                esc(&e.observation),
                esc(&e.what)
            );
        }
        page.push_str("</ul>\n");
    }
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
pub(super) fn item_word(name: &str) -> &str {
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
