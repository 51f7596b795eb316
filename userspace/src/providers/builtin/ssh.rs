//! SSH: an agent proxy that only offers keys mapped to the granted host
//! (the agent: `crate::ssh`; the grant: `cli/grant/ssh.rs`). No HTTP
//! injection: `bind` gives no bindings.

use super::super::{Flow, Injection, Provider};
use super::header_provider;

pub fn provider() -> Provider {
    let mut p = header_provider(
        "ssh",
        "SSH",
        "SSH agent access for one host (grant as ssh:<host>)",
        &[],
        "",
        "",
    );
    p.injection = Injection::Special("SSH agent proxy, keys filtered per host");
    p.flow = Flow::Ssh;
    p
}
