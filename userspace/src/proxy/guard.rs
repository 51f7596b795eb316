//! Where the proxy may connect on the sandbox's behalf. Pure decisions; the
//! connector asks before every upstream connection.
//!
//! Never: the proxy's own listeners (a loop), loopback, link-local (cloud
//! metadata at 169.254.169.254 and friends), unspecified or multicast
//! addresses, or this host's own addresses — unless the policy explicitly
//! allows that host and port. `MOAT_RESOLVE` targets are the user's own
//! choice and always allowed.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::providers::HostPattern;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{addr} is this proxy itself (a request loop)")]
    Loop { addr: SocketAddr },
    #[error("{addr} is a {kind} address; allow {host}:{port} in the network policy to reach it")]
    Restricted {
        addr: SocketAddr,
        kind: &'static str,
        host: String,
        port: u16,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// The proxy's own listening sockets.
    listeners: HashSet<SocketAddr>,
    /// This host's interface addresses.
    own: HashSet<IpAddr>,
    /// Policy exceptions: host patterns (with or without port) that may reach
    /// restricted addresses (host services, a local dev server).
    allow: Vec<HostPattern>,
}

impl Guard {
    pub fn new(own: HashSet<IpAddr>, allow: Vec<HostPattern>) -> Self {
        Self {
            listeners: HashSet::new(),
            own,
            allow,
        }
    }

    /// A guard knowing this host's interface addresses.
    pub fn for_this_host(allow: Vec<HostPattern>) -> Self {
        let own = nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter_map(|a| a.address)
                    .filter_map(|s| {
                        s.as_sockaddr_in()
                            .map(|v4| IpAddr::V4(v4.ip()))
                            .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self::new(own, allow)
    }

    pub fn add_listener(&mut self, addr: SocketAddr) {
        self.listeners.insert(addr);
    }

    /// May the proxy connect to `addr` for `host:port`?
    pub fn check(&self, host: &str, port: u16, addr: SocketAddr) -> Result<(), Denied> {
        let ip = canonical(addr.ip());
        let is_listener = self.listeners.iter().any(|l| {
            l.port() == addr.port()
                && (canonical(l.ip()) == ip
                    || (l.ip().is_unspecified() && (ip.is_loopback() || self.own.contains(&ip))))
        });
        if is_listener {
            return Err(Denied::Loop { addr });
        }
        let Some(kind) = restricted_kind(ip, &self.own) else {
            return Ok(());
        };
        if self.allow.iter().any(|p| p.matches(host, port)) {
            return Ok(());
        }
        Err(Denied::Restricted {
            addr,
            kind,
            host: host.to_owned(),
            port,
        })
    }
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is judged as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn restricted_kind(ip: IpAddr, own: &HashSet<IpAddr>) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
    .or_else(|| own.contains(&ip).then_some("this host's own"))
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.octets()[0] == 0 {
        Some("non-routable")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unicast_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("non-routable")
    } else if ip.segments()[..6] == [0xfd00, 0xec2, 0, 0, 0, 0] {
        // AWS's IPv6 instance metadata endpoint fd00:ec2::254.
        Some("link-local (cloud metadata)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_and_link_local_are_refused() {
        let g = Guard::default();
        for addr in [
            "169.254.169.254:80",
            "169.254.0.1:443",
            "[fe80::1]:80",
            "[fd00:ec2::254]:80",
            "[::ffff:169.254.169.254]:80",
        ] {
            let err = g.check("metadata.example", 80, sa(addr)).unwrap_err();
            assert!(matches!(err, Denied::Restricted { .. }), "{addr}");
        }
        // Even an allow rule for another host does not open them.
        let g = Guard::new(
            HashSet::new(),
            vec![HostPattern::parse("dev.local:3000").unwrap()],
        );
        assert!(
            g.check("metadata.example", 80, sa("169.254.169.254:80"))
                .is_err()
        );
    }

    #[test]
    fn loopback_and_own_addresses_need_an_explicit_allow() {
        let own = HashSet::from(["10.1.2.3".parse().unwrap()]);
        let g = Guard::new(own.clone(), vec![]);
        assert!(g.check("api.x.test", 443, sa("127.0.0.1:8443")).is_err());
        assert!(g.check("api.x.test", 443, sa("[::1]:8443")).is_err());
        assert!(g.check("api.x.test", 443, sa("10.1.2.3:443")).is_err());
        assert!(g.check("api.x.test", 443, sa("0.0.0.0:443")).is_err());
        assert!(g.check("api.x.test", 443, sa("93.184.215.14:443")).is_ok());
        let g = Guard::new(own, vec![HostPattern::parse("dev.local:3000").unwrap()]);
        assert!(g.check("dev.local", 3000, sa("127.0.0.1:3000")).is_ok());
        assert!(g.check("dev.local", 3001, sa("127.0.0.1:3001")).is_err());
    }

    #[test]
    fn the_proxy_itself_is_a_loop_even_when_allowed() {
        let mut g = Guard::new(
            HashSet::new(),
            vec![
                HostPattern::parse("*.test").unwrap(),
                HostPattern::parse("a.test").unwrap(),
            ],
        );
        g.add_listener(sa("127.0.0.1:3128"));
        assert_eq!(
            g.check("a.test", 3128, sa("127.0.0.1:3128")),
            Err(Denied::Loop {
                addr: sa("127.0.0.1:3128")
            })
        );
        assert!(g.check("a.test", 3129, sa("127.0.0.1:3129")).is_ok());
        let mut g = Guard::default();
        g.add_listener(sa("0.0.0.0:3128"));
        assert!(matches!(
            g.check("x", 3128, sa("127.0.0.2:3128")),
            Err(Denied::Loop { .. })
        ));
    }
}
