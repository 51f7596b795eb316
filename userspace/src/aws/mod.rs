//! The `aws` grant: an IAM role that Moat assumes through STS with the
//! host's own AWS credentials, for the sandbox to use without holding them.
//!
//! - [`role`]: what is stored (the role and how to assume it; never a key).
//! - [`sdk`]: the AWS SDK on Moat's HTTP client; AssumeRole, GetParameter.
//! - [`session`]: a run's cached temporary credentials.
//! - [`process`]: `credential_process` inside the sandbox.
//!
//! Two ways into the sandbox ([`role::Inject`]): `credential_process`
//! (short-lived keys inside, refreshed by the SDKs) or SigV4 re-signing by
//! the proxy (`proxy::sigv4`: placeholder keys inside, no key at all).

pub mod process;
pub mod role;
pub mod sdk;
pub mod session;

pub use role::{Inject, RoleConfig};
pub use session::Session;
