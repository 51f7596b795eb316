//! From a stored credential to what a run needs: the injection rules for
//! that credential (some providers take their hosts from it: npm registries,
//! GitHub Enterprise hosts), and the placeholder files the sandbox HOME gets.
//!
//! Pure: no store, no network. `cli::proxy::load_grants` turns bindings into
//! proxy grants; `moat run` writes the sandbox files.

use std::path::PathBuf;

use secrecy::SecretString;

use super::{Origin, Provider, builtin};
use crate::store::Credential;

/// One token injected by one (possibly credential-specific) provider. A
/// credential usually gives one; npm gives one per registry.
#[derive(Debug)]
pub struct Binding {
    pub provider: Provider,
    pub token: SecretString,
}

/// A file the sandbox HOME gets so a tool finds its configuration, holding
/// placeholders only, never a real token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFile {
    /// Relative to the sandbox's HOME (`.npmrc`, `.config/graphite/user_config`).
    pub rel_path: PathBuf,
    pub contents: String,
    /// Unix permission bits for the file (parents are created 0700).
    pub mode: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The stored record lacks what the provider needs (damaged, or from an
    /// older Moat): re-granting fixes it.
    #[error(
        "credential for '{provider}' is incomplete ({what}); run 'moat grant {provider}' again"
    )]
    Incomplete { provider: String, what: String },
    /// moat.yaml's `mcp:` entry is wrong: re-granting changes nothing.
    #[error("moat.yaml mcp '{name}': {what}; fix that entry in moat.yaml")]
    McpEntry { name: String, what: String },
}

impl Provider {
    /// The injection rules for `cred`. Most providers inject the token as
    /// they are; npm, GitHub Enterprise, Gemini OAuth and OAuth credentials
    /// take hosts or headers from the credential itself.
    pub fn bind(&self, cred: &Credential) -> Result<Vec<Binding>, BindError> {
        if self.origin == Origin::Builtin {
            return builtin::bind(self, cred);
        }
        Ok(vec![Binding {
            provider: self.clone(),
            token: cred.token.clone(),
        }])
    }

    /// How the proxy keeps `cred` fresh during a run; `None`: static.
    pub fn refresh_policy(&self, cred: &Credential) -> Option<super::oauth::Policy> {
        if self.origin == Origin::Builtin {
            builtin::refresh_policy(self, cred)
        } else {
            None
        }
    }

    /// Files to create in the sandbox HOME for this credential; `placeholder`
    /// is the credential's placeholder (see [`super::placeholder::derive`]).
    /// Empty for most providers.
    pub fn sandbox_files(&self, cred: &Credential, placeholder: &str) -> Vec<SandboxFile> {
        if self.origin == Origin::Builtin {
            builtin::sandbox_files(self, cred, placeholder)
        } else {
            Vec::new()
        }
    }
}
