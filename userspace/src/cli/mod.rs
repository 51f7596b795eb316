//! The command line. One file per command group; this file holds the shared
//! flags, the context every command gets, and error reporting.
//!
//! Commands write to stdout with `output::outln!`, never `println!`, which
//! panics when the reader has gone (`moat list | head -1`); clippy holds it.

#![deny(clippy::print_stdout)]

mod agent;
pub(crate) mod config_trust;
mod detach;
mod doctor;
mod grant;
mod init;
mod output;
mod prompt;
mod proxy;
mod revoke;
mod run;
mod runs;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{CommandFactory, Parser, Subcommand};

use crate::home::MoatHome;
use crate::providers::Registry;
use crate::store::{ProfileName, Store};

const ABOUT: &str = "Run AI agents with credentials they never see.";
const LONG_ABOUT: &str = "\
Run AI agents with credentials they never see.

Moat stores your tokens encrypted on this machine (AES-256-GCM; the key in the
system keychain, or a 0600 key file) and injects them per destination host from
a TLS-intercepting proxy, so the agent only ever holds placeholders.

Start with:
  moat grant github            store a credential (gh CLI, GITHUB_TOKEN/GH_TOKEN, or a prompt)
  moat grant list              what is stored
  moat grant providers         what can be granted, and for which hosts
  moat revoke github           delete a stored credential
  moat run --grant github -- gh api user    a command in the sandbox
  moat run -d -- CMD; moat logs -f RUN; moat stop RUN    runs in the background
  moat init                    write a commented moat.yaml
  moat proxy --grant github    an injecting HTTP proxy for tools on this host
  moat doctor                  what this machine supports

Environment:
  MOAT_HOME         state directory (default ~/.moat)
  MOAT_PROFILE      credential profile (same as --profile)
  MOAT_KEY_BACKEND  auto | keyring | file (where the encryption key lives)
  MOAT_RESOLVE      HOST:PORT=ADDR:PORT,... overrides for Moat's own connections
  MOAT_UPSTREAM_CA  PEM file of extra CA roots to trust upstream";

#[derive(Parser)]
#[command(name = "moat", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    /// Credential profile to use (a separate set of credentials)
    #[arg(long, global = true, env = "MOAT_PROFILE", value_name = "PROFILE")]
    profile: Option<String>,
    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace and the libraries' debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store a credential, or list what is stored and what can be granted
    Grant(Box<grant::GrantArgs>),
    /// Delete a stored credential
    Revoke(revoke::RevokeArgs),
    /// Run a command in the sandbox: all egress through the injecting proxy
    Run(run::RunArgs),
    /// Run Claude Code in the sandbox (installed on first use; 'claude' grant, else 'anthropic')
    #[command(after_help = agent::AGENT_HELP)]
    Claude(agent::AgentArgs),
    /// Run OpenAI's Codex CLI in the sandbox (installed on first use; 'openai' grant)
    #[command(after_help = agent::AGENT_HELP)]
    Codex(agent::AgentArgs),
    /// Run Google's Gemini CLI in the sandbox (installed on first use; 'gemini' grant)
    #[command(after_help = agent::AGENT_HELP)]
    Gemini(agent::AgentArgs),
    /// List runs (running, exited, stopped, killed) with their exit codes
    List,
    /// Print a detached run's output (-f: follow it until the run ends)
    Logs(runs::LogsArgs),
    /// Stop a run: SIGTERM to its command, SIGKILL after a timeout
    Stop(runs::StopArgs),
    /// Remove a finished run: its kept container (--keep) and its directory
    Destroy(runs::DestroyArgs),
    /// Remove what dead runs left behind (cgroups, containers, temporary files)
    Clean(runs::CleanArgs),
    /// Write a commented moat.yaml (into DIR, default the current directory)
    Init(init::InitArgs),
    /// Check what this machine supports and which mode 'moat run' will use
    Doctor,
    /// Run the credential-injecting proxy on its own (explicit HTTP proxy)
    Proxy(proxy::ProxyArgs),
    /// The Moat CA that signs intercepted connections
    Ca(proxy::CaArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "Example: moat completions bash > /etc/bash_completion.d/moat")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal: keychain access as the sudo caller
    #[command(name = "__keyring", hide = true)]
    Keyring { op: String },
    /// Internal: the sandbox's first process
    #[command(name = "__sandbox-init", hide = true)]
    SandboxInit {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Internal: env mode's masks, between moat run and the command
    #[command(name = "__env-init", hide = true)]
    EnvInit {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Internal: AWS credential_process inside the sandbox (asks the run's proxy)
    #[command(name = "__aws-credentials", hide = true)]
    AwsCredentials { args: Vec<String> },
    /// Internal: a docker run's entrypoint (waits for the redirect, then runs the command)
    #[command(name = "__container-init", hide = true)]
    ContainerInit {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// What every command may need, built on demand.
pub struct Ctx {
    pub json: bool,
    profile: Option<String>,
    /// In the background process of `moat run -d`: the run's id.
    pub detached_run: Option<String>,
}

impl Ctx {
    pub fn home(&self) -> Result<MoatHome> {
        Ok(MoatHome::from_env()?)
    }

    pub fn profile(&self) -> Result<Option<ProfileName>> {
        self.profile
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(ProfileName::parse)
            .transpose()
            .map_err(Into::into)
    }

    pub fn store(&self) -> Result<Store> {
        Ok(Store::from_env(self.home()?, self.profile()?)?)
    }

    /// All providers; problems with user provider files are printed as warnings.
    pub fn registry(&self) -> Result<Registry> {
        let (registry, warnings) = Registry::load(&self.home()?.providers_dir());
        for w in warnings {
            eprintln!("moat: warning: {w}");
        }
        Ok(registry)
    }
}

pub fn main() -> ExitCode {
    // First, before anything opens descriptors: the start pipe of `moat run -d`.
    let detached_run = crate::runs::take_started_fd();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    init_logging(cli.verbose);
    let ctx = Ctx {
        json: cli.json,
        profile: cli.profile,
        detached_run,
    };
    let command = match cli.command {
        #[cfg(target_os = "linux")]
        Command::SandboxInit { args } => match crate::sandbox::run::parse_init_args(args) {
            Ok(init_args) => crate::sandbox::init::main(init_args),
            Err(e) => {
                eprintln!("moat: __sandbox-init: {e}");
                return ExitCode::from(125);
            }
        },
        #[cfg(target_os = "linux")]
        Command::EnvInit { args } => match crate::sandbox::envinit::parse_args(args) {
            Ok(init_args) => crate::sandbox::envinit::main(init_args),
            Err(e) => {
                eprintln!("moat: __env-init: {e}");
                return ExitCode::from(125);
            }
        },
        #[cfg(target_os = "linux")]
        Command::ContainerInit { args } => match crate::sandbox::docker::parse_init_args(args) {
            Ok(init_args) => crate::sandbox::docker::init_main(init_args),
            Err(e) => {
                eprintln!("moat: __container-init: {e}");
                return ExitCode::from(125);
            }
        },
        // Light: no logging set-up, stdout is the SDK's JSON only.
        Command::AwsCredentials { args } => {
            return match crate::aws::process::main(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("moat: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        // Exit codes as docker run: the command's, or 125 when Moat fails.
        run @ (Command::Run(_) | Command::Claude(_) | Command::Codex(_) | Command::Gemini(_)) => {
            use crate::agents::Agent;
            let result = match run {
                Command::Run(args) => run::run(&ctx, args),
                Command::Claude(args) => agent::run(&ctx, Agent::Claude, args),
                Command::Codex(args) => agent::run(&ctx, Agent::Codex, args),
                Command::Gemini(args) => agent::run(&ctx, Agent::Gemini, args),
                _ => unreachable!("matched above"),
            };
            return match result {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                // `moat run -d … | true`: the run started; only its id went unread.
                Err(e) if stdout_closed(&e) => ExitCode::SUCCESS,
                Err(e) => {
                    report(ctx.json, &e);
                    ExitCode::from(125)
                }
            };
        }
        other => other,
    };
    let result = match command {
        Command::Grant(args) => grant::run(&ctx, *args),
        Command::Revoke(args) => revoke::run(&ctx, args),
        Command::Proxy(args) => proxy::run(&ctx, args),
        Command::List => runs::list(&ctx),
        Command::Logs(args) => runs::logs(&ctx, args),
        Command::Stop(args) => runs::stop(&ctx, args),
        Command::Destroy(args) => runs::destroy(&ctx, args),
        Command::Clean(args) => runs::clean(&ctx, args),
        Command::Init(args) => init::run(&ctx, args),
        Command::Doctor => doctor::run(&ctx),
        Command::Ca(args) => proxy::run_ca(&ctx, args),
        Command::Completions { shell } => {
            // clap_complete panics on a write error: generate, then write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "moat", &mut script);
            output::write_all(&script)
        }
        Command::Keyring { op } => {
            crate::store::keyring::helper_main(&op).context("keychain helper")
        }
        Command::Run(_)
        | Command::Claude(_)
        | Command::Codex(_)
        | Command::Gemini(_)
        | Command::AwsCredentials { .. }
        | Command::SandboxInit { .. }
        | Command::EnvInit { .. }
        | Command::ContainerInit { .. } => {
            unreachable!("handled above")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `moat list | head -1`: the reader has what it wanted.
        Err(e) if stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            report(ctx.json, &e);
            ExitCode::FAILURE
        }
    }
}

/// An error on stderr: `moat: error: MESSAGE`, or with `--json` one JSON
/// object on one line, `{"error": MESSAGE, "hint": WHAT_TO_DO | null}`.
/// The exit code is the caller's either way.
fn report(json: bool, e: &anyhow::Error) {
    let message = format!("{e:#}");
    if json {
        let hint = hint(&message);
        eprintln!("{}", serde_json::json!({ "error": message, "hint": hint }));
    } else {
        eprintln!("moat: error: {message}");
    }
}

/// The "what to do next" that ends most of Moat's messages (`…; run 'moat
/// grant github' again`), for `--json`'s `hint`: from the first clause after
/// "; ", " — " or ". " that starts with one of the verbs those messages use,
/// to the end.
fn hint(message: &str) -> Option<&str> {
    const VERBS: &[&str] = &[
        "run", "use", "set", "pass", "start", "install", "check", "give", "add", "remove",
        "restore", "unlock", "grant", "change", "enable", "name", "log in", "fix", "try", "move",
        "create", "edit", "upgrade", "see",
    ];
    let starts_with_verb = |clause: &str| {
        let lower = clause.trim_start().to_ascii_lowercase();
        VERBS.iter().any(|v| {
            lower.starts_with(v)
                && lower[v.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_ascii_alphabetic())
        })
    };
    ["; ", " — ", ". "]
        .iter()
        .filter_map(|sep| {
            message
                .match_indices(sep)
                .map(|(i, m)| i + m.len())
                .find(|&i| starts_with_verb(&message[i..]))
        })
        .min()
        .map(|i| message[i..].trim().trim_end_matches('.'))
        .filter(|h| !h.is_empty())
}

/// A command line clap refuses: as clap prints it, or with `--json` (seen
/// in the raw arguments, as parsing failed) one JSON object as [`report`]
/// writes; clap's exit code either way. Help and version print as usual.
fn usage_error(e: clap::Error) -> ! {
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if !(json && e.use_stderr()) {
        e.exit()
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let error = lines
        .next()
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .unwrap_or("invalid command line");
    let hint: Vec<&str> = lines.collect();
    eprintln!(
        "{}",
        serde_json::json!({ "error": error, "hint": (!hint.is_empty()).then(|| hint.join("; ")) })
    );
    std::process::exit(e.exit_code())
}

/// Did `e` come from writing to a standard output nobody reads any more?
fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<output::StdoutClosed>())
}

/// Moat's own logs at the level `-v`s ask for; its dependencies' (hyper,
/// rustls, zbus, ...) stay at warnings until `-vvv`, so `-vv` reads as Moat's
/// story, not the libraries' chatter.
fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (ours, theirs) = match verbose {
        0 => (LevelFilter::WARN, LevelFilter::WARN),
        1 => (LevelFilter::INFO, LevelFilter::WARN),
        2 => (LevelFilter::DEBUG, LevelFilter::WARN),
        3 => (LevelFilter::TRACE, LevelFilter::DEBUG),
        _ => (LevelFilter::TRACE, LevelFilter::TRACE),
    };
    let filter = Targets::new()
        .with_default(theirs)
        .with_target("moat", ours);
    tracing_subscriber::fmt()
        .with_max_level(ours)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .finish()
        .with(filter)
        .init();
}

/// Run a future on a small runtime (commands are synchronous at the top).
pub fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(fut))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hint_is_the_closing_what_to_do() {
        use super::hint;
        assert_eq!(
            hint("no credential 'x'; nothing is stored; run 'moat grant x' first"),
            Some("run 'moat grant x' first")
        );
        assert_eq!(
            hint("key file /k is accessible by other users (mode 0644); run: chmod 600 /k"),
            Some("run: chmod 600 /k")
        );
        assert_eq!(
            hint("a — the file was modified or corrupted; run 'moat grant x' again"),
            Some("run 'moat grant x' again")
        );
        assert_eq!(
            hint(
                "2 credential(s) were sealed with a key that is not available (x). Restore $MOAT_HOME/encryption.key from a backup; or, to start over, remove them."
            ),
            Some("Restore $MOAT_HOME/encryption.key from a backup; or, to start over, remove them")
        );
        assert_eq!(
            hint("cannot read /x: Permission denied (os error 13)"),
            None
        );
        // "running" is not "run".
        assert_eq!(hint("it failed; running out of time"), None);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
