//! Placeholders: what the sandbox sees instead of a real token.
//!
//! Each is format-valid for its provider (SDKs that check a prefix or length
//! accept it) and derived from the real token with a keyed hash, so it is
//! stable for a credential but reveals nothing about the token.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const HEX: &[u8] = b"0123456789abcdef";
const URLSAFE: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    Base62,
    Hex,
    UrlSafe,
}

impl Alphabet {
    fn chars(self) -> &'static [u8] {
        match self {
            Alphabet::Base62 => BASE62,
            Alphabet::Hex => HEX,
            Alphabet::UrlSafe => URLSAFE,
        }
    }
}

/// The shape of a provider's placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// `prefix` followed by `len` characters of `alphabet`.
    Prefixed {
        prefix: &'static str,
        len: usize,
        alphabet: Alphabet,
    },
    /// A fixed value (npm's documented `npm_moatProxyInjected00000000`).
    Fixed(&'static str),
    /// Token substitution: `moat-<hash>`, replaced wherever it appears.
    Substitution,
}

impl Format {
    pub const fn prefixed(prefix: &'static str, len: usize, alphabet: Alphabet) -> Self {
        Format::Prefixed {
            prefix,
            len,
            alphabet,
        }
    }
}

/// Length of the hash in `moat-<hash>`.
pub const SUBSTITUTION_HASH_LEN: usize = 32;

/// Derive the placeholder for `token` of credential `name`. `key` is a
/// secret sub-key of the store's data key.
pub fn derive(format: &Format, key: &[u8; 32], name: &str, token: &str) -> String {
    let (prefix, len, alphabet) = match *format {
        Format::Fixed(v) => return v.to_owned(),
        Format::Prefixed {
            prefix,
            len,
            alphabet,
        } => (prefix, len, alphabet),
        Format::Substitution => ("moat-", SUBSTITUTION_HASH_LEN, Alphabet::Hex),
    };
    let chars = alphabet.chars();
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    let mut counter = 0u32;
    while out.len() < prefix.len() + len {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(token.as_bytes());
        mac.update(&counter.to_be_bytes());
        for b in mac.finalize().into_bytes() {
            if out.len() == prefix.len() + len {
                break;
            }
            out.push(chars[b as usize % chars.len()] as char);
        }
        counter += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [9; 32];

    #[test]
    fn github_shape() {
        let ph = derive(
            &Format::prefixed("ghp_", 36, Alphabet::Base62),
            &K,
            "github",
            "ghp_real",
        );
        assert!(ph.starts_with("ghp_"));
        assert_eq!(ph.len(), 40);
        assert!(ph[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn substitution_shape_deterministic_keyed() {
        let a = derive(&Format::Substitution, &K, "telegram", "123:ABC");
        assert!(a.starts_with("moat-"));
        assert_eq!(a.len(), 5 + SUBSTITUTION_HASH_LEN);
        assert!(a[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, derive(&Format::Substitution, &K, "telegram", "123:ABC"));
        assert_ne!(a, derive(&Format::Substitution, &K, "telegram", "123:ABD"));
        assert_ne!(
            a,
            derive(&Format::Substitution, &[8; 32], "telegram", "123:ABC")
        );
        assert_ne!(a, derive(&Format::Substitution, &K, "tg2", "123:ABC"));
        assert!(!a.contains("123") || !a.contains("ABC"));
    }

    #[test]
    fn long_outputs_span_several_blocks() {
        let ph = derive(
            &Format::prefixed("sk-ant-api03-", 95, Alphabet::UrlSafe),
            &K,
            "anthropic",
            "x",
        );
        assert_eq!(ph.len(), 13 + 95);
    }

    #[test]
    fn fixed() {
        assert_eq!(
            derive(
                &Format::Fixed("npm_moatProxyInjected00000000"),
                &K,
                "npm",
                "t"
            ),
            "npm_moatProxyInjected00000000"
        );
    }
}
