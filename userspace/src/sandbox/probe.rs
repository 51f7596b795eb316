//! Can this (unprivileged) process build the rootless sandbox? One probe,
//! shared by `moat doctor` (which reports it) and `moat run` (which picks
//! its network mode from it), so the two never disagree. It lives with the
//! sandbox it probes for: it tries what `sandbox::init` does first.

/// A forked child tries what `__sandbox-init --rootless` will do first: a
/// user namespace, and inside it network and mount namespaces (refused where
/// AppArmor lets user namespaces be created but strips their capabilities).
/// `Err` says why not, for the user.
#[cfg(target_os = "linux")]
pub fn userns() -> Result<(), String> {
    use nix::sched::{CloneFlags, unshare};
    use nix::sys::wait::{WaitStatus, waitpid};
    // SAFETY: the child only makes raw syscalls (unshare, _exit): no
    // allocation or lock that another thread could be holding.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let code = if unshare(CloneFlags::CLONE_NEWUSER).is_err() {
                1
            } else if unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).is_err() {
                2
            } else {
                0
            };
            // SAFETY: _exit is async-signal-safe and skips atexit handlers.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, 1)) => Err("this system refuses unprivileged user \
                 namespaces (sysctls user.max_user_namespaces, \
                 kernel.unprivileged_userns_clone)"
                .into()),
            Ok(WaitStatus::Exited(_, 2)) => Err("user namespaces here get no capabilities \
                 (AppArmor: kernel.apparmor_restrict_unprivileged_userns)"
                .into()),
            other => Err(format!("probing user namespaces failed ({other:?})")),
        },
        Err(e) => Err(format!("probing user namespaces failed (fork: {e})")),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn userns() -> Result<(), String> {
    Err("user namespaces are Linux-only".into())
}
