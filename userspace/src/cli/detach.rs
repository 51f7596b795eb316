//! `moat run -d`: the foreground half.
//!
//! Moat must stay alive for the whole run (it serves the proxy and DNS), so
//! "detached" means: this process starts a copy of itself with the same
//! arguments in a new session (setsid; stdin /dev/null; stdout and stderr
//! appended to `runs/<id>/log`), telling it the run id and a pipe
//! (`crate::runs::DETACHED_*_VAR`). The copy runs the run as usual and writes
//! one byte to the pipe once the command has started (`crate::runs::started`).
//! This process then prints the id and exits 0. If the pipe closes without
//! that byte, the run failed: the log (which holds the error) goes to stderr
//! and the copy's exit code is ours. No id is printed for a failed run.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use super::Ctx;
use super::output::outln;
use crate::home::MoatHome;
use crate::runs;

/// Start the run in the background; the exit code for `moat run -d`.
pub fn start(ctx: &Ctx, home: &MoatHome) -> Result<i32> {
    let (id, dir) = runs::create_run_dir(home).context("creating the run directory")?;
    let log_path = dir.join(runs::LOG);
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?
    };
    home.chown(&log_path)?;
    let (mut reader, writer) = std::io::pipe().context("creating a pipe")?;
    let fd = writer.as_raw_fd();
    let exe = std::env::current_exe().context("finding the moat binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(runs::DETACHED_ID_VAR, &id)
        .env(runs::DETACHED_FD_VAR, fd.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid and fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: no terminal, no SIGHUP when this one closes.
            nix::unistd::setsid()?;
            // The pipe's write end survives the exec (it is close-on-exec here).
            if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the background run")?;
    drop(cmd);
    drop(writer);
    let mut byte = [0u8; 1];
    let started = matches!(reader.read(&mut byte), Ok(1) if byte[0] == runs::STARTED_BYTE);
    if started {
        if ctx.json {
            outln!("{}", serde_json::json!({ "id": id, "log": log_path }))?;
        } else {
            outln!("{id}")?;
        }
        return Ok(0);
    }
    // It ended before its command started: say why, with its exit code.
    let status = child.wait().context("waiting for the background run")?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprint!("{log}");
    let mut code = status.code().unwrap_or(125);
    if code == 0 {
        eprintln!("moat: error: run {id} ended before its command started");
        code = 125;
    }
    // `moat list` shows it as failed, even when it failed before it could
    // record anything itself.
    let events_path = dir.join(runs::EVENTS);
    let recorded = std::fs::read_to_string(&events_path)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(r#""event":"exit""#));
    if !recorded && let Ok(events) = crate::events::Events::create(&events_path) {
        let _ = home.chown(&events_path);
        let error = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the run ended before its command started");
        events.emit("exit", serde_json::json!({ "error": error }));
    }
    Ok(code)
}
