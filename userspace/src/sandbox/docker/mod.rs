//! `moat run --runtime docker`: the command in a container, with the same
//! transparent redirect as a native run.
//!
//! The container is created with network `none`, every capability dropped
//! and `no-new-privileges`, as the sudo caller (or, when Moat runs as root,
//! an unprivileged id with id-mapped views of the workspace), labelled
//! `io.moat.run=<run id>` and `io.moat.home=<$MOAT_HOME>`, and (unless
//! `--keep`) with AutoRemove. Its entrypoint is this very binary,
//! bind-mounted read-only at `/.moat/moat`, in `__container-init` mode: it
//! connects to Moat's control socket (`/.moat/ctl/sock`, bind-mounted from
//! the run directory) and waits for one byte until Moat has plumbed the
//! container's network namespace from the host (`netns::plumb`: loopback,
//! route, nft redirect, proxy and DNS sockets created inside it), then starts
//! the command as its child, forwards signals and reaps, reports the
//! command's exit code on the socket and exits with it. So the command's
//! first `connect()` is already redirected, the container can change none of
//! its rules, and nothing changes in the host namespace.
//!
//! The control connection is also the container's lifeline: when Moat dies
//! (even `kill -9`) the socket closes, the entrypoint kills the command and
//! exits, and the engine removes the container (AutoRemove). A container
//! without its proxy never outlives Moat; `moat clean` removes any left over.
//!
//! The Moat binary is dynamically linked against the host's glibc. The
//! image's own C library does not matter: the host's dynamic loader and the
//! libraries this process has loaded are bind-mounted at `/.moat/lib` and the
//! entrypoint is that loader running `/.moat/moat` with them, so Alpine
//! (musl), busybox and distroless images work like Debian ones.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, BuildImageOptions, CreateContainerOptions, CreateImageOptions,
    KillContainerOptions, ListContainersOptions, RemoveContainerOptions, ResizeContainerTTYOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execvp, fork};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::image::{self, Dependency};
use super::netns;
use super::run::{self, RunError};
use crate::config::{ContainerLimits, Mount};
use crate::events::Events;
use crate::net::front::Front;
use crate::net::orig_dst::SoOriginalDst;

/// Where Moat's own files appear in the container.
pub const MOAT_DIR: &str = "/.moat";
/// The Moat binary (the entrypoint).
pub const BINARY_INSIDE: &str = "/.moat/moat";
/// The host's dynamic loader and the libraries the binary runs with.
pub const LIB_INSIDE: &str = "/.moat/lib";
/// Moat's control socket (in the bind-mounted control directory): the
/// entrypoint's go signal, lifeline and exit-code report.
pub const CTL_INSIDE: &str = "/.moat/ctl/sock";
/// Labels on every container Moat creates.
pub const LABEL_RUN: &str = "io.moat.run";
pub const LABEL_HOME: &str = "io.moat.home";
pub const BUNDLE_INSIDE: &str = "/.moat/ca-bundle.pem";
pub const JAVA_TRUSTSTORE_INSIDE: &str = "/.moat/java-truststore.p12";
/// Placeholder files (.npmrc, …) copied into HOME by the entrypoint.
pub const HOME_FILES_INSIDE: &str = "/.moat/home-files";
/// The workspace and working directory.
pub const WORKSPACE_INSIDE: &str = "/workspace";
/// HOME: in the container's fresh /tmp (a tmpfs).
pub const HOME_INSIDE: &str = "/tmp/home";
/// The distributions' system bundles the merged bundle is mounted over.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
    "/etc/ssl/cert.pem",                  // Alpine, Arch
];
/// How long the entrypoint waits for Moat before giving up.
const GO_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "no Docker engine answers at {host}: {cause}. Start one (e.g. `sudo systemctl start docker`) \
         or point DOCKER_HOST at its socket (DOCKER_HOST=unix:///path/to/docker.sock)"
    )]
    NoEngine {
        host: String,
        cause: bollard::errors::Error,
    },
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error(
        "moat.yaml mounts: {} lies in {}, which no sandbox may see: mount another directory",
        src.display(), mask.display()
    )]
    MaskedMount { src: PathBuf, mask: PathBuf },
    #[error("building image {tag}: {message}")]
    Build { tag: String, message: String },
    #[error(
        "cannot pull {image} from {registry}: {reason}. Name an image this engine has \
         (docker images) in moat.yaml image:, or list dependencies: to build one"
    )]
    Pull {
        image: String,
        registry: String,
        reason: String,
    },
    #[error("the container did not start: {0}")]
    NoPid(String),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Net(#[from] netns::NetnsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What image the container runs.
#[derive(Debug, Clone)]
pub enum ImageChoice {
    /// moat.yaml `image:` (or the base image when there are no dependencies).
    Use(String),
    /// `dependencies:` on `base`: a generated, content-tagged image.
    Build { base: String, deps: Vec<Dependency> },
}

pub struct DockerSpec {
    pub id: String,
    pub events: Events,
    pub image: ImageChoice,
    /// Build even when an image with the config's hash exists.
    pub rebuild: bool,
    /// Leave the container behind after the run.
    pub keep: bool,
    pub workspace: PathBuf,
    pub mounts: Vec<Mount>,
    pub limits: ContainerLimits,
    pub env: Vec<(OsString, OsString)>,
    /// uid:gid the command runs as.
    pub user: (u32, u32),
    /// Moat runs as root without sudo: the command runs as
    /// [`super::init::SANDBOX_ID_BASE`] and sees the workspace and `mounts:`
    /// through id-mapped mounts (its ids are root's on disk).
    pub idmap: bool,
    pub command: Vec<OsString>,
    /// The merged CA bundle and Java truststore on the host.
    pub bundle: PathBuf,
    pub truststore: PathBuf,
    /// The placeholder files for HOME (host directory), if any.
    pub home_files: Option<PathBuf>,
    /// The run's directory on the host (the control fifo goes there).
    pub run_dir: PathBuf,
    /// Host paths covered by an empty read-only mount where the workspace
    /// or a `mounts:` entry would show them (see [`super::mask`]).
    pub mask: Vec<PathBuf>,
    /// `-p` / `ports:`: host 127.0.0.1:HOSTPORT → container 127.0.0.1:PORT.
    pub publish: Vec<(u16, u16)>,
}

fn docker_host() -> String {
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
async fn image_exists(docker: &Docker, name: &str) -> Result<bool, DockerError> {
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

async fn pull(docker: &Docker, name: &str) -> Result<(), DockerError> {
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
fn registry_of(name: &str) -> &str {
    match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Why a pull failed, in a line: the engine's message without its
/// transport detail, or that the registry cannot be reached.
fn pull_failure(e: &bollard::errors::Error) -> String {
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

async fn build(
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

/// Run the command in a container; its exit code (128+N for signal N).
/// `proxy` is the run's proxy, built once by the session.
pub fn run(spec: DockerSpec, proxy: Arc<dyn Front>) -> Result<i32, DockerError> {
    let rt = crate::net::runtime::runtime()?;
    let docker = rt.block_on(connect())?;
    let image = rt.block_on(ensure_image(
        &docker,
        &spec.image,
        spec.rebuild,
        &spec.events,
    ))?;
    let views = if spec.idmap {
        Views::stage(&spec)?
    } else {
        Views::default()
    };
    let ctl = spec.run_dir.join("container-ctl");
    let listener = make_ctl_socket(&ctl, spec.user)?;
    let tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
        && nix::unistd::isatty(std::io::stdout()).unwrap_or(false);
    let name = format!("moat-{}", spec.id);
    let body = container_body(&spec, &image, &ctl, tty, &views)?;
    let result = rt.block_on(async {
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
    });
    let created = match result {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&ctl);
            return Err(e.into());
        }
    };
    spec.events.emit(
        "container",
        serde_json::json!({"name": name, "id": created.id, "image": image, "tty": tty}),
    );
    let outcome = run_container(&rt, &docker, &spec, proxy, &name, (listener, views), tty);
    if !spec.keep {
        // AutoRemove has usually done it already (or is doing it): the run
        // ends when the container is gone.
        if let Err(e) = rt.block_on(remove(&docker, &name)) {
            tracing::warn!("removing container {name}: {e}");
        }
        rt.block_on(removed(&docker, &name, Duration::from_secs(10)));
    } else {
        eprintln!(
            "moat: kept container {name} (moat destroy {} removes it)",
            spec.id
        );
    }
    let _ = std::fs::remove_dir_all(&ctl);
    rt.shutdown_timeout(Duration::from_millis(100));
    outcome
}

/// The control directory holding Moat's control socket `sock`, which only
/// the container's user may connect to.
fn make_ctl_socket(
    ctl: &Path,
    (uid, gid): (u32, u32),
) -> Result<std::os::unix::net::UnixListener, DockerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(ctl)?;
    let sock = ctl.join("sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    let owner = (
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    );
    nix::unistd::chown(&sock, owner.0, owner.1).map_err(std::io::Error::from)?;
    nix::unistd::chown(ctl, owner.0, owner.1).map_err(std::io::Error::from)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
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
fn gone(e: &bollard::errors::Error) -> bool {
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

/// Id-mapped views of the workspace and the `mounts:` sources, attached in
/// the run's directory for the engine to bind from: a file the command
/// (host uid [`super::init::SANDBOX_ID_BASE`] + N) writes there is uid N on
/// disk, so root's files stay root's. Detached when dropped, which is as
/// soon as the container has started (it keeps its own binds).
#[derive(Default)]
struct Views {
    /// Host directory → the path of its id-mapped view.
    at: Vec<(PathBuf, PathBuf)>,
}

impl Views {
    fn stage(spec: &DockerSpec) -> Result<Self, DockerError> {
        use std::os::fd::AsFd as _;
        let userns = super::init::sandbox_userns().map_err(std::io::Error::other)?;
        let mut views = Views::default();
        let mut sources = vec![spec.workspace.clone()];
        for m in &spec.mounts {
            sources.push(std::fs::canonicalize(&m.src)?);
        }
        for (i, src) in sources.into_iter().enumerate() {
            if views.at.iter().any(|(s, _)| *s == src) || !src.is_dir() {
                continue;
            }
            let view = spec.run_dir.join(format!("idmapped-{i}"));
            std::fs::create_dir_all(&view)?;
            let dir = std::fs::File::open(&src)?;
            let failed = |what: &str, e: nix::Error| {
                std::io::Error::other(format!(
                    "{what} {} for the container: {e} (its filesystem may not support id-mapped mounts)",
                    src.display()
                ))
            };
            let tree = super::sys::clone_tree(dir.as_fd()).map_err(|e| failed("cloning", e))?;
            super::sys::idmap(tree.as_fd(), userns.as_fd()).map_err(|e| failed("id-mapping", e))?;
            super::sys::move_mount_onto(tree.as_fd(), &view).map_err(|e| failed("attaching", e))?;
            views.at.push((src, view));
        }
        Ok(views)
    }

    /// Where the engine binds `src` from.
    fn of<'a>(&'a self, src: &'a Path) -> &'a Path {
        self.at
            .iter()
            .find(|(s, _)| s == src)
            .map_or(src, |(_, v)| v.as_path())
    }
}

impl Drop for Views {
    fn drop(&mut self) {
        for (_, view) in &self.at {
            let _ = nix::mount::umount2(view, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(view);
        }
    }
}

fn container_body(
    spec: &DockerSpec,
    image: &str,
    ctl: &Path,
    tty: bool,
    views: &Views,
) -> Result<ContainerCreateBody, DockerError> {
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    let exe = std::env::current_exe()?;
    let mut binds = vec![
        format!("{}:{WORKSPACE_INSIDE}", lossy(views.of(&spec.workspace))),
        format!("{}:{BINARY_INSIDE}:ro", lossy(&exe)),
        format!("{}:{MOAT_DIR}/ctl:ro", lossy(ctl)),
        format!("{}:{BUNDLE_INSIDE}:ro", lossy(&spec.bundle)),
        format!("{}:{JAVA_TRUSTSTORE_INSIDE}:ro", lossy(&spec.truststore)),
    ];
    for path in SYSTEM_BUNDLES {
        binds.push(format!("{}:{path}:ro", lossy(&spec.bundle)));
    }
    if let Some(h) = &spec.home_files {
        binds.push(format!("{}:{HOME_FILES_INSIDE}:ro", lossy(h)));
    }
    // Host directory → where the container sees it.
    let mut shown = vec![(spec.workspace.clone(), PathBuf::from(WORKSPACE_INSIDE))];
    for m in &spec.mounts {
        let src = std::fs::canonicalize(&m.src).map_err(|e| {
            std::io::Error::new(e.kind(), format!("mounts: {}: {e}", m.src.display()))
        })?;
        if let Some(mask) = spec.mask.iter().find(|k| src.starts_with(k)) {
            return Err(DockerError::MaskedMount {
                src,
                mask: mask.clone(),
            });
        }
        binds.push(format!(
            "{}:{}{}",
            lossy(views.of(&src)),
            lossy(&m.dst),
            if m.read_only { ":ro" } else { "" }
        ));
        shown.push((src, m.dst.clone()));
    }
    // Deeper than the directory that holds them, so mounted over it.
    let (empty_dir, empty_file) = super::mask::empty_sources(&spec.run_dir)?;
    for mask in &spec.mask {
        let Ok(meta) = std::fs::metadata(mask) else {
            continue;
        };
        for (src, dst) in &shown {
            if let Ok(rel) = mask.strip_prefix(src) {
                let empty = if meta.is_dir() {
                    &empty_dir
                } else {
                    &empty_file
                };
                binds.push(format!("{}:{}:ro", lossy(empty), lossy(&dst.join(rel))));
            }
        }
    }
    // The host's loader and libraries run the binary, whatever the image has.
    let libs = loaded_libraries()?;
    let loader = libs
        .iter()
        .find(|p| is_loader(p))
        .and_then(|p| p.file_name())
        .ok_or_else(|| std::io::Error::other("cannot find this process's dynamic loader"))?;
    for lib in &libs {
        if let Some(name) = lib.file_name() {
            binds.push(format!(
                "{}:{LIB_INSIDE}/{}:ro",
                lossy(lib),
                name.to_string_lossy()
            ));
        }
    }
    let mut entrypoint = vec![
        format!("{LIB_INSIDE}/{}", loader.to_string_lossy()),
        "--library-path".into(),
        LIB_INSIDE.into(),
        BINARY_INSIDE.to_string(),
        "__container-init".into(),
    ];
    // Always a flag first: a leading `--` would be eaten by the CLI parser.
    entrypoint.push(if tty { "--tty" } else { "--no-tty" }.into());
    entrypoint.push("--".into());
    let env = spec
        .env
        .iter()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    let (uid, gid) = spec.user;
    let host_config = HostConfig {
        network_mode: Some("none".into()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        binds: Some(binds),
        tmpfs: Some([("/tmp".to_string(), "mode=1777,exec".to_string())].into()),
        memory: spec.limits.memory,
        nano_cpus: spec.limits.cpus.map(|c| (c * 1e9) as i64),
        // Gone when it stops (its run ended, or Moat died: see init_main).
        auto_remove: Some(!spec.keep),
        ..Default::default()
    };
    let mut labels: std::collections::HashMap<String, String> =
        [(LABEL_RUN.to_string(), spec.id.clone())].into();
    // $MOAT_HOME/runs/<id> → $MOAT_HOME: `moat clean` of another home (or
    // another user) never touches this container.
    if let Some(home) = spec.run_dir.parent().and_then(Path::parent) {
        labels.insert(LABEL_HOME.to_string(), lossy(home));
    }
    Ok(ContainerCreateBody {
        image: Some(image.into()),
        entrypoint: Some(entrypoint),
        cmd: Some(
            spec.command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        ),
        env: Some(env),
        user: Some(format!("{uid}:{gid}")),
        working_dir: Some(WORKSPACE_INSIDE.into()),
        tty: Some(tty),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// The shared objects this process has mapped (the dynamic loader, libc,
/// libm, libgcc_s, …), from /proc/self/maps: exactly what the binary needs
/// to run elsewhere, without parsing ELF.
fn loaded_libraries() -> std::io::Result<Vec<PathBuf>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(shared_objects(&maps))
}

/// The distinct `*.so*` file paths of a /proc/PID/maps text, in order.
fn shared_objects(maps: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path (the path may hold spaces).
        let Some(path) = line.splitn(6, char::is_whitespace).nth(5).map(str::trim) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or("");
        if path.starts_with('/')
            && !path.ends_with(" (deleted)")
            && (name.ends_with(".so") || name.contains(".so."))
            && !out.iter().any(|p| p.as_os_str() == path)
        {
            out.push(PathBuf::from(path));
        }
    }
    out
}

/// The dynamic loader (`ld-linux-x86-64.so.2`, `ld-linux-aarch64.so.1`, …).
fn is_loader(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
}

/// Attach, start, plumb, release the entrypoint, pump stdio, wait.
fn run_container(
    rt: &crate::net::runtime::ProxyRuntime,
    docker: &Docker,
    spec: &DockerSpec,
    proxy: Arc<dyn Front>,
    name: &str,
    // The control socket's listener, and the views the engine binds from.
    (listener, views): (std::os::unix::net::UnixListener, Views),
    tty: bool,
) -> Result<i32, DockerError> {
    let attached = rt.block_on(docker.attach_container(
        name,
        Some(AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    ))?;
    let started = rt.block_on(docker.start_container(name, None));
    // The container holds its own binds now: the host needs the id-mapped
    // views no longer (a kill -9 from here on leaves none behind).
    drop(views);
    started?;
    let info = rt.block_on(docker.inspect_container(name, None))?;
    let state = info.state.unwrap_or_default();
    let pid = state
        .pid
        .filter(|p| *p > 0)
        .ok_or_else(|| DockerError::NoPid(state.error.unwrap_or_default()))?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let net = netns::plumb(&ns, true)?;
    let published = run::publish_in(rt, &ns, &spec.publish)?;
    run::serve_sandbox(rt, proxy, net, Arc::new(SoOriginalDst), &spec.events)?;
    drop(ns);

    // The entrypoint connects first thing; a container that stops before
    // it did (an image it cannot run in) ends the wait.
    let mut ctl = rt.block_on(async {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let mut stopped = docker.wait_container(name, None);
        tokio::select! {
            accepted = listener.accept() => Ok(accepted?.0),
            _ = stopped.next() => Err(DockerError::NoPid(
                "its entrypoint stopped before reaching Moat (see the container's \
                 output above)".into(),
            )),
            _ = tokio::time::sleep(GO_TIMEOUT) => Err(DockerError::NoPid(
                "its entrypoint did not reach Moat in time".into(),
            )),
        }
    })?;

    let raw = if tty { RawMode::enter() } else { None };
    if tty {
        resize(rt, docker, name);
    }
    // Signals to Moat are caught from before the go: `moat stop` may send
    // one as soon as `started` has told it the id.
    let signals: Vec<_> = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        [
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::window_change(), "SIGWINCH"),
        ]
        .into_iter()
        .filter_map(|(kind, name)| Some((signal(kind).ok()?, name)))
        .collect()
    };
    // Release the entrypoint: the namespace is ready. The connection stays
    // open until the run ends (the entrypoint's lifeline) and brings back
    // the command's exit code.
    rt.block_on(ctl.write_all(b"g"))?;
    crate::runs::started();

    let mut output = attached.output;
    let out_task = rt.spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        while let Some(Ok(chunk)) = output.next().await {
            use bollard::container::LogOutput;
            let _ = match chunk {
                LogOutput::StdErr { message } => {
                    let r = stderr.write_all(&message).await;
                    let _ = stderr.flush().await;
                    r
                }
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    let r = stdout.write_all(&message).await;
                    let _ = stdout.flush().await;
                    r
                }
                LogOutput::StdIn { .. } => Ok(()),
            };
        }
    });
    let mut input = attached.input;
    rt.spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut input).await;
        let _ = input.shutdown().await;
    });
    // Signals to Moat go to the container's entrypoint, which passes them on.
    {
        let docker = docker.clone();
        let name = name.to_owned();
        rt.spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for (mut s, sig) in signals {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        let _ = tx.send(sig);
                    }
                });
            }
            while let Some(sig) = rx.recv().await {
                if sig == "SIGWINCH" {
                    if tty && let Some((w, h)) = terminal_size() {
                        let _ = docker
                            .resize_container_tty(&name, ResizeContainerTTYOptions { w, h })
                            .await;
                    }
                    continue;
                }
                if sig == "SIGINT" && tty {
                    continue; // the terminal's ^C already went through the pty
                }
                let _ = docker
                    .kill_container(&name, Some(KillContainerOptions { signal: sig.into() }))
                    .await;
            }
        });
    }
    let code = rt.block_on(async {
        // "CODE\n" from the entrypoint just before it exits.
        let mut report = Vec::new();
        let _ = ctl.read_to_end(&mut report).await;
        if let Some(code) = std::str::from_utf8(&report)
            .ok()
            .and_then(|r| r.trim().parse::<i64>().ok())
        {
            if spec.keep {
                // A kept container is stopped (not just about to be) when
                // the run ends.
                let mut stopped = docker.wait_container(name, None);
                let _ = tokio::time::timeout(Duration::from_secs(5), stopped.next()).await;
            }
            return Ok(code);
        }
        // No report: the entrypoint itself was killed (docker kill, OOM).
        let mut wait = docker.wait_container(name, None);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            // Removed already (AutoRemove): it was killed.
            Some(Err(e)) if gone(&e) => Ok(137),
            Some(Err(e)) => Err(DockerError::from(e)),
            None => Err(DockerError::NoPid("the engine lost the container".into())),
        }
    });
    // The last output may still be on its way.
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), out_task).await });
    drop(raw);
    drop(published);
    Ok(code?.clamp(0, 255) as i32)
}

fn terminal_size() -> Option<(i32, i32)> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the struct we pass.
    let r = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((i32::from(ws.ws_col), i32::from(ws.ws_row)))
}

fn resize(rt: &crate::net::runtime::ProxyRuntime, docker: &Docker, name: &str) {
    if let Some((w, h)) = terminal_size() {
        let _ = rt.block_on(docker.resize_container_tty(name, ResizeContainerTTYOptions { w, h }));
    }
}

/// The host terminal in raw mode while attached to the container's TTY;
/// restored on drop.
struct RawMode(nix::libc::termios);

impl RawMode {
    fn enter() -> Option<Self> {
        // SAFETY: plain termios calls on stdin with a zeroed struct to fill.
        unsafe {
            let mut t: nix::libc::termios = std::mem::zeroed();
            if nix::libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            nix::libc::cfmakeraw(&mut t);
            if nix::libc::tcsetattr(0, nix::libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(Self(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe {
            nix::libc::tcsetattr(0, nix::libc::TCSANOW, &self.0);
        }
    }
}

/// Arguments of `moat __container-init` (internal; built by [`run`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InitArgs {
    pub tty: bool,
    pub command: Vec<OsString>,
}

pub fn parse_init_args(raw: Vec<OsString>) -> Result<InitArgs, String> {
    let mut args = InitArgs::default();
    let mut it = raw.into_iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--tty") => args.tty = true,
            Some("--no-tty") => args.tty = false,
            Some("--") => {
                args.command = it.collect();
                break;
            }
            _ => return Err(format!("unexpected argument {}", a.to_string_lossy())),
        }
    }
    if args.command.is_empty() {
        return Err("no command".into());
    }
    Ok(args)
}

fn die(code: i32, msg: &str) -> ! {
    eprintln!("moat: {msg}");
    std::process::exit(code)
}

/// `moat __container-init`: the container's PID 1. Waits for Moat's go,
/// fills HOME, runs the command, forwards signals, reaps; reports the
/// command's code to Moat and exits with it. When Moat's connection closes
/// first (Moat died), kills everything and exits. Never returns.
pub fn init_main(args: InitArgs) -> ! {
    use std::io::{Read, Write};
    // Blocked from the start: as PID 1 this process would drop a signal it
    // neither handles nor blocks, and Moat forwards from before the go.
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCONT,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    // Wait for the go (or give up: no redirect, no run).
    let mut ctl = std::os::unix::net::UnixStream::connect(CTL_INSIDE)
        .unwrap_or_else(|e| die(125, &format!("connecting to Moat at {CTL_INSIDE}: {e}")));
    let _ = ctl.set_read_timeout(Some(GO_TIMEOUT));
    let mut b = [0u8; 1];
    if ctl.read_exact(&mut b).is_err() || b[0] != b'g' {
        die(125, "the sandbox was not set up (Moat is gone?)");
    }
    let _ = ctl.set_read_timeout(None);
    if let Err(e) = fill_home() {
        die(125, &format!("preparing HOME {HOME_INSIDE}: {e}"));
    }

    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    // SAFETY: single-threaded so far.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let Some(program) = argv.first() else {
                die(127, "no command")
            };
            let e = execvp(program, &argv).unwrap_err();
            let code = if e == nix::errno::Errno::ENOENT {
                127
            } else {
                126
            };
            die(
                code,
                &format!("cannot run {}: {e}", args.command[0].to_string_lossy()),
            )
        }
        Ok(ForkResult::Parent { child }) => {
            let code = supervise(child, &set, args.tty, &ctl);
            let _ = ctl.write_all(format!("{code}\n").as_bytes());
            std::process::exit(code)
        }
        Err(e) => die(125, &format!("fork: {e}")),
    }
}

/// HOME in the fresh /tmp, with the placeholder files Moat put in
/// `/.moat/home-files`.
fn fill_home() -> std::io::Result<()> {
    std::fs::create_dir_all(HOME_INSIDE)?;
    let src = Path::new(HOME_FILES_INSIDE);
    if src.is_dir() {
        copy_tree(src, Path::new(HOME_INSIDE))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Wait for `child`, forwarding signals; its status, shell-style. With a
/// TTY, ^C/^\ reach the command from the terminal itself, so SIGINT and
/// SIGQUIT are not passed on twice. If Moat's end of `ctl` closes, Moat is
/// gone (and the proxy with it): everything in the container is killed and
/// the status is 137.
fn supervise(child: Pid, set: &SigSet, tty: bool, ctl: &std::os::unix::net::UnixStream) -> i32 {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use std::os::fd::AsFd;
    let Ok(signals) = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    else {
        die(125, "signalfd failed")
    };
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue, // an orphan reaped (we are PID 1)
            }
        }
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let moat_side = fds[1].revents().unwrap_or(PollFlags::empty());
        if !moat_side.is_empty() {
            let mut b = [0u8; 64];
            let gone = moat_side.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
                || matches!(nix::unistd::read(ctl.as_fd(), &mut b), Ok(0) | Err(_));
            if gone {
                eprintln!("moat: Moat is gone (no proxy any more): stopping the command");
                // We are PID 1: -1 is everything else in the container.
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                std::process::exit(137);
            }
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => {}
                Signal::SIGINT | Signal::SIGQUIT if tty => {}
                sig => {
                    let _ = kill(child, sig);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn shared_objects_come_from_the_maps_once_each() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 123 /usr/local/bin/moat
7f0000000000-7f0000001000 r--p 00000000 fd:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000001000-7f0000002000 r-xp 00001000 fd:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000003000-7f0000004000 r--p 00000000 fd:01 2 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
7f0000005000-7f0000006000 r--p 00000000 fd:01 3 /tmp/gone.so.1 (deleted)
7f0000007000-7f0000008000 rw-p 00000000 00:00 0 [heap]
7f0000009000-7f000000a000 r--p 00000000 fd:01 4 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";
        let libs = shared_objects(maps);
        assert_eq!(
            libs,
            [
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
        assert!(is_loader(&libs[2]) && !is_loader(&libs[0]));
        // This very process: a loader and a libc at least.
        let here = loaded_libraries().unwrap();
        assert!(here.iter().any(|p| is_loader(p)), "{here:?}");
    }

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

    #[test]
    fn init_args() {
        let a =
            parse_init_args(vec!["--tty".into(), "--".into(), "sh".into(), "-c".into()]).unwrap();
        assert!(a.tty);
        assert_eq!(a.command, [OsString::from("sh"), "-c".into()]);
        assert!(parse_init_args(vec!["--".into()]).is_err());
        assert!(parse_init_args(vec!["--x".into()]).is_err());
    }
}
