//! `secrets:` in moat.yaml: environment variables whose values come from a
//! secret store, resolved on the host when a run starts.
//!
//! References:
//! - `env://VAR`: the host's environment variable `VAR`;
//! - `op://vault/item/field`: 1Password, through its CLI (`op read`);
//! - `ssm:///path/to/name`, `ssm://REGION/path/to/name` or `ssm://NAME`: AWS
//!   SSM Parameter Store, decrypted, through the AWS SDK with the host's
//!   credential chain (profiles, `AWS_PROFILE`, `AWS_REGION`, SSO, …), so
//!   no AWS CLI is needed.
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
    /// The parameter's name, and the region when the reference names one.
    Ssm {
        name: String,
        region: Option<String>,
    },
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
    #[error("{reference}: {message}")]
    Ssm { reference: String, message: String },
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
            "ssm" => Ok(ssm(rest)),
            _ => Err(SecretError::Scheme(s.into())),
        }
    }

    /// The reference as written.
    pub fn reference(&self) -> String {
        match self {
            Self::Env(v) => format!("env://{v}"),
            Self::Op(r) => r.clone(),
            Self::Ssm { name, region: None } => format!("ssm://{name}"),
            Self::Ssm {
                name,
                region: Some(r),
            } => format!("ssm://{r}{name}"),
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
            Self::Ssm { name, region } => self.ssm(name, region.as_deref()),
        }
    }

    fn ssm(&self, name: &str, region: Option<&str>) -> Result<SecretString, SecretError> {
        use crate::aws::sdk::{self, AwsError};
        let err = |message: String| SecretError::Ssm {
            reference: self.reference(),
            message,
        };
        let upstream = crate::net::Upstream::from_env().map_err(|e| err(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("starting the AWS client: {e}")))?;
        let got = rt.block_on(async {
            let conf = sdk::host_config(std::sync::Arc::new(upstream), None, region).await;
            sdk::get_parameter(&conf, name).await
        });
        got.map_err(|e| {
            err(match e {
                // The AWS CLI's words, which users search for.
                AwsError::NoCredentials => format!(
                    "Unable to locate credentials: {e} (SSM secrets are read with the host's AWS credentials)"
                ),
                AwsError::Service { code, message, .. } if code == "ParameterNotFound" => {
                    format!("ParameterNotFound: no SSM parameter {name} ({message}); check the name and region")
                }
                AwsError::Service { code, message, .. } if code.contains("AccessDenied") => format!(
                    "{code}: {message}; the host's AWS identity needs ssm:GetParameter (and kms:Decrypt for a SecureString)"
                ),
                e => e.to_string(),
            })
        })
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

/// `/path`, `REGION/path` or `NAME` (after `ssm://`). Hierarchical names
/// start with `/`, so a first segment without one is a region.
fn ssm(rest: &str) -> SecretRef {
    match rest.split_once('/') {
        Some((region, path)) if !region.is_empty() => SecretRef::Ssm {
            name: format!("/{path}"),
            region: Some(region.to_owned()),
        },
        _ => SecretRef::Ssm {
            name: rest.to_owned(),
            region: None,
        },
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
            SecretRef::Ssm {
                name: "/prod/db".into(),
                region: None
            }
        );
        assert_eq!(
            SecretRef::parse("ssm://us-west-2/prod/db").unwrap(),
            SecretRef::Ssm {
                name: "/prod/db".into(),
                region: Some("us-west-2".into())
            }
        );
        assert_eq!(
            SecretRef::parse("ssm://us-west-2/prod/db")
                .unwrap()
                .reference(),
            "ssm://us-west-2/prod/db"
        );
        assert_eq!(
            SecretRef::parse("ssm://dbpass").unwrap(),
            SecretRef::Ssm {
                name: "dbpass".into(),
                region: None
            }
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
