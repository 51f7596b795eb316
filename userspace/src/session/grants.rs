//! A run's credentials: the named grants (and moat.yaml's MCP servers)
//! decrypted into the proxy's injection table, the placeholder files for
//! the sandbox's HOME, and how Moat reaches upstreams. Values stay in
//! memory, in the proxy; the sandbox never sees them.

use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};

use crate::net::{Resolve, Upstream};
use crate::providers::{Registry, placeholder};
use crate::proxy::{Engine, Grant, Limits, MoatCa, Policy};
use crate::store::{CredName, Store};

/// The store's one migration, run where a run (or `moat proxy`) opens the
/// store, before anything is loaded: an old Claude OAuth token stored as
/// `anthropic` moves to `claude`, and `names` then say `claude` for it.
pub fn migrate(store: &Store, names: Vec<String>) -> Result<Vec<String>> {
    use crate::providers::migrate::{Migration, migrate_anthropic_oauth};
    let claude_related = names.iter().any(|n| n == "anthropic" || n == "claude");
    if !claude_related || migrate_anthropic_oauth(store)? != Migration::Moved {
        return Ok(names);
    }
    eprintln!(
        "moat: the OAuth token stored as 'anthropic' is a Claude token; moved to 'claude' (use --grant claude from now on)"
    );
    Ok(names
        .into_iter()
        .map(|n| if n == "anthropic" { "claude".into() } else { n })
        .collect())
}

/// Decrypt the named credentials into proxy grants (values stay in memory).
pub fn load_grants(store: &Store, registry: &Registry, names: &[String]) -> Result<Vec<Grant>> {
    let aws = Arc::new(Upstream::from_env()?);
    Ok(load(store, registry, names, &[], &aws)?.grants)
}

/// What a run gets from its credentials.
pub struct Loaded {
    pub grants: Vec<Grant>,
    /// Placeholder config files for the sandbox HOME (`.npmrc`, …).
    pub files: Vec<crate::providers::SandboxFile>,
    /// `ssh:HOST` grants: served by the run's SSH agent, not the proxy.
    pub ssh: Vec<crate::ssh::SshGrant>,
}

/// An MCP server from `moat.yaml`: the credential (`mcp-<name>`) whose token
/// goes into `server.header` on the server's host.
pub struct McpUse {
    pub grant: String,
    pub server: crate::providers::builtin::mcp::McpServer,
}

/// The named credentials (and MCP servers) as proxy grants plus the
/// sandbox's placeholder files. Values stay in memory. An `aws` grant's
/// STS calls go through `aws_upstream`.
pub fn load(
    store: &Store,
    registry: &Registry,
    names: &[String],
    mcp: &[McpUse],
    aws_upstream: &Arc<Upstream>,
) -> Result<Loaded> {
    let mut grants = Vec::new();
    let mut files = Vec::new();
    let mut ssh = Vec::new();
    for raw in names {
        let name = CredName::parse(raw)?;
        if grants.iter().any(|g: &Grant| g.name == name.as_str()) {
            continue;
        }
        if let Some(host) = name.as_str().strip_prefix("ssh:") {
            if !ssh.iter().any(|g: &crate::ssh::SshGrant| g.host == host) {
                ssh.push(ssh_grant(store, &name, host)?);
            }
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
        let aws = (provider.flow == crate::providers::Flow::Aws)
            .then(|| {
                let role = crate::aws::RoleConfig::from_metadata(&cred.metadata).map_err(|why| {
                    anyhow!("credential '{name}' is incomplete ({why}); run 'moat grant aws --role ARN' again")
                })?;
                let tag = format!("run-{}", std::process::id());
                anyhow::Ok(Arc::new(crate::aws::Session::new(
                    name.as_str(),
                    role,
                    aws_upstream.clone(),
                    &tag,
                )))
            })
            .transpose()?;
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
                aws: aws.clone(),
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
            aws: None,
        });
    }
    Ok(Loaded { grants, files, ssh })
}

/// The public key stored as `ssh:HOST`.
fn ssh_grant(store: &Store, name: &CredName, host: &str) -> Result<crate::ssh::SshGrant> {
    use secrecy::ExposeSecret;
    let cred = store.get(name)?;
    if cred.provider != "ssh" {
        anyhow::bail!(
            "credential '{name}' is for provider '{}', not ssh",
            cred.provider
        );
    }
    let key = ssh_key::PublicKey::from_openssh(cred.token.expose_secret()).map_err(|e| {
        anyhow!(
            "credential '{name}' does not hold a readable public key ({e}); run '{}' again",
            name.regrant_command()
        )
    })?;
    Ok(crate::ssh::SshGrant {
        host: host.to_owned(),
        key,
    })
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

/// The run's proxy: the one place an [`Engine`] is built (a run's, and
/// `moat proxy`'s).
pub fn engine(
    ca: Arc<MoatCa>,
    grants: &[Grant],
    upstream: Upstream,
    policy: Policy,
) -> Result<Arc<Engine>> {
    Ok(Engine::new(
        ca,
        grants,
        upstream,
        policy,
        Limits::default(),
    )?)
}
