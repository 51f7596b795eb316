//! GitHub: `Authorization: Bearer` on the API; Basic `x-access-token:<token>`
//! on github.com, because git's smart-HTTP endpoints only take Basic (a
//! deliberate departure from the reference table, which says Bearer for both).
//!
//! Refresh: a token that came from `gh auth token` is re-read from gh every
//! 30 minutes during a run (gh may have refreshed or rotated it). Tokens from
//! `GITHUB_TOKEN`/`GH_TOKEN`, a prompt or stdin are static: the variable was
//! read by `moat grant` in another process, and nothing a running proxy can
//! re-read holds a newer value; grant again to replace them.

use std::time::Duration;

use super::super::oauth::{Policy, Renew};
use super::super::placeholder::{Alphabet, Format};
use super::super::{
    BindError, HeaderRule, HeaderValue, HostPattern, Injection, Provider, SourceCommand, hosts,
};
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

/// How often a gh-sourced token is re-read from gh during a run.
pub const REREAD_EVERY: Duration = Duration::from_secs(30 * 60);

/// Re-run `gh auth token [--hostname HOST]` every 30 minutes for tokens that
/// came from gh; every other source is static.
pub fn policy(p: &Provider, cred: &crate::store::Credential) -> Option<Policy> {
    if cred.source != "gh" {
        return None;
    }
    let p = match cred.metadata.get(ENTERPRISE_HOST) {
        Some(host) => enterprise(p, host).ok()?,
        None => p.clone(),
    };
    Some(Policy {
        lead: Duration::ZERO,
        every: Some(REREAD_EVERY),
        how: Renew::Command(p.source_command?.argv),
    })
}

/// Metadata key naming a GitHub Enterprise Server host.
pub const ENTERPRISE_HOST: &str = "enterprise_host";

/// The provider for a GitHub Enterprise Server `host` (`moat grant github
/// --host HOST`, stored as `github:HOST`): API at `https://HOST/api/v3`,
/// Bearer on that host, token from `gh auth token --hostname HOST`.
pub fn enterprise(p: &Provider, host: &str) -> Result<Provider, BindError> {
    let pattern = HostPattern::parse(host).map_err(|e| BindError::Incomplete {
        provider: "github".into(),
        what: format!("enterprise host '{host}': {e}"),
    })?;
    let mut p = p.clone();
    p.title = format!("GitHub Enterprise ({host})");
    p.hosts = vec![pattern.clone()];
    p.injection = Injection::Headers(vec![HeaderRule {
        hosts: vec![pattern],
        header: "Authorization".into(),
        value: HeaderValue::Prefixed("Bearer ".into()),
    }]);
    if let Some(cmd) = &mut p.source_command {
        cmd.argv.extend(strings(&["--hostname", host]));
    }
    p.validate = validate_get(&format!("https://{host}/api/v3/user"));
    p.prompt = Some(format!(
        "Enter a personal access token for {host}.\nTo create one: visit https://{host}/settings/tokens"
    ));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enterprise_host_gets_bearer_api_v3_and_gh_hostname() {
        let p = enterprise(&provider(), "ghe.corp.test").unwrap();
        let Injection::Headers(rules) = &p.injection else {
            panic!()
        };
        assert_eq!(rules.len(), 1);
        assert!(rules[0].hosts[0].matches("ghe.corp.test", 443));
        assert!(!rules[0].hosts[0].matches("api.github.com", 443));
        assert_eq!(rules[0].value, HeaderValue::Prefixed("Bearer ".into()));
        assert_eq!(p.validate.unwrap().url, "https://ghe.corp.test/api/v3/user");
        assert_eq!(
            p.source_command.unwrap().argv,
            ["gh", "auth", "token", "--hostname", "ghe.corp.test"]
        );
        assert!(enterprise(&provider(), "bad host").is_err());
    }

    #[test]
    fn gh_tokens_are_reread_every_30_minutes_others_are_static() {
        use crate::store::Credential;
        use secrecy::SecretString;
        let gh = Credential::new_static("github", SecretString::from("gho_x"), "gh");
        let p = policy(&provider(), &gh).unwrap();
        assert_eq!(p.every, Some(REREAD_EVERY));
        assert_eq!(p.how, Renew::Command(strings(&["gh", "auth", "token"])));
        let mut ghe = gh;
        ghe.metadata
            .insert(ENTERPRISE_HOST.into(), "ghe.corp.test".into());
        assert_eq!(
            policy(&provider(), &ghe).unwrap().how,
            Renew::Command(strings(&[
                "gh",
                "auth",
                "token",
                "--hostname",
                "ghe.corp.test"
            ]))
        );
        for source in ["env:GITHUB_TOKEN", "env:GH_TOKEN", "prompt", "stdin"] {
            let c = Credential::new_static("github", SecretString::from("ghp_x"), source);
            assert!(policy(&provider(), &c).is_none(), "{source}");
        }
    }
}
