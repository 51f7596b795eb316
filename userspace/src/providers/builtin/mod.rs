//! Built-in providers, one file each. Hosts and headers follow the grants
//! reference; special flows (OAuth import, npm registries, AWS, SSH) are
//! completed in their own files as they land.

mod anthropic;
mod aws;
mod claude;
mod gemini;
mod github;
mod graphite;
mod mcp;
mod meta;
mod npm;
mod openai;
mod ssh;

use super::Provider;

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
        aws::provider(),
        ssh::provider(),
        mcp::provider(),
    ]
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
        source_command: None,
    }
}

fn validate_get(url: &str) -> Option<super::Validate> {
    Some(super::Validate {
        url: url.to_owned(),
        method: "GET".to_owned(),
        header: None,
        prefix: String::new(),
    })
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
