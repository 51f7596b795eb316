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

use std::future::Future;
use std::io::Write as _;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

mod parse;

use parse::{Chunked, Framing, Parsed, Piece, Prepared, prepare_request, prepare_response};

use super::Engine;
use super::http::{note_injection, refused_method, upstream_error};
use super::io::Prefixed;
use super::rules::Verdict;
use super::substitute::{Streamer, Substitutions};
use super::target::{Target, moat_response};
use super::upstream::{ProxyBody, RawConn, Slot, UpstreamError, is_open};
use crate::net::NetError;

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
        // A list item is merged into the client's header: hyper's path.
        && plan.list_items.is_empty()
        // Re-signing (aws-chunked bodies) needs the whole request in hand.
        && plan.sigv4.is_none()
        // Scrubbing a response in place keeps its framing only when no
        // replacement changes its length.
        && plan.reflect.as_ref().is_none_or(|s| !s.changes_length())
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
        // Every request here carries the plan's headers, credentials in them.
        reflect: if target.plan.headers.is_empty() {
            None
        } else {
            target.plan.reflect.clone()
        },
    };
    let mut timer = pin!(tokio::time::sleep(header_timeout));
    let handed = loop {
        let next = within(timer.as_mut(), header_timeout, conn.request_head()).await;
        let prepared = match next {
            Some(Head::Ready(p)) => p,
            Some(Head::Hyper) => break true,
            Some(Head::Closed) | None => break false,
        };
        match conn.exchange(prepared, timer.as_mut()).await {
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
    /// The client went away (end of stream, or a read error).
    Closed,
}

enum Next {
    Continue,
    Close,
    /// The TLS handshake with the upstream failed (maybe it will not speak
    /// HTTP/1.1): hyper takes the request (not consumed) and the rest of the
    /// connection, and tries HTTP/2 or says why not.
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
    /// Injected credential → placeholder, applied to each response (heads,
    /// bodies, trailers); never changes a length ([`applies`]).
    reflect: Option<Arc<Substitutions>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    async fn request_head(&mut self) -> Head {
        let limit = self.engine.limits.max_header_bytes;
        loop {
            let (engine, target) = (self.engine, self.target);
            let allowed = |method: &str, path: &str| {
                // TRACE to a granted host: hyper's to refuse and record.
                if refused_method(target, method).is_some() {
                    return false;
                }
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
                // hyper answers 431 for a head over the limit.
                Parsed::Ready(p) if p.head_len > limit => return Head::Hyper,
                Parsed::Ready(p) => return Head::Ready(p),
                Parsed::Hyper => return Head::Hyper,
                Parsed::Partial if self.cbuf.len() > limit => return Head::Hyper,
                Parsed::Partial => {}
            }
            match fill(&mut self.client, &mut self.cbuf).await {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Forward one prepared request and relay its response; `timer` bounds
    /// the wait for its first bytes.
    async fn exchange(&mut self, p: Prepared, mut timer: Pin<&mut Sleep>) -> Next {
        let (mut up, mut reused) = match self.upstream().await {
            Ok(u) => u,
            // Maybe no HTTP/1.1 (ALPN): hyper tries HTTP/2, and says why not.
            Err(UpstreamError::Connect(NetError::Handshake { .. })) => return Next::Hyper,
            Err(e) => {
                return self
                    .fail(upstream_error(self.engine, self.target, &e))
                    .await;
            }
        };
        if !self.target.plan.grants.is_empty() {
            let text = |r: &std::ops::Range<usize>| {
                std::str::from_utf8(&self.cbuf[r.clone()]).unwrap_or("")
            };
            note_injection(self.engine, self.target, text(&p.method), text(&p.path));
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
                    match within(timer.as_mut(), timeout, fill(&mut up, &mut self.ubuf)).await {
                        Some(Ok(n)) if n > 0 => break,
                        Some(Ok(_)) => "the connection closed before a response".to_owned(),
                        Some(Err(e)) => e.to_string(),
                        None => return self.fail(self.response_timeout()).await,
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
                            .fail(upstream_error(
                                self.engine,
                                self.target,
                                &UpstreamError::Connect(e),
                            ))
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
            let prepared = prepare_response(&self.ubuf, p.head, p.close, &mut self.out);
            if let (Ok(Some(_)), Some(s)) = (&prepared, &self.reflect)
                && let Some(scrubbed) = s.apply(&self.out)
            {
                self.out = scrubbed;
            }
            match prepared {
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
        let mut streamer = self.reflect.as_ref().map(|s| s.stream());
        let copied = match head.framing {
            Framing::Empty => Ok(()),
            Framing::Length(n) => self.copy_length(&mut up, n, streamer.as_mut()).await,
            Framing::Chunked => self.copy_chunked(&mut up, streamer.as_mut()).await,
            Framing::UntilClose => self.copy_to_end(&mut up, streamer.as_mut()).await,
        };
        if copied.is_err() {
            return Next::Close;
        }
        // Left over only when the head went alone (no body bytes to send).
        if !self.out.is_empty() && self.client.write_all(&self.out).await.is_err() {
            return Next::Close;
        }
        if self.client.flush().await.is_err() {
            return Next::Close;
        }
        let until_close = head.framing == Framing::UntilClose;
        if !until_close && !head.upstream_close && self.ubuf.is_empty() {
            self.held = Some(up);
        }
        if p.close || until_close {
            let _ = self.client.shutdown().await;
            return Next::Close;
        }
        Next::Continue
    }

    /// Send `out` (the response head) with the first body bytes, then the
    /// rest as it arrives.
    async fn copy_length(
        &mut self,
        up: &mut RawConn,
        mut n: u64,
        mut streamer: Option<&mut Streamer>,
    ) -> Result<(), ()> {
        loop {
            let take = self.ubuf.len().min(clamp(n));
            body_out(&mut self.out, streamer.as_deref_mut(), &self.ubuf[..take]);
            self.ubuf.advance(take);
            n -= take as u64;
            if n == 0 {
                if let Some(s) = streamer {
                    s.finish(&mut self.out);
                }
                return Ok(());
            }
            self.flush_out().await?;
            if fill(up, &mut self.ubuf).await.map_err(drop)? == 0 {
                return Err(());
            }
        }
    }

    /// Relay a chunked body as it is, or, with a `streamer`, its data
    /// scrubbed and chunked anew (a token split across chunks is found).
    async fn copy_chunked(
        &mut self,
        up: &mut RawConn,
        mut streamer: Option<&mut Streamer>,
    ) -> Result<(), ()> {
        let mut chunks = Chunked::default();
        let mut data = Vec::new();
        loop {
            let (take, end) = match (streamer.as_deref_mut(), &self.reflect) {
                (Some(st), Some(subs)) => {
                    let ubuf = &self.ubuf;
                    let (mut last, mut trailers) = (false, None);
                    let scanned = chunks.scan_pieces(ubuf, |p| match p {
                        Piece::Data(r) => st.push(&ubuf[r], &mut data),
                        Piece::Last => {
                            st.finish(&mut data);
                            last = true;
                        }
                        Piece::Trailers(r) => trailers = Some(r),
                    });
                    if !data.is_empty() {
                        let _ = write!(self.out, "{:x}\r\n", data.len());
                        self.out.extend_from_slice(&data);
                        self.out.extend_from_slice(b"\r\n");
                        data.clear();
                    }
                    if last {
                        self.out.extend_from_slice(b"0\r\n");
                    }
                    if let Some(r) = trailers {
                        let raw = &self.ubuf[r];
                        match subs.apply(raw) {
                            Some(scrubbed) => self.out.extend_from_slice(&scrubbed),
                            None => self.out.extend_from_slice(raw),
                        }
                    }
                    scanned.map_err(drop)?
                }
                _ => {
                    let (take, end) = chunks.scan(&self.ubuf).map_err(drop)?;
                    self.out.extend_from_slice(&self.ubuf[..take]);
                    (take, end)
                }
            };
            self.ubuf.advance(take);
            if end {
                return Ok(());
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

    async fn copy_to_end(
        &mut self,
        up: &mut RawConn,
        mut streamer: Option<&mut Streamer>,
    ) -> Result<(), ()> {
        loop {
            body_out(&mut self.out, streamer.as_deref_mut(), &self.ubuf);
            self.ubuf.clear();
            self.flush_out().await?;
            match fill(up, &mut self.ubuf).await {
                Ok(0) => {
                    if let Some(s) = streamer {
                        s.finish(&mut self.out);
                    }
                    return Ok(());
                }
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

/// `fut`'s output, or `None` when `limit` passes first. `timer` is the
/// client connection's one timer, moved to now + `limit` for each wait: a
/// later deadline only updates its entry, where `tokio::time::timeout`
/// registers a timer and cancels it (each under the timer driver's lock)
/// twice per request.
async fn within<F: Future>(
    mut timer: Pin<&mut Sleep>,
    limit: Duration,
    fut: F,
) -> Option<F::Output> {
    timer.as_mut().reset(Instant::now() + limit);
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
    })
    .await
}

/// Body bytes to the client's buffer, through the scrubber when there is one.
fn body_out(out: &mut Vec<u8>, streamer: Option<&mut Streamer>, data: &[u8]) {
    match streamer {
        Some(s) => s.push(data, out),
        None => out.extend_from_slice(data),
    }
}

/// Read once from `io` into `buf`; 0 at end of stream.
async fn fill<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(READ_SIZE);
    io.read_buf(buf).await
}

fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn within_gives_each_wait_its_own_limit_on_one_timer() {
        let mut timer = pin!(tokio::time::sleep(ms(80)));
        assert_eq!(within(timer.as_mut(), ms(80), async { 7 }).await, Some(7));
        // Four waits of 40 ms each outlive the first deadline: each one
        // moved the timer on, or a later one would have timed out.
        for _ in 0..4 {
            let slept = within(timer.as_mut(), ms(80), tokio::time::sleep(ms(40))).await;
            assert_eq!(slept, Some(()));
        }
        // A wait that never ends: cut off at its limit, not before.
        let start = std::time::Instant::now();
        assert_eq!(within(timer.as_mut(), ms(100), pending::<()>()).await, None);
        let took = start.elapsed();
        assert!(took >= ms(100) && took < Duration::from_secs(5), "{took:?}");
        // The fired timer serves the next waits, a shorter limit too.
        assert_eq!(within(timer.as_mut(), ms(100), async { 1 }).await, Some(1));
        let start = std::time::Instant::now();
        assert_eq!(within(timer.as_mut(), ms(60), pending::<()>()).await, None);
        let took = start.elapsed();
        assert!(took >= ms(60) && took < Duration::from_secs(5), "{took:?}");
    }
}
