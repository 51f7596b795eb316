//! `secrets:` in moat.yaml: environment variables whose values come from a
//! secret store, resolved on the host when a run starts.
//!
//! References:
//! - `env://VAR`: the host's environment variable `VAR`;
//! - `op://vault/item/field`: 1Password, through its CLI (`op read`);
//! - `ssm://NAME` (`ssm:///path/to/name` for a path): AWS SSM Parameter
//!   Store, decrypted, through the AWS CLI (`aws ssm get-parameter`), so the
//!   CLI's own configuration applies (profiles, `AWS_REGION`,
//!   `AWS_ENDPOINT_URL`, SSO).
//!
//! Unlike grants, these are real values in the command's environment: use
//! them for what is not an HTTP credential (a database password, a signing
//! key). Values are held as [`SecretString`] (redacted `Debug`, zeroed on
//! drop) until they are handed to the sandbox.

use std::process::{Command, Stdio};

use secrecy::SecretString;

/// A parsed secret reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    /// The whole `op://…` reference, as `op read` takes it.
    Op(String),
    /// The parameter's name.
    Ssm(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "'{0}' is not a secret reference (expected env://VAR, op://vault/item/field or ssm://NAME)"
    )]
    Scheme(String),
    #[error("'{0}': the reference names nothing after the scheme")]
    Empty(String),
    #[error("{reference}: the environment variable {var} is not set")]
    EnvMissing { reference: String, var: String },
    #[error("{reference}: the {tool} command is not installed (or not on PATH); {hint}")]
    ToolMissing {
        reference: String,
        tool: &'static str,
        hint: &'static str,
    },
    #[error("{reference}: {tool} failed: {message}")]
    ToolFailed {
        reference: String,
        tool: &'static str,
        message: String,
    },
}

impl SecretRef {
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| SecretError::Scheme(s.into()))?;
        if rest.trim_matches('/').is_empty() {
            return Err(SecretError::Empty(s.into()));
        }
        match scheme {
            "env" => Ok(Self::Env(rest.into())),
            "op" => Ok(Self::Op(s.into())),
            "ssm" => Ok(Self::Ssm(rest.into())),
            _ => Err(SecretError::Scheme(s.into())),
        }
    }

    /// The reference as written.
    pub fn reference(&self) -> String {
        match self {
            Self::Env(v) => format!("env://{v}"),
            Self::Op(r) => r.clone(),
            Self::Ssm(n) => format!("ssm://{n}"),
        }
    }

    /// Fetch the value (runs `op` or `aws` for those schemes).
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        match self {
            Self::Env(var) => {
                std::env::var(var)
                    .map(SecretString::from)
                    .map_err(|_| SecretError::EnvMissing {
                        reference: self.reference(),
                        var: var.clone(),
                    })
            }
            Self::Op(r) => self.tool(
                "op",
                &["read", "--no-newline", r],
                "install the 1Password CLI and sign in (op signin)",
            ),
            Self::Ssm(name) => self.tool(
                "aws",
                &[
                    "ssm",
                    "get-parameter",
                    "--with-decryption",
                    "--name",
                    name,
                    "--query",
                    "Parameter.Value",
                    "--output",
                    "text",
                ],
                "install the AWS CLI and configure credentials and a region (aws configure)",
            ),
        }
    }

    fn tool(
        &self,
        tool: &'static str,
        args: &[&str],
        hint: &'static str,
    ) -> Result<SecretString, SecretError> {
        let out = Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SecretError::ToolMissing {
                    reference: self.reference(),
                    tool,
                    hint,
                },
                _ => SecretError::ToolFailed {
                    reference: self.reference(),
                    tool,
                    message: e.to_string(),
                },
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr.trim();
            return Err(SecretError::ToolFailed {
                reference: self.reference(),
                tool,
                message: if message.is_empty() {
                    format!("exit status {}", out.status)
                } else {
                    message.to_owned()
                },
            });
        }
        let mut value = zeroize::Zeroizing::new(out.stdout);
        // The CLIs end their output with a newline that is not the value's.
        if value.last() == Some(&b'\n') {
            value.pop();
            if value.last() == Some(&b'\r') {
                value.pop();
            }
        }
        let text = String::from_utf8(value.to_vec()).map_err(|_| SecretError::ToolFailed {
            reference: self.reference(),
            tool,
            message: "the value is not UTF-8".into(),
        })?;
        Ok(SecretString::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn references_parse_or_say_what_is_expected() {
        assert_eq!(
            SecretRef::parse("env://HOME_DB").unwrap(),
            SecretRef::Env("HOME_DB".into())
        );
        assert_eq!(
            SecretRef::parse("op://Private/db/password").unwrap(),
            SecretRef::Op("op://Private/db/password".into())
        );
        assert_eq!(
            SecretRef::parse("ssm:///prod/db").unwrap(),
            SecretRef::Ssm("/prod/db".into())
        );
        assert_eq!(
            SecretRef::parse("ssm:///prod/db").unwrap().reference(),
            "ssm:///prod/db"
        );
        for bad in ["plain", "vault://x", "https://x"] {
            let e = SecretRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains("env://VAR"), "{e}");
        }
        assert!(matches!(
            SecretRef::parse("op://"),
            Err(SecretError::Empty(_))
        ));
    }

    #[test]
    fn env_references_and_missing_tools() {
        let path = std::env::var("PATH").unwrap_or_default();
        let r = SecretRef::parse("env://PATH").unwrap();
        assert_eq!(r.resolve().unwrap().expose_secret(), path);
        let e = SecretRef::parse("env://MOAT_TEST_SURELY_UNSET_VAR")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("MOAT_TEST_SURELY_UNSET_VAR is not set"), "{e}");
        // Debug never shows a value.
        let v = SecretString::from("hunter2".to_string());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
