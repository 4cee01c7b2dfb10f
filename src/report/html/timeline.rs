//! A scenario's timeline as SVG: one row per distinct event (exercise
//! milestones, fault actions), a mark at each time it happened, and every
//! fault window (pause → unpause, kill → start, disconnect → connect …)
//! shaded across all rows, so one sees which milestones fell inside it.

use std::io;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::charts::{
    FAULT, FONT, LABEL_SIZE, NEUTRAL, WIDTH, draw_row_labels, drawing_error, label_width,
    row_center, svg, tick_ms,
};
use crate::event::TimelineEvent;

/// A time window during which a service was impaired.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// When the fault began (ms since the scenario started).
    pub start_ms: u64,
    /// When it was undone; `None` when it lasted to the end of the scenario.
    pub end_ms: Option<u64>,
    /// What it was: `redis paused`.
    pub label: String,
}

/// The state an impairing fault action leaves its target in, and the
/// actions that undo it. Faults are recorded as `<action> <instance>`.
fn impairment(action: &str) -> Option<(&'static str, &'static [&'static str])> {
    match action {
        "pause" => Some(("paused", &["unpause"])),
        "kill" => Some(("killed", &["start", "restart"])),
        "stop" => Some(("stopped", &["start", "restart"])),
        "disconnect" => Some(("disconnected", &["connect"])),
        _ => None,
    }
}

/// Pairs fault events into windows: each impairing action opens a window
/// for its instance, the first later action that undoes it closes it.
/// Windows still open at the end of the scenario have no end.
pub fn fault_windows(events: &[TimelineEvent]) -> Vec<Window> {
    let faults: Vec<(u64, &str, &str)> = events
        .iter()
        .filter(|e| e.source == "fault")
        .filter_map(|e| {
            let (action, instance) = e.what.split_once(' ')?;
            Some((e.at_ms, action, instance))
        })
        .collect();
    let mut windows = Vec::new();
    for (i, (at, action, instance)) in faults.iter().enumerate() {
        let Some((state, undo)) = impairment(action) else {
            continue;
        };
        let end = faults[i + 1..]
            .iter()
            .find(|(_, a, inst)| inst == instance && undo.contains(a))
            .map(|(t, _, _)| *t);
        windows.push(Window {
            start_ms: *at,
            end_ms: end,
            label: format!("{instance} {state}"),
        });
    }
    windows
}

/// The timeline chart, or `None` when nothing was recorded.
pub fn svg_for(events: &[TimelineEvent], duration_ms: u64) -> io::Result<Option<String>> {
    if events.is_empty() {
        return Ok(None);
    }
    // One row per distinct event, in order of first occurrence.
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for e in events {
        if !rows.contains(&(e.source.as_str(), e.what.as_str())) {
            rows.push((e.source.as_str(), e.what.as_str()));
        }
    }
    let n = rows.len();
    let last = events.iter().map(|e| e.at_ms).max().unwrap_or(0);
    let end = duration_ms.max(last).max(1) as f64;
    let windows = fault_windows(events);
    let y_of = |e: &TimelineEvent| {
        let i = rows
            .iter()
            .position(|r| *r == (e.source.as_str(), e.what.as_str()))
            .unwrap_or(0);
        row_center(i, n)
    };
    let x_tick = |v: &f64| tick_ms(*v, end);
    let label_area = label_width(rows.iter().map(|r| r.1.chars().count()));
    let height = 26 * rows.len() as u32 + 84;
    let svg = svg((WIDTH, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .margin_right(24)
            .margin_top(26)
            .x_label_area_size(40)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0.0..end, 0.0..n as f64)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(8)
            .max_light_lines(2)
            .x_label_formatter(&x_tick)
            .x_desc("time since the scenario started")
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
            .bold_line_style(RGBColor(0xe0, 0xe0, 0xe0))
            .draw()
            .map_err(drawing_error)?;
        let labels: Vec<&str> = rows.iter().map(|r| r.1).collect();
        draw_row_labels(&mut chart, &labels)?;
        // Fault windows first, so the marks stay on top.
        chart
            .draw_series(windows.iter().map(|w| {
                let to = w.end_ms.map_or(end, |t| t as f64);
                Rectangle::new(
                    [(w.start_ms as f64, 0.0), (to, n as f64)],
                    FAULT.mix(0.12).filled(),
                )
            }))
            .map_err(drawing_error)?;
        let band_style = TextStyle::from((FONT, LABEL_SIZE - 1).into_font())
            .color(&FAULT)
            .pos(Pos::new(HPos::Left, VPos::Bottom));
        chart
            .draw_series(windows.iter().map(|w| {
                let text = match w.end_ms {
                    Some(t) => format!("{} ({})", w.label, tick_ms((t - w.start_ms) as f64, 0.0)),
                    None => format!("{} until the end", w.label),
                };
                EmptyElement::at((w.start_ms as f64, n as f64))
                    + Text::new(text, (2, -4), band_style.clone())
            }))
            .map_err(drawing_error)?;
        // A thin rule per event across all rows, then its mark on its row.
        chart
            .draw_series(events.iter().map(|e| {
                let color = if e.source == "fault" { FAULT } else { NEUTRAL };
                PathElement::new(
                    vec![(e.at_ms as f64, 0.0), (e.at_ms as f64, n as f64)],
                    color.mix(0.25).stroke_width(1),
                )
            }))
            .map_err(drawing_error)?;
        chart
            .draw_series(
                events
                    .iter()
                    .filter(|e| e.source != "fault")
                    .map(|e| Circle::new((e.at_ms as f64, y_of(e)), 5, NEUTRAL.filled())),
            )
            .map_err(drawing_error)?;
        chart
            .draw_series(
                events
                    .iter()
                    .filter(|e| e.source == "fault")
                    .map(|e| TriangleMarker::new((e.at_ms as f64, y_of(e)), 7, FAULT.filled())),
            )
            .map_err(drawing_error)?;
        let at_style = TextStyle::from((FONT, LABEL_SIZE - 1).into_font())
            .color(&RGBColor(0x57, 0x60, 0x6a))
            .pos(Pos::new(HPos::Left, VPos::Center));
        let at_left = at_style.pos(Pos::new(HPos::Right, VPos::Center));
        // The time next to each mark, when the row has only one (repeated
        // events would overlap).
        chart
            .draw_series(
                events
                    .iter()
                    .filter(|e| {
                        events
                            .iter()
                            .filter(|o| o.source == e.source && o.what == e.what)
                            .count()
                            == 1
                    })
                    .map(|e| {
                        // Near the right edge the time goes left of the mark.
                        let (dx, style) = if e.at_ms as f64 > 0.85 * end {
                            (-10, at_left.clone())
                        } else {
                            (10, at_style.clone())
                        };
                        EmptyElement::at((e.at_ms as f64, y_of(e)))
                            + Text::new(format!("{} ms", e.at_ms), (dx, 0), style)
                    }),
            )
            .map_err(drawing_error)?;
        Ok(())
    })?;
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: u64, source: &str, what: &str) -> TimelineEvent {
        TimelineEvent {
            at_ms,
            source: source.into(),
            what: what.into(),
        }
    }

    #[test]
    fn faults_pair_into_windows_per_instance() {
        let events = [
            ev(5, "exercise", "holding"),
            ev(10, "fault", "pause redis"),
            ev(20, "fault", "kill replica-1"),
            ev(1500, "fault", "unpause redis"),
            ev(1600, "fault", "restart replica-1"),
            ev(1700, "fault", "disconnect replica-2"),
            ev(1800, "fault", "restart redis"),
        ];
        assert_eq!(
            fault_windows(&events),
            vec![
                Window {
                    start_ms: 10,
                    end_ms: Some(1500),
                    label: "redis paused".into()
                },
                Window {
                    start_ms: 20,
                    end_ms: Some(1600),
                    label: "replica-1 killed".into()
                },
                Window {
                    start_ms: 1700,
                    end_ms: None,
                    label: "replica-2 disconnected".into()
                },
            ]
        );
    }

    #[test]
    fn timeline_has_a_row_per_event_and_shades_windows() {
        let events = [
            ev(13, "exercise", "workers-started"),
            ev(17, "fault", "pause redis"),
            ev(1501, "fault", "unpause redis"),
            ev(3916, "exercise", "workers-finished"),
        ];
        let svg = svg_for(&events, 3943).unwrap().unwrap();
        for text in [
            "\nworkers-started\n</text>",
            "\npause redis\n</text>",
            "\nunpause redis\n</text>",
            "\nworkers-finished\n</text>",
            "redis paused (1484 ms)",
        ] {
            assert!(svg.contains(text), "{text} in {svg}");
        }
        assert!(svg_for(&[], 100).unwrap().is_none());
    }
}
