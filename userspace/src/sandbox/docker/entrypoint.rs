//! The in-container side, `moat __container-init`: the container's PID 1.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::{ForkResult, Pid, execvp, fork};

use super::container::GO_TIMEOUT;
use super::{CTL_INSIDE, HOME_FILES_INSIDE, HOME_INSIDE};

/// Arguments of `moat __container-init` (internal; built by [`run`](super::run)).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InitArgs {
    pub tty: bool,
    pub command: Vec<OsString>,
}

pub fn parse_init_args(raw: Vec<OsString>) -> Result<InitArgs, String> {
    let mut args = InitArgs::default();
    let mut argv = crate::sandbox::argv::Argv::new(raw);
    while let Some(flag) = argv.flag()? {
        match flag.as_str() {
            "--tty" => args.tty = true,
            "--no-tty" => args.tty = false,
            _ => return Err(crate::sandbox::argv::unexpected(&flag)),
        }
    }
    args.command = argv.command()?;
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
    let set = crate::sandbox::pid1::block_signals();
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
        if let Some(code) = crate::sandbox::pid1::reap(child) {
            return code;
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
            // With a TTY the terminal's SIGINT and SIGQUIT reached the
            // command's process group already.
            if crate::sandbox::pid1::passes_on(sig, tty) {
                let _ = kill(child, sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
