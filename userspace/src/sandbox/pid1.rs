//! What both PID 1s share, the native sandbox's (`init.rs`) and a
//! container's (`docker/entrypoint.rs`): the signals they hold and pass on,
//! reaping (every orphan of the namespace comes to PID 1), and which
//! signals reach the command from them rather than from a terminal.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Passed on to the command as they come. SIGINT and SIGQUIT are passed on
/// only when a process sent them ([`passes_on`]).
pub const FORWARD: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
];

/// Block [`FORWARD`], SIGINT, SIGQUIT and SIGCHLD from now on (PID 1 drops
/// a signal it neither handles nor blocks); the set, to wait on.
pub fn block_signals() -> SigSet {
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

/// Reap every child that has ended; `child`'s status, shell-style (128+N
/// for signal N), once it is among them.
pub fn reap(child: Pid) -> Option<i32> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                return Some(128 + sig as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => continue, // an orphan
        }
    }
}

/// Whether PID 1 passes `sig` on to the command. `terminal_has_it`: the
/// command's terminal delivered it to the command's process group already
/// (SIGINT, SIGQUIT from Ctrl-C, Ctrl-\), so passing it on would deliver it
/// twice.
pub fn passes_on(sig: Signal, terminal_has_it: bool) -> bool {
    match sig {
        Signal::SIGCHLD => false,
        Signal::SIGINT | Signal::SIGQUIT => !terminal_has_it,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    // `reap` waits for any child, so it is not called from this (shared,
    // multi-threaded) test process: the vm-tests exercise it in both PID 1s.
    use super::*;

    #[test]
    fn a_terminals_interrupt_is_not_passed_on_twice() {
        assert!(!passes_on(Signal::SIGINT, true));
        assert!(passes_on(Signal::SIGINT, false));
        assert!(passes_on(Signal::SIGTERM, true));
        assert!(!passes_on(Signal::SIGCHLD, false));
    }
}
