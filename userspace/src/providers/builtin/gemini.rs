//! Gemini: API key mode (`x-goog-api-key`). OAuth import from the Gemini CLI
//! (Bearer on cloudcode-pa.googleapis.com) lands with the OAuth flows.

use super::super::Provider;
use super::super::placeholder::{Alphabet, Format};
use super::{header_provider, strings};

pub fn provider() -> Provider {
    let mut p = header_provider(
        "gemini",
        "Gemini",
        "Google Gemini API key (or Gemini CLI OAuth)",
        &["generativelanguage.googleapis.com"],
        "x-goog-api-key",
        "",
    );
    p.source_env = strings(&["GEMINI_API_KEY"]);
    p.container_env = Some("GEMINI_API_KEY".into());
    p.placeholder = Some(Format::prefixed("AIza", 35, Alphabet::UrlSafe));
    p.prompt = Some(
        "Enter your Gemini API key.\nYou can create one at: https://aistudio.google.com/apikey"
            .into(),
    );
    p
}
