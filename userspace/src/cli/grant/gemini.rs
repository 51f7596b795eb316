//! `moat grant gemini`: the Gemini CLI's Google login (OAuth, imported from
//! `~/.gemini/oauth_creds.json` and refreshed by Moat) or an API key.
//!
//! On a terminal, when the Gemini CLI is logged in, a menu offers both.
//! Without a terminal: `--import` imports the login; `--token-stdin` or
//! `GEMINI_API_KEY` gives an API key.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, bail};
use secrecy::ExposeSecret;

use super::{GrantArgs, obtain_token};
use crate::providers::Provider;
use crate::providers::builtin::gemini::{
    self, CLI_CLIENT_ID, CLI_CLIENT_SECRET, CREDENTIALS_FILE, MODE, MODE_OAUTH, SCOPE, TOKEN_URL,
};
use crate::providers::oauth::{self, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN};
use crate::store::{CredName, Credential, Kind};

const MENU: &str = "\
Choose authentication method:

  1. Import Gemini CLI credentials (recommended)
     Your Google login from ~/.gemini/oauth_creds.json; Moat refreshes it.

  2. Gemini API key
     From GEMINI_API_KEY or entered here.
";

fn credentials_path() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set, so the Gemini CLI's credentials cannot be found")?;
    Ok(PathBuf::from(home).join(CREDENTIALS_FILE))
}

pub(super) fn obtain(provider: &Provider, name: &CredName, args: &GrantArgs) -> Result<Credential> {
    let api_key = |args: &GrantArgs| -> Result<Credential> {
        let (token, source) = obtain_token(provider, name, args.token_stdin)?;
        Ok(Credential::new_static(&provider.name, token, source))
    };
    if args.token_stdin {
        return api_key(args);
    }
    if args.import {
        return import(provider, args.no_validate);
    }
    let logged_in = credentials_path().is_ok_and(|p| p.exists());
    let key_in_env = provider
        .source_env
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if !std::io::stdin().is_terminal() {
        if logged_in && !key_in_env {
            bail!(
                "the Gemini CLI is logged in, but stdin is not a terminal to choose on; import its login with: moat grant gemini --import (or give an API key: GEMINI_API_KEY, or --token-stdin)"
            );
        }
        return api_key(args);
    }
    if !logged_in {
        return api_key(args);
    }
    eprintln!("{MENU}");
    eprint!("Enter choice [1 or 2]: ");
    let mut choice = String::new();
    std::io::stdin()
        .read_line(&mut choice)
        .context("reading the choice")?;
    match choice.trim() {
        "1" => import(provider, args.no_validate),
        "2" => api_key(args),
        other => bail!("'{other}' is not a choice; run 'moat grant gemini' again and enter 1 or 2"),
    }
}

/// Import `~/.gemini/oauth_creds.json`; unless `no_validate`, one refresh
/// proves the refresh token works and gives a fresh access token.
fn import(provider: &Provider, no_validate: bool) -> Result<Credential> {
    let path = credentials_path()?;
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (log in with 'gemini' and choose Login with Google first)",
            path.display()
        )
    })?;
    let imported = gemini::parse_credentials(&bytes)
        .map_err(|e| anyhow!("cannot import {}: {e}", path.display()))?;
    eprintln!("Found Gemini CLI credentials.");
    let mut cred = Credential::new_static(
        &provider.name,
        imported
            .access_token
            .unwrap_or_else(|| secrecy::SecretString::from("")),
        "gemini-cli",
    );
    cred.kind = Kind::Oauth;
    cred.expires_at = imported.expires_at;
    cred.metadata.insert(MODE.into(), MODE_OAUTH.into());
    cred.metadata
        .insert(oauth::TOKEN_URL.into(), TOKEN_URL.into());
    cred.metadata.insert(CLIENT_ID.into(), CLI_CLIENT_ID.into());
    if let Some(scope) = imported.scope {
        cred.metadata.insert(SCOPE.into(), scope);
    }
    cred.secrets
        .insert(REFRESH_TOKEN.into(), imported.refresh_token);
    cred.secrets
        .insert(CLIENT_SECRET.into(), CLI_CLIENT_SECRET.into());
    if no_validate {
        if cred.token.expose_secret().is_empty() {
            bail!(
                "{} holds no access token, so it cannot be saved without a refresh; drop --no-validate",
                path.display()
            );
        }
        return Ok(cred);
    }
    super::oauth::first_refresh(
        &mut cred,
        "Google's token endpoint",
        "log in again with 'gemini' on this host, then run 'moat grant gemini --import'",
    )?;
    Ok(cred)
}
