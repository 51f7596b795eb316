//! One run's cgroup v2, the thing the eBPF redirector ([`super::bpf`]) is
//! attached to.
//!
//! Each run gets `<cgroup2 mount>/moat/<run id>`: `/sys/fs/cgroup/unified/moat/<id>`
//! on hybrid hosts (v1 controllers + cgroup2 at `unified`),
//! `/sys/fs/cgroup/moat/<id>` on pure v2 hosts; the mount is found in
//! `/proc/self/mountinfo`. No controller is enabled: the cgroup exists only
//! so that BPF programs apply to the sandbox's processes and to nothing else.
//!
//! While a run lives, Moat holds an exclusive `flock` on the cgroup's
//! directory. The kernel drops it when Moat exits, even on `kill -9`, so
//! [`sweep_stale`] (run by the next run and by `moat clean`) tells a leftover
//! from a live run without guessing from timestamps.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// The directory, under the cgroup2 mount, holding one cgroup per run.
pub const PARENT: &str = "moat";

/// How long [`RunCgroup::remove`] waits for killed processes to leave.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] io::Error),

    #[error(
        "no cgroup v2 hierarchy is mounted (looked for a cgroup2 line in \
         /proc/self/mountinfo): mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) \
         or use --redirect nft"
    )]
    NoCgroup2,

    #[error(
        "invalid run id {0:?}: use 1 to 64 ASCII letters, digits, '-' or '_' \
         (it names a cgroup directory)"
    )]
    BadRunId(String),

    #[error("the cgroup {0} already exists: another run uses this id")]
    Exists(PathBuf),

    #[error("{what} {path}: {cause}{hint}", hint = hint(cause))]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
}

fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::PermissionDenied => " (creating and filling cgroups needs root)",
        ErrorKind::ReadOnlyFilesystem => " (the cgroup2 mount is read-only here)",
        _ => "",
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError + use<> {
    let path = path.to_owned();
    move |cause| CgroupError::Io { what, path, cause }
}

/// Where cgroup2 is mounted, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    parse_cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)
}

/// The mount point of the first `cgroup2` filesystem in `mountinfo` text
/// (proc(5): `id parent major:minor root mountpoint options [optional…] -
/// fstype source superoptions`). Pure, for tests.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mountpoint = before.split(' ').nth(4)?;
        Some(PathBuf::from(OsString::from_vec(unescape_octal(
            mountpoint,
        ))))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] = bytes[i..] {
            out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn check_run_id(run_id: &str) -> Result<(), CgroupError> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadRunId(run_id.to_owned()))
    }
}

/// A run's cgroup, `<cgroup2>/moat/<run id>`: created empty, filled with
/// [`add_pid`](Self::add_pid), emptied and removed by
/// [`remove`](Self::remove) or on drop. Holds an open, `flock`ed handle on
/// its directory ([`AsFd`]: what BPF programs are attached to).
#[derive(Debug)]
pub struct RunCgroup {
    path: PathBuf,
    /// Kept open (and locked) until drop, even once removed.
    dir: Flock<File>,
    removed: bool,
}

impl RunCgroup {
    /// Creates `<cgroup2 mount>/moat/<run_id>` (and `moat/` if needed).
    pub fn create(run_id: &str) -> Result<RunCgroup, CgroupError> {
        Self::create_under(&cgroup2_mount()?, run_id)
    }

    /// Like [`create`](Self::create), under the given cgroup2 mount.
    pub fn create_under(mount: &Path, run_id: &str) -> Result<RunCgroup, CgroupError> {
        check_run_id(run_id)?;
        let parent = mount.join(PARENT);
        let path = parent.join(run_id);
        // A concurrent run's remove() may rmdir an empty `moat/` between our
        // two mkdirs: try again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match std::fs::create_dir(&parent) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("cannot create the cgroup", &parent)(e)),
            }
            match std::fs::create_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Exists(path));
                }
                Err(e) if e.kind() == ErrorKind::NotFound && attempts < 5 => continue,
                Err(e) => return Err(io_err("cannot create the cgroup", &path)(e)),
            }
        }
        let cleanup = |e: CgroupError| {
            let _ = std::fs::remove_dir(&path);
            e
        };
        let dir = File::open(&path)
            .map_err(io_err("cannot open the cgroup", &path))
            .map_err(cleanup)?;
        // A sweeper that saw our fresh, empty, unlocked directory may hold the
        // lock or have removed it: then it is not ours any more.
        let dir = Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            io_err(
                "cannot lock the cgroup (removed by a concurrent `moat clean`?)",
                &path,
            )(io::Error::from(e))
        })?;
        let same = std::fs::metadata(&path)
            .and_then(|m| Ok((m.ino(), dir.metadata()?.ino())))
            .map(|(a, b)| a == b)
            .unwrap_or(false);
        if !same {
            return Err(io_err("the cgroup vanished while being created", &path)(
                io::Error::from(ErrorKind::NotFound),
            ));
        }
        Ok(RunCgroup {
            path,
            dir,
            removed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` (all its threads) into this cgroup. Its future
    /// children are born in it.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(io_err("cannot move a process into the cgroup", &procs))
    }

    /// The processes in this cgroup (not in sub-cgroups).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        read_pids(&self.path)
    }

    /// Kills what is left inside, waits for it to go, removes the directory
    /// (and `moat/` if this was the last run). Also done on drop, quietly.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        kill_all(&self.path)?;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                // EBUSY while killed processes are still exiting.
                Err(e)
                    if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                    kill_all(&self.path)?;
                }
                Err(e) => return Err(io_err("cannot remove the cgroup", &self.path)(e)),
            }
        }
        self.removed = true;
        if let Some(parent) = self.path.parent() {
            // Fails (ENOTEMPTY/EBUSY) while other runs exist: fine.
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// A cgroup to fork a process straight into (the sandbox init's PID 1):
/// `clone3` with `CLONE_INTO_CGROUP`. Moving a running process instead
/// (writing its PID to `cgroup.procs`) waits for an RCU grace period in the
/// kernel, ~6 ms per run here: most of what `--redirect ebpf` added to
/// `moat run`'s start.
#[derive(Debug)]
pub struct ForkTarget {
    dir: OwnedFd,
    /// For [`join`](Self::join), where `clone3` is not allowed.
    procs: File,
}

/// `struct clone_args` (linux/sched.h), up to `cgroup` (Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

impl ForkTarget {
    /// Opens the cgroup directory at `path` (and its `cgroup.procs`).
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY)
            .open(path)?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))?;
        Ok(Self {
            dir: dir.into(),
            procs,
        })
    }

    /// Like `fork()`, with the child born in this cgroup. Falls back to
    /// `fork()` and the child [joining](Self::join) where `clone3` is
    /// refused (seccomp filters such as Docker's default answer `ENOSYS`).
    /// On failure to join, the child exits with 125 before returning.
    ///
    /// # Safety
    /// As for `fork()`: in a multi-threaded process the child may only do
    /// async-signal-safe work. The fallback's child reports a failed join
    /// with `eprintln!`, which is not, so such callers need `clone3`.
    pub unsafe fn fork_into(&self) -> nix::Result<nix::unistd::ForkResult> {
        use nix::unistd::{ForkResult, Pid};
        let mut args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: nix::libc::SIGCHLD as u64,
            cgroup: self.dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: a plain fork (no CLONE_VM, no new stack) of a
        // single-threaded process (the caller's promise); `args` outlives
        // the call and its size is passed.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match r {
            0 => return Ok(ForkResult::Child),
            pid if pid > 0 => {
                return Ok(ForkResult::Parent {
                    child: Pid::from_raw(pid as i32),
                });
            }
            _ => {}
        }
        // SAFETY: the caller's promise, as above.
        let forked = unsafe { nix::unistd::fork() }?;
        if let ForkResult::Child = forked
            && let Err(e) = self.join()
        {
            eprintln!("moat: sandbox setup failed: joining the run's cgroup: {e}");
            std::process::exit(125);
        }
        Ok(forked)
    }

    /// Moves the calling process into this cgroup.
    pub fn join(&self) -> io::Result<()> {
        (&self.procs).write_all(b"0")
    }
}

impl AsFd for RunCgroup {
    /// The cgroup's directory, as BPF attachment wants it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            tracing::warn!("{e}; `moat clean` removes it later");
        }
    }
}

fn read_pids(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let procs = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(io_err("cannot read", &procs))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// `cgroup.kill` (Linux 5.14+) kills everything inside at once, including
/// processes forked meanwhile; older kernels get a SIGKILL per listed pid.
fn kill_all(dir: &Path) -> Result<(), CgroupError> {
    let kill = dir.join("cgroup.kill");
    match std::fs::write(&kill, "1") {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound && !dir.exists() => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot kill the processes of", dir)(e)),
    }
    for pid in read_pids(dir)? {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    Ok(())
}

/// Removes the cgroups left by runs that are gone (Moat killed before it
/// could clean up): every `<cgroup2>/moat/<id>` that no live Moat holds
/// locked and that has no process left. Returns what was removed.
pub fn sweep_stale() -> Result<Vec<PathBuf>, CgroupError> {
    sweep_stale_under(&cgroup2_mount()?)
}

/// Like [`sweep_stale`], under the given cgroup2 mount.
pub fn sweep_stale_under(mount: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let parent = mount.join(PARENT);
    let entries = match std::fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot list", &parent)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("cannot list", &parent))?;
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(dir) = File::open(&path) else { continue };
        // Held by a live run: not stale.
        let Ok(_lock) = Flock::lock(dir, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if !read_pids(&path).is_ok_and(|p| p.is_empty()) {
            continue;
        }
        match std::fs::remove_dir(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // Busy (a sub-cgroup, or processes arrived): leave it.
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_dir(&parent);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
42 31 0:39 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
45 31 0:42 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
";

    const PURE_V2: &str = "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 25 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
35 26 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
36 26 0:31 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw
";

    const V1_ONLY: &str = "\
31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
45 31 0:42 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
";

    #[test]
    fn finds_unified_on_hybrid_hosts() {
        assert_eq!(
            parse_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_sys_fs_cgroup_on_pure_v2_hosts() {
        assert_eq!(
            parse_cgroup2_mount(PURE_V2),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn none_without_cgroup2() {
        assert_eq!(parse_cgroup2_mount(V1_ONLY), None);
        assert_eq!(parse_cgroup2_mount(""), None);
        assert_eq!(parse_cgroup2_mount("garbage line\n- -\n"), None);
    }

    #[test]
    fn optional_fields_do_not_confuse_the_parser() {
        // Several optional fields, and a cgroup (v1) named like cgroup2's mountpoint.
        let text = "\
41 31 0:38 / /cg1 rw shared:10 master:3 propagate_from:2 - cgroup cgroup2 rw
42 31 0:39 / /cg2 rw shared:10 master:3 - cgroup2 none rw
";
        assert_eq!(parse_cgroup2_mount(text), Some(PathBuf::from("/cg2")));
    }

    #[test]
    fn unescapes_mountpoints() {
        let text = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(unescape_octal("a\\134b"), b"a\\b");
        assert_eq!(unescape_octal("trailing\\"), b"trailing\\");
        assert_eq!(unescape_octal("short\\04"), b"short\\04");
        assert_eq!(unescape_octal("big\\777"), b"big\\777");
    }

    #[test]
    fn run_ids_are_plain_names() {
        for ok in ["ab12", "run_1-x", &"a".repeat(64)] {
            assert!(check_run_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(
                matches!(check_run_id(bad), Err(CgroupError::BadRunId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(
            CgroupError::NoCgroup2
                .to_string()
                .contains("--redirect nft")
        );
        let e = io_err("cannot create the cgroup", Path::new("/x/moat/a"))(io::Error::from(
            ErrorKind::PermissionDenied,
        ));
        let s = e.to_string();
        assert!(s.contains("/x/moat/a") && s.contains("needs root"), "{s}");
    }
}
