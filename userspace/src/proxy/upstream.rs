//! The proxy's upstream side: a hyper client whose connector goes through
//! [`crate::net::Upstream`] (`MOAT_RESOLVE`, `MOAT_UPSTREAM_CA`, the host's
//! proxy, the safety guard). Connections are pooled per scheme and authority;
//! HTTP/2 is used when the upstream offers it, HTTP/1.1 otherwise, whatever
//! the client spoke.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::net::{Io, NetError, Upstream};

/// `io` cut off when it sends nothing for `idle` (a stalled body, a dead peer).
pub fn with_idle_timeout<S: Io + 'static>(
    io: S,
    idle: Duration,
) -> Pin<Box<tokio_io_timeout::TimeoutStream<S>>> {
    let mut s = tokio_io_timeout::TimeoutStream::new(io);
    s.set_read_timeout(Some(idle));
    Box::pin(s)
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends or returns.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<Connector, ProxyBody>;

/// Builds pooled upstream connections.
#[derive(Clone)]
pub struct Connector {
    upstream: Arc<Upstream>,
    idle: Duration,
}

pub fn client(upstream: Arc<Upstream>, idle: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(Connector { upstream, idle })
}

/// A pooled connection: plain or TLS, and whether ALPN chose h2.
pub struct UpstreamConn {
    io: TokioIo<Box<dyn Io>>,
    h2: bool,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = UpstreamConn;
    type Error = NetError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamConn, NetError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let upstream = self.upstream.clone();
        let idle = self.idle;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or(NetError::BadUrl("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let tls = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            if tls {
                let stream = upstream.connect_tls_alpn(&host, port, true).await?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok(UpstreamConn {
                    io: TokioIo::new(Box::new(with_idle_timeout(stream, idle))),
                    h2,
                })
            } else {
                let stream = upstream.connect(&host, port, false).await?;
                Ok(UpstreamConn {
                    io: TokioIo::new(Box::new(with_idle_timeout(stream, idle))),
                    h2: false,
                })
            }
        })
    }
}

impl Connection for UpstreamConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl Read for UpstreamConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for UpstreamConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
