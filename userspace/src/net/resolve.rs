//! `MOAT_RESOLVE` / `--resolve`: `HOST:PORT=ADDR:PORT` overrides for every
//! connection Moat makes upstream. SNI, Host and certificate checks still use
//! HOST; only the socket goes to ADDR:PORT.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::providers::hosts::normalize_host;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolve {
    map: HashMap<(String, u16), SocketAddr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid {source_name} entry '{entry}': {reason} (expected HOST:PORT=ADDR:PORT, e.g. api.github.com:443=127.0.0.1:8443)"
)]
pub struct ResolveError {
    pub source_name: &'static str,
    pub entry: String,
    pub reason: &'static str,
}

impl Resolve {
    /// Parse a comma-separated list. `source_name` names it in errors
    /// (`MOAT_RESOLVE`, `--resolve`).
    pub fn parse(list: &str, source_name: &'static str) -> Result<Self, ResolveError> {
        let mut r = Self::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            r.add(entry, source_name)?;
        }
        Ok(r)
    }

    /// Add one entry; a later entry for the same HOST:PORT wins.
    pub fn add(&mut self, entry: &str, source_name: &'static str) -> Result<(), ResolveError> {
        let err = |reason| ResolveError {
            source_name,
            entry: entry.to_owned(),
            reason,
        };
        let (from, to) = entry.split_once('=').ok_or_else(|| err("missing '='"))?;
        let (host, port) = from
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| err("HOST needs a :PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err("PORT must be 1-65535"))?;
        let host = normalize_host(host);
        let host_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !host_ok {
            return Err(err("HOST must be an exact host name (no wildcards)"));
        }
        let addr: SocketAddr = to
            .trim()
            .parse()
            .map_err(|_| err("ADDR:PORT must be an IP and port ([::1]:8443 for IPv6)"))?;
        self.map.insert((host, port), addr);
        Ok(())
    }

    /// Entries of `other` override ours for the same HOST:PORT.
    pub fn merge(&mut self, other: Resolve) {
        self.map.extend(other.map);
    }

    pub fn lookup(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.map.get(&(normalize_host(host), port)).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_v4_v6_and_case() {
        let r = Resolve::parse(
            " api.github.com:443=127.0.0.1:8443 , GitHub.com:443=[::1]:9443,",
            "MOAT_RESOLVE",
        )
        .unwrap();
        assert_eq!(
            r.lookup("api.github.com", 443),
            Some("127.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(
            r.lookup("github.com.", 443),
            Some("[::1]:9443".parse().unwrap())
        );
        assert_eq!(r.lookup("api.github.com", 80), None);
        assert!(Resolve::parse("", "MOAT_RESOLVE").unwrap().is_empty());
    }

    #[test]
    fn errors_quote_the_entry() {
        for bad in [
            "api.github.com=1.2.3.4:1",
            "api.github.com:443",
            "*.x.com:443=1.2.3.4:5",
            "h:0=1.2.3.4:5",
            "h:443=localhost:5",
            "h:443=::1:5",
        ] {
            let e = Resolve::parse(bad, "MOAT_RESOLVE").unwrap_err();
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
            assert!(
                e.to_string().starts_with("invalid MOAT_RESOLVE entry"),
                "{e}"
            );
        }
    }

    #[test]
    fn later_and_merged_entries_win() {
        let mut r = Resolve::parse(
            "a.test:443=127.0.0.1:1,a.test:443=127.0.0.1:2",
            "MOAT_RESOLVE",
        )
        .unwrap();
        assert_eq!(r.lookup("a.test", 443).unwrap().port(), 2);
        r.merge(Resolve::parse("a.test:443=127.0.0.1:3", "--resolve").unwrap());
        assert_eq!(r.lookup("a.test", 443).unwrap().port(), 3);
    }
}
