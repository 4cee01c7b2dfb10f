//! What the build needs from the host: its Debian suite and apt sources, a cache
//! directory, cross-process file locks and a few shell helpers.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The Debian suite local images are made from: the host's own
/// (`VERSION_CODENAME` in /etc/os-release), because its apt sources serve that
/// suite and binaries built on the host (`cargo_install`, `copy_self`) link
/// against its libc. `INFRALAB_SUITE` overrides it.
pub fn suite() -> String {
    static SUITE: OnceLock<String> = OnceLock::new();
    SUITE
        .get_or_init(|| {
            if let Ok(s) = std::env::var("INFRALAB_SUITE")
                && !s.trim().is_empty()
            {
                return s.trim().to_string();
            }
            std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|t| codename_from_os_release(&t))
                .unwrap_or_else(|| "bookworm".to_string())
        })
        .clone()
}

fn codename_from_os_release(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l
            .strip_prefix("VERSION_CODENAME=")?
            .trim()
            .trim_matches('"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// The host's apt sources that serve `suite` (and `suite-updates`,
/// `suite-security` …), as (one-line `.list` text, deb822 `.sources` text).
///
/// mmdebstrap without a mirror argument falls back to a public default mirror; handing it
/// the host's own entries instead makes a local mirror or apt cache of the host
/// work, without naming any mirror here. Other repositories (third-party suites)
/// are left out: they are not needed and may not be reachable.
pub fn host_sources(suite: &str) -> (String, String) {
    let mut list = String::new();
    let mut deb822 = String::new();
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => deb822.push_str(&filter_deb822(&text, suite)),
            _ if file.file_name().is_some_and(|n| n == "sources.list") => {
                list.push_str(&filter_one_line(&text, suite))
            }
            Some("list") => list.push_str(&filter_one_line(&text, suite)),
            _ => {}
        }
    }
    (list, deb822)
}

fn suite_matches(candidate: &str, suite: &str) -> bool {
    candidate == suite
        || candidate
            .strip_prefix(suite)
            .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('/'))
}

/// Keeps the `deb` lines of a one-line sources.list whose suite is `suite`'s.
pub(crate) fn filter_one_line(text: &str, suite: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let rest = rest.trim_start();
        // Skip the optional `[ options ]`, which may contain spaces.
        let after_opts = if rest.starts_with('[') {
            match rest.find(']') {
                Some(i) => &rest[i + 1..],
                None => continue,
            }
        } else {
            rest
        };
        let mut words = after_opts.split_whitespace();
        let (Some(_uri), Some(s)) = (words.next(), words.next()) else {
            continue;
        };
        if suite_matches(s, suite) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Keeps the stanzas of a deb822 `.sources` file that serve `suite`, with
/// `Types: deb` and only the matching suites; every other field (URIs,
/// Components, Signed-By …) is kept as written.
pub(crate) fn filter_deb822(text: &str, suite: &str) -> String {
    let mut out = String::new();
    let mut stanzas: Vec<Vec<String>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if !stanzas.last().unwrap().is_empty() {
                stanzas.push(Vec::new());
            }
        } else if !line.starts_with('#') {
            stanzas.last_mut().unwrap().push(line.to_string());
        }
    }
    for stanza in stanzas.into_iter().filter(|s| !s.is_empty()) {
        // Fields: a "Key: value" line plus continuation lines starting with space.
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push('\n');
                    last.1.push_str(&line);
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        if get("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !get("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        let suites: Vec<String> = get("Suites")
            .unwrap_or_default()
            .split_whitespace()
            .filter(|s| suite_matches(s, suite))
            .map(str::to_string)
            .collect();
        if suites.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        for (k, v) in &fields {
            let v = if k.eq_ignore_ascii_case("Types") {
                "deb".to_string()
            } else if k.eq_ignore_ascii_case("Suites") {
                suites.join(" ")
            } else {
                v.clone()
            };
            if v.is_empty() || v.starts_with('\n') {
                out.push_str(&format!("{k}:{v}\n"));
            } else {
                out.push_str(&format!("{k}: {v}\n"));
            }
        }
    }
    out
}

/// `$XDG_CACHE_HOME/infralab` or `~/.cache/infralab`: cargo-installed binaries,
/// build logs, locks and temporary root filesystems live here.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("infralab");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".cache").join("infralab");
    }
    std::env::temp_dir().join("infralab-cache")
}

/// An exclusive `flock` on a file under the cache directory, held until drop, so
/// two infralab processes do not build the same thing at once.
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Blocks (on a blocking thread) until the lock `cache_dir()/locks/NAME.lock` is ours.
    pub async fn acquire(name: &str) -> std::io::Result<FileLock> {
        let dir = cache_dir().join("locks");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.lock", name.replace(['/', ':'], "_")));
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            loop {
                // SAFETY: flock on a file descriptor we own; no memory is involved.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
                if rc == 0 {
                    return Ok(FileLock { _file: file });
                }
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// The first executable called `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `cargo`, from PATH or the rustup default location.
pub fn cargo() -> Option<PathBuf> {
    which("cargo").or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let p = home.join("bin").join("cargo");
        is_executable(&p).then_some(p)
    })
}

/// Quotes a word for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codename_is_read_from_os_release() {
        let t = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(codename_from_os_release(t).as_deref(), Some("bookworm"));
        assert_eq!(codename_from_os_release("ID=arch\n"), None);
    }

    #[test]
    fn one_line_sources_keep_only_the_suite() {
        let t = "\
# comment
deb http://mirror.example/debian bookworm main contrib
deb-src http://mirror.example/debian bookworm main
deb [signed-by=/usr/share/keyrings/x.gpg arch=amd64] http://mirror.example/debian-security bookworm-security main # trailing
deb https://packages.example/apt cloud-sdk-bookworm main
deb http://old.example/debian bookworm/updates main
deb http://mirror.example/debian bullseye main
";
        let out = filter_one_line(t, "bookworm");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            vec![
                "deb http://mirror.example/debian bookworm main contrib",
                "deb [signed-by=/usr/share/keyrings/x.gpg arch=amd64] http://mirror.example/debian-security bookworm-security main",
                "deb http://old.example/debian bookworm/updates main",
            ]
        );
    }

    #[test]
    fn deb822_sources_keep_matching_stanzas_and_suites() {
        let t = "\
Types: deb deb-src
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://third.example/node
Suites: nodistro
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Enabled: no

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
";
        let out = filter_deb822(t, "bookworm");
        assert_eq!(
            out,
            "\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
"
        );
    }

    #[test]
    fn sh_quote_survives_single_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
