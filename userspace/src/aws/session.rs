//! A run's AWS grant: the stored role, assumed on first use and again when
//! the credentials are within [`REFRESH_MARGIN`] of expiry. Concurrent asks
//! share one STS call. The credentials stay in the run's Moat process: the
//! sandbox gets them through `credential_process`, or never (SigV4 mode).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use base64::Engine as _;
use tokio::sync::{Mutex, OnceCell};

use super::role::{Inject, RoleConfig};
use super::sdk::{self, AwsError, Issued};
use crate::net::Upstream;

/// Credentials are assumed again once they expire within this (unless
/// `MOAT_AWS_REFRESH_MARGIN` says otherwise, e.g. `10m` for tools that
/// cache credentials longer).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// `MOAT_AWS_REFRESH_MARGIN` (a duration: `10m`, `899s`), else the default.
fn refresh_margin() -> Duration {
    std::env::var("MOAT_AWS_REFRESH_MARGIN")
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(REFRESH_MARGIN)
}

/// What a SigV4-mode sandbox holds instead of keys: format-valid, random
/// per run, useless anywhere but through this run's proxy.
pub struct Placeholders {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl Placeholders {
    fn random() -> Self {
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut bytes = [0u8; 16 + 30 + 96];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        let (id, rest) = bytes.split_at(16);
        let (secret, token) = rest.split_at(30);
        let id: String = id
            .iter()
            .map(|b| UPPER[usize::from(b % 32)] as char)
            .collect();
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            access_key_id: format!("ASIA{id}"),
            secret_access_key: b64.encode(secret),
            session_token: format!("moat-placeholder-{}", b64.encode(token)),
        }
    }
}

pub struct Session {
    /// The credential's name (`aws`).
    pub grant: String,
    pub role: RoleConfig,
    pub placeholders: Placeholders,
    upstream: Arc<Upstream>,
    conf: OnceCell<SdkConfig>,
    cache: Mutex<Option<Issued>>,
    /// `moat-<run>`: the role session name, seen in CloudTrail.
    session_name: String,
    margin: Duration,
}

impl Session {
    pub fn new(grant: &str, role: RoleConfig, upstream: Arc<Upstream>, run: &str) -> Self {
        let tag: String = run
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(*c))
            .take(58)
            .collect();
        Self {
            grant: grant.to_owned(),
            role,
            placeholders: Placeholders::random(),
            upstream,
            conf: OnceCell::new(),
            cache: Mutex::new(None),
            session_name: format!("moat-{tag}"),
            margin: refresh_margin(),
        }
    }

    pub fn inject(&self) -> Inject {
        self.role.inject
    }

    /// Current temporary credentials, assuming the role when none are
    /// cached or they expire within the margin ([`REFRESH_MARGIN`]); `true`
    /// when this call assumed it (for the run's events).
    pub async fn credentials(&self) -> Result<(Issued, bool), AwsError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache
            .as_ref()
            .filter(|c| fresh(c, SystemTime::now(), self.margin))
        {
            return Ok((c.clone(), false));
        }
        let conf = self
            .conf
            .get_or_init(|| {
                sdk::host_config(
                    self.upstream.clone(),
                    self.role.profile.as_deref(),
                    self.role.region.as_deref(),
                )
            })
            .await;
        let issued = sdk::assume_role(conf, &self.role, &self.session_name).await?;
        tracing::info!(grant = %self.grant, role = %self.role.role_arn, expires = ?issued.expiration, "assumed the role");
        *cache = Some(issued.clone());
        Ok((issued, true))
    }

    /// The run's event for a role just assumed: names and the key's id
    /// (not a secret: AWS logs it too), never the secret or token.
    pub fn assumed_event(&self, c: &Issued) -> serde_json::Value {
        serde_json::json!({
            "grant": self.grant,
            "role": self.role.role_arn,
            "inject": self.role.inject.as_str(),
            "access_key_id": c.access_key_id,
            "expires": crate::store::credential::rfc3339(c.expiration),
        })
    }
}

/// Good for at least `margin` more?
fn fresh(c: &Issued, now: SystemTime, margin: Duration) -> bool {
    c.expiration > now + margin
}

/// The `credential_process` answer (AWS CLI "sourcing credentials with an
/// external process", version 1).
pub fn process_json(c: &Issued) -> String {
    use secrecy::ExposeSecret;
    serde_json::json!({
        "Version": 1,
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key.expose_secret(),
        "SessionToken": c.session_token.expose_secret(),
        "Expiration": crate::store::credential::rfc3339(c.expiration),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn issued(expiration: SystemTime) -> Issued {
        Issued {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: secret("s3cr3t"),
            session_token: secret("tok"),
            expiration,
        }
    }

    #[test]
    fn cached_until_five_minutes_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let m = REFRESH_MARGIN;
        assert!(fresh(&issued(now + Duration::from_secs(301)), now, m));
        assert!(!fresh(&issued(now + Duration::from_secs(300)), now, m));
        assert!(!fresh(&issued(now - Duration::from_secs(1)), now, m));
    }

    #[test]
    fn process_json_is_the_documented_shape() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let v: serde_json::Value = serde_json::from_str(&process_json(&issued(t))).unwrap();
        assert_eq!(v["Version"], 1);
        assert_eq!(v["AccessKeyId"], "ASIAEXAMPLE");
        assert_eq!(v["SecretAccessKey"], "s3cr3t");
        assert_eq!(v["SessionToken"], "tok");
        assert_eq!(v["Expiration"], "2027-01-15T08:00:00Z");
    }

    #[test]
    fn placeholders_look_like_aws_keys_and_differ_per_run() {
        let (a, b) = (Placeholders::random(), Placeholders::random());
        assert_eq!(a.access_key_id.len(), 20);
        assert!(a.access_key_id.starts_with("ASIA"));
        assert!(
            a.access_key_id[4..]
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert_eq!(a.secret_access_key.len(), 40);
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_ne!(a.session_token, b.session_token);
    }
}
