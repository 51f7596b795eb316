//! `moat run [DIR] [-- CMD ARGS…]`: a command in the transparent sandbox.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::Ctx;
use crate::session::{self, Mode as NetworkMode, Redirect, RuntimeKind as Runtime};

#[derive(Args)]
#[command(after_help = "\
Examples:
  sudo moat run --grant github -- gh api user
  moat run --grant github -- printenv GH_TOKEN     # a placeholder; the real token is nowhere inside
  moat run ./project --grant openai -- python agent.py
  moat run --network-mode env --grant openai -- python agent.py
  moat run -p 3000 -- npm run dev                 # the dev server on the host's 127.0.0.1:3000
  sudo moat run --runtime docker --grant github -- gh api user   # in a container
  moat run -d --grant github -- ./agent.sh        # detached: prints the run id
  moat logs -f RUN; moat stop RUN; moat list      # (see moat help logs, stop, destroy)

Network modes:
  transparent  (default as root, and without root where unprivileged user
               namespaces work) the command gets its own network namespace:
               every TCP connection goes to Moat's proxy and every DNS query to
               Moat's resolver; other UDP, ICMP and IPv6 are blocked. Works for
               programs that ignore HTTP_PROXY. The host's HOME, ~/.moat, /root,
               /run/user, the SSH agent and docker.sock are hidden; system
               directories are read-only; HOME and /tmp are fresh.
  env          (default on macOS) HTTP_PROXY/HTTPS_PROXY point at Moat's proxy
               with a per-run password. Egress is not enforced. On Linux
               $MOAT_HOME, the SSH agent and credential files are masked; where
               they cannot be (no root, no user namespaces; macOS), moat run
               refuses unless --insecure-env.

moat.yaml in DIR (or agent.yaml; moat init writes a commented one) may set:
  command: [python, agent.py]     grants: [github]     env: {KEY: value}
  secrets: {DB_PASSWORD: op://vault/db/password}   # also ssm:///name, env://VAR
  network:
    policy: strict                # refuse hosts with no grant and no rule
    rules:
      - \"*.pypi.org\"
      - api.github.com: [\"allow GET /repos/**\", \"deny * /**\"]
    host: [5432]                  # host.moat.internal:5432 = the host's 127.0.0.1:5432
  runtime: docker                 # or native (--runtime, MOAT_RUNTIME win)
  image: my/image:tag             # or: dependencies: [python@3.11, node@20, git]
  base_image: debian:bookworm-slim   # what dependencies: are installed on
  mounts: [\"../data:/data:ro\"]     ports: [3000, \"8080:80\"]
  container: {memory: 2g, cpus: 1.5}

Each run's events (DNS, connections, injections, denials, exit) are written to
$MOAT_HOME/runs/<id>/events.jsonl.

Exit codes: the command's own, 128+N if it died of signal N, 125 if the
sandbox could not be set up, 126/127 if the command cannot run / was not found.")]
pub struct RunArgs {
    /// Workspace directory (read-write, the command's working directory)
    #[arg(value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Credential to inject (repeatable; merged with moat.yaml's grants)
    #[arg(long = "grant", value_name = "NAME")]
    grants: Vec<String>,
    /// Set an environment variable inside (repeatable; wins over moat.yaml)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// How the command's traffic reaches the proxy [default: transparent as root or with user namespaces, else env]
    #[arg(long, value_enum, env = "MOAT_NETWORK_MODE")]
    network_mode: Option<NetworkMode>,
    /// Run in env mode even where it cannot mask $MOAT_HOME and the credential
    /// files from the command (no user namespaces, macOS): the command can then
    /// read Moat's key and every stored credential
    #[arg(long)]
    insecure_env: bool,
    /// Accept what moat.yaml asks for beyond what you accepted before (new
    /// grants, secrets, host ports, network rules, MCP servers, mounts,
    /// unmasks) without being asked; without a terminal, such a moat.yaml is
    /// refused unless this is given
    #[arg(short = 'y', long)]
    yes: bool,
    /// How transparent mode redirects connections
    #[arg(long, value_enum, default_value = "nft")]
    redirect: Redirect,
    /// Where the command runs [default: moat.yaml's runtime, else native]
    #[arg(long, value_enum, env = "MOAT_RUNTIME")]
    runtime: Option<Runtime>,
    /// (docker) Build the image from moat.yaml's dependencies even if it is cached
    #[arg(long)]
    rebuild: bool,
    /// (docker) Keep the container after the run
    #[arg(long)]
    keep: bool,
    /// Run in the background: print the run id once the command has started;
    /// output goes to the run's log (moat logs RUN)
    #[arg(short = 'd', long)]
    detach: bool,
    /// Publish a sandbox port on the host's 127.0.0.1 (HOSTPORT:PORT or PORT; repeatable)
    #[arg(short = 'p', long = "publish", value_name = "HOSTPORT:PORT")]
    publish: Vec<String>,
    /// HOST:PORT=ADDR:PORT override for upstream connections (repeatable; added to MOAT_RESOLVE)
    #[arg(long, value_name = "HOST:PORT=ADDR:PORT")]
    resolve: Vec<String>,
    /// PEM file of extra CA roots to trust upstream (also MOAT_UPSTREAM_CA)
    #[arg(long, value_name = "FILE", env = "MOAT_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// The command and its arguments (default: moat.yaml's command, else your shell)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn run(ctx: &Ctx, args: RunArgs) -> Result<i32> {
    start(ctx, request(args))
}

/// What `moat run`'s flags ask for.
pub fn request(args: RunArgs) -> session::Request {
    session::Request {
        dir: args.dir,
        grants: args.grants,
        env: args.env,
        network_mode: args.network_mode,
        insecure_env: args.insecure_env,
        yes: args.yes,
        redirect: args.redirect,
        runtime: args.runtime,
        rebuild: args.rebuild,
        keep: args.keep,
        detach: args.detach,
        publish: args.publish,
        resolve: args.resolve,
        upstream_ca: args.upstream_ca,
        command: args.command,
        extras: session::Extras::default(),
    }
}

/// Run `request` (for `moat run` and the agent commands).
pub fn start(ctx: &Ctx, request: session::Request) -> Result<i32> {
    let store = || ctx.store();
    let registry = || ctx.registry();
    let detach = |home: &crate::home::MoatHome| super::detach::start(ctx, home);
    session::run(
        request,
        session::Sources {
            home: ctx.home()?,
            store: &store,
            registry: &registry,
            detach: &detach,
            detached_run: ctx.detached_run.clone(),
        },
    )
}
