//! `infralab gc` and `infralab down`: removing runs whose owner is gone.

use std::collections::BTreeMap;

use super::stack::{list_labelled, teardown};
use super::{Engine, EnvError, labels};

/// One run found on the engine.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// Lab name.
    pub lab: String,
    /// Owning process.
    pub pid: Option<u32>,
    /// Started by `up` (kept until `down`).
    pub keep: bool,
}

impl RunInfo {
    /// Whether the owning process still exists on this machine.
    pub fn owner_alive(&self) -> bool {
        // Signal 0 checks existence; EPERM still means it exists.
        self.pid.is_some_and(|pid| {
            let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        })
    }
}

/// Every run that has a labelled container or network.
pub async fn runs(engine: &Engine) -> Result<Vec<RunInfo>, EnvError> {
    let mut found: BTreeMap<String, RunInfo> = BTreeMap::new();
    let (containers, networks) = list_labelled(engine, labels::RUN).await?;
    let label_sets = containers
        .into_iter()
        .filter_map(|c| c.labels)
        .chain(networks.into_iter().filter_map(|n| n.labels));
    for l in label_sets {
        let Some(run_id) = l.get(labels::RUN) else {
            continue;
        };
        found.entry(run_id.clone()).or_insert_with(|| RunInfo {
            run_id: run_id.clone(),
            lab: l.get(labels::LAB).cloned().unwrap_or_default(),
            pid: l.get(labels::PID).and_then(|p| p.parse().ok()),
            keep: l.get(labels::KEEP).is_some_and(|k| k == "true"),
        });
    }
    Ok(found.into_values().collect())
}

/// Removes runs whose process is gone (and, with `all`, every run, `up` ones
/// included). Returns the runs removed.
pub async fn gc(engine: &Engine, all: bool) -> Result<Vec<RunInfo>, EnvError> {
    let mut removed = Vec::new();
    for run in runs(engine).await? {
        let orphan = !run.keep && !run.owner_alive();
        if all || orphan {
            teardown(engine, &run.run_id).await?;
            removed.push(run);
        }
    }
    Ok(removed)
}

/// Removes the `up` runs of one lab. Returns how many runs were removed.
pub async fn down(engine: &Engine, lab: &str) -> Result<usize, EnvError> {
    let mut n = 0;
    for run in runs(engine).await? {
        if run.lab == lab && run.keep {
            teardown(engine, &run.run_id).await?;
            n += 1;
        }
    }
    Ok(n)
}
