//! `moat grant claude`: a Claude Code OAuth token from `claude setup-token`,
//! a pasted token, or Claude Code's own login on this host.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use secrecy::SecretString;

use super::{GrantArgs, checked_token, token_from_stdin};
use crate::providers::Provider;
use crate::providers::builtin::claude::{self, CREDENTIALS_FILE};
use crate::store::credential::{now_secs, rfc3339};
use crate::store::{Credential, Kind};

const MENU: &str = "\
Choose authentication method:

  1. Claude subscription (OAuth token)
     Runs 'claude setup-token' to get a long-lived token.
     Requires a Claude Pro/Max subscription and the Claude CLI.

  2. Existing OAuth token
     Paste a token from an earlier 'claude setup-token'.

  3. Import existing Claude Code credentials
     Use the login of Claude Code on this machine (~/.claude/.credentials.json).
";

const NON_INTERACTIVE: &str = "no Claude token: stdin is not a terminal to choose a method on. \
Pipe a token from 'claude setup-token' with: printf %s \"$TOKEN\" | moat grant claude --token-stdin; \
set CLAUDE_CODE_OAUTH_TOKEN; or import Claude Code's login with: moat grant claude --import";

pub(super) fn obtain(provider: &Provider, args: &GrantArgs) -> Result<Credential> {
    if args.token_stdin {
        let token = token_from_stdin(provider)?;
        return Ok(Credential::new_static(&provider.name, token, "stdin"));
    }
    if args.import {
        return import(provider);
    }
    for var in &provider.source_env {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let value = zeroize::Zeroizing::new(value.to_string_lossy().into_owned());
            eprintln!("Using token from {var}");
            let token = checked_token(&value, var)?;
            return Ok(Credential::new_static(
                &provider.name,
                token,
                format!("env:{var}"),
            ));
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!(NON_INTERACTIVE);
    }
    eprintln!("{MENU}");
    eprint!("Enter choice [1-3]: ");
    let mut choice = String::new();
    std::io::stdin()
        .read_line(&mut choice)
        .context("reading the choice")?;
    match choice.trim() {
        "1" => setup_token(provider),
        "2" => {
            if let Some(text) = &provider.prompt {
                eprintln!("{text}");
            }
            let entered = zeroize::Zeroizing::new(
                crate::cli::prompt::hidden("Token: ").context("reading the token")?,
            );
            let token = checked_token(&entered, "the prompt")?;
            Ok(Credential::new_static(&provider.name, token, "prompt"))
        }
        "3" => import(provider),
        other => {
            bail!("'{other}' is not a choice; run 'moat grant claude' again and enter 1, 2 or 3")
        }
    }
}

/// Run `claude setup-token` on this terminal and take the token it prints.
/// Its output is shown with the token masked.
fn setup_token(provider: &Provider) -> Result<Credential> {
    eprintln!("Running 'claude setup-token' to obtain authentication token...");
    eprintln!("This may open a browser for authentication.");
    let mut child = match Command::new("claude")
        .arg("setup-token")
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the Claude CLI is not installed ('claude' is not on PATH); install Claude Code, or run 'moat grant claude' again and paste a token (choice 2)"
        ),
        Err(e) => return Err(e).context("starting 'claude setup-token'"),
    };
    let mut out = zeroize::Zeroizing::new(String::new());
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .context("reading the output of 'claude setup-token'")?;
    }
    let status = child.wait().context("waiting for 'claude setup-token'")?;
    let token = claude::token_in_output(&out).map(|t| zeroize::Zeroizing::new(t.to_owned()));
    if let Some(t) = &token {
        eprint!("{}", out.replace(t.as_str(), "[token received]"));
    } else {
        eprint!("{}", out.as_str());
    }
    match token {
        Some(t) => Ok(Credential::new_static(
            &provider.name,
            SecretString::from(t.as_str()),
            "claude-setup-token",
        )),
        None if !status.success() => bail!(
            "'claude setup-token' failed ({status}); nothing was saved. Run it yourself and paste the token: moat grant claude (choice 2)"
        ),
        None => bail!(
            "'claude setup-token' printed no token (sk-ant-oat…); nothing was saved. Run it yourself and paste the token: moat grant claude (choice 2)"
        ),
    }
}

fn credentials_path() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set, so Claude Code's credentials cannot be found")?;
    Ok(PathBuf::from(home).join(CREDENTIALS_FILE))
}

/// Import Claude Code's login. Not refreshed by Moat: Claude Code on the host
/// refreshes its own token; import again after it has.
fn import(provider: &Provider) -> Result<Credential> {
    let path = credentials_path()?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => zeroize::Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no Claude Code credentials at {}; log in with 'claude' on this machine first, or use 'claude setup-token'",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let imported = claude::parse_credentials(&bytes)
        .with_context(|| format!("cannot import {}", path.display()))?;
    eprintln!("Found Claude Code credentials.");
    if let Some(sub) = &imported.subscription {
        eprintln!("  Subscription: {sub}");
    }
    if let Some(exp) = imported.expires_at {
        eprintln!("  Expires: {}", rfc3339(exp));
        if exp <= now_secs() {
            bail!(
                "the Claude Code token in {} expired at {}; run a Claude Code session on this machine to refresh it, then import again. Nothing was saved",
                path.display(),
                rfc3339(exp)
            );
        }
    }
    let mut cred = Credential::new_static(&provider.name, imported.token, "claude-code");
    cred.kind = Kind::Oauth;
    cred.expires_at = imported.expires_at;
    if let Some(sub) = imported.subscription {
        cred.metadata.insert("subscription".into(), sub);
    }
    Ok(cred)
}
