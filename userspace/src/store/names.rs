//! Credential and profile names: the rules users see, and the filename encoding.

use std::fmt;

/// The name a credential is stored under (`github`, `ssh:github.com`, `mcp-context7`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CredName(String);

/// A credential profile (`--profile work`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProfileName(String);

pub const CRED_NAME_RULE: &str = "a credential name starts with a lowercase letter or digit, then uses only \
lowercase letters, digits, '.', '_', '-' and ':', at most 128 characters";
pub const PROFILE_RULE: &str =
    "a profile name starts with a letter or digit, then uses only letters, digits, '-' and '_'";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} '{value}': {rule}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

impl CredName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | ':')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError {
                what: "credential name",
                value: s.to_owned(),
                rule: CRED_NAME_RULE,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file stem: `:` (not portable in file names) becomes `%3a`. `%` is not
    /// a legal name character, so the encoding is reversible.
    pub fn file_stem(&self) -> String {
        self.0.replace(':', "%3a")
    }

    pub fn from_file_stem(stem: &str) -> Result<Self, NameError> {
        Self::parse(&stem.replace("%3a", ":"))
    }

    /// The command that stores this credential again, for error messages.
    pub fn regrant_command(&self) -> String {
        if let Some(host) = self.0.strip_prefix("ssh:") {
            format!("moat grant ssh --host {host}")
        } else if let Some(server) = self.0.strip_prefix("mcp-") {
            format!("moat grant mcp {server}")
        } else {
            format!("moat grant {}", self.0)
        }
    }
}

impl fmt::Display for CredName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ProfileName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && s.len() <= 64;
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError {
                what: "profile name",
                value: s.to_owned(),
                rule: PROFILE_RULE,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_rules() {
        for ok in ["work", "my-project", "team_alpha", "prod1", "A1", "1x"] {
            assert!(ProfileName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-leading-dash",
            "has spaces",
            "uses.dots",
            "",
            "_x",
            "a/b",
            "ü",
        ] {
            let err = ProfileName::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("starts with a letter or digit"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn credential_name_rules() {
        for ok in ["github", "ssh:github.com", "mcp-context7", "a_b.c", "9"] {
            assert!(CredName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "GitHub",
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            "a%3ab",
            long.as_str(),
        ] {
            assert!(CredName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_stem_round_trips() {
        let n = CredName::parse("ssh:git.example.com").unwrap();
        assert_eq!(n.file_stem(), "ssh%3agit.example.com");
        assert_eq!(CredName::from_file_stem(&n.file_stem()).unwrap(), n);
        assert!(!n.file_stem().contains(':'));
    }

    #[test]
    fn regrant_commands() {
        let cmd = |s| CredName::parse(s).unwrap().regrant_command();
        assert_eq!(cmd("github"), "moat grant github");
        assert_eq!(cmd("ssh:github.com"), "moat grant ssh --host github.com");
        assert_eq!(cmd("mcp-context7"), "moat grant mcp context7");
    }
}
