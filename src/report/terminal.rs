//! Terminal output: [`Progress`] shows live events on stderr while a run goes
//! on, [`render`] prints the final summary on stdout and [`render_services`]
//! the connection table of `infralab up`. [`Style`] decides whether either
//! uses colour.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anstyle::{AnsiColor, Effects};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::words::{expectation, format_float, format_ms, format_value, plural, problems};
use crate::check::Verdict;
use crate::event::{Event, LabReport, Reporter, RunReport, ScenarioReport, ServiceReport};

/// The `--color` flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when the stream is a terminal and `NO_COLOR` is unset.
    #[default]
    Auto,
    /// Always colour, even into pipes and despite `NO_COLOR`.
    Always,
    /// Never colour.
    Never,
}

/// Whether output to one stream is coloured. Decided once per stream, because
/// stdout may be piped to a file while stderr is still a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    color: bool,
}

impl Style {
    /// No escape codes at all (files, tests).
    pub fn plain() -> Style {
        Style { color: false }
    }

    /// Always coloured.
    pub fn colored() -> Style {
        Style { color: true }
    }

    /// The style for stdout (the final summary).
    pub fn stdout(choice: ColorChoice) -> Style {
        Style::detect(choice, io::stdout().is_terminal())
    }

    /// The style for stderr (live progress).
    pub fn stderr(choice: ColorChoice) -> Style {
        Style::detect(choice, io::stderr().is_terminal())
    }

    fn detect(choice: ColorChoice, is_tty: bool) -> Style {
        Style {
            color: decide(
                choice,
                std::env::var_os("NO_COLOR"),
                std::env::var_os("TERM"),
                is_tty,
            ),
        }
    }

    /// Whether escape codes are written.
    pub fn is_colored(self) -> bool {
        self.color
    }

    fn paint(self, style: anstyle::Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }

    fn bold(self, text: &str) -> String {
        self.paint(anstyle::Style::new().effects(Effects::BOLD), text)
    }

    fn dim(self, text: &str) -> String {
        self.paint(anstyle::Style::new().effects(Effects::DIMMED), text)
    }

    fn red(self, text: &str) -> String {
        self.paint(AnsiColor::Red.on_default(), text)
    }

    /// Paints `text` in the colour of `verdict`: green, red or yellow.
    fn verdict(self, verdict: Verdict, text: &str) -> String {
        let color = match verdict {
            Verdict::Pass => AnsiColor::Green,
            Verdict::Fail => AnsiColor::Red,
            Verdict::Unknown => AnsiColor::Yellow,
        };
        self.paint(color.on_default().effects(Effects::BOLD), text)
    }
}

/// The colour decision as a pure function of its inputs, so it can be tested
/// without touching the process environment. `NO_COLOR` and `TERM=dumb` only
/// matter for `auto`: an explicit `--color always` wins.
fn decide(
    choice: ColorChoice,
    no_color: Option<OsString>,
    term: Option<OsString>,
    is_tty: bool,
) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            let no_color = no_color.is_some_and(|v| !v.is_empty());
            let dumb = term.is_some_and(|t| t == "dumb");
            is_tty && !no_color && !dumb
        }
    }
}

// ---------------------------------------------------------------------------
// Final summary
// ---------------------------------------------------------------------------

/// Prints the final summary: per lab a header, per scenario a table of
/// `observation | expected | observed | verdict`, a total line, and last the
/// overall verdict alone on a line (easy to grep in CI logs).
pub fn render(report: &RunReport, style: Style, out: &mut dyn Write) -> io::Result<()> {
    if report.labs.is_empty() {
        writeln!(out, "no labs ran")?;
    }
    for lab in &report.labs {
        render_lab(lab, style, out)?;
        writeln!(out)?;
    }
    writeln!(
        out,
        "{}",
        style.verdict(report.verdict, report.verdict.label())
    )
}

fn render_lab(lab: &LabReport, style: Style, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{}  {}",
        style.bold(&lab.title),
        style.dim(&format!("({})", lab.name))
    )?;
    if let Some(error) = &lab.error {
        writeln!(out, "  {} {error}", style.red("error:"))?;
    }
    for scenario in &lab.scenarios {
        writeln!(out)?;
        render_scenario(scenario, style, out)?;
    }
    writeln!(out)?;
    let count = |v: Verdict| lab.scenarios.iter().filter(|s| s.verdict == v).count();
    let runs = lab
        .scenarios
        .iter()
        .filter_map(|s| s.repeats.as_ref())
        .map(|r| r.runs)
        .max();
    let flaky = lab
        .scenarios
        .iter()
        .filter_map(|s| s.repeats.as_ref())
        .flat_map(|r| &r.expectations)
        .filter(|t| t.flaky)
        .count();
    let (times, flaky) = match runs {
        Some(n) => (
            format!(" × {n} runs"),
            format!(
                ", {}",
                plural(flaky, "flaky expectation", "flaky expectations")
            ),
        ),
        None => (String::new(), String::new()),
    };
    writeln!(
        out,
        "{}: {}{times}, {} passed, {} failed, {} unknown{flaky} ({})",
        lab.name,
        plural(lab.scenarios.len(), "scenario", "scenarios"),
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Unknown),
        format_ms(lab.duration_ms)
    )
}

/// One table row; the verdict is kept apart so it can be coloured after the
/// widths are computed from the plain text.
struct Row {
    cells: Vec<String>,
    verdict: Option<(Verdict, &'static str)>,
    note: Option<String>,
}

/// `--repeat`: `4 (2..7)`, the last run's value and the range over all runs
/// when numbers varied; just the last value otherwise.
fn observed_over_runs(s: &ScenarioReport, name: &str, last: &Value) -> String {
    let numbers: Vec<f64> = s
        .repeats
        .as_ref()
        .and_then(|r| r.observations.get(name))
        .map(|values| values.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let (min, max) = numbers
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
    if numbers.len() > 1 && min < max {
        format!(
            "{} ({}..{})",
            format_value(last),
            format_float(min),
            format_float(max)
        )
    } else {
        format_value(last)
    }
}

fn render_scenario(s: &ScenarioReport, style: Style, out: &mut dyn Write) -> io::Result<()> {
    let runs = s
        .repeats
        .as_ref()
        .map(|r| format!("{}/{} runs passed, ", r.passed, r.runs))
        .unwrap_or_default();
    writeln!(
        out,
        "  {}  {}  {}",
        style.bold(&s.name),
        style.verdict(s.verdict, s.verdict.label()),
        style.dim(&format!("{runs}{}", format_ms(s.duration_ms)))
    )?;

    let tallies = s.repeats.as_ref().map(|r| &r.expectations);
    let mut rows: Vec<Row> = s
        .checks
        .iter()
        .map(|c| {
            let observed = c
                .observed
                .as_ref()
                .map_or("—".into(), |v| observed_over_runs(s, &c.observation, v));
            let mut cells = vec![c.observation.clone(), expectation(c), observed];
            let mut verdict = (c.verdict, c.verdict.label());
            if let Some(tallies) = tallies {
                let tally = tallies.iter().find(|t| t.observation == c.observation);
                cells.push(tally.map(|t| t.summary()).unwrap_or_default());
                if tally.is_some_and(|t| t.flaky) {
                    verdict = (Verdict::Fail, "FLAKY");
                }
            }
            Row {
                cells,
                verdict: Some(verdict),
                note: c.note.clone(),
            }
        })
        .collect();
    // Observations without an expectation are still part of the lesson.
    let checked: BTreeSet<&str> = s.checks.iter().map(|c| c.observation.as_str()).collect();
    rows.extend(
        s.observations
            .iter()
            .filter(|(name, _)| !checked.contains(name.as_str()))
            .map(|(name, value)| {
                let mut cells = vec![
                    name.clone(),
                    String::new(),
                    observed_over_runs(s, name, value),
                ];
                if tallies.is_some() {
                    cells.push(String::new());
                }
                Row {
                    cells,
                    verdict: None,
                    note: None,
                }
            }),
    );

    if !rows.is_empty() {
        let mut header = vec!["observation", "expected", "observed"];
        if tallies.is_some() {
            header.push("passed");
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(&row.cells) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let pad = |text: &str, width: usize| {
            let fill = width.saturating_sub(text.chars().count());
            format!("{text}{}", " ".repeat(fill))
        };
        let head: Vec<String> = header
            .iter()
            .zip(&widths)
            .map(|(h, w)| pad(h, *w))
            .collect();
        writeln!(
            out,
            "    {}",
            style.dim(&format!("{}  verdict", head.join("  ")))
        )?;
        for row in &rows {
            let cells: Vec<String> = row
                .cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| pad(c, *w))
                .collect();
            let mut line = format!("    {}", cells.join("  "));
            if let Some((v, label)) = row.verdict {
                line.push_str("  ");
                line.push_str(&style.verdict(v, label));
            }
            if let Some(note) = &row.note {
                line.push_str(&format!(" {}", style.dim(&format!("({note})"))));
            }
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    if let Some(error) = &s.error {
        writeln!(out, "    {} {error}", style.red("error:"))?;
    }
    if !s.evidence.is_empty() {
        writeln!(
            out,
            "    {}",
            style.bold("evidence (from the harness's record):")
        )?;
        for e in &s.evidence {
            writeln!(out, "      {}: {}", e.observation, e.what)?;
        }
    }
    if let Some(solution) = s.solution.as_ref().filter(|_| s.verdict != Verdict::Pass) {
        for i in &solution.instances {
            let tail: Vec<&String> = i.output.iter().rev().take(SOLUTION_TAIL).collect();
            writeln!(
                out,
                "    {}",
                style.dim(&format!(
                    "{}: {}{}",
                    i.instance,
                    i.ended,
                    if tail.is_empty() {
                        ", no output"
                    } else {
                        ", last lines:"
                    }
                ))
            )?;
            for line in tail.into_iter().rev() {
                writeln!(out, "      {line}")?;
            }
        }
    }
    Ok(())
}

/// Lines of each instance's output shown under a scenario that did not pass.
const SOLUTION_TAIL: usize = 5;

/// Prints the services of `infralab up` as `service  kind  url`: the
/// connection strings a learner pastes into `redis-cli` or `psql`.
pub fn render_services(services: &[ServiceReport], out: &mut dyn Write) -> io::Result<()> {
    let header = ["service", "kind", "url"];
    let mut widths = header.map(str::len);
    for s in services {
        widths[0] = widths[0].max(s.name.chars().count());
        widths[1] = widths[1].max(s.kind.chars().count());
    }
    let line = |a: &str, b: &str, c: &str| {
        format!("{a:<w0$}  {b:<w1$}  {c}", w0 = widths[0], w1 = widths[1])
    };
    writeln!(out, "{}", line(header[0], header[1], header[2]))?;
    for s in services {
        writeln!(out, "{}", line(&s.name, &s.kind, &s.url))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Live progress
// ---------------------------------------------------------------------------

/// What an event does to the display, independent of how it is drawn.
enum Action {
    /// Show (or update) the spinner `key` with a message.
    Spin { key: String, msg: String },
    /// Remove the spinner `key` and leave a permanent line instead.
    Done { key: String, line: String },
    /// A permanent line, no spinner involved.
    Line(String),
    /// The lab is over: its spinners still running (services that never
    /// became ready) are turned into lines, then `line` is printed.
    LabDone { lab: String, line: String },
}

/// Where progress goes.
enum Sink {
    /// Spinners on a terminal. `bars` maps event keys (`service:redis`) to
    /// their spinner; the lock is needed because services start concurrently.
    Live {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
        spinner: ProgressStyle,
    },
    /// One line per event (CI logs, pipes), where redrawn spinners would be
    /// noise.
    Plain(Mutex<Box<dyn Write + Send>>),
}

/// Live progress on stderr: spinners on a terminal, plain lines otherwise.
pub struct Progress {
    style: Style,
    sink: Sink,
    /// Labs run in parallel (`--jobs`): every line names its lab.
    parallel: std::sync::atomic::AtomicBool,
    /// `-v`: the learner's program's output, line by line.
    verbose: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not also kill the progress display.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Progress {
    /// Progress on stderr: spinners when stderr is a terminal (and not
    /// `TERM=dumb`), plain lines otherwise.
    pub fn new(color: ColorChoice) -> Progress {
        let style = Style::stderr(color);
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if io::stderr().is_terminal() && !dumb {
            Progress::live(style)
        } else {
            Progress::plain(style, Box::new(io::stderr()))
        }
    }

    /// One line per event to any writer (CI logs, a file, tests).
    pub fn plain(style: Style, out: Box<dyn Write + Send>) -> Progress {
        Progress {
            style,
            sink: Sink::Plain(Mutex::new(out)),
            parallel: Default::default(),
            verbose: Default::default(),
        }
    }

    /// Labs will run in parallel: prefix every line with its lab's name so
    /// interleaved progress stays readable.
    pub fn set_parallel(&self, parallel: bool) {
        self.parallel
            .store(parallel, std::sync::atomic::Ordering::Relaxed);
    }

    /// `-v`: show every line the learner's program prints, prefixed with
    /// its instance (`solution-2| …`).
    pub fn set_verbose(&self, verbose: bool) {
        self.verbose
            .store(verbose, std::sync::atomic::Ordering::Relaxed);
    }

    fn live(style: Style) -> Progress {
        let template = if style.is_colored() {
            "{spinner:.cyan} {msg} {elapsed:.dim}"
        } else {
            "{spinner} {msg} {elapsed}"
        };
        let spinner = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        Progress {
            style,
            sink: Sink::Live {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(HashMap::new()),
                spinner,
            },
            parallel: Default::default(),
            verbose: Default::default(),
        }
    }

    /// Removes every spinner still shown. Call before printing the summary so
    /// it does not interleave with redraws; also done on drop.
    pub fn finish(&self) {
        if let Sink::Live { multi, bars, .. } = &self.sink {
            for (_, bar) in lock(bars).drain() {
                bar.finish_and_clear();
                multi.remove(&bar);
            }
            let _ = multi.clear();
        }
    }

    fn mark(&self, verdict: Verdict) -> String {
        let mark = match verdict {
            Verdict::Pass => "✓",
            Verdict::Fail => "✗",
            Verdict::Unknown => "?",
        };
        self.style.verdict(verdict, mark)
    }

    /// Translates an event into what the display should do.
    fn action(&self, event: &Event) -> Action {
        let st = self.style;
        match event {
            Event::LabStarted {
                lab,
                title,
                scenarios,
            } => Action::Line(format!(
                "{} {}  {}",
                st.bold(title),
                st.dim(&format!("({lab})")),
                st.dim(&plural(*scenarios, "scenario", "scenarios"))
            )),
            Event::ImageBuild { image, step, .. } => Action::Spin {
                key: format!("image:{image}"),
                msg: format!("building {image}: {}", step.trim()),
            },
            Event::ImageBuilt { image, ms, .. } => Action::Done {
                key: format!("image:{image}"),
                line: format!(
                    "{} built {image} in {}",
                    self.mark(Verdict::Pass),
                    format_ms(*ms)
                ),
            },
            Event::ServiceStarting {
                lab,
                service,
                image,
                ..
            } => Action::Spin {
                key: format!("service:{lab}/{service}"),
                msg: format!("starting {service} ({image})"),
            },
            Event::ServiceReady {
                lab,
                service,
                url,
                ms,
            } => Action::Done {
                key: format!("service:{lab}/{service}"),
                line: format!(
                    "{} {service} ready in {}  {url}",
                    self.mark(Verdict::Pass),
                    format_ms(*ms)
                ),
            },
            Event::Bootstrapping { lab, service, what } => Action::Spin {
                key: format!("bootstrap:{lab}/{service}"),
                msg: format!("{service}: {what}"),
            },
            Event::Bootstrapped {
                lab,
                service,
                what,
                ms,
            } => Action::Done {
                key: format!("bootstrap:{lab}/{service}"),
                line: format!(
                    "{} {service}: {what} in {}",
                    self.mark(Verdict::Pass),
                    format_ms(*ms)
                ),
            },
            Event::RoundStarted { lab, round, rounds } => {
                Action::Line(st.bold(&format!("round {round}/{rounds} of {lab}")))
            }
            Event::ScenarioStarted { lab, scenario } => Action::Spin {
                key: format!("scenario:{lab}/{scenario}"),
                msg: format!("scenario {scenario} …"),
            },
            Event::ScenarioFinished { lab, report } => {
                let mut line = format!(
                    "{} {} {} {}",
                    self.mark(report.verdict),
                    report.name,
                    st.verdict(report.verdict, report.verdict.label()),
                    format_ms(report.duration_ms)
                );
                let why = problems(report);
                if report.verdict != Verdict::Pass && !why.is_empty() {
                    line.push_str(&format!("  {}", st.dim(&why.join("; "))));
                }
                Action::Done {
                    key: format!("scenario:{lab}/{}", report.name),
                    line,
                }
            }
            Event::LabFinished { report } => {
                let line = match &report.error {
                    Some(error) => format!(
                        "{} {} {} {error}",
                        self.mark(report.verdict),
                        report.name,
                        st.red("error:")
                    ),
                    None => format!(
                        "{} {} {} ({})",
                        self.mark(report.verdict),
                        report.name,
                        st.verdict(report.verdict, report.verdict.label()),
                        format_ms(report.duration_ms)
                    ),
                };
                Action::LabDone {
                    lab: report.name.clone(),
                    line,
                }
            }
            Event::SolutionStarted {
                scenario,
                command,
                instances,
                env,
                ..
            } => {
                let mut text = format!(
                    "{} {} × {}  {}",
                    st.bold("solution:"),
                    command,
                    instances,
                    st.dim(&format!("(first started in {scenario}; environment:)"))
                );
                for (k, v) in env {
                    text.push_str(&format!("\n    {k}={v}"));
                }
                Action::Line(text)
            }
            Event::SolutionOutput { instance, line, .. } => {
                Action::Line(format!("{}{line}", st.dim(&format!("{instance}| "))))
            }
            Event::TornDown { lab, removed } => Action::Line(st.dim(&format!(
                "removed {} of {lab}",
                plural(*removed, "container or network", "containers and networks")
            ))),
        }
    }
}

impl Reporter for Progress {
    fn event(&self, event: &Event) {
        if matches!(event, Event::SolutionOutput { .. })
            && !self.verbose.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let action = self.action(event);
        let action = match event.lab() {
            Some(lab) if self.parallel.load(std::sync::atomic::Ordering::Relaxed) => {
                action.labelled(&self.style.dim(&format!("{lab}:")))
            }
            _ => action,
        };
        match &self.sink {
            Sink::Plain(out) => {
                let mut out = lock(out);
                let line = match action {
                    Action::Spin { msg, .. } => msg,
                    Action::Done { line, .. }
                    | Action::Line(line)
                    | Action::LabDone { line, .. } => line,
                };
                // Progress is best effort: a closed stderr must not stop the run.
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Sink::Live {
                multi,
                bars,
                spinner,
            } => {
                let mut bars = lock(bars);
                match action {
                    Action::Spin { key, msg } => {
                        let bar = bars.entry(key).or_insert_with(|| {
                            let bar = multi.add(ProgressBar::new_spinner());
                            bar.set_style(spinner.clone());
                            bar.enable_steady_tick(Duration::from_millis(100));
                            bar
                        });
                        bar.set_message(msg);
                    }
                    Action::Done { key, line } => {
                        if let Some(bar) = bars.remove(&key) {
                            bar.finish_and_clear();
                            multi.remove(&bar);
                        }
                        let _ = multi.println(line);
                    }
                    Action::Line(line) => {
                        let _ = multi.println(line);
                    }
                    Action::LabDone { lab, line } => {
                        let own = format!(":{lab}/");
                        let keys: Vec<String> =
                            bars.keys().filter(|k| k.contains(&own)).cloned().collect();
                        for bar in keys.iter().filter_map(|k| bars.remove(k)) {
                            let msg = bar.message();
                            bar.finish_and_clear();
                            multi.remove(&bar);
                            let _ = multi.println(format!(
                                "{} {msg}",
                                self.style.verdict(Verdict::Fail, "✗")
                            ));
                        }
                        let _ = multi.println(line);
                    }
                }
            }
        }
    }
}

impl Action {
    /// The same action with `prefix` before its text.
    fn labelled(self, prefix: &str) -> Action {
        match self {
            Action::Spin { key, msg } => Action::Spin {
                key,
                msg: format!("{prefix} {msg}"),
            },
            Action::Done { key, line } => Action::Done {
                key,
                line: format!("{prefix} {line}"),
            },
            Action::Line(line) => Action::Line(format!("{prefix} {line}")),
            Action::LabDone { lab, line } => Action::LabDone { lab, line },
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;
    use serde_json::json;
    use std::sync::Arc;

    fn rendered(style: Style) -> String {
        let mut buf = Vec::new();
        render(&sample::report(), style, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_failed_challenge_shows_evidence_and_the_program_s_last_lines() {
        use crate::event::{Evidence, InstanceReport, SolutionReport};
        let mut report = sample::report();
        let s = &mut report.labs[0].scenarios[1];
        assert_eq!(s.verdict, Verdict::Fail);
        s.evidence = vec![Evidence {
            observation: "lost_updates".into(),
            what: "instance 1 wrote 7 at 1.84 s, over instance 3's write of 9 at 1.62 s".into(),
        }];
        s.solution = Some(SolutionReport {
            command: "python3 my_lock.py".into(),
            instances: vec![InstanceReport {
                instance: "solution-1".into(),
                ended: "exit 0".into(),
                restarts: 0,
                output: (1..=7).map(|i| format!("line {i}")).collect(),
            }],
        });
        let mut buf = Vec::new();
        render(&report, Style::plain(), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains(
                "    evidence (from the harness's record):\n      lost_updates: instance 1 wrote 7 at 1.84 s, over instance 3's write of 9 at 1.62 s\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    solution-1: exit 0, last lines:\n      line 3\n"),
            "{text}"
        );
        assert!(
            text.contains("      line 7\n") && !text.contains("line 2\n"),
            "{text}"
        );
    }

    #[test]
    fn plain_render_has_rows_totals_and_no_escapes() {
        let text = rendered(Style::plain());
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("Distributed locking with Redis  (distributed-locking)"));
        assert!(
            text.contains("    observation   expected  observed  verdict\n"),
            "{text}"
        );
        assert!(
            text.contains("    lost_updates  == 0      0         PASS\n"),
            "{text}"
        );
        assert!(
            text.contains("    acquired      > 0       812       PASS\n"),
            "{text}"
        );
        assert!(
            text.contains("    p99_ms                  3.46\n"),
            "{text}"
        );
        assert!(
            text.contains("    lost_updates  > 0       0         FAIL\n"),
            "{text}"
        );
        assert!(text.contains("safety_violations  == 0      —         UNKNOWN (not observed)"));
        assert!(text.contains("    error: redis: connection refused\n"));
        assert!(
            text.contains(
                "distributed-locking: 3 scenarios, 1 passed, 1 failed, 1 unknown (4.2 s)\n"
            )
        );
        assert!(text.contains(&format!("  error: {}\n", sample::SETUP_ERROR)));
        assert!(text.contains("queue-backpressure: 0 scenarios, 0 passed"));
        assert!(text.ends_with("\nFAIL\n"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "trailing spaces");
    }

    /// The sample with its `setnx` scenario run 20 times, `lost_updates`
    /// failing once (run 4, observed 2).
    fn flaky_sample() -> RunReport {
        let mut report = sample::report();
        let mut runs = vec![report.labs[0].scenarios[0].clone(); 20];
        runs[3].checks[0].verdict = Verdict::Fail;
        runs[3].verdict = Verdict::Fail;
        runs[3].observations.insert("lost_updates".into(), json!(2));
        report.labs[0].scenarios[0] = crate::repeat::fold(runs);
        report
    }

    #[test]
    fn repeated_render_counts_passes_and_flags_flaky() {
        let mut buf = Vec::new();
        render(&flaky_sample(), Style::plain(), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains("  setnx  FAIL  19/20 runs passed, 24.7 s\n"),
            "{text}"
        );
        assert!(
            text.contains("    observation   expected  observed  passed  verdict\n"),
            "{text}"
        );
        assert!(
            text.contains("    lost_updates  == 0      0 (0..2)  19/20   FLAKY\n"),
            "{text}"
        );
        assert!(
            text.contains("    acquired      > 0       812       20/20   PASS\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "3 scenarios × 20 runs, 0 passed, 2 failed, 1 unknown, 1 flaky expectation"
            ),
            "{text}"
        );
        assert!(text.lines().all(|l| l == l.trim_end()), "trailing spaces");
    }

    #[test]
    fn colored_render_paints_verdicts() {
        let text = rendered(Style::colored());
        let green = AnsiColor::Green.on_default().effects(Effects::BOLD);
        let red = AnsiColor::Red.on_default().effects(Effects::BOLD);
        assert!(text.contains(&format!("{green}PASS{green:#}")));
        assert!(text.contains(&format!("{red}FAIL{red:#}")));
    }

    #[test]
    fn color_decision() {
        use ColorChoice::*;
        let set = |s: &str| Some(OsString::from(s));
        assert!(decide(Auto, None, set("xterm"), true));
        assert!(!decide(Auto, None, set("xterm"), false));
        assert!(!decide(Auto, set("1"), None, true));
        assert!(decide(Auto, set(""), None, true), "empty NO_COLOR is unset");
        assert!(!decide(Auto, None, set("dumb"), true));
        assert!(decide(Always, set("1"), None, false));
        assert!(!decide(Never, None, None, true));
    }

    #[test]
    fn services_table_aligns_urls() {
        let report = sample::report();
        let mut services = report.labs[0].services.clone();
        services.push(ServiceReport {
            name: "postgres-primary".into(),
            kind: "postgres".into(),
            image: "postgres:17".into(),
            url: "postgres://postgres@127.0.0.1:49154/postgres".into(),
            ready_ms: 900,
        });
        let mut buf = Vec::new();
        render_services(&services, &mut buf).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "service           kind      url\n\
             redis             redis     redis://127.0.0.1:49153\n\
             postgres-primary  postgres  postgres://postgres@127.0.0.1:49154/postgres\n"
        );
    }

    /// A writer the test can read back after `Progress` took ownership.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_progress_prints_one_line_per_event() {
        fn assert_reporter<T: Reporter>() {}
        assert_reporter::<Progress>();

        let buf = Shared::default();
        let progress = Progress::plain(Style::plain(), Box::new(buf.clone()));
        let report = sample::report();
        let lab = &report.labs[0];
        let events = [
            Event::LabStarted {
                lab: lab.name.clone(),
                title: lab.title.clone(),
                scenarios: 3,
            },
            Event::ServiceStarting {
                lab: lab.name.clone(),
                service: "redis".into(),
                kind: "redis".into(),
                image: "redis:7.4.2".into(),
            },
            Event::ServiceReady {
                lab: lab.name.clone(),
                service: "redis".into(),
                url: "redis://127.0.0.1:49153".into(),
                ms: 312,
            },
            Event::ScenarioStarted {
                lab: lab.name.clone(),
                scenario: "setnx".into(),
            },
            Event::ScenarioFinished {
                lab: lab.name.clone(),
                report: lab.scenarios[0].clone(),
            },
            Event::ScenarioFinished {
                lab: lab.name.clone(),
                report: lab.scenarios[1].clone(),
            },
            Event::LabFinished {
                report: lab.clone(),
            },
            Event::TornDown {
                lab: lab.name.clone(),
                removed: 1,
            },
        ];
        for e in &events {
            progress.event(e);
        }
        drop(progress);
        let text = String::from_utf8(lock(&buf.0).clone()).unwrap();
        assert_eq!(
            text,
            "Distributed locking with Redis (distributed-locking)  3 scenarios\n\
             starting redis (redis:7.4.2)\n\
             ✓ redis ready in 312 ms  redis://127.0.0.1:49153\n\
             scenario setnx …\n\
             ✓ setnx PASS 1.2 s\n\
             ✗ no-lock FAIL 870 ms  lost_updates: expected > 0, observed 0\n\
             ✗ distributed-locking FAIL (4.2 s)\n\
             removed 1 container or network of distributed-locking\n"
        );
    }

    /// Solutions of one lab side by side: each line names lab and solution.
    #[test]
    fn tagged_runs_in_parallel_stay_apart() {
        let buf = Shared::default();
        let progress = Arc::new(Progress::plain(Style::plain(), Box::new(buf.clone())));
        progress.set_parallel(true);
        for tag in ["reference", "starter"] {
            let tagged = crate::event::Tagged {
                inner: progress.clone(),
                tag: tag.into(),
            };
            tagged.event(&Event::ScenarioStarted {
                lab: "distributed-locking".into(),
                scenario: "setnx".into(),
            });
        }
        drop(progress);
        let text = String::from_utf8(lock(&buf.0).clone()).unwrap();
        assert_eq!(
            text,
            "distributed-locking[reference]: scenario setnx …\n\
             distributed-locking[starter]: scenario setnx …\n"
        );
    }
}
