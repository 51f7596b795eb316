//! Talking to the Docker engine: connecting, finding, pulling and
//! building images, and the containers Moat made.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;

use super::{DockerError, ImageChoice, LABEL_HOME, LABEL_RUN};
use crate::events::Events;
use crate::sandbox::image;

pub(super) fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// A client for the engine at `DOCKER_HOST` (or the default socket), with
/// the API version agreed with it.
pub async fn connect() -> Result<Docker, DockerError> {
    let host = docker_host();
    let no_engine = |source| DockerError::NoEngine {
        host: host.clone(),
        cause: source,
    };
    let docker = Docker::connect_with_defaults().map_err(no_engine)?;
    let docker = docker.negotiate_version().await.map_err(no_engine)?;
    docker.ping().await.map_err(no_engine)?;
    Ok(docker)
}

/// Whether an image of that name is present in the engine.
pub(super) async fn image_exists(docker: &Docker, name: &str) -> Result<bool, DockerError> {
    match docker.inspect_image(name).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The image to run: present, pulled, or built (tagged by the hash of its
/// Dockerfile, so an unchanged config reuses it).
pub async fn ensure_image(
    docker: &Docker,
    choice: &ImageChoice,
    rebuild: bool,
    events: &Events,
) -> Result<String, DockerError> {
    match choice {
        ImageChoice::Use(name) => {
            if !image_exists(docker, name).await? {
                pull(docker, name).await?;
            }
            events.emit("image", serde_json::json!({"image": name, "built": false}));
            Ok(name.clone())
        }
        ImageChoice::Build { base, deps } => {
            let dockerfile = image::dockerfile(base, deps);
            let tag = image::tag(&dockerfile);
            if !rebuild && image_exists(docker, &tag).await? {
                tracing::info!("image {tag} is up to date");
                events.emit("image", serde_json::json!({"image": tag, "built": false}));
                return Ok(tag);
            }
            build(docker, &tag, &dockerfile, rebuild).await?;
            events.emit("image", serde_json::json!({"image": tag, "built": true}));
            Ok(tag)
        }
    }
}

pub(super) async fn pull(docker: &Docker, name: &str) -> Result<(), DockerError> {
    let registry = registry_of(name);
    eprintln!(
        "moat: pulling {name} from {registry} (this engine does not have it; moat.yaml \
         image: names another)"
    );
    let (image, tag) = match name.rsplit_once(':') {
        Some((i, t)) if !t.contains('/') => (i, t),
        _ => (name, "latest"),
    };
    let options = CreateImageOptions {
        from_image: Some(image.into()),
        tag: Some(tag.into()),
        ..Default::default()
    };
    // On a terminal one line redrawn in place; in a log, each step once
    // (no byte counts, no escape codes).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if let Some(status) = info.status {
                    let id = info.id.map(|i| format!("{i}: ")).unwrap_or_default();
                    let bar = info
                        .progress_detail
                        .and_then(|p| Some(format!("{}/{}", p.current?, p.total?)));
                    match (tty, bar) {
                        (true, bar) => {
                            eprint!("\r\x1b[2K  {id}{status} {}", bar.unwrap_or_default())
                        }
                        (false, None) => eprintln!("  {id}{status}"),
                        (false, Some(_)) => {}
                    }
                }
            }
            Err(e) => {
                if tty {
                    eprintln!();
                }
                return Err(DockerError::Pull {
                    image: name.into(),
                    registry: registry.into(),
                    reason: pull_failure(&e),
                });
            }
        }
    }
    if tty {
        eprintln!();
    }
    Ok(())
}

/// Where `docker pull NAME` pulls from: the first path component when it
/// names a host (a dot, a port, or localhost), else Docker Hub.
pub(super) fn registry_of(name: &str) -> &str {
    match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Why a pull failed, in a line: the engine's message without its
/// transport detail, or that the registry cannot be reached.
pub(super) fn pull_failure(e: &bollard::errors::Error) -> String {
    let message = match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    const UNREACHABLE: [&str; 7] = [
        "connection refused",
        "no such host",
        "server misbehaving",
        "i/o timeout",
        "network is unreachable",
        "TLS handshake timeout",
        "dial tcp",
    ];
    if UNREACHABLE.iter().any(|m| message.contains(m)) {
        return "the registry cannot be reached (offline?)".into();
    }
    let first = message.lines().next().unwrap_or_default().trim();
    match first.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &first[..i]),
        None => first.to_owned(),
    }
}

pub(super) async fn build(
    docker: &Docker,
    tag: &str,
    dockerfile: &str,
    no_cache: bool,
) -> Result<(), DockerError> {
    eprintln!("moat: building image {tag} (dependencies: in moat.yaml)");
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.into()),
        rm: true,
        forcerm: true,
        nocache: no_cache,
        labels: Some([("io.moat.generated".to_string(), "1".to_string())].into()),
        ..Default::default()
    };
    let context = bytes::Bytes::from(image::context_tar(dockerfile));
    let mut log = docker.build_image(options, None, Some(bollard::body_full(context)));
    let failed = |message: String| DockerError::Build {
        tag: tag.into(),
        message,
    };
    let mut warned = false;
    while let Some(item) = log.next().await {
        let info = item.map_err(|e| failed(e.to_string()))?;
        if let Some(detail) = info.error_detail {
            return Err(failed(detail.message.unwrap_or_default()));
        }
        // The engine's own lines, as docker build prints them; its
        // forwarding warning (a RUN step on an engine without ip_forward)
        // once, not on every step.
        let line = info.stream.or(info.status.map(|s| s + "\n"));
        if let Some(line) = line {
            if line.contains("IPv4 forwarding is disabled") {
                if warned {
                    continue;
                }
                warned = true;
            }
            eprint!("{line}");
        }
    }
    if !image_exists(docker, tag).await? {
        return Err(failed(
            "the engine reported no error but made no image".into(),
        ));
    }
    Ok(())
}

/// A container Moat made (labelled [`LABEL_RUN`]).
#[derive(Debug, Clone)]
pub struct MoatContainer {
    pub id: String,
    pub name: String,
    pub run: String,
    /// [`LABEL_HOME`]: the `$MOAT_HOME` of the run (absent on containers
    /// made before the label existed).
    pub home: Option<String>,
    /// running, exited, created, …
    pub state: String,
}

/// Moat's containers, running or not; only run `run`'s if given.
pub async fn containers(
    docker: &Docker,
    run: Option<&str>,
) -> Result<Vec<MoatContainer>, DockerError> {
    let label = match run {
        Some(r) => format!("{LABEL_RUN}={r}"),
        None => LABEL_RUN.to_owned(),
    };
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some([("label".to_string(), vec![label])].into()),
            ..Default::default()
        }))
        .await?;
    Ok(list
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            MoatContainer {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                run: labels.get(LABEL_RUN).cloned().unwrap_or_default(),
                home: labels.get(LABEL_HOME).cloned(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            }
        })
        .collect())
}

/// Is this the engine saying the container is gone or going already?
pub(super) fn gone(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }
    )
}

/// Remove a container (running or not); one that is gone already is fine.
pub async fn remove(docker: &Docker, container: &str) -> Result<(), DockerError> {
    let removed = docker
        .remove_container(
            container,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    match removed {
        Err(e) if !gone(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Wait (at most `timeout`) until the engine has removed a container.
pub async fn removed(docker: &Docker, container: &str, timeout: Duration) {
    let options = WaitContainerOptions {
        condition: "removed".into(),
    };
    let mut wait = docker.wait_container(container, Some(options));
    // Ends with the removal, or at once (404) when it is gone already.
    let _ = tokio::time::timeout(timeout, wait.next()).await;
}

/// SIGKILL a container's processes; one that is gone already is fine.
pub async fn kill_now(docker: &Docker, container: &str) -> Result<(), DockerError> {
    let killed = docker
        .kill_container(
            container,
            Some(KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        )
        .await;
    match killed {
        Err(e) if !gone(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_come_from_the_named_registry_or_docker_hub() {
        assert_eq!(registry_of("debian:bookworm-slim"), "docker.io");
        assert_eq!(registry_of("library/debian"), "docker.io");
        assert_eq!(registry_of("ghcr.io/o/i:1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/i"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/i"), "localhost");
    }

    #[test]
    fn a_pull_failure_is_one_short_line() {
        let e = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup \
                      registry-1.docker.io on 10.0.0.2:53: server misbehaving"
                .into(),
        };
        assert_eq!(
            pull_failure(&e),
            "the registry cannot be reached (offline?)"
        );
        let e = bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message: format!("manifest unknown{}\nmore", "x".repeat(300)),
        };
        let line = pull_failure(&e);
        assert!(
            line.starts_with("manifest unknown") && line.ends_with('…'),
            "{line}"
        );
        assert!(
            !line.contains('\n') && line.chars().count() == 201,
            "{line}"
        );
    }
}
