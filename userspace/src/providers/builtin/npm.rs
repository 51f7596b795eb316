//! npm registries: `Authorization: Bearer` per registry host. One `npm`
//! credential holds every registry (token per host in its secrets, hosts and
//! scope routing in its metadata); `moat grant npm --host` calls merge.
//!
//! No registry host is built in: the default registry comes from the user's
//! npm configuration (`registry=` in `~/.npmrc`, `npm config get registry`).

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::super::placeholder::Format;
use super::super::{
    BindError, Binding, Flow, HeaderRule, HeaderValue, HostPattern, Injection, Provider,
    SandboxFile,
};
use super::{header_provider, strings};
use crate::store::Credential;

/// What the sandbox's `.npmrc` holds instead of each token.
pub const PLACEHOLDER: &str = "npm_moatProxyInjected00000000";

/// Metadata key of the registry list.
const META_REGISTRIES: &str = "registries";

pub fn provider() -> Provider {
    let mut p = header_provider(
        "npm",
        "npm",
        "npm registry tokens (per registry host, from .npmrc, NPM_TOKEN, or --host)",
        &[],
        "Authorization",
        "Bearer ",
    );
    p.injection = Injection::Special("Bearer per registry host stored with the credential");
    p.source_env = strings(&["NPM_TOKEN"]);
    p.placeholder = Some(Format::Fixed(PLACEHOLDER));
    p.flow = Flow::Npm;
    p
}

/// One registry of the credential (its token is in the credential's secrets,
/// keyed by host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub host: String,
    /// The registry URL as npm knows it (`https://npm.corp.test/api/npm/`).
    pub url: String,
    /// Scopes routed to it (`@myorg`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// npm's default registry (`registry=`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// A registry found in `.npmrc`, with its token when one is configured.
#[derive(Debug)]
pub struct Found {
    pub registry: Registry,
    pub token: Option<SecretString>,
}

/// `https://h/p/` → `h` (port kept: `h:8443`).
pub fn host_of(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .or_else(|| url.strip_prefix("//"))?;
    let host = rest.split('/').next()?.to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// A registry URL from a host or URL the user typed.
pub fn url_for(host_or_url: &str) -> String {
    let url = if host_or_url.contains("://") {
        host_or_url.to_owned()
    } else {
        format!("https://{host_or_url}/")
    };
    if url.ends_with('/') { url } else { url + "/" }
}

/// Expand npm's `${VAR}` references.
fn expand(value: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('}') {
            Some(end) => {
                let var = &rest[start + 2..start + 2 + end];
                out.push_str(&env(var).unwrap_or_default());
                rest = &rest[start + 3 + end..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Registries configured in an `.npmrc`: `registry=`, `@scope:registry=`,
/// and `//host/…:_authToken=` (tokens may be `${VAR}` references).
pub fn parse_npmrc(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<Found> {
    let mut urls: Vec<Registry> = Vec::new();
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    fn add(urls: &mut Vec<Registry>, url: &str, scope: Option<&str>, default: bool) {
        let Some(host) = host_of(url) else { return };
        let url = url_for(url);
        let r = match urls.iter_mut().find(|r| r.host == host) {
            Some(r) => r,
            None => {
                urls.push(Registry {
                    host,
                    url,
                    scopes: Vec::new(),
                    default: false,
                });
                urls.last_mut().expect("just pushed")
            }
        };
        r.default |= default;
        if let Some(s) = scope
            && !r.scopes.iter().any(|x| x == s)
        {
            r.scopes.push(s.to_owned());
        }
    }
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), expand(value.trim().trim_matches('"'), env));
        if key == "registry" {
            add(&mut urls, &value, None, true);
        } else if let Some(scope) = key.strip_suffix(":registry")
            && scope.starts_with('@')
        {
            add(&mut urls, &value, Some(scope), false);
        } else if let Some(prefix) = key.strip_suffix(":_authToken")
            && let Some(host) = host_of(prefix)
            && !value.is_empty()
        {
            tokens.insert(host, value);
        }
    }
    for host in tokens.keys() {
        if !urls.iter().any(|r| &r.host == host) {
            add(&mut urls, &format!("https://{host}/"), None, false);
        }
    }
    urls.into_iter()
        .map(|registry| Found {
            token: tokens
                .get(&registry.host)
                .map(|t| SecretString::from(t.as_str())),
            registry,
        })
        .collect()
}

/// The registries a stored credential holds.
pub fn registries(cred: &Credential) -> Vec<Registry> {
    cred.metadata
        .get(META_REGISTRIES)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// Add or replace `registry` and its token in `cred` (merging `--host` calls).
pub fn merge(cred: &mut Credential, registry: Registry, token: SecretString) {
    let mut list = registries(cred);
    list.retain(|r| r.host != registry.host);
    if registry.default {
        for r in &mut list {
            r.default = false;
        }
    }
    cred.secrets.insert(registry.host.clone(), token);
    list.push(registry);
    list.sort_by(|a, b| a.host.cmp(&b.host));
    cred.metadata.insert(
        META_REGISTRIES.into(),
        serde_json::to_string(&list).expect("serializing to memory cannot fail"),
    );
}

/// One Bearer rule per registry host, each with its own token.
pub fn bind(p: &Provider, cred: &Credential) -> Result<Vec<Binding>, BindError> {
    let list = registries(cred);
    if list.is_empty() {
        return Err(BindError::Incomplete {
            provider: "npm".into(),
            what: "no registries".into(),
        });
    }
    list.iter()
        .map(|r| {
            let token =
                cred.secrets
                    .get(&r.host)
                    .cloned()
                    .ok_or_else(|| BindError::Incomplete {
                        provider: "npm".into(),
                        what: format!("no token for {}", r.host),
                    })?;
            let host = HostPattern::parse(&r.host).map_err(|e| BindError::Incomplete {
                provider: "npm".into(),
                what: format!("registry host '{}': {e}", r.host),
            })?;
            let mut provider = p.clone();
            provider.hosts = vec![host.clone()];
            provider.injection = Injection::Headers(vec![HeaderRule {
                hosts: vec![host],
                header: "Authorization".into(),
                value: HeaderValue::Prefixed("Bearer ".into()),
            }]);
            Ok(Binding { provider, token })
        })
        .collect()
}

/// The sandbox's `~/.npmrc`: the real registry and scope routing (npm needs
/// it to resolve scoped packages) and placeholder tokens.
pub fn npmrc(cred: &Credential) -> SandboxFile {
    let mut text = String::from(
        "# Written by Moat: tokens are placeholders, the proxy injects the real ones.\n",
    );
    let list = registries(cred);
    for r in list.iter().filter(|r| r.default) {
        text.push_str(&format!("registry={}\n", r.url));
    }
    for r in &list {
        for scope in &r.scopes {
            text.push_str(&format!("{scope}:registry={}\n", r.url));
        }
    }
    for r in &list {
        let path = r.url.split_once("://").map(|(_, p)| p).unwrap_or(&r.url);
        text.push_str(&format!("//{path}:_authToken={PLACEHOLDER}\n"));
    }
    SandboxFile {
        rel_path: ".npmrc".into(),
        contents: text,
        mode: 0o600,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const NPMRC: &str = "\
registry=https://npm.corp.test/
@myorg:registry=https://npm.corp.test/
@other:registry=https://pkgs.other.test/api/npm/
//npm.corp.test/:_authToken=corp-token
//pkgs.other.test/api/npm/:_authToken=${OTHER_TOKEN}
//orphan.test/:_authToken=orphan-token
; comment
always-auth=true
";

    fn env(v: &str) -> Option<String> {
        (v == "OTHER_TOKEN").then(|| "other-token".to_owned())
    }

    #[test]
    fn parses_registries_scopes_and_tokens() {
        let found = parse_npmrc(NPMRC, &env);
        let by_host = |h: &str| found.iter().find(|f| f.registry.host == h).unwrap();
        let corp = by_host("npm.corp.test");
        assert!(corp.registry.default);
        assert_eq!(corp.registry.scopes, ["@myorg"]);
        assert_eq!(corp.token.as_ref().unwrap().expose_secret(), "corp-token");
        let other = by_host("pkgs.other.test");
        assert_eq!(other.registry.url, "https://pkgs.other.test/api/npm/");
        assert_eq!(other.token.as_ref().unwrap().expose_secret(), "other-token");
        assert!(by_host("orphan.test").token.is_some());
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn merge_binds_per_host_and_writes_npmrc() {
        let mut cred = Credential::new_static("npm", SecretString::from("corp-token"), "npmrc");
        for f in parse_npmrc(NPMRC, &env) {
            merge(&mut cred, f.registry, f.token.unwrap());
        }
        // A later --host call replaces that host's entry only.
        merge(
            &mut cred,
            Registry {
                host: "orphan.test".into(),
                url: url_for("orphan.test"),
                scopes: vec![],
                default: false,
            },
            SecretString::from("new-orphan"),
        );
        assert_eq!(registries(&cred).len(), 3);
        assert_eq!(cred.secrets["orphan.test"].expose_secret(), "new-orphan");

        let p = provider();
        let bindings = bind(&p, &cred).unwrap();
        assert_eq!(bindings.len(), 3);
        let b = bindings
            .iter()
            .find(|b| b.provider.hosts[0].matches("pkgs.other.test", 443))
            .unwrap();
        assert_eq!(b.token.expose_secret(), "other-token");

        let f = npmrc(&cred);
        assert_eq!(f.rel_path.to_str(), Some(".npmrc"));
        assert!(f.contents.contains("registry=https://npm.corp.test/\n"));
        assert!(
            f.contents
                .contains("@myorg:registry=https://npm.corp.test/\n")
        );
        assert!(
            f.contents
                .contains("@other:registry=https://pkgs.other.test/api/npm/\n")
        );
        assert!(f.contents.contains(&format!(
            "//pkgs.other.test/api/npm/:_authToken={PLACEHOLDER}\n"
        )));
        for secret in ["corp-token", "other-token", "new-orphan"] {
            assert!(!f.contents.contains(secret));
        }
    }

    #[test]
    fn no_registries_is_a_clear_error() {
        let cred = Credential::new_static("npm", SecretString::from("t"), "stdin");
        let err = bind(&provider(), &cred).unwrap_err().to_string();
        assert!(err.contains("moat grant npm"), "{err}");
    }

    #[test]
    fn hosts_and_urls() {
        assert_eq!(
            host_of("https://NPM.corp.test:8443/x/").as_deref(),
            Some("npm.corp.test:8443")
        );
        assert_eq!(url_for("npm.corp.test"), "https://npm.corp.test/");
        assert_eq!(url_for("https://r.test/api"), "https://r.test/api/");
    }
}
