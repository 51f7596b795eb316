//! Where the data key lives, and the rules for choosing and creating it.
//!
//! Two backends sit behind [`KeyBackend`]: the Secret Service keychain and a
//! 0600 key file. Each sealed file names the backend and key id it was sealed
//! with, so it is always opened with that key. A new key is only ever created
//! when no sealed file exists: creating one while credentials sealed by an
//! unreachable key exist would orphan them.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::crypto::{BackendKind, Header, Key};
use super::fsio;
use crate::home::MoatHome;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{backend} is not reachable: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    // `cause`, not `source`: the message already says it (see StoreError).
    #[error("cannot use key file {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error(
        "key file {path} is not a Moat key ({reason}); move it aside only if no credential needs it"
    )]
    BadKeyFile { path: PathBuf, reason: String },
    #[error(
        "key file {path} is accessible by other users (mode {mode:04o}); run: chmod 600 {path}"
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error(
        "the key that sealed this credential is not in {backend}{hint}; it was sealed with key id {key_id}"
    )]
    Missing {
        backend: &'static str,
        key_id: String,
        hint: String,
    },
    #[error(
        "{count} stored credential(s) were sealed with a key that is not available ({reason}). \
Moat will not create a new key, because that would orphan them. {fix}"
    )]
    WouldOrphan {
        count: usize,
        reason: String,
        fix: String,
    },
    #[error("MOAT_KEY_BACKEND='{0}' is not one of: auto, keyring, file")]
    BadPolicy(String),
    #[error("the system random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// One place a key can be kept.
pub trait KeyBackend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// `Ok(None)`: reachable, but holds no Moat key yet.
    fn load(&self) -> Result<Option<Key>, KeyError>;
    fn store(&self, key: &Key) -> Result<(), KeyError>;
    /// Where the key is, for messages.
    fn location(&self) -> String;
}

/// `MOAT_KEY_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Auto,
    Keyring,
    File,
}

impl Policy {
    pub fn from_env() -> Result<Self, KeyError> {
        match std::env::var("MOAT_KEY_BACKEND")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            None | Some("") | Some("auto") => Ok(Policy::Auto),
            Some("keyring") => Ok(Policy::Keyring),
            Some("file") => Ok(Policy::File),
            Some(other) => Err(KeyError::BadPolicy(other.to_owned())),
        }
    }
}

/// The key file `$MOAT_HOME/encryption.key`: the base64 key on one line, 0600.
pub struct FileBackend {
    home: MoatHome,
}

impl FileBackend {
    pub fn new(home: MoatHome) -> Self {
        Self { home }
    }
}

impl KeyBackend for FileBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::File
    }

    fn load(&self) -> Result<Option<Key>, KeyError> {
        let path = self.home.key_file();
        let io_err = |cause| KeyError::Io {
            path: path.clone(),
            cause,
        };
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Insecure { path, mode });
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(io_err)?;
        decode_key(text.trim())
            .map(Some)
            .map_err(|reason| KeyError::BadKeyFile { path, reason })
    }

    fn store(&self, key: &Key) -> Result<(), KeyError> {
        let path = self.home.key_file();
        let text = Zeroizing::new(format!("{}\n", B64.encode(key.bytes())));
        fsio::write_atomic(&self.home, &path, text.as_bytes(), 0o600)
            .map_err(|cause| KeyError::Io { path, cause })
    }

    fn location(&self) -> String {
        format!("{} (0600)", self.home.key_file().display())
    }
}

pub fn decode_key(text: &str) -> Result<Key, String> {
    let bytes = Zeroizing::new(B64.decode(text).map_err(|e| format!("not base64: {e}"))?);
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("{} bytes, expected 32", bytes.len()))?;
    Ok(Key::from_bytes(arr))
}

pub fn encode_key(key: &Key) -> Zeroizing<String> {
    Zeroizing::new(B64.encode(key.bytes()))
}

/// What a write learned about the key: whether it had to create one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    No,
    /// A new key was created; the string says where, for a one-time notice.
    Yes(String),
}

/// Chooses, loads, caches and (when allowed) creates the data key.
pub struct Keys {
    policy: Policy,
    keyring: Box<dyn KeyBackend>,
    file: Box<dyn KeyBackend>,
    cache: Mutex<HashMap<BackendKind, Key>>,
}

impl Keys {
    pub fn new(policy: Policy, keyring: Box<dyn KeyBackend>, file: Box<dyn KeyBackend>) -> Self {
        Self {
            policy,
            keyring,
            file,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn backend(&self, kind: BackendKind) -> &dyn KeyBackend {
        match kind {
            BackendKind::Keyring => self.keyring.as_ref(),
            BackendKind::File => self.file.as_ref(),
        }
    }

    fn load_cached(&self, kind: BackendKind) -> Result<Option<Key>, KeyError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(&kind) {
            return Ok(Some(k.clone()));
        }
        let loaded = self.backend(kind).load()?;
        if let Some(k) = &loaded {
            cache.insert(kind, k.clone());
        }
        Ok(loaded)
    }

    /// The key a sealed file names in its header.
    pub fn for_open(&self, header: &Header) -> Result<Key, KeyError> {
        let backend = self.backend(header.backend);
        match self.load_cached(header.backend)? {
            Some(key) => Ok(key),
            None => Err(KeyError::Missing {
                backend: header.backend.describe(),
                key_id: header.key_id.to_string(),
                hint: match header.backend {
                    BackendKind::File => format!(" ({})", backend.location()),
                    BackendKind::Keyring => String::new(),
                },
            }),
        }
    }

    /// The key to seal a new write with. `sealed` are the headers of every
    /// credential file that exists (all profiles). Call with the write lock held.
    pub fn for_write(&self, sealed: &[Header]) -> Result<(BackendKind, Key, Created), KeyError> {
        let order: &[BackendKind] = match self.policy {
            Policy::Auto => &[BackendKind::Keyring, BackendKind::File],
            Policy::Keyring => &[BackendKind::Keyring],
            Policy::File => &[BackendKind::File],
        };
        let mut reachable_empty = None;
        let mut unreachable = Vec::new();
        for &kind in order {
            match self.load_cached(kind) {
                Ok(Some(key)) => return Ok((kind, key, Created::No)),
                Ok(None) => {
                    reachable_empty.get_or_insert(kind);
                }
                Err(KeyError::Unavailable { reason, .. }) if self.policy == Policy::Auto => {
                    unreachable.push(reason)
                }
                Err(e) => return Err(e),
            }
        }
        if !sealed.is_empty() {
            let reason = if unreachable.is_empty() {
                "no key found in ".to_owned()
                    + &order
                        .iter()
                        .map(|k| k.describe())
                        .collect::<Vec<_>>()
                        .join(" or ")
            } else {
                format!(
                    "the system keychain is not reachable: {}",
                    unreachable.join("; ")
                )
            };
            return Err(KeyError::WouldOrphan {
                count: sealed.len(),
                reason,
                fix: orphan_fix(sealed),
            });
        }
        let Some(kind) = reachable_empty else {
            let reason = unreachable.join("; ");
            return Err(KeyError::Unavailable {
                backend: "no key backend",
                reason,
            });
        };
        let key = Key::generate().map_err(KeyError::Random)?;
        self.backend(kind).store(&key)?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind, key.clone());
        let place = match (kind, unreachable.first()) {
            (BackendKind::File, Some(why)) => {
                format!(
                    "no keychain answered ({why}); encryption key stored in {}",
                    self.file.location()
                )
            }
            _ => format!(
                "encryption key created in {}",
                self.backend(kind).location()
            ),
        };
        Ok((kind, key, Created::Yes(place)))
    }
}

fn orphan_fix(sealed: &[Header]) -> String {
    let in_keyring = sealed.iter().any(|h| h.backend == BackendKind::Keyring);
    let in_file = sealed.iter().any(|h| h.backend == BackendKind::File);
    let mut fix = Vec::new();
    if in_keyring {
        fix.push(
            "Unlock or start your keychain (Secret Service; check DBUS_SESSION_BUS_ADDRESS) and try again".to_owned(),
        );
    }
    if in_file {
        fix.push("Restore $MOAT_HOME/encryption.key from a backup".to_owned());
    }
    fix.push(
        "or, to start over, remove the credential files (moat revoke NAME) and grant them again"
            .to_owned(),
    );
    fix.join("; ") + "."
}
