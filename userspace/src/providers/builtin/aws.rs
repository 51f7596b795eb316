//! AWS: role assumption through STS, served to the sandbox through
//! credential_process or SigV4 re-signing (the flow and runs: `crate::aws`).

use super::super::{Flow, Injection, Provider};
use super::header_provider;

pub fn provider() -> Provider {
    let mut p = header_provider(
        "aws",
        "AWS",
        "AWS IAM role assumed through STS (credential_process or SigV4 re-signing)",
        &["*.amazonaws.com"],
        "",
        "",
    );
    p.injection = Injection::Special(
        "STS temporary credentials: credential_process, or SigV4 re-signing (--inject sigv4)",
    );
    p.flow = Flow::Aws;
    p
}
