//! AWS: role assumption through STS, served to the sandbox via credential_process.

use super::super::{Flow, Injection, Provider};
use super::header_provider;

pub fn provider() -> Provider {
    let mut p = header_provider(
        "aws",
        "AWS",
        "AWS IAM role assumed through STS (credential_process)",
        &["*.amazonaws.com"],
        "",
        "",
    );
    p.injection = Injection::Special("AWS credential_process with STS temporary credentials");
    p.flow = Flow::Pending("'moat grant aws --role ARN' is not in this build yet");
    p
}
