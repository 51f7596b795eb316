//! `moat grant meta`: a Graph API access token (`META_ACCESS_TOKEN` or a
//! prompt), validated on `/me`, plus optional app credentials
//! (`META_APP_ID`/`META_APP_SECRET` or prompts) with which the token is
//! exchanged for a long-lived one now and daily by the proxy.

use std::io::IsTerminal;

use anyhow::{Context as _, Result, anyhow, bail};
use secrecy::{ExposeSecret, SecretString};

use super::{GrantArgs, checked_token, obtain_token, validate_token};
use crate::net::Upstream;
use crate::providers::builtin::meta::{self, API_VERSION, APP_ID, APP_SECRET};
use crate::providers::{Provider, oauth};
use crate::proxy::refresh::TokenEndpoint;
use crate::store::{CredName, Credential};

fn env_value(var: &str) -> Option<zeroize::Zeroizing<String>> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(|v| zeroize::Zeroizing::new(v.to_string_lossy().trim().to_owned()))
}

pub(super) fn obtain(provider: &Provider, name: &CredName, args: &GrantArgs) -> Result<Credential> {
    let version = meta::api_version(env_value("META_API_VERSION").as_deref().map(String::as_str))
        .map_err(|e| anyhow!(e))?;
    let (token, source) = obtain_token(provider, name, args.token_stdin)?;
    let mut cred = Credential::new_static(&provider.name, token, source);
    cred.metadata.insert(API_VERSION.into(), version.clone());

    let tty = std::io::stdin().is_terminal() && !args.token_stdin;
    let (app_id, app_secret) = match (env_value("META_APP_ID"), env_value("META_APP_SECRET")) {
        (Some(id), Some(secret)) => {
            eprintln!("Found META_APP_ID and META_APP_SECRET for token refresh");
            (
                Some(id.to_string()),
                Some(checked_token(&secret, "META_APP_SECRET")?),
            )
        }
        (Some(_), None) | (None, Some(_)) => bail!(
            "set both META_APP_ID and META_APP_SECRET (for the daily token exchange), or neither"
        ),
        (None, None) if tty => {
            eprint!("Facebook app ID for token refresh (Enter to skip): ");
            let mut id = String::new();
            std::io::stdin()
                .read_line(&mut id)
                .context("reading the app id")?;
            let id = id.trim().to_owned();
            if id.is_empty() {
                (None, None)
            } else {
                let secret = zeroize::Zeroizing::new(
                    crate::cli::prompt::hidden("App secret: ").context("reading the app secret")?,
                );
                (Some(id), Some(checked_token(&secret, "the prompt")?))
            }
        }
        (None, None) => (None, None),
    };

    if !args.no_validate {
        let mut versioned = provider.clone();
        versioned.validate = Some(crate::providers::Validate {
            url: meta::me_url(&version),
            method: "GET".into(),
            header: Some("Authorization".into()),
            prefix: "Bearer ".into(),
            extra_headers: Vec::new(),
            confirm: false,
        });
        if let Some(who) = validate_token(&versioned, cred.token.expose_secret())? {
            cred.metadata.insert("identity".into(), who);
        }
    }
    let (Some(app_id), Some(app_secret)) = (app_id, app_secret) else {
        eprintln!(
            "No app credentials: the token is used as it is and not refreshed (see 'Token types and refresh' in docs/providers.md)"
        );
        return Ok(cred);
    };
    cred.metadata.insert(APP_ID.into(), app_id);
    cred.secrets.insert(APP_SECRET.into(), app_secret);
    if args.no_validate {
        // Never exchanged: the first run exchanges it at once.
        cred.updated_at = std::time::UNIX_EPOCH;
        return Ok(cred);
    }
    exchange(&mut cred)?;
    Ok(cred)
}

/// Exchange the token for a long-lived one now: checks the app credentials
/// and turns a short-lived token into a 60-day one.
fn exchange(cred: &mut Credential) -> Result<()> {
    eprintln!("Exchanging the token for a long-lived one...");
    let url = zeroize::Zeroizing::new(meta::exchange_url(cred)?);
    let upstream = Upstream::from_env()?;
    let (status, body) = super::super::block_on(upstream.get(&url))?
        .map_err(|e| anyhow!("cannot reach the Graph API: {e}. Nothing was saved"))?;
    let known: Vec<zeroize::Zeroizing<String>> = cred
        .secrets
        .values()
        .chain(std::iter::once(&cred.token))
        .map(|s| zeroize::Zeroizing::new(s.expose_secret().to_owned()))
        .collect();
    let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    let tokens = oauth::parse_response(status, &body, &known).map_err(|e| {
        anyhow!("the token exchange failed: {e}. Nothing was saved; check META_APP_ID and META_APP_SECRET")
    })?;
    let now = crate::store::credential::now_secs();
    cred.token = SecretString::from(tokens.access_token.expose_secret());
    cred.expires_at = tokens.expires_in.map(|d| now + d);
    cred.updated_at = now;
    eprintln!("Long-lived token obtained; Moat exchanges it again once a day.");
    Ok(())
}
