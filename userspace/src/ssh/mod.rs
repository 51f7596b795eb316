//! `ssh:<host>` grants: the sandbox's `SSH_AUTH_SOCK` is Moat's agent
//! ([`agent`]), which offers only the keys granted for some host of the
//! run and signs only logins, each bound (when the client says where it
//! logs in, OpenSSH's `session-bind@openssh.com`) to a server host key the
//! proxy saw ([`HostKeys`], from [`wire::HostKeyWatch`]) on a connection to
//! a host that key is granted for. Private keys stay in the host's agent.

pub mod agent;
pub mod wire;

use std::sync::Mutex;

use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey};

pub use agent::Agent;

/// One `ssh:HOST` grant of a run: the host and the public key stored for it.
#[derive(Debug, Clone)]
pub struct SshGrant {
    pub host: String,
    pub key: PublicKey,
}

/// A key a run may use, with every host it is granted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub key: KeyData,
    pub hosts: Vec<String>,
    /// `SHA256:…`, for messages and events.
    pub fingerprint: String,
}

/// The run's grants grouped by key (several hosts may share one key).
pub fn by_key(grants: &[SshGrant]) -> Vec<KeyGrant> {
    let mut keys: Vec<KeyGrant> = Vec::new();
    for g in grants {
        let host = g.host.to_ascii_lowercase();
        match keys.iter_mut().find(|k| &k.key == g.key.key_data()) {
            Some(k) if !k.hosts.contains(&host) => k.hosts.push(host),
            Some(_) => {}
            None => keys.push(KeyGrant {
                key: g.key.key_data().clone(),
                hosts: vec![host],
                fingerprint: fingerprint(g.key.key_data()),
            }),
        }
    }
    keys
}

/// `SHA256:…`, as `ssh-add -l` prints it.
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// At most this many (host, host key) pairs are kept per run; a run that
/// opens more distinct SSH servers than this forgets the oldest.
const MAX_HOST_KEYS: usize = 1024;

/// The server host keys the proxy saw in the clear-text key exchange of the
/// run's SSH connections, with the host each connection was going to.
#[derive(Debug, Default)]
pub struct HostKeys(Mutex<Vec<(String, KeyData)>>);

impl HostKeys {
    /// Record that a connection to `host` was served `blob` as host key
    /// (ignored when it is not a public key Moat can read).
    pub fn record(&self, host: &str, blob: &[u8]) -> Option<String> {
        use ssh_encoding::Decode as _;
        let key = KeyData::decode(&mut &blob[..]).ok()?;
        let print = fingerprint(&key);
        let host = host.to_ascii_lowercase();
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.iter().any(|(h, k)| *h == host && *k == key) {
            if seen.len() == MAX_HOST_KEYS {
                seen.remove(0);
            }
            seen.push((host, key));
        }
        Some(print)
    }

    /// The hosts whose connections were served `key`.
    pub fn hosts_of(&self, key: &KeyData) -> Vec<String> {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .filter(|(_, k)| k == key)
            .map(|(h, _)| h.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        let data = KeyData::Ed25519(ssh_key::public::Ed25519PublicKey([seed; 32]));
        PublicKey::new(data, format!("key{seed}"))
    }

    #[test]
    fn grants_group_by_key_and_lowercase_hosts() {
        let grants = [
            SshGrant {
                host: "GitHub.com".into(),
                key: key(1),
            },
            SshGrant {
                host: "gitlab.com".into(),
                key: key(1),
            },
            SshGrant {
                host: "github.com".into(),
                key: key(1),
            },
            SshGrant {
                host: "other.test".into(),
                key: key(2),
            },
        ];
        let keys = by_key(&grants);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].hosts, ["github.com", "gitlab.com"]);
        assert_eq!(keys[1].hosts, ["other.test"]);
        assert!(keys[0].fingerprint.starts_with("SHA256:"));
    }

    #[test]
    fn host_keys_remember_which_host_served_them() {
        use ssh_encoding::Encode as _;
        let seen = HostKeys::default();
        let mut blob = Vec::new();
        key(7).key_data().encode(&mut blob).unwrap();
        assert!(seen.record("Git.test", &blob).is_some());
        seen.record("git.test", &blob);
        seen.record("mirror.test", &blob);
        assert_eq!(seen.record("x", b"not a key"), None);
        assert_eq!(
            seen.hosts_of(key(7).key_data()),
            ["git.test", "mirror.test"]
        );
        assert!(seen.hosts_of(key(8).key_data()).is_empty());
    }
}
