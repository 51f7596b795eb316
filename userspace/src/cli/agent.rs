//! `moat claude|codex|gemini [DIR] [flags] [-- AGENT-ARGS]`: `moat run` of
//! the agent's CLI, installed on first use into `$MOAT_HOME/agents/`
//! (`agents::install`), with its grant resolved, its state directory kept
//! per workspace and its telemetry and update checks off (`agents`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;

use super::Ctx;
use crate::agents::{Agent, INSTALL_INSIDE, install};

pub const AGENT_HELP: &str = "\
Examples:
  moat claude ./my-project                    Claude Code with your 'claude' grant (else 'anthropic')
  moat claude . -- -p \"explain this repo\"     arguments after -- go to the agent
  moat codex ./my-project --grant github      Codex with 'openai', plus GitHub
  moat gemini ./my-project                    the Gemini CLI with 'gemini'
  moat claude --agent-version 2.1.197 .       a pinned version (installed on first use)

The agent's CLI comes from npm (@anthropic-ai/claude-code, @openai/codex,
@google/gemini-cli), installed on first use into $MOAT_HOME/agents/<agent>/<version>
and reused afterwards without calling npm (needs Node.js and npm for the install).
Its state (~/.claude, ~/.codex, ~/.gemini inside) is kept per workspace in
$MOAT_HOME/agents/state/. Telemetry, error reports and update checks are switched
off. Every flag of 'moat run' applies (see moat run --help).

moat.yaml may set defaults:
  agent:
    claude: {version: 2.1.197, args: [--model, sonnet]}";

#[derive(Args)]
#[command(mut_arg("command", |a| a.help("Arguments for the agent's CLI (after --)").value_name("AGENT-ARGS")))]
pub struct AgentArgs {
    #[command(flatten)]
    run: super::run::RunArgs,
    /// The agent CLI's version (default: moat.yaml's agent: version, else the
    /// newest installed, else npm's latest); installed on first use
    #[arg(long, value_name = "VERSION")]
    agent_version: Option<String>,
}

pub fn run(ctx: &Ctx, agent: Agent, args: AgentArgs) -> Result<i32> {
    let mut request = super::run::request(args.run);
    let home = ctx.home()?;
    let workspace = std::fs::canonicalize(&request.dir)
        .with_context(|| format!("workspace {}", request.dir.display()))?;
    let config = crate::config::Config::find(&workspace)?;
    let defaults = config.agent.get(agent.name()).cloned().unwrap_or_default();
    let grant = resolve_grant(ctx, agent, &request.grants, &config.grants)?;
    if let Some(g) = &grant {
        request.grants.push(g.clone());
    }
    // In the background process of `moat run -d` the foreground one has
    // installed it already.
    let version = args.agent_version.or(defaults.version);
    let root = home.root().join("agents").join(agent.name());
    home.ensure_dir(&home.root().join("agents"))?;
    let installed = install::ensure(&root, agent, version.as_deref(), &|line| {
        eprintln!("moat: {line}")
    })?;
    let state = state_dir(&home, agent, &workspace, grant.as_deref())?;
    let inside_home = crate::sandbox::init::HOME_INSIDE;
    let program = Path::new(INSTALL_INSIDE).join(install::Installed::program(agent));
    let mut command: Vec<OsString> = vec![program.into()];
    command.extend(defaults.args.iter().map(OsString::from));
    command.append(&mut request.command);
    request.command = command;
    request.extras.env = agent.env(inside_home);
    request.extras.dirs = vec![
        (installed.dir, PathBuf::from(INSTALL_INSIDE), true),
        (state, Path::new(inside_home).join(agent.state_dir()), false),
    ];
    super::run::start(ctx, request)
}

/// The grant the agent runs with, unless the run names one already.
fn resolve_grant(
    ctx: &Ctx,
    agent: Agent,
    flags: &[String],
    yaml: &[String],
) -> Result<Option<String>> {
    let named = |names: &[&str]| {
        flags
            .iter()
            .chain(yaml)
            .any(|g| names.contains(&g.as_str()))
    };
    let store = ctx.store()?;
    match agent {
        Agent::Claude => {
            if named(&["claude", "anthropic"]) {
                return Ok(None);
            }
            let found = crate::providers::migrate::claude_agent_grant(&store)?;
            found.map(|n| Some(n.as_str().to_owned())).ok_or_else(|| {
                anyhow!(
                    "moat claude needs a Claude credential and none is stored: run 'moat grant claude' \
                     (Claude Code's OAuth token: setup-token, paste, or import), or 'moat grant anthropic' \
                     for an API key"
                )
            })
        }
        Agent::Codex | Agent::Gemini => {
            let grant = agent.default_grant();
            if named(&[grant]) {
                return Ok(None);
            }
            let name = crate::store::CredName::parse(grant)?;
            match store.get(&name) {
                Ok(_) => Ok(Some(grant.to_owned())),
                Err(crate::store::StoreError::NotFound { .. }) => bail!(
                    "moat {} needs the '{grant}' credential and it is not stored: run 'moat grant {grant}'",
                    agent.name()
                ),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// `$MOAT_HOME/agents/state/<agent>/<workspace>`, made with the agent's
/// first-run files (the user's later changes are kept).
fn state_dir(
    home: &crate::home::MoatHome,
    agent: Agent,
    workspace: &Path,
    grant: Option<&str>,
) -> Result<PathBuf> {
    let base = home.root().join("agents").join("state");
    let dir = base
        .join(agent.name())
        .join(crate::agents::workspace_key(workspace));
    for d in [&base, &base.join(agent.name()), &dir] {
        home.ensure_dir(d)?;
    }
    let grant = grant.unwrap_or(agent.default_grant());
    // The sandbox writes here too: what is there (the user's, the agent's,
    // or anything planted) is kept and never followed.
    for (rel, contents) in agent.state_files(grant) {
        if dir.join(&rel).symlink_metadata().is_ok() {
            continue;
        }
        crate::store::fsio::replace_in_shared_dir(home, &dir, &rel, contents.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", dir.join(&rel).display()))?;
    }
    Ok(dir)
}
