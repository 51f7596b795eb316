//! Gemini, in one of two modes chosen at grant time:
//!
//! - API key: `x-goog-api-key` on generativelanguage.googleapis.com; the
//!   sandbox gets `GEMINI_API_KEY=<placeholder>`.
//! - OAuth imported from the Gemini CLI (`~/.gemini/oauth_creds.json`):
//!   `Authorization: Bearer` on cloudcode-pa.googleapis.com, refreshed by
//!   Moat 15 minutes before expiry. The sandbox HOME gets an
//!   `oauth_creds.json` with placeholder tokens (and the real expiry) plus a
//!   `settings.json` selecting OAuth; when the CLI refreshes with the
//!   placeholder refresh token, Moat answers that request itself with
//!   placeholder tokens (`proxy::local`), so no real Google token reaches the
//!   sandbox.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::super::oauth::{Policy, Renew};
use super::super::placeholder::{self, Alphabet, Format};
use super::super::{
    Binding, Flow, HeaderRule, HeaderValue, Injection, Local, LocalAnswer, Provider, SandboxFile,
    hosts,
};
use super::{header_provider, strings};
use crate::store::Credential;

/// Where the Gemini CLI keeps its Google login, relative to HOME.
pub const CREDENTIALS_FILE: &str = ".gemini/oauth_creds.json";
/// The Gemini CLI's settings, relative to HOME.
pub const SETTINGS_FILE: &str = ".gemini/settings.json";

/// Google's token endpoint (refresh and tokeninfo).
pub const TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The Code Assist API the Gemini CLI talks to when logged in with Google.
pub const CODE_ASSIST_HOST: &str = "cloudcode-pa.googleapis.com";
pub const OAUTH_HOST: &str = "oauth2.googleapis.com";

/// The Gemini CLI's OAuth client. Public by design: an "installed
/// application" client published in the Gemini CLI's source; refresh tokens
/// it issued are only refreshed with it.
pub const CLI_CLIENT_ID: &str =
    "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com";
pub const CLI_CLIENT_SECRET: &str = "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";

/// Metadata key: `oauth` for a Gemini CLI import; absent for an API key.
pub const MODE: &str = "mode";
pub const MODE_OAUTH: &str = "oauth";
/// Metadata key: the OAuth scope the CLI's login has.
pub const SCOPE: &str = "scope";

/// Google access tokens live an hour; Moat refreshes 15 minutes early.
pub const REFRESH_LEAD: Duration = Duration::from_secs(15 * 60);

pub fn provider() -> Provider {
    let mut p = header_provider(
        "gemini",
        "Gemini",
        "Google Gemini API key, or the Gemini CLI's Google login (OAuth, refreshed by Moat)",
        &["generativelanguage.googleapis.com"],
        "x-goog-api-key",
        "",
    );
    p.flow = Flow::Gemini;
    p.source_env = strings(&["GEMINI_API_KEY"]);
    p.container_env = Some("GEMINI_API_KEY".into());
    p.placeholder = Some(Format::prefixed("AIza", 35, Alphabet::UrlSafe));
    p.prompt = Some(
        "Enter your Gemini API key.\nYou can create one at: https://aistudio.google.com/apikey"
            .into(),
    );
    p
}

pub fn is_oauth(cred: &Credential) -> bool {
    cred.metadata.get(MODE).map(String::as_str) == Some(MODE_OAUTH)
}

/// OAuth mode: Bearer on Code Assist, Google's token endpoint answered
/// locally, no `GEMINI_API_KEY` in the sandbox.
pub fn oauth_provider(p: &Provider, cred: &Credential) -> Provider {
    let mut p = p.clone();
    p.hosts = hosts(&[CODE_ASSIST_HOST]);
    p.injection = Injection::Headers(vec![HeaderRule {
        hosts: p.hosts.clone(),
        header: "Authorization".into(),
        value: HeaderValue::Prefixed("Bearer ".into()),
    }]);
    p.container_env = None;
    p.validate = None;
    p.local = Some(Local {
        hosts: hosts(&[OAUTH_HOST]),
        answer: LocalAnswer::GoogleOauth {
            scope: cred.metadata.get(SCOPE).cloned().unwrap_or_default(),
        },
    });
    p
}

pub fn bind(p: &Provider, cred: &Credential) -> Vec<Binding> {
    let provider = if is_oauth(cred) {
        oauth_provider(p, cred)
    } else {
        p.clone()
    };
    vec![Binding {
        provider,
        token: cred.token.clone(),
    }]
}

pub fn policy(cred: &Credential) -> Option<Policy> {
    (is_oauth(cred)
        && cred
            .secrets
            .contains_key(super::super::oauth::REFRESH_TOKEN))
    .then_some(Policy {
        lead: REFRESH_LEAD,
        every: None,
        how: Renew::RefreshToken,
    })
}

/// The placeholder access and refresh tokens the sandbox sees in OAuth
/// mode, derived from the credential's placeholder (itself a keyed hash of
/// the token), shaped like Google's (`ya29.…`, `1//…`).
pub fn oauth_placeholders(seed: &str) -> (String, String) {
    let key: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
    let access = placeholder::derive(
        &Format::prefixed("ya29.a0", 160, Alphabet::UrlSafe),
        &key,
        "gemini-access",
        "",
    );
    let refresh = placeholder::derive(
        &Format::prefixed("1//0", 99, Alphabet::UrlSafe),
        &key,
        "gemini-refresh",
        "",
    );
    (access, refresh)
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// `~/.gemini/oauth_creds.json` (placeholders, real expiry) and
/// `~/.gemini/settings.json` (Google login selected) for OAuth mode.
pub fn sandbox_files(cred: &Credential, placeholder: &str) -> Vec<SandboxFile> {
    if !is_oauth(cred) {
        return Vec::new();
    }
    let (access, refresh) = oauth_placeholders(placeholder);
    let mut creds = serde_json::json!({
        "access_token": access,
        "refresh_token": refresh,
        "scope": cred.metadata.get(SCOPE).cloned().unwrap_or_default(),
        "token_type": "Bearer",
    });
    if let Some(exp) = cred.expires_at {
        creds["expiry_date"] = serde_json::json!(millis(exp) as u64);
    }
    let settings = serde_json::json!({"security": {"auth": {"selectedType": "oauth-personal"}}});
    vec![
        SandboxFile {
            rel_path: PathBuf::from(CREDENTIALS_FILE),
            contents: format!("{creds:#}\n"),
            mode: 0o600,
        },
        SandboxFile {
            rel_path: PathBuf::from(SETTINGS_FILE),
            contents: format!("{settings:#}\n"),
            mode: 0o600,
        },
    ]
}

/// What an import of the Gemini CLI's login yields.
#[derive(Debug)]
pub struct Imported {
    pub access_token: Option<SecretString>,
    pub refresh_token: SecretString,
    pub scope: Option<String>,
    pub expires_at: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("it is not valid JSON ({0})")]
    Json(String),
    #[error("it holds no refresh_token; log in again with 'gemini' (Login with Google)")]
    NoRefreshToken,
}

/// Parse `~/.gemini/oauth_creds.json`: `access_token`, `refresh_token`,
/// `scope`, `token_type`, `id_token`, `expiry_date` (ms since the epoch).
pub fn parse_credentials(bytes: &[u8]) -> Result<Imported, ImportError> {
    #[derive(serde::Deserialize)]
    struct File {
        access_token: Option<zeroize::Zeroizing<String>>,
        refresh_token: Option<zeroize::Zeroizing<String>>,
        scope: Option<String>,
        /// Milliseconds since the epoch (the CLI may write a fraction).
        expiry_date: Option<f64>,
    }
    let f: File = serde_json::from_slice(bytes).map_err(|e| ImportError::Json(e.to_string()))?;
    let refresh = f
        .refresh_token
        .filter(|t| !t.trim().is_empty())
        .ok_or(ImportError::NoRefreshToken)?;
    Ok(Imported {
        access_token: f
            .access_token
            .filter(|t| !t.trim().is_empty())
            .map(|t| SecretString::from(t.trim())),
        refresh_token: SecretString::from(refresh.trim()),
        scope: f.scope.filter(|s| !s.is_empty()),
        expires_at: f
            .expiry_date
            .filter(|ms| ms.is_finite() && *ms > 0.0)
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms as u64)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn oauth_cred() -> Credential {
        let mut c = Credential::new_static("gemini", SecretString::from("ya29.real"), "gemini-cli");
        c.metadata.insert(MODE.into(), MODE_OAUTH.into());
        c.metadata
            .insert(SCOPE.into(), "openid cloud-platform".into());
        c.secrets.insert(
            super::super::super::oauth::REFRESH_TOKEN.into(),
            SecretString::from("1//real"),
        );
        c.expires_at = Some(UNIX_EPOCH + Duration::from_millis(1_771_151_400_000));
        c
    }

    #[test]
    fn parses_gemini_cli_credentials() {
        let json = br#"{"access_token":"ya29.a0abc","refresh_token":"1//0real","scope":"openid https://www.googleapis.com/auth/cloud-platform","token_type":"Bearer","id_token":"eyJ.x.y","expiry_date":1769159945362.7791}"#;
        let got = parse_credentials(json).unwrap();
        assert_eq!(got.access_token.unwrap().expose_secret(), "ya29.a0abc");
        assert_eq!(got.refresh_token.expose_secret(), "1//0real");
        assert_eq!(
            got.expires_at,
            Some(UNIX_EPOCH + Duration::from_millis(1_769_159_945_362))
        );
        assert!(got.scope.unwrap().contains("cloud-platform"));
        assert_eq!(
            parse_credentials(br#"{"access_token":"ya29.x"}"#).unwrap_err(),
            ImportError::NoRefreshToken
        );
        assert!(matches!(
            parse_credentials(b"[").unwrap_err(),
            ImportError::Json(_)
        ));
    }

    #[test]
    fn placeholders_look_like_google_tokens_and_are_stable() {
        let (a, r) = oauth_placeholders("AIzaSeed");
        assert!(a.starts_with("ya29.a0") && a.len() == 167, "{a}");
        assert!(r.starts_with("1//0") && r.len() == 103, "{r}");
        assert_eq!(oauth_placeholders("AIzaSeed"), (a.clone(), r.clone()));
        assert_ne!(oauth_placeholders("AIzaOther").0, a);
        assert!(
            a[7..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn oauth_mode_binds_bearer_on_code_assist_and_answers_google_locally() {
        let c = oauth_cred();
        let b = bind(&provider(), &c);
        let p = &b[0].provider;
        let Injection::Headers(rules) = &p.injection else {
            panic!()
        };
        assert!(rules[0].hosts[0].matches(CODE_ASSIST_HOST, 443));
        assert_eq!(rules[0].header, "Authorization");
        assert_eq!(rules[0].value, HeaderValue::Prefixed("Bearer ".into()));
        assert!(p.container_env.is_none());
        let local = p.local.as_ref().unwrap();
        assert!(local.hosts[0].matches(OAUTH_HOST, 443));
        assert_eq!(policy(&c).unwrap().lead, REFRESH_LEAD);
        // API-key mode is untouched.
        let key = Credential::new_static("gemini", SecretString::from("AIzaReal"), "env");
        assert_eq!(bind(&provider(), &key)[0].provider, provider());
        assert!(policy(&key).is_none());
        assert!(sandbox_files(&key, "AIzaPh").is_empty());
    }

    #[test]
    fn sandbox_gets_placeholder_creds_with_the_real_expiry_and_oauth_settings() {
        let files = sandbox_files(&oauth_cred(), "AIzaPh");
        assert_eq!(files[0].rel_path, PathBuf::from(".gemini/oauth_creds.json"));
        let v: serde_json::Value = serde_json::from_str(&files[0].contents).unwrap();
        let (a, r) = oauth_placeholders("AIzaPh");
        assert_eq!(v["access_token"], a.as_str());
        assert_eq!(v["refresh_token"], r.as_str());
        assert_eq!(v["expiry_date"], 1_771_151_400_000u64);
        assert_eq!(v["token_type"], "Bearer");
        assert!(!files[0].contents.contains("ya29.real") && !files[0].contents.contains("1//real"));
        let s: serde_json::Value = serde_json::from_str(&files[1].contents).unwrap();
        assert_eq!(s["security"]["auth"]["selectedType"], "oauth-personal");
        assert_eq!(files[0].mode, 0o600);
    }
}
