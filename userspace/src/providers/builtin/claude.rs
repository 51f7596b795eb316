//! Claude Code OAuth tokens (`sk-ant-oat…`): Bearer plus the OAuth beta flag
//! on api.anthropic.com. Sources: `claude setup-token`, a pasted token, or
//! an import of Claude Code's own `~/.claude/.credentials.json`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;

use super::super::placeholder::{Alphabet, Format};
use super::super::{Flow, HeaderRule, HeaderValue, Injection, Provider};
use super::{ANTHROPIC_API_VERSION, CLAUDE_OAUTH_PREFIX, header_provider, strings, validate_get};

/// Where Claude Code keeps its login, relative to HOME.
pub const CREDENTIALS_FILE: &str = ".claude/.credentials.json";

/// The beta flag Anthropic's API needs to accept an OAuth token.
const OAUTH_BETA: &str = "oauth-2025-04-20";

pub fn provider() -> Provider {
    let mut p = header_provider(
        "claude",
        "Claude",
        "Claude Pro/Max OAuth token for Claude Code (claude setup-token, paste, or import)",
        &["api.anthropic.com"],
        "Authorization",
        "Bearer ",
    );
    if let Injection::Headers(rules) = &mut p.injection {
        rules.push(HeaderRule {
            hosts: p.hosts.clone(),
            header: "anthropic-beta".into(),
            value: HeaderValue::Fixed(OAUTH_BETA.into()),
        });
    }
    p.flow = Flow::Claude;
    // What 'claude setup-token' tells users to export.
    p.source_env = strings(&["CLAUDE_CODE_OAUTH_TOKEN"]);
    p.container_env = Some("CLAUDE_CODE_OAUTH_TOKEN".into());
    p.placeholder = Some(Format::prefixed("sk-ant-oat01-", 95, Alphabet::UrlSafe));
    p.validate = validate_get("https://api.anthropic.com/v1/models").map(|mut v| {
        v.extra_headers = vec![
            ("anthropic-version".into(), ANTHROPIC_API_VERSION.into()),
            ("anthropic-beta".into(), OAUTH_BETA.into()),
        ];
        v
    });
    p.prompt =
        Some("Paste an OAuth token from 'claude setup-token' (starts with sk-ant-oat).".into());
    p
}

/// An API key given to `moat grant claude` would be sent as a Bearer token
/// and refused: say where it belongs instead.
pub fn check_oauth_token(token: &str) -> Result<(), &'static str> {
    if token.starts_with(CLAUDE_OAUTH_PREFIX) {
        Ok(())
    } else if token.starts_with("sk-ant-") {
        Err("this is an Anthropic API key, not an OAuth token; store it with: moat grant anthropic")
    } else {
        Err("a Claude OAuth token starts with sk-ant-oat; get one with: claude setup-token")
    }
}

/// The token `claude setup-token` printed, found in its output.
pub fn token_in_output(text: &str) -> Option<&str> {
    let start = text.find(CLAUDE_OAUTH_PREFIX)?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// What an import of Claude Code's credentials yields. The refresh token is
/// left behind: imported tokens are not refreshed by Moat (Claude Code on
/// the host refreshes them; re-import then).
#[derive(Debug)]
pub struct Imported {
    pub token: SecretString,
    pub expires_at: Option<SystemTime>,
    pub subscription: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("it is not valid JSON ({0})")]
    Json(String),
    #[error(
        "it holds no Claude OAuth login (claudeAiOauth.accessToken); log in with 'claude' first"
    )]
    NoToken,
    #[error("its access token does not start with sk-ant-oat")]
    NotOauth,
}

/// Parse `~/.claude/.credentials.json`.
pub fn parse_credentials(bytes: &[u8]) -> Result<Imported, ImportError> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(rename = "claudeAiOauth")]
        oauth: Option<Oauth>,
    }
    #[derive(serde::Deserialize)]
    struct Oauth {
        #[serde(rename = "accessToken")]
        access_token: Option<zeroize::Zeroizing<String>>,
        /// Milliseconds since the epoch.
        #[serde(rename = "expiresAt")]
        expires_at: Option<u64>,
        #[serde(rename = "subscriptionType")]
        subscription: Option<String>,
    }
    let file: File = serde_json::from_slice(bytes).map_err(|e| ImportError::Json(e.to_string()))?;
    let oauth = file.oauth.ok_or(ImportError::NoToken)?;
    let token = oauth.access_token.ok_or(ImportError::NoToken)?;
    if !token.starts_with(CLAUDE_OAUTH_PREFIX) {
        return Err(ImportError::NotOauth);
    }
    Ok(Imported {
        token: SecretString::from(token.as_str()),
        expires_at: oauth
            .expires_at
            .map(|ms| UNIX_EPOCH + Duration::from_secs(ms / 1000)),
        subscription: oauth.subscription.filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn parses_claude_code_credentials() {
        let json = br#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-abc","refreshToken":"sk-ant-ort01-r","expiresAt":1771151400000,"scopes":["user:inference"],"subscriptionType":"max"}}"#;
        let got = parse_credentials(json).unwrap();
        assert_eq!(got.token.expose_secret(), "sk-ant-oat01-abc");
        assert_eq!(got.subscription.as_deref(), Some("max"));
        assert_eq!(
            got.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_771_151_400))
        );
        assert_eq!(
            parse_credentials(br#"{"other":1}"#).unwrap_err(),
            ImportError::NoToken
        );
        assert_eq!(
            parse_credentials(br#"{"claudeAiOauth":{"accessToken":"sk-ant-api03-x"}}"#)
                .unwrap_err(),
            ImportError::NotOauth
        );
        assert!(matches!(
            parse_credentials(b"{").unwrap_err(),
            ImportError::Json(_)
        ));
    }

    #[test]
    fn finds_the_token_in_setup_token_output() {
        let out = "\u{1b}[32m✓ Long-lived token created\u{1b}[0m\n\nsk-ant-oat01-AbC_d-9\n\nStore it: export CLAUDE_CODE_OAUTH_TOKEN=<token>\n";
        assert_eq!(token_in_output(out), Some("sk-ant-oat01-AbC_d-9"));
        assert_eq!(token_in_output("no token here"), None);
    }

    #[test]
    fn token_kind_checks_say_what_to_run() {
        assert!(check_oauth_token("sk-ant-oat01-x").is_ok());
        assert!(
            check_oauth_token("sk-ant-api03-x")
                .unwrap_err()
                .contains("moat grant anthropic")
        );
        assert!(
            check_oauth_token("ghp_x")
                .unwrap_err()
                .contains("claude setup-token")
        );
    }
}
