//! OpenAI API keys: Bearer on api.openai.com, chatgpt.com and *.openai.com.

use super::super::Provider;
use super::super::placeholder::{Alphabet, Format};
use super::{header_provider, strings, validate_get};

pub fn provider() -> Provider {
    let mut p = header_provider(
        "openai",
        "OpenAI",
        "OpenAI API key",
        &["api.openai.com", "chatgpt.com", "*.openai.com"],
        "Authorization",
        "Bearer ",
    );
    p.source_env = strings(&["OPENAI_API_KEY"]);
    p.container_env = Some("OPENAI_API_KEY".into());
    p.placeholder = Some(Format::prefixed("sk-proj-", 64, Alphabet::UrlSafe));
    p.validate = validate_get("https://api.openai.com/v1/models");
    p.prompt = Some("Enter your OpenAI API key.\nYou can find or create one at: https://platform.openai.com/api-keys".into());
    p
}
