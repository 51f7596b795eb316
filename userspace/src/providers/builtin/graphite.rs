//! Graphite: `Authorization: token …` (not Bearer).

use super::super::Provider;
use super::super::placeholder::{Alphabet, Format};
use super::{header_provider, strings};

pub fn provider() -> Provider {
    let mut p = header_provider(
        "graphite",
        "Graphite",
        "Graphite auth token (gt CLI)",
        &["api.graphite.com", "*.graphite.com"],
        "Authorization",
        "token ",
    );
    p.source_env = strings(&["GRAPHITE_TOKEN", "GT_TOKEN"]);
    p.placeholder = Some(Format::prefixed("", 40, Alphabet::Base62));
    p.prompt = Some(
        "Enter a Graphite auth token.\nTo get your token:\n  1. Visit https://app.graphite.com/activate\n  2. Sign in and copy the token\n  3. Paste it below"
            .into(),
    );
    p
}
