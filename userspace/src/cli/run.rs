//! `moat run [DIR] [-- CMD ARGS…]`: a command in the transparent sandbox.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::Ctx;
use crate::proxy::{MoatCa, Policy};

#[derive(Args)]
#[command(after_help = "\
Examples:
  sudo moat run --grant github -- gh api user
  moat run --grant github -- printenv GH_TOKEN     # a placeholder; the real token is nowhere inside
  moat run ./project --grant openai -- python agent.py

Inside, every TCP connection goes to Moat's proxy and every DNS query to
Moat's resolver; other UDP, ICMP and IPv6 are blocked. Exit codes: the
command's own, 128+N if it died of signal N, 125 if the sandbox could not be
set up, 126/127 if the command cannot run / was not found.")]
pub struct RunArgs {
    /// Workspace directory (read-write, the command's working directory)
    #[arg(value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Credential to inject (repeatable; see 'moat grant list')
    #[arg(long = "grant", value_name = "NAME")]
    grants: Vec<String>,
    /// Set an environment variable inside (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// HOST:PORT=ADDR:PORT override for upstream connections (repeatable; added to MOAT_RESOLVE)
    #[arg(long, value_name = "HOST:PORT=ADDR:PORT")]
    resolve: Vec<String>,
    /// PEM file of extra CA roots to trust upstream (also MOAT_UPSTREAM_CA)
    #[arg(long, value_name = "FILE", env = "MOAT_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// The command and its arguments (default: your shell)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Variables passed through from the host; everything else stays outside.
const PASS: &[&str] = &[
    "PATH",
    "TERM",
    "LANG",
    "TZ",
    "COLORTERM",
    "USER",
    "LOGNAME",
    "SHELL",
    "NO_COLOR",
];
/// Variables pointing TLS clients at the merged bundle inside.
const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
    "AWS_CA_BUNDLE",
    "CARGO_HTTP_CAINFO",
];
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[cfg(target_os = "linux")]
pub fn run(ctx: &Ctx, args: RunArgs) -> Result<i32> {
    use crate::sandbox::{init, run};
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "moat run's transparent sandbox needs root for now (sudo moat run …); rootless user namespaces and --network-mode env are not in this build yet"
        );
    }
    let home = ctx.home()?;
    let store = ctx.store()?;
    let registry = ctx.registry()?;
    let grants = super::proxy::load_grants(&store, &registry, &args.grants)?;
    let workspace = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("workspace {}", args.dir.display()))?;
    if !workspace.is_dir() {
        bail!("workspace {} is not a directory", workspace.display());
    }

    let upstream = super::proxy::upstream_from(&args.resolve, args.upstream_ca.as_deref())?;
    let ca = Arc::new(MoatCa::load_or_create(&home)?);

    // The merged bundle: system roots + the Moat CA.
    let run_dir = home.root().join("runs").join(run_id());
    home.ensure_dir(&run_dir)?;
    let mut bundle = std::fs::read(SYSTEM_BUNDLE).unwrap_or_default();
    bundle.extend_from_slice(b"\n");
    bundle.extend_from_slice(ca.cert_pem().as_bytes());
    let bundle_path = run_dir.join("ca-bundle.pem");
    std::fs::write(&bundle_path, bundle)?;

    let mut env: Vec<(OsString, OsString)> = Vec::new();
    for (k, v) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if PASS.contains(&name.as_ref()) || name.starts_with("LC_") {
            env.push((k, v));
        }
    }
    env.push(("HOME".into(), init::HOME_INSIDE.into()));
    for var in CA_VARS {
        env.push(((*var).into(), init::BUNDLE_INSIDE.into()));
    }
    for g in &grants {
        if let (Some(var), Some(ph)) = (&g.provider.container_env, &g.placeholder) {
            env.push((var.into(), ph.into()));
        }
    }
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("-e expects KEY=VALUE, got '{kv}'")
        };
        env.retain(|(name, _)| name != k);
        env.push((k.into(), v.into()));
    }

    let mut hide = vec![
        home.root().to_owned(),
        PathBuf::from("/root"),
        PathBuf::from("/run/user"),
    ];
    if let Some(h) = std::env::var_os("HOME") {
        hide.push(h.into());
    }
    if let Some(sock) = std::env::var_os("SSH_AUTH_SOCK") {
        hide.push(sock.into());
    }
    hide.extend(["/var/run/docker.sock", "/run/docker.sock"].map(PathBuf::from));
    hide.sort();
    hide.dedup();

    let command = if args.command.is_empty() {
        vec![std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into())]
    } else {
        args.command
    };
    let run_as = home.owner().map(|o| (o.uid, o.gid));
    let code = run::run(run::RunSpec {
        grants,
        upstream,
        policy: Policy::default(),
        ca,
        bundle: bundle_path,
        workspace,
        hide,
        env,
        run_as,
        command,
    });
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(code?)
}

#[cfg(not(target_os = "linux"))]
pub fn run(_ctx: &Ctx, _args: RunArgs) -> Result<i32> {
    bail!(
        "moat run's sandbox is Linux-only in this build; --network-mode env is not in this build yet"
    )
}

fn run_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
