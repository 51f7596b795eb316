//! Meta Graph API: Bearer on graph.facebook.com and graph.instagram.com. No
//! placeholder env var inside the sandbox.
//!
//! With app credentials (`META_APP_ID` + `META_APP_SECRET`) the token is
//! exchanged for a long-lived one (`grant_type=fb_exchange_token`) at grant
//! time and again once a day by the proxy, so it never reaches its ~60-day
//! expiry. Without them it is static.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::super::oauth::{OauthError, Policy, Renew, form_escape};
use super::super::{Flow, Provider};
use super::{header_provider, strings};
use crate::store::Credential;

/// Graph API version used unless `META_API_VERSION` says otherwise.
pub const DEFAULT_API_VERSION: &str = "v25.0";
/// Metadata: the Graph API version (`v25.0`).
pub const API_VERSION: &str = "api_version";
/// Metadata: the Facebook app id.
pub const APP_ID: &str = "app_id";
/// Secret: the Facebook app secret.
pub const APP_SECRET: &str = "app_secret";

const GRAPH: &str = "https://graph.facebook.com";

/// How often a token with app credentials is exchanged for a fresh one.
pub const EXCHANGE_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

pub fn provider() -> Provider {
    let mut p = header_provider(
        "meta",
        "Meta",
        "Meta Graph API access token (optional app credentials for refresh)",
        &["graph.facebook.com", "graph.instagram.com"],
        "Authorization",
        "Bearer ",
    );
    p.source_env = strings(&["META_ACCESS_TOKEN"]);
    p.flow = Flow::Meta;
    p.prompt = Some(
        "Enter a Meta access token.\nTo create one:\n  1. Go to https://developers.facebook.com/tools/explorer/\n  2. Select your app and generate a token with the required permissions"
            .into(),
    );
    p
}

/// A Graph API version as `META_API_VERSION` may give it: `v25.0` (or `25.0`).
pub fn api_version(raw: Option<&str>) -> Result<String, String> {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(DEFAULT_API_VERSION.to_owned());
    };
    let v = raw.strip_prefix('v').unwrap_or(raw);
    let ok = v.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    if ok {
        Ok(format!("v{v}"))
    } else {
        Err(format!(
            "META_API_VERSION '{raw}' is not a Graph API version like {DEFAULT_API_VERSION}"
        ))
    }
}

/// The token's owner, asked at grant time (`Authorization: Bearer`).
pub fn me_url(version: &str) -> String {
    format!("{GRAPH}/{version}/me?fields=id,name")
}

fn version_of(cred: &Credential) -> &str {
    cred.metadata
        .get(API_VERSION)
        .map(String::as_str)
        .unwrap_or(DEFAULT_API_VERSION)
}

/// `GET …/oauth/access_token?grant_type=fb_exchange_token&…` for `cred`'s
/// current token. Holds the app secret and the token: never log it.
pub fn exchange_url(cred: &Credential) -> Result<String, OauthError> {
    let app_id = cred
        .metadata
        .get(APP_ID)
        .ok_or(OauthError::Missing("app id"))?;
    let secret = cred
        .secrets
        .get(APP_SECRET)
        .ok_or(OauthError::Missing("app secret"))?;
    Ok(format!(
        "{GRAPH}/{}/oauth/access_token?grant_type=fb_exchange_token&client_id={}&client_secret={}&fb_exchange_token={}",
        version_of(cred),
        form_escape(app_id),
        form_escape(secret.expose_secret()),
        form_escape(cred.token.expose_secret()),
    ))
}

/// Daily exchange when the credential has app credentials; else static.
pub fn policy(cred: &Credential) -> Option<Policy> {
    (cred.metadata.contains_key(APP_ID) && cred.secrets.contains_key(APP_SECRET)).then_some(
        Policy {
            lead: Duration::ZERO,
            every: Some(EXCHANGE_EVERY),
            how: Renew::FbExchange,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::time::UNIX_EPOCH;

    fn cred(app: bool) -> Credential {
        let mut c = Credential::new_static("meta", SecretString::from("EAAtoken/+"), "env");
        c.metadata.insert(API_VERSION.into(), "v26.0".into());
        if app {
            c.metadata.insert(APP_ID.into(), "123".into());
            c.secrets
                .insert(APP_SECRET.into(), SecretString::from("s&cret"));
        }
        c
    }

    #[test]
    fn exchange_url_and_daily_policy_only_with_app_credentials() {
        assert_eq!(
            exchange_url(&cred(true)).unwrap(),
            "https://graph.facebook.com/v26.0/oauth/access_token?grant_type=fb_exchange_token&client_id=123&client_secret=s%26cret&fb_exchange_token=EAAtoken%2F%2B"
        );
        assert_eq!(
            exchange_url(&cred(false)).unwrap_err(),
            OauthError::Missing("app id")
        );
        assert!(policy(&cred(false)).is_none());
        let p = policy(&cred(true)).unwrap();
        let mut c = cred(true);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        c.updated_at = t0;
        c.expires_at = Some(t0 + Duration::from_secs(60 * 86_400));
        assert!(!p.due(&c, t0 + EXCHANGE_EVERY - Duration::from_secs(1)));
        assert!(p.due(&c, t0 + EXCHANGE_EVERY));
    }

    #[test]
    fn api_versions() {
        assert_eq!(api_version(None).unwrap(), "v25.0");
        assert_eq!(api_version(Some("")).unwrap(), "v25.0");
        assert_eq!(api_version(Some("v26.0")).unwrap(), "v26.0");
        assert_eq!(api_version(Some("24.0")).unwrap(), "v24.0");
        assert!(api_version(Some("latest")).is_err());
        assert!(api_version(Some("v25/../x")).is_err());
        assert_eq!(
            me_url("v25.0"),
            "https://graph.facebook.com/v25.0/me?fields=id,name"
        );
    }
}
