//! `moat init [DIR]`: a commented `moat.yaml` to start from.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::Ctx;
use super::output::outln;

#[derive(Args)]
#[command(after_help = "\
Writes DIR/moat.yaml with every key moat run reads, explained; all but name,
grants and network.policy are commented out. An existing moat.yaml (or
agent.yaml) is left alone unless --force.

Example:
  moat init && $EDITOR moat.yaml && moat run --grant github -- gh api user")]
pub struct InitArgs {
    /// The workspace directory
    #[arg(value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Overwrite an existing moat.yaml
    #[arg(long)]
    force: bool,
}

pub fn run(ctx: &Ctx, args: InitArgs) -> Result<()> {
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("workspace {}", args.dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let path = dir.join(crate::config::FILE_NAMES[0]);
    if !args.force {
        for name in crate::config::FILE_NAMES {
            let existing = dir.join(name);
            if existing.exists() {
                bail!(
                    "{} exists; moat init --force overwrites {}",
                    existing.display(),
                    path.display()
                );
            }
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "workspace".into());
    let text = crate::config::template(&name);
    // What we write must load.
    crate::config::Config::parse(&text, &path)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    if ctx.json {
        outln!("{}", serde_json::json!({ "written": path }))?;
    } else {
        outln!("wrote {}", path.display())?;
    }
    Ok(())
}
