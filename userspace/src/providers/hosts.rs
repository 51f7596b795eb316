//! Host patterns: `api.github.com`, `*.openai.com`, optionally with `:port`.

use std::fmt;

/// A pattern a destination host is matched against. Case-insensitive; a
/// trailing dot is ignored; `*.example.com` matches any name *below*
/// `example.com` (not `example.com` itself); a port, when given, must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase host, or the suffix (with leading dot) for a wildcard.
    name: String,
    wildcard: bool,
    port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid host pattern '{pattern}': {reason}")]
pub struct HostPatternError {
    pub pattern: String,
    pub reason: &'static str,
}

/// Lowercase a host and drop a trailing dot (`API.GitHub.com.` → `api.github.com`).
pub fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, HostPatternError> {
        let err = |reason| HostPatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        let (host, port) = match pattern.rsplit_once(':') {
            Some((h, p)) => (
                h,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| err("the port must be a number from 1 to 65535"))?,
                ),
            ),
            None => (pattern, None),
        };
        if port == Some(0) {
            return Err(err("the port must be a number from 1 to 65535"));
        }
        let host = normalize_host(host);
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(err(
                "use a host name like 'api.example.com' or a wildcard like '*.example.com' (letters, digits, '-', '.')",
            ));
        }
        let name = if wildcard {
            format!(".{name}")
        } else {
            name.to_owned()
        };
        Ok(Self {
            name,
            wildcard,
            port,
        })
    }

    /// Does `host:port` (as seen in SNI, Host or a URL) match?
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = normalize_host(host);
        if self.wildcard {
            host.len() > self.name.len() && host.ends_with(&self.name)
        } else {
            host == self.name
        }
    }

    /// Sort key: more specific patterns first (exact before wildcard, longer
    /// suffix before shorter, with port before without).
    pub fn specificity(&self) -> (bool, usize, bool) {
        (!self.wildcard, self.name.len(), self.port.is_some())
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*{}", self.name)?;
        } else {
            f.write_str(&self.name)?;
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn exact() {
        assert!(p("api.github.com").matches("api.github.com", 443));
        assert!(!p("api.github.com").matches("github.com", 443));
        assert!(!p("api.github.com").matches("xapi.github.com", 443));
        assert!(!p("github.com").matches("api.github.com", 443));
    }

    #[test]
    fn wildcard_matches_below_not_apex() {
        let w = p("*.openai.com");
        assert!(w.matches("api.openai.com", 443));
        assert!(w.matches("a.b.openai.com", 443));
        assert!(!w.matches("openai.com", 443));
        assert!(!w.matches("evilopenai.com", 443));
        assert!(!w.matches("openai.com.evil.net", 443));
    }

    #[test]
    fn case_and_trailing_dot() {
        assert!(p("API.GitHub.com").matches("api.github.COM.", 443));
        assert!(p("*.Example.COM.").matches("X.example.com", 80));
        assert_eq!(p("API.GitHub.com.").to_string(), "api.github.com");
    }

    #[test]
    fn port() {
        let with = p("git.corp.test:8443");
        assert!(with.matches("git.corp.test", 8443));
        assert!(!with.matches("git.corp.test", 443));
        assert!(p("git.corp.test").matches("git.corp.test", 8443));
        assert_eq!(with.to_string(), "git.corp.test:8443");
    }

    #[test]
    fn invalid() {
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "*foo.com",
            "a b.com",
            "x.com:0",
            "x.com:99999",
            "http://x.com",
            "a..b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specificity_orders_exact_first() {
        let mut v = [
            p("*.example.com"),
            p("api.example.com"),
            p("*.api.example.com"),
        ];
        v.sort_by_key(|h| std::cmp::Reverse(h.specificity()));
        let order: Vec<String> = v.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            order,
            ["api.example.com", "*.api.example.com", "*.example.com"]
        );
    }
}
