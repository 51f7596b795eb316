//! `moat list`, `logs`, `stop`, `destroy` and `clean`: the runs under
//! `$MOAT_HOME/runs/` (see `crate::runs` for what a run directory holds).
//!
//! A live run holds an exclusive lock on `runs/<id>/.lock` (released by the
//! kernel even when Moat is killed), so "is it running" never guesses from
//! pids. A run's `events.jsonl` says how it started and ended.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::Value;

use super::Ctx;
use super::output::outln;
use crate::runs::{self, is_live};

/// Files a run removes when it ends; a killed run leaves them behind.
const DEBRIS: [&str; 4] = [
    "ca-bundle.pem",
    "java-truststore.p12",
    "home-files",
    "container-ctl",
];

#[derive(Args)]
#[command(after_help = "\
Removes what dead runs (killed, or whose Moat was killed) left behind: their
cgroups (eBPF redirector), temporary files, and Moat's containers of this
$MOAT_HOME whose run is not alive, running or stopped, kept ones (--keep)
included (the engine is asked only when it answers: DOCKER_HOST or the
default socket). Each run's events.jsonl and log are kept unless --events
is given.")]
pub struct CleanArgs {
    /// Also delete the directories (events and logs included) of finished runs
    #[arg(long)]
    events: bool,
}

#[derive(Args)]
#[command(after_help = "\
Only detached runs (moat run -d) have a log: a foreground run's output went
to its terminal. RUN is a run id from moat list, or a unique prefix of one.

Examples:
  moat logs 3f2a9c1e
  moat logs -f $(moat run -d -- ./agent.sh)")]
pub struct LogsArgs {
    /// The run (id or unique prefix)
    run: String,
    /// Keep printing what the run writes until it ends
    #[arg(short, long)]
    follow: bool,
}

#[derive(Args)]
#[command(after_help = "\
Sends SIGTERM to the run's Moat, which passes it on to the command (in a
container: to its entrypoint, which passes it on). If the run has not ended
after --time seconds, the command is killed (SIGKILL; a container with
docker kill), and Moat records the exit like any other: moat list shows the
run as stopped, with the command's exit code (143 after SIGTERM unless the
command chose its own, 137 after SIGKILL). A run that is not running is
left alone. Stopping another user's (or root's) run needs their rights.")]
pub struct StopArgs {
    /// The run (id or unique prefix)
    run: String,
    /// Seconds to wait after SIGTERM before killing the command
    #[arg(short, long, default_value_t = 10, value_name = "SECONDS")]
    time: u64,
}

#[derive(Args)]
#[command(after_help = "\
Removes the run's container, if one was kept (moat run --keep), and the
run's directory (events, log). A running run is refused unless --force,
which stops it first (as moat stop --time 5).")]
pub struct DestroyArgs {
    /// The run (id or unique prefix)
    run: String,
    /// Stop the run first if it is running
    #[arg(short, long)]
    force: bool,
}

/// One run as `moat list` shows it.
#[derive(Debug, serde::Serialize)]
struct RunInfo {
    id: String,
    state: &'static str,
    exit_code: Option<i64>,
    started: Option<String>,
    ended: Option<String>,
    runtime: Option<String>,
    mode: Option<String>,
    /// The docker runtime's container (id).
    container: Option<String>,
    detached: bool,
    /// The supervising Moat process, while the run is alive.
    pid: Option<i32>,
    command: Vec<String>,
    grants: Vec<String>,
    /// Where a detached run's output is.
    log: Option<PathBuf>,
}

fn runs_dir(ctx: &Ctx) -> Result<PathBuf> {
    Ok(runs::runs_dir(&ctx.home()?))
}

fn run_dirs(runs: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = match std::fs::read_dir(runs) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", runs.display())),
    };
    dirs.sort();
    Ok(dirs)
}

/// When the run started: its start event, else (a run killed before it
/// wrote one) when its directory was made.
fn started_at(run: &RunInfo, dir: &Path) -> std::time::SystemTime {
    run.started
        .as_deref()
        .and_then(|ts| humantime::parse_rfc3339(ts).ok())
        .or_else(|| std::fs::metadata(dir).and_then(|m| m.modified()).ok())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// The run's events (start and exit are enough for `list`; the file may be
/// long, but only its first lines and its end matter, and reading it whole
/// is simple and fast enough for a listing).
fn events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join(runs::EVENTS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn info(dir: &Path) -> RunInfo {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let events = events(dir);
    let find = |name: &str| events.iter().find(|e| e["event"] == name);
    let start = find("start");
    let exit = find("exit");
    let container = find("container");
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |v: Option<&Value>, key: &str| v.and_then(|v| v[key].as_str().map(str::to_owned));
    let live = is_live(dir);
    let stopped = dir.join(runs::STOPPED).exists();
    let state = match (live, exit) {
        (true, _) => "running",
        (false, Some(e)) if e.get("error").is_some() => "failed",
        (false, Some(_)) if stopped => "stopped",
        (false, Some(_)) => "exited",
        (false, None) => "killed",
    };
    let log = dir.join(runs::LOG);
    RunInfo {
        id,
        state,
        exit_code: exit.and_then(|e| e["code"].as_i64()),
        started: text(start, "ts"),
        ended: text(exit, "ts"),
        runtime: text(start, "runtime"),
        mode: text(start, "mode"),
        container: text(container, "id").or_else(|| text(container, "name")),
        detached: start.is_some_and(|s| s["detached"] == true) || log.exists(),
        pid: live.then(|| runs::pid(dir)).flatten(),
        command: strings(start.map(|s| &s["command"])),
        grants: strings(start.map(|s| &s["grants"])),
        log: log.exists().then_some(log),
    }
}

pub fn list(ctx: &Ctx) -> Result<()> {
    let mut runs: Vec<(std::time::SystemTime, RunInfo)> = run_dirs(&runs_dir(ctx)?)?
        .iter()
        .map(|d| {
            let run = info(d);
            (started_at(&run, d), run)
        })
        .collect();
    // As docker ps users expect: by start time, the newest last.
    runs.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.id.cmp(&y.id)));
    let runs: Vec<RunInfo> = runs.into_iter().map(|(_, r)| r).collect();
    if ctx.json {
        outln!("{}", serde_json::to_string_pretty(&runs)?)?;
        return Ok(());
    }
    if runs.is_empty() {
        outln!("No runs. Start one with: moat run --grant <name> -- <command>")?;
        return Ok(());
    }
    outln!(
        "{:<10} {:<9} {:<5} {:<8} {:<13} {:<25} {:<12} COMMAND",
        "RUN",
        "STATE",
        "CODE",
        "RUNTIME",
        "CONTAINER",
        "STARTED",
        "GRANTS"
    )?;
    for r in runs {
        let container: String = r
            .container
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(12)
            .collect();
        outln!(
            "{:<10} {:<9} {:<5} {:<8} {:<13} {:<25} {:<12} {}",
            r.id,
            r.state,
            r.exit_code.map(|c| c.to_string()).unwrap_or("-".into()),
            r.runtime.as_deref().unwrap_or("-"),
            container,
            r.started.as_deref().unwrap_or("-"),
            if r.grants.is_empty() {
                "-".to_owned()
            } else {
                r.grants.join(",")
            },
            r.command.join(" ")
        )?;
    }
    Ok(())
}

pub fn logs(ctx: &Ctx, args: LogsArgs) -> Result<()> {
    let (id, dir) = runs::find(&ctx.home()?, &args.run)?;
    let path = dir.join(runs::LOG);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "run {id} has no log: it ran in the foreground, so its output went to its \
             terminal (moat run -d keeps a log)"
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Was it alive before this read? Then a read that finds nothing more
        // after it ended has seen everything.
        let live = args.follow && is_live(&dir);
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if let Err(e) = out.write_all(&buf[..n]).and_then(|()| out.flush()) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
        if !live {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
        // A log that shrank (truncated by hand): start over.
        if let (Ok(meta), Ok(pos)) = (file.metadata(), file.stream_position())
            && meta.len() < pos
        {
            file.seek(std::io::SeekFrom::Start(0))?;
        }
    }
}

/// Wait until `dir`'s run is no longer live, at most `timeout`.
fn wait_dead(dir: &Path, timeout: Duration) -> bool {
    let t = Instant::now();
    loop {
        if !is_live(dir) {
            return true;
        }
        if t.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal, id: &str) -> Result<()> {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(nix::errno::Errno::EPERM) => bail!(
            "run {id} belongs to another user (it was started with sudo?): \
             stop it as that user (sudo moat stop {id})"
        ),
        Err(e) => bail!("signalling run {id} (pid {pid}): {e}"),
    }
}

/// The processes whose parent is `pid` (the sandbox's init, or the command
/// in env mode).
fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Stop a live run (see [`StopArgs`]): true if it ended.
fn stop_run(id: &str, dir: &Path, time: Duration) -> Result<bool> {
    let Some(pid) = runs::pid(dir) else {
        bail!("run {id} is running but recorded no pid (started by an older moat?)");
    };
    // Before the signal: `moat list` says "stopped" once the exit is recorded.
    let marker = dir.join(runs::STOPPED);
    std::fs::write(
        &marker,
        format!(
            "{}\n",
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
        ),
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    use nix::sys::signal::Signal;
    signal(pid, Signal::SIGTERM, id)?;
    if wait_dead(dir, time) {
        return Ok(true);
    }
    // Kill the command; its Moat records the exit (137).
    eprintln!(
        "moat: run {id} did not end {}s after SIGTERM: killing it",
        time.as_secs()
    );
    let docker = events(dir)
        .iter()
        .any(|e| e["event"] == "start" && e["runtime"] == "docker");
    if docker {
        #[cfg(target_os = "linux")]
        {
            let id = id.to_owned();
            let killed = super::block_on(async move {
                use crate::sandbox::docker;
                let engine = docker::connect().await?;
                for c in docker::containers(&engine, Some(&id)).await? {
                    docker::kill_now(&engine, &c.id).await?;
                }
                Ok::<_, docker::DockerError>(())
            })?;
            if let Err(e) = killed {
                eprintln!("moat: killing the container: {e}");
            }
        }
    } else {
        for child in children(pid) {
            signal(child, Signal::SIGKILL, id)?;
        }
    }
    if wait_dead(dir, Duration::from_secs(5)) {
        return Ok(true);
    }
    // Last resort: Moat itself (the run shows as killed).
    signal(pid, Signal::SIGKILL, id)?;
    Ok(wait_dead(dir, Duration::from_secs(2)))
}

pub fn stop(ctx: &Ctx, args: StopArgs) -> Result<()> {
    let (id, dir) = runs::find(&ctx.home()?, &args.run)?;
    if !is_live(&dir) {
        eprintln!("moat: run {id} is not running");
        return Ok(());
    }
    if !stop_run(&id, &dir, Duration::from_secs(args.time))? {
        bail!("run {id} is still running");
    }
    let info = info(&dir);
    if ctx.json {
        outln!("{}", serde_json::to_string_pretty(&info)?)?;
    } else {
        outln!(
            "{id} {} {}",
            info.state,
            info.exit_code.map(|c| c.to_string()).unwrap_or("-".into())
        )?;
    }
    Ok(())
}

pub fn destroy(ctx: &Ctx, args: DestroyArgs) -> Result<()> {
    let home = ctx.home()?;
    let (id, dir) = runs::find(&home, &args.run)?;
    if is_live(&dir) {
        if !args.force {
            bail!(
                "run {id} is running: stop it first (moat stop {id}), or moat destroy --force {id}"
            );
        }
        if !stop_run(&id, &dir, Duration::from_secs(5))? {
            bail!("run {id} is still running");
        }
    }
    let mut removed = Vec::new();
    let docker = events(&dir)
        .iter()
        .any(|e| e["event"] == "start" && e["runtime"] == "docker");
    #[cfg(target_os = "linux")]
    if docker {
        let run = id.clone();
        let gone = super::block_on(async move {
            use crate::sandbox::docker;
            let engine = docker::connect().await?;
            let mut gone = Vec::new();
            for c in docker::containers(&engine, Some(&run)).await? {
                docker::remove(&engine, &c.id).await?;
                docker::removed(&engine, &c.id, Duration::from_secs(10)).await;
                gone.push(c.name);
            }
            Ok::<_, docker::DockerError>(gone)
        })?
        .with_context(|| format!("removing run {id}'s container (the run is kept)"))?;
        removed.extend(gone.into_iter().map(|n| format!("container {n}")));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = docker;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    removed.push(format!("run {id}"));
    if ctx.json {
        outln!("{}", serde_json::json!({ "removed": removed }))?;
    } else {
        for r in removed {
            outln!("removed {r}")?;
        }
    }
    Ok(())
}

pub fn clean(ctx: &Ctx, args: CleanArgs) -> Result<()> {
    let home = ctx.home()?;
    let mut removed = Vec::new();
    #[cfg(target_os = "linux")]
    if nix::unistd::geteuid().is_root() {
        for cg in crate::sandbox::cgroup::sweep_stale().context("removing stale run cgroups")? {
            removed.push(format!("cgroup {}", cg.display()));
        }
    }
    let dirs = run_dirs(&runs::runs_dir(&home))?;
    #[cfg(target_os = "linux")]
    removed.extend(clean_containers(&home, &dirs));
    for dir in dirs {
        if is_live(&dir) || starting(&dir) {
            continue;
        }
        if args.events {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            removed.push(format!("run {}", dir.display()));
            continue;
        }
        for name in DEBRIS {
            let path = dir.join(name);
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed.push(format!("{}", path.display()));
            }
        }
    }
    if ctx.json {
        outln!("{}", serde_json::json!({ "removed": removed }))?;
    } else if removed.is_empty() {
        outln!("Nothing to clean.")?;
    } else {
        for r in removed {
            outln!("removed {r}")?;
        }
    }
    Ok(())
}

/// A run directory `moat run -d` made a moment ago, whose background Moat
/// has not taken the lock yet (no events so far).
fn starting(dir: &Path) -> bool {
    !dir.join(runs::EVENTS).exists()
        && std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(30))
}

/// Remove Moat's containers of this `$MOAT_HOME` whose run is not alive.
/// Quiet when no engine answers, unless a run here used the docker runtime.
#[cfg(target_os = "linux")]
fn clean_containers(home: &crate::home::MoatHome, dirs: &[PathBuf]) -> Vec<String> {
    use crate::sandbox::docker;
    let runs = runs::runs_dir(home);
    let root = home.root().to_string_lossy().into_owned();
    let had_docker_runs = dirs.iter().any(|d| {
        events(d)
            .iter()
            .take(1)
            .any(|e| e["event"] == "start" && e["runtime"] == "docker")
    });
    let result = super::block_on(async {
        // An engine that does not answer quickly is not there for us.
        let engine = tokio::time::timeout(Duration::from_secs(5), docker::connect())
            .await
            .map_err(|_| "the engine did not answer in 5s".to_string())?
            .map_err(|e| e.to_string())?;
        let mut gone = Vec::new();
        for c in docker::containers(&engine, None)
            .await
            .map_err(|e| e.to_string())?
        {
            let dir = runs.join(&c.run);
            let ours = match &c.home {
                Some(h) => *h == root,
                // Made before the home label: ours if its run is here.
                None => dir.is_dir(),
            };
            if !ours || c.run.is_empty() || c.run.contains('/') || is_live(&dir) {
                continue;
            }
            match docker::remove(&engine, &c.id).await {
                Ok(()) => {
                    docker::removed(&engine, &c.id, Duration::from_secs(10)).await;
                    gone.push(format!("container {} ({})", c.name, c.state));
                }
                Err(e) => eprintln!("moat: removing container {}: {e}", c.name),
            }
        }
        Ok::<_, String>(gone)
    });
    match result.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(gone) => gone,
        Err(e) => {
            if had_docker_runs {
                eprintln!("moat: containers not checked: {e}");
            } else {
                tracing::info!("containers not checked: {e}");
            }
            Vec::new()
        }
    }
}
