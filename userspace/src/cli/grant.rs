//! `moat grant <provider>`, `moat grant list|providers|show`.
//!
//! Provider-specific flows live in `grant/`: Claude (setup-token, paste,
//! import), npm (registries), OAuth (token endpoint, refresh token).

mod aws;
mod claude;
mod gemini;
mod meta;
mod npm;
mod oauth;
pub mod ssh;

use std::io::{IsTerminal, Read};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::output::outln;
use super::{Ctx, output};
use crate::net::Upstream;
use crate::providers::validate::{self, Outcome};
use crate::providers::{Flow, Injection, Origin, Provider, Registry};
use crate::store::credential::rfc3339;
use crate::store::{Created, CredName, Credential, Kind, Store};

const GRANT_HELP: &str = "\
Examples:
  moat grant github                      gh CLI token, else GITHUB_TOKEN/GH_TOKEN, else a prompt
  echo \"$TOKEN\" | moat grant gitlab --token-stdin
  moat grant openai --no-validate        save without the validation request
  moat grant claude                      claude setup-token, paste a token, or import Claude Code's login
  moat grant claude --import             import ~/.claude/.credentials.json (no questions)
  moat grant anthropic                   API key from ANTHROPIC_API_KEY or a prompt
  moat grant gemini --import             import the Gemini CLI's Google login (refreshed by Moat)
  META_APP_ID=… META_APP_SECRET=… moat grant meta   token from META_ACCESS_TOKEN, exchanged daily
  moat grant npm                         registries from ~/.npmrc (//host/:_authToken=) and NPM_TOKEN
  moat grant npm --host npm.corp.test    add or replace one registry (calls merge into 'npm')
  printf %s \"$REFRESH\" | moat grant oauth corp --token-url https://auth.corp.test/token \\
      --client-id moat --host api.corp.test --token-stdin     stored as oauth-corp, refreshed by Moat
  moat grant oauth corp --auth-url https://auth.corp.test/authorize \\
      --token-url https://auth.corp.test/token --client-id moat --host api.corp.test \\
      --scope offline_access                 log in through the browser (Authorization Code + PKCE)
  moat grant aws --role arn:aws:iam::123456789012:role/AgentRole --region us-west-2 --session-duration 1h
                                         assume the role with the host's AWS credentials; the role is stored, no key
  moat grant aws --role ARN --inject sigv4   the sandbox gets placeholder keys; Moat re-signs its AWS requests
  moat grant mcp context7                stored as mcp-context7
  moat grant ssh --host github.com       a key of your SSH agent (SSH_AUTH_SOCK) for github.com, stored as ssh:github.com
  moat grant ssh --host git.corp.test --key SHA256:…   the agent's key with that fingerprint (or comment)
  moat grant github --profile work       into the 'work' profile
  moat grant github --host ghe.corp.test GitHub Enterprise (API at /api/v3), stored as github:ghe.corp.test
  moat grant list --json
  moat grant providers";

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true, after_help = GRANT_HELP)]
pub struct GrantArgs {
    #[command(subcommand)]
    sub: Option<GrantSub>,
    /// Provider to grant (see 'moat grant providers')
    #[arg(required = true)]
    provider: Option<String>,
    /// For 'mcp' and 'oauth': the name (stored as mcp-<name>, oauth-<name>)
    server: Option<String>,
    /// Save without making the provider's validation request
    #[arg(long)]
    no_validate: bool,
    /// Read the token from standard input (a pipe) instead of env or a prompt
    #[arg(long)]
    token_stdin: bool,
    /// Import the login of the provider's own tool without asking: Claude
    /// Code's ~/.claude/.credentials.json for 'claude', the Gemini CLI's
    /// ~/.gemini/oauth_creds.json for 'gemini'
    #[arg(long, conflicts_with = "token_stdin")]
    import: bool,
    /// For 'npm': the registry host (or URL) to add or replace; repeated
    /// calls merge into one credential. For 'oauth': a host to inject the
    /// access token on (repeatable). For 'github': a GitHub Enterprise Server
    /// host (stored as github:HOST). For 'ssh': the host the key is for
    /// (stored as ssh:HOST; required)
    #[arg(long, value_name = "HOST")]
    host: Vec<String>,
    /// For 'ssh': which key of your SSH agent to grant, by fingerprint
    /// (SHA256:…, as 'ssh-add -l' prints it) or comment (default: the only
    /// key; with several, a question on the terminal)
    #[arg(long, value_name = "FINGERPRINT|COMMENT")]
    key: Option<String>,
    /// For 'oauth': the token endpoint (https://…/token)
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// For 'oauth': the OAuth client id
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// For 'oauth': log in through the browser instead of pasting a refresh
    /// token (Authorization Code + PKCE): the authorization endpoint
    /// (https://…/authorize). Moat prints the URL to open and waits for the
    /// redirect to http://127.0.0.1:PORT/callback
    #[arg(long, value_name = "URL", conflicts_with_all = ["token_stdin", "import"])]
    auth_url: Option<String>,
    /// For 'oauth' with --auth-url: a scope to ask for (repeatable; many
    /// servers give a refresh token only for e.g. 'offline_access')
    #[arg(long, value_name = "SCOPE", requires = "auth_url")]
    scope: Vec<String>,
    /// For 'oauth' with --auth-url: the loopback port to listen on for the
    /// redirect (default: any free port; give one when the OAuth client only
    /// allows a fixed redirect URI)
    #[arg(long, value_name = "PORT", requires = "auth_url")]
    redirect_port: Option<u16>,
    /// For 'oauth' with --auth-url: how long to wait for the browser
    /// (e.g. 90s, 10m; default 5m)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "auth_url")]
    auth_timeout: Option<std::time::Duration>,
    /// For 'aws': the IAM role to assume (arn:aws:iam::ACCOUNT_ID:role/NAME)
    #[arg(long, value_name = "ARN")]
    role: Option<String>,
    /// For 'aws': the region for STS and the sandbox's AWS_REGION (default:
    /// the AWS config's)
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// For 'aws': how long each role session lasts, e.g. 30m, 1h, 2h30m
    /// (default 15m; at most the role's maximum, 12h)
    #[arg(long, value_name = "DURATION")]
    session_duration: Option<String>,
    /// For 'aws': the external ID the role's trust policy asks for
    #[arg(long, value_name = "ID")]
    external_id: Option<String>,
    /// For 'aws': the host's AWS profile that assumes the role (default:
    /// AWS_PROFILE, else the default chain); stored with the grant
    #[arg(long, value_name = "PROFILE")]
    aws_profile: Option<String>,
    /// For 'aws': how the sandbox gets access. credential-process (default):
    /// AWS_CONFIG_FILE runs a helper that fetches short-lived keys from
    /// Moat. sigv4: the sandbox holds placeholder keys only and Moat's proxy
    /// re-signs every AWS request
    #[arg(long, value_name = "MODE")]
    inject: Option<String>,
}

#[derive(Subcommand)]
enum GrantSub {
    /// List stored credentials (name, provider, profile, source, created, expiry)
    List,
    /// List providers that can be granted: built-in, shipped and custom, with hosts
    Providers,
    /// Show a stored credential's details (not its value, unless --reveal)
    Show {
        /// Credential name (as in 'moat grant list')
        name: String,
        /// Also print the secret value (this host's user owns it; the sandbox never sees it)
        #[arg(long)]
        reveal: bool,
    },
}

pub fn run(ctx: &Ctx, args: GrantArgs) -> Result<()> {
    match args.sub {
        Some(GrantSub::List) => list(ctx),
        Some(GrantSub::Providers) => providers(ctx),
        Some(GrantSub::Show { name, reveal }) => show(ctx, &name, reveal),
        None => {
            let provider = args
                .provider
                .clone()
                .ok_or_else(|| anyhow!("name a provider: moat grant <provider>"))?;
            grant(ctx, &provider, &args)
        }
    }
}

fn unknown_provider(registry: &Registry, name: &str) -> anyhow::Error {
    anyhow!(
        "unknown provider '{name}'; known providers: {} (details: moat grant providers)",
        registry.names().join(", ")
    )
}

fn grant(ctx: &Ctx, requested: &str, args: &GrantArgs) -> Result<()> {
    let registry = ctx.registry()?;
    let provider = registry
        .get(requested)
        .ok_or_else(|| unknown_provider(&registry, requested))?;
    if let Flow::Pending(what) = provider.flow {
        bail!("{what}; the provider is listed so runs and scripts can name it");
    }
    if args.import && !matches!(provider.flow, Flow::Claude | Flow::Gemini) {
        bail!(
            "--import is for providers with a local tool to import from (claude, gemini); 'moat grant {}' does not take it",
            provider.name
        );
    }
    let enterprise;
    let (provider, name) = match (provider.name.as_str(), args.host.as_slice()) {
        ("github", [host]) => {
            let host = host.trim().to_ascii_lowercase();
            enterprise = crate::providers::builtin::github::enterprise(provider, &host)?;
            (&enterprise, CredName::parse(&format!("github:{host}"))?)
        }
        ("github", [_, _, ..]) => {
            bail!("name one GitHub Enterprise host per call: moat grant github --host HOST")
        }
        ("ssh", [host]) => (
            provider,
            CredName::parse(&format!("ssh:{}", ssh::host_name(host)?))?,
        ),
        ("ssh", []) => bail!(
            "moat grant ssh needs the host the key is for: moat grant ssh --host HOST, e.g. moat grant ssh --host github.com"
        ),
        ("ssh", _) => bail!(
            "name one host per call: moat grant ssh --host HOST (grant the same key again for another host)"
        ),
        (_, [_, ..]) if !matches!(provider.flow, Flow::Npm | Flow::Oauth) => bail!(
            "--host is for 'moat grant ssh', 'moat grant npm', 'moat grant oauth' and 'moat grant github' (Enterprise); 'moat grant {}' does not take it",
            provider.name
        ),
        _ => (provider, credential_name(provider, args.server.as_deref())?),
    };
    if (args.token_url.is_some() || args.client_id.is_some() || args.auth_url.is_some())
        && provider.flow != Flow::Oauth
    {
        bail!("--token-url, --client-id and --auth-url are for 'moat grant oauth <name>'");
    }
    let aws_flags = args.role.is_some()
        || args.region.is_some()
        || args.session_duration.is_some()
        || args.external_id.is_some()
        || args.aws_profile.is_some()
        || args.inject.is_some();
    if aws_flags && provider.flow != Flow::Aws {
        bail!(
            "--role, --region, --session-duration, --external-id, --aws-profile and --inject are for 'moat grant aws'"
        );
    }
    if args.key.is_some() && provider.flow != Flow::Ssh {
        bail!("--key is for 'moat grant ssh'");
    }
    let store = ctx.store()?;

    let mut cred = match provider.flow {
        Flow::Aws => aws::obtain(args)?,
        Flow::Ssh => {
            let host = name.as_str().strip_prefix("ssh:").unwrap_or_default();
            ssh::obtain(host, args.key.as_deref())?
        }
        Flow::Claude => claude::obtain(provider, args)?,
        Flow::Npm => npm::obtain(provider, args, store.get(&name).ok())?,
        Flow::Oauth => oauth::obtain(provider, args)?,
        Flow::Gemini => gemini::obtain(provider, &name, args)?,
        Flow::Meta => meta::obtain(provider, &name, args)?,
        _ => {
            let (token, source) = obtain_token(provider, &name, args.token_stdin)?;
            Credential::new_static(&provider.name, token, source)
        }
    };
    if let Some(host) = name.as_str().strip_prefix("github:") {
        cred.metadata.insert(
            crate::providers::builtin::github::ENTERPRISE_HOST.into(),
            host.to_owned(),
        );
    }
    if let Err(why) = provider.check_token(cred.token.expose_secret()) {
        bail!("{why}. Nothing was saved");
    }
    if !args.no_validate
        && let Some(identity) = validate_token(provider, cred.token.expose_secret())?
    {
        cred.metadata.insert("identity".into(), identity);
    }
    if let Ok(previous) = store.get(&name) {
        cred.created_at = previous.created_at;
    }
    if let Created::Yes(place) = store.put(&name, &cred)? {
        eprintln!("moat: {place}");
    }
    if ctx.json {
        output::json(
            &json!({ "name": name.as_str(), "provider": provider.name, "profile": store.profile().map(|p| p.as_str()), "saved": true }),
        )?;
    } else if let Some(host) = name.as_str().strip_prefix("ssh:") {
        outln!("Granted SSH access to {host}")?;
    } else if name.as_str() == provider.name {
        outln!("{} credential saved", provider.title)?;
    } else {
        outln!("{} credential '{name}' saved", provider.title)?;
    }
    Ok(())
}

fn credential_name(provider: &Provider, server: Option<&str>) -> Result<CredName> {
    match (provider.name.as_str(), server) {
        ("mcp", Some(server)) => Ok(CredName::parse(&format!("mcp-{server}"))?),
        ("oauth", Some(server)) => Ok(CredName::parse(&format!("oauth-{server}"))?),
        ("oauth", None) => bail!(
            "name the credential: moat grant oauth <name> --token-url URL --client-id ID --host HOST"
        ),
        ("mcp", None) => {
            bail!("name the MCP server: moat grant mcp <name> (as in moat.yaml's mcp: entries)")
        }
        (_, Some(extra)) => bail!(
            "unexpected argument '{extra}': 'moat grant {}' takes no name",
            provider.name
        ),
        (name, None) => Ok(CredName::parse(name)?),
    }
}

/// The token and where it came from: `--token-stdin`, the provider's
/// environment variables in order, then a hidden prompt on a terminal.
fn obtain_token(
    provider: &Provider,
    name: &CredName,
    from_stdin: bool,
) -> Result<(SecretString, String)> {
    if from_stdin {
        return Ok((token_from_stdin(provider)?, "stdin".into()));
    }
    if let Some(found) = token_from_command(provider)? {
        return Ok(found);
    }
    for var in &provider.source_env {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let value = zeroize::Zeroizing::new(value.to_string_lossy().into_owned());
            eprintln!("Using token from {var}");
            return Ok((checked_token(&value, var)?, format!("env:{var}")));
        }
    }
    if std::io::stdin().is_terminal() {
        match &provider.prompt {
            Some(text) => eprintln!("{text}"),
            None => eprintln!("Enter the credential for {name}."),
        }
        let entered =
            zeroize::Zeroizing::new(super::prompt::hidden("Token: ").context("reading the token")?);
        return Ok((checked_token(&entered, "the prompt")?, "prompt".into()));
    }
    let tried = if provider.source_env.is_empty() {
        format!("{} reads no environment variable", provider.name)
    } else if let [only] = provider.source_env.as_slice() {
        format!("{only} is not set")
    } else {
        format!("none of {} is set", provider.source_env.join(", "))
    };
    bail!(
        "no token for '{}': {tried}, and stdin is not a terminal to prompt on; set the variable, or pipe the token with --token-stdin",
        provider.name
    )
}

/// The provider's CLI (`gh auth token`), when it is installed and logged in.
/// On a terminal the user confirms; otherwise it is used as found.
fn token_from_command(provider: &Provider) -> Result<Option<(SecretString, String)>> {
    let Some(source) = &provider.source_command else {
        return Ok(None);
    };
    let Some((program, args)) = source.argv.split_first() else {
        return Ok(None);
    };
    let Ok(out) = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    else {
        return Ok(None); // not installed
    };
    let text = zeroize::Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
    if !out.status.success() || text.trim().is_empty() {
        return Ok(None); // installed, not logged in
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Found {} authentication", source.label);
        if !confirm(&format!("Use token from {}?", source.label))? {
            return Ok(None);
        }
    } else {
        eprintln!("Using token from {}", source.label);
    }
    Ok(Some((
        checked_token(&text, source.label)?,
        source.id.to_owned(),
    )))
}

/// A yes/no question on the terminal; Enter means yes.
fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [Y/n]: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(!matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "n" | "no"
    ))
}

/// The whole of a piped stdin as a token (`--token-stdin`).
fn token_from_stdin(provider: &Provider) -> Result<SecretString> {
    if std::io::stdin().is_terminal() {
        bail!(
            "--token-stdin reads a pipe; try: printf %s \"$TOKEN\" | moat grant {}",
            provider.name
        );
    }
    let mut buf = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut buf)
        .context("reading the token from stdin")?;
    checked_token(&buf, "standard input")
}

fn checked_token(raw: &str, origin: &str) -> Result<SecretString> {
    let token = raw.trim();
    if token.is_empty() {
        bail!("the token from {origin} is empty");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "the token from {origin} contains spaces or control characters; check what was pasted"
        );
    }
    Ok(SecretString::from(token))
}

/// Make the provider's validation request. `Ok(Some(login))` when the API
/// names the token's owner. Any failure: nothing is saved.
fn validate_token(provider: &Provider, token: &str) -> Result<Option<String>> {
    let Some(req) = validate::build(provider, token) else {
        return Ok(None);
    };
    if provider.validate.as_ref().is_some_and(|v| v.confirm)
        && std::io::stdin().is_terminal()
        && !confirm("Validate the token with a test request? This makes a small API call.")?
    {
        return Ok(None);
    }
    eprintln!("Validating token...");
    let upstream = Upstream::from_env()?;
    let header = req
        .header
        .as_ref()
        .map(|(n, v)| (n.as_str(), v.expose_secret()));
    let headers: Vec<(&str, &str)> = header
        .into_iter()
        .chain(
            req.extra_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        )
        .collect();
    let fetched = super::block_on(upstream.fetch(&req.method, req.url.expose_secret(), &headers, Default::default()))?
        .map_err(|e| anyhow!("cannot validate the token: {e}. Nothing was saved; fix the connection, or save without checking: --no-validate"))?;
    match validate::judge(fetched.status, &fetched.body, token) {
        Outcome::Valid {
            identity: Some(who),
        } => {
            eprintln!("Authenticated as: {who}");
            Ok(Some(who))
        }
        Outcome::Valid { identity: None } => {
            eprintln!("Token is valid.");
            Ok(None)
        }
        Outcome::Rejected { status, message } => bail!(
            "{} rejected the token (HTTP {status}: {message}). Nothing was saved; check the token and grant again",
            provider.title
        ),
        Outcome::Unexpected { status, message } => bail!(
            "validation at {} answered HTTP {status} ({message}). Nothing was saved; try again, or save without checking: --no-validate",
            req.describe_host()
        ),
    }
}

fn list(ctx: &Ctx) -> Result<()> {
    let store = ctx.store()?;
    let profile = store.profile().map(|p| p.as_str().to_owned());
    let registry = ctx.registry()?;
    let now = std::time::SystemTime::now();
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for name in store.names()? {
        match store.get(&name) {
            Ok(c) => {
                let expires = c.expires_at.map(rfc3339);
                let expired = c.expires_at.is_some_and(|t| t <= now);
                // OAuth credentials with a refresh token (Gemini, oauth-*,
                // Meta): Moat gets a new token when a run next uses it.
                let refreshed = registry
                    .get(&c.provider)
                    .and_then(|p| p.refresh_policy(&c))
                    .is_some();
                let shown = match (&expires, expired, refreshed) {
                    (None, _, _) => "never".to_owned(),
                    (Some(t), false, _) => t.clone(),
                    (Some(t), true, true) => {
                        format!("{t} (expired; Moat refreshes it on next use)")
                    }
                    (Some(t), true, false) => {
                        format!("{t} (EXPIRED; run '{}' again)", name.regrant_command())
                    }
                };
                rows.push(vec![
                    name.to_string(),
                    c.provider.clone(),
                    profile.clone().unwrap_or_else(|| "default".into()),
                    c.source.clone(),
                    rfc3339(c.created_at),
                    shown,
                ]);
                items.push(json!({
                    "name": name.as_str(), "provider": c.provider, "kind": kind(c.kind), "profile": profile,
                    "source": c.source, "created": rfc3339(c.created_at), "updated": rfc3339(c.updated_at),
                    "expires": expires, "expired": expired, "refreshed_by_moat": refreshed, "error": null,
                }));
            }
            Err(e) => {
                rows.push(vec![
                    name.to_string(),
                    "?".into(),
                    profile.clone().unwrap_or_else(|| "default".into()),
                    format!("unreadable: {e}"),
                    String::new(),
                    String::new(),
                ]);
                items.push(
                    json!({ "name": name.as_str(), "profile": profile, "error": e.to_string() }),
                );
            }
        }
    }
    if ctx.json {
        output::json(&serde_json::Value::Array(items))?;
    } else if rows.is_empty() {
        let scope = profile
            .map(|p| format!(" in profile '{p}'"))
            .unwrap_or_default();
        outln!(
            "No credentials stored{scope}. Store one with: moat grant <provider> (see moat grant providers)"
        )?;
    } else {
        output::table(
            &[
                "NAME", "PROVIDER", "PROFILE", "SOURCE", "CREATED", "EXPIRES",
            ],
            &rows,
        )?;
    }
    Ok(())
}

fn kind(k: Kind) -> &'static str {
    match k {
        Kind::Static => "static",
        Kind::Oauth => "oauth",
    }
}

fn injection_json(p: &Provider) -> serde_json::Value {
    use crate::providers::HeaderValue;
    match &p.injection {
        Injection::Headers(rules) => json!(rules
            .iter()
            .map(|r| {
                let (prefix, basic_user, value) = match &r.value {
                    HeaderValue::Prefixed(prefix) => (Some(prefix.as_str()), None, None),
                    HeaderValue::Basic { user } => (None, Some(user.as_str()), None),
                    HeaderValue::Fixed(value) => (None, None, Some(value.as_str())),
                };
                json!({ "hosts": r.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(), "header": r.header, "prefix": prefix, "basic_user": basic_user, "value": value })
            })
            .collect::<Vec<_>>()),
        Injection::Substitute => json!("token substitution"),
        Injection::Special(what) => json!(what),
    }
}

fn providers(ctx: &Ctx) -> Result<()> {
    let registry = ctx.registry()?;
    if ctx.json {
        let items: Vec<_> = registry
            .all()
            .iter()
            .map(|p| {
                let file = match &p.origin {
                    Origin::Custom(f) => Some(f.display().to_string()),
                    _ => None,
                };
                json!({
                    "name": p.name, "description": p.description, "aliases": p.aliases, "origin": p.origin.label(),
                    "file": file, "hosts": p.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "inject": injection_json(p), "source_env": p.source_env, "container_env": p.container_env,
                    // Meta, npm and oauth check the token in their own flows
                    // (Graph API /me, each registry's whoami, one refresh).
                    "validates": p.validate.is_some() || matches!(p.flow, Flow::Meta | Flow::Npm | Flow::Oauth),
                    "available": !matches!(p.flow, Flow::Pending(_)),
                })
            })
            .collect();
        output::json(&serde_json::Value::Array(items))?;
        return Ok(());
    }
    // Listed so runs and scripts can name them, but not grantable yet: apart,
    // so the table holds only what 'moat grant' can do.
    let (pending, ready): (Vec<&Provider>, Vec<&Provider>) = registry
        .all()
        .iter()
        .partition(|p| matches!(p.flow, Flow::Pending(_)));
    let rows: Vec<Vec<String>> = ready
        .iter()
        .map(|p| {
            let hosts = if p.hosts.is_empty() {
                match p.name.as_str() {
                    "npm" => "per registry".to_owned(),
                    "ssh" => "the granted host".to_owned(),
                    "mcp" => "from moat.yaml".to_owned(),
                    "oauth" => "given at grant time".to_owned(),
                    _ => "-".to_owned(),
                }
            } else {
                p.hosts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let name = if p.aliases.is_empty() {
                p.name.clone()
            } else {
                format!("{} ({})", p.name, p.aliases.join(", "))
            };
            vec![
                name,
                p.origin.label().to_owned(),
                hosts,
                p.description.clone(),
            ]
        })
        .collect();
    output::table(&["PROVIDER", "TYPE", "HOSTS", "DESCRIPTION"], &rows)?;
    if !pending.is_empty() {
        outln!()?;
        outln!("Not yet available (named, but 'moat grant' cannot store them in this build):")?;
        for p in pending {
            outln!("  {:<10} {}", p.name, p.description)?;
        }
    }
    Ok(())
}

fn show(ctx: &Ctx, name: &str, reveal: bool) -> Result<()> {
    let name = CredName::parse(name)?;
    let store: Store = ctx.store()?;
    let (c, placeholder_key) = store.get_with_placeholder_key(&name)?;
    // What the sandbox sees instead of the token (not a secret).
    let placeholder = ctx
        .registry()?
        .get(&c.provider)
        .and_then(|p| p.placeholder.as_ref())
        .map(|f| {
            crate::providers::placeholder::derive(
                f,
                &placeholder_key,
                name.as_str(),
                c.token.expose_secret(),
            )
        });
    if reveal {
        eprintln!(
            "moat: warning: printing the secret value of '{name}'; it is now on your terminal and maybe in its scrollback"
        );
    }
    let secret_names: Vec<&String> = c.secrets.keys().collect();
    if ctx.json {
        let mut v = json!({
            "name": name.as_str(), "provider": c.provider, "kind": kind(c.kind), "profile": store.profile().map(|p| p.as_str()),
            "source": c.source, "created": rfc3339(c.created_at), "updated": rfc3339(c.updated_at),
            "expires": c.expires_at.map(rfc3339), "metadata": c.metadata, "secrets": secret_names,
            "placeholder": placeholder,
        });
        if reveal {
            v["token"] = json!(c.token.expose_secret());
        }
        output::json(&v)?;
        return Ok(());
    }
    let row = |label: &str, value: &str| outln!("{:<13}{value}", format!("{label}:"));
    row("name", name.as_str())?;
    row("provider", &c.provider)?;
    row("kind", kind(c.kind))?;
    row(
        "profile",
        store.profile().map(|p| p.as_str()).unwrap_or("default"),
    )?;
    row("source", &c.source)?;
    row("created", &rfc3339(c.created_at))?;
    row("updated", &rfc3339(c.updated_at))?;
    row(
        "expires",
        &c.expires_at.map(rfc3339).unwrap_or_else(|| "never".into()),
    )?;
    if let Some(p) = &placeholder {
        row("placeholder", p)?;
    }
    for (k, v) in &c.metadata {
        row(k, v)?;
    }
    if !secret_names.is_empty() {
        row(
            "also holds",
            &secret_names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )?;
    }
    if reveal {
        row("token", c.token.expose_secret())?;
    }
    Ok(())
}
