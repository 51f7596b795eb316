//! Moat's own outbound connections (grant validation, token refresh, and the
//! proxy's upstream side): `MOAT_RESOLVE` overrides, `MOAT_UPSTREAM_CA` trust,
//! and the host's `HTTPS_PROXY`/`NO_PROXY`.
//!
//! Errors name the host and port, never the URL: a URL may carry a token.
//!
//! [`orig_dst`] holds the seam between the sandbox's redirectors and the
//! proxy's transparent listener: where a redirected connection was going.

pub mod front;
pub mod orig_dst;
pub mod resolve;
pub mod runtime;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tower_service::Service;

pub use resolve::{Resolve, ResolveError};
pub use tls::TlsError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to {host}:{port}: {reason}")]
    Connect {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("cannot reach {host}:{port} through proxy {proxy}: {reason}")]
    Proxy {
        host: String,
        port: u16,
        proxy: String,
        reason: String,
    },
    #[error("TLS handshake with {host} failed: {reason}")]
    Handshake { host: String, reason: String },
    #[error("HTTP exchange with {host} failed: {reason}")]
    Http { host: String, reason: String },
    #[error("not connecting to {host}:{port}: {reason}")]
    Denied {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("{host}:{port} did not answer within {secs} s")]
    Timeout { host: String, port: u16, secs: u64 },
    #[error("not an http(s) URL with a host: {0}")]
    BadUrl(&'static str),
}

/// A stream to an upstream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Decides whether a resolved address may be connected to (the proxy's
/// safety rules); `Err` carries the reason.
pub trait ConnectGuard: Send + Sync {
    fn check(&self, host: &str, port: u16, addr: std::net::SocketAddr) -> Result<(), String>;
}

/// How Moat reaches the outside world.
pub struct Upstream {
    resolve: Resolve,
    tls: tls::ClientConfigs,
    proxies: Matcher,
    guard: Option<Arc<dyn ConnectGuard>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("resolve", &self.resolve)
            .finish_non_exhaustive()
    }
}

/// A response read whole (bounded), for small API calls.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub body: Bytes,
}

impl Upstream {
    /// From the environment: `MOAT_RESOLVE`, `MOAT_UPSTREAM_CA`, and the proxy
    /// variables (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, lowercase too).
    pub fn from_env() -> Result<Self, NetError> {
        let resolve = Resolve::parse(
            &std::env::var("MOAT_RESOLVE").unwrap_or_default(),
            "MOAT_RESOLVE",
        )?;
        let ca = std::env::var_os("MOAT_UPSTREAM_CA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Self::new(resolve, ca.as_deref(), Matcher::from_env())
    }

    pub fn new(
        resolve: Resolve,
        extra_ca: Option<&std::path::Path>,
        proxies: Matcher,
    ) -> Result<Self, NetError> {
        Ok(Self {
            resolve,
            tls: tls::ClientConfigs::new(extra_ca)?,
            proxies,
            guard: None,
        })
    }

    /// Check every direct connection with `guard` (the proxy's safety rules).
    /// `MOAT_RESOLVE` targets are the user's explicit choice and not checked.
    pub fn with_guard(mut self, guard: Arc<dyn ConnectGuard>) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn resolve(&self) -> &Resolve {
        &self.resolve
    }

    /// A TCP stream to `host:port`: the `MOAT_RESOLVE` address if one is set
    /// (the user's explicit choice, never proxied), else through the host's
    /// proxy if it applies, else direct. Nagle is off: Moat forwards what it
    /// was sent as soon as it has it, and a request's last small segment must
    /// not wait for the upstream's delayed ACK.
    pub async fn connect(&self, host: &str, port: u16, tls: bool) -> Result<TcpStream, NetError> {
        let fut = self.connect_inner(host, port, tls);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| {
                Err(NetError::Timeout {
                    host: host.to_owned(),
                    port,
                    secs: CONNECT_TIMEOUT.as_secs(),
                })
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn connect_inner(&self, host: &str, port: u16, tls: bool) -> Result<TcpStream, NetError> {
        let connect_err = |e: std::io::Error| NetError::Connect {
            host: host.to_owned(),
            port,
            reason: e.to_string(),
        };
        if let Some(addr) = self.resolve.lookup(host, port) {
            tracing::debug!(host, port, %addr, "connecting (MOAT_RESOLVE)");
            return TcpStream::connect(addr).await.map_err(connect_err);
        }
        let scheme = if tls { "https" } else { "http" };
        let dst: http::Uri = format!("{scheme}://{host}:{port}/")
            .parse()
            .map_err(|_| NetError::BadUrl("bad host"))?;
        let Some(proxy) = self.proxies.intercept(&dst) else {
            return self.connect_direct(host, port).await;
        };
        let proxy_uri = proxy.uri().clone();
        let proxy_err = |reason: String| NetError::Proxy {
            host: host.to_owned(),
            port,
            proxy: proxy_uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default(),
            reason,
        };
        if proxy_uri.scheme_str() != Some("http") {
            return Err(proxy_err("only http:// proxies are supported".into()));
        }
        tracing::debug!(host, port, proxy = ?proxy_uri.authority(), "connecting through proxy");
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let mut tunnel = Tunnel::new(proxy_uri.clone(), http);
        if let Some(auth) = proxy.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        std::future::poll_fn(|cx| tunnel.poll_ready(cx))
            .await
            .map_err(|e| proxy_err(error_chain(&e)))?;
        let io = tunnel
            .call(dst)
            .await
            .map_err(|e| proxy_err(error_chain(&e)))?;
        Ok(io.into_inner())
    }

    /// Resolve `host`, keep the addresses the guard allows, connect to the
    /// first that answers.
    async fn connect_direct(&self, host: &str, port: u16) -> Result<TcpStream, NetError> {
        let connect_err = |reason: String| NetError::Connect {
            host: host.to_owned(),
            port,
            reason,
        };
        let Some(guard) = &self.guard else {
            return TcpStream::connect((host, port))
                .await
                .map_err(|e| connect_err(e.to_string()));
        };
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| connect_err(format!("cannot resolve: {e}")))?
            .collect();
        let mut last = format!("{host} has no address");
        let mut denied = true;
        for addr in addrs {
            if let Err(reason) = guard.check(host, port, addr) {
                last = reason;
                continue;
            }
            denied = false;
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        if denied {
            Err(NetError::Denied {
                host: host.to_owned(),
                port,
                reason: last,
            })
        } else {
            Err(connect_err(last))
        }
    }

    /// A verified TLS stream to `host:port` (SNI and certificate check use `host`).
    pub async fn connect_tls(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, NetError> {
        self.connect_tls_alpn(host, port, false).await
    }

    /// Like [`Self::connect_tls`], offering `h2` too when `h2` is set.
    pub async fn connect_tls_alpn(
        &self,
        host: &str,
        port: u16,
        h2: bool,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, NetError> {
        let (h1_config, h2_config) = self.tls.get()?;
        let config = if h2 { h2_config } else { h1_config }.clone();
        let tcp = self.connect(host, port, true).await?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| NetError::BadUrl("invalid host name"))?;
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let err = |mut reason: String| {
            if reason.contains("UnknownIssuer") {
                reason.push_str(" (the server's certificate is not signed by a trusted CA; for a private or test CA set MOAT_UPSTREAM_CA=/path/ca.pem)");
            }
            NetError::Handshake {
                host: host.to_owned(),
                reason,
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| err(error_chain(&e)))
    }

    /// One HTTP/1.1 request, response body read whole (at most 1 MiB).
    /// Header values are marked sensitive so nothing logs them.
    pub async fn fetch(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Fetched, NetError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| NetError::BadUrl("unparsable URL"))?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(
                http::header::USER_AGENT,
                concat!("moat/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT, "application/json");
        for (name, value) in headers {
            let mut v = http::HeaderValue::from_str(value)
                .map_err(|_| NetError::BadUrl("a header value has invalid characters"))?;
            v.set_sensitive(true);
            req = req.header(*name, v);
        }
        let req = req
            .body(body)
            .map_err(|_| NetError::BadUrl("invalid method or header name"))?;
        let resp = self.exchange(req, REQUEST_TIMEOUT).await?;
        Ok(Fetched {
            status: resp.status().as_u16(),
            body: resp.into_body(),
        })
    }

    /// Send `req` (absolute URI; `Host` is set from it) over HTTP/1.1 and
    /// read the response whole (at most 1 MiB), all within `limit`.
    pub async fn exchange(
        &self,
        req: http::Request<Bytes>,
        limit: Duration,
    ) -> Result<http::Response<Bytes>, NetError> {
        let (mut parts, body) = req.into_parts();
        let uri = parts.uri.clone();
        let host = uri.host().ok_or(NetError::BadUrl("no host"))?.to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(NetError::BadUrl("scheme must be http or https")),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let fut = async {
            let io: Box<dyn Io> = if https {
                Box::new(self.connect_tls(&host, port).await?)
            } else {
                Box::new(self.connect(&host, port, false).await?)
            };
            let http_err = |e: &dyn std::fmt::Display| NetError::Http {
                host: host.clone(),
                reason: e.to_string(),
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| http_err(&e))?;
            tokio::spawn(conn);
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
            let host_value = http::HeaderValue::from_str(authority).map_err(|e| http_err(&e))?;
            parts.headers.insert(http::header::HOST, host_value);
            parts.uri = uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
                .into();
            let req = http::Request::from_parts(parts, Full::new(body));
            let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| http_err(&e))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body))
        };
        tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
            Err(NetError::Timeout {
                host: host.clone(),
                port,
                secs: limit.as_secs(),
            })
        })
    }
}

/// An error and its causes, `outer: inner: root`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = inner.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upstream_connections_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let resolve = Resolve::parse(&format!("up.test:{port}=127.0.0.1:{port}"), "test").unwrap();
        let up = Upstream::new(resolve, None, Matcher::builder().build()).unwrap();
        let tcp = up.connect("up.test", port, false).await.unwrap();
        assert!(tcp.nodelay().unwrap());
    }
}
