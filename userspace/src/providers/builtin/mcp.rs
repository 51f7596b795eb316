//! MCP servers: `moat grant mcp <name>` stores `mcp-<name>`; the header and
//! host come from the server's entry in moat.yaml.

use super::super::{Injection, Provider};
use super::header_provider;

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
