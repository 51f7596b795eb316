//! OAuth 2.0 credentials: when an access token is due for refresh, the
//! refresh request (RFC 6749 §6), and how its answer updates the credential.
//! Pure: `proxy::refresh` sends the request and keeps the token live.
//!
//! Layout of an OAuth credential: `token` is the access token; `secrets`
//! hold `refresh_token` and, when there is one, `client_secret`; `metadata`
//! holds `token_url`, `client_id` and the hosts the token is injected on.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use crate::store::{Credential, Kind};

pub const TOKEN_URL: &str = "token_url";
pub const CLIENT_ID: &str = "client_id";
pub const CLIENT_SECRET: &str = "client_secret";
pub const REFRESH_TOKEN: &str = "refresh_token";

/// How a due credential gets its new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renew {
    /// `grant_type=refresh_token` at the credential's token URL.
    RefreshToken,
    /// Meta's `GET …/oauth/access_token?grant_type=fb_exchange_token`
    /// (see [`crate::providers::builtin::meta::exchange_url`]).
    FbExchange,
    /// Run this command on the host; its trimmed stdout is the token
    /// (`gh auth token [--hostname HOST]`).
    Command(Vec<String>),
}

/// When a credential is refreshed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Refresh once the token expires within this much time.
    pub lead: Duration,
    /// Also refresh when the last refresh is this old (Meta's daily exchange).
    pub every: Option<Duration>,
    pub how: Renew,
}

impl Policy {
    /// Generic OAuth: within 5 minutes of expiry.
    pub const OAUTH: Policy = Policy {
        lead: Duration::from_secs(5 * 60),
        every: None,
        how: Renew::RefreshToken,
    };

    /// Is `cred` due at `now`? A token without expiry is due only by `every`.
    pub fn due(&self, cred: &Credential, now: SystemTime) -> bool {
        let expiring = cred.expires_at.is_some_and(|exp| now + self.lead >= exp);
        let stale = self
            .every
            .is_some_and(|every| now >= cred.updated_at + every);
        expiring || stale
    }
}

/// The refresh request: URL and `application/x-www-form-urlencoded` body.
/// Both may hold secrets: never log them.
pub struct Request {
    pub url: String,
    pub form: zeroize::Zeroizing<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OauthError {
    #[error("the credential has no {0}; grant it again")]
    Missing(&'static str),
    #[error("the token endpoint refused the refresh (HTTP {status}: {message})")]
    Refused { status: u16, message: String },
    #[error("the token endpoint's answer has no access_token")]
    NoAccessToken,
}

pub(crate) fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `grant_type=refresh_token` for `cred`.
pub fn refresh_request(cred: &Credential) -> Result<Request, OauthError> {
    let refresh = cred
        .secrets
        .get(REFRESH_TOKEN)
        .ok_or(OauthError::Missing("refresh token"))?;
    let form = format!(
        "grant_type=refresh_token&refresh_token={}",
        form_escape(refresh.expose_secret())
    );
    token_request(cred, form)
}

/// A request to `cred`'s token URL: the grant's `form`, plus the client id
/// (and secret when there is one).
pub fn token_request(cred: &Credential, mut form: String) -> Result<Request, OauthError> {
    let url = cred
        .metadata
        .get(TOKEN_URL)
        .ok_or(OauthError::Missing("token URL"))?;
    if let Some(id) = cred.metadata.get(CLIENT_ID) {
        form.push_str(&format!("&client_id={}", form_escape(id)));
    }
    if let Some(secret) = cred.secrets.get(CLIENT_SECRET) {
        form.push_str(&format!(
            "&client_secret={}",
            form_escape(secret.expose_secret())
        ));
    }
    Ok(Request {
        url: url.clone(),
        form: zeroize::Zeroizing::new(form),
    })
}

/// What a successful token response carries.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: SecretString,
    /// Some servers rotate the refresh token.
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
}

/// Judge the token endpoint's answer. Error messages never carry tokens
/// (`known` are secrets to redact should the server echo them).
pub fn parse_response(status: u16, body: &[u8], known: &[&str]) -> Result<Tokens, OauthError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if !(200..300).contains(&status) {
        let mut message = ["/error_description", "/error", "/error/message"]
            .iter()
            .find_map(|p| json.pointer(p).and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_else(|| format!("{} bytes", body.len()));
        for secret in known.iter().filter(|s| s.len() >= 8) {
            message = message.replace(secret, "[redacted]");
        }
        return Err(OauthError::Refused { status, message });
    }
    let text = |k: &str| {
        json.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let access_token = text("access_token").ok_or(OauthError::NoAccessToken)?;
    Ok(Tokens {
        access_token: SecretString::from(access_token),
        refresh_token: text("refresh_token").map(SecretString::from),
        expires_in: json
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .map(Duration::from_secs),
    })
}

/// Put fresh tokens into `cred` as of `now`.
pub fn apply(cred: &mut Credential, tokens: Tokens, now: SystemTime) {
    cred.kind = Kind::Oauth;
    cred.token = tokens.access_token;
    if let Some(r) = tokens.refresh_token {
        cred.secrets.insert(REFRESH_TOKEN.into(), r);
    }
    cred.expires_at = tokens.expires_in.map(|d| now + d);
    cred.updated_at = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn cred(expires_in: Option<u64>, now: SystemTime) -> Credential {
        let mut c = Credential::new_static("oauth", SecretString::from("at-old"), "stdin");
        c.kind = Kind::Oauth;
        c.updated_at = now;
        c.expires_at = expires_in.map(|s| now + Duration::from_secs(s));
        c.metadata
            .insert(TOKEN_URL.into(), "https://auth.corp.test/token".into());
        c.metadata.insert(CLIENT_ID.into(), "app id".into());
        c.secrets
            .insert(REFRESH_TOKEN.into(), SecretString::from("rt/+="));
        c.secrets
            .insert(CLIENT_SECRET.into(), SecretString::from("cs"));
        c
    }

    #[test]
    fn due_within_the_lead_or_when_stale() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cred(Some(3600), t0);
        let p = Policy::OAUTH;
        assert!(!p.due(&c, t0));
        assert!(!p.due(&c, t0 + Duration::from_secs(3600 - 301)));
        assert!(p.due(&c, t0 + Duration::from_secs(3600 - 300)));
        assert!(p.due(&c, t0 + Duration::from_secs(7200)));
        let daily = Policy {
            lead: Duration::ZERO,
            every: Some(Duration::from_secs(86_400)),
            how: Renew::FbExchange,
        };
        let forever = cred(None, t0);
        assert!(!daily.due(&forever, t0 + Duration::from_secs(86_399)));
        assert!(daily.due(&forever, t0 + Duration::from_secs(86_400)));
        assert!(!p.due(&forever, t0 + Duration::from_secs(10 * 86_400)));
    }

    #[test]
    fn refresh_request_is_form_encoded() {
        let c = cred(Some(1), UNIX_EPOCH);
        let r = refresh_request(&c).unwrap();
        assert_eq!(r.url, "https://auth.corp.test/token");
        assert_eq!(
            r.form.as_str(),
            "grant_type=refresh_token&refresh_token=rt%2F%2B%3D&client_id=app%20id&client_secret=cs"
        );
        let mut bare = cred(Some(1), UNIX_EPOCH);
        bare.secrets.clear();
        assert_eq!(
            refresh_request(&bare).err(),
            Some(OauthError::Missing("refresh token"))
        );
    }

    #[test]
    fn responses() {
        let t = parse_response(
            200,
            br#"{"access_token":"at-new","expires_in":3600,"refresh_token":"rt-new"}"#,
            &[],
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "at-new");
        assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
        let now = UNIX_EPOCH + Duration::from_secs(50);
        let mut c = cred(Some(1), UNIX_EPOCH);
        apply(&mut c, t, now);
        assert_eq!(c.token.expose_secret(), "at-new");
        assert_eq!(c.secrets[REFRESH_TOKEN].expose_secret(), "rt-new");
        assert_eq!(c.expires_at, Some(now + Duration::from_secs(3600)));
        let err = parse_response(
            400,
            br#"{"error":"invalid_grant","error_description":"refresh token rt-secret-value expired"}"#,
            &["rt-secret-value"],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the token endpoint refused the refresh (HTTP 400: refresh token [redacted] expired)"
        );
        assert_eq!(
            parse_response(200, b"{}", &[]).unwrap_err(),
            OauthError::NoAccessToken
        );
    }
}
