//! The fast path's parsing and rewriting, with no I/O: request heads in,
//! upstream heads out; response heads in, client heads out; where a chunked
//! body ends.

use std::io::Write as _;

use http::{HeaderName, HeaderValue};

use super::clamp;

/// Request heads with more header fields go to hyper (which takes 100).
pub(super) const MAX_HEADERS: usize = 64;

/// A request head that qualifies, rewritten for the upstream (in `out`).
#[derive(Debug, PartialEq)]
pub(super) struct Prepared {
    /// Length of the client's head in its buffer.
    pub(super) head_len: usize,
    /// Where the method and the request target's path (without the query)
    /// are in that buffer.
    pub(super) method: std::ops::Range<usize>,
    pub(super) path: std::ops::Range<usize>,
    pub(super) body_len: u64,
    /// The client asked to close after this response.
    pub(super) close: bool,
    /// A HEAD request: the response has no body whatever it says.
    pub(super) head: bool,
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub(super) idempotent: bool,
}

#[derive(Debug, PartialEq)]
pub(super) enum Parsed {
    /// More bytes needed.
    Partial,
    /// Not for the fast path: hyper takes it (and answers malformed heads).
    Hyper,
    Ready(Prepared),
}

/// Headers never forwarded (RFC 9110 §7.6.1), besides `Host`, which is
/// rewritten, and `TE`, kept as `te: trailers` only.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `Content-Length` as RFC 9110 §8.6 has it: digits only, nothing else.
pub(super) fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Parse the request head at the start of `buf`; when it qualifies and
/// `allowed(method, path)` agrees (the path without the query, as the
/// policy and the events take it), write the upstream's head into `out`:
/// the request line, `Host: host`, the client's end-to-end headers less
/// those `inject` replaces, then `inject`'s.
pub(super) fn prepare_request(
    buf: &[u8],
    host: &[u8],
    inject: &[(HeaderName, HeaderValue)],
    out: &mut Vec<u8>,
    allowed: impl FnOnce(&str, &str) -> bool,
) -> Parsed {
    // Uninitialised: no 2 KiB of empty headers written per request.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::Hyper;
    }
    let mut body_len = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            match (body_len, digits(h.value)) {
                (None, Some(n)) => body_len = Some(n),
                _ => return Parsed::Hyper,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Hyper;
                }
            }
        } else if ["transfer-encoding", "upgrade", "expect"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Parsed::Hyper;
        }
    }
    let path_only = path.split_once('?').map_or(path, |(p, _)| p);
    if !allowed(method, path_only) {
        return Parsed::Hyper;
    }
    out.clear();
    for part in [
        method.as_bytes(),
        b" ",
        path.as_bytes(),
        b" HTTP/1.1\r\nhost: ",
        host,
        b"\r\n",
    ] {
        out.extend_from_slice(part);
    }
    let mut te_trailers = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("te") {
            te_trailers |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            continue;
        }
        if hop_by_hop(name)
            || name.eq_ignore_ascii_case("host")
            || inject
                .iter()
                .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str()))
        {
            continue;
        }
        header(out, name.as_bytes(), h.value);
    }
    if te_trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    for (name, value) in inject {
        header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let at = |s: &str| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + s.len()
    };
    Parsed::Ready(Prepared {
        head_len,
        method: at(method),
        path: at(path_only),
        body_len: body_len.unwrap_or(0),
        close,
        head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
    })
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for part in [name, b": ", value, b"\r\n"] {
        out.extend_from_slice(part);
    }
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// No length: the body runs until the upstream closes; so does the
    /// client connection.
    UntilClose,
}

#[derive(Debug, PartialEq)]
pub(super) struct ResponseHead {
    pub(super) len: usize,
    /// 1xx (not 101): another head follows.
    pub(super) informational: bool,
    pub(super) framing: Framing,
    /// The upstream will close after this response.
    pub(super) upstream_close: bool,
}

/// Parse the response head at the start of `buf` and write the client's
/// head into `out`: hop-by-hop headers out, the framing restated, and
/// `connection: close` when the client connection ends after it. `None`:
/// more bytes needed.
pub(super) fn prepare_response(
    buf: &[u8],
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("a malformed response head"),
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err("a malformed response head");
    };
    if code == 101 {
        return Err("101 Switching Protocols to a request that asked for no upgrade");
    }
    let informational = code < 200;
    let mut length = None;
    let mut chunked = None;
    let mut keep_alive = false;
    let mut upstream_close = false;
    let mut named: [&[u8]; 8] = [b""; 8];
    let mut n_named = 0;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            match (length, digits(h.value)) {
                (_, None) => return Err("an invalid Content-Length"),
                (Some(a), Some(b)) if a != b => return Err("two different Content-Lengths"),
                (_, n) => length = n,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides (RFC 9112 §6.3 item 4).
            chunked = tokens(h.value)
                .last()
                .map(|t| t.eq_ignore_ascii_case(b"chunked"))
                .or(chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    upstream_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if n_named < named.len() {
                    named[n_named] = t;
                    n_named += 1;
                } else {
                    return Err("a Connection header naming too many fields");
                }
            }
        }
    }
    if version == 0 && !keep_alive {
        upstream_close = true;
    }
    let framing = match () {
        _ if informational || code == 204 || code == 304 || head_request => Framing::Empty,
        _ if chunked == Some(true) => Framing::Chunked,
        _ if chunked == Some(false) => Framing::UntilClose,
        _ => length.map_or(Framing::UntilClose, Framing::Length),
    };
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {code} ");
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        let framing_header = name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("content-length");
        let drop = hop_by_hop(name)
            || ["te", "upgrade"].iter().any(|n| name.eq_ignore_ascii_case(n))
            || named[..n_named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            // Restated below for chunked and length framing; kept as sent
            // otherwise (HEAD and 304 describe the body they did not send,
            // a non-chunked coding describes the body until close).
            || (framing_header && matches!(framing, Framing::Chunked | Framing::Length(_)));
        if !drop {
            header(out, name.as_bytes(), h.value);
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        _ => {}
    }
    if !informational && (close || framing == Framing::UntilClose) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        informational,
        framing,
        upstream_close,
    }))
}

/// Where a part of a chunked body lies in the bytes [`Chunked::scan_pieces`]
/// takes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    /// Chunk data (the bytes of the body itself).
    Data(std::ops::Range<usize>),
    /// The last chunk's size line was read (it is not in any range).
    Last,
    /// The trailer section, with the empty line that ends it.
    Trailers(std::ops::Range<usize>),
}

/// Finds where a chunked body ends (RFC 9112 §7.1), fed its bytes as they
/// arrive; the bytes themselves are relayed unchanged.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    /// At a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

impl Chunked {
    /// How many of `buf`'s bytes belong to the body, and whether the body
    /// ends with them. Bytes of an incomplete size line or trailer section
    /// are left for the next call (with more bytes after them).
    pub(super) fn scan(&mut self, buf: &[u8]) -> Result<(usize, bool), &'static str> {
        self.scan_pieces(buf, |_| {})
    }

    /// [`Self::scan`], telling `piece` where the chunks' data, the last
    /// chunk and the trailer section are among the bytes it takes, in order.
    pub(super) fn scan_pieces(
        &mut self,
        buf: &[u8],
        mut piece: impl FnMut(Piece),
    ) -> Result<(usize, bool), &'static str> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        at += n;
                        self.state = ChunkState::Trailers;
                        piece(Piece::Last);
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        at += n;
                        self.state = ChunkState::Data(size);
                    }
                    Ok(httparse::Status::Partial) => return Ok((at, false)),
                    Err(_) => return Err("an invalid chunk size"),
                },
                ChunkState::Data(left) => {
                    let take = rest.len().min(clamp(left));
                    if take > 0 {
                        piece(Piece::Data(at..at + take));
                    }
                    at += take;
                    if take as u64 == left {
                        self.state = ChunkState::DataEnd;
                    } else {
                        self.state = ChunkState::Data(left - take as u64);
                        return Ok((at, false));
                    }
                }
                ChunkState::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok((at, false)),
                    _ => return Err("chunk data longer than its size"),
                },
                ChunkState::Trailers => {
                    if rest.starts_with(b"\r\n") {
                        piece(Piece::Trailers(at..at + 2));
                        return Ok((at + 2, true));
                    }
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    return match httparse::parse_headers(rest, &mut fields) {
                        Ok(httparse::Status::Complete((n, _))) => {
                            piece(Piece::Trailers(at..at + n));
                            Ok((at + n, true))
                        }
                        Ok(httparse::Status::Partial) => Ok((at, false)),
                        Err(_) => Err("malformed trailers"),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &[u8] = b"api.example.test";

    fn inject() -> Vec<(HeaderName, HeaderValue)> {
        vec![(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer real-token"),
        )]
    }

    fn prepare(req: &str) -> (Parsed, String) {
        let mut out = Vec::new();
        let parsed = prepare_request(req.as_bytes(), HOST, &inject(), &mut out, |_, _| true);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_plain_request_is_rewritten_with_the_credential() {
        let req = "GET /user?x=1 HTTP/1.1\r\nHost: elsewhere\r\nAuthorization: Bearer placeholder\r\n\
                   authorization: second\r\nAccept: */*\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\
                   Proxy-Authorization: Basic x\r\nTE: trailers, gzip\r\n\r\nNEXT";
        let (parsed, out) = prepare(req);
        assert_eq!(
            out,
            "GET /user?x=1 HTTP/1.1\r\nhost: api.example.test\r\nAccept: */*\r\nte: trailers\r\n\
             authorization: Bearer real-token\r\n\r\n"
        );
        assert_eq!(
            parsed,
            Parsed::Ready(Prepared {
                head_len: req.len() - 4,
                method: 0..3,
                path: 4..9,
                body_len: 0,
                close: false,
                head: false,
                idempotent: true,
            })
        );
    }

    #[test]
    fn the_body_length_and_close_are_read() {
        let (parsed, out) =
            prepare("POST /p HTTP/1.1\r\nContent-Length: 0012\r\nConnection: Close\r\n\r\nhello");
        let Parsed::Ready(p) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!((p.body_len, p.close, p.idempotent), (12, true, false));
        assert!(out.contains("Content-Length: 0012\r\n") && !out.contains("Close"));
    }

    #[test]
    fn anything_framed_differently_goes_to_hyper() {
        for req in [
            // Smuggling shapes: two lengths, chunked, both, odd lengths.
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
            "POST / HTTP/1.1\r\nX: a\r\n b\r\nContent-Length: 5\r\n\r\n",
            // Other protocols and forms.
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://other/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: keep-alive, x-private\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
            "G\x01T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(prepare(req).0, Parsed::Hyper, "{req:?}");
        }
        assert_eq!(prepare("GET / HTTP/1.1\r\nAccept:").0, Parsed::Partial);
    }

    #[test]
    fn a_refused_request_goes_to_hyper_untouched() {
        let mut out = Vec::new();
        let mut seen = None;
        let parsed = prepare_request(
            b"DELETE /repos/x?y HTTP/1.1\r\n\r\n",
            HOST,
            &inject(),
            &mut out,
            |m, p| {
                seen = Some((m.to_owned(), p.to_owned()));
                false
            },
        );
        assert_eq!(parsed, Parsed::Hyper);
        // The policy sees the path without the query, as on hyper's path.
        assert_eq!(seen.unwrap(), ("DELETE".into(), "/repos/x".into()));
        assert!(out.is_empty());
    }

    fn respond(resp: &str, head: bool, close: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let r = prepare_response(resp.as_bytes(), head, close, &mut out)
            .unwrap()
            .unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Framing::Empty,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Framing::Empty),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
                Framing::Empty,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                Framing::UntilClose,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::UntilClose),
            (
                "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                false,
                Framing::Empty,
            ),
        ];
        for (resp, head, framing) in cases {
            assert_eq!(respond(resp, head, false).0.framing, framing, "{resp:?}");
        }
        let (r, out) = respond(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            false,
            false,
        );
        assert!(!r.upstream_close);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(
                prepare_response(bad.as_bytes(), false, false, &mut Vec::new()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn response_hop_by_hop_headers_go_and_close_is_said() {
        let (r, out) = respond(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
             Proxy-Authenticate: Basic\r\nContent-Length: 2\r\nX-End: 2\r\n\r\nok",
            false,
            true,
        );
        assert!(r.upstream_close);
        assert_eq!(r.framing, Framing::Length(2));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX-End: 2\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
        );
        let (r, out) = respond("HTTP/1.0 200 OK\r\n\r\n", false, false);
        assert!(r.upstream_close && out.ends_with("connection: close\r\n\r\n"));
    }

    /// Feed `body` to a scanner in pieces of `step` bytes, as reads would.
    fn scan_in_steps(body: &[u8], step: usize) -> Result<usize, &'static str> {
        let mut c = Chunked::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut consumed = 0;
        for piece in body.chunks(step) {
            pending.extend_from_slice(piece);
            let (n, end) = c.scan(&pending)?;
            pending.drain(..n);
            consumed += n;
            if end {
                return Ok(consumed);
            }
        }
        Err("no end")
    }

    #[test]
    fn chunked_bodies_end_where_they_end_whatever_the_reads() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let plain = b"a\r\n0123456789\r\n0\r\n\r\nNEXT";
        for step in 1..=body.len() {
            assert_eq!(scan_in_steps(body, step), Ok(body.len() - 4), "step {step}");
            assert_eq!(
                scan_in_steps(plain, step),
                Ok(plain.len() - 4),
                "step {step}"
            );
        }
        assert!(scan_in_steps(b"2\r\nabc\r\n0\r\n\r\n", 64).is_err());
        assert!(scan_in_steps(b"zz\r\n", 64).is_err());
    }

    #[test]
    fn chunked_pieces_give_the_data_and_trailers_whatever_the_reads() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for step in 1..=body.len() {
            let mut c = Chunked::default();
            let (mut pending, mut data, mut trailers, mut last) =
                (Vec::new(), Vec::new(), Vec::new(), 0);
            for read in body.chunks(step) {
                pending.extend_from_slice(read);
                let (n, end) = c
                    .scan_pieces(&pending, |p| match p {
                        Piece::Data(r) => data.extend_from_slice(&pending[r]),
                        Piece::Last => last += 1,
                        Piece::Trailers(r) => trailers.extend_from_slice(&pending[r]),
                    })
                    .unwrap();
                pending.drain(..n);
                if end {
                    break;
                }
            }
            assert_eq!(data, b"hello!", "step {step}");
            assert_eq!(trailers, b"X-Trailer: 1\r\n\r\n", "step {step}");
            assert_eq!(last, 1, "step {step}");
        }
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
            &from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// Mangled requests: whatever the fast path accepts, the head it writes
    /// parses back as exactly one request whose only framing is one
    /// `Content-Length` equal to the body length it will copy (or none for
    /// no body), with Moat's `Host` and no hop-by-hop header. That is the
    /// property that keeps a second request from hiding in the first.
    #[test]
    fn whatever_is_accepted_is_framed_one_way() {
        let seeds: [&[u8]; 3] = [
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nAccept: */*\r\n\r\nhello",
            b"GET /b?c=d HTTP/1.1\r\nConnection: keep-alive\r\nTE: trailers\r\n\r\n",
            b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ];
        let bits: [&[u8]; 16] = [
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            b"\t",
            b":",
            b",",
            b"\0",
            b"0",
            b"7",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked\r\n",
            b"content-length:1\r\n",
            b"Connection: close\r\n",
            b"Host: evil\r\n",
            b"\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut req = rng.pick(&seeds).to_vec();
            for _ in 0..1 + rng.next() % 3 {
                let at = (rng.next() % (req.len() as u64 + 1)) as usize;
                match rng.next() % 3 {
                    0 => {
                        let bit = rng.pick(&bits);
                        req.splice(at..at, bit.iter().copied());
                    }
                    1 if at < req.len() => {
                        req.remove(at);
                    }
                    _ if at < req.len() => req[at] = *rng.pick(b"\r\n :0aA-\t"),
                    _ => {}
                }
            }
            let mut out = Vec::new();
            let Parsed::Ready(p) = prepare_request(&req, HOST, &inject(), &mut out, |_, _| true)
            else {
                continue;
            };
            accepted += 1;
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 2];
            let mut back = httparse::Request::new(&mut headers);
            let shown = String::from_utf8_lossy(&req);
            assert_eq!(
                back.parse(&out),
                Ok(httparse::Status::Complete(out.len())),
                "{shown:?}"
            );
            let values = |name: &str| -> Vec<&[u8]> {
                back.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value)
                    .collect()
            };
            let lengths = values("content-length");
            assert!(lengths.len() <= 1, "{shown:?}");
            assert!(p.body_len == 0 || lengths.len() == 1, "{shown:?}");
            if let [only] = lengths.as_slice() {
                assert_eq!(digits(only), Some(p.body_len), "{shown:?}");
            }
            for name in [
                "transfer-encoding",
                "connection",
                "keep-alive",
                "proxy-connection",
                "expect",
                "upgrade",
            ] {
                assert!(values(name).is_empty(), "{name} in {shown:?}");
            }
            assert_eq!(values("host"), [HOST], "{shown:?}");
            assert!(p.head_len <= req.len());
        }
        assert!(
            accepted > 1000,
            "the generator should make valid requests too: {accepted}"
        );
    }

    /// Random bytes never panic the chunk scanner, and it finds the same end
    /// whatever the reads.
    #[test]
    fn the_chunk_scanner_agrees_with_itself() {
        let bits: [&[u8]; 8] = [
            b"\r\n",
            b"0",
            b"5",
            b"a",
            b";x=y",
            b"hello",
            b"\r\n\r\n",
            b"T: 1",
        ];
        let mut rng = Rng(7);
        for _ in 0..50_000 {
            let mut body = Vec::new();
            for _ in 0..rng.next() % 12 {
                let bit: &&[u8] = rng.pick(&bits);
                body.extend_from_slice(bit);
            }
            let whole = Chunked::default().scan(&body);
            let step = 1 + (rng.next() % 7) as usize;
            let stepped = scan_in_steps(&body, step);
            match whole {
                Ok((n, true)) => assert_eq!(stepped, Ok(n), "{body:?}"),
                Ok((_, false)) => assert!(stepped.is_err(), "{body:?}"),
                Err(_) => assert!(stepped.is_err(), "{body:?}"),
            }
        }
    }
}
