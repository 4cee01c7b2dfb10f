//! Bar charts drawn with `plotters` into SVG strings, ready to inline in the
//! page. Only the drawing lives here: which numbers to plot is decided by the
//! page (`super`), so the charts stay generic (rows of labelled bars).

use std::io;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::check::Verdict;

/// Font of every label: the page's own sans-serif (nothing is downloaded).
pub const FONT: &str = "sans-serif";
/// Axis labels and value notes.
pub const LABEL_SIZE: u32 = 16;
/// Height of one horizontal bar row, in pixels.
const ROW_HEIGHT: u32 = 28;
/// Width of a horizontal bar chart; the page scales it down on small screens.
pub const WIDTH: u32 = 1040;

/// The terminal's verdict colours (green, red, yellow), dark enough for
/// white text and for printing.
pub fn verdict_color(verdict: Verdict) -> RGBColor {
    match verdict {
        Verdict::Pass => RGBColor(0x1a, 0x7f, 0x37),
        Verdict::Fail => RGBColor(0xcf, 0x22, 0x2e),
        Verdict::Unknown => RGBColor(0xbf, 0x87, 0x00),
    }
}

/// Neutral bars: service readiness, per-consumer counts.
pub const NEUTRAL: RGBColor = RGBColor(0x09, 0x69, 0xda);
/// The mean rule over list bars.
pub const MEAN: RGBColor = RGBColor(0xbc, 0x4c, 0x00);
/// Faults: marks and shaded windows.
pub const FAULT: RGBColor = RGBColor(0xcf, 0x22, 0x2e);
/// Percentile shades, light (median) to dark (tail).
pub const PERCENTILE_SHADES: [RGBColor; 4] = [
    RGBColor(0x54, 0xae, 0xff),
    RGBColor(0x09, 0x69, 0xda),
    RGBColor(0x0a, 0x30, 0x69),
    RGBColor(0x05, 0x1d, 0x4d),
];

/// One labelled bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Row (horizontal) or column (vertical) label.
    pub label: String,
    /// Length of the bar.
    pub value: f64,
    /// Fill.
    pub color: RGBColor,
    /// Text at the end of the bar: the value in words, so the chart reads
    /// without colour and without the axis.
    pub note: String,
}

/// Turns a plotters error into an I/O error (the page is written to a file).
pub fn drawing_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("cannot draw a chart: {e}"))
}

/// Draws into an SVG string of `size` pixels. The `xmlns` attribute is left
/// out: inline SVG in HTML does not need it, and the page then holds no
/// `http` address at all.
pub fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> io::Result<()>,
) -> io::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        draw(&root)?;
        root.present().map_err(drawing_error)?;
    }
    Ok(out
        .replace(" xmlns=\"http://www.w3.org/2000/svg\"", "")
        .replacen("<svg ", "<svg role=\"img\" ", 1))
}

/// Width of a label area that fits the longest of `labels`.
pub fn label_width(labels: impl IntoIterator<Item = usize>) -> u32 {
    let longest = labels.into_iter().max().unwrap_or(4) as u32;
    (longest * 8 + 16).clamp(60, 300)
}

/// A readable axis tick for a duration: `250 ms`, `1.5 s`.
pub fn tick_ms(ms: f64, span_ms: f64) -> String {
    if span_ms >= 2000.0 {
        let s = ms / 1000.0;
        if (s - s.round()).abs() < 1e-9 {
            format!("{s:.0} s")
        } else {
            format!("{s:.1} s")
        }
    } else {
        format!("{ms:.0} ms")
    }
}

/// A compact number for ticks: `12`, `0.5`, `1.2k`.
fn tick(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// The vertical span of row `i` of `n` (first row on top) on a `0..n` axis:
/// rows are drawn on a plain number axis, since plotters' segmented axes
/// misplace a single segment.
pub fn row_span(i: usize, n: usize) -> (f64, f64) {
    let bottom = (n - 1 - i) as f64;
    (bottom, bottom + 1.0)
}

/// The vertical centre of row `i` of `n`.
pub fn row_center(i: usize, n: usize) -> f64 {
    (n - i) as f64 - 0.5
}

/// Writes each row's label left of the y axis, right-aligned.
pub fn draw_row_labels<'a, DB: DrawingBackend, X: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    labels: &[&str],
) -> io::Result<()> {
    let n = labels.len();
    let style = TextStyle::from((FONT, LABEL_SIZE).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    let x0 = chart.x_range().start;
    chart
        .draw_series(labels.iter().enumerate().map(|(i, label)| {
            EmptyElement::at((x0, row_center(i, n)))
                + Text::new(label.to_string(), (-8, 0), style.clone())
        }))
        .map_err(|e| drawing_error(e.to_string()))?;
    Ok(())
}

/// Horizontal bars, one row per bar in the given order (first on top), the
/// note printed after each bar. `axis` names the unit of the x axis; `ms`
/// formats its ticks as durations.
pub fn hbars(bars: &[Bar], axis: &str, ms: bool) -> io::Result<String> {
    let n = bars.len();
    let max = bars.iter().map(|b| b.value).fold(0.0_f64, f64::max);
    // Room after the longest bar for its note.
    let x_end = if max > 0.0 { max * 1.3 } else { 1.0 };
    let label_area = label_width(bars.iter().map(|b| b.label.chars().count()));
    let height = ROW_HEIGHT * n as u32 + 64;
    let x_tick = |v: &f64| if ms { tick_ms(*v, x_end) } else { tick(*v) };
    svg((WIDTH, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .margin_right(24)
            .x_label_area_size(44)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0.0..x_end, 0.0..n as f64)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(6)
            .max_light_lines(2)
            .x_label_formatter(&x_tick)
            .x_desc(axis)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
            .bold_line_style(RGBColor(0xe0, 0xe0, 0xe0))
            .draw()
            .map_err(drawing_error)?;
        let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        draw_row_labels(&mut chart, &labels)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let (lo, hi) = row_span(i, n);
                Rectangle::new([(0.0, lo + 0.18), (b.value, hi - 0.18)], b.color.filled())
            }))
            .map_err(drawing_error)?;
        let note_style = TextStyle::from((FONT, LABEL_SIZE).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                EmptyElement::at((b.value, row_center(i, n)))
                    + Text::new(b.note.clone(), (6, 0), note_style.clone())
            }))
            .map_err(drawing_error)?;
        Ok(())
    })
}

/// Vertical bars over numbered items (`consumer 1`, `consumer 2` …), each
/// with its value above it.
pub fn vbars(values: &[f64], item: &str, color: RGBColor) -> io::Result<String> {
    let n = values.len();
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let y_end = if max > 0.0 { max * 1.15 } else { 1.0 };
    let width = (110 + 56 * n as u32).clamp(420, WIDTH);
    let y_tick = |v: &f64| tick(*v);
    svg((width, 270), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .margin_top(16)
            .x_label_area_size(48)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..n as f64, 0.0..y_end)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(5)
            .max_light_lines(2)
            .y_label_formatter(&y_tick)
            .x_desc(item)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
            .bold_line_style(RGBColor(0xe0, 0xe0, 0xe0))
            .draw()
            .map_err(drawing_error)?;
        let gap = if n > 12 { 0.08 } else { 0.18 };
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let x = i as f64;
                Rectangle::new([(x + gap, 0.0), (x + 1.0 - gap, *v)], color.filled())
            }))
            .map_err(drawing_error)?;
        // The mean as a rule: how even the spread is shows at a glance.
        let mean = values.iter().sum::<f64>() / n as f64;
        let mean_style = TextStyle::from((FONT, LABEL_SIZE - 1).into_font())
            .color(&MEAN)
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        chart
            .draw_series([PathElement::new(
                vec![(0.0, mean), (n as f64, mean)],
                MEAN.stroke_width(2),
            )])
            .map_err(drawing_error)?;
        chart
            .draw_series([EmptyElement::at((n as f64, mean))
                + Text::new(format!("mean {}", tick(mean)), (-2, -3), mean_style)])
            .map_err(drawing_error)?;
        // Item numbers under the axis; values above the bars when they fit.
        let number_style = TextStyle::from((FONT, LABEL_SIZE).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        let step = n.div_ceil(30).max(1);
        chart
            .draw_series((0..n).step_by(step).map(|i| {
                EmptyElement::at((i as f64 + 0.5, 0.0))
                    + Text::new((i + 1).to_string(), (0, 6), number_style.clone())
            }))
            .map_err(drawing_error)?;
        let note_style = TextStyle::from((FONT, LABEL_SIZE).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        if n <= 24 {
            chart
                .draw_series(values.iter().enumerate().map(|(i, v)| {
                    EmptyElement::at((i as f64 + 0.5, *v))
                        + Text::new(tick(*v), (0, -4), note_style.clone())
                }))
                .map_err(drawing_error)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, value: f64) -> Bar {
        Bar {
            label: label.into(),
            value,
            color: NEUTRAL,
            note: format!("{value} things"),
        }
    }

    #[test]
    fn hbars_draw_every_label_and_note_without_addresses() {
        let svg = hbars(&[bar("setnx", 3.0), bar("no-lock & <co>", 0.0)], "ms", true).unwrap();
        assert!(svg.starts_with("<svg role=\"img\" "), "{svg}");
        assert!(svg.contains("\nsetnx\n</text>"), "{svg}");
        assert!(svg.contains("no-lock &amp; &lt;co&gt;"), "escaped: {svg}");
        assert!(svg.contains("3 things"));
        assert!(!svg.contains("http"), "{svg}");
    }

    #[test]
    fn vbars_number_the_items() {
        let svg = vbars(&[10.0, 12.0, 9.0], "consumer", NEUTRAL).unwrap();
        assert!(svg.contains("\nconsumer\n</text>"), "{svg}");
        for text in ["\n1\n<", "\n2\n<", "\n3\n<", "\n12\n<", "\nmean 10.33\n<"] {
            assert!(svg.contains(text), "{text} in {svg}");
        }
    }

    #[test]
    fn ticks_read_as_durations() {
        assert_eq!(tick_ms(250.0, 900.0), "250 ms");
        assert_eq!(tick_ms(1500.0, 4000.0), "1.5 s");
        assert_eq!(tick_ms(2000.0, 4000.0), "2 s");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(12.0), "12");
        assert_eq!(tick(25_000.0), "25k");
    }
}
