//! Recipe hashes and tags: a local image is identified by what went into it, so
//! a changed recipe gets a new tag (and a rebuild) and an unchanged one is reused.

use std::path::PathBuf;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::catalog::{KindSpec, LocalRecipe};

/// Bumped whenever the way images are built changes in a way the recipe does not
/// show (mmdebstrap options, hooks, labels), so old images are not reused.
pub const FORMAT_VERSION: u32 = 1;

/// Label carrying the full recipe hash of a local image.
pub const LABEL_RECIPE: &str = "io.infralab.recipe";
/// Label carrying the kind of a local image.
pub const LABEL_KIND: &str = "io.infralab.kind";
/// Label carrying the base hash (the recipe without the infralab binary).
pub const LABEL_BASE: &str = "io.infralab.base";

/// Docker repository of a kind's local image.
pub fn repo(kind: &str) -> String {
    format!("infralab/{kind}")
}

/// The tag of a kind's local image, e.g. `infralab/redis:local-0123456789ab`.
pub fn local_tag(spec: &KindSpec) -> String {
    format!("{}:local-{}", repo(&spec.kind), &recipe_hash(spec)[..12])
}

/// The tag of the base image of a `copy_self` kind: everything but the binary,
/// so a code change only adds a layer instead of running mmdebstrap again.
pub fn base_tag(spec: &KindSpec) -> String {
    format!("{}:base-{}", repo(&spec.kind), &base_hash(spec)[..12])
}

/// sha256 (hex) over the recipe, the kind, the Debian suite the rootfs is made
/// from and [`FORMAT_VERSION`]; for `copy_self` kinds also over the infralab
/// binary, whose content changes with every build.
pub fn recipe_hash(spec: &KindSpec) -> String {
    let base = base_hash(spec);
    if !spec.local.copy_self {
        return base;
    }
    match self_exe_hash() {
        Ok(exe) => sha256_hex(format!("{base}\n{exe}").as_bytes()),
        // Unreadable binary: the build reports it; the tag just must not collide.
        Err(_) => sha256_hex(format!("{base}\nno-binary").as_bytes()),
    }
}

/// The hash of everything but the infralab binary.
pub fn base_hash(spec: &KindSpec) -> String {
    hash_recipe(&spec.kind, &spec.local, &super::host::suite())
}

/// The pure hashing function behind [`base_hash`], separated for tests.
pub(crate) fn hash_recipe(kind: &str, recipe: &LocalRecipe, suite: &str) -> String {
    #[derive(serde::Serialize)]
    struct Input<'a> {
        format: u32,
        kind: &'a str,
        suite: &'a str,
        recipe: &'a LocalRecipe,
    }
    let json = serde_json::to_string(&Input {
        format: FORMAT_VERSION,
        kind,
        suite,
        recipe,
    })
    .expect("a recipe always serialises");
    sha256_hex(json.as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

static SELF_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Makes `copy_self` copy `path` instead of the running executable. Integration
/// tests need this: their executable is the test harness, not infralab
/// (`images::set_self_exe(env!("CARGO_BIN_EXE_infralab"))`). The
/// `INFRALAB_SELF_EXE` environment variable does the same. First call wins.
pub fn set_self_exe(path: impl Into<PathBuf>) {
    let _ = SELF_EXE.set(path.into());
}

/// The binary `copy_self` puts into the image.
pub fn self_exe() -> std::io::Result<PathBuf> {
    if let Some(p) = SELF_EXE.get() {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("INFRALAB_SELF_EXE") {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe()
}

/// sha256 of the binary's content, computed once per process. Hashing a debug
/// build (~150 MB) takes seconds, so the result is also remembered in
/// `cache_dir()/self-hash` keyed by the file's device, inode, size and mtime:
/// every process of the same build skips it, and a rebuild (new mtime) rehashes.
fn self_exe_hash() -> Result<String, String> {
    static HASH: OnceLock<Result<String, String>> = OnceLock::new();
    HASH.get_or_init(|| {
        let path = self_exe().map_err(|e| e.to_string())?;
        let fail = |e: std::io::Error| format!("{}: {e}", path.display());
        let meta = std::fs::metadata(&path).map_err(fail)?;
        let key = file_key(&path, &meta);
        let memo = super::host::cache_dir().join("self-hash");
        let known = std::fs::read_to_string(&memo).unwrap_or_default();
        if let Some(hash) = known
            .lines()
            .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' '))
            .filter(|h| h.len() == 64)
        {
            return Ok(hash.to_string());
        }
        let mut file = std::fs::File::open(&path).map_err(fail)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf).map_err(fail)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hash = hex::encode(hasher.finalize());
        if let Some(dir) = memo.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            // Write then rename, so a concurrent reader never sees half a line.
            let tmp = memo.with_extension(format!("{}.tmp", std::process::id()));
            // The last few builds are remembered (tests and the CLI may differ).
            let mut lines: Vec<&str> = known.lines().filter(|l| !l.is_empty()).collect();
            let keep_from = lines.len().saturating_sub(7);
            lines.drain(..keep_from);
            let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            text.push_str(&format!("{key} {hash}\n"));
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &memo);
            }
        }
        Ok(hash)
    })
    .clone()
}

/// Computes the `copy_self` binary's hash now, on a blocking thread, so the
/// first [`recipe_hash`] of a process does not stall the async runtime.
pub async fn warm_self_hash() {
    let _ = tokio::task::spawn_blocking(self_exe_hash).await;
}

/// Identity of a file version: path, device, inode, size and mtime (ns).
fn file_key(path: &std::path::Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}|{}|{}|{}|{}.{}",
        path.display(),
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// Quotes a value for a Dockerfile instruction (`ENV`, `LABEL`) as given to
/// `docker import --change`: double quotes, with `\`, `"` and `$` escaped so
/// nothing is expanded.
pub(crate) fn dockerfile_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The Dockerfile instructions applied on import: entrypoint and command in
/// JSON-array form (the shell form would wrap them in `sh -c`), environment
/// (with a PATH, which an imported image otherwise lacks) and the labels.
pub fn changes(recipe: &LocalRecipe, labels: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    if !recipe.entrypoint.is_empty() {
        out.push(format!(
            "ENTRYPOINT {}",
            serde_json::to_string(&recipe.entrypoint).unwrap()
        ));
    }
    if !recipe.cmd.is_empty() {
        out.push(format!(
            "CMD {}",
            serde_json::to_string(&recipe.cmd).unwrap()
        ));
    }
    if !recipe.env.contains_key("PATH") {
        out.push("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    for (k, v) in &recipe.env {
        out.push(format!("ENV {k}={}", dockerfile_quote(v)));
    }
    for (k, v) in labels {
        out.push(format!("LABEL {k}={}", dockerfile_quote(v)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis() -> LocalRecipe {
        LocalRecipe {
            packages: vec!["redis-server".into()],
            cmd: vec!["redis-server".into(), "--save".into(), "".into()],
            ..Default::default()
        }
    }

    #[test]
    fn hash_is_stable_hex_sha256() {
        let a = hash_recipe("redis", &redis(), "bookworm");
        let b = hash_recipe("redis", &redis().clone(), "bookworm");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn hash_changes_with_every_part_of_the_recipe() {
        let base = hash_recipe("redis", &redis(), "bookworm");
        let mut r = redis();
        r.packages.push("redis-tools".into());
        assert_ne!(hash_recipe("redis", &r, "bookworm"), base);
        let mut r = redis();
        r.files.insert("/etc/x".into(), "y".into());
        assert_ne!(hash_recipe("redis", &r, "bookworm"), base);
        let mut r = redis();
        r.env.insert("A".into(), "1".into());
        assert_ne!(hash_recipe("redis", &r, "bookworm"), base);
        let mut r = redis();
        r.run.push("true".into());
        assert_ne!(hash_recipe("redis", &r, "bookworm"), base);
        let mut r = redis();
        r.copy_self = true;
        assert_ne!(hash_recipe("redis", &r, "bookworm"), base);
        assert_ne!(hash_recipe("valkey", &redis(), "bookworm"), base);
        assert_ne!(hash_recipe("redis", &redis(), "trixie"), base);
    }

    #[test]
    fn tag_names_kind_and_hash_prefix() {
        let spec = crate::catalog::spec("redis");
        let tag = local_tag(spec);
        let hash = recipe_hash(spec);
        assert_eq!(tag, format!("infralab/redis:local-{}", &hash[..12]));
        assert_eq!(local_tag(spec), tag, "tag is stable within a process");
        assert!(base_tag(spec).starts_with("infralab/redis:base-"));
        // Without copy_self the recipe hash is the base hash.
        assert_eq!(hash, base_hash(spec));
    }

    #[test]
    fn copy_self_folds_the_binary_into_the_hash() {
        let mut spec = crate::catalog::spec("redis").clone();
        spec.local.copy_self = true;
        assert_ne!(recipe_hash(&spec), base_hash(&spec));
        assert_eq!(recipe_hash(&spec), recipe_hash(&spec));
    }

    #[test]
    fn changes_use_json_arrays_and_quote_values() {
        let mut r = redis();
        r.entrypoint = vec!["/entry.sh".into()];
        r.env
            .insert("GREETING".into(), "say \"hi\" to $USER".into());
        let c = changes(&r, &[(LABEL_RECIPE, "abc")]);
        assert_eq!(c[0], r#"ENTRYPOINT ["/entry.sh"]"#);
        assert_eq!(c[1], r#"CMD ["redis-server","--save",""]"#);
        assert!(c[2].starts_with("ENV PATH=/usr/local/sbin:"));
        assert_eq!(c[3], r#"ENV GREETING="say \"hi\" to \$USER""#);
        assert_eq!(c[4], r#"LABEL io.infralab.recipe="abc""#);
    }

    #[test]
    fn explicit_path_is_not_duplicated() {
        let mut r = redis();
        r.env.insert("PATH".into(), "/opt/bin:/usr/bin".into());
        let c = changes(&r, &[]);
        assert_eq!(c.iter().filter(|l| l.starts_with("ENV PATH=")).count(), 1);
    }
}
