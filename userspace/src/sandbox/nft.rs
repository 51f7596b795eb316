//! The nftables ruleset loaded **inside** a sandbox's network namespace.
//!
//! Pure text generation: nothing here touches the kernel. [`super::netns`]
//! loads the script in-process through libnftables ([`super::libnft`]) from
//! a thread that has entered the sandbox namespace, so the rules never exist
//! in the host namespace and vanish with the sandbox.
//!
//! What the rules do, for a namespace whose only link is `lo` (with a
//! `default dev lo src 127.0.0.1` route, so connect() reaches the nat hook):
//!
//! - DNS, UDP and TCP port 53 to any address (a public resolver, a
//!   `127.0.0.53` stub, …), is redirected to Moat's DNS socket.
//! - Every other TCP connection whose destination is outside `127.0.0.0/8`
//!   is redirected to the proxy listener; `SO_ORIGINAL_DST` recovers where it
//!   was going.
//! - After nat, UDP is dropped unless it is going to (or answering from)
//!   `127.0.0.1:<dns port>`: QUIC and other UDP fail, clients fall back to TCP.
//! - ICMP to non-loopback addresses is dropped.
//! - IPv6 is refused right away except on loopback, so clients fail fast and
//!   try IPv4 instead of waiting for a timeout.

/// Name of the IPv4 table (family `ip`).
pub const TABLE_V4: &str = "moat";
/// Name of the IPv6 table (family `ip6`).
pub const TABLE_V6: &str = "moat6";

/// The nftables script (the language `nft -f` reads) that sends a sandbox's TCP to the
/// proxy listening on `127.0.0.1:proxy_port` and its DNS to the resolver on
/// `127.0.0.1:dns_port` (UDP and TCP), all inside the sandbox's namespace.
///
/// Load it once, into a fresh namespace: it only creates its own tables.
/// (A `table …; delete table …` preamble would make it idempotent but costs
/// the kernel ~10 ms per run, half of a sandbox's start-up.)
pub fn ruleset(proxy_port: u16, dns_port: u16) -> String {
    format!(
        r#"# Moat sandbox rules: load inside a fresh sandbox network namespace only.
table ip {TABLE_V4} {{
	chain nat_output {{
		type nat hook output priority -100; policy accept;
		# DNS, to any resolver, goes to Moat's DNS socket.
		meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns_port}
		# Every other TCP connection leaving loopback goes to the proxy.
		ip daddr != 127.0.0.0/8 meta l4proto tcp redirect to :{proxy_port}
	}}

	chain filter_output {{
		type filter hook output priority 0; policy accept;
		# Queries to (after redirect) and answers from Moat's DNS socket.
		ip daddr 127.0.0.1 udp dport {dns_port} accept
		ip saddr 127.0.0.1 udp sport {dns_port} accept
		# Any other UDP (QUIC, direct DNS-over-other-ports) is dropped.
		meta l4proto udp drop
		# No ICMP out of loopback (ping, ICMP tunnels).
		ip daddr != 127.0.0.0/8 meta l4proto icmp drop
	}}
}}

table ip6 {TABLE_V6} {{
	chain filter_output {{
		type filter hook output priority 0; policy accept;
		oifname "lo" accept
		ip6 daddr ::1 accept
		# Fail fast: an immediate error, not a timeout.
		meta l4proto tcp reject with tcp reset
		reject with icmpv6 type admin-prohibited
	}}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of `chain` in `table`, one statement per line, comments out.
    fn chain_rules(script: &str, table: &str, chain: &str) -> Vec<String> {
        let start = script
            .find(&format!("table {table} {{"))
            .unwrap_or_else(|| panic!("table {table} missing"));
        let rest = &script[start..];
        let c = rest
            .find(&format!("chain {chain} {{"))
            .unwrap_or_else(|| panic!("chain {chain} missing in {table}"));
        rest[c..]
            .lines()
            .skip(1)
            .map(str::trim)
            .take_while(|l| *l != "}")
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    }

    #[test]
    fn contains_both_ports() {
        let s = ruleset(41234, 45353);
        assert!(s.contains("redirect to :41234"), "{s}");
        assert!(s.contains("redirect to :45353"), "{s}");
        assert!(s.contains("udp dport 45353 accept"), "{s}");
        assert!(s.contains("udp sport 45353 accept"), "{s}");
    }

    #[test]
    fn nat_chain_sends_dns_first_then_all_non_loopback_tcp_to_the_proxy() {
        let s = ruleset(1000, 2000);
        let rules = chain_rules(&s, "ip moat", "nat_output");
        assert_eq!(
            rules,
            [
                "type nat hook output priority -100; policy accept;",
                "meta l4proto { tcp, udp } th dport 53 redirect to :2000",
                "ip daddr != 127.0.0.0/8 meta l4proto tcp redirect to :1000",
            ]
        );
    }

    #[test]
    fn filter_chain_drops_udp_except_dns_and_icmp_out_of_loopback() {
        let s = ruleset(1000, 2000);
        let rules = chain_rules(&s, "ip moat", "filter_output");
        assert_eq!(
            rules,
            [
                "type filter hook output priority 0; policy accept;",
                "ip daddr 127.0.0.1 udp dport 2000 accept",
                "ip saddr 127.0.0.1 udp sport 2000 accept",
                "meta l4proto udp drop",
                "ip daddr != 127.0.0.0/8 meta l4proto icmp drop",
            ]
        );
    }

    #[test]
    fn ipv6_accepts_only_loopback_and_rejects_the_rest() {
        let s = ruleset(1000, 2000);
        let rules = chain_rules(&s, "ip6 moat6", "filter_output");
        assert_eq!(
            rules[0],
            "type filter hook output priority 0; policy accept;"
        );
        assert_eq!(rules[1], "oifname \"lo\" accept");
        assert_eq!(rules[2], "ip6 daddr ::1 accept");
        assert!(rules[3..].iter().all(|r| r.contains("reject")), "{rules:?}");
        assert!(!s.contains("ip6 moat6 {\n\tchain nat"), "no ip6 nat");
    }

    #[test]
    fn touches_only_its_own_tables() {
        let s = ruleset(1, 2);
        for line in s.lines().map(str::trim) {
            // Nothing to delete or flush in a fresh namespace.
            assert!(
                !line.starts_with("delete ") && !line.starts_with("flush "),
                "{line}"
            );
            if let Some(t) = line.strip_prefix("table ") {
                let name = t.trim_end_matches(" {");
                assert!(name == "ip moat" || name == "ip6 moat6", "{line}");
            }
        }
    }

    #[test]
    fn braces_balance() {
        let s = ruleset(65535, 1);
        let open = s.matches('{').count();
        let close = s.matches('}').count();
        assert_eq!(open, close);
    }
}
