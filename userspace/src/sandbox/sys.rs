//! The new mount API and the keyring call the sandbox's init needs, as
//! small safe functions (nix has none of them yet), and the [`Kernel`] trait
//! the init's filesystem shaping goes through: [`LinuxKernel`] for real, a
//! [`RecordingKernel`] in unit tests. Linux only; each call is exercised
//! for real by the vm-tests.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use nix::errno::Errno;
use nix::libc;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

fn cpath(path: &Path) -> nix::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// A detached copy of the mount tree at `dir` (`open_tree(OPEN_TREE_CLONE |
/// AT_RECURSIVE)`), to be changed and attached with [`move_mount_onto`].
pub fn clone_tree(dir: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let empty = c"";
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    // SAFETY: a valid descriptor, a NUL-terminated path and plain flags; the
    // kernel returns a new descriptor we then own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            empty.as_ptr(),
            flags | libc::AT_EMPTY_PATH as u32,
        )
    };
    let fd = Errno::result(fd)? as i32;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mount_setattr(AT_RECURSIVE)`: set `attr` (`MOUNT_ATTR_*`) on the mount
/// `fd` (or at `path` under it) and every mount beneath, with `userns` for
/// `MOUNT_ATTR_IDMAP`.
fn set_attr(
    fd: BorrowedFd<'_>,
    path: &Path,
    attr: u64,
    userns: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    let path = cpath(path)?;
    let mut a = libc::mount_attr {
        attr_set: attr,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_RECURSIVE as u32;
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as u32;
    }
    // SAFETY: the attribute struct lives across the call and its size is
    // passed; the path is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            path.as_ptr(),
            flags,
            &mut a as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Give the detached tree `tree` the id mapping of user namespace `userns`:
/// a file owned by uid N on disk is seen as owned by `userns`'s uid N.
pub fn idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> nix::Result<()> {
    set_attr(tree, Path::new(""), libc::MOUNT_ATTR_IDMAP, Some(userns))
}

/// Make the mount at `path` and every mount beneath it read-only (per mount:
/// the filesystems themselves stay writable for the host).
pub fn read_only_recursive(path: &Path) -> nix::Result<()> {
    // SAFETY: AT_FDCWD is always a valid directory descriptor.
    let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
    set_attr(cwd, path, libc::MOUNT_ATTR_RDONLY, None)
}

/// Attach the detached tree `tree` on top of `path`.
pub fn move_mount_onto(tree: BorrowedFd<'_>, path: &Path) -> nix::Result<()> {
    let to = cpath(path)?;
    let empty = c"";
    // SAFETY: valid descriptors and NUL-terminated paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(r).map(drop)
}

/// Leave the inherited session keyring for a new, empty, anonymous one
/// (`keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`): keys the invoker added to
/// `@s` are out of reach.
pub fn join_fresh_session_keyring() -> nix::Result<()> {
    // SAFETY: a NULL name asks for an anonymous keyring; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    Errno::result(r).map(drop)
}

/// The privileged calls the sandbox's init makes, and the few file writes
/// between them (into the fresh tmpfs mounts), behind one door: the
/// filesystem shaping runs on [`LinuxKernel`], and its unit tests on a
/// recording fake that touches nothing (youki's `Syscall` trait).
pub trait Kernel {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// `umount2(MNT_DETACH)`.
    fn umount_detach(&self, target: &Path) -> nix::Result<()>;
    /// Make the (bind) mount at `path` read-only, keeping its
    /// nosuid/nodev/noexec (see [`LinuxKernel`]).
    fn remount_read_only(&self, path: &Path) -> nix::Result<()>;
    /// [`read_only_recursive`].
    fn read_only_recursive(&self, path: &Path) -> nix::Result<()>;
    /// [`clone_tree`].
    fn clone_tree(&self, dir: BorrowedFd<'_>) -> nix::Result<OwnedFd>;
    /// [`idmap`].
    fn idmap(&self, tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> nix::Result<()>;
    /// [`move_mount_onto`].
    fn move_mount_onto(&self, tree: BorrowedFd<'_>, path: &Path) -> nix::Result<()>;
    /// `setns(2)`.
    fn setns(&self, ns: BorrowedFd<'_>, kind: CloneFlags) -> nix::Result<()>;
    /// `unshare(2)`.
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    /// `mkdir`, with its parents if `parents`.
    fn create_dir(&self, path: &Path, parents: bool) -> std::io::Result<()>;
    /// Create or truncate `path` and write `bytes`.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
    /// A symlink at `link` to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> std::io::Result<()>;
    /// `chown(2)`.
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()>;
    /// `rmdir(2)`.
    fn remove_dir(&self, path: &Path) -> std::io::Result<()>;
    /// `fork(2)` straight into the cgroup `cg` (`clone3(CLONE_INTO_CGROUP)`).
    ///
    /// # Safety
    /// As [`super::cgroup::ForkTarget::fork_into`]: the child may only make
    /// async-signal-safe calls unless this process is single-threaded.
    unsafe fn fork_into_cgroup(
        &self,
        cg: &super::cgroup::ForkTarget,
    ) -> nix::Result<nix::unistd::ForkResult>;
    /// Load an nft ruleset into the current network namespace
    /// (libnftables, in-process).
    fn load_ruleset(&self, script: &str) -> Result<(), super::libnft::LibNftError>;
}

/// The one real [`Kernel`]: nix and the raw syscalls above.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxKernel;

impl Kernel for LinuxKernel {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount_detach(&self, target: &Path) -> nix::Result<()> {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
    }

    /// A bind remount read-only, keeping the mount's nosuid/nodev/noexec. In
    /// a user namespace (rootless) those flags of a mount inherited from the
    /// host are locked, and a remount that would clear them fails with EPERM;
    /// as root it would silently clear them. (Atime flags, locked too, are
    /// kept by the kernel when a remount names none.)
    fn remount_read_only(&self, path: &Path) -> nix::Result<()> {
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
        nix::mount::mount(none, path, none, flags, none)
    }

    fn read_only_recursive(&self, path: &Path) -> nix::Result<()> {
        read_only_recursive(path)
    }

    fn clone_tree(&self, dir: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
        clone_tree(dir)
    }

    fn idmap(&self, tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> nix::Result<()> {
        idmap(tree, userns)
    }

    fn move_mount_onto(&self, tree: BorrowedFd<'_>, path: &Path) -> nix::Result<()> {
        move_mount_onto(tree, path)
    }

    fn setns(&self, ns: BorrowedFd<'_>, kind: CloneFlags) -> nix::Result<()> {
        nix::sched::setns(ns, kind)
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn create_dir(&self, path: &Path, parents: bool) -> std::io::Result<()> {
        match parents {
            true => std::fs::create_dir_all(path),
            false => std::fs::create_dir(path),
        }
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::write(path, bytes)
    }

    fn symlink(&self, target: &Path, link: &Path) -> std::io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    }

    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }

    unsafe fn fork_into_cgroup(
        &self,
        cg: &super::cgroup::ForkTarget,
    ) -> nix::Result<nix::unistd::ForkResult> {
        // SAFETY: the caller keeps `fork_into`'s contract (see the trait).
        unsafe { cg.fork_into() }
    }

    fn load_ruleset(&self, script: &str) -> Result<(), super::libnft::LibNftError> {
        super::libnft::load(script)
    }
}

/// One call a [`RecordingKernel`] saw.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    UmountDetach(PathBuf),
    ForkIntoCgroup,
    LoadRuleset(String),
    RemountReadOnly(PathBuf),
    ReadOnlyRecursive(PathBuf),
    CloneTree,
    Idmap,
    MoveMount(PathBuf),
    Setns(CloneFlags),
    Unshare(CloneFlags),
    CreateDir {
        path: PathBuf,
        parents: bool,
    },
    WriteFile {
        path: PathBuf,
        len: usize,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    RemoveDir(PathBuf),
}

#[cfg(test)]
impl Call {
    /// The path the call acts on (none for the descriptor-only calls).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Call::Mount { target: p, .. }
            | Call::UmountDetach(p)
            | Call::RemountReadOnly(p)
            | Call::ReadOnlyRecursive(p)
            | Call::MoveMount(p)
            | Call::CreateDir { path: p, .. }
            | Call::WriteFile { path: p, .. }
            | Call::Symlink { link: p, .. }
            | Call::Chown { path: p, .. }
            | Call::RemoveDir(p) => Some(p),
            Call::CloneTree
            | Call::Idmap
            | Call::Setns(_)
            | Call::Unshare(_)
            | Call::ForkIntoCgroup
            | Call::LoadRuleset(_) => None,
        }
    }
}

/// Which calls a [`RecordingKernel`] fails.
#[cfg(test)]
type FailWhen = Box<dyn Fn(&Call) -> bool + Send + Sync>;

/// A [`Kernel`] that changes nothing: it records each call, in order, and
/// fails the first call `fail` matches (with `EPERM`).
#[cfg(test)]
#[derive(Default)]
pub struct RecordingKernel {
    calls: std::sync::Mutex<Vec<Call>>,
    fail: Option<FailWhen>,
}

#[cfg(test)]
impl RecordingKernel {
    /// A kernel that fails the calls `matches` picks.
    pub fn failing(matches: impl Fn(&Call) -> bool + Send + Sync + 'static) -> Self {
        Self {
            calls: Default::default(),
            fail: Some(Box::new(matches)),
        }
    }

    /// Every call so far, in order (the failed one included).
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: Call) -> nix::Result<()> {
        let fails = self.fail.as_ref().is_some_and(|f| f(&call));
        self.calls.lock().unwrap().push(call);
        match fails {
            true => Err(Errno::EPERM),
            false => Ok(()),
        }
    }

    fn record_io(&self, call: Call) -> std::io::Result<()> {
        self.record(call).map_err(std::io::Error::from)
    }
}

#[cfg(test)]
impl Kernel for RecordingKernel {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.record(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }

    fn umount_detach(&self, target: &Path) -> nix::Result<()> {
        self.record(Call::UmountDetach(target.to_path_buf()))
    }

    fn remount_read_only(&self, path: &Path) -> nix::Result<()> {
        self.record(Call::RemountReadOnly(path.to_path_buf()))
    }

    fn read_only_recursive(&self, path: &Path) -> nix::Result<()> {
        self.record(Call::ReadOnlyRecursive(path.to_path_buf()))
    }

    /// A duplicate of `dir` stands for the detached tree.
    fn clone_tree(&self, dir: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
        self.record(Call::CloneTree)?;
        dir.try_clone_to_owned().map_err(|_| Errno::EBADF)
    }

    fn idmap(&self, _tree: BorrowedFd<'_>, _userns: BorrowedFd<'_>) -> nix::Result<()> {
        self.record(Call::Idmap)
    }

    fn move_mount_onto(&self, _tree: BorrowedFd<'_>, path: &Path) -> nix::Result<()> {
        self.record(Call::MoveMount(path.to_path_buf()))
    }

    fn setns(&self, _ns: BorrowedFd<'_>, kind: CloneFlags) -> nix::Result<()> {
        self.record(Call::Setns(kind))
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        self.record(Call::Unshare(flags))
    }

    fn create_dir(&self, path: &Path, parents: bool) -> std::io::Result<()> {
        self.record_io(Call::CreateDir {
            path: path.to_path_buf(),
            parents,
        })
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        self.record_io(Call::WriteFile {
            path: path.to_path_buf(),
            len: bytes.len(),
        })
    }

    fn symlink(&self, target: &Path, link: &Path) -> std::io::Result<()> {
        self.record_io(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        })
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        self.record_io(Call::Chown {
            path: path.to_path_buf(),
            uid,
            gid,
        })
    }

    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        self.record_io(Call::RemoveDir(path.to_path_buf()))
    }

    /// Recorded; never forks (a test process is multi-threaded): fails with
    /// ENOSYS when the fake is not told to fail it otherwise.
    unsafe fn fork_into_cgroup(
        &self,
        cg: &super::cgroup::ForkTarget,
    ) -> nix::Result<nix::unistd::ForkResult> {
        let _ = cg;
        self.record(Call::ForkIntoCgroup)?;
        Err(Errno::ENOSYS)
    }

    fn load_ruleset(&self, script: &str) -> Result<(), super::libnft::LibNftError> {
        self.record(Call::LoadRuleset(script.to_owned()))
            .map_err(|e| super::libnft::LibNftError::Rejected(e.to_string()))
    }
}
