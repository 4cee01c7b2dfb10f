//! Shared helpers for the integration tests: run the real `infralab` binary
//! against the real Docker engine, and look for leftover labelled resources.
#![allow(dead_code)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The repository's lab catalog.
pub fn labs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("labs")
}

/// A command for the infralab binary, with colour off and the catalog set.
pub fn infralab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_infralab"));
    c.env("NO_COLOR", "1")
        .env("INFRALAB_LABS", labs_dir())
        .env_remove("RUST_LOG");
    c
}

/// Runs infralab with `args` and returns its output; the command holds the
/// host's CPU shared (see [`alone`]).
pub fn run(args: &[&str]) -> Output {
    let _cpu = shared();
    infralab().args(args).output().expect("infralab runs")
}

/// The host's CPU, as the tests of this binary share it. Most tests wait on
/// containers, so more of them run at once than there are cores; the few
/// whose verdicts rest on CPU time against a quota (a request of 100 ms of
/// CPU on one core) hold it alone for their whole run, since a host busy with
/// other labs would decide their verdicts. Every lab a test runs holds it
/// shared: through [`run`], or with [`shared`] around a command of its own.
/// std's `RwLock` on Linux makes new readers wait behind a waiting writer, so
/// a test that asks to be alone waits only for the commands already running.
static CPU: RwLock<()> = RwLock::new(());

thread_local! {
    /// Whether this test thread holds [`CPU`] alone (its commands then skip
    /// the shared hold, which would wait on itself).
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Held by a test that must have the host's CPU to itself: no other test's
/// infralab command runs until it is dropped.
pub struct Alone(RwLockWriteGuard<'static, ()>);

/// Waits until the commands of other tests have finished and keeps new ones
/// waiting while the returned guard lives.
pub fn alone() -> Alone {
    let guard = CPU.write().unwrap_or_else(PoisonError::into_inner);
    ALONE.set(true);
    Alone(guard)
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.set(false);
    }
}

/// Holds the host's CPU shared while the returned guard lives (nothing when
/// this thread holds it alone).
pub fn shared() -> Option<RwLockReadGuard<'static, ()>> {
    (!ALONE.get()).then(|| CPU.read().unwrap_or_else(PoisonError::into_inner))
}

/// Text of stdout and stderr together, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// This process's id and a counter: unique among concurrent test processes
/// and among the tests of this one (they share the process).
pub fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// A temporary folder holding one lab file; the lab's name is made unique so
/// concurrent tests can find their own containers by the lab label.
pub struct TempLab {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub name: String,
}

/// Copies a catalog lab into a temp folder under a unique name, applying
/// `edit` to its text.
pub fn temp_lab(catalog_file: &str, suffix: &str, edit: impl Fn(String) -> String) -> TempLab {
    let text = std::fs::read_to_string(labs_dir().join(catalog_file)).expect("catalog lab");
    let old_name = text
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .expect("lab has a name")
        .trim()
        .to_string();
    let name = format!("{old_name}-{suffix}-{}", unique_suffix());
    let text = edit(text.replacen(&format!("name: {old_name}"), &format!("name: {name}"), 1));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write lab");
    TempLab { dir, path, name }
}

/// Like [`temp_lab`], and copies the files next to the catalog lab too (configs
/// and certificates its services mount with `files:`), keeping their relative
/// paths. Other lab files (`*.yaml`) in that folder are not copied.
pub fn temp_lab_with_files(
    catalog_file: &str,
    suffix: &str,
    edit: impl Fn(String) -> String,
) -> TempLab {
    fn copy_dir(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).expect("lab folder") {
            let path = entry.expect("dir entry").path();
            let target = to.join(path.file_name().expect("file name"));
            if path.is_dir() {
                std::fs::create_dir_all(&target).expect("create folder");
                copy_dir(&path, &target);
            } else if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                std::fs::copy(&path, &target).expect("copy lab file");
            }
        }
    }
    let lab = temp_lab(catalog_file, suffix, edit);
    let folder = labs_dir().join(catalog_file);
    copy_dir(folder.parent().expect("lab folder"), lab.dir.path());
    lab
}

/// Writes a lab file with the given text into a temp folder.
pub fn write_lab(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("lab.yaml");
    std::fs::write(&path, text).expect("write lab");
    (dir, path)
}

/// IDs of containers and networks carrying the label filter (`key=value`).
pub fn labelled(filter: &str) -> (Vec<String>, Vec<String>) {
    let ids = |what: &[&str]| {
        let out = Command::new("docker")
            .args(what)
            .args([
                "--filter",
                &format!("label={filter}"),
                "--format",
                "{{.ID}}",
            ])
            .output()
            .expect("docker cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    (ids(&["ps", "-a"]), ids(&["network", "ls"]))
}

/// Asserts nothing labelled with this lab name is left on the engine.
pub fn assert_nothing_left(lab: &str) {
    let (containers, networks) = labelled(&format!("io.infralab.lab={lab}"));
    assert!(
        containers.is_empty() && networks.is_empty(),
        "lab {lab} left containers {containers:?} and networks {networks:?}"
    );
}

/// The JSON report printed by `run --format json`.
pub fn json_report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not a JSON report ({e}):\n{}", text(out)))
}

/// One scenario of the first lab in a JSON report, by name.
pub fn scenario<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("scenario {name} in {report}"))
}

/// Runs a lab file with `--format json` (and extra args): exit code, report, and
/// the whole output for assertion messages.
pub fn run_json(lab: &TempLab, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec!["run", lab.path.to_str().unwrap(), "--format", "json"];
    args.extend_from_slice(extra);
    let out = run(&args);
    let report = json_report(&out);
    (out.status.code(), report, text(&out))
}

/// An edit for [`temp_lab`] that changes parameters the way an instructor
/// would: each `(name, value)` replaces the lab-level value and every
/// scenario's own value of that parameter (the lab is rewritten as JSON,
/// which is YAML too). Use it to prove expectations do not merely repeat
/// the defaults.
pub fn changed_params(
    overrides: &[(&str, serde_json::Value)],
) -> impl Fn(String) -> String + use<> {
    let overrides: Vec<(String, serde_json::Value)> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    move |text: String| {
        let mut lab: serde_json::Value = serde_saphyr::from_str(&text).expect("lab parses");
        for (key, value) in &overrides {
            let params = lab
                .as_object_mut()
                .expect("lab is a mapping")
                .entry("params")
                .or_insert_with(|| serde_json::json!({}));
            params[key.as_str()] = value.clone();
            for s in lab["scenarios"].as_array_mut().expect("scenarios") {
                if s.get("params").and_then(|p| p.get(key.as_str())).is_some() {
                    s["params"][key.as_str()] = value.clone();
                }
            }
        }
        serde_json::to_string_pretty(&lab).expect("json")
    }
}

/// `text` with `from` replaced by `to`; panics when `from` is not there, so
/// an edit cannot silently stop applying when the catalog lab changes.
pub fn replaced(text: String, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the lab no longer contains `{from}`; update this test's edit"
    );
    text.replace(from, to)
}

/// A number observation of one scenario of the first lab in a JSON report.
pub fn obs(report: &serde_json::Value, name: &str, observation: &str) -> f64 {
    scenario(report, name)["observations"][observation]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: no numeric {observation}"))
}

/// One expectation's result in one scenario of a JSON report.
pub fn check<'a>(
    report: &'a serde_json::Value,
    name: &str,
    observation: &str,
) -> &'a serde_json::Value {
    scenario(report, name)["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["observation"] == observation)
        .unwrap_or_else(|| panic!("{name}: no check on {observation}"))
}

/// The verdict (`pass`, `fail`, `unknown`) of one expectation.
pub fn check_verdict(report: &serde_json::Value, name: &str, observation: &str) -> String {
    check(report, name, observation)["verdict"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Asserts every scenario of the first lab passed.
pub fn all_pass(report: &serde_json::Value) {
    for s in report["labs"][0]["scenarios"]
        .as_array()
        .expect("scenarios")
    {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
}

/// An edit for [`temp_lab`] that sets parameters of single scenarios: each
/// `(scenario, name, value)` breaks that scenario's implementation (another
/// mode, another prefetch) while its expectations stay as shipped.
pub fn scenario_params(
    edits: &[(&str, &str, serde_json::Value)],
) -> impl Fn(String) -> String + use<> {
    let edits: Vec<(String, String, serde_json::Value)> = edits
        .iter()
        .map(|(s, k, v)| (s.to_string(), k.to_string(), v.clone()))
        .collect();
    move |text: String| {
        let mut lab: serde_json::Value = serde_saphyr::from_str(&text).expect("lab parses");
        for (name, key, value) in &edits {
            let s = lab["scenarios"]
                .as_array_mut()
                .expect("scenarios")
                .iter_mut()
                .find(|s| s["name"] == name.as_str())
                .unwrap_or_else(|| panic!("scenario {name}"));
            if s.get("params").is_none() {
                s["params"] = serde_json::json!({});
            }
            s["params"][key.as_str()] = value.clone();
        }
        serde_json::to_string_pretty(&lab).expect("json")
    }
}

/// `infralab validate --solutions LAB --format json`, which must exit 0:
/// the matrix's rows, after checking that every row got its declared
/// verdict and that each of `solutions` is among them.
pub fn validate_solutions(lab: &TempLab, solutions: &[&str]) -> Vec<serde_json::Value> {
    validate_solutions_with(lab, solutions, &[])
}

/// The same with more options (`--jobs 2`).
pub fn validate_solutions_with(
    lab: &TempLab,
    solutions: &[&str],
    extra: &[&str],
) -> Vec<serde_json::Value> {
    let mut args = vec![
        "validate",
        "--solutions",
        lab.path.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    let text = text(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect(&text);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let rows = report["labs"][0]["solutions"]
        .as_array()
        .expect("rows")
        .clone();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["solution"].as_str().unwrap())
        .collect();
    for n in solutions {
        assert!(names.contains(n), "{n} in {names:?}");
    }
    for r in &rows {
        assert_eq!(r["ok"], true, "{r}");
    }
    rows
}

/// Runs one scenario of a copy of `catalog_file` (with the files beside it)
/// whose `edits` (scenario, parameter, value) break its implementation; it
/// must exit 1 and leave nothing. Returns the JSON report.
pub fn run_broken(
    catalog_file: &str,
    suffix: &str,
    edits: &[(&str, &str, serde_json::Value)],
    scenario_name: &str,
) -> serde_json::Value {
    let lab = temp_lab_with_files(catalog_file, suffix, scenario_params(edits));
    let (code, report, text) = run_json(&lab, &["--scenario", scenario_name]);
    assert_eq!(code, Some(1), "{text}");
    assert_nothing_left(&lab.name);
    report
}
