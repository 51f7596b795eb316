//! The typed record sealed inside each `.enc` file.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// How a credential is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A token used as is until revoked (API keys, PATs).
    Static,
    /// An access token with a refresh token and an expiry.
    Oauth,
}

/// A decrypted credential. Lives in memory only; secrets are zeroed on drop
/// and never printed by `Debug`.
#[derive(Debug)]
pub struct Credential {
    pub provider: String,
    pub kind: Kind,
    pub token: SecretString,
    /// Further secret values a provider needs (refresh token, app secret, …).
    pub secrets: BTreeMap<String, SecretString>,
    /// Where the token came from: `env:GITHUB_TOKEN`, `stdin`, `prompt`, …
    pub source: String,
    /// Non-secret facts: authenticated login, hosts, token URL, …
    pub metadata: BTreeMap<String, String>,
    pub expires_at: Option<SystemTime>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Credential {
    pub fn new_static(provider: &str, token: SecretString, source: impl Into<String>) -> Self {
        let now = now_secs();
        Self {
            provider: provider.to_owned(),
            kind: Kind::Static,
            token,
            secrets: BTreeMap::new(),
            source: source.into(),
            metadata: BTreeMap::new(),
            expires_at: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Current time truncated to whole seconds (what the file keeps).
pub fn now_secs() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// RFC 3339 in UTC, second precision (`2026-11-22T07:02:10Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The serialized shape. Versioned so the record can grow.
#[derive(Serialize, Deserialize)]
struct Record {
    v: u32,
    provider: String,
    kind: Kind,
    token: Zeroizing<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, Zeroizing<String>>,
    source: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    created_at: u64,
    updated_at: u64,
}

const RECORD_VERSION: u32 = 1;

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn time(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

fn secret(s: &Zeroizing<String>) -> SecretString {
    SecretString::from(s.as_str())
}

fn plain(s: &SecretString) -> Zeroizing<String> {
    Zeroizing::new(s.expose_secret().to_owned())
}

#[derive(Debug, thiserror::Error)]
#[error("credential record is not valid: {0}")]
pub struct RecordError(String);

impl Credential {
    /// Serialize to the plaintext that gets sealed.
    pub fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        let record = Record {
            v: RECORD_VERSION,
            provider: self.provider.clone(),
            kind: self.kind,
            token: plain(&self.token),
            secrets: self
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), plain(v)))
                .collect(),
            source: self.source.clone(),
            metadata: self.metadata.clone(),
            expires_at: self.expires_at.map(secs),
            created_at: secs(self.created_at),
            updated_at: secs(self.updated_at),
        };
        let mut out = Zeroizing::new(Vec::with_capacity(4096));
        serde_json::to_writer(&mut *out, &record).expect("serializing to memory cannot fail");
        out
    }

    pub fn from_plaintext(bytes: &[u8]) -> Result<Self, RecordError> {
        let r: Record = serde_json::from_slice(bytes).map_err(|e| RecordError(e.to_string()))?;
        if r.v > RECORD_VERSION {
            return Err(RecordError(format!(
                "record version {} is newer than this Moat; upgrade moat",
                r.v
            )));
        }
        Ok(Self {
            provider: r.provider,
            kind: r.kind,
            token: secret(&r.token),
            secrets: r
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), secret(v)))
                .collect(),
            source: r.source,
            metadata: r.metadata,
            expires_at: r.expires_at.map(time),
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_debug_redacts() {
        let mut c = Credential::new_static(
            "github",
            SecretString::from("ghp_realtoken"),
            "env:GITHUB_TOKEN",
        );
        c.secrets
            .insert("refresh_token".into(), SecretString::from("rt_secret"));
        c.metadata.insert("login".into(), "octocat".into());
        c.expires_at = Some(time(2_000_000_000));
        let back = Credential::from_plaintext(&c.to_plaintext()).unwrap();
        assert_eq!(back.token.expose_secret(), "ghp_realtoken");
        assert_eq!(back.secrets["refresh_token"].expose_secret(), "rt_secret");
        assert_eq!(back.metadata["login"], "octocat");
        assert_eq!(back.expires_at, c.expires_at);
        assert_eq!(back.created_at, c.created_at);
        let dbg = format!("{back:?}");
        assert!(
            !dbg.contains("ghp_realtoken") && !dbg.contains("rt_secret"),
            "{dbg}"
        );
    }

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(time(0)), "1970-01-01T00:00:00Z");
    }
}
