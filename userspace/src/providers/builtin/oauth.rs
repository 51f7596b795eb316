//! Generic OAuth 2.0 credentials (`moat grant oauth <name>`, stored as
//! `oauth-<name>`): the access token as `Authorization: Bearer` on the hosts
//! given at grant time, refreshed by the proxy within 5 minutes of expiry.

use super::super::oauth::Policy;
use super::super::{
    BindError, Binding, Flow, HeaderRule, HeaderValue, HostPattern, Injection, Provider,
};
use super::header_provider;
use crate::store::Credential;

/// Metadata key: comma-separated host patterns.
pub const HOSTS: &str = "hosts";

pub fn provider() -> Provider {
    let mut p = header_provider(
        "oauth",
        "OAuth",
        "OAuth 2.0 credential refreshed by Moat (grant as: moat grant oauth <name> --token-url URL --client-id ID --host HOST)",
        &[],
        "Authorization",
        "Bearer ",
    );
    p.injection = Injection::Special("Bearer on the hosts given at grant time");
    p.flow = Flow::Oauth;
    p
}

pub fn policy() -> Policy {
    Policy::OAUTH
}

pub fn bind(p: &Provider, cred: &Credential) -> Result<Vec<Binding>, BindError> {
    let incomplete = |what: String| BindError::Incomplete {
        provider: "oauth".into(),
        what,
    };
    let hosts = cred
        .metadata
        .get(HOSTS)
        .ok_or_else(|| incomplete("no hosts".into()))?
        .split(',')
        .map(|h| HostPattern::parse(h.trim()).map_err(|e| incomplete(format!("host '{h}': {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut provider = p.clone();
    provider.hosts = hosts.clone();
    provider.injection = Injection::Headers(vec![HeaderRule {
        hosts,
        header: "Authorization".into(),
        value: HeaderValue::Prefixed("Bearer ".into()),
    }]);
    Ok(vec![Binding {
        provider,
        token: cred.token.clone(),
    }])
}
