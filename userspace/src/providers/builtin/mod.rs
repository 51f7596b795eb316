//! Built-in providers, one file each. Hosts and headers follow the grants
//! reference; special flows (OAuth import, npm registries, AWS, SSH) are
//! completed in their own files as they land.

pub mod anthropic;
mod aws;
pub mod claude;
pub mod gemini;
pub mod github;
pub mod graphite;
pub mod mcp;
pub mod meta;
pub mod npm;
pub mod oauth;
pub mod openai;
mod ssh;

use super::{BindError, Binding, Provider, SandboxFile};
use crate::store::Credential;

/// The Anthropic API version Moat's validation requests ask for (the API
/// requires one); shared by the `anthropic` and `claude` providers.
pub const ANTHROPIC_API_VERSION: &str = "2023-06-01";

/// Every Claude OAuth access token starts with this (the `claude` provider
/// takes them, the `anthropic` provider refuses them).
pub const CLAUDE_OAUTH_PREFIX: &str = "sk-ant-oat";

/// Every built-in provider, in the order `moat grant providers` lists them.
pub fn all() -> Vec<Provider> {
    vec![
        github::provider(),
        claude::provider(),
        anthropic::provider(),
        openai::provider(),
        gemini::provider(),
        graphite::provider(),
        meta::provider(),
        npm::provider(),
        oauth::provider(),
        aws::provider(),
        ssh::provider(),
        mcp::provider(),
    ]
}

/// Built-ins whose rules depend on the credential bind themselves.
pub(super) fn bind(p: &Provider, cred: &Credential) -> Result<Vec<Binding>, BindError> {
    match p.name.as_str() {
        "npm" => npm::bind(p, cred),
        "oauth" => oauth::bind(p, cred),
        "gemini" => Ok(gemini::bind(p, cred)),
        // The sandbox's SSH agent serves it (`crate::ssh`), not the proxy.
        "ssh" => Ok(Vec::new()),
        "github" => match cred.metadata.get(github::ENTERPRISE_HOST) {
            Some(host) => Ok(vec![Binding {
                provider: github::enterprise(p, host)?,
                token: cred.token.clone(),
            }]),
            None => Ok(vec![Binding {
                provider: p.clone(),
                token: cred.token.clone(),
            }]),
        },
        _ => Ok(vec![Binding {
            provider: p.clone(),
            token: cred.token.clone(),
        }]),
    }
}

/// How a built-in's credential is kept fresh during a run, if at all.
pub(super) fn refresh_policy(p: &Provider, cred: &Credential) -> Option<super::oauth::Policy> {
    let refreshable = cred.metadata.contains_key(super::oauth::TOKEN_URL);
    match p.name.as_str() {
        "oauth" if refreshable => Some(oauth::policy()),
        "gemini" => gemini::policy(cred),
        "meta" => meta::policy(cred),
        "github" => github::policy(p, cred),
        _ => None,
    }
}

/// Placeholder config files for the sandbox HOME, per built-in.
pub(super) fn sandbox_files(
    p: &Provider,
    cred: &Credential,
    placeholder: &str,
) -> Vec<SandboxFile> {
    match p.name.as_str() {
        "graphite" => vec![graphite::user_config(placeholder)],
        "npm" => vec![npm::npmrc(cred)],
        "gemini" => gemini::sandbox_files(cred, placeholder),
        _ => Vec::new(),
    }
}

/// A provider that injects one header with a prefix on all its hosts.
fn header_provider(
    name: &str,
    title: &str,
    description: &str,
    host_list: &[&str],
    header: &str,
    prefix: &str,
) -> Provider {
    let hosts = super::hosts(host_list);
    Provider {
        name: name.to_owned(),
        title: title.to_owned(),
        description: description.to_owned(),
        aliases: Vec::new(),
        hosts: hosts.clone(),
        injection: super::Injection::Headers(vec![super::HeaderRule {
            hosts,
            header: header.to_owned(),
            value: super::HeaderValue::Prefixed(prefix.to_owned()),
        }]),
        source_env: Vec::new(),
        container_env: None,
        placeholder: None,
        validate: None,
        prompt: None,
        flow: super::Flow::Token,
        origin: super::Origin::Builtin,
        response_hosts: Vec::new(),
        local: None,
        source_command: None,
    }
}

fn validate_get(url: &str) -> Option<super::Validate> {
    Some(super::Validate {
        url: url.to_owned(),
        method: "GET".to_owned(),
        header: None,
        prefix: String::new(),
        extra_headers: Vec::new(),
        confirm: false,
    })
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
