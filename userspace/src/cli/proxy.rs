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
use crate::providers::HostPattern;
use crate::proxy::{MoatCa, Policy};

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

pub fn run(ctx: &Ctx, args: ProxyArgs) -> Result<()> {
    let home = ctx.home()?;
    let store = ctx.store()?;
    let registry = ctx.registry()?;
    let names = crate::session::grants::migrate(&store, args.grants)?;
    let grants = crate::session::grants::load_grants(&store, &registry, &names)?;
    let upstream =
        crate::session::grants::upstream_from(&args.resolve, args.upstream_ca.as_deref())?;
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
        let engine = crate::session::grants::engine(ca, &grants, upstream, policy)?;
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
