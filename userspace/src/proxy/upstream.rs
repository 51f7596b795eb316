//! The proxy's upstream side: pooled HTTP/1.1 and HTTP/2 connections made
//! through [`crate::net::Upstream`] (`MOAT_RESOLVE`, `MOAT_UPSTREAM_CA`, the
//! host's proxy, the safety guard). HTTP/2 is used when the upstream offers
//! it, HTTP/1.1 otherwise, whatever the client spoke.
//!
//! Each intercepted client connection has a [`Slot`]: the upstream connection
//! its last request used, kept for its next one, so a keep-alive client costs
//! no pool lookup per request. When the client connection ends, the slot's
//! connection goes back to the [`Pool`], shared per host, port and scheme, for
//! the next client connection to the same place. (hyper-util's pooled client
//! did the same work per request: a hashed checkout and return, and a task
//! spawned per response to wait for the connection to become idle.)

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::net::{Io, NetError, Upstream};

/// `io` cut off when it sends nothing for `idle` (a stalled body, a dead peer).
pub fn with_idle_timeout<S: Io>(io: S, idle: Duration) -> IdleTimeout<S> {
    IdleTimeout {
        io,
        idle,
        read: false,
        timer: Box::pin(tokio::time::sleep(idle)),
    }
}

/// A stream whose reads fail with `TimedOut` once nothing has arrived for
/// between `idle` and twice that while a read waits. Reads only set a flag;
/// the one timer fires once per `idle` and either finds the flag set (clears
/// it, re-arms) or cuts. (Reading the clock on every read cost ~2 % of the
/// proxy's CPU per request at c=64; a timer re-armed on every read, as
/// `tokio-io-timeout` does, costs a timer-wheel update and often a driver
/// wake-up per read: ~25 µs on every proxied request, measured at c=1.)
pub struct IdleTimeout<S> {
    io: S,
    idle: Duration,
    /// Something was read since the timer last fired.
    read: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
            this.read = true;
            return Poll::Ready(r);
        }
        loop {
            std::task::ready!(this.timer.as_mut().poll(cx));
            if !std::mem::take(&mut this.read) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing received for {} s", this.idle.as_secs()),
                )));
            }
            this.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + this.idle);
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends or returns.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Idle connections kept per host, port and scheme.
const MAX_IDLE_PER_KEY: usize = 256;
/// A pooled connection unused for this long is not handed out again.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Where an upstream connection goes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    host: Arc<str>,
    port: u16,
    tls: bool,
}

/// Why a request got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] NetError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// An upstream HTTP/1.1 connection over TLS that the fast path
/// ([`super::h1`]) drives itself, without a hyper dispatcher.
pub type RawConn = IdleTimeout<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Upstream connections not used by any client connection right now.
pub struct Pool {
    upstream: Arc<Upstream>,
    /// Reads on an upstream connection fail after this much silence.
    idle: Duration,
    conns: Mutex<HashMap<Key, Vec<(Sender, Instant)>>>,
    raw: Mutex<HashMap<Key, Vec<(RawConn, Instant)>>>,
    /// Upstreams that refused a connection offering only `http/1.1`.
    h2_only: Mutex<std::collections::HashSet<Key>>,
}

impl Pool {
    pub fn new(upstream: Arc<Upstream>, idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            upstream,
            idle,
            conns: Mutex::default(),
            raw: Mutex::default(),
            h2_only: Mutex::default(),
        })
    }

    fn raw(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<(RawConn, Instant)>>> {
        self.raw.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<(Sender, Instant)>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live pooled connection to `key`, if any. HTTP/2 connections are
    /// shared, so they stay in the pool.
    fn take(&self, key: &Key) -> Option<Sender> {
        let mut conns = self.lock();
        let list = conns.get_mut(key)?;
        prune(list);
        // An HTTP/1.1 connection whose last response is still streaming is
        // not ready; it stays for later.
        let i = list.iter().rposition(|(s, _)| s.is_ready())?;
        if let Sender::H2(h2) = &list[i].0 {
            let shared = Sender::H2(h2.clone());
            list[i].1 = Instant::now();
            return Some(shared);
        }
        Some(list.swap_remove(i).0)
    }

    fn put(&self, key: &Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut conns = self.lock();
        let list = conns.entry(key.clone()).or_default();
        prune(list);
        if matches!(sender, Sender::H2(_)) && list.iter().any(|(s, _)| matches!(s, Sender::H2(_))) {
            return; // one shared HTTP/2 connection per key is enough
        }
        if list.len() < MAX_IDLE_PER_KEY {
            list.push((sender, Instant::now()));
        }
    }

    /// A new connection to `key`, its HTTP dispatcher running as a task.
    async fn connect(&self, key: &Key) -> Result<Sender, UpstreamError> {
        let (io, h2): (Box<dyn Io>, bool) = if key.tls {
            let stream = self
                .upstream
                .connect_tls_alpn(&key.host, key.port, true)
                .await?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            (Box::new(with_idle_timeout(stream, self.idle)), h2)
        } else {
            let stream = self.upstream.connect(&key.host, key.port, false).await?;
            (Box::new(with_idle_timeout(stream, self.idle)), false)
        };
        let io = TokioIo::new(io);
        if h2 {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            });
            Ok(Sender::H2(tx))
        } else {
            let (tx, conn) = http1::Builder::new().handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            });
            Ok(Sender::H1(tx))
        }
    }
}

/// False when an idle connection was closed by the upstream (or sent
/// something nobody asked for, or went silent past its idle timeout): one
/// poll, no waiting.
pub fn is_open<S: tokio::io::AsyncRead + Unpin>(conn: &mut S) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    Pin::new(conn).poll_read(&mut cx, &mut buf).is_pending()
}

/// Drops the closed connections and those idle for longer than [`POOL_IDLE`].
fn prune(list: &mut Vec<(Sender, Instant)>) {
    list.retain(|(s, since)| !s.is_closed() && since.elapsed() <= POOL_IDLE);
}

/// One upstream connection's request side.
enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// The upstream side of one intercepted client connection (or of one
/// absolute-form request): where it goes, and the connection it last used.
pub struct Slot {
    pool: Arc<Pool>,
    key: Key,
    /// `Host` for HTTP/1.1 and `:authority` for HTTP/2.
    authority: Authority,
    host_header: HeaderValue,
    held: Mutex<Option<Sender>>,
}

impl Slot {
    pub fn new(pool: Arc<Pool>, host: &str, port: u16, tls: bool) -> Result<Self, http::Error> {
        let default = if tls { 443 } else { 80 };
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let authority = if port == default {
            host_part
        } else {
            format!("{host_part}:{port}")
        };
        let authority = Authority::try_from(authority)?;
        let host_header = HeaderValue::from_str(authority.as_str())?;
        Ok(Self {
            pool,
            key: Key {
                host: host.into(),
                port,
                tls,
            },
            authority,
            host_header,
            held: Mutex::new(None),
        })
    }

    /// `Host` for HTTP/1.1 requests to this slot's upstream.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// An idle raw HTTP/1.1 connection from the pool, the most recently used
    /// first; the caller checks it is still open ([`is_open`]).
    pub fn take_raw(&self) -> Option<RawConn> {
        let mut raw = self.pool.raw();
        let list = raw.get_mut(&self.key)?;
        list.retain(|(_, since)| since.elapsed() <= POOL_IDLE);
        list.pop().map(|(conn, _)| conn)
    }

    /// Hand an idle raw connection (no request in flight, nothing unread)
    /// to the pool.
    pub fn put_raw(&self, conn: RawConn) {
        let mut raw = self.pool.raw();
        let list = raw.entry(self.key.clone()).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push((conn, Instant::now()));
        }
    }

    /// A new raw HTTP/1.1 connection (ALPN offers `http/1.1` only). An
    /// upstream that refuses it for want of `h2` is remembered
    /// ([`Self::h2_only`]).
    pub async fn connect_raw(&self) -> Result<RawConn, NetError> {
        let connected = self
            .pool
            .upstream
            .connect_tls_alpn(&self.key.host, self.key.port, false)
            .await;
        match connected {
            Ok(stream) => Ok(with_idle_timeout(stream, self.pool.idle)),
            Err(e) => {
                if let NetError::Handshake { reason, .. } = &e
                    && reason.contains("NoApplicationProtocol")
                {
                    self.h2_only_set().insert(self.key.clone());
                }
                Err(e)
            }
        }
    }

    /// Did this upstream refuse HTTP/1.1 (ALPN) before?
    pub fn h2_only(&self) -> bool {
        self.h2_only_set().contains(&self.key)
    }

    fn h2_only_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Key>> {
        self.pool.h2_only.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Sender>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send `req` (origin-form URI, no `Host`) upstream and return the
    /// response head. A request that a reused connection closed before it
    /// was written goes once more on a new connection.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // An HTTP/1.1 client sends its next request only after the last
        // response has reached it, so the held connection is idle or about
        // to be. HTTP/2 client streams run concurrently: one must not wait
        // for another's response body.
        let mut held = self.held().take();
        if let Some(s) = held.take_if(|s| req.version() == Version::HTTP_2 && !s.is_ready()) {
            self.pool.put(&self.key, s);
        }
        let (mut sender, mut reused) = match held.or_else(|| self.pool.take(&self.key)) {
            Some(s) => (s, true),
            None => (self.pool.connect(&self.key).await?, false),
        };
        loop {
            let error = match sender.ready().await {
                Ok(()) => {
                    self.address(&mut req, matches!(sender, Sender::H2(_)));
                    match sender.send(req).await {
                        Ok(resp) => {
                            if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                                self.keep(sender);
                            }
                            return Ok(resp);
                        }
                        Err(mut e) => match e.take_message() {
                            Some(back) => {
                                req = back;
                                e.into_error()
                            }
                            None => return Err(e.into_error().into()),
                        },
                    }
                }
                Err(e) => e,
            };
            if !reused {
                return Err(error.into());
            }
            tracing::debug!(host = %self.key.host, "pooled upstream connection closed, reconnecting: {error}");
            sender = self.pool.connect(&self.key).await?;
            reused = false;
        }
    }

    /// HTTP/1.1: origin-form and `Host`. HTTP/2: absolute-form (hyper takes
    /// `:scheme` and `:authority` from it) and no `Host`. Called again when
    /// a retry lands on the other protocol.
    fn address(&self, req: &mut Request<ProxyBody>, h2: bool) {
        if h2 {
            req.headers_mut().remove(HOST);
            *req.version_mut() = Version::HTTP_2;
        } else {
            req.headers_mut().insert(HOST, self.host_header.clone());
            *req.version_mut() = Version::HTTP_11;
            if req.uri().scheme().is_none() {
                return; // already origin-form, as `forward` makes it
            }
        }
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        if h2 {
            parts.scheme = Some(if self.key.tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            });
            parts.authority = Some(self.authority.clone());
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    /// Keep `sender` for this client connection's next request; a second
    /// one (concurrent HTTP/2 client streams) goes to the pool.
    fn keep(&self, sender: Sender) {
        let extra = self.held().replace(sender);
        if let Some(extra) = extra {
            self.pool.put(&self.key, extra);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(sender) = self.held().take() {
            self.pool.put(&self.key, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_timeout_counts_from_the_last_read_and_only_cuts_silence() {
        let idle = Duration::from_millis(200);
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut s = with_idle_timeout(ours, idle);
        let start = tokio::time::Instant::now();
        let writer = tokio::spawn(async move {
            // A byte every 80 ms for 3× the idle time, then silence.
            for _ in 0..8 {
                peer.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(peer);
        });
        let mut got = 0;
        let mut buf = [0u8; 8];
        let err = loop {
            match s.read(&mut buf).await {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        let took = start.elapsed();
        writer.abort();
        assert_eq!(got, 8, "every byte arrived before the cut");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Last byte at ~560 ms; the timer (every 200 ms) finds no read at
        // 800 ms and cuts (within 2× idle of the last byte; the upper bound
        // here is loose for busy machines), never before the data stopped.
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    /// A plain HTTP/1.1 upstream on loopback answering `ok` to each request;
    /// with `close_after_one`, it closes each connection after one response
    /// without saying so (as servers do with idle keep-alive connections).
    /// Returns its address, the number of connections accepted, and the
    /// `Host` headers it saw.
    async fn upstream(
        close_after_one: bool,
    ) -> (
        std::net::SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (accepted.clone(), hosts.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let host = head
                            .lines()
                            .find_map(|l| l.strip_prefix("host: "))
                            .unwrap_or("")
                            .to_owned();
                        h.lock().unwrap().push(host);
                        buf.drain(..end + 4);
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                        if close_after_one {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted, hosts)
    }

    fn pool_to(addr: std::net::SocketAddr) -> Arc<Pool> {
        let resolve = crate::net::Resolve::parse(&format!("up.test:8080={addr}"), "test").unwrap();
        let up = Upstream::new(
            resolve,
            None,
            hyper_util::client::proxy::matcher::Matcher::builder().build(),
        )
        .unwrap();
        Pool::new(Arc::new(up), Duration::from_secs(60))
    }

    async fn get(slot: &Slot) -> Result<String, UpstreamError> {
        use http_body_util::BodyExt;
        let req = Request::get("/x")
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        let resp = slot.send(req).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn authority_omits_default_ports() {
        let pool = pool_to("127.0.0.1:9".parse().unwrap());
        let t = |host: &str, port, tls| {
            let slot = Slot::new(pool.clone(), host, port, tls).unwrap();
            assert_eq!(slot.host_header, slot.authority.as_str());
            slot.authority.to_string()
        };
        assert_eq!(t("api.x.test", 443, true), "api.x.test");
        assert_eq!(t("api.x.test", 8443, true), "api.x.test:8443");
        assert_eq!(t("api.x.test", 80, false), "api.x.test");
        assert_eq!(t("::1", 443, true), "[::1]");
    }

    #[tokio::test]
    async fn a_client_connection_keeps_its_upstream_and_hands_it_on() {
        let (addr, accepted, hosts) = upstream(false).await;
        let pool = pool_to(addr);
        let first = Slot::new(pool.clone(), "up.test", 8080, false).unwrap();
        for _ in 0..3 {
            assert_eq!(get(&first).await.unwrap(), "ok");
        }
        drop(first); // the client connection ends: its upstream goes to the pool
        let second = Slot::new(pool.clone(), "up.test", 8080, false).unwrap();
        assert_eq!(get(&second).await.unwrap(), "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(*hosts.lock().unwrap(), vec!["up.test:8080"; 4]);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        let (addr, accepted, _) = upstream(true).await;
        let slot = Slot::new(pool_to(addr), "up.test", 8080, false).unwrap();
        for n in 1..=3 {
            assert_eq!(get(&slot).await.unwrap(), "ok", "request {n}");
            // Let the close reach the connection's task before the next request.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let slot = Slot::new(pool_to(port), "up.test", 8080, false).unwrap();
        assert!(matches!(get(&slot).await, Err(UpstreamError::Connect(_))));
    }
}
