//! The sandbox's first process (`moat __sandbox-init`): it enters new
//! network, mount and PID namespaces, waits until Moat has plumbed the
//! network, shapes the filesystem, then runs the command under a tiny PID 1
//! that forwards signals and reaps.
//!
//! Process tree: `moat run` → `__sandbox-init` (host PID namespace) →
//! PID 1 (init, new PID namespace) → the command.

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execvp, fork};

use super::netns;

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
    pub command: Vec<OsString>,
}

/// Signals passed on to the command. SIGINT/SIGQUIT/SIGWINCH from the
/// terminal go to the whole foreground group, so the command already has
/// them; SIGINT/SIGQUIT sent by a process (Moat passing on a `kill -INT`)
/// are passed on too (see [`supervise`]).
const FORWARD: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
];

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
        if let Err(e) =
            unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)
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
    if let Err(e) = shape_filesystem(&args, userns.as_ref()) {
        die(&e);
    }
    // Blocked before the go: Moat forwards signals to this process from
    // then on, and one that arrives before PID 1 exists must wait for it
    // (supervise passes it on) rather than end this process half-way.
    let forwarded = blocked_signals();
    let mut go = [0u8; 1];
    if sync.read_exact(&mut go).is_err() || go[0] != b'g' {
        die("moat went away before the network was ready");
    }
    drop(sync);
    // Only this process holds the write end: PID 1 sees the pipe close if
    // this process died before PID 1 asked to die with it (see `pid1`).
    let (alive, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .unwrap_or_else(|e| die(&format!("pipe: {e}")));
    // SAFETY: single-threaded here (no runtime was started in this process).
    let forked = match &cgroup {
        Some(cg) => unsafe { cg.fork_into() },
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
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
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
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("creating the PID namespace: {e}"))?;
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

/// Private mounts, a fresh /tmp with HOME and the CA bundle, read-only
/// system directories and `/sys`, a minimal `/dev`, hidden directories,
/// then the workspace, then the masks (see [`super::mask`]): a mask is
/// covered even inside the workspace. With `userns` (Moat is root and the
/// command will be root of that user namespace) the workspace is mounted
/// id-mapped, so that namespace's root owns what the host's root owns.
fn shape_filesystem(args: &InitArgs, userns: Option<&OwnedFd>) -> Result<(), String> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let none: Option<&str> = None;
    let ws = std::fs::File::open(&args.workspace)
        .map_err(|e| format!("opening the workspace {}: {e}", args.workspace.display()))?;
    let ws_meta = ws.metadata().map_err(|e| e.to_string())?;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making / private: {e}"))?;
    // Read before /tmp is replaced: the host files may live under /tmp.
    let files = args
        .files
        .iter()
        .map(|(host, inside)| {
            std::fs::read(host)
                .map(|bytes| (inside, bytes))
                .map_err(|e| format!("reading {}: {e}", host.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A resolver file that lives in a hidden directory (/etc/resolv.conf ->
    // /run/systemd/resolve/stub-resolv.conf) is put back in the empty one.
    let kept: Vec<(PathBuf, Vec<u8>)> = std::fs::canonicalize("/etc/resolv.conf")
        .ok()
        .filter(|target| args.hide.iter().any(|h| target.starts_with(h)))
        .and_then(|target| Some((target.clone(), std::fs::read(&target).ok()?)))
        .into_iter()
        .collect();
    tmpfs("/tmp".as_ref(), "mode=1777")?;
    std::fs::create_dir_all(HOME_INSIDE).map_err(|e| e.to_string())?;
    let owner = |path: &std::path::Path| {
        if let Some((uid, gid)) = home_owner(args, userns.is_some()) {
            let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
        }
    };
    owner(HOME_INSIDE.as_ref());
    for (inside, bytes) in files {
        if let Some(parent) = inside.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            if parent.starts_with(HOME_INSIDE) {
                for dir in parent
                    .ancestors()
                    .take_while(|d| d.starts_with(HOME_INSIDE))
                {
                    owner(dir);
                }
            }
        }
        std::fs::write(inside, bytes).map_err(|e| format!("{}: {e}", inside.display()))?;
        if inside.starts_with(HOME_INSIDE) {
            owner(inside);
        }
    }
    // Programs that read the system bundle (Go, OpenSSL's default paths)
    // trust the Moat CA too.
    if std::path::Path::new(BUNDLE_INSIDE).exists() {
        for system in super::trust::SYSTEM_BUNDLES {
            if std::fs::metadata(system).is_ok_and(|m| m.is_file()) {
                mount(Some(BUNDLE_INSIDE), system, none, MsFlags::MS_BIND, none)
                    .map_err(|e| format!("mounting the CA bundle on {system}: {e}"))?;
            }
        }
    }
    minimal_dev()?;
    let mut hidden_dirs = Vec::new();
    for path in &args.hide {
        // Only real directories: /var/run -> /run is hidden through /run.
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        tmpfs(path, "mode=0755")?;
        hidden_dirs.push(path);
    }
    for (path, bytes) in kept {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // A uid-0 command could otherwise move itself out of the run's cgroup
    // (and away from the eBPF redirector) by writing cgroup.procs.
    if let Ok(cgroup2) = super::cgroup::cgroup2_mount() {
        remount_read_only(&cgroup2)
            .map_err(|e| format!("making {} read-only: {e}", cgroup2.display()))?;
    }
    // /sys and everything mounted under it (cgroups, bpffs, debugfs, …).
    super::sys::read_only_recursive("/sys".as_ref())
        .map_err(|e| format!("making /sys read-only: {e}"))?;
    let mut read_only = false;
    for dir in READ_ONLY {
        // Symlinks (/bin -> usr/bin on merged-/usr systems) follow their target.
        if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        mount(
            Some(dir),
            dir,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(|e| format!("binding {dir}: {e}"))?;
        remount_read_only(dir.as_ref()).map_err(|e| format!("making {dir} read-only: {e}"))?;
        read_only |= args.workspace.starts_with(dir);
    }
    if std::path::Path::new("/var/tmp").is_dir() {
        tmpfs("/var/tmp".as_ref(), "mode=1777")?;
    }
    let visible = std::fs::metadata(&args.workspace)
        .is_ok_and(|m| m.dev() == ws_meta.dev() && m.ino() == ws_meta.ino());
    if !visible || read_only || userns.is_some() {
        std::fs::create_dir_all(&args.workspace)
            .map_err(|e| format!("re-creating the workspace mount point: {e}"))?;
        let tree = super::sys::clone_tree(ws.as_fd())
            .map_err(|e| format!("copying the workspace mount: {e}"))?;
        if let Some(userns) = userns {
            super::sys::idmap(tree.as_fd(), userns.as_fd()).map_err(|e| {
                format!(
                    "id-mapping the workspace {} ({e}): its filesystem does not support \
                     id-mapped mounts. Run Moat as the workspace's owner (rootless), or \
                     with sudo from that user",
                    args.workspace.display()
                )
            })?;
        }
        super::sys::move_mount_onto(tree.as_fd(), &args.workspace)
            .map_err(|e| format!("mounting the workspace: {e}"))?;
    }
    apply_masks(&args.mask)?;
    for path in hidden_dirs {
        let flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(none, path, none, flags, none)
            .map_err(|e| format!("making {} read-only: {e}", path.display()))?;
    }
    drop(ws);
    Ok(())
}

fn tmpfs(path: &std::path::Path, mode: &str) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(mode),
    )
    .map_err(|e| format!("mounting a tmpfs on {}: {e}", path.display()))
}

/// Who owns the fresh HOME: the command's user.
fn home_owner(args: &InitArgs, userns: bool) -> Option<(u32, u32)> {
    match userns {
        true => Some((SANDBOX_ID_BASE, SANDBOX_ID_BASE)),
        false => args.run_as,
    }
}

/// Cover every mask that is reachable now with an empty, read-only
/// directory or file (both on one read-only tmpfs, made and detached here).
/// A socket is covered by the file: connecting to it is refused.
fn apply_masks(masks: &[PathBuf]) -> Result<(), String> {
    let none: Option<&str> = None;
    let present: Vec<(&PathBuf, bool)> = masks
        .iter()
        .filter_map(|m| Some((m, std::fs::metadata(m).ok()?.is_dir())))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let scratch = std::path::Path::new("/tmp/.moat-mask");
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    tmpfs(scratch, "mode=0755")?;
    let (dir, file) = (scratch.join("dir"), scratch.join("file"));
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    std::fs::write(&file, b"").map_err(|e| e.to_string())?;
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(none, scratch, none, ro, none).map_err(|e| format!("masks: {e}"))?;
    for (path, is_dir) in present {
        let source = if is_dir { &dir } else { &file };
        mount(Some(source), path, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("masking {}: {e}", path.display()))?;
    }
    nix::mount::umount2(scratch, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| format!("masks: {e}"))?;
    let _ = std::fs::remove_dir(scratch);
    Ok(())
}

/// A fresh `/dev` with only what programs need: null, zero, full, random,
/// urandom, tty and the terminals (bound from the host), /dev/shm and the
/// fd links. No disks, no /dev/kmsg, no /dev/mem.
fn minimal_dev() -> Result<(), String> {
    let none: Option<&str> = None;
    let stage = std::path::Path::new("/tmp/.moat-dev");
    std::fs::create_dir_all(stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    tmpfs(stage, "mode=0755")?;
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = std::path::Path::new("/dev").join(dev);
        if !host.exists() {
            continue;
        }
        let inside = stage.join(dev);
        std::fs::write(&inside, b"").map_err(|e| format!("{}: {e}", inside.display()))?;
        mount(Some(&host), &inside, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("binding {}: {e}", host.display()))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, stage.join(link)).map_err(|e| e.to_string())?;
    }
    for dir in ["pts", "shm"] {
        std::fs::create_dir(stage.join(dir)).map_err(|e| e.to_string())?;
    }
    // The host's devpts, so that the terminal the command inherits keeps
    // its name (tty, ssh and sudo look it up); another user's terminal
    // stays closed to the command by its mode, as on the host.
    mount(
        Some("/dev/pts"),
        &stage.join("pts"),
        none,
        MsFlags::MS_BIND,
        none,
    )
    .map_err(|e| format!("binding /dev/pts: {e}"))?;
    tmpfs(&stage.join("shm"), "mode=1777")?;
    mount(Some(stage), "/dev", none, MsFlags::MS_MOVE, none)
        .map_err(|e| format!("mounting the minimal /dev: {e}"))?;
    let _ = std::fs::remove_dir(stage);
    Ok(())
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
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
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

/// Makes the mount at `path` read-only (a bind remount), keeping its
/// nosuid/nodev/noexec. In a user namespace (rootless) those flags of a
/// mount inherited from the host are locked, and a remount that would clear
/// them fails with EPERM; as root it would silently clear them. (Atime flags,
/// locked too, are kept by the kernel when a remount names none.)
fn remount_read_only(path: &std::path::Path) -> nix::Result<()> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let none: Option<&str> = None;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    let has = statvfs(path)?.flags();
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if has.contains(st) {
            flags |= ms;
        }
    }
    mount(none, path, none, flags, none)
}

fn blocked_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARD {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGQUIT);
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    set
}

/// Wait for `child`, forwarding signals to it; its exit status, shell-style.
fn supervise(child: Pid, set: &SigSet) -> i32 {
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue, // an orphan reaped (we may be PID 1)
            }
        }
        let (sig, sent) = wait_signal(set);
        match sig {
            Some(Signal::SIGCHLD) | None => {}
            // From the terminal: the command has it already.
            Some(Signal::SIGINT | Signal::SIGQUIT) if !sent => {}
            Some(sig) => {
                let _ = kill(child, sig);
            }
        }
    }
}

/// The next signal of `set` (blocked), and whether a process sent it
/// (kill, sigqueue, tgkill: `si_code` ≤ 0) rather than the kernel (a
/// terminal, SIGCHLD).
fn wait_signal(set: &SigSet) -> (Option<Signal>, bool) {
    // SAFETY: a zeroed siginfo_t is valid; `set` is a valid sigset.
    let mut info: nix::libc::siginfo_t = unsafe { std::mem::zeroed() };
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
    let none: Option<&str> = None;
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    ) {
        let hint = if args.rootless {
            " (without root the kernel allows a new /proc only where the host's /proc \
             has no masked paths, as in some containers; use sudo, or --network-mode env)"
        } else {
            ""
        };
        die(&format!("mounting /proc: {e}{hint}"));
    }
    // Writable sysctls of the host (kernel.core_pattern runs a program as
    // the host's root) and the SysRq trigger: read-only.
    for path in ["/proc/sys", "/proc/sysrq-trigger"] {
        let path = std::path::Path::new(path);
        if !path.exists() {
            continue; // a kernel without SysRq
        }
        let ro = mount(
            Some(path),
            path,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .and_then(|()| super::sys::read_only_recursive(path));
        if let Err(e) = ro {
            die(&format!("making {} read-only: {e}", path.display()));
        }
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
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| format!("cgroup namespace: {e}"))?;
    let ids = match (userns, run_as) {
        (Some(ns), _) => {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWUSER)
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
    use super::*;

    #[test]
    fn a_parent_is_gone_once_the_pipes_only_writer_closed() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (r2, _w2) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(w);
        assert!(parent_gone(r));
        assert!(!parent_gone(r2));
    }
}
