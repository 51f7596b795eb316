//! The sandbox's first process (`moat __sandbox-init`): it enters new
//! network, mount and PID namespaces, waits until Moat has plumbed the
//! network, shapes the filesystem, then runs the command under a tiny PID 1
//! that forwards signals and reaps.
//!
//! Process tree: `moat run` → `__sandbox-init` (host PID namespace) →
//! PID 1 (init, new PID namespace) → the command.
//!
//! The filesystem's shape is decided apart from making it. [`mount_plan`]
//! is pure: from the [`InitArgs`], the host files read beforehand ([`Host`])
//! and a [`Probe`] of the host, it returns the ordered [`MountOp`]s (what is
//! hidden, read-only, re-exposed and masked), working out itself what its
//! own mounts cover. `shape_filesystem` reads the host, plans, and runs the
//! plan through a [`Kernel`] ([`LinuxKernel`]; unit tests run it through the
//! recording fake, without root). [`proc_read_only`] does the same for
//! PID 1's /proc.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, execvp, fork};

use super::netns;
use super::sys::{Kernel, LinuxKernel};

/// The descriptor `moat run` passes the sync socket on.
pub const SYNC_FD: i32 = 3;
/// The descriptor a rootless `moat run -p` passes the dial socket on
/// (see [`dialer`]).
pub const DIAL_FD: i32 = 4;
/// Where the merged CA bundle appears inside the sandbox.
pub const BUNDLE_INSIDE: &str = "/tmp/.moat/ca-bundle.pem";
/// Where the Java truststore (same certificates) appears inside.
pub const JAVA_TRUSTSTORE_INSIDE: &str = "/tmp/.moat/java-truststore.p12";
/// Host system directories the command sees read-only.
const READ_ONLY: [&str; 11] = [
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/boot", "/var",
];
/// When Moat runs as root, the command is root of a user namespace whose
/// ids 0..[`SANDBOX_IDS`] are these host ids: never the host's root.
pub const SANDBOX_ID_BASE: u32 = 0x7ffe_0000;
const SANDBOX_IDS: u32 = 65536;
/// The sandbox's fresh HOME.
pub const HOME_INSIDE: &str = "/tmp/home";
/// Where the sandbox finds the run's SSH agent (`SSH_AUTH_SOCK`), with
/// `ssh:` grants: bound by the init in the sandbox's own /tmp, so no other
/// process of the host can reach it, and served by Moat.
pub const SSH_AGENT_INSIDE: &str = "/tmp/.moat/ssh/agent.sock";

/// What `moat run` asks of the init (passed as arguments).
#[derive(Debug, Default)]
pub struct InitArgs {
    pub workspace: PathBuf,
    /// Directories to hide behind empty read-only tmpfs mounts (the
    /// workspace stays visible inside them).
    pub hide: Vec<PathBuf>,
    /// Paths covered by an empty read-only mount even inside the workspace
    /// (see [`super::mask`]).
    pub mask: Vec<PathBuf>,
    /// Files copied into the fresh /tmp: (host path, path inside). The
    /// merged CA bundle goes to [`BUNDLE_INSIDE`]; files under
    /// [`HOME_INSIDE`] belong to the command's user.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// uid/gid to run the command as (the sudo caller), if any.
    pub run_as: Option<(u32, u32)>,
    /// Moat is not root: create a user namespace too, plumb the network
    /// namespace from inside it and pass the sockets out (see [`rootless`]).
    pub rootless: bool,
    /// Rootless `-p`: serve connection requests on [`DIAL_FD`].
    pub dial: bool,
    /// The run's cgroup (`--redirect ebpf`): PID 1, and so the command and
    /// everything it starts, is born in it.
    pub cgroup: Option<PathBuf>,
    /// Host directories attached inside, under /tmp (`moat claude`'s
    /// install and state): (host, inside, read-only). Opened before
    /// anything is mounted, like the workspace, and id-mapped with it.
    pub dirs: Vec<(PathBuf, PathBuf, bool)>,
    /// Bind [`SSH_AGENT_INSIDE`] and pass it to Moat (`'a'` + the listener
    /// over the sync socket) before waiting for the go.
    pub ssh_agent: bool,
    pub command: Vec<OsString>,
}

fn die(msg: &str) -> ! {
    eprintln!("moat: sandbox setup failed: {msg}");
    std::process::exit(125)
}

/// Entry point of `moat __sandbox-init`. Never returns.
pub fn main(args: InitArgs) -> ! {
    // SAFETY: moat run put the sync socket on SYNC_FD and nothing else owns it.
    let mut sync = UnixStream::from(unsafe { OwnedFd::from_raw_fd(SYNC_FD) });
    // Opened before the filesystem changes shape (it may hide the path).
    let cgroup = args.cgroup.as_deref().map(|path| {
        super::cgroup::ForkTarget::open(path)
            .unwrap_or_else(|e| die(&format!("opening the run's cgroup {}: {e}", path.display())))
    });
    // Moat is root and the command would be too: it becomes root of its
    // own user namespace instead, mapped to unprivileged host ids. Made
    // before the PID namespace, whose first child must be PID 1.
    let userns = (!args.rootless && args.run_as.is_none())
        .then(|| sandbox_userns().unwrap_or_else(|e| die(&e)));
    if args.rootless {
        if let Err(e) = rootless(&sync, args.dial) {
            die(&e);
        }
    } else {
        if let Err(e) = LinuxKernel
            .unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)
        {
            die(&format!(
                "cannot create namespaces ({e}); run as root, or use --network-mode env"
            ));
        }
        if sync.write_all(b"r").is_err() {
            die("moat went away before the network was ready");
        }
    }
    // The filesystem takes shape while Moat plumbs the network: the
    // command does not exist before `g`, so nothing runs unredirected.
    if let Err(e) = shape_filesystem(&args, userns.as_ref(), &LinuxKernel) {
        die(&e);
    }
    if args.ssh_agent
        && let Err(e) = ssh_agent_socket(&sync, home_owner(&args, userns.is_some()))
    {
        die(&e);
    }
    // Blocked before the go: Moat forwards signals to this process from
    // then on, and one that arrives before PID 1 exists must wait for it
    // (supervise passes it on) rather than end this process half-way.
    let forwarded = super::pid1::block_signals();
    let mut go = [0u8; 1];
    if sync.read_exact(&mut go).is_err() || go[0] != b'g' {
        die("moat went away before the network was ready");
    }
    drop(sync);
    // Only this process holds the write end: PID 1 sees the pipe close if
    // this process died before PID 1 asked to die with it (see `pid1`).
    let (alive, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .unwrap_or_else(|e| die(&format!("pipe: {e}")));
    let forked = match &cgroup {
        // SAFETY: single-threaded here (no runtime was started in this
        // process), so the child may do anything.
        Some(cg) => unsafe { super::sys::Kernel::fork_into_cgroup(&super::sys::LinuxKernel, cg) },
        // SAFETY: as above.
        None => unsafe { fork() },
    };
    match forked {
        Ok(ForkResult::Child) => {
            drop(alive_w);
            drop(cgroup);
            pid1(&args, &forwarded, alive, userns)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive);
            let code = supervise(child, &forwarded);
            drop(alive_w);
            std::process::exit(code)
        }
        Err(e) => die(&format!("fork: {e}")),
    }
}

/// Rootless setup, when Moat is not root.
///
/// The init creates a user namespace together with the network and mount
/// namespaces, then the PID namespace (the user namespace owns them all), maps only the
/// caller's own uid and gid (to themselves: the command runs as the user,
/// `id -u` unchanged), and, holding every capability in that user namespace
/// until it execs the command, plumbs its network namespace itself with
/// [`netns::plumb_here`]: the host process cannot `setns` into a namespace
/// owned by another user namespace without entering that user namespace,
/// which a multi-threaded process cannot do. The three sockets go to Moat
/// over the sync socket (`SCM_RIGHTS`) with the ready byte; Moat serves them
/// exactly as in root mode. The nft rules are loaded before the command
/// exists, so its first connect() is already redirected.
///
/// The command later runs as a non-zero uid with an empty capability set
/// (bounding set included) and `no_new_privs`: it holds no capability over
/// the namespaces, so it cannot change the rules or routes.
fn rootless(sync: &UnixStream, dial: bool) -> Result<(), String> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    // The PID namespace comes last: the first child forked after it is
    // unshared becomes its PID 1, and that must be the command's init.
    LinuxKernel
        .unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| {
            format!(
                "cannot create a user namespace ({e}): unprivileged user namespaces are off here \
             (sysctls user.max_user_namespaces, kernel.unprivileged_userns_clone, \
             kernel.apparmor_restrict_unprivileged_userns); run as root (sudo moat run …), \
             or use --network-mode env"
            )
        })?;
    // Not reset by entering a user namespace owned by our own uid, but
    // cheap to make sure of.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let write = |file: &str, text: String| {
        std::fs::write(file, &text).map_err(|e| format!("writing {file} ({}): {e}", text.trim()))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))?;

    // This process holds every capability in the user namespace it just
    // made, so it loads the rules itself (libnftables, no `nft` exec).
    let net = netns::plumb_here(true).map_err(|e| e.to_string())?;

    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let fds = [
        net.proxy_listener.as_raw_fd(),
        net.dns_udp.as_raw_fd(),
        net.dns_tcp.as_raw_fd(),
    ];
    sendmsg::<()>(
        sync.as_raw_fd(),
        &[std::io::IoSlice::new(b"r")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|_| "moat went away before the network was ready".to_string())?;
    // Moat has its own copies now; the command must not inherit these.
    drop(net);
    if dial {
        // SAFETY: moat run put the dial socket on DIAL_FD and nothing else owns it.
        let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(DIAL_FD) });
        // Forked before the PID namespace exists: the dialer lives outside
        // it, out of the command's sight.
        // SAFETY: single-threaded here (the netlink runtime is gone).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => dialer(sock),
            Ok(ForkResult::Parent { .. }) => drop(sock),
            Err(e) => return Err(format!("fork: {e}")),
        }
    }
    LinuxKernel
        .unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("creating the PID namespace: {e}"))?;
    Ok(())
}

/// Bind the run's SSH agent socket at [`SSH_AGENT_INSIDE`] in the fresh
/// /tmp, for the command's user (`owner`; rootless: this process's) alone,
/// and send the listener to Moat, which serves it.
fn ssh_agent_socket(sync: &UnixStream, owner: Option<(u32, u32)>) -> Result<(), String> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use nix::unistd::{Gid, Uid};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let sock = Path::new(SSH_AGENT_INSIDE);
    let dir = sock.parent().expect("an absolute path");
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", dir.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir.parent().expect("under /tmp"))
        .map_err(|e| fail("creating", e))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("creating", e))?;
    let listener = std::os::unix::net::UnixListener::bind(sock)
        .map_err(|e| format!("binding the SSH agent socket {SSH_AGENT_INSIDE}: {e}"))?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("securing the socket in", e))?;
    if let Some((uid, gid)) = owner {
        let ids = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        for path in [sock, dir] {
            nix::unistd::chown(path, ids.0, ids.1)
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
    }
    sendmsg::<()>(
        sync.as_raw_fd(),
        &[std::io::IoSlice::new(b"a")],
        &[ControlMessage::ScmRights(&[listener.as_raw_fd()])],
        MsgFlags::empty(),
        None,
    )
    .map_err(|_| "moat went away before the SSH agent was ready".to_string())?;
    Ok(())
}

/// Rootless `-p`: Moat cannot enter the sandbox's network namespace, so this
/// process, in that namespace, connects for it. Each request is a port (2
/// bytes, big-endian); the answer is 4 bytes, 0 with the connected socket
/// attached (`SCM_RIGHTS`), or the errno of connect(). It holds no
/// capability, dies with the sandbox's init, and ends when Moat closes the
/// socket.
fn dialer(mut sock: UnixStream) -> ! {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        let _ = caps::clear(None, set);
    }
    loop {
        let mut port = [0u8; 2];
        if sock.read_exact(&mut port).is_err() {
            std::process::exit(0);
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], u16::from_be_bytes(port)));
        let sent = match std::net::TcpStream::connect(addr) {
            Ok(conn) => sendmsg::<()>(
                sock.as_raw_fd(),
                &[std::io::IoSlice::new(&0i32.to_be_bytes())],
                &[ControlMessage::ScmRights(&[conn.as_raw_fd()])],
                MsgFlags::empty(),
                None,
            )
            .is_ok(),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(nix::libc::ECONNREFUSED);
                sock.write_all(&errno.to_be_bytes()).is_ok()
            }
        };
        if !sent {
            std::process::exit(0);
        }
    }
}

/// What a path is, following symlinks (`metadata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    /// A socket, a device, a pipe.
    Other,
}

/// What the plan needs to know of the host's filesystem, asked before
/// anything is mounted: [`LiveProbe`] in the init, a fixed set in tests.
/// The plan itself works out what its own mounts cover.
pub trait Probe {
    /// What is at `path`, following symlinks; `None` if nothing.
    fn kind(&self, path: &Path) -> Option<Kind>;
    /// Whether `path` itself is a directory (a symlink to one is not).
    fn is_real_dir(&self, path: &Path) -> bool;
    /// Where `path` leads once every symlink is followed.
    fn canonical(&self, path: &Path) -> Option<PathBuf>;
}

/// The host's filesystem, as this process sees it now.
pub struct LiveProbe;

impl Probe for LiveProbe {
    fn kind(&self, path: &Path) -> Option<Kind> {
        let m = std::fs::metadata(path).ok()?;
        Some(match (m.is_dir(), m.is_file()) {
            (true, _) => Kind::Dir,
            (_, true) => Kind::File,
            _ => Kind::Other,
        })
    }

    fn is_real_dir(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    }

    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
}

/// What the plan copies in from the host, read before anything is mounted
/// (the host files may live under /tmp, which the plan replaces).
#[derive(Debug, Default, Clone)]
pub struct Host {
    /// [`InitArgs::files`], read: (path inside, contents).
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// A resolver file that lives in a hidden directory (/etc/resolv.conf ->
    /// /run/systemd/resolve/stub-resolv.conf), put back in the empty one.
    pub resolver: Option<(PathBuf, Vec<u8>)>,
    /// Where the cgroup2 filesystem is mounted.
    pub cgroup2: Option<PathBuf>,
}

/// How a failed file step is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The error alone.
    Bare,
    /// `path: error`.
    Named,
    /// Not at all: the step is best-effort.
    Ignored,
}

/// One step of the filesystem's shaping, in the order it runs. The file
/// steps write into the fresh tmpfs mounts the plan makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Every mount below / private: nothing propagates to or from the host.
    Private,
    /// A fresh, empty tmpfs (nosuid, nodev) with `mode` (`mode=1777`).
    Tmpfs { path: PathBuf, mode: &'static str },
    /// `from` bound on `to`.
    Bind { from: PathBuf, to: PathBuf },
    /// The merged CA bundle ([`BUNDLE_INSIDE`]) bound over a system bundle.
    CaBundle { on: PathBuf },
    /// `path` and its submounts bound on themselves, then read-only
    /// (keeping nosuid/nodev/noexec).
    ReadOnlyDir { path: PathBuf },
    /// The mount at `path` read-only (keeping nosuid/nodev/noexec).
    ReadOnly { path: PathBuf },
    /// The mount at `path` and every mount beneath it read-only.
    ReadOnlyTree { path: PathBuf },
    /// `path` bound on itself with its submounts, all read-only.
    ReadOnlyBindTree { path: PathBuf },
    /// The staged `/dev` moved onto /dev.
    MoveDev { from: PathBuf },
    /// A tmpfs of the plan's (a hidden directory) made read-only.
    SealTmpfs { path: PathBuf },
    /// The masks' scratch tmpfs made read-only.
    SealMasks { scratch: PathBuf },
    /// The empty directory or file `source` bound over the mask `path`.
    Mask { path: PathBuf, source: PathBuf },
    /// The masks' scratch tmpfs detached (the binds stay).
    DetachMasks { scratch: PathBuf },
    /// The workspace, as opened before anything was mounted, attached
    /// again at `path` (id-mapped to the command's user namespace if
    /// `idmap`).
    Workspace { path: PathBuf, idmap: bool },
    /// Extra directory `index` of [`InitArgs::dirs`], opened like the
    /// workspace, attached at `path` (id-mapped if `idmap`, read-only if
    /// `read_only`).
    Dir {
        index: usize,
        path: PathBuf,
        idmap: bool,
        read_only: bool,
    },
    /// A fresh /proc (nosuid, nodev, noexec), in PID 1.
    Proc,
    /// `mkdir` (`-p` if `parents`).
    Mkdir {
        path: PathBuf,
        parents: bool,
        report: Report,
    },
    /// A file written.
    Write {
        path: PathBuf,
        bytes: Vec<u8>,
        report: Report,
    },
    /// A symlink at `link` to `target`.
    Symlink { target: PathBuf, link: PathBuf },
    /// Given to the command's user (best-effort).
    Chown { path: PathBuf, uid: u32, gid: u32 },
    /// An emptied staging directory removed (best-effort).
    RemoveDir { path: PathBuf },
}

/// What the plan's own mounts have made of the host's filesystem so far:
/// which mount a path is on (the last one mounted over it), and what the
/// plan created on its fresh ones.
struct View<'a> {
    probe: &'a dyn Probe,
    /// Mount points in the order mounted; `true` for a fresh (empty) one,
    /// `false` for one that shows the host's files at the same path.
    mounts: Vec<(PathBuf, bool)>,
    /// What the plan made on its fresh mounts.
    made: BTreeMap<PathBuf, Kind>,
}

impl<'a> View<'a> {
    fn new(probe: &'a dyn Probe) -> Self {
        Self {
            probe,
            mounts: Vec::new(),
            made: BTreeMap::new(),
        }
    }

    fn mount(&mut self, at: &Path, fresh: bool) {
        self.made.retain(|p, _| !p.starts_with(at));
        self.mounts.push((at.to_path_buf(), fresh));
    }

    /// The fresh mount `path` is on, if it is on one.
    fn fresh_root(&self, path: &Path) -> Option<&Path> {
        let (at, fresh) = self
            .mounts
            .iter()
            .rev()
            .find(|(at, _)| path.starts_with(at))?;
        fresh.then_some(at.as_path())
    }

    fn make(&mut self, path: &Path, kind: Kind, parents: bool) {
        let Some(root) = self.fresh_root(path).map(Path::to_path_buf) else {
            return; // on the host's files: the probe answers for it
        };
        if parents {
            for dir in path.ancestors().skip(1).take_while(|d| *d != root) {
                self.made.insert(dir.to_path_buf(), Kind::Dir);
            }
        }
        self.made.insert(path.to_path_buf(), kind);
    }

    /// Everything at and under `from` now at `to` (a moved mount).
    fn moved(&mut self, from: &Path, to: &Path) {
        let rebase = |p: &Path| to.join(p.strip_prefix(from).unwrap_or(p));
        self.made.retain(|p, _| !p.starts_with(to));
        let made: Vec<_> = self
            .made
            .iter()
            .filter(|(p, _)| p.starts_with(from) && *p != from)
            .map(|(p, k)| (rebase(p), *k))
            .collect();
        self.made.retain(|p, _| !p.starts_with(from) || p == from);
        self.made.extend(made);
        for (at, _) in &mut self.mounts {
            if at.starts_with(from) {
                *at = rebase(at);
            }
        }
    }

    fn made_kind(&self, root: &Path, path: &Path) -> Option<Kind> {
        match path == root {
            true => Some(Kind::Dir),
            false => self.made.get(path).copied(),
        }
    }

    /// `symlink_metadata(path).is_dir()`, now.
    fn is_real_dir(&self, path: &Path) -> bool {
        match self.fresh_root(path) {
            Some(root) => self.made_kind(root, path) == Some(Kind::Dir),
            None => self.probe.is_real_dir(path),
        }
    }

    /// `metadata(path)`, now: a host symlink leads nowhere if its target
    /// is covered.
    fn kind(&self, path: &Path) -> Option<Kind> {
        if let Some(root) = self.fresh_root(path) {
            return self.made_kind(root, path);
        }
        let kind = self.probe.kind(path)?;
        match self.probe.canonical(path) {
            Some(target) if target != path => match self.fresh_root(&target) {
                Some(root) => self.made_kind(root, &target),
                None => Some(kind),
            },
            _ => Some(kind),
        }
    }
}

/// Who owns the fresh HOME: the command's user.
fn home_owner(args: &InitArgs, userns: bool) -> Option<(u32, u32)> {
    match userns {
        true => Some((SANDBOX_ID_BASE, SANDBOX_ID_BASE)),
        false => args.run_as,
    }
}

/// The filesystem's shaping, in order, decided without touching anything:
/// private mounts, a fresh /tmp with HOME and the CA bundle, a minimal
/// `/dev`, hidden directories, read-only cgroup2, `/sys` and system
/// directories, then the workspace, then the masks (see [`super::mask`]): a
/// mask is covered even inside the workspace. The hidden directories are
/// made read-only last. With `userns` (Moat is root and the command will be
/// root of that user namespace) the workspace is mounted id-mapped, so that
/// namespace's root owns what the host's root owns.
///
/// `probe` answers for the host as it is before the first step; what each
/// step covers or creates is worked out here (a directory under a hidden
/// one is gone, a mask under /tmp is out of reach unless the workspace
/// shows it again).
pub fn mount_plan(args: &InitArgs, host: &Host, probe: &dyn Probe, userns: bool) -> Vec<MountOp> {
    use MountOp::*;
    let mut plan = vec![Private];
    let mut view = View::new(probe);
    let tmpfs = |plan: &mut Vec<MountOp>, view: &mut View, path: &Path, mode| {
        plan.push(Tmpfs {
            path: path.to_path_buf(),
            mode,
        });
        view.mount(path, true);
    };
    let mkdir = |plan: &mut Vec<MountOp>, view: &mut View, path: &Path, parents, report| {
        plan.push(Mkdir {
            path: path.to_path_buf(),
            parents,
            report,
        });
        view.make(path, Kind::Dir, parents);
    };
    let write = |plan: &mut Vec<MountOp>, view: &mut View, path: &Path, bytes: &[u8], report| {
        plan.push(Write {
            path: path.to_path_buf(),
            bytes: bytes.to_vec(),
            report,
        });
        view.make(path, Kind::File, false);
    };

    tmpfs(&mut plan, &mut view, Path::new("/tmp"), "mode=1777");
    let home = Path::new(HOME_INSIDE);
    mkdir(&mut plan, &mut view, home, true, Report::Bare);
    let owner = home_owner(args, userns);
    let chown = |plan: &mut Vec<MountOp>, path: &Path| {
        if let Some((uid, gid)) = owner {
            plan.push(Chown {
                path: path.to_path_buf(),
                uid,
                gid,
            });
        }
    };
    chown(&mut plan, home);
    for (inside, bytes) in &host.files {
        if let Some(parent) = inside.parent() {
            mkdir(&mut plan, &mut view, parent, true, Report::Named);
            if parent.starts_with(home) {
                for dir in parent.ancestors().take_while(|d| d.starts_with(home)) {
                    chown(&mut plan, dir);
                }
            }
        }
        write(&mut plan, &mut view, inside, bytes, Report::Named);
        if inside.starts_with(home) {
            chown(&mut plan, inside);
        }
    }
    // Programs that read the system bundle (Go, OpenSSL's default paths)
    // trust the Moat CA too.
    if view.kind(Path::new(BUNDLE_INSIDE)).is_some() {
        for system in super::trust::SYSTEM_BUNDLES {
            if view.kind(Path::new(system)) == Some(Kind::File) {
                plan.push(CaBundle { on: system.into() });
            }
        }
    }

    // A fresh `/dev` with only what programs need: null, zero, full,
    // random, urandom, tty and the terminals (bound from the host), /dev/shm
    // and the fd links. No disks, no /dev/kmsg, no /dev/mem.
    let stage = Path::new("/tmp/.moat-dev");
    mkdir(&mut plan, &mut view, stage, true, Report::Named);
    tmpfs(&mut plan, &mut view, stage, "mode=0755");
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host_dev = Path::new("/dev").join(dev);
        if view.kind(&host_dev).is_none() {
            continue;
        }
        let inside = stage.join(dev);
        write(&mut plan, &mut view, &inside, b"", Report::Named);
        plan.push(Bind {
            from: host_dev,
            to: inside,
        });
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        plan.push(Symlink {
            target: target.into(),
            link: stage.join(link),
        });
        view.make(&stage.join(link), Kind::Other, false);
    }
    for dir in ["pts", "shm"] {
        mkdir(&mut plan, &mut view, &stage.join(dir), false, Report::Bare);
    }
    // The host's devpts, so that the terminal the command inherits keeps
    // its name (tty, ssh and sudo look it up); another user's terminal
    // stays closed to the command by its mode, as on the host.
    plan.push(Bind {
        from: "/dev/pts".into(),
        to: stage.join("pts"),
    });
    view.mount(&stage.join("pts"), false);
    tmpfs(&mut plan, &mut view, &stage.join("shm"), "mode=1777");
    plan.push(MoveDev { from: stage.into() });
    view.moved(stage, Path::new("/dev"));
    plan.push(RemoveDir { path: stage.into() });
    view.made.remove(stage);

    let mut hidden = Vec::new();
    for path in &args.hide {
        // Only real directories: /var/run -> /run is hidden through /run.
        if !view.is_real_dir(path) {
            continue;
        }
        tmpfs(&mut plan, &mut view, path, "mode=0755");
        hidden.push(path.clone());
    }
    if let Some((path, bytes)) = &host.resolver {
        if let Some(parent) = path.parent() {
            mkdir(&mut plan, &mut view, parent, true, Report::Ignored);
        }
        write(&mut plan, &mut view, path, bytes, Report::Named);
    }
    // A uid-0 command could otherwise move itself out of the run's cgroup
    // (and away from the eBPF redirector) by writing cgroup.procs.
    if let Some(cgroup2) = &host.cgroup2 {
        plan.push(ReadOnly {
            path: cgroup2.clone(),
        });
    }
    // /sys and everything mounted under it (cgroups, bpffs, debugfs, …).
    plan.push(ReadOnlyTree {
        path: "/sys".into(),
    });
    let mut read_only = false;
    for dir in READ_ONLY {
        // Symlinks (/bin -> usr/bin on merged-/usr systems) follow their target.
        if !view.is_real_dir(Path::new(dir)) {
            continue;
        }
        plan.push(ReadOnlyDir { path: dir.into() });
        view.mount(Path::new(dir), false);
        read_only |= args.workspace.starts_with(dir);
    }
    let var_tmp = Path::new("/var/tmp");
    if view.kind(var_tmp) == Some(Kind::Dir) {
        tmpfs(&mut plan, &mut view, var_tmp, "mode=1777");
    }
    // Covered by one of the fresh mounts above (/tmp, a hidden directory).
    let visible = view.fresh_root(&args.workspace).is_none();
    if !visible || read_only || userns {
        plan.push(Workspace {
            path: args.workspace.clone(),
            idmap: userns,
        });
        view.make(&args.workspace, Kind::Dir, true);
        view.mount(&args.workspace, false);
    }
    for (index, (_, inside, read_only)) in args.dirs.iter().enumerate() {
        plan.push(Dir {
            index,
            path: inside.clone(),
            idmap: userns,
            read_only: *read_only,
        });
        view.make(inside, Kind::Dir, true);
        view.mount(inside, false);
    }

    // Every mask that is reachable now, covered with an empty, read-only
    // directory or file (both on one read-only tmpfs, made and detached
    // here). A socket is covered by the file: connecting to it is refused.
    let present: Vec<(&PathBuf, bool)> = args
        .mask
        .iter()
        .filter_map(|m| Some((m, view.kind(m)? == Kind::Dir)))
        .collect();
    if !present.is_empty() {
        let scratch = Path::new("/tmp/.moat-mask");
        mkdir(&mut plan, &mut view, scratch, true, Report::Named);
        tmpfs(&mut plan, &mut view, scratch, "mode=0755");
        let (dir, file) = (scratch.join("dir"), scratch.join("file"));
        mkdir(&mut plan, &mut view, &dir, false, Report::Bare);
        write(&mut plan, &mut view, &file, b"", Report::Bare);
        plan.push(SealMasks {
            scratch: scratch.into(),
        });
        for (path, is_dir) in present {
            let source = if is_dir { &dir } else { &file };
            plan.push(Mask {
                path: path.clone(),
                source: source.clone(),
            });
        }
        plan.push(DetachMasks {
            scratch: scratch.into(),
        });
        plan.push(RemoveDir {
            path: scratch.into(),
        });
    }
    for path in hidden {
        plan.push(SealTmpfs { path });
    }
    plan
}

/// What PID 1 makes read-only once it has a fresh /proc: the host's
/// writable sysctls (kernel.core_pattern runs a program as the host's
/// root) and the SysRq trigger. `probe` looks at the fresh /proc.
pub fn proc_read_only(probe: &dyn Probe) -> Vec<MountOp> {
    ["/proc/sys", "/proc/sysrq-trigger"]
        .into_iter()
        .map(Path::new)
        // Absent in a kernel without SysRq.
        .filter(|path| probe.kind(path).is_some())
        .map(|path| MountOp::ReadOnlyBindTree { path: path.into() })
        .collect()
}

/// Runs [`MountOp`]s through a [`Kernel`], each failure named as the
/// init always named it.
struct Exec<'a> {
    kernel: &'a dyn Kernel,
    /// The workspace, opened before anything was mounted.
    workspace: Option<BorrowedFd<'a>>,
    /// [`InitArgs::dirs`], opened before anything was mounted.
    dirs: Vec<BorrowedFd<'a>>,
    /// The command's user namespace, for the id-mapped workspace.
    userns: Option<BorrowedFd<'a>>,
}

impl Exec<'_> {
    fn all(&self, plan: &[MountOp]) -> Result<(), String> {
        plan.iter().try_for_each(|op| self.run(op))
    }

    fn run(&self, op: &MountOp) -> Result<(), String> {
        let k = self.kernel;
        let bind = |from: &Path, to: &Path, flags| k.mount(Some(from), to, None, flags, None);
        let sealed =
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let report = |path: &Path, report: Report, r: std::io::Result<()>| match (r, report) {
            (Ok(()), _) | (Err(_), Report::Ignored) => Ok(()),
            (Err(e), Report::Bare) => Err(e.to_string()),
            (Err(e), Report::Named) => Err(format!("{}: {e}", path.display())),
        };
        match op {
            MountOp::Private => k
                .mount(
                    None,
                    Path::new("/"),
                    None,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None,
                )
                .map_err(|e| format!("making / private: {e}")),
            MountOp::Tmpfs { path, mode } => k
                .mount(
                    Some(Path::new("tmpfs")),
                    path,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(mode),
                )
                .map_err(|e| format!("mounting a tmpfs on {}: {e}", path.display())),
            MountOp::Bind { from, to } => bind(from, to, MsFlags::MS_BIND)
                .map_err(|e| format!("binding {}: {e}", from.display())),
            MountOp::CaBundle { on } => bind(Path::new(BUNDLE_INSIDE), on, MsFlags::MS_BIND)
                .map_err(|e| format!("mounting the CA bundle on {}: {e}", on.display())),
            MountOp::ReadOnlyDir { path } => {
                bind(path, path, MsFlags::MS_BIND | MsFlags::MS_REC)
                    .map_err(|e| format!("binding {}: {e}", path.display()))?;
                k.remount_read_only(path)
                    .map_err(|e| format!("making {} read-only: {e}", path.display()))
            }
            MountOp::ReadOnly { path } => k
                .remount_read_only(path)
                .map_err(|e| format!("making {} read-only: {e}", path.display())),
            MountOp::ReadOnlyTree { path } => k
                .read_only_recursive(path)
                .map_err(|e| format!("making {} read-only: {e}", path.display())),
            MountOp::ReadOnlyBindTree { path } => {
                bind(path, path, MsFlags::MS_BIND | MsFlags::MS_REC)
                    .and_then(|()| k.read_only_recursive(path))
                    .map_err(|e| format!("making {} read-only: {e}", path.display()))
            }
            MountOp::MoveDev { from } => bind(from, Path::new("/dev"), MsFlags::MS_MOVE)
                .map_err(|e| format!("mounting the minimal /dev: {e}")),
            MountOp::SealTmpfs { path } => k
                .mount(None, path, None, sealed, None)
                .map_err(|e| format!("making {} read-only: {e}", path.display())),
            MountOp::SealMasks { scratch } => k
                .mount(None, scratch, None, sealed, None)
                .map_err(|e| format!("masks: {e}")),
            MountOp::Mask { path, source } => bind(source, path, MsFlags::MS_BIND)
                .map_err(|e| format!("masking {}: {e}", path.display())),
            MountOp::DetachMasks { scratch } => {
                k.umount_detach(scratch).map_err(|e| format!("masks: {e}"))
            }
            MountOp::Workspace { path, idmap } => {
                let ws = self
                    .workspace
                    .ok_or("mounting the workspace: it was not opened")?;
                self.attach(ws, path, *idmap, "the workspace")
            }
            MountOp::Dir {
                index,
                path,
                idmap,
                read_only,
            } => {
                let what = format!("{}", path.display());
                let dir = *self
                    .dirs
                    .get(*index)
                    .ok_or_else(|| format!("mounting {what}: it was not opened"))?;
                self.attach(dir, path, *idmap, &what)?;
                if *read_only {
                    k.remount_read_only(path)
                        .map_err(|e| format!("making {what} read-only: {e}"))?;
                }
                Ok(())
            }
            MountOp::Proc => k
                .mount(
                    Some(Path::new("proc")),
                    Path::new("/proc"),
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None,
                )
                .map_err(|e| format!("mounting /proc: {e}")),
            MountOp::Mkdir {
                path,
                parents,
                report: r,
            } => report(path, *r, k.create_dir(path, *parents)),
            MountOp::Write {
                path,
                bytes,
                report: r,
            } => report(path, *r, k.write_file(path, bytes)),
            MountOp::Symlink { target, link } => k.symlink(target, link).map_err(|e| e.to_string()),
            MountOp::Chown { path, uid, gid } => {
                let _ = k.chown(path, *uid, *gid);
                Ok(())
            }
            MountOp::RemoveDir { path } => {
                let _ = k.remove_dir(path);
                Ok(())
            }
        }
    }

    /// The directory opened as `dir` attached again at `path` (id-mapped
    /// to the command's user namespace if `idmap`); `what` names it in
    /// errors.
    fn attach(
        &self,
        dir: BorrowedFd<'_>,
        path: &Path,
        idmap: bool,
        what: &str,
    ) -> Result<(), String> {
        let k = self.kernel;
        k.create_dir(path, true)
            .map_err(|e| format!("re-creating the mount point of {what}: {e}"))?;
        let tree = k
            .clone_tree(dir)
            .map_err(|e| format!("copying the mount of {what}: {e}"))?;
        if idmap {
            let userns = self
                .userns
                .ok_or_else(|| format!("id-mapping {what}: no user namespace"))?;
            k.idmap(tree.as_fd(), userns).map_err(|e| {
                format!(
                    "id-mapping {what} {} ({e}): its filesystem does not support \
                     id-mapped mounts. Run Moat as the workspace's owner (rootless), or \
                     with sudo from that user",
                    path.display()
                )
            })?;
        }
        k.move_mount_onto(tree.as_fd(), path)
            .map_err(|e| format!("mounting {what}: {e}"))
    }
}

/// Reads what [`mount_plan`] needs off the host, then runs the plan
/// through `kernel`. The workspace is opened first: once the plan has
/// hidden it, this descriptor is how it comes back.
fn shape_filesystem(
    args: &InitArgs,
    userns: Option<&OwnedFd>,
    kernel: &dyn Kernel,
) -> Result<(), String> {
    let ws = std::fs::File::open(&args.workspace)
        .map_err(|e| format!("opening the workspace {}: {e}", args.workspace.display()))?;
    let dirs = args
        .dirs
        .iter()
        .map(|(host, _, _)| {
            std::fs::File::open(host).map_err(|e| format!("opening {}: {e}", host.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Read before /tmp is replaced: the host files may live under /tmp.
    let files = args
        .files
        .iter()
        .map(|(host, inside)| {
            std::fs::read(host)
                .map(|bytes| (inside.clone(), bytes))
                .map_err(|e| format!("reading {}: {e}", host.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = std::fs::canonicalize("/etc/resolv.conf")
        .ok()
        .filter(|target| args.hide.iter().any(|h| target.starts_with(h)))
        .and_then(|target| Some((target.clone(), std::fs::read(&target).ok()?)));
    let host = Host {
        files,
        resolver,
        cgroup2: super::cgroup::cgroup2_mount().ok(),
    };
    let plan = mount_plan(args, &host, &LiveProbe, userns.is_some());
    Exec {
        kernel,
        workspace: Some(ws.as_fd()),
        dirs: dirs.iter().map(|d| d.as_fd()).collect(),
        userns: userns.map(|u| u.as_fd()),
    }
    .all(&plan)
}

/// The command's user namespace when Moat runs as root: ids 0..65536
/// inside are [`SANDBOX_ID_BASE`].. on the host, an unprivileged range no
/// account uses. A short-lived child creates it; this process writes its
/// maps and keeps a descriptor to it.
pub(super) fn sandbox_userns() -> Result<OwnedFd, String> {
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (hold_r, hold_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the child only makes raw syscalls (async-signal-safe), so this
    // is sound in a multi-threaded process too (docker runs).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop((ready_r, hold_w));
            let ok = LinuxKernel.unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_w, &[ok as u8]);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&hold_r, &mut b); // until the parent is done
            // SAFETY: _exit is async-signal-safe.
            unsafe { nix::libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop((ready_w, hold_r));
            let mut b = [0u8; 1];
            let made = matches!(nix::unistd::read(&ready_r, &mut b), Ok(1)) && b[0] == 1;
            let result = (|| {
                if !made {
                    return Err("creating the command's user namespace failed".to_string());
                }
                let map = format!("0 {SANDBOX_ID_BASE} {SANDBOX_IDS}\n");
                for file in ["uid_map", "gid_map"] {
                    std::fs::write(format!("/proc/{child}/{file}"), &map)
                        .map_err(|e| format!("writing the command's {file}: {e}"))?;
                }
                std::fs::File::open(format!("/proc/{child}/ns/user"))
                    .map(OwnedFd::from)
                    .map_err(|e| format!("opening the command's user namespace: {e}"))
            })();
            drop(hold_w);
            let _ = waitpid(child, None);
            result
        }
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// Wait for `child`, forwarding signals to it; its exit status, shell-style.
fn supervise(child: Pid, set: &SigSet) -> i32 {
    loop {
        if let Some(code) = super::pid1::reap(child) {
            return code;
        }
        // A signal a process sent is passed on; the terminal's SIGINT and
        // SIGQUIT reached the command already.
        if let (Some(sig), sent) = wait_signal(set)
            && super::pid1::passes_on(sig, !sent)
        {
            let _ = kill(child, sig);
        }
    }
}

/// The next signal of `set` (blocked), and whether a process sent it
/// (kill, sigqueue, tgkill: `si_code` ≤ 0) rather than the kernel (a
/// terminal, SIGCHLD).
fn wait_signal(set: &SigSet) -> (Option<Signal>, bool) {
    // SAFETY: a zeroed siginfo_t (plain integers and unions of them) is valid.
    let mut info: nix::libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset and `info` a live siginfo_t the
    // kernel fills in.
    let n = unsafe { nix::libc::sigwaitinfo(set.as_ref(), &mut info) };
    if n < 0 {
        return (None, false);
    }
    (Signal::try_from(n).ok(), info.si_code <= 0)
}

/// PID 1 of the new PID namespace: fresh /proc, then the command.
fn pid1(args: &InitArgs, set: &SigSet, parent_alive: OwnedFd, userns: Option<OwnedFd>) -> ! {
    // When the sandbox init dies, PID 1 dies, and the kernel ends every
    // process of this PID namespace.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // A parent that died between fork and the line above sent nothing, and
    // getppid() cannot tell (it is 0 here, the parent being outside the
    // namespace): the pipe only the parent writes to has closed then.
    if parent_gone(parent_alive) {
        std::process::exit(128 + Signal::SIGKILL as i32);
    }
    let exec = Exec {
        kernel: &LinuxKernel,
        workspace: None,
        dirs: Vec::new(),
        userns: None,
    };
    if let Err(e) = exec.run(&MountOp::Proc) {
        let hint = if args.rootless {
            " (without root the kernel allows a new /proc only where the host's /proc \
             has no masked paths, as in some containers; use sudo, or --network-mode env)"
        } else {
            ""
        };
        die(&format!("{e}{hint}"));
    }
    // Writable sysctls of the host and the SysRq trigger: read-only.
    if let Err(e) = exec.all(&proc_read_only(&LiveProbe)) {
        die(&e);
    }
    // SAFETY: single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => command(args, userns),
        Ok(ForkResult::Parent { child }) => std::process::exit(supervise(child, set)),
        Err(e) => die(&format!("fork: {e}")),
    }
}

/// Whether the only writer of the pipe `read_end` is gone (closes it).
fn parent_gone(read_end: OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
    // Nothing is ever written: any event is the hang-up.
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// The command: no privileges over the sandbox, then exec.
fn command(args: &InitArgs, userns: Option<OwnedFd>) -> ! {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Err(e) = drop_privileges(args.run_as, userns) {
        die(&e);
    }
    if let Err(e) = std::env::set_current_dir(&args.workspace) {
        die(&format!(
            "entering the workspace {}: {e}",
            args.workspace.display()
        ));
    }
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).unwrap_or_else(|_| die("an argument contains a NUL byte"))
        })
        .collect();
    let Some(program) = argv.first() else {
        die("no command")
    };
    let err = execvp(program, &argv).unwrap_err();
    let name = args.command[0].to_string_lossy();
    match err {
        nix::errno::Errno::ENOENT => {
            eprintln!("moat: {name}: command not found");
            std::process::exit(127)
        }
        e => {
            eprintln!("moat: {name}: cannot execute: {e}");
            std::process::exit(126)
        }
    }
}

/// The command's identity and privileges, last thing before exec.
///
/// - Its own cgroup namespace, rooted at the run's cgroup: even a process
///   that could write a `cgroup.procs` outside it cannot move there (nor
///   `clone3(CLONE_INTO_CGROUP)`), so it stays under the eBPF redirector.
/// - Moat root (`userns`): it enters its user namespace and becomes its
///   root, which is [`SANDBOX_ID_BASE`] on the host. Under sudo (`run_as`):
///   the caller's uid and gid. Rootless: the user it already is.
/// - A fresh, empty session keyring.
/// - No capability at all, bounding set included, and `no_new_privs`: no
///   setuid binary or file capability brings one back.
pub(super) fn drop_privileges(
    run_as: Option<(u32, u32)>,
    userns: Option<OwnedFd>,
) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    let kernel = LinuxKernel;
    kernel
        .unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("cgroup namespace: {e}"))?;
    let ids = match (userns, run_as) {
        (Some(ns), _) => {
            kernel
                .setns(ns.as_fd(), CloneFlags::CLONE_NEWUSER)
                .map_err(|e| format!("entering the command's user namespace: {e}"))?;
            Some((0, 0))
        }
        (None, ids) => ids,
    };
    // While CAP_SETPCAP is still held (a setuid away from 0 drops it).
    for cap in caps::runtime::thread_all_supported() {
        caps::drop(None, caps::CapSet::Bounding, cap)
            .map_err(|e| format!("dropping {cap}: {e}"))?;
    }
    if let Some((uid, gid)) = ids {
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        setresgid(gid, gid, gid).map_err(|e| format!("setgid: {e}"))?;
        setresuid(uid, uid, uid).map_err(|e| format!("setuid: {e}"))?;
    }
    // Made by the command's own uid, so that it owns its keyring.
    super::sys::join_fresh_session_keyring().map_err(|e| format!("session keyring: {e}"))?;
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("clearing capabilities: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sys::{Call, RecordingKernel};
    use super::*;

    /// A host's filesystem, for [`mount_plan`].
    #[derive(Default)]
    struct FakeHost(BTreeMap<PathBuf, Entry>);

    enum Entry {
        Dir,
        File,
        Socket,
        Link(&'static str),
    }

    impl FakeHost {
        /// A merged-/usr host with a user `u`, Moat's home in ~/.moat, the
        /// Docker socket and a session bus.
        fn typical() -> Self {
            let mut h = Self::default();
            for d in [
                "/usr",
                "/usr/bin",
                "/usr/src",
                "/usr/src/p",
                "/etc",
                "/lib",
                "/var",
                "/var/tmp",
                "/opt",
                "/srv",
                "/srv/p",
                "/srv/p/.moat",
                "/home",
                "/home/u",
                "/home/u/.moat",
                "/home/u/p",
                "/root",
                "/run",
                "/run/user",
                "/run/user/1000",
                "/tmp",
                "/tmp/w",
                "/tmp/w/.moat",
                "/tmp/ssh-x",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/proc",
                "/proc/sys",
            ] {
                h.0.insert(d.into(), Entry::Dir);
            }
            for f in ["/etc/ssl/certs/ca-certificates.crt", "/home/u/.netrc"] {
                h.0.insert(f.into(), Entry::File);
            }
            for s in [
                "/run/docker.sock",
                "/run/user/1000/bus",
                "/tmp/ssh-x/agent.sock",
                "/dev/null",
                "/dev/zero",
                "/dev/urandom",
                "/dev/tty",
            ] {
                h.0.insert(s.into(), Entry::Socket);
            }
            h.0.insert("/bin".into(), Entry::Link("/usr/bin"));
            h.0.insert("/var/run".into(), Entry::Link("/run"));
            h.0.insert(
                "/var/run/docker.sock".into(),
                Entry::Link("/run/docker.sock"),
            );
            h
        }
    }

    impl Probe for FakeHost {
        fn kind(&self, path: &Path) -> Option<Kind> {
            match self.0.get(path)? {
                Entry::Dir => Some(Kind::Dir),
                Entry::File => Some(Kind::File),
                Entry::Socket => Some(Kind::Other),
                Entry::Link(to) => self.kind(Path::new(to)),
            }
        }

        fn is_real_dir(&self, path: &Path) -> bool {
            matches!(self.0.get(path), Some(Entry::Dir))
        }

        fn canonical(&self, path: &Path) -> Option<PathBuf> {
            match self.0.get(path)? {
                Entry::Link(to) => Some(to.into()),
                _ => Some(path.into()),
            }
        }
    }

    /// What `moat run ~` asks for, as sorted by cli/run.rs.
    fn args(workspace: &str) -> InitArgs {
        let paths = |p: &[&str]| p.iter().map(PathBuf::from).collect::<Vec<_>>();
        InitArgs {
            workspace: workspace.into(),
            hide: paths(&["/home", "/home/u", "/root", "/run", "/var/run"]),
            mask: paths(&[
                "/home/u/.moat",
                "/srv/p/.moat",
                "/tmp/w/.moat",
                "/tmp/ssh-x/agent.sock",
                "/run/user/1000/bus",
                "/run/user",
                "/run/docker.sock",
                "/var/run/docker.sock",
                "/home/u/.config/moat",
                "/home/u/.netrc",
            ]),
            ..InitArgs::default()
        }
    }

    fn host() -> Host {
        Host {
            files: vec![
                (BUNDLE_INSIDE.into(), b"ca".to_vec()),
                (
                    Path::new(HOME_INSIDE).join(".config/gh/hosts.yml"),
                    b"x".to_vec(),
                ),
            ],
            resolver: None,
            cgroup2: Some("/sys/fs/cgroup".into()),
        }
    }

    fn plan(args: &InitArgs, userns: bool) -> Vec<MountOp> {
        mount_plan(args, &host(), &FakeHost::typical(), userns)
    }

    fn at(plan: &[MountOp], op: &MountOp) -> usize {
        plan.iter()
            .position(|o| o == op)
            .unwrap_or_else(|| panic!("{op:?} not in {plan:#?}"))
    }

    fn tmpfs(path: &str, mode: &'static str) -> MountOp {
        MountOp::Tmpfs {
            path: path.into(),
            mode,
        }
    }

    fn masked(plan: &[MountOp]) -> Vec<(&Path, &Path)> {
        plan.iter()
            .filter_map(|o| match o {
                MountOp::Mask { path, source } => Some((path.as_path(), source.as_path())),
                _ => None,
            })
            .collect()
    }

    fn workspace(path: &str, idmap: bool) -> MountOp {
        MountOp::Workspace {
            path: path.into(),
            idmap,
        }
    }

    #[test]
    fn a_mask_inside_the_workspace_is_mounted_after_the_workspace() {
        let plan = plan(&args("/home/u"), false);
        let ws = at(&plan, &workspace("/home/u", false));
        let moat = at(
            &plan,
            &MountOp::Mask {
                path: "/home/u/.moat".into(),
                source: "/tmp/.moat-mask/dir".into(),
            },
        );
        assert!(ws < moat, "{plan:#?}");
        // The scratch is sealed before the first mask and detached after the last.
        assert!(
            at(
                &plan,
                &MountOp::SealMasks {
                    scratch: "/tmp/.moat-mask".into()
                }
            ) < moat
        );
        assert!(
            at(
                &plan,
                &MountOp::DetachMasks {
                    scratch: "/tmp/.moat-mask".into()
                }
            ) > moat
        );
        // Only what is reachable is masked: inside the workspace, or where
        // nothing covers it (/srv). The sockets and the bus stay behind the
        // hidden /run, the agent socket behind the fresh /tmp, the absent
        // path is skipped.
        assert_eq!(
            masked(&plan),
            [
                (Path::new("/home/u/.moat"), Path::new("/tmp/.moat-mask/dir")),
                (Path::new("/srv/p/.moat"), Path::new("/tmp/.moat-mask/dir")),
                (
                    Path::new("/home/u/.netrc"),
                    Path::new("/tmp/.moat-mask/file")
                ),
            ]
        );
    }

    #[test]
    fn a_workspace_under_tmp_is_attached_again_and_masked_inside() {
        let plan = plan(&args("/tmp/w"), false);
        let ws = at(&plan, &workspace("/tmp/w", false));
        assert!(at(&plan, &tmpfs("/tmp", "mode=1777")) < ws);
        assert_eq!(
            masked(&plan),
            [
                (Path::new("/srv/p/.moat"), Path::new("/tmp/.moat-mask/dir")),
                (Path::new("/tmp/w/.moat"), Path::new("/tmp/.moat-mask/dir")),
            ]
        );
    }

    #[test]
    fn extra_dirs_are_attached_under_the_fresh_tmp_id_mapped_with_the_workspace() {
        let mut a = args("/srv/p");
        a.dirs = vec![
            ("/h/agent".into(), "/tmp/.moat/agent".into(), true),
            ("/h/state".into(), "/tmp/home/.claude".into(), false),
        ];
        let plan = plan(&a, true);
        let dir = |index, path: &str, read_only| MountOp::Dir {
            index,
            path: path.into(),
            idmap: true,
            read_only,
        };
        let agent = at(&plan, &dir(0, "/tmp/.moat/agent", true));
        let state = at(&plan, &dir(1, "/tmp/home/.claude", false));
        assert!(at(&plan, &tmpfs("/tmp", "mode=1777")) < agent && agent < state);
        assert!(at(&plan, &workspace("/srv/p", true)) < agent, "{plan:#?}");
    }

    #[test]
    fn the_hidden_directories_are_covered_then_sealed_last() {
        let plan = plan(&args("/srv/p"), false);
        let covered: Vec<&Path> = plan
            .iter()
            .filter_map(|o| match o {
                MountOp::Tmpfs {
                    path,
                    mode: "mode=0755",
                } => Some(path.as_path()),
                _ => None,
            })
            .collect();
        // /home/u is gone once /home is covered; /var/run is a symlink,
        // hidden through /run. The other two are the /dev stage and the
        // masks' scratch.
        assert_eq!(
            covered,
            [
                "/tmp/.moat-dev",
                "/home",
                "/root",
                "/run",
                "/tmp/.moat-mask"
            ]
            .map(Path::new)
        );
        let sealed: Vec<&MountOp> = plan
            .iter()
            .filter(|o| matches!(o, MountOp::SealTmpfs { .. }))
            .collect();
        assert_eq!(
            sealed,
            ["/home", "/root", "/run"]
                .map(|p| MountOp::SealTmpfs { path: p.into() })
                .iter()
                .collect::<Vec<_>>()
        );
        let last_mask = at(
            &plan,
            &MountOp::DetachMasks {
                scratch: "/tmp/.moat-mask".into(),
            },
        );
        assert!(at(&plan, sealed[0]) > last_mask);
        assert_eq!(plan.last(), Some(sealed[2]));
        // A visible, writable workspace is left where it is.
        assert!(!plan.iter().any(|o| matches!(o, MountOp::Workspace { .. })));
        assert_eq!(
            masked(&plan),
            [(Path::new("/srv/p/.moat"), Path::new("/tmp/.moat-mask/dir"))]
        );
    }

    #[test]
    fn sys_cgroups_and_system_directories_are_read_only() {
        let plan = plan(&args("/srv/p"), false);
        for op in [
            MountOp::ReadOnly {
                path: "/sys/fs/cgroup".into(),
            },
            MountOp::ReadOnlyTree {
                path: "/sys".into(),
            },
        ] {
            at(&plan, &op);
        }
        let read_only: Vec<&Path> = plan
            .iter()
            .filter_map(|o| match o {
                MountOp::ReadOnlyDir { path } => Some(path.as_path()),
                _ => None,
            })
            .collect();
        // /bin is a symlink into /usr; /sbin, /lib64, … do not exist here.
        assert_eq!(
            read_only,
            ["/usr", "/etc", "/lib", "/opt", "/var"].map(Path::new)
        );
        // /var/tmp stays writable: a fresh tmpfs over the read-only /var.
        assert!(
            at(
                &plan,
                &MountOp::ReadOnlyDir {
                    path: "/var".into()
                }
            ) < at(&plan, &tmpfs("/var/tmp", "mode=1777"))
        );
    }

    #[test]
    fn proc_sys_and_the_sysrq_trigger_are_read_only_when_present() {
        let mut host = FakeHost::typical();
        let ro = |p: &str| MountOp::ReadOnlyBindTree { path: p.into() };
        assert_eq!(proc_read_only(&host), [ro("/proc/sys")]);
        host.0.insert("/proc/sysrq-trigger".into(), Entry::File);
        assert_eq!(
            proc_read_only(&host),
            [ro("/proc/sys"), ro("/proc/sysrq-trigger")]
        );
    }

    #[test]
    fn a_workspace_is_attached_again_when_read_only_or_id_mapped() {
        // Under /usr: bound read-only with it, so attached again after.
        let plan = plan(&args("/usr/src/p"), false);
        assert!(
            at(
                &plan,
                &MountOp::ReadOnlyDir {
                    path: "/usr".into()
                }
            ) < at(&plan, &workspace("/usr/src/p", false))
        );
        // Moat root: id-mapped to the command's user namespace.
        at(
            &self::plan(&args("/srv/p"), true),
            &workspace("/srv/p", true),
        );
    }

    #[test]
    fn the_fresh_tmp_holds_home_and_the_ca_bundle() {
        let plan = plan(&args("/srv/p"), true);
        assert_eq!(plan[0], MountOp::Private);
        assert_eq!(plan[1], tmpfs("/tmp", "mode=1777"));
        let home_file = Path::new(HOME_INSIDE).join(".config/gh/hosts.yml");
        let write = at(
            &plan,
            &MountOp::Write {
                path: home_file.clone(),
                bytes: b"x".to_vec(),
                report: Report::Named,
            },
        );
        // Moat root: HOME belongs to the command's user (the namespace's root).
        for path in [
            HOME_INSIDE.into(),
            home_file.clone(),
            home_file.parent().unwrap().into(),
        ] {
            at(
                &plan,
                &MountOp::Chown {
                    path,
                    uid: SANDBOX_ID_BASE,
                    gid: SANDBOX_ID_BASE,
                },
            );
        }
        // Only the system bundle that exists is covered.
        let ca: Vec<&MountOp> = plan
            .iter()
            .filter(|o| matches!(o, MountOp::CaBundle { .. }))
            .collect();
        assert_eq!(
            ca,
            [&MountOp::CaBundle {
                on: "/etc/ssl/certs/ca-certificates.crt".into()
            }]
        );
        assert!(at(&plan, ca[0]) > write);
        // No chown without a user to give HOME to.
        let plan = self::plan(&args("/srv/p"), false);
        assert!(!plan.iter().any(|o| matches!(o, MountOp::Chown { .. })));
    }

    #[test]
    fn the_minimal_dev_binds_only_the_host_devices_that_exist() {
        let plan = plan(&args("/srv/p"), false);
        let bound: Vec<&Path> = plan
            .iter()
            .filter_map(|o| match o {
                MountOp::Bind { from, .. } => Some(from.as_path()),
                _ => None,
            })
            .collect();
        assert_eq!(
            bound,
            [
                "/dev/null",
                "/dev/zero",
                "/dev/urandom",
                "/dev/tty",
                "/dev/pts"
            ]
            .map(Path::new)
        );
        let moved = at(
            &plan,
            &MountOp::MoveDev {
                from: "/tmp/.moat-dev".into(),
            },
        );
        assert!(at(&plan, &tmpfs("/tmp/.moat-dev/shm", "mode=1777")) < moved);
    }

    #[test]
    fn a_resolver_in_a_hidden_directory_is_put_back_after_hiding() {
        let mut host = host();
        let stub = PathBuf::from("/run/systemd/resolve/stub-resolv.conf");
        host.resolver = Some((stub.clone(), b"nameserver 127.0.0.53\n".to_vec()));
        let plan = mount_plan(&args("/srv/p"), &host, &FakeHost::typical(), false);
        let write = at(
            &plan,
            &MountOp::Write {
                path: stub,
                bytes: b"nameserver 127.0.0.53\n".to_vec(),
                report: Report::Named,
            },
        );
        assert!(at(&plan, &tmpfs("/run", "mode=0755")) < write);
    }

    fn execute(kernel: &RecordingKernel, plan: &[MountOp], userns: bool) -> Result<(), String> {
        let dir = std::fs::File::open("/").unwrap();
        Exec {
            kernel,
            workspace: Some(dir.as_fd()),
            dirs: Vec::new(),
            userns: userns.then(|| dir.as_fd()),
        }
        .all(plan)
    }

    #[test]
    fn the_plan_runs_through_the_kernel_in_order() {
        let plan = plan(&args("/home/u"), true);
        let kernel = RecordingKernel::default();
        execute(&kernel, &plan, true).unwrap();
        let calls = kernel.calls();
        assert_eq!(
            calls[0],
            Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                data: None,
            }
        );
        let pos = |c: &Call| calls.iter().position(|x| x == c).unwrap();
        let moved = pos(&Call::MoveMount("/home/u".into()));
        assert!(pos(&Call::CloneTree) < pos(&Call::Idmap) && pos(&Call::Idmap) < moved);
        let mask = calls
            .iter()
            .position(|c| c.path() == Some(Path::new("/home/u/.moat")))
            .unwrap();
        assert!(moved < mask);
    }

    #[test]
    fn a_failing_call_stops_the_plan_and_names_its_path() {
        let plan = plan(&args("/home/u"), true);
        for (path, want) in [
            ("/home/u/.moat", "masking /home/u/.moat: "),
            ("/usr", "binding /usr: "),
            ("/home", "mounting a tmpfs on /home: "),
            ("/sys", "making /sys read-only: "),
            ("/sys/fs/cgroup", "making /sys/fs/cgroup read-only: "),
            ("/tmp/.moat-dev", "/tmp/.moat-dev: "),
            ("/home/u", "re-creating the mount point of the workspace: "),
        ] {
            let kernel = RecordingKernel::failing(move |c| c.path() == Some(Path::new(path)));
            let err = execute(&kernel, &plan, true).unwrap_err();
            assert!(err.starts_with(want), "{path}: {err}");
            assert!(
                err.contains("EPERM") || err.contains("not permitted"),
                "{err}"
            );
            let calls = kernel.calls();
            assert_eq!(calls.last().unwrap().path(), Some(Path::new(path)));
        }
        let kernel = RecordingKernel::failing(|c| *c == Call::RemountReadOnly("/usr".into()));
        let err = execute(&kernel, &plan, true).unwrap_err();
        assert!(err.starts_with("making /usr read-only: "), "{err}");
        let kernel = RecordingKernel::failing(|c| *c == Call::Idmap);
        let err = execute(&kernel, &plan, true).unwrap_err();
        assert!(
            err.starts_with("id-mapping the workspace /home/u (EPERM"),
            "{err}"
        );
        // Best-effort steps do not stop it.
        let kernel = RecordingKernel::failing(|c| matches!(c, Call::Chown { .. }));
        execute(&kernel, &plan, true).unwrap();
    }

    #[test]
    fn a_parent_is_gone_once_the_pipes_only_writer_closed() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (r2, _w2) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(w);
        assert!(parent_gone(r));
        assert!(!parent_gone(r2));
    }
}
