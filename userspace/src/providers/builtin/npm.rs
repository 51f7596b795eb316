//! npm registries: Bearer per registry host, discovered from `.npmrc` or
//! `--host`. Hosts are per credential, so the provider lists none itself.

use super::super::placeholder::Format;
use super::super::{Flow, Injection, Provider};
use super::{header_provider, strings};

pub fn provider() -> Provider {
    let mut p = header_provider(
        "npm",
        "npm",
        "npm registry tokens (per registry host, from .npmrc or NPM_TOKEN)",
        &[],
        "Authorization",
        "Bearer ",
    );
    p.injection = Injection::Special("Bearer per registry host stored with the credential");
    p.source_env = strings(&["NPM_TOKEN"]);
    p.placeholder = Some(Format::Fixed("npm_moatProxyInjected00000000"));
    p.flow = Flow::Pending("npm registry discovery (.npmrc, --host) is not in this build yet");
    p
}
