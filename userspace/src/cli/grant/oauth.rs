//! `moat grant oauth <name>`: an OAuth 2.0 refresh token for any service.
//! The refresh token is checked by one refresh before anything is saved;
//! that refresh also gives the first access token.

use std::io::IsTerminal;

use anyhow::{Context as _, Result, anyhow, bail};
use secrecy::{ExposeSecret, SecretString};

use super::{GrantArgs, checked_token, token_from_stdin};
use crate::net::Upstream;
use crate::providers::builtin::oauth::HOSTS;
use crate::providers::oauth::{self, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, TOKEN_URL};
use crate::providers::{HostPattern, Provider};
use crate::proxy::refresh::TokenEndpoint;
use crate::store::{Credential, Kind};

const USAGE: &str = "moat grant oauth <name> --token-url URL --client-id ID --host HOST [--host HOST…] (refresh token from --token-stdin, OAUTH_REFRESH_TOKEN or a prompt; client secret from OAUTH_CLIENT_SECRET or a prompt)";

fn env_secret(var: &str) -> Result<Option<SecretString>> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => {
            let v = zeroize::Zeroizing::new(v.to_string_lossy().into_owned());
            eprintln!("Using {var}");
            Ok(Some(checked_token(&v, var)?))
        }
        None => Ok(None),
    }
}

pub(super) fn obtain(provider: &Provider, args: &GrantArgs) -> Result<Credential> {
    let token_url = args
        .token_url
        .as_deref()
        .ok_or_else(|| anyhow!("--token-url is required: {USAGE}"))?;
    if !token_url.starts_with("https://") {
        bail!("--token-url must be an https:// URL (the refresh token travels to it)");
    }
    if args.host.is_empty() {
        bail!("name at least one host to inject the access token on with --host: {USAGE}");
    }
    for h in &args.host {
        HostPattern::parse(h).map_err(|e| anyhow!("--host {h}: {e}"))?;
    }
    let tty = std::io::stdin().is_terminal();
    let refresh = if args.token_stdin {
        token_from_stdin(provider)?
    } else if let Some(t) = env_secret("OAUTH_REFRESH_TOKEN")? {
        t
    } else if tty {
        let t = zeroize::Zeroizing::new(
            crate::cli::prompt::hidden("Refresh token: ").context("reading the refresh token")?,
        );
        checked_token(&t, "the prompt")?
    } else {
        bail!("no refresh token: pipe it with --token-stdin or set OAUTH_REFRESH_TOKEN. {USAGE}");
    };
    let client_secret = match env_secret("OAUTH_CLIENT_SECRET")? {
        Some(s) => Some(s),
        None if tty && !args.token_stdin => {
            let s = zeroize::Zeroizing::new(
                crate::cli::prompt::hidden("Client secret (Enter for none): ")
                    .context("reading the client secret")?,
            );
            (!s.trim().is_empty())
                .then(|| checked_token(&s, "the prompt"))
                .transpose()?
        }
        None => None,
    };

    let mut cred = Credential::new_static(
        &provider.name,
        SecretString::from(""),
        "oauth-refresh-token",
    );
    cred.kind = Kind::Oauth;
    cred.metadata.insert(TOKEN_URL.into(), token_url.to_owned());
    if let Some(id) = &args.client_id {
        cred.metadata.insert(CLIENT_ID.into(), id.clone());
    }
    cred.metadata.insert(HOSTS.into(), args.host.join(","));
    cred.secrets.insert(REFRESH_TOKEN.into(), refresh);
    if let Some(s) = client_secret {
        cred.secrets.insert(CLIENT_SECRET.into(), s);
    }
    first_refresh(
        &mut cred,
        "the token endpoint",
        "check the refresh token, client id and secret",
    )?;
    Ok(cred)
}

/// One refresh, now: proves the refresh token works and yields the first
/// access token. Failure: nothing is saved. `endpoint` names the token
/// endpoint and `fix` says what to do, in the error.
pub(super) fn first_refresh(cred: &mut Credential, endpoint: &str, fix: &str) -> Result<()> {
    eprintln!("Validating refresh token...");
    let req = oauth::refresh_request(cred)?;
    let upstream = Upstream::from_env()?;
    let (status, body) = super::super::block_on(upstream.post_form(&req.url, &req.form))?
        .map_err(|e| anyhow!("cannot reach {endpoint}: {e}. Nothing was saved"))?;
    let known: Vec<zeroize::Zeroizing<String>> = cred
        .secrets
        .values()
        .map(|s| zeroize::Zeroizing::new(s.expose_secret().to_owned()))
        .collect();
    let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    let tokens = oauth::parse_response(status, &body, &known)
        .map_err(|e| anyhow!("{e}. Nothing was saved; {fix}"))?;
    oauth::apply(cred, tokens, crate::store::credential::now_secs());
    eprintln!("Refresh token is valid.");
    Ok(())
}
