//! Anthropic API keys: `x-api-key` on api.anthropic.com. OAuth tokens
//! (`sk-ant-oat…`) belong to the `claude` provider instead.

use super::super::Provider;
use super::super::placeholder::{Alphabet, Format};
use super::{ANTHROPIC_API_VERSION, CLAUDE_OAUTH_PREFIX, header_provider, strings, validate_get};

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
    p.validate = validate_get("https://api.anthropic.com/v1/models").map(|mut v| {
        v.extra_headers = vec![("anthropic-version".into(), ANTHROPIC_API_VERSION.into())];
        // Listing models is free, but it is still a call on the user's account.
        v.confirm = true;
        v
    });
    p.prompt = Some("Enter your Anthropic API key.\nYou can create one at: https://console.anthropic.com/settings/keys".into());
    p
}

/// An OAuth token given to `moat grant anthropic` would be sent as
/// `x-api-key` and refused: say where it belongs instead.
pub fn check_api_key(token: &str) -> Result<(), &'static str> {
    if token.starts_with(CLAUDE_OAUTH_PREFIX) {
        return Err(
            "this is a Claude OAuth token (sk-ant-oat…), not an API key; store it with: moat grant claude",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_tokens_are_refused_as_api_keys() {
        assert!(check_api_key("sk-ant-api03-abc").is_ok());
        assert!(
            check_api_key("sk-ant-oat01-abc")
                .unwrap_err()
                .contains("moat grant claude")
        );
    }
}
