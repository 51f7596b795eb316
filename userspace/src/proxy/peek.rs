//! Classify the first bytes of an intercepted TCP stream: a TLS ClientHello
//! (with its SNI and ALPN), a plaintext HTTP/1.x request (with its Host), or
//! something else.
//!
//! Pure functions over a byte slice, no I/O: the caller peeks at the socket
//! without consuming (so the bytes still reach whoever handles the stream) and
//! calls [`classify`] again with a bigger buffer while the answer is
//! [`Peeked::NeedMore`], up to [`MAX_PEEK`] bytes. Everything here parses
//! bytes an untrusted client chose, so every read is bounds-checked and
//! malformed input yields a verdict, never a panic.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What the first bytes of a stream look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// A TLS ClientHello. `sni` is the server_name (lowercased, trailing dot
    /// removed), `alpn` the offered protocols.
    Tls {
        sni: Option<String>,
        alpn: Vec<Vec<u8>>,
    },
    /// A plaintext HTTP/1.x request; `host` from the Host header (lowercased,
    /// port stripped; an IPv6 literal comes without brackets), or from an
    /// absolute-form (`GET http://h:p/ HTTP/1.1`) or CONNECT authority-form
    /// request-target when there is no Host header.
    Http {
        host: Option<String>,
        port: Option<u16>,
    },
    /// Neither: raw TCP (or a protocol we don't parse).
    Other,
    /// Could still be TLS/HTTP but more bytes are needed (caller peeks again
    /// with a bigger buffer).
    NeedMore,
}

/// The most the caller ever peeks: one maximal TLS record with its header.
/// At this size [`classify`] gives its best verdict instead of
/// [`Peeked::NeedMore`]: `Tls { sni: None, .. }` if a TLS handshake record
/// header was seen, `Http { host: None, .. }` if an HTTP method was seen.
pub const MAX_PEEK: usize = 16 * 1024 + 5;

/// Classifies the first bytes of a stream. See [`Peeked`] and [`MAX_PEEK`].
pub fn classify(buf: &[u8]) -> Peeked {
    match buf.first() {
        None => Peeked::NeedMore,
        Some(&CONTENT_HANDSHAKE) => classify_tls(buf),
        Some(b) if b.is_ascii_uppercase() => classify_http(buf),
        Some(_) => Peeked::Other,
    }
}

/// The TLS verdict when the handshake is there but unusable: we know it is
/// TLS, we just don't know where it goes.
fn tls_unknown() -> Peeked {
    Peeked::Tls {
        sni: None,
        alpn: Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// TLS

const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD_LEN: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const SNI_HOST_NAME: u8 = 0;

fn classify_tls(buf: &[u8]) -> Peeked {
    if !starts_like_client_hello(buf) {
        return Peeked::Other;
    }
    match reassemble_handshake(buf) {
        Reassembled::Complete(body) => match parse_client_hello(&body) {
            Some(hello) => Peeked::Tls {
                sni: hello.sni,
                alpn: hello.alpn,
            },
            None => tls_unknown(),
        },
        Reassembled::Incomplete if buf.len() < MAX_PEEK => Peeked::NeedMore,
        Reassembled::Incomplete | Reassembled::Malformed => tls_unknown(),
    }
}

/// Whether the bytes present so far agree with a handshake record (legacy
/// version 3.0 to 3.4) carrying a ClientHello. Bytes not yet received agree.
/// A client's first handshake message is always a ClientHello, so any other
/// handshake type means this is not a TLS client we understand.
fn starts_like_client_hello(buf: &[u8]) -> bool {
    let version_ok = buf.get(1).is_none_or(|&b| b == 3) && buf.get(2).is_none_or(|&b| b <= 4);
    let record_len = match (buf.get(3), buf.get(4)) {
        (Some(&hi), Some(&lo)) => u16::from_be_bytes([hi, lo]),
        _ => return version_ok,
    };
    // A zero-length record has no handshake type; reassembly calls it malformed.
    let type_ok = record_len == 0
        || buf
            .get(RECORD_HEADER_LEN)
            .is_none_or(|&b| b == HANDSHAKE_CLIENT_HELLO);
    version_ok && type_ok
}

/// The first handshake message's body, put together from one or more
/// handshake records. Clients may fragment a ClientHello over several records
/// (some do it on purpose to dodge SNI filters), so we follow them.
enum Reassembled<'a> {
    /// The ClientHello body (without its 4-byte handshake header).
    Complete(Cow<'a, [u8]>),
    /// More records or bytes are needed.
    Incomplete,
    /// Not a valid sequence of handshake records, or a message that cannot
    /// fit in [`MAX_PEEK`].
    Malformed,
}

fn reassemble_handshake(buf: &[u8]) -> Reassembled<'_> {
    let mut payload: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = buf;
    loop {
        let Some((header, after_header)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() else {
            return Reassembled::Incomplete;
        };
        let [content_type, major, minor, len_hi, len_lo] = *header;
        if content_type != CONTENT_HANDSHAKE || major != 3 || minor > 4 {
            return Reassembled::Malformed;
        }
        let record_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if record_len == 0 || record_len > MAX_RECORD_LEN {
            return Reassembled::Malformed;
        }
        let Some((fragment, after_record)) = after_header.split_at_checked(record_len) else {
            return Reassembled::Incomplete;
        };
        if payload.is_empty() {
            payload = Cow::Borrowed(fragment);
        } else {
            payload.to_mut().extend_from_slice(fragment);
        }
        rest = after_record;
        match handshake_message_len(&payload) {
            Some(total) if total + RECORD_HEADER_LEN > MAX_PEEK => return Reassembled::Malformed,
            Some(total) if payload.len() >= total => {
                return Reassembled::Complete(strip_handshake_header(payload, total));
            }
            _ => {}
        }
    }
}

/// The total length (header included) of the handshake message starting
/// `payload`, once its header is there.
fn handshake_message_len(payload: &[u8]) -> Option<usize> {
    let (header, _) = payload.split_first_chunk::<HANDSHAKE_HEADER_LEN>()?;
    let [_msg_type, a, b, c] = *header;
    let body_len = u32::from_be_bytes([0, a, b, c]);
    usize::try_from(body_len)
        .ok()?
        .checked_add(HANDSHAKE_HEADER_LEN)
}

/// `payload[4..total]`, without copying when it came from a single record.
fn strip_handshake_header(payload: Cow<'_, [u8]>, total: usize) -> Cow<'_, [u8]> {
    match payload {
        Cow::Borrowed(bytes) => {
            Cow::Borrowed(bytes.get(HANDSHAKE_HEADER_LEN..total).unwrap_or_default())
        }
        Cow::Owned(mut bytes) => {
            bytes.truncate(total);
            bytes.drain(..HANDSHAKE_HEADER_LEN.min(bytes.len()));
            Cow::Owned(bytes)
        }
    }
}

/// What we want from a ClientHello.
#[derive(Default)]
struct HelloInfo {
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
}

/// Parses a ClientHello body (RFC 8446 §4.1.2). `None` when it is malformed.
fn parse_client_hello(body: &[u8]) -> Option<HelloInfo> {
    let mut r = Reader::new(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let session_id = r.vec_u8()?;
    let cipher_suites = r.vec_u16()?;
    let compression = r.vec_u8()?;
    if session_id.len() > 32
        || cipher_suites.is_empty()
        || !cipher_suites.len().is_multiple_of(2)
        || compression.is_empty()
    {
        return None;
    }
    if r.is_empty() {
        // Extensions are optional before TLS 1.3.
        return Some(HelloInfo::default());
    }
    let extensions = r.vec_u16()?;
    if !r.is_empty() {
        return None;
    }
    parse_extensions(extensions)
}

/// Walks the extension list, picking out server_name and ALPN. A repeated
/// extension is malformed (RFC 8446 §4.2); accepting it would let a client
/// show us one name and the server another.
fn parse_extensions(mut exts: Reader<'_>) -> Option<HelloInfo> {
    let mut info = HelloInfo::default();
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.is_empty() {
        let ext_type = exts.u16()?;
        let data = exts.vec_u16()?;
        match ext_type {
            EXT_SERVER_NAME if seen_sni => return None,
            EXT_SERVER_NAME => {
                seen_sni = true;
                info.sni = parse_server_name(data)?;
            }
            EXT_ALPN if seen_alpn => return None,
            EXT_ALPN => {
                seen_alpn = true;
                info.alpn = parse_alpn(data)?;
            }
            _ => {}
        }
    }
    Some(info)
}

/// The server_name extension (RFC 6066 §3). Outer `None`: malformed; inner
/// `None`: well-formed but no usable host name (absent, an IP literal, or
/// characters that are not a host name).
fn parse_server_name(mut data: Reader<'_>) -> Option<Option<String>> {
    let mut list = data.vec_u16()?;
    if !data.is_empty() || list.is_empty() {
        return None;
    }
    let mut host_name = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec_u16()?;
        if name_type == SNI_HOST_NAME {
            if host_name.is_some() {
                return None; // RFC 6066: at most one name of each type.
            }
            host_name = Some(name.rest);
        }
    }
    Some(host_name.and_then(normalize_sni))
}

/// The ALPN extension (RFC 7301 §3.1): a non-empty list of non-empty names.
fn parse_alpn(mut data: Reader<'_>) -> Option<Vec<Vec<u8>>> {
    let mut list = data.vec_u16()?;
    if !data.is_empty() || list.is_empty() {
        return None;
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let name = list.vec_u8()?;
        if name.is_empty() {
            return None;
        }
        protocols.push(name.rest.to_vec());
    }
    Some(protocols)
}

/// A host name from SNI, normalised; IP literals are not allowed there
/// (RFC 6066 §3), so they count as absent.
fn normalize_sni(raw: &[u8]) -> Option<String> {
    let name = normalize_host_name(std::str::from_utf8(raw).ok()?)?;
    match name.parse::<Ipv4Addr>() {
        Ok(_) => None,
        Err(_) => Some(name),
    }
}

/// Lowercases a DNS name and drops one trailing dot; `None` unless it is made
/// of labels of 1..=63 letters, digits, '-' or '_', 253 bytes at most.
fn normalize_host_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// A bounds-checked cursor over TLS wire data.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Reader { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn len(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        let (bytes, tail) = self.rest.split_first_chunk::<2>()?;
        self.rest = tail;
        Some(u16::from_be_bytes(*bytes))
    }

    /// A vector with a one-byte length prefix.
    fn vec_u8(&mut self) -> Option<Reader<'a>> {
        let len = self.u8()?;
        self.take(usize::from(len)).map(Reader::new)
    }

    /// A vector with a two-byte length prefix.
    fn vec_u16(&mut self) -> Option<Reader<'a>> {
        let len = self.u16()?;
        self.take(usize::from(len)).map(Reader::new)
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.x

/// Longer than any registered method; bounds how long we wait for the space.
const MAX_METHOD_LEN: usize = 16;
/// Header slots tried first; a request with more is parsed again with enough.
const USUAL_HEADERS: usize = 64;

fn classify_http(buf: &[u8]) -> Peeked {
    match method_prefix(buf) {
        MethodPrefix::Incomplete => return Peeked::NeedMore,
        MethodPrefix::Invalid => return Peeked::Other,
        MethodPrefix::Complete => {}
    }
    let mut headers = [httparse::EMPTY_HEADER; USUAL_HEADERS];
    let parsed = match parse_request(buf, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            // Every header ends in a line feed, so this many slots always suffice.
            let bound = buf.iter().filter(|&&b| b == b'\n').count() + 1;
            parse_request(buf, &mut vec![httparse::EMPTY_HEADER; bound])
        }
        other => other,
    };
    match parsed {
        Ok(Some(verdict)) => verdict,
        Ok(None) if buf.len() < MAX_PEEK => Peeked::NeedMore,
        Ok(None) => Peeked::Http {
            host: None,
            port: None,
        },
        Err(_) => Peeked::Other,
    }
}

enum MethodPrefix {
    /// A method token and a space.
    Complete,
    /// Only uppercase letters so far, and not too many.
    Incomplete,
    Invalid,
}

/// Checks for `METHOD SP` at the start, before handing the bytes to httparse,
/// so that anything else (an SSH banner, a binary protocol) is turned away
/// quickly and we never wait for a header block that will not come.
fn method_prefix(buf: &[u8]) -> MethodPrefix {
    let token_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match buf.get(token_len) {
        _ if token_len > MAX_METHOD_LEN => MethodPrefix::Invalid,
        Some(b' ') if token_len > 0 => MethodPrefix::Complete,
        Some(_) => MethodPrefix::Invalid,
        None => MethodPrefix::Incomplete,
    }
}

/// `Ok(None)` while the header block is incomplete.
fn parse_request<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<Peeked>, httparse::Error> {
    let mut req = httparse::Request::new(headers);
    Ok(match req.parse(buf)? {
        httparse::Status::Complete(_) => Some(http_verdict(&req)),
        httparse::Status::Partial => None,
    })
}

/// Host and port of a complete request head. The Host header is used when
/// present; the request-target only without one. If both name a host and
/// they disagree (or there are several Host headers), the destination is
/// ambiguous, so we report none rather than pick the one a policy check
/// would like.
fn http_verdict(req: &httparse::Request<'_, '_>) -> Peeked {
    let mut host_headers = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host_header = host_headers.next();
    let repeated = host_headers.next().is_some();
    // Outer `Option`: the target names an authority; inner: a valid one.
    let from_target = match (req.method, req.path) {
        (Some(method), Some(path)) => target_authority(method, path).map(parse_authority),
        _ => None,
    };
    let (host, port) = match (host_header, from_target) {
        _ if repeated => None,
        (None, target) => target.flatten(),
        (Some(header), target) => std::str::from_utf8(header.value)
            .ok()
            .and_then(parse_authority)
            .filter(|(host, _)| match &target {
                None => true,
                Some(target) => target.as_ref().is_some_and(|(t, _)| t == host),
            }),
    }
    .map_or((None, None), |(host, port)| (Some(host), port));
    Peeked::Http { host, port }
}

/// The authority in a CONNECT (authority-form) or absolute-form
/// request-target, user info removed.
fn target_authority<'p>(method: &str, path: &'p str) -> Option<&'p str> {
    if method == "CONNECT" {
        return Some(path);
    }
    let rest = strip_prefix_ignore_case(path, "http://")
        .or_else(|| strip_prefix_ignore_case(path, "https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    Some(
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host),
    )
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// `host[:port]` with host a DNS name, an IPv4 literal or a bracketed IPv6
/// literal (returned without brackets). `None` if any part is invalid.
fn parse_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.trim_matches([' ', '\t']);
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (addr, after) = bracketed.split_once(']')?;
        let addr: Ipv6Addr = addr.parse().ok()?;
        return Some((addr.to_string(), parse_port_suffix(after)?));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, parse_port(port)?),
        None => (authority, None),
    };
    Some((normalize_host_name(host)?, port))
}

/// After an IPv6 literal: nothing, or `:port`.
fn parse_port_suffix(after: &str) -> Option<Option<u16>> {
    match after.strip_prefix(':') {
        Some(port) => parse_port(port),
        None => after.is_empty().then_some(None),
    }
}

/// Decimal digits only; an empty port is allowed (RFC 3986 §3.2.3) and means
/// none.
fn parse_port(port: &str) -> Option<Option<u16>> {
    if port.is_empty() {
        return Some(None);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok().map(Some)
}

/// The check the `peek` fuzz target runs (and the seed test in CI): no
/// panic, and every verdict keeps the promises [`Peeked`] makes.
#[doc(hidden)]
pub mod fuzzing {
    use super::{MAX_PEEK, Peeked, classify};

    pub fn fuzz_check(data: &[u8]) {
        match classify(data) {
            Peeked::Tls { sni: Some(sni), .. } => {
                assert!(!sni.is_empty() && sni.len() <= 253, "{sni:?}");
                assert!(!sni.ends_with('.'), "{sni:?}");
                assert!(
                    sni.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"-._".contains(&b)),
                    "{sni:?}"
                );
            }
            Peeked::Http {
                host: Some(host), ..
            } => {
                assert!(!host.is_empty(), "empty host");
                assert_eq!(host, host.to_ascii_lowercase());
            }
            Peeked::NeedMore => assert!(data.len() < MAX_PEEK, "NeedMore at {} bytes", data.len()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use std::sync::Arc;

    /// The bytes a real rustls client sends first.
    fn rustls_hello(server_name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    fn alpn_h2_h1() -> Vec<Vec<u8>> {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    }

    fn tls(sni: Option<&str>, alpn: Vec<Vec<u8>>) -> Peeked {
        Peeked::Tls {
            sni: sni.map(str::to_owned),
            alpn,
        }
    }

    fn http(host: Option<&str>, port: Option<u16>) -> Peeked {
        Peeked::Http {
            host: host.map(str::to_owned),
            port,
        }
    }

    fn u16_prefixed(data: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    fn sni_extension(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![SNI_HOST_NAME];
        entry.extend(u16_prefixed(name));
        (EXT_SERVER_NAME, u16_prefixed(&entry))
    }

    /// A hand-made ClientHello record with the given extensions.
    fn build_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7; 32]); // random
        body.push(0); // session id
        body.extend(u16_prefixed(&[0x13, 0x01])); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut exts = Vec::new();
        for (ext_type, data) in extensions {
            exts.extend(ext_type.to_be_bytes());
            exts.extend(u16_prefixed(data));
        }
        body.extend(u16_prefixed(&exts));
        let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
        handshake.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![CONTENT_HANDSHAKE, 3, 1];
        record.extend(u16_prefixed(&handshake));
        record
    }

    /// Splits the handshake of a single-record hello into two records at
    /// `at` bytes of payload.
    fn fragment(hello: &[u8], at: usize) -> Vec<u8> {
        let payload = &hello[RECORD_HEADER_LEN..];
        let mut out = Vec::new();
        for part in [&payload[..at], &payload[at..]] {
            out.extend([CONTENT_HANDSHAKE, 3, 3]);
            out.extend(u16_prefixed(part));
        }
        out
    }

    #[test]
    fn real_client_hello_gives_sni_and_alpn() {
        let hello = rustls_hello("api.github.com");
        assert_eq!(classify(&hello), tls(Some("api.github.com"), alpn_h2_h1()));
    }

    #[test]
    fn bytes_after_the_hello_do_not_matter() {
        let mut hello = rustls_hello("api.github.com");
        hello.extend([0x17, 3, 3, 0, 1, 0]);
        assert_eq!(classify(&hello), tls(Some("api.github.com"), alpn_h2_h1()));
    }

    #[test]
    fn every_truncated_hello_needs_more() {
        let hello = rustls_hello("api.github.com");
        for len in 0..hello.len() {
            assert_eq!(
                classify(&hello[..len]),
                Peeked::NeedMore,
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn hello_fragmented_over_two_records_is_reassembled() {
        let hello = rustls_hello("api.github.com");
        let want = tls(Some("api.github.com"), alpn_h2_h1());
        for at in 1..hello.len() - RECORD_HEADER_LEN {
            let fragmented = fragment(&hello, at);
            assert_eq!(classify(&fragmented), want, "split at {at}");
            for len in 0..fragmented.len() {
                assert_eq!(classify(&fragmented[..len]), Peeked::NeedMore);
            }
        }
    }

    #[test]
    fn corrupted_hellos_never_panic() {
        let hello = rustls_hello("api.github.com");
        for i in 0..hello.len() {
            for value in [0, 1, 0x7f, 0xff, hello[i] ^ 0x80, hello[i].wrapping_add(1)] {
                let mut bad = hello.clone();
                bad[i] = value;
                fuzzing::fuzz_check(&bad);
            }
        }
    }

    #[test]
    fn ip_address_server_name_is_not_sent_as_sni() {
        let hello = rustls_hello("10.0.0.1");
        assert_eq!(classify(&hello), tls(None, alpn_h2_h1()));
        let hello = rustls_hello("2001:db8::1");
        assert_eq!(classify(&hello), tls(None, alpn_h2_h1()));
    }

    #[test]
    fn ip_literal_in_sni_counts_as_absent() {
        let hello = build_hello(&[sni_extension(b"10.0.0.1")]);
        assert_eq!(classify(&hello), tls(None, vec![]));
    }

    #[test]
    fn sni_is_lowercased_without_trailing_dot() {
        let hello = build_hello(&[sni_extension(b"API.GitHub.com.")]);
        assert_eq!(classify(&hello), tls(Some("api.github.com"), vec![]));
    }

    #[test]
    fn sni_that_is_not_a_host_name_counts_as_absent() {
        let too_long = format!("{}.com", ["a"; 126].join("."));
        assert_eq!(too_long.len(), 255);
        let longest = &too_long[2..];
        let hello = build_hello(&[sni_extension(longest.as_bytes())]);
        assert_eq!(classify(&hello), tls(Some(longest), vec![]));
        let long_label = format!("{}.com", "a".repeat(64));
        for bad in [
            b"a b.com".as_slice(),
            b"evil.com/x",
            b"a..b",
            b".",
            b"",
            b"caf\xc3\xa9.fr",
            b"x\0.com",
            too_long.as_bytes(),
            long_label.as_bytes(),
        ] {
            let hello = build_hello(&[sni_extension(bad)]);
            assert_eq!(classify(&hello), tls(None, vec![]), "{bad:?}");
        }
    }

    #[test]
    fn repeated_sni_extension_is_malformed() {
        let hello = build_hello(&[sni_extension(b"a.com"), sni_extension(b"b.com")]);
        assert_eq!(classify(&hello), tls(None, vec![]));
    }

    #[test]
    fn hello_without_extensions_is_tls() {
        let hello = build_hello(&[]);
        assert_eq!(classify(&hello), tls(None, vec![]));
    }

    #[test]
    fn malformed_body_behind_a_handshake_header_is_tls() {
        // Cut the hello short, fixing both length fields: the extension
        // list now overruns the message.
        let mut hello = build_hello(&[sni_extension(b"a.com")]);
        hello.truncate(hello.len() - 3);
        let payload_len = u32::try_from(hello.len() - RECORD_HEADER_LEN).unwrap();
        hello[3..5].copy_from_slice(&payload_len.to_be_bytes()[2..]);
        hello[6..9].copy_from_slice(&(payload_len - 4).to_be_bytes()[1..]);
        assert_eq!(classify(&hello), tls(None, vec![]));
        // A zero-length record is no hello either.
        assert_eq!(classify(&[0x16, 3, 1, 0, 0]), tls(None, vec![]));
    }

    #[test]
    fn hello_too_big_to_ever_fit_is_tls_without_waiting() {
        // Declares a 20000-byte ClientHello: more than MAX_PEEK can hold.
        let buf = [0x16, 3, 1, 0, 4, 1, 0, 0x4e, 0x20];
        assert_eq!(classify(&buf), tls(None, vec![]));
    }

    #[test]
    fn at_max_peek_an_unfinished_hello_is_tls() {
        // A 16000-byte hello in 100-byte records: the record headers push it
        // past MAX_PEEK.
        let mut payload = vec![HANDSHAKE_CLIENT_HELLO];
        payload.extend(&15_996_u32.to_be_bytes()[1..]);
        payload.resize(16_000, 0);
        let mut buf = Vec::new();
        for part in payload.chunks(100) {
            buf.extend([CONTENT_HANDSHAKE, 3, 1]);
            buf.extend(u16_prefixed(part));
        }
        assert!(buf.len() > MAX_PEEK);
        assert_eq!(classify(&buf[..MAX_PEEK - 1]), Peeked::NeedMore);
        assert_eq!(classify(&buf[..MAX_PEEK]), tls(None, vec![]));
    }

    #[test]
    fn tls_lookalikes_are_other() {
        assert_eq!(classify(&[0x16]), Peeked::NeedMore);
        assert_eq!(classify(&[0x16, 3]), Peeked::NeedMore);
        assert_eq!(classify(&[0x16, 2]), Peeked::Other);
        assert_eq!(classify(&[0x16, 3, 5]), Peeked::Other);
        // A ServerHello where a ClientHello should be.
        assert_eq!(classify(&[0x16, 3, 3, 0, 50, 2]), Peeked::Other);
        // Application data, alerts.
        assert_eq!(classify(&[0x17, 3, 3, 0, 5]), Peeked::Other);
        assert_eq!(classify(&[0x15, 3, 3, 0, 2, 2, 40]), Peeked::Other);
    }

    #[test]
    fn http_with_host() {
        let req = b"GET /repos HTTP/1.1\r\nUser-Agent: x\r\nHost: API.GitHub.com.\r\n\r\n";
        assert_eq!(classify(req), http(Some("api.github.com"), None));
    }

    #[test]
    fn http_with_host_and_port() {
        let req = b"POST /v1 HTTP/1.1\r\nhost: example.com:8080\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(classify(req), http(Some("example.com"), Some(8080)));
        let req = b"GET / HTTP/1.0\r\nHost: [2001:DB8::1]:81\r\n\r\n";
        assert_eq!(classify(req), http(Some("2001:db8::1"), Some(81)));
        let req = b"GET / HTTP/1.1\r\nHost: 10.1.2.3\r\n\r\n";
        assert_eq!(classify(req), http(Some("10.1.2.3"), None));
    }

    #[test]
    fn http_absolute_form_without_host() {
        let req = b"GET http://User@Example.COM:8080/p?q HTTP/1.1\r\n\r\n";
        assert_eq!(classify(req), http(Some("example.com"), Some(8080)));
        let req = b"GET HTTPS://example.com?x HTTP/1.1\r\nAccept: */*\r\n\r\n";
        assert_eq!(classify(req), http(Some("example.com"), None));
        let req = b"CONNECT api.github.com:443 HTTP/1.1\r\n\r\n";
        assert_eq!(classify(req), http(Some("api.github.com"), Some(443)));
    }

    #[test]
    fn http_host_header_wins_when_consistent() {
        let req = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com:80\r\n\r\n";
        assert_eq!(classify(req), http(Some("example.com"), Some(80)));
    }

    #[test]
    fn http_ambiguous_or_invalid_host_is_none() {
        for req in [
            b"GET http://evil.com/ HTTP/1.1\r\nHost: good.com\r\n\r\n".as_slice(),
            b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n",
            b"GET http://good.com:bad/ HTTP/1.1\r\nHost: good.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.com:http\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.com:70000\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.com:+80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                classify(req),
                http(None, None),
                "{}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn http_with_many_headers() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            req.extend(format!("X-{i}: {i}\r\n").bytes());
        }
        req.extend(b"Host: example.com\r\n\r\n");
        assert_eq!(classify(&req), http(Some("example.com"), None));
    }

    #[test]
    fn every_truncated_http_request_needs_more() {
        let req = b"GET /repos HTTP/1.1\r\nHost: api.github.com\r\n\r\n";
        for len in 0..req.len() {
            assert_eq!(
                classify(&req[..len]),
                Peeked::NeedMore,
                "prefix of {len} bytes"
            );
        }
        assert_eq!(classify(req), http(Some("api.github.com"), None));
    }

    #[test]
    fn at_max_peek_an_unfinished_http_head_is_http() {
        let mut req = b"GET / HTTP/1.1\r\nHost: a.com\r\nX-Long: ".to_vec();
        req.resize(MAX_PEEK, b'a');
        assert_eq!(classify(&req[..MAX_PEEK - 1]), Peeked::NeedMore);
        assert_eq!(classify(&req), http(None, None));
    }

    #[test]
    fn non_http_text_is_other() {
        for buf in [
            b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n".as_slice(),
            b"get / HTTP/1.1\r\n\r\n",
            b"ABCDEFGHIJKLMNOPQ ",
            b" GET / HTTP/1.1\r\n\r\n",
            b"GET /\0 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x00\x01\x02\x03",
            b"\xff\xfe garbage",
            b"{\"jsonrpc\":\"2.0\"}",
        ] {
            assert_eq!(
                classify(buf),
                Peeked::Other,
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn a_method_alone_needs_more() {
        assert_eq!(classify(b"SSH"), Peeked::NeedMore);
        assert_eq!(classify(b"OPTIONS"), Peeked::NeedMore);
        assert_eq!(classify(b"OPTIONS "), Peeked::NeedMore);
    }

    #[test]
    fn fuzz_seeds_peek() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/peek");
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
