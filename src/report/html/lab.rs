//! One lab's part of the page: header, services and their readiness, and
//! the charts that compare its scenarios (durations, latency percentiles).

use std::fmt::Write as _;
use std::io;

use serde_json::Value;

use super::charts::{self, Bar};
use super::{badge, esc, figure, ms_text, scenario, slug, value_text};
use crate::event::{LabReport, ScenarioReport};

pub(super) fn lab_section(lab: &LabReport, page: &mut String) -> io::Result<()> {
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
        scenario::scenario_section(lab, s, page)?;
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
pub(super) fn percentile_families(scenarios: &[ScenarioReport]) -> Vec<(String, Vec<Bar>)> {
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
