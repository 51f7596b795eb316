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
//!
//! The pieces: `engine.rs` talks to the Docker engine (connecting, images,
//! the containers Moat made), `container.rs` runs one container, `tty.rs`
//! is the host terminal's side of it, and `entrypoint.rs` is the
//! in-container side (`moat __container-init`).

use std::ffi::OsString;
use std::path::PathBuf;

use super::netns;
use super::run::RunError;
use crate::config::{ContainerLimits, Dependency, Mount};
use crate::events::Events;

mod container;
mod engine;
mod entrypoint;
mod passwd;
mod tty;

pub use container::{host_loader, moat_argv, run};
pub use engine::{MoatContainer, connect, containers, ensure_image, kill_now, remove, removed};
pub use entrypoint::{InitArgs, init_main, parse_init_args};

/// Where Moat's own files appear in the container.
pub const MOAT_DIR: &str = "/.moat";
/// The Moat binary (the entrypoint).
pub const BINARY_INSIDE: &str = "/.moat/moat";
/// The host's dynamic loader and the libraries the binary runs with.
pub const LIB_INSIDE: &str = "/.moat/lib";
/// Moat's control socket (in the bind-mounted control directory): the
/// entrypoint's go signal, lifeline and exit-code report.
pub const CTL_INSIDE: &str = "/.moat/ctl/sock";
/// With `ssh:` grants: the run's SSH agent (`SSH_AUTH_SOCK`), in a
/// directory of the run's bind-mounted like the control socket's.
pub const SSH_AGENT_INSIDE: &str = "/.moat/ssh/sock";
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
    /// Moat's own directories bound in (`moat claude`'s install and state):
    /// (host, inside, read-only). Unlike `mounts`, they may lie in
    /// `$MOAT_HOME`, whose mask covers the rest.
    pub dirs: Vec<(PathBuf, PathBuf, bool)>,
    /// With `ssh:` grants: the agent served at [`SSH_AGENT_INSIDE`].
    pub ssh_agent: Option<std::sync::Arc<crate::ssh::Agent>>,
}
