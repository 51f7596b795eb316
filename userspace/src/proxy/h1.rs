//! Plain HTTP/1.1 without hyper: the fast path for the common case, a
//! client speaking HTTP/1.1 keep-alive to an intercepted host.
//!
//! Two hyper dispatchers per proxied request (server and client side) cost
//! about a third of the proxy's CPU per request (docs/performance.md). Here
//! the request head is parsed with `httparse`, rewritten (hop-by-hop headers
//! out, credentials in) and written to a raw HTTP/1.1 upstream connection
//! together with the body bytes already read; the response head is parsed,
//! rewritten and relayed the same way, its body copied as it arrives.
//!
//! Only requests whose framing cannot be read two ways take this path:
//! HTTP/1.1, origin-form, no `Transfer-Encoding`, at most one
//! `Content-Length` of plain digits, no `Expect`, no `Upgrade`, and a
//! `Connection` naming nothing but `keep-alive` or `close`. The head sent
//! upstream is written here, with the one `Content-Length` the body was
//! counted by, so the upstream cannot see a request boundary Moat did not
//! (no request smuggled past the policy or onto an injected request). The
//! first request that does not qualify, and the rest of its connection, go
//! to hyper ([`super::server`]), as do HTTP/2 clients and targets with
//! substitutions, local answers or a policy refusal.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Engine;
use super::http::{Target, moat_response, note_injection, upstream_error};
use super::rules::Verdict;
use super::server::Prefixed;
use super::upstream::{ProxyBody, RawConn, Slot, UpstreamError, is_open};
use crate::net::NetError;

/// Request heads with more header fields go to hyper (which takes 100).
const MAX_HEADERS: usize = 64;
/// Response heads larger than this are refused (502).
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Bytes asked of a socket per read.
const READ_SIZE: usize = 16 * 1024;

/// May `target`'s HTTP/1.1 requests take the fast path at all?
pub(super) fn applies(target: &Target) -> bool {
    let plan = &target.plan;
    target.tls
        && target.deny.is_none()
        && target.upstream.is_some()
        && plan.request_subst.is_none()
        && plan.response_subst.is_none()
        && plan.local.is_none()
}

/// Serve `client`'s requests for `target` while they qualify. `None`: the
/// connection is finished; `Some`: the rest of it (the unanswered request
/// first) is for hyper.
pub(super) async fn serve<S>(
    engine: &Arc<Engine>,
    target: &Arc<Target>,
    client: S,
    header_timeout: Duration,
) -> Option<Prefixed<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let slot = target.upstream.as_ref()?;
    if slot.h2_only() {
        return Some(Prefixed::new(Default::default(), client));
    }
    let mut conn = Conn {
        engine,
        target,
        slot,
        client,
        cbuf: BytesMut::with_capacity(READ_SIZE),
        ubuf: BytesMut::with_capacity(READ_SIZE),
        out: Vec::with_capacity(1024),
        held: None,
    };
    let handed = loop {
        let next = tokio::time::timeout(header_timeout, conn.request_head()).await;
        let prepared = match next {
            Ok(Head::Ready(p)) => p,
            Ok(Head::Hyper) => break true,
            Ok(Head::Closed) | Err(_) => break false,
        };
        match conn.exchange(prepared).await {
            Next::Continue => {}
            Next::Close => break false,
            Next::Hyper => break true,
        }
    };
    if let Some(up) = conn.held.take() {
        slot.put_raw(up);
    }
    handed.then(|| Prefixed::new(conn.cbuf.freeze(), conn.client))
}

/// What reading the next request head came to.
enum Head {
    Ready(Prepared),
    /// Not for the fast path: hyper takes over.
    Hyper,
    /// The client went away (or sent a head too large to bother hyper with).
    Closed,
}

enum Next {
    Continue,
    Close,
    /// The upstream would not speak plain HTTP/1.1 over TLS: hyper takes
    /// the request (not consumed) and the rest of the connection.
    Hyper,
}

struct Conn<'a, S> {
    engine: &'a Arc<Engine>,
    target: &'a Arc<Target>,
    slot: &'a Slot,
    client: S,
    /// Client bytes not yet forwarded.
    cbuf: BytesMut,
    /// Upstream bytes not yet relayed.
    ubuf: BytesMut,
    /// The head (and first body bytes) being written, either way.
    out: Vec<u8>,
    /// The upstream connection this client connection last used.
    held: Option<RawConn>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    async fn request_head(&mut self) -> Head {
        let limit = self.engine.limits.max_header_bytes;
        loop {
            let (engine, target) = (self.engine, self.target);
            let allowed = |method: &str, path: &str| {
                let path = path.split_once('?').map_or(path, |(p, _)| p);
                let verdict =
                    engine
                        .policy
                        .network
                        .request(&target.host, target.port, method, path);
                // A refusal is hyper's to answer and record.
                !matches!(verdict, Verdict::Deny(_))
            };
            let parsed = prepare_request(
                &self.cbuf,
                self.slot.host_header().as_bytes(),
                &target.plan.headers,
                &mut self.out,
                allowed,
            );
            match parsed {
                Parsed::Ready(p) => return Head::Ready(p),
                Parsed::Hyper => return Head::Hyper,
                // hyper answers 431 for a head over the limit.
                Parsed::Partial if self.cbuf.len() > limit => return Head::Hyper,
                Parsed::Partial => {}
            }
            match fill(&mut self.client, &mut self.cbuf).await {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Forward one prepared request and relay its response.
    async fn exchange(&mut self, p: Prepared) -> Next {
        let (mut up, mut reused) = match self.upstream().await {
            Ok(u) => u,
            // Maybe no HTTP/1.1 (ALPN): hyper tries HTTP/2, and says why not.
            Err(UpstreamError::Connect(NetError::Handshake { .. })) => return Next::Hyper,
            Err(e) => return self.fail(upstream_error(self.target, &e)).await,
        };
        if !self.target.plan.grants.is_empty() {
            let text = |r: &std::ops::Range<usize>| {
                std::str::from_utf8(&self.cbuf[r.clone()]).unwrap_or("")
            };
            let path = text(&p.path);
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            note_injection(self.engine, self.target, text(&p.method), path);
        }
        self.cbuf.advance(p.head_len);
        let buffered = self.cbuf.len().min(clamp(p.body_len));
        self.out.extend_from_slice(&self.cbuf[..buffered]);
        self.cbuf.advance(buffered);
        let rest = p.body_len - buffered as u64;
        loop {
            let sent = send(&mut self.client, &mut self.cbuf, &mut up, &self.out, rest).await;
            let failure = match sent {
                Ok(()) => {
                    let timeout = self.engine.limits.response_timeout;
                    self.ubuf.clear();
                    match tokio::time::timeout(timeout, fill(&mut up, &mut self.ubuf)).await {
                        Ok(Ok(n)) if n > 0 => break,
                        Ok(Ok(_)) => "the connection closed before a response".to_owned(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => return self.fail(self.response_timeout()).await,
                    }
                }
                Err(Side::Client) => return Next::Close,
                Err(Side::Upstream(e)) => e.to_string(),
            };
            // A kept connection the upstream closed under us: once more on
            // a new one, when the request can be sent again and running it
            // twice is harmless (RFC 9112 §9.3.1.1).
            if reused && rest == 0 && p.idempotent {
                tracing::debug!(host = %self.target.host, "kept upstream connection failed, reconnecting: {failure}");
                match self.slot.connect_raw().await {
                    Ok(fresh) => {
                        (up, reused) = (fresh, false);
                        continue;
                    }
                    Err(e) => {
                        return self
                            .fail(upstream_error(self.target, &UpstreamError::Connect(e)))
                            .await;
                    }
                }
            }
            let message = format!(
                "upstream {}:{} failed: {failure}",
                self.target.host, self.target.port
            );
            return self
                .fail(moat_response(StatusCode::BAD_GATEWAY, &message))
                .await;
        }
        self.relay(up, &p).await
    }

    /// The held upstream connection if still open, else a pooled one, else
    /// a new one; and whether it served requests before.
    async fn upstream(&mut self) -> Result<(RawConn, bool), UpstreamError> {
        if let Some(mut up) = self.held.take()
            && is_open(&mut up)
        {
            return Ok((up, true));
        }
        while let Some(mut up) = self.slot.take_raw() {
            if is_open(&mut up) {
                return Ok((up, true));
            }
        }
        Ok((self.slot.connect_raw().await?, false))
    }

    /// Relay the response whose first bytes are in `ubuf`.
    async fn relay(&mut self, mut up: RawConn, p: &Prepared) -> Next {
        let mut started = false;
        let head = loop {
            match prepare_response(&self.ubuf, p.head, p.close, &mut self.out) {
                Ok(Some(head)) if head.informational => {
                    // 103 Early Hints and the like: relayed, then the real one.
                    self.ubuf.advance(head.len);
                    started = true;
                    if self.client.write_all(&self.out).await.is_err() {
                        return Next::Close;
                    }
                    continue;
                }
                Ok(Some(head)) => break head,
                Ok(None) if self.ubuf.len() <= MAX_RESPONSE_HEAD => {}
                Ok(None) | Err(_) if started => return Next::Close,
                Ok(None) => return self.bad_response("a response head over 256 KiB").await,
                Err(e) => return self.bad_response(e).await,
            }
            match fill(&mut up, &mut self.ubuf).await {
                Ok(n) if n > 0 => {}
                _ if started => return Next::Close,
                _ => return self.bad_response("the response head was cut short").await,
            }
        };
        self.ubuf.advance(head.len);
        let done = match head.framing {
            Framing::Empty => Ok(true),
            Framing::Length(n) => self.copy_length(&mut up, n).await,
            Framing::Chunked => self.copy_chunked(&mut up).await,
            Framing::UntilClose => self.copy_to_end(&mut up).await.map(|()| false),
        };
        let clean = match done {
            Ok(clean) => clean,
            Err(_) => return Next::Close,
        };
        // Left over only when the head went alone (no body bytes to send).
        if !self.out.is_empty() && self.client.write_all(&self.out).await.is_err() {
            return Next::Close;
        }
        if self.client.flush().await.is_err() {
            return Next::Close;
        }
        if clean && !head.upstream_close && self.ubuf.is_empty() {
            self.held = Some(up);
        }
        if p.close || head.framing == Framing::UntilClose {
            let _ = self.client.shutdown().await;
            return Next::Close;
        }
        Next::Continue
    }

    /// Send `out` (the response head) with the first body bytes, then the
    /// rest as it arrives.
    async fn copy_length(&mut self, up: &mut RawConn, mut n: u64) -> Result<bool, ()> {
        loop {
            let take = self.ubuf.len().min(clamp(n));
            self.out.extend_from_slice(&self.ubuf[..take]);
            self.ubuf.advance(take);
            n -= take as u64;
            if n == 0 {
                return Ok(true);
            }
            self.flush_out().await?;
            if fill(up, &mut self.ubuf).await.map_err(drop)? == 0 {
                return Err(());
            }
        }
    }

    async fn copy_chunked(&mut self, up: &mut RawConn) -> Result<bool, ()> {
        let mut chunks = Chunked::default();
        loop {
            let (take, end) = chunks.scan(&self.ubuf).map_err(drop)?;
            self.out.extend_from_slice(&self.ubuf[..take]);
            self.ubuf.advance(take);
            if end {
                return Ok(true);
            }
            if self.ubuf.len() > MAX_RESPONSE_HEAD {
                return Err(()); // a chunk-size line or trailers without end
            }
            self.flush_out().await?;
            if fill(up, &mut self.ubuf).await.map_err(drop)? == 0 {
                return Err(());
            }
        }
    }

    async fn copy_to_end(&mut self, up: &mut RawConn) -> Result<(), ()> {
        loop {
            self.out.extend_from_slice(&self.ubuf);
            self.ubuf.clear();
            self.flush_out().await?;
            match fill(up, &mut self.ubuf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(()),
            }
        }
    }

    async fn flush_out(&mut self) -> Result<(), ()> {
        if !self.out.is_empty() {
            self.client.write_all(&self.out).await.map_err(drop)?;
            self.out.clear();
        }
        self.client.flush().await.map_err(drop)
    }

    fn response_timeout(&self) -> Response<ProxyBody> {
        moat_response(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "{}:{} sent no response within {} s (upstream timeout)",
                self.target.host,
                self.target.port,
                self.engine.limits.response_timeout.as_secs_f32()
            ),
        )
    }

    async fn bad_response(&mut self, why: impl std::fmt::Display) -> Next {
        let message = format!(
            "upstream {}:{} failed: {why}",
            self.target.host, self.target.port
        );
        self.fail(moat_response(StatusCode::BAD_GATEWAY, &message))
            .await
    }

    /// Answer with Moat's own error response and close the connection.
    async fn fail(&mut self, resp: Response<ProxyBody>) -> Next {
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or("")
        )
        .into_bytes();
        for (name, value) in &parts.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        let _ = self.client.write_all(&out).await;
        let _ = self.client.shutdown().await;
        Next::Close
    }
}

/// Which side of a copy failed.
enum Side {
    Client,
    Upstream(std::io::Error),
}

/// Write `out` (request head and buffered body bytes) upstream, then the
/// `rest` of the body from the client.
async fn send<C, U>(
    client: &mut C,
    cbuf: &mut BytesMut,
    up: &mut U,
    out: &[u8],
    mut rest: u64,
) -> Result<(), Side>
where
    C: AsyncRead + Unpin,
    U: AsyncWrite + Unpin,
{
    up.write_all(out).await.map_err(Side::Upstream)?;
    while rest > 0 {
        match fill(client, cbuf).await {
            Ok(n) if n > 0 => {}
            _ => return Err(Side::Client),
        }
        let take = cbuf.len().min(clamp(rest));
        up.write_all(&cbuf[..take]).await.map_err(Side::Upstream)?;
        cbuf.advance(take);
        rest -= take as u64;
    }
    up.flush().await.map_err(Side::Upstream)
}

/// Read once from `io` into `buf`; 0 at end of stream.
async fn fill<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(READ_SIZE);
    io.read_buf(buf).await
}

fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

// ---- Parsing and rewriting: no I/O below. ----

/// A request head that qualifies, rewritten for the upstream (in `out`).
#[derive(Debug, PartialEq)]
struct Prepared {
    /// Length of the client's head in its buffer.
    head_len: usize,
    /// Where the method and the request target are in that buffer.
    method: std::ops::Range<usize>,
    path: std::ops::Range<usize>,
    body_len: u64,
    /// The client asked to close after this response.
    close: bool,
    /// A HEAD request: the response has no body whatever it says.
    head: bool,
    /// Safe to send twice (RFC 9110 §9.2.2).
    idempotent: bool,
}

#[derive(Debug, PartialEq)]
enum Parsed {
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

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

/// `Content-Length` as RFC 9110 §8.6 has it: digits only, nothing else.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Parse the request head at the start of `buf`; when it qualifies and
/// `allowed(method, path)` agrees, write the upstream's head into `out`:
/// the request line, `Host: host`, the client's end-to-end headers less
/// those `inject` replaces, then `inject`'s.
fn prepare_request(
    buf: &[u8],
    host: &[u8],
    inject: &[(HeaderName, HeaderValue)],
    out: &mut Vec<u8>,
    allowed: impl FnOnce(&str, &str) -> bool,
) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
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
    if !allowed(method, path) {
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
        path: at(path),
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
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// No length: the body runs until the upstream closes; so does the
    /// client connection.
    UntilClose,
}

#[derive(Debug, PartialEq)]
struct ResponseHead {
    len: usize,
    /// 1xx (not 101): another head follows.
    informational: bool,
    framing: Framing,
    /// The upstream will close after this response.
    upstream_close: bool,
}

/// Parse the response head at the start of `buf` and write the client's
/// head into `out`: hop-by-hop headers out, the framing restated, and
/// `connection: close` when the client connection ends after it. `None`:
/// more bytes needed.
fn prepare_response(
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
    out.extend_from_slice(format!("HTTP/1.1 {code} ").as_bytes());
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
        Framing::Length(n) => out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
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

/// Finds where a chunked body ends (RFC 9112 §7.1), fed its bytes as they
/// arrive; the bytes themselves are relayed unchanged.
#[derive(Debug, Default)]
struct Chunked {
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
    fn scan(&mut self, buf: &[u8]) -> Result<(usize, bool), &'static str> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        at += n;
                        self.state = ChunkState::Trailers;
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
                        return Ok((at + 2, true));
                    }
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    return match httparse::parse_headers(rest, &mut fields) {
                        Ok(httparse::Status::Complete((n, _))) => Ok((at + n, true)),
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
                path: 4..13,
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
        assert_eq!(seen.unwrap(), ("DELETE".into(), "/repos/x?y".into()));
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
}
