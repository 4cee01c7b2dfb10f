//! One function per command. Output goes through `report`; errors come back
//! as [`CliError`] and become exit codes in `cli::run`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Cli, CliError, Command, Format, ImagesCommand, show, solutions};
use crate::engine::stack::{self, StackOptions};
use crate::engine::{Engine, Stack, gc};
use crate::event::Reporter;
use crate::lab::{self, Lab, LabErrors};
use crate::report::terminal::{self, Progress, Style};
use crate::report::{html, json, junit};
use crate::runner::{self, RunOptions};
use crate::{catalog, exit, images, sections};

/// Runs the parsed command.
pub async fn dispatch(cli: Cli) -> Result<i32, CliError> {
    let labs_dir = labs_dir(cli.labs_dir.as_deref());
    let color = cli.color;
    let verbose = cli.verbose > 0;
    match cli.command {
        Command::List { format } => list(&labs_dir, format),
        Command::Show { lab, format } => show::show(&load(&labs_dir, &lab)?, format),
        Command::Validate {
            files,
            solutions: true,
            repeat,
            format,
            jobs,
            images,
        } => {
            let files = if files.is_empty() {
                lab::discover(&labs_dir)
            } else {
                files
                    .iter()
                    .map(|f| find(&labs_dir, &f.display().to_string()))
                    .collect::<Result<_, _>>()?
            };
            let given = !files.is_empty();
            let mut labs = Vec::new();
            for f in files {
                let l = Lab::load(&f)?;
                if l.challenge.is_some() {
                    labs.push(Arc::new(l));
                } else if given {
                    return Err(no_challenge(&l));
                }
            }
            let settings = solutions::Settings {
                source: images.images,
                repeat,
                jobs: jobs.map_or(1, |j| j as usize),
                format,
                color,
                verbose,
            };
            solutions::validate(labs, &settings).await
        }
        Command::Validate { files, .. } => validate(&labs_dir, files),
        Command::Run {
            labs,
            all,
            scenarios,
            format,
            junit,
            json,
            html,
            scenario_timeout,
            repeat,
            jobs,
            solution,
            images,
        } => {
            let files = if all {
                lab::discover(&labs_dir)
            } else if labs.is_empty() {
                return Err(CliError::Input(
                    "name at least one lab, or use --all (`infralab list` shows them)".into(),
                ));
            } else {
                labs.iter()
                    .map(|l| find(&labs_dir, l))
                    .collect::<Result<_, _>>()?
            };
            // Every lab must be valid before anything starts.
            let mut loaded = Vec::new();
            let mut errors = LabErrors::default();
            for f in files {
                match Lab::load(&f) {
                    Ok(l) => loaded.push(Arc::new(l)),
                    Err(e) => errors.0.extend(e.0),
                }
            }
            if !errors.0.is_empty() {
                return Err(errors.into());
            }
            if solution.is_some()
                && let Some(l) = loaded.iter().find(|l| l.challenge.is_none())
            {
                return Err(no_challenge(l));
            }
            if let Some(given) = solution.as_deref()
                && let Some(why) = loaded
                    .iter()
                    .find_map(|l| crate::challenge::unbuilt_examples(l, [given]))
            {
                return Err(CliError::Env(crate::engine::EnvError::new(why)));
            }
            check_scenarios(&loaded, &scenarios)?;
            let opts = RunOptions {
                source: images.images,
                scenarios,
                scenario_timeout,
                repeat,
                jobs: jobs.map_or_else(runner::default_jobs, |j| j as usize),
                solution,
            };
            for l in &loaded {
                if runner::selected(l, &opts).is_empty() {
                    return Err(CliError::Input(format!(
                        "lab `{}` has no scenario to run {}",
                        l.name,
                        if opts.solution.is_some() {
                            "with --solution (none is marked `challenge: true` among those selected)"
                        } else {
                            "without --solution: its scenarios check a program (`--solution CMD`)"
                        }
                    )));
                }
            }
            let outputs = Outputs {
                format,
                junit,
                json,
                html,
            };
            run(loaded, &opts, outputs, color, verbose).await
        }
        Command::Up { lab, images } => up(&load(&labs_dir, &lab)?, images.images, color).await,
        Command::Down { lab } => {
            let name = find(&labs_dir, &lab)
                .ok()
                .and_then(|f| Lab::load(&f).ok())
                .map(|l| l.name)
                .unwrap_or(lab);
            let engine = Engine::connect().await?;
            let n = gc::down(&engine, &name).await?;
            eprintln!(
                "{name}: removed {n} running stack{}",
                if n == 1 { "" } else { "s" }
            );
            Ok(exit::PASSED)
        }
        Command::Gc { all } => {
            let engine = Engine::connect().await?;
            let removed = gc::gc(&engine, all).await?;
            for r in &removed {
                println!(
                    "removed run {} of lab {} (pid {})",
                    r.run_id,
                    r.lab,
                    r.pid.map(|p| p.to_string()).unwrap_or("?".into())
                );
            }
            eprintln!(
                "gc: {} run{} removed",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" }
            );
            Ok(exit::PASSED)
        }
        Command::Images { command } => images_cmd(command, color).await,
        Command::Doctor => doctor().await,
        Command::Serve { role, port } => serve(&role, port).await,
    }
}

/// `--labs`, else ./labs, else the catalog next to the crate's sources.
fn labs_dir(given: Option<&Path>) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    let local = PathBuf::from("labs");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("labs")
}

fn find(dir: &Path, wanted: &str) -> Result<PathBuf, CliError> {
    lab::find(dir, wanted).ok_or_else(|| {
        CliError::Input(format!(
            "no lab named `{wanted}` in {}; `infralab list` shows the labs",
            dir.display()
        ))
    })
}

fn no_challenge(lab: &Lab) -> CliError {
    CliError::Input(format!(
        "lab `{}` has no challenge; `infralab list` marks the labs that do",
        lab.name
    ))
}

fn load(dir: &Path, wanted: &str) -> Result<Lab, CliError> {
    Ok(Lab::load(&find(dir, wanted)?)?)
}

/// `--scenario` names must exist before anything starts: a name no lab has,
/// or a lab that has none of the names (it would run nothing), is bad input.
fn check_scenarios(labs: &[Arc<Lab>], wanted: &[String]) -> Result<(), CliError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let has = |lab: &Lab, name: &str| lab.scenarios.iter().any(|s| s.name == name);
    let listed = |lab: &Lab| {
        lab.scenarios
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut problems = Vec::new();
    for name in wanted {
        if !labs.iter().any(|l| has(l, name)) {
            let known: Vec<String> = labs
                .iter()
                .map(|l| format!("  {}: {}", l.name, listed(l)))
                .collect();
            problems.push(format!(
                "no scenario named `{name}`; the scenarios are:\n{}",
                known.join("\n")
            ));
        }
    }
    if problems.is_empty() {
        for lab in labs {
            if !wanted.iter().any(|n| has(lab, n)) {
                problems.push(format!(
                    "lab `{}` has none of the scenarios {}; its scenarios are: {}",
                    lab.name,
                    wanted
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    listed(lab)
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Input(problems.join("\nerror: ")))
    }
}

fn list(dir: &Path, format: Format) -> Result<i32, CliError> {
    let mut labs = Vec::new();
    let mut broken = Vec::new();
    for f in lab::discover(dir) {
        match Lab::load(&f) {
            Ok(l) => labs.push(l),
            Err(_) => broken.push(f),
        }
    }
    if format == Format::Json {
        let items: Vec<_> = labs
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name, "title": l.title, "section": l.section, "summary": l.summary,
                    "file": l.file, "scenarios": l.scenarios.iter().map(|s| &s.name).collect::<Vec<_>>(),
                    "challenge": l.challenge.is_some(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        );
        return Ok(exit::PASSED);
    }
    let width = labs.iter().map(|l| l.name.len()).max().unwrap_or(0);
    for (id, heading) in sections::SECTIONS {
        let in_section: Vec<&Lab> = labs.iter().filter(|l| l.section == *id).collect();
        if in_section.is_empty() {
            continue;
        }
        println!("{heading}");
        for l in in_section {
            let mark = if l.challenge.is_some() {
                "  [challenge]"
            } else {
                ""
            };
            println!("  {:width$}  {}{mark}", l.name, l.summary);
        }
        println!();
    }
    for f in &broken {
        println!("(invalid, see `infralab validate {}`)", f.display());
    }
    if labs.iter().any(|l| l.challenge.is_some()) {
        println!(
            "[challenge]: write the program yourself and check it: infralab run LAB --solution 'CMD' (`infralab show LAB` says how)"
        );
    }
    Ok(exit::PASSED)
}

fn validate(dir: &Path, files: Vec<PathBuf>) -> Result<i32, CliError> {
    let files = if files.is_empty() {
        lab::discover(dir)
    } else {
        files
    };
    let mut errors = LabErrors::default();
    for f in &files {
        match Lab::load(f) {
            Ok(l) => println!(
                "ok    {}  ({}, {} scenarios)",
                f.display(),
                l.name,
                l.scenarios.len()
            ),
            Err(e) => {
                println!("error {}", f.display());
                errors.0.extend(e.0);
            }
        }
    }
    if errors.0.is_empty() {
        Ok(exit::PASSED)
    } else {
        Err(errors.into())
    }
}

/// Resolves when the user interrupts (Ctrl-C) or the process is asked to stop.
/// After Ctrl-C or SIGTERM: removes every stack still running and says so.
/// Returns the exit code for an interruption.
pub(super) async fn tear_down_interrupted(progress: &Progress, engine: &Engine) -> i32 {
    progress.finish();
    eprintln!("interrupted: tearing down …");
    let removed = runner::teardown_active(engine).await;
    eprintln!("removed {removed} container(s) and network(s)");
    exit::INTERRUPTED
}

pub(super) async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Where `run` writes its report.
struct Outputs {
    format: Format,
    junit: Option<PathBuf>,
    json: Option<PathBuf>,
    html: Option<PathBuf>,
}

async fn run(
    labs: Vec<Arc<Lab>>,
    opts: &RunOptions,
    outputs: Outputs,
    color: terminal::ColorChoice,
    verbose: bool,
) -> Result<i32, CliError> {
    let Outputs {
        format,
        junit: junit_file,
        json: json_file,
        html: html_file,
    } = outputs;
    let engine = Engine::connect().await?;
    let progress = Arc::new(Progress::new(color));
    progress.set_parallel(opts.jobs > 1 && labs.len() > 1);
    progress.set_verbose(verbose);
    let reporter: Arc<dyn Reporter> = progress.clone();
    let report = tokio::select! {
        report = runner::run_labs(&engine, labs, opts, reporter) => report,
        _ = interrupted() => return Ok(tear_down_interrupted(&progress, &engine).await),
    };
    progress.finish();
    let write_file = |path: &PathBuf, f: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| {
        std::fs::File::create(path)
            .and_then(|mut file| f(&mut file))
            .map_err(|e| CliError::Input(format!("cannot write {}: {e}", path.display())))
    };
    if let Some(p) = &junit_file {
        write_file(p, &|w| junit::write(&report, w))?;
    }
    if let Some(p) = &json_file {
        write_file(p, &|w| json::write(&report, w))?;
    }
    if let Some(p) = &html_file {
        write_file(p, &|w| html::write(&report, w))?;
    }
    let mut stdout = std::io::stdout().lock();
    let written = match format {
        Format::Json => json::write(&report, &mut stdout),
        Format::Text => terminal::render(&report, Style::stdout(color), &mut stdout),
    };
    written.map_err(|e| CliError::Input(format!("cannot write the report: {e}")))?;
    if report.labs.iter().any(|l| l.error.is_some()) {
        return Ok(exit::ENVIRONMENT);
    }
    Ok(if report.verdict == crate::check::Verdict::Pass {
        exit::PASSED
    } else {
        exit::CHECK_FAILED
    })
}

async fn up(
    lab: &Lab,
    source: images::Source,
    color: terminal::ColorChoice,
) -> Result<i32, CliError> {
    let engine = Engine::connect().await?;
    let progress = Progress::new(color);
    let run_id = stack::new_run_id();
    let started = tokio::select! {
        s = Stack::start(&engine, &run_id, lab, StackOptions { keep: true, source }, &progress) => s,
        _ = interrupted() => {
            // Like `run`: what was started goes, and the exit says "interrupted".
            progress.finish();
            eprintln!("interrupted: tearing down …");
            let removed = stack::teardown(&engine, &run_id).await.unwrap_or(0);
            eprintln!("removed {removed} container(s) and network(s)");
            return Ok(exit::INTERRUPTED);
        }
    };
    progress.finish();
    match started {
        Ok(stack) => {
            let mut stdout = std::io::stdout().lock();
            let _ = terminal::render_services(&runner::service_reports(&stack), &mut stdout);
            let _ = writeln!(stdout, "\nRunning until `infralab down {}`.", lab.name);
            Ok(exit::PASSED)
        }
        Err(e) => {
            let _ = stack::teardown(&engine, &run_id).await;
            Err(e.into())
        }
    }
}

async fn images_cmd(command: ImagesCommand, color: terminal::ColorChoice) -> Result<i32, CliError> {
    let engine = Engine::connect().await?;
    match command {
        ImagesCommand::List => {
            println!(
                "{:10} {:8} {:28} {:8} LOCAL IMAGE",
                "KIND", "OFFICIAL", "IMAGE", "LOCAL"
            );
            for k in catalog::KINDS {
                let s = images::status(&engine.docker, catalog::spec(k.name())).await;
                let yes = |b: bool| if b { "present" } else { "-" };
                println!(
                    "{:10} {:8} {:28} {:8} {}",
                    s.kind,
                    yes(s.official_present),
                    s.official,
                    yes(s.local_present),
                    s.local_tag
                );
            }
            Ok(exit::PASSED)
        }
        ImagesCommand::Build { kinds, all, force } => {
            let names: Vec<String> = if all || kinds.is_empty() {
                catalog::kind_names()
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                kinds
            };
            for n in &names {
                if catalog::kind(n).is_none() {
                    return Err(CliError::Input(format!(
                        "unknown kind `{n}`; expected one of: {}",
                        catalog::kind_names().join(", ")
                    )));
                }
            }
            let specs: Vec<_> = names.iter().map(|n| catalog::spec(n)).collect();
            let progress = Progress::new(color);
            let results = images::build_all(&engine.docker, &specs, force, &progress).await;
            progress.finish();
            let mut failed = None;
            for (kind, r) in results {
                match r {
                    Ok(tag) => println!("{kind:10} {tag}"),
                    Err(e) => {
                        println!("{kind:10} FAILED");
                        failed = Some(e);
                    }
                }
            }
            match failed {
                Some(e) => Err(CliError::Env(e.into())),
                None => Ok(exit::PASSED),
            }
        }
    }
}

async fn doctor() -> Result<i32, CliError> {
    let engine = match Engine::connect().await {
        Ok(e) => e,
        Err(e) => {
            println!("engine      unreachable");
            return Err(e.into());
        }
    };
    println!("engine      {} at {}", engine.version, engine.host);
    println!("ports       {}", engine.ports_summary());
    let mm = which("mmdebstrap");
    println!(
        "mmdebstrap  {}",
        mm.map(|p| p.display().to_string()).unwrap_or_else(|| {
            "missing (needed to build local images: sudo apt-get install mmdebstrap)".into()
        })
    );
    for k in catalog::KINDS {
        let s = images::status(&engine.docker, catalog::spec(k.name())).await;
        let state = match (s.official_present, s.local_present) {
            (true, _) => format!("official {} present", s.official),
            (false, true) => format!("local {} present", s.local_tag),
            (false, false) => format!(
                "no image yet (pulled or built on first use; `infralab images build {}`)",
                s.kind
            ),
        };
        println!("{:11} {state}", s.kind);
    }
    let runs = gc::runs(&engine).await?;
    let orphans = runs.iter().filter(|r| !r.keep && !r.owner_alive()).count();
    println!(
        "runs        {} on the engine, {orphans} orphaned{}",
        runs.len(),
        if orphans > 0 {
            " (`infralab gc` removes them)"
        } else {
            ""
        }
    );
    Ok(exit::PASSED)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

async fn serve(role: &str, port: u16) -> Result<i32, CliError> {
    crate::agent::serve(role, port)
        .await
        .map(|()| exit::PASSED)
        .map_err(|e| CliError::Env(crate::engine::EnvError::new(format!("serve {role}: {e:#}"))))
}
