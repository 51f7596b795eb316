//! What `moat grant aws` stores: the role to assume and how, never a key.
//! Pure: parsing, formatting, and the credential record's metadata.

use std::collections::BTreeMap;
use std::time::Duration;

/// The seed's default session length.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(15 * 60);
/// STS's limits on `DurationSeconds` (a role's own maximum may be lower).
const MIN_DURATION: Duration = Duration::from_secs(15 * 60);
const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);

/// How the sandbox gets AWS access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Inject {
    /// `AWS_CONFIG_FILE` with a `credential_process` that fetches temporary
    /// credentials from the run's proxy: short-lived keys are inside.
    #[default]
    CredentialProcess,
    /// Placeholder keys inside; the proxy re-signs every request (SigV4)
    /// with the real temporary credentials: no key is ever inside.
    Sigv4,
}

impl Inject {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "credential-process" | "credential_process" => Ok(Self::CredentialProcess),
            "sigv4" => Ok(Self::Sigv4),
            _ => Err(format!(
                "--inject '{s}': expected 'credential-process' (the default) or 'sigv4'"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialProcess => "credential-process",
            Self::Sigv4 => "sigv4",
        }
    }
}

/// A stored `aws` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleConfig {
    pub role_arn: String,
    pub region: Option<String>,
    pub duration: Duration,
    pub external_id: Option<String>,
    /// The host's shared-config profile whose identity assumes the role.
    pub profile: Option<String>,
    pub inject: Inject,
}

const ROLE_ARN: &str = "role_arn";
const REGION: &str = "region";
const DURATION: &str = "session_duration_secs";
const EXTERNAL_ID: &str = "external_id";
const PROFILE: &str = "aws_profile";
const INJECT: &str = "inject";

impl RoleConfig {
    /// The credential record's non-secret metadata.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(ROLE_ARN.into(), self.role_arn.clone());
        m.insert(DURATION.into(), self.duration.as_secs().to_string());
        m.insert(INJECT.into(), self.inject.as_str().into());
        for (k, v) in [
            (REGION, &self.region),
            (EXTERNAL_ID, &self.external_id),
            (PROFILE, &self.profile),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.clone());
            }
        }
        m
    }

    /// Read back a record; `Err` names what is missing or wrong.
    pub fn from_metadata(m: &BTreeMap<String, String>) -> Result<Self, String> {
        let role_arn = m.get(ROLE_ARN).ok_or("no role ARN")?.clone();
        let duration = m
            .get(DURATION)
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .ok_or("no session duration")?;
        let inject = match m.get(INJECT) {
            Some(s) => Inject::parse(s)?,
            None => Inject::default(),
        };
        Ok(Self {
            role_arn,
            region: m.get(REGION).cloned(),
            duration,
            external_id: m.get(EXTERNAL_ID).cloned(),
            profile: m.get(PROFILE).cloned(),
            inject,
        })
    }
}

/// Check an IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
pub fn parse_role_arn(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "'{s}' is not an IAM role ARN ({why}); expected arn:aws:iam::ACCOUNT_ID:role/NAME, e.g. arn:aws:iam::123456789012:role/AgentRole"
        )
    };
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts.as_slice() else {
        return Err(bad("it needs six ':'-separated fields"));
    };
    if *arn != "arn" {
        return Err(bad("it must start with 'arn:'"));
    }
    if !matches!(
        *partition,
        "aws" | "aws-cn" | "aws-us-gov" | "aws-iso" | "aws-iso-b"
    ) {
        return Err(bad("unknown partition"));
    }
    if *service != "iam" {
        return Err(bad("the service must be 'iam'"));
    }
    if !region.is_empty() {
        return Err(bad("IAM ARNs have no region"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the account ID must be 12 digits"));
    }
    let name = resource
        .strip_prefix("role/")
        .ok_or_else(|| bad("the resource must be role/NAME"))?;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c);
    if name.is_empty() || name.ends_with('/') || !name.chars().all(ok_char) {
        return Err(bad(
            "the role name is empty or has characters IAM does not allow",
        ));
    }
    Ok(s.to_owned())
}

/// A session duration as the seed writes it: `15m`, `1h`, `2h30m`, `90m`
/// (hours, minutes, seconds in that order), within STS's 15m–12h.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "--session-duration '{s}': expected hours and minutes like 15m, 1h or 2h30m (between 15m and 12h)"
        )
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0u64;
    let mut last_unit = 0; // h=3 > m=2 > s=1: units must descend
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 6 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let (unit, secs) = match rest.as_bytes().get(digits) {
            Some(b'h') => (3, 3600),
            Some(b'm') => (2, 60),
            Some(b's') => (1, 1),
            _ => return Err(bad()),
        };
        if last_unit != 0 && unit >= last_unit {
            return Err(bad());
        }
        last_unit = unit;
        total += n * secs;
        rest = &rest[digits + 1..];
    }
    let d = Duration::from_secs(total);
    if !(MIN_DURATION..=MAX_DURATION).contains(&d) {
        return Err(bad());
    }
    Ok(d)
}

/// `15m0s`, `2h0m0s`, `2h30m0s`: how the seed prints a duration.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_the_seed_writes_them() {
        for (s, secs) in [
            ("15m", 900),
            ("1h", 3600),
            ("2h30m", 9000),
            ("30m", 1800),
            ("90m", 5400),
            ("12h", 43200),
            ("1h0m30s", 3630),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for bad in [
            "", "15", "m", "1.5h", "30m1h", "1h1h", "10m", "13h", "-1h", "1d", "15 m", "1hh",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("2h30m"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_print_as_the_seed_shows() {
        assert_eq!(format_duration(Duration::from_secs(900)), "15m0s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h0m0s");
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m0s");
        assert_eq!(format_duration(Duration::from_secs(9030)), "2h30m30s");
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
    }

    #[test]
    fn role_arns_are_checked() {
        for good in [
            "arn:aws:iam::123456789012:role/AgentRole",
            "arn:aws-cn:iam::123456789012:role/path/to/Role_1+=,.@-",
        ] {
            assert_eq!(parse_role_arn(good).as_deref(), Ok(good));
        }
        for bad in [
            "AgentRole",
            "arn:aws:iam::123456789012:user/dev",
            "arn:aws:sts::123456789012:role/R",
            "arn:aws:iam::12345:role/R",
            "arn:aws:iam:us-east-1:123456789012:role/R",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a b",
            "arn:nope:iam::123456789012:role/R",
        ] {
            let e = parse_role_arn(bad).unwrap_err();
            assert!(
                e.contains("arn:aws:iam::123456789012:role/AgentRole"),
                "{e}"
            );
        }
    }

    #[test]
    fn metadata_round_trips_and_holds_no_secret() {
        let c = RoleConfig {
            role_arn: "arn:aws:iam::123456789012:role/AgentRole".into(),
            region: Some("us-west-2".into()),
            duration: Duration::from_secs(1800),
            external_id: Some("ext".into()),
            profile: Some("work".into()),
            inject: Inject::Sigv4,
        };
        let m = c.to_metadata();
        assert_eq!(RoleConfig::from_metadata(&m), Ok(c));
        let mut m = BTreeMap::new();
        m.insert(
            ROLE_ARN.to_owned(),
            "arn:aws:iam::123456789012:role/R".into(),
        );
        assert!(RoleConfig::from_metadata(&m).is_err());
        m.insert(DURATION.to_owned(), "900".into());
        let c = RoleConfig::from_metadata(&m).unwrap();
        assert_eq!((c.inject, c.region), (Inject::CredentialProcess, None));
    }
}
