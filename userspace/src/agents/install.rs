//! The agent CLIs' install cache: `$MOAT_HOME/agents/<agent>/<version>/`,
//! each an `npm install --prefix` of the agent's package, made on first use
//! (in a temporary directory renamed into place, so an interrupted install
//! leaves nothing half-made) and reused afterwards without calling npm.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, anyhow, bail};

use super::Agent;

/// An installed agent CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: String,
    /// The cache directory (`…/agents/<agent>/<version>`).
    pub dir: PathBuf,
}

impl Installed {
    /// The CLI's program, relative to [`Self::dir`].
    pub fn program(agent: Agent) -> PathBuf {
        Path::new("node_modules/.bin").join(agent.bin())
    }
}

/// Versions look like `2.1.197`, `0.61.0-preview.1`: nothing that could
/// escape a directory or reach npm as a flag.
pub fn check_version(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
    if ok {
        Ok(())
    } else {
        bail!("--agent-version '{v}' is not a version (e.g. 2.1.197, or latest)")
    }
}

/// The cached versions in `root` (`…/agents/<agent>`), newest first by
/// semantic version order of their numeric parts.
pub fn cached(root: &Path, agent: Agent) -> Vec<Installed> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<Installed> = entries
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.to_owned();
            if version.starts_with('.') {
                return None;
            }
            let dir = e.path();
            dir.join(Installed::program(agent))
                .exists()
                .then_some(Installed { version, dir })
        })
        .collect();
    found.sort_by_key(|i| std::cmp::Reverse(numeric(&i.version)));
    found
}

/// `2.1.197-x` → [2, 1, 197] (for ordering only).
fn numeric(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+'])
        .map_while(|p| p.parse().ok())
        .collect()
}

/// The agent at `wanted` (`None`: the newest cached, else the latest
/// published), installed into `root` first when not cached. `say` gets the
/// progress line.
pub fn ensure(
    root: &Path,
    agent: Agent,
    wanted: Option<&str>,
    say: &dyn Fn(&str),
) -> Result<Installed> {
    let cached = cached(root, agent);
    match wanted {
        Some("latest") => {}
        Some(v) => {
            check_version(v)?;
            if let Some(hit) = cached.iter().find(|i| i.version == v) {
                return Ok(hit.clone());
            }
        }
        None => {
            if let Some(newest) = cached.into_iter().next() {
                return Ok(newest);
            }
        }
    }
    let spec = format!("{}@{}", agent.package(), wanted.unwrap_or("latest"));
    let npm = which("npm").ok_or_else(|| {
        anyhow!(
            "moat {} installs {} with npm, which is not installed: install Node.js 18 or later \
             with npm (Debian/Ubuntu: sudo apt-get install nodejs npm; others: https://nodejs.org), \
             then run the command again",
            agent.name(),
            agent.package()
        )
    })?;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".install-")
        .tempdir_in(root)
        .with_context(|| format!("creating a directory in {}", root.display()))?;
    say(&format!(
        "installing {spec} into {} (first use; later runs reuse it)",
        root.display()
    ));
    let out = Command::new(&npm)
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .arg("--prefix")
        .arg(tmp.path())
        .arg(&spec)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", npm.display()))?;
    if !out.status.success() {
        bail!(
            "npm install {spec} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let manifest = tmp
        .path()
        .join("node_modules")
        .join(agent.package())
        .join("package.json");
    let version = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            anyhow!(
                "npm installed {spec}, but {} names no version",
                manifest.display()
            )
        })?;
    check_version(&version)?;
    if !tmp.path().join(Installed::program(agent)).exists() {
        bail!(
            "npm installed {spec}, but it has no '{}' program",
            agent.bin()
        );
    }
    let dir = root.join(&version);
    if dir.exists() {
        // Installed meanwhile by another run: keep that one.
        return Ok(Installed { version, dir });
    }
    std::fs::rename(tmp.path(), &dir)
        .with_context(|| format!("moving the install to {}", dir.display()))?;
    let _ = tmp.keep();
    say(&format!("installed {} {version}", agent.package()));
    Ok(Installed { version, dir })
}

/// `program` on PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_plain_and_ordered_numerically() {
        for ok in ["2.1.197", "0.61.0-preview.1", "1.0.0+build"] {
            check_version(ok).unwrap();
        }
        for bad in ["", "../x", "--registry=x", "1 2", "a/b"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        for v in ["2.1.9", "2.1.197", "10.0.0", ".install-x"] {
            let bin = dir.path().join(v).join(Installed::program(Agent::Claude));
            std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
            std::fs::write(&bin, "").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("3.0.0")).unwrap(); // no program: half made
        let versions: Vec<String> = cached(dir.path(), Agent::Claude)
            .into_iter()
            .map(|i| i.version)
            .collect();
        assert_eq!(versions, ["10.0.0", "2.1.197", "2.1.9"]);
    }

    #[test]
    fn a_cached_version_is_used_without_npm() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir
            .path()
            .join("1.2.3")
            .join(Installed::program(Agent::Codex));
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "").unwrap();
        let said = std::cell::RefCell::new(Vec::new());
        let say = |s: &str| said.borrow_mut().push(s.to_owned());
        let got = ensure(dir.path(), Agent::Codex, None, &say).unwrap();
        assert_eq!(got.version, "1.2.3");
        let pinned = ensure(dir.path(), Agent::Codex, Some("1.2.3"), &say).unwrap();
        assert_eq!(pinned, got);
        assert!(said.borrow().is_empty(), "no install line: {said:?}");
    }
}
