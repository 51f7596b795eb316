//! `moat grant npm [--host HOST]`: registries from `~/.npmrc` and
//! `NPM_TOKEN`, or one named registry; every call merges into the single
//! `npm` credential.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, bail};
use secrecy::{ExposeSecret, SecretString};

use super::{GrantArgs, checked_token, confirm, token_from_stdin};
use crate::net::Upstream;
use crate::providers::Provider;
use crate::providers::builtin::npm::{self, Found, Registry};
use crate::providers::validate::{self, Outcome};
use crate::store::Credential;

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Registries in `~/.npmrc` (none when there is no such file).
fn npmrc() -> Result<Vec<Found>> {
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        return Ok(Vec::new());
    };
    let path = PathBuf::from(home).join(".npmrc");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(npm::parse_npmrc(&zeroize::Zeroizing::new(text), &env_var)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// npm's default registry URL: `~/.npmrc`, `npm_config_registry`, then
/// `npm config get registry` when npm is installed. Never a built-in host.
fn default_registry(found: &[Found]) -> Option<String> {
    if let Some(f) = found.iter().find(|f| f.registry.default) {
        return Some(f.registry.url.clone());
    }
    if let Some(url) = env_var("npm_config_registry").or_else(|| env_var("NPM_CONFIG_REGISTRY")) {
        return Some(url);
    }
    let out = std::process::Command::new("npm")
        .args(["config", "get", "registry"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && npm::host_of(&url).is_some()).then_some(url)
}

fn prompt_token(what: &str) -> Result<SecretString> {
    eprintln!("Enter the npm token for {what}.");
    let entered = zeroize::Zeroizing::new(
        crate::cli::prompt::hidden("Token: ").context("reading the token")?,
    );
    checked_token(&entered, "the prompt")
}

/// New or replaced registries with their tokens, and where they came from.
type Picked = (Vec<(Registry, SecretString)>, String);

/// `--host HOST`: that registry only.
fn one_host(
    provider: &Provider,
    host: &str,
    args: &GrantArgs,
    found: Vec<Found>,
) -> Result<Picked> {
    let wanted = npm::host_of(&npm::url_for(host))
        .ok_or_else(|| anyhow!("'{host}' is not a registry host or URL"))?;
    let default_url = default_registry(&found);
    let mut from_rc = found.into_iter().find(|f| f.registry.host == wanted);
    let mut registry = from_rc
        .as_ref()
        .map(|f| f.registry.clone())
        .unwrap_or(Registry {
            host: wanted.clone(),
            url: npm::url_for(host),
            scopes: Vec::new(),
            default: false,
        });
    registry.default |= default_url.as_deref().and_then(npm::host_of).as_deref() == Some(&wanted);
    let (token, source) = if args.token_stdin {
        (token_from_stdin(provider)?, "stdin".to_owned())
    } else if let Some(t) = from_rc.as_mut().and_then(|f| f.token.take()) {
        eprintln!("Using the token for {wanted} from ~/.npmrc");
        (t, "npmrc".to_owned())
    } else if let Some(t) = env_var("NPM_TOKEN") {
        eprintln!("Using token from NPM_TOKEN for {wanted}");
        (
            checked_token(&zeroize::Zeroizing::new(t), "NPM_TOKEN")?,
            "env:NPM_TOKEN".to_owned(),
        )
    } else if std::io::stdin().is_terminal() {
        (prompt_token(&wanted)?, "prompt".to_owned())
    } else {
        bail!(
            "no token for npm registry {wanted}: none in ~/.npmrc, NPM_TOKEN is not set, and stdin is not a terminal to prompt on; pipe it: printf %s \"$TOKEN\" | moat grant npm --host {wanted} --token-stdin"
        );
    };
    Ok((vec![(registry, token)], source))
}

/// No `--host`: everything `~/.npmrc` has a token for, plus `NPM_TOKEN` for
/// the default registry.
fn discover(found: Vec<Found>) -> Result<Picked> {
    let default_url = env_var("NPM_TOKEN").and_then(|_| default_registry(&found));
    let mut picked: Vec<(Registry, SecretString)> = Vec::new();
    let mut sources = Vec::new();
    for f in found {
        if let Some(t) = f.token {
            picked.push((f.registry, t));
            if sources.is_empty() {
                sources.push("npmrc");
            }
        }
    }
    if let Some(t) = env_var("NPM_TOKEN") {
        match default_url
            .as_deref()
            .and_then(|u| npm::host_of(u).map(|h| (u, h)))
        {
            Some((url, host)) if !picked.iter().any(|(r, _)| r.host == host) => {
                let token = checked_token(&zeroize::Zeroizing::new(t), "NPM_TOKEN")?;
                picked.push((
                    Registry {
                        host,
                        url: npm::url_for(url),
                        scopes: Vec::new(),
                        default: true,
                    },
                    token,
                ));
                sources.push("env:NPM_TOKEN");
            }
            Some(_) => {}
            None => bail!(
                "NPM_TOKEN is set but npm's default registry is unknown (no 'registry=' in ~/.npmrc, npm not installed); name it: moat grant npm --host <registry-host>"
            ),
        }
    }
    if picked.is_empty() {
        bail!(
            "no npm registry tokens found in ~/.npmrc or NPM_TOKEN; add one with: moat grant npm --host <registry-host> (pipe the token with --token-stdin)"
        );
    }
    let list: Vec<String> = picked
        .iter()
        .map(|(r, _)| {
            let mut notes: Vec<&str> = r.scopes.iter().map(String::as_str).collect();
            if r.default {
                notes.insert(0, "default");
            }
            if notes.is_empty() {
                r.host.clone()
            } else {
                format!("{} ({})", r.host, notes.join(", "))
            }
        })
        .collect();
    eprintln!("Found registries: {}", list.join(", "));
    if std::io::stdin().is_terminal() {
        eprintln!("To import a single registry, use: moat grant npm --host=<host>");
        if !confirm("Import these registries?")? {
            bail!(
                "nothing was saved; import one registry with: moat grant npm --host <registry-host>"
            );
        }
    }
    Ok((picked, sources.join("+")))
}

/// `GET <registry>/-/whoami` for each registry; any refusal saves nothing.
fn validate_all(picked: &[(Registry, SecretString)]) -> Result<()> {
    let upstream = Upstream::from_env()?;
    eprintln!("Validating...");
    for (r, token) in picked {
        let url = format!("{}-/whoami", r.url);
        let auth = format!("Bearer {}", token.expose_secret());
        let auth = zeroize::Zeroizing::new(auth);
        let fetched = super::super::block_on(upstream.fetch(
            "GET",
            &url,
            &[("Authorization", auth.as_str())],
            Default::default(),
        ))?
        .map_err(|e| anyhow!("cannot validate the token for {}: {e}. Nothing was saved; fix the connection, or save without checking: --no-validate", r.host))?;
        match validate::judge(fetched.status, &fetched.body, token.expose_secret()) {
            Outcome::Valid {
                identity: Some(who),
            } => {
                eprintln!("✓ {} — authenticated as \"{who}\"", r.host)
            }
            Outcome::Valid { identity: None } => eprintln!("✓ {} — token accepted", r.host),
            Outcome::Rejected { status, message } => bail!(
                "npm registry {} rejected the token (HTTP {status}: {message}). Nothing was saved; check the token and grant again",
                r.host
            ),
            Outcome::Unexpected { status, message } => bail!(
                "validation at {} answered HTTP {status} ({message}). Nothing was saved; try again, or save without checking: --no-validate",
                r.host
            ),
        }
    }
    Ok(())
}

/// The merged credential: `existing` plus what this call found.
pub(super) fn obtain(
    provider: &Provider,
    args: &GrantArgs,
    existing: Option<Credential>,
) -> Result<Credential> {
    let found = npmrc()?;
    let (picked, source) = match args.host.as_slice() {
        [host] => one_host(provider, host, args, found)?,
        [_, _, ..] => bail!("name one registry per call: moat grant npm --host HOST (calls merge)"),
        [] if args.token_stdin => bail!(
            "--token-stdin needs the registry it is for: moat grant npm --host <registry-host> --token-stdin"
        ),
        [] => discover(found)?,
    };
    if !args.no_validate {
        validate_all(&picked)?;
    }
    let mut cred = existing.unwrap_or_else(|| {
        Credential::new_static(&provider.name, picked[0].1.clone(), source.clone())
    });
    cred.source = source;
    cred.updated_at = crate::store::credential::now_secs();
    for (registry, token) in picked {
        npm::merge(&mut cred, registry, token);
    }
    // The record's main token: the default registry's, else the first one's.
    let list = npm::registries(&cred);
    let main = list
        .iter()
        .find(|r| r.default)
        .or(list.first())
        .and_then(|r| cred.secrets.get(&r.host).cloned());
    if let Some(t) = main {
        cred.token = t;
    }
    Ok(cred)
}
