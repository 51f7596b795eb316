//! `moat list` and `moat clean`: the runs under `$MOAT_HOME/runs/`.
//!
//! A live run holds an exclusive lock on `runs/<id>/.lock` (released by the
//! kernel even when Moat is killed), so "is it running" never guesses from
//! pids. A run's `events.jsonl` says how it started and ended.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::Value;

use super::Ctx;

/// The lock file a live run holds.
pub const LOCK: &str = ".lock";
/// Files a run removes when it ends; a killed run leaves them behind.
const DEBRIS: [&str; 3] = ["ca-bundle.pem", "java-truststore.p12", "home-files"];

#[derive(Args)]
#[command(after_help = "\
Removes what runs that were killed left behind: their cgroups (eBPF
redirector) and temporary files. Each run's events.jsonl is kept unless
--events is given.")]
pub struct CleanArgs {
    /// Also delete the directories (events included) of finished runs
    #[arg(long)]
    events: bool,
}

/// One run as `moat list` shows it.
#[derive(Debug, serde::Serialize)]
struct RunInfo {
    id: String,
    state: &'static str,
    exit_code: Option<i64>,
    started: Option<String>,
    mode: Option<String>,
    command: Vec<String>,
    grants: Vec<String>,
}

fn runs_dir(ctx: &Ctx) -> Result<PathBuf> {
    Ok(ctx.home()?.root().join("runs"))
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

/// Is a `moat run` holding this run's lock right now?
fn is_live(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK)) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

fn info(dir: &Path) -> RunInfo {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let events: Vec<Value> = std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |name: &str| events.iter().find(|e| e["event"] == name);
    let start = find("start");
    let exit = find("exit");
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let state = match (is_live(dir), exit) {
        (true, _) => "running",
        (false, Some(e)) if e.get("error").is_some() => "failed",
        (false, Some(_)) => "exited",
        (false, None) => "killed",
    };
    RunInfo {
        id,
        state,
        exit_code: exit.and_then(|e| e["code"].as_i64()),
        started: start.and_then(|s| s["ts"].as_str().map(str::to_owned)),
        mode: start.and_then(|s| s["mode"].as_str().map(str::to_owned)),
        command: strings(start.map(|s| &s["command"])),
        grants: strings(start.map(|s| &s["grants"])),
    }
}

pub fn list(ctx: &Ctx) -> Result<()> {
    let runs: Vec<RunInfo> = run_dirs(&runs_dir(ctx)?)?.iter().map(|d| info(d)).collect();
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("No runs. Start one with: moat run --grant <name> -- <command>");
        return Ok(());
    }
    println!(
        "{:<10} {:<9} {:<5} {:<25} {:<12} COMMAND",
        "RUN", "STATE", "CODE", "STARTED", "GRANTS"
    );
    for r in runs {
        println!(
            "{:<10} {:<9} {:<5} {:<25} {:<12} {}",
            r.id,
            r.state,
            r.exit_code.map(|c| c.to_string()).unwrap_or("-".into()),
            r.started.as_deref().unwrap_or("-"),
            if r.grants.is_empty() {
                "-".to_owned()
            } else {
                r.grants.join(",")
            },
            r.command.join(" ")
        );
    }
    Ok(())
}

pub fn clean(ctx: &Ctx, args: CleanArgs) -> Result<()> {
    let mut removed = Vec::new();
    #[cfg(target_os = "linux")]
    if nix::unistd::geteuid().is_root() {
        for cg in crate::sandbox::cgroup::sweep_stale().context("removing stale run cgroups")? {
            removed.push(format!("cgroup {}", cg.display()));
        }
    }
    for dir in run_dirs(&runs_dir(ctx)?)? {
        if is_live(&dir) {
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
        println!("{}", serde_json::json!({ "removed": removed }));
    } else if removed.is_empty() {
        println!("Nothing to clean.");
    } else {
        for r in removed {
            println!("removed {r}");
        }
    }
    Ok(())
}
