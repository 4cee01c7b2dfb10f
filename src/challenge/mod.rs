//! [`Solution`]: the learner's program, run as N host processes for one
//! challenge scenario. The exercise (the harness) starts it and waits for
//! it; faults signal it; the runner stops it when the scenario ends.
//!
//! Each instance is `sh -c CMD` in its own process group, as the current
//! user, with the services' endpoints in the environment ([`env`]). Signals
//! go to the whole group, so a shell wrapper and its children are paused or
//! killed together. An instance dies with infralab (`PR_SET_PDEATHSIG`) and
//! with the [`Solution`] (its groups are killed on drop).

pub mod env;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::event::{InstanceReport, SolutionReport};
use crate::lab::{FaultAction, Lab, Role};

/// Lines of output kept per instance.
const KEEP_LINES: usize = 1000;

/// How long a started instance is watched for an immediate failure.
const START_CHECK: Duration = Duration::from_millis(300);

/// Between SIGTERM and SIGKILL when stopping.
const GRACE: Duration = Duration::from_secs(2);

/// What an instance did that the harness may need: when it was paused,
/// resumed, killed or ended, on the wall clock (the services' clock too).
#[derive(Debug, Clone, PartialEq)]
pub struct Happening {
    /// Instance, 1-based.
    pub instance: u32,
    /// Wall-clock time.
    pub at: SystemTime,
    /// What happened.
    pub what: Lifecycle,
}

/// One step in an instance's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Started (or restarted).
    Started,
    /// Frozen by a fault (SIGSTOP).
    Paused,
    /// Thawed (SIGCONT).
    Resumed,
    /// The process ended (on its own, by a fault or stopped).
    Ended,
}

/// Where the program's lines and its start go (the runner turns them into
/// events for the reporter).
pub trait Listener: Send + Sync {
    /// The program starts: its command, instances and environment.
    fn started(&self, command: &str, instances: u32, env: &[(String, String)]);
    /// An instance printed a line.
    fn line(&self, instance: u32, line: &str);
}

/// A listener that ignores everything.
pub struct Quiet;

impl Listener for Quiet {
    fn started(&self, _: &str, _: u32, _: &[(String, String)]) {}
    fn line(&self, _: u32, _: &str) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Code(i32),
    Signal(i32),
}

#[derive(Default)]
struct Instance {
    /// Process group id (the shell's pid); 0 before the first start.
    pgid: i32,
    /// Bumped on every (re)start so a stale reaper cannot overwrite.
    generation: u32,
    running: bool,
    ended: Option<Ended>,
    /// infralab ended it on purpose (fault kill/stop, end of scenario).
    by_us: Option<&'static str>,
    restarts: u32,
    output: VecDeque<String>,
    dropped: usize,
}

struct State {
    env: Vec<(String, String)>,
    started: bool,
    instances: Vec<Instance>,
    history: Vec<Happening>,
}

/// The learner's program for one scenario.
pub struct Solution {
    command: String,
    role: Role,
    base_env: BTreeMap<String, String>,
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
    listener: Arc<dyn Listener>,
}

impl Solution {
    /// A program of `instances` instances, not started yet, that runs as
    /// `role` says. `env` is the contract's environment shared by all
    /// instances ([`env::contract`]).
    pub fn new(
        command: String,
        instances: u32,
        role: Role,
        env: BTreeMap<String, String>,
        listener: Arc<dyn Listener>,
    ) -> Arc<Solution> {
        Arc::new(Solution {
            command,
            role,
            base_env: env,
            state: Mutex::new(State {
                env: Vec::new(),
                started: false,
                instances: (0..instances).map(|_| Instance::default()).collect(),
                history: Vec::new(),
            }),
            changed: tokio::sync::watch::channel(0).0,
            listener,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shell command.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// How many instances run.
    pub fn instances(&self) -> u32 {
        self.lock().instances.len() as u32
    }

    /// Starts every instance with the contract's environment plus `extra`
    /// (the harness's own endpoints), then watches them briefly: an
    /// instance that cannot start or exits non-zero at once is an error
    /// naming the command and its last output lines.
    pub async fn start(self: &Arc<Self>, extra: &[(&str, String)]) -> Result<(), String> {
        let mut env: BTreeMap<String, String> = self.base_env.clone();
        for (k, v) in extra {
            env.insert(k.to_string(), v.clone());
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let n = {
            let mut st = self.lock();
            if st.started {
                return Err("the program was started twice".into());
            }
            st.started = true;
            st.env = env.clone();
            st.instances.len() as u32
        };
        let mut shown = env.clone();
        shown.push(("INFRALAB_INSTANCE".into(), format!("1..{n}")));
        self.listener.started(&self.command, n, &shown);
        for i in 1..=n {
            self.spawn(i)
                .map_err(|e| format!("cannot start `{}` (instance {i}): {e}", self.command))?;
        }
        tokio::time::sleep(START_CHECK).await;
        let failed: Vec<String> = {
            let st = self.lock();
            st.instances
                .iter()
                .enumerate()
                .filter(|(_, inst)| {
                    matches!(inst.ended, Some(Ended::Code(c)) if c != 0)
                        || matches!(inst.ended, Some(Ended::Signal(_)))
                })
                .map(|(i, inst)| describe_failure(&self.command, i as u32 + 1, inst))
                .collect()
        };
        match failed.first() {
            Some(first) => {
                self.stop().await;
                Err(first.clone())
            }
            None => Ok(()),
        }
    }

    /// Starts (or restarts) instance `i` with the stored environment.
    fn spawn(self: &Arc<Self>, i: u32) -> std::io::Result<()> {
        let env = self.lock().env.clone();
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .envs(env)
            .env("INFRALAB_INSTANCE", i.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let parent = std::process::id() as i32;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The signal fires when the *thread* that forked exits; the
                // runtime's worker threads live as long as infralab does.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id().map_or(0, |p| p as i32);
        let generation = {
            let mut st = self.lock();
            let inst = &mut st.instances[i as usize - 1];
            inst.pgid = pid;
            inst.generation += 1;
            inst.running = true;
            inst.ended = None;
            inst.by_us = None;
            let g = inst.generation;
            st.history.push(Happening {
                instance: i,
                at: SystemTime::now(),
                what: Lifecycle::Started,
            });
            g
        };
        if let Some(out) = child.stdout.take() {
            self.read_lines(i, out, "");
        }
        if let Some(err) = child.stderr.take() {
            self.read_lines(i, err, "err| ");
        }
        let me = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let ended = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(c), _) => Ended::Code(c),
                        (None, Some(sig)) => Ended::Signal(sig),
                        (None, None) => Ended::Code(-1),
                    }
                }
                Err(_) => Ended::Code(-1),
            };
            {
                let mut st = me.lock();
                let inst = &mut st.instances[i as usize - 1];
                if inst.generation != generation {
                    return;
                }
                inst.running = false;
                inst.ended = Some(ended);
                st.history.push(Happening {
                    instance: i,
                    at: SystemTime::now(),
                    what: Lifecycle::Ended,
                });
            }
            me.changed.send_modify(|n| *n += 1);
        });
        Ok(())
    }

    fn read_lines(
        self: &Arc<Self>,
        i: u32,
        stream: impl AsyncRead + Unpin + Send + 'static,
        prefix: &'static str,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                me.listener.line(i, &format!("{prefix}{line}"));
                let mut st = me.lock();
                let inst = &mut st.instances[i as usize - 1];
                if inst.output.len() == KEEP_LINES {
                    inst.output.pop_front();
                    inst.dropped += 1;
                }
                inst.output.push_back(format!("{prefix}{line}"));
            }
        });
    }

    /// Whether every instance has ended.
    pub fn all_ended(&self) -> bool {
        let st = self.lock();
        st.started && st.instances.iter().all(|i| !i.running)
    }

    /// Instances still running (1-based).
    pub fn running(&self) -> Vec<u32> {
        let st = self.lock();
        (1..)
            .zip(&st.instances)
            .filter(|(_, i)| i.running)
            .map(|(n, _)| n)
            .collect()
    }

    /// Waits until every instance has ended or `timeout` passed; true when
    /// they all ended.
    pub async fn wait_ended(&self, timeout: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let all = async {
            loop {
                if self.all_ended() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Pauses, kills, stops, restarts or thaws the instances a fault
    /// names (`None`: all). Signals go to the instance's process group.
    pub async fn apply(
        self: &Arc<Self>,
        target: Option<u32>,
        action: FaultAction,
    ) -> Result<(), String> {
        let n = self.instances();
        let targets: Vec<u32> = match target {
            Some(i) if i >= 1 && i <= n => vec![i],
            Some(i) => {
                return Err(format!(
                    "there is no instance solution-{i} (the program runs {n})"
                ));
            }
            None => (1..=n).collect(),
        };
        if !self.lock().started {
            return Err(format!(
                "fault {} on the program before it started",
                action.name()
            ));
        }
        for i in targets {
            match action {
                FaultAction::Kill => self.end(i, libc::SIGKILL, "killed (fault)"),
                FaultAction::Stop => {
                    self.end(i, libc::SIGTERM, "stopped (fault)");
                }
                FaultAction::Pause => self.pause(i, true),
                FaultAction::Unpause => self.pause(i, false),
                FaultAction::Start => {
                    if !self.is_running(i) {
                        self.restart(i).await?;
                    }
                }
                FaultAction::Restart => {
                    self.end(i, libc::SIGKILL, "killed (restart)");
                    self.wait_instance_ended(i, GRACE).await;
                    self.restart(i).await?;
                }
                FaultAction::Disconnect
                | FaultAction::Connect
                | FaultAction::Partition
                | FaultAction::Heal => {
                    return Err(format!("{} does not apply to the program", action.name()));
                }
            }
        }
        Ok(())
    }

    fn is_running(&self, i: u32) -> bool {
        self.lock().instances[i as usize - 1].running
    }

    async fn wait_instance_ended(&self, i: u32, timeout: Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            while self.is_running(i) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    async fn restart(self: &Arc<Self>, i: u32) -> Result<(), String> {
        self.lock().instances[i as usize - 1].restarts += 1;
        self.spawn(i)
            .map_err(|e| format!("cannot restart solution-{i}: {e}"))
    }

    fn pause(&self, i: u32, pause: bool) {
        let mut st = self.lock();
        let inst = &st.instances[i as usize - 1];
        if !inst.running || inst.pgid <= 0 {
            return;
        }
        let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-inst.pgid, sig) };
        st.history.push(Happening {
            instance: i,
            at: SystemTime::now(),
            what: if pause {
                Lifecycle::Paused
            } else {
                Lifecycle::Resumed
            },
        });
    }

    /// Signals instance `i`'s group to end; `why` explains its end.
    fn end(&self, i: u32, signal: i32, why: &'static str) {
        let mut st = self.lock();
        let inst = &mut st.instances[i as usize - 1];
        if !inst.running || inst.pgid <= 0 {
            return;
        }
        inst.by_us = Some(why);
        // SAFETY: kill(2) on our own child's process group; a stopped group
        // is continued so SIGTERM can be handled.
        unsafe {
            libc::kill(-inst.pgid, signal);
            if signal != libc::SIGKILL {
                libc::kill(-inst.pgid, libc::SIGCONT);
            }
        }
    }

    /// Stops every instance still running: SIGTERM to its group, a grace
    /// period, then SIGKILL.
    pub async fn stop(&self) {
        let running = self.running();
        if running.is_empty() {
            return;
        }
        for &i in &running {
            self.end(i, libc::SIGTERM, "stopped");
        }
        if !self.wait_ended(GRACE).await {
            for i in self.running() {
                self.end(i, libc::SIGKILL, "killed after the grace period");
            }
            self.wait_ended(GRACE).await;
        }
    }

    /// Pauses, resumes, starts and ends of every instance, in order.
    pub fn history(&self) -> Vec<Happening> {
        self.lock().history.clone()
    }

    /// Whether the program was started (by the harness).
    pub fn was_started(&self) -> bool {
        self.lock().started
    }

    /// Instances that failed on their own (non-zero exit, or a signal
    /// infralab did not send), each with its last output lines. A consumer
    /// or server that ended on its own at all failed: it runs until stopped,
    /// and work requeued for it later would find nobody.
    pub fn failures(&self) -> Vec<String> {
        let st = self.lock();
        let until_stopped = self.role != Role::Workers;
        (1..)
            .zip(&st.instances)
            .filter(|(_, inst)| inst.by_us.is_none())
            .filter(|(_, inst)| {
                matches!(inst.ended, Some(Ended::Code(c)) if c != 0 || until_stopped)
                    || matches!(inst.ended, Some(Ended::Signal(_)))
            })
            .map(|(i, inst)| {
                let mut why = describe_failure(&self.command, i, inst);
                if until_stopped && inst.ended == Some(Ended::Code(0)) {
                    why += &format!(" (a {} runs until it is stopped)", self.role.name());
                }
                why
            })
            .collect()
    }

    /// What the report keeps: command, how each instance ended, its output.
    pub fn report(&self) -> SolutionReport {
        let st = self.lock();
        SolutionReport {
            command: self.command.clone(),
            instances: (1..)
                .zip(&st.instances)
                .map(|(i, inst)| InstanceReport {
                    instance: format!("solution-{i}"),
                    ended: ended_text(inst),
                    restarts: inst.restarts,
                    output: {
                        let mut out: Vec<String> = Vec::new();
                        if inst.dropped > 0 {
                            out.push(format!("… {} earlier lines", inst.dropped));
                        }
                        out.extend(inst.output.iter().cloned());
                        out
                    },
                })
                .collect(),
        }
    }
}

impl Drop for Solution {
    fn drop(&mut self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for inst in st.instances.iter().filter(|i| i.running && i.pgid > 0) {
            // SAFETY: kill(2) on our own child's process group.
            unsafe { libc::kill(-inst.pgid, libc::SIGKILL) };
        }
    }
}

fn ended_text(inst: &Instance) -> String {
    match (inst.running, inst.ended, inst.by_us) {
        (true, _, _) => "running".into(),
        (false, _, Some(why)) => why.into(),
        (false, Some(Ended::Code(c)), None) => format!("exit {c}"),
        (false, Some(Ended::Signal(s)), None) => format!("killed by signal {s}"),
        (false, None, None) => "not started".into(),
    }
}

fn describe_failure(command: &str, i: u32, inst: &Instance) -> String {
    let tail: Vec<&str> = inst
        .output
        .iter()
        .rev()
        .take(8)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let output = if tail.is_empty() {
        "it printed nothing".to_string()
    } else {
        format!("its last lines:\n    {}", tail.join("\n    "))
    };
    format!(
        "`{command}` (solution-{i}) ended with {}; {output}",
        ended_text(inst)
    )
}

/// The command a `--solution` value stands for: a solution the lab declares,
/// by name, else the value itself as a shell command. Placeholders are
/// filled in: `{examples}` (the folder of the project's built examples,
/// beside the running infralab) and `{dir}` (the lab file's folder).
pub fn command_for(lab: &Lab, given: &str) -> String {
    let declared = lab
        .challenge
        .as_ref()
        .and_then(|c| c.solutions.iter().find(|s| s.name == given))
        .map_or(given, |s| s.run.as_str());
    fill(
        declared,
        &examples_dir(),
        lab.file.parent().unwrap_or(Path::new(".")),
    )
}

/// The solutions of `lab` named in `names` that are built examples of this
/// project (`{examples}/…`) not built yet, with the fix: a run would start the
/// services only to fail on "not found".
pub fn unbuilt_examples<'a>(lab: &Lab, names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let examples = examples_dir();
    let solutions = &lab.challenge.as_ref()?.solutions;
    let missing: Vec<String> = names
        .into_iter()
        .filter_map(|name| solutions.iter().find(|s| s.name == name))
        .filter(|s| s.run.trim_start().starts_with("{examples}"))
        .filter_map(|s| {
            let program = fill(&s.run, &examples, Path::new("."));
            let program = program.split_whitespace().next()?.to_string();
            (!Path::new(&program).exists()).then(|| format!("`{}` ({program})", s.name))
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    let release = examples
        .parent()
        .is_some_and(|p| p.file_name().is_some_and(|n| n == "release"));
    let (what, is) = if missing.len() == 1 {
        ("solution", "is an example")
    } else {
        ("solutions", "are examples")
    };
    Some(format!(
        "lab `{}`: {what} {} {is} of this project not built yet; build them with `cargo build {}--examples`",
        lab.name,
        missing.join(", "),
        if release { "--release " } else { "" }
    ))
}

/// `{examples}` and `{dir}` replaced.
pub fn fill(command: &str, examples: &Path, dir: &Path) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    command
        .replace("{examples}", &abs(examples).display().to_string())
        .replace("{dir}", &abs(dir).display().to_string())
}

/// `examples/` beside the running executable (`target/<profile>/examples`).
/// A test binary runs from `target/<profile>/deps`, one level down.
pub fn examples_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        return dir.parent().unwrap_or(&dir).join("examples");
    }
    dir.join("examples")
}

/// Whether a solution's `requires:` check (a shell command, e.g.
/// `python3 -c 'import redis'`) succeeds on this host.
pub async fn available(check: &str) -> bool {
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(check)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solution(cmd: &str, n: u32) -> Arc<Solution> {
        role_solution(cmd, n, Role::Workers)
    }

    fn role_solution(cmd: &str, n: u32, role: Role) -> Arc<Solution> {
        Solution::new(
            cmd.into(),
            n,
            role,
            BTreeMap::from([("A".into(), "1".into())]),
            Arc::new(Quiet),
        )
    }

    #[tokio::test]
    async fn instances_get_their_id_and_the_environment() {
        let s = solution("echo \"$INFRALAB_INSTANCE $A $B\"", 3);
        s.start(&[("B", "two".into())]).await.unwrap();
        assert!(s.wait_ended(Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = s.report();
        assert_eq!(r.instances.len(), 3);
        assert_eq!(r.instances[2].output, vec!["3 1 two".to_string()]);
        assert_eq!(r.instances[0].ended, "exit 0");
        assert!(s.failures().is_empty());
    }

    #[tokio::test]
    async fn a_command_that_fails_at_once_is_an_error_with_its_output() {
        let s = solution("echo 'no such module' >&2; exit 3", 2);
        let e = s.start(&[]).await.unwrap_err();
        assert!(e.contains("exit 3"), "{e}");
        assert!(e.contains("err| no such module"), "{e}");
        assert!(e.contains("echo 'no such module'"), "{e}");
    }

    #[tokio::test]
    async fn pause_kill_restart_and_stop_reach_the_group() {
        let s = solution("sleep 30", 2);
        s.start(&[]).await.unwrap();
        s.apply(Some(1), FaultAction::Pause).await.unwrap();
        s.apply(Some(1), FaultAction::Unpause).await.unwrap();
        s.apply(Some(2), FaultAction::Kill).await.unwrap();
        s.wait_instance_ended(2, Duration::from_secs(2)).await;
        assert_eq!(s.running(), vec![1]);
        s.apply(Some(2), FaultAction::Restart).await.unwrap();
        assert_eq!(s.running(), vec![1, 2]);
        let t = std::time::Instant::now();
        s.stop().await;
        assert!(s.all_ended());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "sleep ends on SIGTERM"
        );
        let r = s.report();
        assert_eq!(r.instances[1].restarts, 1);
        assert_eq!(r.instances[0].ended, "stopped");
        assert!(s.failures().is_empty(), "{:?}", s.failures());
        let whats: Vec<Lifecycle> = s
            .history()
            .iter()
            .filter(|h| h.instance == 1)
            .map(|h| h.what)
            .collect();
        assert_eq!(
            whats,
            [
                Lifecycle::Started,
                Lifecycle::Paused,
                Lifecycle::Resumed,
                Lifecycle::Ended
            ]
        );
        assert!(s.apply(Some(3), FaultAction::Kill).await.is_err());
    }

    #[tokio::test]
    async fn a_consumer_that_ends_on_its_own_failed_even_with_exit_0() {
        let s = role_solution("sleep 0.4", 1, Role::Consumer);
        s.start(&[]).await.unwrap();
        assert!(s.wait_ended(Duration::from_secs(5)).await);
        let failures = s.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("exit 0"), "{}", failures[0]);
        assert!(failures[0].contains("a consumer runs until it is stopped"));
        let w = solution("sleep 0.4", 1);
        w.start(&[]).await.unwrap();
        assert!(w.wait_ended(Duration::from_secs(5)).await);
        assert!(w.failures().is_empty(), "workers end on their own");
        let stopped = role_solution("sleep 30", 1, Role::Consumer);
        stopped.start(&[]).await.unwrap();
        stopped.stop().await;
        assert!(stopped.failures().is_empty(), "stopped by infralab");
    }

    #[test]
    fn placeholders_are_filled() {
        let c = fill(
            "{examples}/x {dir}/y.py",
            Path::new("/nonexistent/ex"),
            Path::new("/nonexistent/labs"),
        );
        assert_eq!(c, "/nonexistent/ex/x /nonexistent/labs/y.py");
    }
}
