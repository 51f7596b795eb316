//! MCP servers: `moat grant mcp <name>` stores `mcp-<name>`; the header and
//! host come from the server's entry in moat.yaml
//! (`mcp: [{name, url, auth: {grant, header}}]`), so the binding is made
//! from that entry with [`bind_server`].

use super::super::{BindError, Binding, HeaderRule, HeaderValue, HostPattern, Injection, Provider};
use super::header_provider;
use crate::store::Credential;

pub fn provider() -> Provider {
    let mut p = header_provider(
        "mcp",
        "MCP",
        "Credential for a remote MCP server (grant as: moat grant mcp <name>)",
        &[],
        "",
        "",
    );
    p.injection = Injection::Special("header and host from moat.yaml's mcp: entry");
    p
}

/// One `mcp:` entry of moat.yaml, as far as injection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    pub name: String,
    /// `https://mcp.context7.com/mcp`: its host gets the header.
    pub url: String,
    /// The header to set (`CONTEXT7_API_KEY`, `Authorization`).
    pub header: String,
}

/// The binding for `server` with its stored credential: `header: <value>`
/// on the host (and port) of `server.url`.
pub fn bind_server(
    p: &Provider,
    server: &McpServer,
    cred: &Credential,
) -> Result<Binding, BindError> {
    // Each of these is moat.yaml's to fix, not the stored credential's.
    let bad = |what: String| BindError::McpEntry {
        name: server.name.clone(),
        what,
    };
    let uri: http::Uri = server
        .url
        .parse()
        .map_err(|_| bad(format!("url '{}' is not a URL", server.url)))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(format!(
            "url '{}' is not https: MCP URLs must be https:// (Moat injects credentials only over TLS)",
            server.url
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| bad(format!("url '{}' has no host", server.url)))?;
    let pattern = match uri.port_u16() {
        Some(port) if port != 443 => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    let pattern = HostPattern::parse(&pattern).map_err(|e| bad(e.to_string()))?;
    if http::HeaderName::from_bytes(server.header.as_bytes()).is_err() {
        return Err(bad(format!(
            "'{}' is not a valid header name",
            server.header
        )));
    }
    let mut provider = p.clone();
    provider.hosts = vec![pattern.clone()];
    provider.injection = Injection::Headers(vec![HeaderRule {
        hosts: vec![pattern],
        header: server.header.clone(),
        value: HeaderValue::Prefixed(String::new()),
    }]);
    Ok(Binding {
        provider,
        token: cred.token.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::{ExposeSecret, SecretString};

    fn server(url: &str, header: &str) -> McpServer {
        McpServer {
            name: "context7".into(),
            url: url.into(),
            header: header.into(),
        }
    }

    #[test]
    fn header_on_the_url_host_only() {
        let cred = Credential::new_static("mcp", SecretString::from("c7-key"), "prompt");
        let b = bind_server(
            &provider(),
            &server("https://mcp.context7.test/mcp", "CONTEXT7_API_KEY"),
            &cred,
        )
        .unwrap();
        let Injection::Headers(rules) = &b.provider.injection else {
            panic!()
        };
        assert_eq!(rules[0].header, "CONTEXT7_API_KEY");
        assert!(rules[0].hosts[0].matches("mcp.context7.test", 443));
        assert!(!rules[0].hosts[0].matches("other.test", 443));
        assert_eq!(b.token.expose_secret(), "c7-key");
        let b = bind_server(
            &provider(),
            &server("https://mcp.local.test:8443/x", "Authorization"),
            &cred,
        )
        .unwrap();
        assert!(b.provider.hosts[0].matches("mcp.local.test", 8443));
        assert!(!b.provider.hosts[0].matches("mcp.local.test", 443));
        for (url, header) in [
            ("http://plain.test/", "X"),
            ("not a url", "X"),
            ("https://a.test/", "bad header"),
        ] {
            let err = bind_server(&provider(), &server(url, header), &cred)
                .unwrap_err()
                .to_string();
            assert!(err.contains("moat.yaml mcp 'context7'"), "{err}");
            assert!(!err.contains("again"), "{err}");
        }
    }
}
