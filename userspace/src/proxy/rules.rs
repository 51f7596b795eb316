//! Network policy (`moat.yaml` `network:`): which destinations a run may
//! reach and, for intercepted hosts, which requests.
//!
//! Pure decisions, no I/O. Granted hosts are always reachable; in `strict`
//! mode everything else must match a rule. A rule may carry route entries
//! (`allow GET /repos/**`, `deny * /admin/**`); the first entry matching a
//! request decides, and a request no entry matches is allowed (the host is
//! listed). Route entries need the request in the clear, so hosts with
//! entries are always intercepted.

use crate::providers::HostPattern;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Destinations without a rule are spliced through (not injected).
    #[default]
    Permissive,
    /// Destinations without a grant or rule are refused.
    Strict,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "permissive" => Ok(Mode::Permissive),
            "strict" => Ok(Mode::Strict),
            other => Err(format!(
                "unknown network policy '{other}' (expected permissive or strict)"
            )),
        }
    }
}

/// One host pattern and its route entries (maybe none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    pub host: HostPattern,
    pub routes: Vec<Route>,
}

/// `allow|deny METHOD PATH`: METHOD may be `*`; PATH is a glob where `*`
/// matches within one segment and `**` matches anything (also `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub allow: bool,
    /// `None` for `*`.
    pub method: Option<String>,
    pub path: String,
}

impl Route {
    pub fn parse(entry: &str) -> Result<Self, String> {
        let words: Vec<&str> = entry.split_whitespace().collect();
        let [action, method, path] = words[..] else {
            return Err(format!(
                "route entry '{entry}': expected 'allow|deny METHOD /path' (e.g. 'allow GET /repos/**')"
            ));
        };
        let allow = match action {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(format!(
                    "route entry '{entry}': '{other}' is not allow or deny"
                ));
            }
        };
        if !path.starts_with('/') {
            return Err(format!(
                "route entry '{entry}': the path must start with '/'"
            ));
        }
        let method = match method {
            "*" => None,
            m if m.bytes().all(|b| b.is_ascii_alphabetic()) => Some(m.to_ascii_uppercase()),
            m => {
                return Err(format!(
                    "route entry '{entry}': '{m}' is not an HTTP method"
                ));
            }
        };
        Ok(Route {
            allow,
            method,
            path: path.to_owned(),
        })
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && glob(self.path.as_bytes(), path.as_bytes())
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = if self.allow { "allow" } else { "deny" };
        let method = self.method.as_deref().unwrap_or("*");
        write!(f, "{action} {method} {}", self.path)
    }
}

/// `*` = any run of non-`/` bytes, `**` = any run of bytes.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern {
        [] => text.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        [b'*', rest @ ..] => {
            let segment = text.iter().position(|&b| b == b'/').unwrap_or(text.len());
            (0..=segment).any(|i| glob(rest, &text[i..]))
        }
        [p, rest @ ..] => text.first() == Some(p) && glob(rest, &text[1..]),
    }
}

/// A decision, with the reason a user reads in the 403 and the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
}

#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    pub mode: Mode,
    pub rules: Vec<HostRule>,
    /// Names never looked up or reached unless a rule allows the exact
    /// destination (Moat's own `host.moat.internal`, in any mode).
    pub reserved: Vec<HostPattern>,
}

impl NetworkPolicy {
    fn rule_for(&self, host: &str, port: u16) -> Option<&HostRule> {
        self.rules.iter().find(|r| r.host.matches(host, port))
    }

    /// May a connection to `host:port` be made at all?
    pub fn connection(&self, host: &str, port: u16, granted: bool) -> Verdict {
        if granted || self.rule_for(host, port).is_some() {
            Verdict::Allow
        } else if self.reserved.iter().any(|r| r.matches(host, port)) {
            Verdict::Deny(format!(
                "{host}:{port} is not published to the sandbox (list the port in network.host in moat.yaml)"
            ))
        } else if self.mode == Mode::Permissive {
            Verdict::Allow
        } else {
            Verdict::Deny(format!(
                "{host}:{port} is not allowed by the strict network policy (add it to network.rules in moat.yaml, or grant a credential for it)"
            ))
        }
    }

    /// Must requests to this host be seen in the clear to enforce routes?
    pub fn inspects(&self, host: &str, port: u16) -> bool {
        self.rule_for(host, port)
            .is_some_and(|r| !r.routes.is_empty())
    }

    /// May this request (path without the query) be forwarded? On a host
    /// with route entries, a path not in normal form ([`super::path`]) is
    /// refused, so the entries match the bytes the upstream gets.
    pub fn request(&self, host: &str, port: u16, method: &str, path: &str) -> Verdict {
        let Some(rule) = self.rule_for(host, port).filter(|r| !r.routes.is_empty()) else {
            return Verdict::Allow;
        };
        match super::path::normalize(path) {
            Ok(std::borrow::Cow::Borrowed(_)) => {}
            Ok(std::borrow::Cow::Owned(normal)) => {
                return Verdict::Deny(format!(
                    "{method} {path} on {host} is refused: the network rules of {host} match normalized paths, and this one is not (send it as {normal})"
                ));
            }
            Err(e) => {
                return Verdict::Deny(format!(
                    "{method} {path} on {host} is refused: the network rules of {host} match normalized paths, and {e}"
                ));
            }
        }
        match rule.routes.iter().find(|r| r.matches(method, path)) {
            Some(route) if !route.allow => Verdict::Deny(format!(
                "{method} {path} on {host} is denied by the network rule '{route}'"
            )),
            _ => Verdict::Allow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str, routes: &[&str]) -> HostRule {
        HostRule {
            host: HostPattern::parse(host).unwrap(),
            routes: routes.iter().map(|r| Route::parse(r).unwrap()).collect(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob(b"/repos/**", b"/repos/a/b/c"));
        assert!(glob(b"/repos/**", b"/repos/"));
        assert!(!glob(b"/repos/**", b"/repo"));
        assert!(glob(b"/repos/*/issues", b"/repos/moat/issues"));
        assert!(!glob(b"/repos/*/issues", b"/repos/a/b/issues"));
        assert!(glob(b"/**", b"/"));
        assert!(glob(b"/v1/*", b"/v1/"));
        assert!(!glob(b"/v1", b"/v1/x"));
    }

    #[test]
    fn route_entries_parse_or_say_why_not() {
        let r = Route::parse("allow get /repos/**").unwrap();
        assert_eq!(r.method.as_deref(), Some("GET"));
        assert_eq!(r.to_string(), "allow GET /repos/**");
        assert_eq!(Route::parse("deny * /**").unwrap().method, None);
        for bad in ["allow GET", "permit GET /x", "allow GET x", "allow G/T /x"] {
            assert!(Route::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strict_allows_granted_and_listed_hosts_only() {
        let p = NetworkPolicy {
            mode: Mode::Strict,
            rules: vec![rule("*.pypi.test", &[])],
            ..Default::default()
        };
        assert_eq!(p.connection("api.github.com", 443, true), Verdict::Allow);
        assert_eq!(p.connection("files.pypi.test", 443, false), Verdict::Allow);
        assert!(
            matches!(p.connection("evil.test", 443, false), Verdict::Deny(m) if m.contains("evil.test:443"))
        );
        let permissive = NetworkPolicy::default();
        assert_eq!(
            permissive.connection("evil.test", 443, false),
            Verdict::Allow
        );
    }

    #[test]
    fn first_matching_route_wins_and_unmatched_requests_pass() {
        let p = NetworkPolicy {
            mode: Mode::Strict,
            rules: vec![rule(
                "api.github.com",
                &[
                    "allow GET /repos/moat/**",
                    "deny * /repos/**",
                    "deny DELETE /**",
                ],
            )],
            ..Default::default()
        };
        let req = |m, path| p.request("api.github.com", 443, m, path);
        assert_eq!(req("GET", "/repos/moat/pulls"), Verdict::Allow);
        assert!(
            matches!(req("GET", "/repos/other/pulls"), Verdict::Deny(m) if m.contains("deny * /repos/**"))
        );
        assert!(matches!(req("DELETE", "/user"), Verdict::Deny(_)));
        assert_eq!(req("GET", "/user"), Verdict::Allow);
        assert!(p.inspects("api.github.com", 443));
        assert!(!p.inspects("other.test", 443));
        assert_eq!(p.request("other.test", 443, "DELETE", "/"), Verdict::Allow);
    }

    #[test]
    fn route_entries_see_only_normalized_paths() {
        let p = NetworkPolicy {
            rules: vec![
                rule("api.corp.test", &["deny * /admin/**", "deny * /admin"]),
                rule("open.corp.test", &[]),
            ],
            ..Default::default()
        };
        let req = |path| p.request("api.corp.test", 443, "GET", path);
        assert!(matches!(req("/admin"), Verdict::Deny(m) if m.contains("deny * /admin")));
        for bypass in [
            "/x/../admin",
            "/%61dmin",
            "//admin",
            "/admin/./",
            "/x%2F..%2Fadmin",
            "/%zz",
        ] {
            assert!(
                matches!(req(bypass), Verdict::Deny(m) if m.contains("normalized paths")),
                "{bypass}"
            );
        }
        assert!(
            matches!(req("/x/../admin"), Verdict::Deny(m) if m.contains("(send it as /admin)"))
        );
        // Case-sensitive, as paths are: a rule for /admin is not one for /ADMIN.
        assert_eq!(req("/ADMIN"), Verdict::Allow);
        assert_eq!(req("/repos/a%2Fb"), Verdict::Allow);
        // Hosts without route entries: nothing to match, nothing refused.
        assert_eq!(
            p.request("open.corp.test", 443, "GET", "/x/../y"),
            Verdict::Allow
        );
        assert_eq!(p.request("other.test", 443, "GET", "//x"), Verdict::Allow);
    }
}
