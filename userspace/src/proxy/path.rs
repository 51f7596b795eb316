//! The normal form of a request path, for route rules (`deny * /admin/**`).
//!
//! Pure, no I/O. An upstream resolves `/x/../admin`, `/%61dmin` and `//admin`
//! to `/admin`; a rule matched against the raw bytes would not. So route rules
//! only ever see paths in normal form, and a request whose path is not in
//! normal form is refused on hosts with route entries (the client is told the
//! normal form to send instead): the bytes the rule matched are the bytes the
//! upstream gets.
//!
//! The normal form (RFC 3986 §6.2.2):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded
//!   (`%61` → `a`), every other percent-encoding with upper-case hex digits
//!   (`%2f` → `%2F`); a `%` not followed by two hex digits is malformed;
//! - no empty segments (`//` → `/`);
//! - no `.` or `..` segments (§5.2.4; `..` above the root stays at the root).
//!
//! Beyond normalizing, [`normalize`] refuses what upstreams read two ways:
//! a raw backslash or control byte, and a `.` or `..` hidden between encoded
//! slashes (`/a%2F..%2Fadmin`: a server that decodes `%2F` first resolves it
//! to `/admin`). An encoded slash alone stays as it is (GitLab's
//! `/projects/group%2Fproject`), matched as the three bytes `%2F`.
//!
//! Case is kept: paths are case-sensitive (RFC 3986 §6.2.2.1), so `/ADMIN` is
//! another path than `/admin`, and a rule for one does not cover the other.

use std::borrow::Cow;

/// Why a path has no normal form Moat will match rules against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path has a '%' not followed by two hex digits")]
    BadPercent,
    #[error("the path has a backslash or a control character")]
    BadByte,
    #[error("the path has a '.' or '..' segment between encoded slashes")]
    HiddenDotSegment,
}

/// `path` (without the query) in normal form: borrowed when it already is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.iter().any(|&b| b == b'\\' || b.is_ascii_control()) {
        return Err(PathError::BadByte);
    }
    let decoded = decode_unreserved(bytes)?;
    if hides_dot_segment(&decoded) {
        return Err(PathError::HiddenDotSegment);
    }
    let normal = remove_dot_segments(&decoded);
    if normal == bytes {
        return Ok(Cow::Borrowed(path));
    }
    // Only ASCII was decoded and only whole segments removed: still UTF-8.
    match String::from_utf8(normal) {
        Ok(s) => Ok(Cow::Owned(s)),
        Err(_) => Err(PathError::BadByte),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// Unreserved characters decoded, other escapes with upper-case hex.
fn decode_unreserved(bytes: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadPercent);
        };
        let b = hi << 4 | lo;
        if unreserved(b) {
            out.push(b);
        } else {
            out.push(b'%');
            out.push(bytes[i + 1].to_ascii_uppercase());
            out.push(bytes[i + 2].to_ascii_uppercase());
        }
        i += 3;
    }
    Ok(out)
}

/// Is there a `.` or `..` segment once `%2F` and `%5C` count as slashes too,
/// that plain `/` splitting does not see (those are removed, not refused)?
fn hides_dot_segment(path: &[u8]) -> bool {
    let has_encoded_slash = path.windows(3).any(|w| w == b"%2F" || w == b"%5C");
    if !has_encoded_slash {
        return false;
    }
    path.split(|&b| b == b'/').any(|segment| {
        split_encoded_slashes(segment).count() > 1
            && split_encoded_slashes(segment).any(|part| part == b"." || part == b"..")
    })
}

fn split_encoded_slashes(segment: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(segment);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.windows(3).position(|w| w == b"%2F" || w == b"%5C") {
            Some(at) => {
                rest = Some(&s[at + 3..]);
                Some(&s[..at])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// `/`-separated segments with empty, `.` and `..` segments resolved; a
/// trailing slash (or a last `.`/`..` segment) leaves a trailing `/`.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    let mut trailing = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            b"" | b"." => trailing = last,
            b".." => {
                kept.pop();
                trailing = last;
            }
            s => {
                kept.push(s);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &kept {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing || kept.is_empty() {
        out.push(b'/');
    }
    out
}

/// The check the `path` fuzz target runs (and the seed test in CI).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Any bytes: no panic; a normal form is its own normal form, starts
    /// with `/`, has no empty, `.` or `..` segment and no lower-case or
    /// unreserved escape.
    pub fn fuzz_check(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(normal) = normalize(text) else {
            return;
        };
        assert_eq!(
            normalize(&normal).as_deref(),
            Ok(normal.as_ref()),
            "not idempotent: {text:?}"
        );
        assert!(normal.starts_with('/'), "{normal:?}");
        let inner = &normal[1..];
        let body = inner.strip_suffix('/').unwrap_or(inner);
        if !body.is_empty() {
            for segment in body.split('/') {
                assert!(
                    !matches!(segment, "" | "." | ".."),
                    "{text:?} -> {normal:?}"
                );
            }
        }
        let b = normal.as_bytes();
        for (i, _) in normal.match_indices('%') {
            let (hi, lo) = (b[i + 1], b[i + 2]);
            assert!(!hi.is_ascii_lowercase() && !lo.is_ascii_lowercase());
            assert!(!unreserved(
                hex(hi).unwrap_or(0) << 4 | hex(lo).unwrap_or(0)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/admin",
            "/repos/moat/pulls/",
            "/a%2Fb",
            "/%C3%A9t%C3%A9",
            "/ADMIN",
            "/a..b/.c/d.",
            "/v1/models:generate",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(b)) if b == p),
                "{p}"
            );
        }
    }

    #[test]
    fn the_bypasses_of_issue_24_normalize_to_admin() {
        for p in [
            "/x/../admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "//admin",
            "/./admin",
            "/../admin",
            "/x/%2e%2e/admin",
            "/x/%2E./admin",
            "///x//..//admin",
        ] {
            assert_eq!(n(p).as_deref(), Ok("/admin"), "{p}");
        }
        // Case is kept: another path.
        assert_eq!(n("/ADMIN").as_deref(), Ok("/ADMIN"));
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/a/b/../../..").as_deref(), Ok("/"));
        assert_eq!(n("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/a//").as_deref(), Ok("/a/"));
        assert_eq!(n("//").as_deref(), Ok("/"));
        assert_eq!(n("/a/./b/../c").as_deref(), Ok("/a/c"));
    }

    #[test]
    fn escapes_other_than_unreserved_stay_with_upper_case_hex() {
        assert_eq!(n("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(n("/%7e%7E").as_deref(), Ok("/~~"));
        assert_eq!(n("/%c3%a9").as_deref(), Ok("/%C3%A9"));
        assert_eq!(n("/%25").as_deref(), Ok("/%25"));
    }

    #[test]
    fn what_upstreams_read_two_ways_is_refused() {
        assert_eq!(n("admin"), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
        for p in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert_eq!(n(p), Err(PathError::BadPercent), "{p}");
        }
        assert_eq!(n("/a\\..\\admin"), Err(PathError::BadByte));
        assert_eq!(n("/a\tb"), Err(PathError::BadByte));
        for p in [
            "/x%2F..%2Fadmin",
            "/x%2f..%2fadmin",
            "/x%5C..%5Cadmin",
            "/%2E%2E%2Fadmin",
        ] {
            assert_eq!(n(p), Err(PathError::HiddenDotSegment), "{p}");
        }
        // An encoded slash with no dot segment: GitLab project paths.
        assert_eq!(
            n("/api/v4/projects/group%2Fproject").as_deref(),
            Ok("/api/v4/projects/group%2Fproject")
        );
    }

    #[test]
    fn fuzz_seeds_path() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/path");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            fuzzing::fuzz_check(&data);
            for len in 0..data.len() {
                fuzzing::fuzz_check(&data[..len]);
            }
            seen += 1;
        }
        assert!(seen >= 5, "only {seen} seeds in {dir}");
    }
}
