//! Claude Code OAuth tokens (`sk-ant-oat…`): Bearer plus the OAuth beta flag.

use super::super::placeholder::{Alphabet, Format};
use super::super::{HeaderRule, HeaderValue, Injection, Provider};
use super::header_provider;

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
            value: HeaderValue::Prefixed("oauth-2025-04-20".into()),
        });
    }
    p.container_env = Some("CLAUDE_CODE_OAUTH_TOKEN".into());
    p.placeholder = Some(Format::prefixed("sk-ant-oat01-", 95, Alphabet::UrlSafe));
    p.prompt =
        Some("Paste an OAuth token from 'claude setup-token' (starts with sk-ant-oat).".into());
    p
}
