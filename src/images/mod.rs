//! Images: which image a service kind runs, and the local (offline) images.
//!
//! A kind runs its pinned official image when Docker has it or can pull it;
//! otherwise a *local image* built from Debian packages ([`local`]) whose tag
//! and labels carry a hash of its recipe ([`recipe`]), so an unchanged recipe is
//! reused and a changed one rebuilt. Builds are serialised per image inside a
//! process (async mutex) and across processes (`flock` under the cache dir).

pub mod host;
pub mod local;
pub mod prebuilt;
pub mod recipe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures_util::StreamExt;

use crate::catalog::KindSpec;
use crate::event::{Event, Reporter};

pub use host::cache_dir;
pub use recipe::{base_tag, local_tag, recipe_hash, set_self_exe};

/// How long Docker may take to answer a pull at all; with no registry the pull
/// should fail at once, and a hanging connection must not hold a lab up.
const PULL_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pull that has started may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Superseded local images younger than this are kept: another process may be
/// about to start a container from one.
const PRUNE_AFTER: Duration = Duration::from_secs(10 * 60);

/// Where images come from: --images flag / INFRALAB_IMAGES env.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Source {
    /// Official image if present or pullable, else the local image (built if needed).
    #[default]
    Auto,
    /// Only the official image (present or pulled).
    Official,
    /// Only the local image (built if needed).
    Local,
}

/// An image problem; always an environment error (exit code 3). `hint` is the
/// command that fixes it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ImageError {
    /// What went wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ImageError {
    /// An error without a fix to suggest.
    pub fn new(message: impl Into<String>) -> Self {
        ImageError {
            message: message.into(),
            hint: None,
        }
    }

    /// An error with the command that fixes it.
    pub fn hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        ImageError {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// For `infralab images list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageStatus {
    /// Kind name.
    pub kind: String,
    /// The pinned official image.
    pub official: String,
    /// Whether Docker has the official image.
    pub official_present: bool,
    /// The tag the local image has with the current recipe.
    pub local_tag: String,
    /// Whether Docker has that local image (with the current recipe label).
    pub local_present: bool,
    /// Full recipe hash.
    pub recipe_hash: String,
}

/// Resolves the image to run for a kind, or for an explicit override image from
/// the lab (used as is if present, else pulled, else an error).
///
/// Auto: official present → it; local image of the current recipe present →
/// it; official pullable (bounded wait) → it; else build the local image.
/// Official: present or pulled, else an error. Local: present, else built.
pub async fn resolve(
    docker: &Docker,
    spec: &KindSpec,
    override_image: Option<&str>,
    source: Source,
    reporter: &dyn Reporter,
) -> Result<String, ImageError> {
    let kind = &spec.kind;
    if spec.local.copy_self {
        recipe::warm_self_hash().await;
    }
    if let Some(image) = override_image {
        if present(docker, image).await? {
            return Ok(image.to_string());
        }
        return match pull(docker, image).await {
            Ok(()) => Ok(image.to_string()),
            Err(e) => Err(ImageError::hint(
                format!(
                    "image {image} (set in the lab for a {kind} service) is not present and cannot be pulled: {e}"
                ),
                format!(
                    "docker pull {image} (or docker load it), or drop `image:` to use the {kind} default"
                ),
            )),
        };
    }
    let official = &spec.image;
    match source {
        Source::Official => {
            if present(docker, official).await? {
                return Ok(official.clone());
            }
            pull(docker, official).await.map_err(|e| {
                ImageError::hint(
                    format!("{official} is not present and cannot be pulled: {e}"),
                    format!(
                        "docker pull {official} where a registry is reachable, or use local images: \
                         --images local (infralab images build {kind})"
                    ),
                )
            })?;
            Ok(official.clone())
        }
        Source::Local => build_local(docker, spec, false, reporter).await,
        Source::Auto => {
            if present(docker, official).await? {
                return Ok(official.clone());
            }
            let tag = local_tag(spec);
            if local_present(docker, spec, &tag).await? {
                return Ok(tag);
            }
            let pull_error = match pull(docker, official).await {
                Ok(()) => return Ok(official.clone()),
                Err(e) => e,
            };
            tracing::info!("{official} cannot be pulled ({pull_error}); building {tag}");
            build_local(docker, spec, false, reporter)
                .await
                .map_err(|e| ImageError {
                    message: format!(
                        "{official} is not present and cannot be pulled ({pull_error}), \
                     and building the local image {tag} failed: {}",
                        e.message
                    ),
                    hint: e
                        .hint
                        .or_else(|| Some(format!("infralab images build {kind}"))),
                })
        }
    }
}

/// One async mutex per image tag, so two labs resolving the same kind at once in
/// one process build it once: the second waits and then finds it present.
fn build_mutex(tag: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(tag.to_string()).or_default().clone()
}

/// Builds the local image (nothing to do if an image with the current recipe
/// hash exists, unless `force`). Returns the tag.
///
/// `force` rebuilds the root filesystem too (for `copy_self` kinds, the base),
/// but never recompiles a cached `cargo_install` binary.
pub async fn build_local(
    docker: &Docker,
    spec: &KindSpec,
    force: bool,
    reporter: &dyn Reporter,
) -> Result<String, ImageError> {
    if spec.local.copy_self {
        recipe::warm_self_hash().await;
    }
    let tag = local_tag(spec);
    let mutex = build_mutex(&tag);
    let _guard = mutex.lock().await;
    if !force && local_present(docker, spec, &tag).await? {
        return Ok(tag);
    }
    let _lock = host::FileLock::acquire(&format!("image-{}", spec.kind))
        .await
        .map_err(|e| {
            ImageError::new(format!(
                "cannot lock {}: {e}",
                cache_dir().join("locks").display()
            ))
        })?;
    // Another process may have built it while we waited for the lock.
    if !force && local_present(docker, spec, &tag).await? {
        return Ok(tag);
    }
    let started = Instant::now();
    let progress = local::Progress {
        kind: &spec.kind,
        image: &tag,
        reporter,
    };
    let previous = image_id(docker, &tag).await;
    let hash = recipe_hash(spec);
    let base = base_tag(spec);
    if spec.local.copy_self {
        let base_hash = recipe::base_hash(spec);
        if force || !labelled(docker, &base, recipe::LABEL_BASE, &base_hash).await? {
            let labels = [
                (recipe::LABEL_BASE, base_hash.as_str()),
                (recipe::LABEL_KIND, spec.kind.as_str()),
            ];
            local::build_rootfs_image(docker, spec, &base, &labels, &progress).await?;
        }
        let labels = [
            (recipe::LABEL_RECIPE, hash.as_str()),
            (recipe::LABEL_KIND, spec.kind.as_str()),
        ];
        local::add_self_layer(docker, spec, &base, &tag, &labels, &progress).await?;
    } else {
        let labels = [
            (recipe::LABEL_RECIPE, hash.as_str()),
            (recipe::LABEL_KIND, spec.kind.as_str()),
        ];
        local::build_rootfs_image(docker, spec, &tag, &labels, &progress).await?;
    }
    if !local_present(docker, spec, &tag).await? {
        return Err(ImageError::new(format!(
            "{tag} was built but Docker does not show it with label {}",
            recipe::LABEL_RECIPE
        )));
    }
    // A forced rebuild leaves the old image untagged: remove it if unused.
    if let Some(old) = previous
        && image_id(docker, &tag).await.as_ref() != Some(&old)
    {
        let _ = docker
            .remove_image(
                &old,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
    prune(docker, spec, &tag, &base).await;
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(kind = %spec.kind, image = %tag, ms, "local image built");
    reporter.event(&Event::ImageBuilt {
        kind: spec.kind.clone(),
        image: tag.clone(),
        ms,
    });
    Ok(tag)
}

/// Builds several kinds' local images, at most two at a time (each mmdebstrap
/// run is CPU- and disk-bound). Results come back in the order of `specs`.
pub async fn build_all(
    docker: &Docker,
    specs: &[&KindSpec],
    force: bool,
    reporter: &dyn Reporter,
) -> Vec<(String, Result<String, ImageError>)> {
    futures_util::stream::iter(specs.iter().map(|spec| async move {
        (
            spec.kind.clone(),
            build_local(docker, spec, force, reporter).await,
        )
    }))
    .buffered(2)
    .collect()
    .await
}

/// Presence of the official and the current local image, for `infralab images list`.
pub async fn status(docker: &Docker, spec: &KindSpec) -> ImageStatus {
    if spec.local.copy_self {
        recipe::warm_self_hash().await;
    }
    let tag = local_tag(spec);
    ImageStatus {
        kind: spec.kind.clone(),
        official: spec.image.clone(),
        official_present: present(docker, &spec.image).await.unwrap_or(false),
        local_present: local_present(docker, spec, &tag).await.unwrap_or(false),
        local_tag: tag,
        recipe_hash: recipe_hash(spec),
    }
}

/// Makes sure mmdebstrap is installed: installs it with apt-get when we are root
/// on a Debian-family host, else fails with the command that installs it.
pub async fn ensure_mmdebstrap(reporter: &dyn Reporter) -> Result<(), ImageError> {
    let progress = local::Progress {
        kind: "mmdebstrap",
        image: "mmdebstrap",
        reporter,
    };
    local::ensure_mmdebstrap(&progress).await
}

/// Whether Docker has `image`. A 404 is "no"; any other failure is an error.
pub async fn present(docker: &Docker, image: &str) -> Result<bool, ImageError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(ImageError::new(format!(
            "cannot inspect image {image}: {e}"
        ))),
    }
}

/// Whether Docker has the local image `tag` built from the current recipe.
async fn local_present(docker: &Docker, spec: &KindSpec, tag: &str) -> Result<bool, ImageError> {
    labelled(docker, tag, recipe::LABEL_RECIPE, &recipe_hash(spec)).await
}

/// Whether `image` exists with label `key` = `value` (the tag holds only a
/// prefix of the hash; the label settles it).
async fn labelled(
    docker: &Docker,
    image: &str,
    key: &str,
    value: &str,
) -> Result<bool, ImageError> {
    match docker.inspect_image(image).await {
        Ok(i) => Ok(i
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(key).cloned())
            .is_some_and(|v| v == value)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(ImageError::new(format!(
            "cannot inspect image {image}: {e}"
        ))),
    }
}

async fn image_id(docker: &Docker, image: &str) -> Option<String> {
    docker.inspect_image(image).await.ok().and_then(|i| i.id)
}

/// Splits `name[:tag]` into name and tag (`latest` when absent) so a pull never
/// fetches every tag; digests stay in the name.
fn split_ref(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (
            image[..last + i].to_string(),
            image[last + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// Pulls `image`. The first answer must come within [`PULL_ANSWER_TIMEOUT`]
/// (no registry: fail fast); the whole pull within [`PULL_TIMEOUT`].
pub async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    let (name, tag) = split_ref(image);
    let mut opts = CreateImageOptionsBuilder::default().from_image(&name);
    if !tag.is_empty() {
        opts = opts.tag(&tag);
    }
    tracing::info!("pulling {image}");
    let mut stream = docker.create_image(Some(opts.build()), None, None);
    let check =
        |item: Option<Result<bollard::models::CreateImageInfo, bollard::errors::Error>>| match item
        {
            Some(Ok(info)) => match info.error_detail.and_then(|d| d.message) {
                Some(m) => Err(m),
                None => Ok(true),
            },
            Some(Err(bollard::errors::Error::DockerResponseServerError { message, .. })) => {
                Err(message)
            }
            Some(Err(e)) => Err(e.to_string()),
            None => Ok(false),
        };
    let first = tokio::time::timeout(PULL_ANSWER_TIMEOUT, stream.next())
        .await
        .map_err(|_| {
            format!(
                "no answer from the registry within {}s",
                PULL_ANSWER_TIMEOUT.as_secs()
            )
        })?;
    if check(first)? {
        let rest = async {
            while check(stream.next().await)? {}
            Ok::<(), String>(())
        };
        tokio::time::timeout(PULL_TIMEOUT, rest)
            .await
            .map_err(|_| {
                format!(
                    "pull did not finish within {}",
                    humantime::format_duration(PULL_TIMEOUT)
                )
            })??;
    }
    match present(docker, image).await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the pull ended but the image is not there".into()),
        Err(e) => Err(e.message),
    }
}

/// Removes this kind's superseded local and base images (older than
/// [`PRUNE_AFTER`]): every code change makes a new `copy_self` image and every
/// recipe change a new root filesystem. Images in use by a container stay
/// (Docker refuses); failures are only logged.
async fn prune(docker: &Docker, spec: &KindSpec, keep_tag: &str, keep_base: &str) {
    let repo = recipe::repo(&spec.kind);
    let filters = HashMap::from([("reference", vec![format!("{repo}:*")])]);
    let images = match docker
        .list_images(Some(
            ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::debug!("cannot list {repo} images to prune: {e}");
            return;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for image in images {
        if now - image.created < PRUNE_AFTER.as_secs() as i64 {
            continue;
        }
        for t in &image.repo_tags {
            // Podman lists short names qualified: `docker.io/infralab/redis:…`.
            let short = t
                .strip_prefix("docker.io/")
                .or_else(|| t.strip_prefix("localhost/"))
                .unwrap_or(t);
            let ours = short.starts_with(&format!("{repo}:local-"))
                || short.starts_with(&format!("{repo}:base-"));
            if ours && short != keep_tag && short != keep_base {
                match docker
                    .remove_image(t, Some(RemoveImageOptionsBuilder::default().build()), None)
                    .await
                {
                    Ok(_) => tracing::info!("removed superseded image {t}"),
                    Err(e) => tracing::debug!("kept superseded image {t}: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_split_into_name_and_tag() {
        assert_eq!(split_ref("redis:7.4.2"), ("redis".into(), "7.4.2".into()));
        assert_eq!(
            split_ref("apache/kafka:3.9.0"),
            ("apache/kafka".into(), "3.9.0".into())
        );
        assert_eq!(split_ref("nginx"), ("nginx".into(), "latest".into()));
        assert_eq!(
            split_ref("reg.local:5000/x/y"),
            ("reg.local:5000/x/y".into(), "latest".into())
        );
        assert_eq!(
            split_ref("reg.local:5000/y:1"),
            ("reg.local:5000/y".into(), "1".into())
        );
        assert_eq!(
            split_ref("redis@sha256:abc"),
            ("redis@sha256:abc".into(), String::new())
        );
    }

    #[test]
    fn source_parses_from_the_command_line() {
        use clap::ValueEnum;
        assert_eq!(Source::from_str("local", true), Ok(Source::Local));
        assert_eq!(Source::from_str("official", true), Ok(Source::Official));
        assert_eq!(Source::default(), Source::Auto);
    }
}
