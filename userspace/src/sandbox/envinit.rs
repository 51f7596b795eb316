//! `moat __env-init`: env mode's masks on Linux. Env mode shares the host's
//! network and filesystem, but the command must still never see
//! `$MOAT_HOME`, the agent socket, the keyring bus or the tools' credential
//! files (`sandbox::mask`). This process, exec'd by `moat run` between
//! itself and the command, enters a mount namespace of its own (through an
//! unprivileged user namespace unless Moat runs as root), covers each mask
//! with an empty read-only directory or file, drops every capability and
//! execs the command in place (same pid, so signals reach it directly).
//!
//! Without capabilities the command cannot unmount a mask; a user namespace
//! it makes itself inherits the masks locked to what they cover.

use std::ffi::{CString, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// What `moat run` passes.
#[derive(Debug, Default)]
pub struct EnvInitArgs {
    /// The paths to cover.
    pub mask: Vec<PathBuf>,
    /// An empty directory and an empty file to bind over them.
    pub empty: Option<(PathBuf, PathBuf)>,
    /// Under sudo: the caller's uid and gid.
    pub run_as: Option<(u32, u32)>,
    pub command: Vec<OsString>,
}

/// The command line of `moat __env-init` for `args` (parsed back by
/// [`parse_args`]).
pub fn to_args(args: &EnvInitArgs) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec!["__env-init".into()];
    if let Some((dir, file)) = &args.empty {
        out.extend(["--empty".into(), dir.into(), file.into()]);
    }
    for m in &args.mask {
        out.extend(["--mask".into(), m.into()]);
    }
    if let Some((u, g)) = args.run_as {
        out.extend(["--run-as".into(), format!("{u}:{g}").into()]);
    }
    out.push("--".into());
    out.extend(args.command.iter().cloned());
    out
}

pub fn parse_args(raw: Vec<OsString>) -> Result<EnvInitArgs, String> {
    let mut args = EnvInitArgs::default();
    let mut argv = super::argv::Argv::new(raw);
    while let Some(flag) = argv.flag()? {
        match flag.as_str() {
            "--empty" => {
                let dir = argv.value(&flag)?.into();
                args.empty = Some((dir, argv.value(&flag)?.into()));
            }
            "--mask" => args.mask.push(argv.value(&flag)?.into()),
            "--run-as" => args.run_as = Some(argv.ids(&flag)?),
            _ => return Err(super::argv::unexpected(&flag)),
        }
    }
    args.command = argv.command()?;
    if args.empty.is_none() && !args.mask.is_empty() {
        return Err("--mask needs --empty DIR FILE".into());
    }
    Ok(args)
}

/// Entry point of `moat __env-init`. Never returns: it execs the command,
/// or exits 125 (Moat failed), 126 (cannot execute) or 127 (not found).
pub fn main(args: EnvInitArgs) -> ! {
    if let Err(e) = contain(&args) {
        eprintln!("moat: env mode: {e}");
        std::process::exit(125);
    }
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    let name = args.command[0].to_string_lossy();
    if err == nix::errno::Errno::ENOENT {
        eprintln!("moat: {name}: command not found");
        std::process::exit(127);
    }
    eprintln!("moat: {name}: cannot execute: {err}");
    std::process::exit(126);
}

fn contain(args: &EnvInitArgs) -> Result<(), String> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    if uid.is_root() {
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("mount namespace: {e}"))?;
    } else {
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("user and mount namespaces: {e}"))?;
        // The same ids inside: files keep their owners, and the command,
        // not being uid 0 there, loses every capability at exec.
        for (file, line) in [
            ("/proc/self/setgroups", "deny".to_string()),
            ("/proc/self/uid_map", format!("{uid} {uid} 1")),
            ("/proc/self/gid_map", format!("{gid} {gid} 1")),
        ] {
            std::fs::write(file, line).map_err(|e| format!("{file}: {e}"))?;
        }
    }
    // Nothing done here may reach the host's mounts.
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)
        .map_err(|e| format!("making / a slave: {e}"))?;
    if let Some((dir, file)) = &args.empty {
        cover(&args.mask, dir, file)?;
    }
    super::init::drop_privileges(args.run_as, None)
}

/// Bind the empty `dir` or `file` read-only over each mask that exists.
/// Both are held open first, so a mask over their own parent
/// (`$MOAT_HOME`, which holds the run's directory) can come in any order.
fn cover(masks: &[PathBuf], dir: &Path, file: &Path) -> Result<(), String> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let hold = |p: &Path| {
        open(p, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (dir_fd, file_fd) = (hold(dir)?, hold(file)?);
    let via =
        |fd: &std::os::fd::OwnedFd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let (dir_src, file_src) = (via(&dir_fd), via(&file_fd));
    let none: Option<&str> = None;
    for path in masks {
        // Unreachable for this user (another's home) or absent: nothing to cover.
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let source = if meta.is_dir() { &dir_src } else { &file_src };
        mount(Some(source), path, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("masking {}: {e}", path.display()))?;
        // mount_setattr, not a remount: a remount in a user namespace must
        // repeat the locked atime flags of the mount it binds from.
        super::sys::read_only_recursive(path)
            .map_err(|e| format!("masking {} read-only: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses_back() {
        let args = EnvInitArgs {
            mask: vec!["/h/.moat".into(), "/h/.netrc".into()],
            empty: Some(("/r/mask-dir".into(), "/r/mask-file".into())),
            run_as: Some((1000, 1001)),
            command: vec!["sh".into(), "-c".into(), "--mask x".into()],
        };
        let line = to_args(&args);
        assert_eq!(line[0], "__env-init");
        let back = parse_args(line[1..].to_vec()).unwrap();
        assert_eq!(back.mask, args.mask);
        assert_eq!(back.empty, args.empty);
        assert_eq!(back.run_as, args.run_as);
        assert_eq!(back.command, args.command);
    }

    #[test]
    fn masks_without_their_empty_sources_are_refused() {
        let raw = ["--mask", "/h/.moat", "--", "true"].map(OsString::from);
        assert!(parse_args(raw.to_vec()).is_err());
        let raw = ["--"].map(OsString::from);
        assert_eq!(parse_args(raw.to_vec()).unwrap_err(), "no command");
    }
}
