//! Run directories (`$MOAT_HOME/runs/<id>/`) and what other commands learn
//! from them: is the run alive, which process supervises it, where its log
//! is, and whether someone asked it to stop.
//!
//! A live run holds an exclusive lock on `.lock` (released by the kernel even
//! when Moat is killed), so "is it running" never guesses from pids. The
//! supervisor's pid is in `pid` (only trusted while the lock is held).
//!
//! Detached runs (`moat run -d`): the foreground `moat` starts a copy of
//! itself in a new session and waits on a pipe for one byte that says "the
//! command has started"; the copy sends it through [`started`] once the
//! sandbox has released the command. If the pipe closes without it, the run
//! failed and its log says why.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::home::MoatHome;

/// The lock file a live run holds.
pub const LOCK: &str = ".lock";
/// The supervising `moat` process's pid.
pub const PID: &str = "pid";
/// stdout+stderr of a detached run.
pub const LOG: &str = "log";
/// Written by `moat stop` before it signals the run.
pub const STOPPED: &str = "stopped";
/// The run's events.
pub const EVENTS: &str = "events.jsonl";

/// Environment of a detached run's supervisor: its run id, and the
/// descriptor of the pipe [`started`] writes to.
pub const DETACHED_ID_VAR: &str = "MOAT_DETACHED_RUN";
pub const DETACHED_FD_VAR: &str = "MOAT_DETACHED_FD";
/// The byte [`started`] sends.
pub const STARTED_BYTE: u8 = b's';

/// `$MOAT_HOME/runs`.
pub fn runs_dir(home: &MoatHome) -> PathBuf {
    home.root().join("runs")
}

/// Make a new run directory with a fresh short id (8 hex digits, retried
/// until no run of that id exists); the id and the directory.
pub fn create_run_dir(home: &MoatHome) -> io::Result<(String, PathBuf)> {
    use std::os::unix::fs::DirBuilderExt;
    let runs = runs_dir(home);
    home.ensure_dir(&runs)?;
    for _ in 0..64 {
        let id = new_id();
        let dir = runs.join(&id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                home.chown(&dir)?;
                return Ok((id, dir));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free run id (64 tries)"))
}

/// 8 random hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Is a `moat run` holding this run's lock right now?
pub fn is_live(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK)) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// The supervisor's pid, if recorded.
pub fn pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join(PID))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Record this process as the run's supervisor.
pub fn write_pid(home: &MoatHome, dir: &Path) -> io::Result<()> {
    let path = dir.join(PID);
    std::fs::write(&path, format!("{}\n", std::process::id()))?;
    home.chown(&path)
}

/// Find a run by id or unique id prefix.
pub fn find(home: &MoatHome, id: &str) -> Result<(String, PathBuf), FindError> {
    let runs = runs_dir(home);
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(FindError::NotFound(id.into()));
    }
    let exact = runs.join(id);
    if exact.is_dir() {
        return Ok((id.into(), exact));
    }
    let mut found: Vec<String> = std::fs::read_dir(&runs)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(id))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        0 => Err(FindError::NotFound(id.into())),
        1 => {
            let name = found.remove(0);
            let dir = runs.join(&name);
            Ok((name, dir))
        }
        _ => Err(FindError::Ambiguous(id.into(), found)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no run '{0}' (moat list shows the runs)")]
    NotFound(String),
    #[error("'{0}' names more than one run ({list}); give more of the id", list = .1.join(", "))]
    Ambiguous(String, Vec<String>),
}

/// The write end of a detached run's start pipe, taken by [`take_started_fd`].
static STARTED: Mutex<Option<File>> = Mutex::new(None);

/// In a detached run's supervisor: take the start pipe named by
/// [`DETACHED_FD_VAR`] (close-on-exec from now on, so no sandboxed
/// process inherits it) and drop both variables from the environment (so
/// no helper process Moat starts takes them for its own). Call once, first
/// thing in `main`, before any thread exists. Returns the run id.
pub fn take_started_fd() -> Option<String> {
    let id = std::env::var(DETACHED_ID_VAR).ok();
    let fd = std::env::var(DETACHED_FD_VAR).ok();
    if id.is_some() || fd.is_some() {
        // SAFETY: called before any other thread exists (see above).
        unsafe {
            std::env::remove_var(DETACHED_ID_VAR);
            std::env::remove_var(DETACHED_FD_VAR);
        }
    }
    let (id, fd) = (id?, fd?.parse::<i32>().ok()?);
    // Only a descriptor that is open and a pipe (the one our parent made).
    let stat = nix::sys::stat::fstat(
        // SAFETY: borrowed for the call only; fstat on a closed fd fails.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
    )
    .ok()?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFIFO {
        return None;
    }
    // SAFETY: the parent passed this descriptor to us and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) };
    *STARTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    Some(id)
}

/// The run's command has started: tell a waiting `moat run -d` (no-op for
/// foreground runs, and after the first call). Called by the runtimes once
/// the sandbox has released the command.
pub fn started() {
    let file = STARTED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(mut f) = file {
        let _ = f.write_all(&[STARTED_BYTE]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_unique_and_found_by_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MoatHome::new(tmp.path().join("h"), None);
        let (a, dir_a) = create_run_dir(&home).unwrap();
        let (b, _) = create_run_dir(&home).unwrap();
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(find(&home, &a).unwrap().1, dir_a);
        assert_eq!(find(&home, &a[..6]).unwrap().0, a);
        assert!(matches!(find(&home, ""), Err(FindError::NotFound(_))));
        assert!(matches!(find(&home, "../x"), Err(FindError::NotFound(_))));
        assert!(matches!(find(&home, "zz"), Err(FindError::NotFound(_))));
        // Two runs sharing a prefix: ambiguous.
        std::fs::create_dir_all(runs_dir(&home).join("abc00001")).unwrap();
        std::fs::create_dir_all(runs_dir(&home).join("abc00002")).unwrap();
        let e = find(&home, "abc").unwrap_err().to_string();
        assert!(e.contains("abc00001, abc00002"), "{e}");
    }

    #[test]
    fn liveness_is_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!is_live(tmp.path()));
        let lock = File::create(tmp.path().join(LOCK)).unwrap();
        assert!(!is_live(tmp.path()));
        lock.lock().unwrap();
        assert!(is_live(tmp.path()));
        drop(lock);
        assert!(!is_live(tmp.path()));
    }
}
