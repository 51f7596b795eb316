//! The new mount API and the keyring call the sandbox's init needs, as
//! small safe functions (nix has none of them yet). Linux only; each is
//! exercised for real by the vm-tests.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;

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
