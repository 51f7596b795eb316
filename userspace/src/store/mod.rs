//! The encrypted credential store under `$MOAT_HOME/credentials`.
//!
//! One AES-256-GCM sealed file per credential (`<name>.enc`), per profile
//! (`profiles/<profile>/<name>.enc`). Writes are atomic and serialized across
//! processes; reads take no lock.

pub mod credential;
pub mod crypto;
pub mod fsio;
pub mod keyring;
pub mod keys;
pub mod names;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use credential::{Credential, Kind};
pub use keys::{Created, KeyError, Keys, Policy};
pub use names::{CredName, NameError, ProfileName};

use crate::home::MoatHome;
use crypto::{FormatError, Header, OpenError, OpenOrFormat};

const EXT: &str = "enc";

/// Each message is whole: it names its cause (`cause`) itself, so the cause
/// is not also a `source()` that an `{:#}` chain would print a second time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("no credential '{name}'{in_profile}; {available}")]
    NotFound {
        name: CredName,
        in_profile: String,
        available: String,
    },
    #[error("credential file {path}: {cause}")]
    Format { path: PathBuf, cause: FormatError },
    #[error(
        "decrypting credential '{name}': cipher: message authentication failed — {cause}; run '{regrant}' again"
    )]
    Decrypt {
        name: CredName,
        cause: OpenError,
        regrant: String,
    },
    #[error("credential file {path}: {cause}")]
    Record {
        path: PathBuf,
        cause: credential::RecordError,
    },
    #[error("decrypting credential '{name}': {cause}")]
    Key { name: CredName, cause: KeyError },
    #[error(transparent)]
    KeyForWrite(KeyError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |cause| StoreError::Io { op, path, cause }
}

/// A view of the store for one profile (or the default set).
pub struct Store {
    home: MoatHome,
    profile: Option<ProfileName>,
    keys: Keys,
}

impl Store {
    pub fn new(home: MoatHome, profile: Option<ProfileName>, keys: Keys) -> Self {
        Self {
            home,
            profile,
            keys,
        }
    }

    /// The store as the environment configures it: `$MOAT_HOME`, `MOAT_KEY_BACKEND`.
    pub fn from_env(home: MoatHome, profile: Option<ProfileName>) -> Result<Self, KeyError> {
        let policy = Policy::from_env()?;
        let keyring = Box::new(keyring::KeyringBackend::new(home.owner()));
        let file = Box::new(keys::FileBackend::new(home.clone()));
        Ok(Self::new(
            home.clone(),
            profile,
            Keys::new(policy, keyring, file),
        ))
    }

    pub fn home(&self) -> &MoatHome {
        &self.home
    }

    pub fn profile(&self) -> Option<&ProfileName> {
        self.profile.as_ref()
    }

    pub fn dir(&self) -> PathBuf {
        let base = self.home.credentials_dir();
        match &self.profile {
            Some(p) => base.join("profiles").join(p.as_str()),
            None => base,
        }
    }

    pub fn path(&self, name: &CredName) -> PathBuf {
        self.dir().join(format!("{}.{EXT}", name.file_stem()))
    }

    /// Seal and store `cred` under `name`, replacing any previous value.
    /// Returns whether a new encryption key had to be created.
    pub fn put(&self, name: &CredName, cred: &Credential) -> Result<Created, StoreError> {
        let root = self.home.root().to_owned();
        let _lock = fsio::lock(&self.home).map_err(io_err("lock", &root))?;
        let dir = self.dir();
        self.home.ensure_dir(&dir).map_err(io_err("create", &dir))?;
        fsio::sweep_debris(&dir);
        let (backend, key, created) = self
            .keys
            .for_write(&self.all_headers())
            .map_err(StoreError::KeyForWrite)?;
        let sealed = crypto::seal(&key, backend, name.as_str(), &cred.to_plaintext())
            .map_err(|e| StoreError::KeyForWrite(KeyError::Random(e)))?;
        let path = self.path(name);
        fsio::write_atomic(&self.home, &path, &sealed, 0o600).map_err(io_err("write", &path))?;
        Ok(created)
    }

    pub fn get(&self, name: &CredName) -> Result<Credential, StoreError> {
        self.open(name).map(|(c, _)| c)
    }

    /// The credential and the key for its placeholders: a sub-key of the key
    /// that sealed it, so a placeholder is stable for as long as the
    /// credential is, and reveals nothing about the token.
    pub fn get_with_placeholder_key(
        &self,
        name: &CredName,
    ) -> Result<(Credential, zeroize::Zeroizing<[u8; 32]>), StoreError> {
        self.open(name)
    }

    fn open(
        &self,
        name: &CredName,
    ) -> Result<(Credential, zeroize::Zeroizing<[u8; 32]>), StoreError> {
        let path = self.path(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.not_found(name)),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let header = crypto::parse_header(&bytes).map_err(|cause| StoreError::Format {
            path: path.clone(),
            cause,
        })?;
        let key = self
            .keys
            .for_open(&header)
            .map_err(|cause| StoreError::Key {
                name: name.clone(),
                cause,
            })?;
        let plain = crypto::open(&key, name.as_str(), &bytes).map_err(|e| match e {
            OpenOrFormat::Format(cause) => StoreError::Format {
                path: path.clone(),
                cause,
            },
            OpenOrFormat::Open(cause) => StoreError::Decrypt {
                name: name.clone(),
                cause,
                regrant: name.regrant_command(),
            },
        })?;
        let cred = Credential::from_plaintext(&plain)
            .map_err(|cause| StoreError::Record { path, cause })?;
        Ok((cred, key.derive("moat/placeholder/v1")))
    }

    /// Names stored in this profile, sorted.
    pub fn names(&self) -> Result<Vec<CredName>, StoreError> {
        let dir = self.dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut names: Vec<CredName> = entries
            .flatten()
            .filter_map(|e| {
                let file_name = e.file_name();
                let stem = file_name.to_str()?.strip_suffix(".enc")?;
                CredName::from_file_stem(stem).ok()
            })
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn delete(&self, name: &CredName) -> Result<(), StoreError> {
        let path = self.path(name);
        let root = self.home.root().to_owned();
        let _lock = fsio::lock(&self.home).map_err(io_err("lock", &root))?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.not_found(name)),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    fn not_found(&self, name: &CredName) -> StoreError {
        let names = self.names().unwrap_or_default();
        let available = if names.is_empty() {
            format!(
                "nothing is stored{}; run '{}' first",
                self.in_profile(),
                name.regrant_command()
            )
        } else {
            let list: Vec<&str> = names.iter().map(CredName::as_str).collect();
            format!("stored: {}", list.join(", "))
        };
        StoreError::NotFound {
            name: name.clone(),
            in_profile: self.in_profile(),
            available,
        }
    }

    fn in_profile(&self) -> String {
        self.profile
            .as_ref()
            .map(|p| format!(" in profile '{p}'"))
            .unwrap_or_default()
    }

    /// Headers of every sealed file in every profile: a new key must not be
    /// created while any of them exists.
    fn all_headers(&self) -> Vec<Header> {
        let base = self.home.credentials_dir();
        let mut dirs = vec![base.clone()];
        if let Ok(profiles) = fs::read_dir(base.join("profiles")) {
            dirs.extend(profiles.flatten().map(|e| e.path()));
        }
        let mut headers = Vec::new();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == EXT) {
                    // Unreadable or garbage files still count: better refuse to
                    // create a key than orphan something we failed to parse.
                    let header = fs::read(&path)
                        .ok()
                        .and_then(|b| crypto::parse_header(&b).ok());
                    headers.push(header.unwrap_or(Header {
                        version: crypto::VERSION,
                        backend: crypto::BackendKind::File,
                        key_id: crypto::KeyId([0; 8]),
                        nonce: [0; 12],
                    }));
                }
            }
        }
        headers
    }
}
