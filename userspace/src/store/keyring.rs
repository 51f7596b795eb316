//! The Secret Service keychain backend (GNOME Keyring, KWallet, KeePassXC).
//!
//! Under `sudo`, root cannot talk to the invoking user's session bus, so the
//! keychain is reached through a helper: this same binary, run as that user
//! (`moat __keyring load|store`), passing the key over a pipe.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
#[cfg(target_os = "linux")]
use std::time::Duration;

use super::crypto::{BackendKind, Key};
use super::keys::{KeyBackend, KeyError, decode_key, encode_key};
use crate::home::Owner;

#[cfg(target_os = "linux")]
const SERVICE: &str = "moat";
#[cfg(target_os = "linux")]
const ACCOUNT: &str = "encryption-key";
#[cfg(target_os = "linux")]
const LABEL: &str = "Moat credential encryption key";
#[cfg(target_os = "linux")]
const TIMEOUT: Duration = Duration::from_secs(5);
const NAME: &str = "the system keychain (Secret Service)";

/// Reaches the keychain in-process, or through the helper when `owner` is set.
pub struct KeyringBackend {
    owner: Option<Owner>,
}

impl KeyringBackend {
    pub fn new(owner: Option<Owner>) -> Self {
        Self { owner }
    }
}

fn unavailable(reason: impl std::fmt::Display) -> KeyError {
    KeyError::Unavailable {
        backend: NAME,
        reason: reason.to_string(),
    }
}

impl KeyBackend for KeyringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Keyring
    }

    fn load(&self) -> Result<Option<Key>, KeyError> {
        match self.owner {
            None => imp::load(),
            Some(owner) => {
                let out = helper(owner, "load", None)?;
                let text = out.trim();
                if text.is_empty() {
                    return Ok(None);
                }
                decode_key(text).map(Some).map_err(unavailable)
            }
        }
    }

    fn store(&self, key: &Key) -> Result<(), KeyError> {
        match self.owner {
            None => imp::store(key),
            Some(owner) => helper(owner, "store", Some(key)).map(drop),
        }
    }

    fn location(&self) -> String {
        NAME.to_owned()
    }
}

/// Entry point of `moat __keyring load|store` (runs as the sudo caller).
pub fn helper_main(op: &str) -> Result<(), KeyError> {
    match op {
        "load" => {
            if let Some(key) = imp::load()? {
                // The Moat that started this helper reads it: a write error is an error, not a panic.
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", *encode_key(&key)).map_err(unavailable)?;
            }
            Ok(())
        }
        "store" => {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line).map_err(unavailable)?;
            imp::store(&decode_key(line.trim()).map_err(unavailable)?)
        }
        other => Err(unavailable(format!("unknown helper operation {other}"))),
    }
}

fn helper(
    owner: Owner,
    op: &str,
    key: Option<&Key>,
) -> Result<zeroize::Zeroizing<String>, KeyError> {
    let exe = std::env::current_exe().map_err(unavailable)?;
    let mut cmd = Command::new(exe);
    cmd.args(["__keyring", op]).uid(owner.uid).gid(owner.gid);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        cmd.env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path=/run/user/{}/bus", owner.uid),
        );
    }
    let mut child = cmd.spawn().map_err(unavailable)?;
    if let (Some(key), Some(mut stdin)) = (key, child.stdin.take()) {
        writeln!(stdin, "{}", *encode_key(key)).map_err(unavailable)?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(unavailable)?;
    if !out.status.success() {
        return Err(unavailable(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("moat: error: "),
        ));
    }
    Ok(zeroize::Zeroizing::new(
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashMap;

    use secret_service::{EncryptionType, SecretService};

    use super::*;

    fn attrs() -> HashMap<&'static str, &'static str> {
        HashMap::from([("service", SERVICE), ("account", ACCOUNT)])
    }

    /// Run one keychain conversation on a private runtime, bounded in time.
    fn block_on<T>(
        fut: impl std::future::Future<Output = Result<T, KeyError>>,
    ) -> Result<T, KeyError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(unavailable)?;
        rt.block_on(async {
            tokio::time::timeout(TIMEOUT, fut)
                .await
                .unwrap_or_else(|_| Err(unavailable("no answer within 5 s")))
        })
    }

    pub fn load() -> Result<Option<Key>, KeyError> {
        block_on(async {
            let ss = SecretService::connect(EncryptionType::Dh)
                .await
                .map_err(unavailable)?;
            let found = ss.search_items(attrs()).await.map_err(unavailable)?;
            let item = match (
                found.unlocked.into_iter().next(),
                found.locked.into_iter().next(),
            ) {
                (Some(item), _) => item,
                (None, Some(item)) => {
                    item.unlock()
                        .await
                        .map_err(|e| unavailable(format!("keychain is locked: {e}")))?;
                    item
                }
                (None, None) => return Ok(None),
            };
            let secret = zeroize::Zeroizing::new(item.get_secret().await.map_err(unavailable)?);
            let text = std::str::from_utf8(&secret).map_err(unavailable)?;
            decode_key(text.trim()).map(Some).map_err(unavailable)
        })
    }

    pub fn store(key: &Key) -> Result<(), KeyError> {
        block_on(async {
            let ss = SecretService::connect(EncryptionType::Dh)
                .await
                .map_err(unavailable)?;
            let collection = match ss.get_default_collection().await {
                Ok(c) => c,
                Err(_) => ss.get_any_collection().await.map_err(unavailable)?,
            };
            if collection.is_locked().await.map_err(unavailable)? {
                collection
                    .unlock()
                    .await
                    .map_err(|e| unavailable(format!("keychain is locked: {e}")))?;
            }
            let secret = encode_key(key);
            collection
                .create_item(LABEL, attrs(), secret.as_bytes(), true, "text/plain")
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub fn load() -> Result<Option<Key>, KeyError> {
        Err(unavailable("not supported on this platform yet"))
    }

    pub fn store(_key: &Key) -> Result<(), KeyError> {
        Err(unavailable("not supported on this platform yet"))
    }
}
