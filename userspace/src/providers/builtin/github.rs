//! GitHub: `Authorization: Bearer` on the API; Basic `x-access-token:<token>`
//! on github.com, because git's smart-HTTP endpoints only take Basic (a
//! deliberate departure from the reference table, which says Bearer for both).

use super::super::placeholder::{Alphabet, Format};
use super::super::{HeaderRule, HeaderValue, Injection, Provider, SourceCommand, hosts};
use super::{header_provider, strings, validate_get};

pub fn provider() -> Provider {
    let mut p = header_provider(
        "github",
        "GitHub",
        "GitHub token (gh CLI, GITHUB_TOKEN/GH_TOKEN, or a personal access token)",
        &["api.github.com", "github.com"],
        "Authorization",
        "Bearer ",
    );
    p.injection = Injection::Headers(vec![
        HeaderRule {
            hosts: hosts(&["api.github.com"]),
            header: "Authorization".into(),
            value: HeaderValue::Prefixed("Bearer ".into()),
        },
        HeaderRule {
            hosts: hosts(&["github.com"]),
            header: "Authorization".into(),
            value: HeaderValue::Basic {
                user: "x-access-token".into(),
            },
        },
    ]);
    // Sources in order: the gh CLI, then GITHUB_TOKEN / GH_TOKEN, then a prompt.
    p.source_command = Some(SourceCommand {
        argv: strings(&["gh", "auth", "token"]),
        label: "gh CLI",
        id: "gh",
    });
    p.source_env = strings(&["GITHUB_TOKEN", "GH_TOKEN"]);
    p.container_env = Some("GH_TOKEN".into());
    p.placeholder = Some(Format::prefixed("ghp_", 36, Alphabet::Base62));
    p.validate = validate_get("https://api.github.com/user");
    p.prompt = Some("Enter a GitHub Personal Access Token.\nTo create one: visit https://github.com/settings/tokens".into());
    p
}
