//! Config trust: `moat.yaml` lives in the workspace, which the sandboxed
//! command may write. So a run takes from it only the access (grants,
//! secrets, host ports, network policy and rules, MCP servers, mounts,
//! unmasks: [`Config::access`]) the user has accepted. What was accepted is
//! kept outside every sandbox, in `~/.config/moat/trusted/` of the invoking
//! user (masked read-only inside): one record per `moat.yaml` path, with the
//! SHA-256 of the text accepted and its access lines.
//!
//! A file whose hash matches its record runs at once. Otherwise the access
//! lines are compared: a change that only narrows (or touches nothing of
//! the access) is recorded silently; one that widens is shown, and the run
//! starts only when the user says yes at the terminal, or passed `--yes`.
//! A first sight compares against Moat's defaults.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::home::MoatHome;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    path: PathBuf,
    sha256: String,
    access: Vec<String>,
}

/// What changed in the access lines: added (widening) and removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// The difference from `accepted` to `now` (both sorted, as from `access()`).
pub fn change(accepted: &[String], now: &[String]) -> Change {
    Change {
        added: now
            .iter()
            .filter(|l| !accepted.contains(l))
            .cloned()
            .collect(),
        removed: accepted
            .iter()
            .filter(|l| !now.contains(l))
            .cloned()
            .collect(),
    }
}

/// Where the records are: `HOME/.config/moat/trusted` of the invoking user.
fn dir(user_home: &Path) -> PathBuf {
    user_home.join(".config/moat/trusted")
}

fn record_path(dir: &Path, config: &Path) -> PathBuf {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(config.as_os_str().as_encoded_bytes());
    let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.json"))
}

/// Let the run use `config`'s access, or refuse. New access is asked for at
/// the terminal (when stdin and stderr are one), or accepted by `yes`.
/// The records live under `user_home`, the invoking user's real HOME.
pub fn check(config: &Config, user_home: &Path, home: &MoatHome, yes: bool) -> Result<()> {
    let (Some(path), Some(sha256)) = (&config.path, &config.sha256) else {
        return Ok(());
    };
    let trusted = &dir(user_home);
    let record_at = record_path(trusted, path);
    let record: Option<Record> = match std::fs::read(&record_at) {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(_) => None,
    };
    if record.as_ref().is_some_and(|r| &r.sha256 == sha256) {
        return Ok(());
    }
    let accepted = record.map_or_else(|| Config::default().access(), |r| r.access);
    let now = config.access();
    let change = change(&accepted, &now);
    if !change.added.is_empty() {
        let shown = show(path, &change);
        if yes {
            eprintln!("moat: accepted with --yes: {shown}");
        } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            eprint!("moat: {shown}\nRun with this access? [y/N] ");
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                bail!("not accepted: nothing ran; review {}", path.display());
            }
        } else {
            bail!(
                "{shown}\nReview it, then run moat run --yes (or run interactively to be asked). \
                 A command in an earlier run could have written it"
            );
        }
    }
    // A user without a home (nobody's /nonexistent) keeps no record: Moat
    // never creates a home, so each run asks again.
    if !user_home.is_dir() {
        return Ok(());
    }
    save(
        &record_at,
        &Record {
            path: path.clone(),
            sha256: sha256.clone(),
            access: now,
        },
        home,
    )
    .with_context(|| format!("recording the accepted config in {}", trusted.display()))
}

fn show(path: &Path, change: &Change) -> String {
    let mut text = format!("{} asks for access you have not accepted:", path.display());
    for l in &change.added {
        text.push_str(&format!("\n  + {l}"));
    }
    for l in &change.removed {
        text.push_str(&format!("\n  - {l}"));
    }
    text
}

/// Written whole (a temporary file renamed), 0600, owned by the invoking
/// user (the sudo caller under sudo).
fn save(at: &Path, record: &Record, home: &MoatHome) -> Result<()> {
    home.ensure_dir(at.parent().context("record path")?)?;
    let tmp = at.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)?;
    home.seal_perms(&tmp, 0o600)?;
    std::fs::rename(&tmp, at)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/w/moat.yaml")).unwrap()
    }

    #[test]
    fn a_widening_change_is_what_was_added() {
        let before = parse("grants: [github]\nnetwork:\n  policy: strict\n").access();
        let after = parse(
            "grants: [github]\nnetwork:\n  policy: strict\n  host: [7777]\nsecrets:\n  STOLEN: env://INVOKER_SECRET\n",
        )
        .access();
        let c = change(&before, &after);
        assert_eq!(
            c.added,
            [
                "host port 7777 (the host's 127.0.0.1:7777)",
                "secret STOLEN from env://INVOKER_SECRET"
            ]
        );
        assert!(c.removed.is_empty());
        // Dropping it again only narrows.
        assert!(change(&after, &before).added.is_empty());
    }

    #[test]
    fn defaults_and_plain_settings_grant_nothing_new() {
        let default = Config::default().access();
        let plain = parse("name: x\ncommand: make\nenv:\n  DEBUG: \"1\"\n").access();
        assert!(change(&default, &plain).added.is_empty());
        // Strict to permissive widens.
        let strict = parse("network:\n  policy: strict\n").access();
        assert_eq!(
            change(&strict, &plain).added,
            ["network policy permissive (any host, without credentials)"]
        );
    }

    #[test]
    fn records_are_per_config_path() {
        let d = Path::new("/t");
        assert_ne!(
            record_path(d, Path::new("/a/moat.yaml")),
            record_path(d, Path::new("/b/moat.yaml"))
        );
    }
}
