//! `moat proxy`: the explicit injecting proxy on its own (for tools on the
//! host, and for benchmarks).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use std::io::Write as _;

use super::output::outln;
use super::{Ctx, output};
use crate::net::{Resolve, Upstream};
use crate::providers::{HostPattern, Registry, placeholder};
use crate::proxy::{Engine, Grant, Limits, MoatCa, Policy};
use crate::store::{CredName, Store};

#[derive(Args)]
#[command(after_help = "\
Prints one line to stdout when ready, the proxy URL (http://moat:<password>@HOST:PORT);
logs go to stderr. Clients must trust the Moat CA: see 'moat ca path'.

Example:
  moat proxy --grant github > proxy.url &
  HTTPS_PROXY=$(cat proxy.url) curl --cacert \"$(moat ca path)\" https://api.github.com/user")]
pub struct ProxyArgs {
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Credential to inject (repeatable; see 'moat grant list')
    #[arg(long = "grant", value_name = "NAME")]
    grants: Vec<String>,
    /// HOST:PORT=ADDR:PORT override for upstream connections (repeatable; added to MOAT_RESOLVE)
    #[arg(long, value_name = "HOST:PORT=ADDR:PORT")]
    resolve: Vec<String>,
    /// PEM file of extra CA roots to trust upstream (also MOAT_UPSTREAM_CA)
    #[arg(long, value_name = "FILE", env = "MOAT_UPSTREAM_CA")]
    upstream_ca: Option<std::path::PathBuf>,
    /// Never intercept this host, even with a grant (clients that pin
    /// certificates): spliced, never injected. Repeatable; *.example.com works
    #[arg(long = "no-intercept", value_name = "HOST")]
    no_intercept: Vec<String>,
    /// Let this host reach restricted addresses (this host's loopback or own
    /// addresses; link-local only if named exactly). Repeatable; HOST or HOST:PORT
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    allow_host: Vec<String>,
    /// Intercept TLS for every host, not only granted ones (requests show up
    /// in -v logs; clients must trust the Moat CA for all hosts)
    #[arg(long)]
    inspect: bool,
}

/// Decrypt the named credentials into proxy grants (values stay in memory).
/// An old Claude OAuth token stored as `anthropic` is moved to `claude` first.
pub fn load_grants(store: &Store, registry: &Registry, names: &[String]) -> Result<Vec<Grant>> {
    Ok(load(store, registry, names, &[])?.grants)
}

/// What a run gets from its credentials.
pub struct Loaded {
    pub grants: Vec<Grant>,
    /// Placeholder config files for the sandbox HOME (`.npmrc`, …).
    pub files: Vec<crate::providers::SandboxFile>,
}

/// An MCP server from `moat.yaml`: the credential (`mcp-<name>`) whose token
/// goes into `server.header` on the server's host.
pub struct McpUse {
    pub grant: String,
    pub server: crate::providers::builtin::mcp::McpServer,
}

/// The named credentials (and MCP servers) as proxy grants plus the
/// sandbox's placeholder files. Values stay in memory.
pub fn load(
    store: &Store,
    registry: &Registry,
    names: &[String],
    mcp: &[McpUse],
) -> Result<Loaded> {
    use crate::providers::migrate::{Migration, migrate_anthropic_oauth};
    let claude_related = names.iter().any(|n| n == "anthropic" || n == "claude");
    let migrated = claude_related && migrate_anthropic_oauth(store)? == Migration::Moved;
    if migrated {
        eprintln!(
            "moat: the OAuth token stored as 'anthropic' is a Claude token; moved to 'claude' (use --grant claude from now on)"
        );
    }
    let mut grants = Vec::new();
    let mut files = Vec::new();
    for raw in names {
        let raw = if migrated && raw == "anthropic" {
            "claude"
        } else {
            raw.as_str()
        };
        let name = CredName::parse(raw)?;
        if grants.iter().any(|g: &Grant| g.name == name.as_str()) {
            continue;
        }
        let (cred, key) = store.get_with_placeholder_key(&name)?;
        let provider = registry.get(&cred.provider).ok_or_else(|| {
            anyhow!(
                "credential '{name}' is for provider '{}', which is no longer defined",
                cred.provider
            )
        })?;
        let placeholder = provider.placeholder.as_ref().map(|f| {
            use secrecy::ExposeSecret;
            placeholder::derive(f, &key, name.as_str(), cred.token.expose_secret())
        });
        if let Some(ph) = &placeholder {
            files.extend(provider.sandbox_files(&cred, ph));
        }
        let bindings = provider.bind(&cred)?;
        let live = provider.refresh_policy(&cred).map(|policy| {
            use crate::proxy::refresh::{LiveToken, StorePersist, SystemClock};
            let persist = StorePersist {
                store: Store::from_env(store.home().clone(), store.profile().cloned())?,
                name: name.clone(),
            };
            anyhow::Ok(Arc::new(LiveToken::new(
                name.as_str(),
                cred,
                policy,
                Arc::new(SystemClock),
                Arc::new(persist),
            )))
        });
        let live = live.transpose()?;
        for binding in bindings {
            grants.push(Grant {
                name: name.to_string(),
                provider: binding.provider,
                token: binding.token,
                placeholder: placeholder.clone(),
                live: live.clone(),
            });
        }
    }
    for m in mcp {
        let name = CredName::parse(&m.grant)?;
        let cred = store
            .get(&name)
            .with_context(|| format!("moat.yaml mcp '{}': credential '{name}'", m.server.name))?;
        let provider = registry.get(&cred.provider).ok_or_else(|| {
            anyhow!(
                "credential '{name}' is for provider '{}', which is no longer defined",
                cred.provider
            )
        })?;
        let binding = crate::providers::builtin::mcp::bind_server(provider, &m.server, &cred)?;
        grants.push(Grant {
            name: name.to_string(),
            provider: binding.provider,
            token: binding.token,
            placeholder: None,
            live: None,
        });
    }
    Ok(Loaded { grants, files })
}

/// How Moat reaches upstreams: `MOAT_RESOLVE` plus `--resolve` flags (the
/// flag winning for the same HOST:PORT), extra CA roots, the host's proxy.
pub fn upstream_from(
    resolve_flags: &[String],
    upstream_ca: Option<&std::path::Path>,
) -> Result<Upstream> {
    let mut resolve = Resolve::parse(
        &std::env::var("MOAT_RESOLVE").unwrap_or_default(),
        "MOAT_RESOLVE",
    )?;
    for entry in resolve_flags {
        resolve.add(entry, "--resolve")?;
    }
    let proxies = hyper_util::client::proxy::matcher::Matcher::from_env();
    Ok(Upstream::new(resolve, upstream_ca, proxies)?)
}

pub fn run(ctx: &Ctx, args: ProxyArgs) -> Result<()> {
    let home = ctx.home()?;
    let store = ctx.store()?;
    let registry = ctx.registry()?;
    let grants = load_grants(&store, &registry, &args.grants)?;
    let upstream = upstream_from(&args.resolve, args.upstream_ca.as_deref())?;
    let ca = Arc::new(MoatCa::load_or_create(&home)?);
    let patterns = |list: &[String]| -> Result<Vec<HostPattern>> {
        list.iter()
            .map(|h| HostPattern::parse(h).map_err(Into::into))
            .collect()
    };
    let policy = Policy {
        no_intercept: patterns(&args.no_intercept)?,
        allow_restricted: patterns(&args.allow_host)?,
        inspect_all: args.inspect,
        network: Default::default(),
    };
    let mut token_bytes = [0u8; 24];
    getrandom::fill(&mut token_bytes).map_err(|e| anyhow!("random: {e}"))?;
    let token = URL_SAFE_NO_PAD.encode(token_bytes);

    let rt = crate::proxy::runtime().context("starting the runtime")?;
    rt.block_on(async move {
        let engine = Engine::new(ca, &grants, upstream, policy, Limits::default())?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "http://moat:{token}@{host}:{}", addr.port())?;
            out.flush()?;
        }
        let names: Vec<&str> = grants.iter().map(|g| g.name.as_str()).collect();
        tracing::info!(%addr, grants = ?names, "moat proxy ready");
        let serve = tokio::spawn(engine.serve_explicit(listener, token));
        wait_for_signal().await?;
        serve.abort();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[derive(Args)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(clap::Subcommand)]
enum CaCommand {
    /// Print the path of the Moat CA certificate (created on first use)
    Path,
    /// Write the Moat CA certificate (PEM) to FILE, or to stdout
    Export { file: Option<std::path::PathBuf> },
}

pub fn run_ca(ctx: &Ctx, args: CaArgs) -> Result<()> {
    let ca = MoatCa::load_or_create(&ctx.home()?)?;
    match args.command {
        CaCommand::Path => outln!("{}", ca.cert_path().display())?,
        CaCommand::Export { file: None } => output::write_all(ca.cert_pem().as_bytes())?,
        CaCommand::Export { file: Some(f) } => {
            if f.is_dir() {
                bail!("{} is a directory; name a file", f.display());
            }
            std::fs::write(&f, ca.cert_pem())
                .with_context(|| format!("writing {}", f.display()))?;
        }
    }
    Ok(())
}
