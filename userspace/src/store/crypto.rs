//! The sealed credential file format. Pure: no I/O, no key storage.
//!
//! ```text
//! "MOATCRED" | version u8 | key backend u8 | key id [8] | nonce [12] | AES-256-GCM(ciphertext ‖ tag)
//! ```
//! The whole header and the credential name are the AEAD's associated data, so
//! a header edit or a file renamed to another credential fails authentication.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 8] = b"MOATCRED";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8 + 1 + 1 + 8 + 12;
const TAG_LEN: usize = 16;

/// Where the key that sealed a file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Keyring,
    File,
}

impl BackendKind {
    fn to_byte(self) -> u8 {
        match self {
            BackendKind::Keyring => 1,
            BackendKind::File => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(BackendKind::Keyring),
            2 => Some(BackendKind::File),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            BackendKind::Keyring => "the system keychain (Secret Service)",
            BackendKind::File => "the key file",
        }
    }
}

/// A short public fingerprint of a key, stored in each file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A 256-bit data key, zeroed on drop, never printed.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id={})", self.id())
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut())?;
        Ok(Self(k))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A sub-key for `label`, so one stored key serves several purposes
    /// without any of them revealing another.
    pub fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref()).expect("any key length");
        mac.update(label.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    pub fn id(&self) -> KeyId {
        let d = self.derive("moat/key-id/v1");
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        KeyId(id)
    }
}

/// The parsed fixed-size header of a sealed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub backend: BackendKind,
    pub key_id: KeyId,
    pub nonce: [u8; 12],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("file is truncated ({0} bytes; a credential file has at least {min})", min = HEADER_LEN + TAG_LEN)]
    Truncated(usize),
    #[error("not a Moat credential file (bad magic bytes)")]
    BadMagic,
    #[error(
        "written by a newer Moat (format version {0}, this Moat reads version {VERSION}); upgrade moat"
    )]
    UnsupportedVersion(u8),
    #[error("unknown key backend id {0} in header")]
    UnknownBackend(u8),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// The header names a different key than the one supplied.
    #[error("the encryption key changed since it was stored")]
    KeyMismatch,
    /// Right key, but the bytes (or header, or name) were altered.
    #[error("the file was modified or corrupted")]
    Tampered,
}

pub fn parse_header(bytes: &[u8]) -> Result<Header, FormatError> {
    if bytes.len() >= MAGIC.len() && &bytes[..MAGIC.len()] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(FormatError::Truncated(bytes.len()));
    }
    let version = bytes[8];
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let backend = BackendKind::from_byte(bytes[9]).ok_or(FormatError::UnknownBackend(bytes[9]))?;
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&bytes[10..18]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&bytes[18..30]);
    Ok(Header {
        version,
        backend,
        key_id: KeyId(key_id),
        nonce,
    })
}

fn aad(header: &[u8], name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + name.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Seal `plaintext` for credential `name` with a fresh random nonce.
pub fn seal(
    key: &Key,
    backend: BackendKind,
    name: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, getrandom::Error> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(backend.to_byte());
    out.extend_from_slice(&key.id().0);
    out.extend_from_slice(&nonce);
    let cipher = Aes256Gcm::new(key.bytes().into());
    let payload = Payload {
        msg: plaintext,
        aad: &aad(&out, name),
    };
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), payload)
        .expect("AES-GCM encryption cannot fail for in-memory sizes");
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Open a sealed file for credential `name`. The header must already have
/// been parsed (to pick the key); this checks the key id, then authenticates.
pub fn open(key: &Key, name: &str, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenOrFormat> {
    let header = parse_header(bytes)?;
    if header.key_id != key.id() {
        return Err(OpenError::KeyMismatch.into());
    }
    let cipher = Aes256Gcm::new(key.bytes().into());
    let payload = Payload {
        msg: &bytes[HEADER_LEN..],
        aad: &aad(&bytes[..HEADER_LEN], name),
    };
    cipher
        .decrypt(Nonce::from_slice(&header.nonce), payload)
        .map(Zeroizing::new)
        .map_err(|_| OpenError::Tampered.into())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenOrFormat {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Open(#[from] OpenError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; 32])
    }

    #[test]
    fn round_trip() {
        let k = key(7);
        let sealed = seal(&k, BackendKind::File, "github", b"secret record").unwrap();
        assert_eq!(&open(&k, "github", &sealed).unwrap()[..], b"secret record");
        let h = parse_header(&sealed).unwrap();
        assert_eq!(h.backend, BackendKind::File);
        assert_eq!(h.key_id, k.id());
        assert_eq!(h.version, VERSION);
    }

    #[test]
    fn nonces_are_fresh() {
        let k = key(1);
        let a = seal(&k, BackendKind::File, "x", b"same").unwrap();
        let b = seal(&k, BackendKind::File, "x", b"same").unwrap();
        assert_ne!(a, b);
        assert_ne!(
            parse_header(&a).unwrap().nonce,
            parse_header(&b).unwrap().nonce
        );
    }

    #[test]
    fn tampered_ciphertext_header_or_name_fail() {
        let k = key(2);
        let sealed = seal(&k, BackendKind::Keyring, "github", b"record").unwrap();
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&k, "github", &flipped),
            Err(OpenError::Tampered.into())
        );
        let mut hdr = sealed.clone();
        hdr[20] ^= 1; // nonce byte: header is authenticated
        assert_eq!(open(&k, "github", &hdr), Err(OpenError::Tampered.into()));
        assert_eq!(open(&k, "openai", &sealed), Err(OpenError::Tampered.into()));
    }

    #[test]
    fn wrong_key_is_reported_as_key_change() {
        let sealed = seal(&key(3), BackendKind::File, "a", b"r").unwrap();
        assert_eq!(
            open(&key(4), "a", &sealed),
            Err(OpenError::KeyMismatch.into())
        );
    }

    #[test]
    fn truncated_and_garbage_files() {
        let sealed = seal(&key(5), BackendKind::File, "a", b"record").unwrap();
        assert_eq!(parse_header(&sealed[..10]), Err(FormatError::Truncated(10)));
        assert_eq!(parse_header(b""), Err(FormatError::Truncated(0)));
        assert_eq!(
            parse_header(b"garbage garbage garbage garbage garbage"),
            Err(FormatError::BadMagic)
        );
        // Cut inside the ciphertext: authentication fails, no panic.
        let cut = &sealed[..sealed.len() - 3];
        assert_eq!(open(&key(5), "a", cut), Err(OpenError::Tampered.into()));
    }

    #[test]
    fn header_version_and_backend_checked() {
        let mut sealed = seal(&key(6), BackendKind::File, "a", b"r").unwrap();
        sealed[8] = 9;
        assert_eq!(
            parse_header(&sealed),
            Err(FormatError::UnsupportedVersion(9))
        );
        assert!(
            FormatError::UnsupportedVersion(9)
                .to_string()
                .contains("upgrade moat")
        );
        sealed[8] = VERSION;
        sealed[9] = 77;
        assert_eq!(parse_header(&sealed), Err(FormatError::UnknownBackend(77)));
    }

    #[test]
    fn derived_keys_differ_by_label_and_key() {
        assert_ne!(*key(1).derive("a"), *key(1).derive("b"));
        assert_ne!(*key(1).derive("a"), *key(2).derive("a"));
        assert_ne!(key(1).id(), key(2).id());
        assert!(!format!("{:?}", key(1)).contains("0101"));
    }
}
