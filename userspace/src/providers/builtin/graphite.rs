//! Graphite: `Authorization: token …` (not Bearer) on api.graphite.com and
//! *.graphite.com. The gt CLI reads its token from
//! `~/.config/graphite/user_config`, so the sandbox gets one with a placeholder.

use super::super::placeholder::{Alphabet, Format};
use super::super::{Provider, SandboxFile};
use super::{header_provider, strings};

/// Where gt keeps its token, relative to HOME.
pub const USER_CONFIG: &str = ".config/graphite/user_config";

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

/// gt's user config with the placeholder as its auth token.
pub fn user_config(placeholder: &str) -> SandboxFile {
    SandboxFile {
        rel_path: USER_CONFIG.into(),
        contents: format!("{}\n", serde_json::json!({ "authToken": placeholder })),
        mode: 0o600,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_config_holds_the_placeholder() {
        let f = user_config("PlaceHolder0123");
        assert_eq!(f.rel_path.to_str(), Some(".config/graphite/user_config"));
        assert_eq!(f.mode, 0o600);
        let v: serde_json::Value = serde_json::from_str(&f.contents).unwrap();
        assert_eq!(v["authToken"], "PlaceHolder0123");
    }
}
