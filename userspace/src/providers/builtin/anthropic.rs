//! Anthropic API keys: `x-api-key` on api.anthropic.com.

use super::super::Provider;
use super::super::placeholder::{Alphabet, Format};
use super::{header_provider, strings};

pub fn provider() -> Provider {
    let mut p = header_provider(
        "anthropic",
        "Anthropic",
        "Anthropic API key (console.anthropic.com)",
        &["api.anthropic.com"],
        "x-api-key",
        "",
    );
    p.source_env = strings(&["ANTHROPIC_API_KEY"]);
    p.container_env = Some("ANTHROPIC_API_KEY".into());
    p.placeholder = Some(Format::prefixed("sk-ant-api03-", 95, Alphabet::UrlSafe));
    p.prompt = Some("Enter your Anthropic API key.\nYou can create one at: https://console.anthropic.com/settings/keys".into());
    p
}
