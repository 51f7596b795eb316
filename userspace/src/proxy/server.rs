//! The front doors: the explicit HTTP proxy (CONNECT and absolute-form, with
//! a per-run password) and the transparent listener (redirected
//! connections). Both sniff the first bytes and hand over to intercept or
//! splice.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Engine;
use super::http::forward;
use super::io::Prefixed;
use super::peek::{self, Peeked};
use super::target::{Refusal, Target, moat_response};
use super::upstream::{ProxyBody, Slot};
use crate::net::orig_dst::{NameLookup, OriginalDst};

/// How long a client may take to send its first bytes before the
/// connection is treated as raw TCP (server-speaks-first protocols).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(2);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What a front door does with a connection: a `connect` event's `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Raw TCP the network policy refuses: closed at once.
    Refuse,
    /// Refused by the network policy or the safety guard, for a client
    /// speaking TLS or HTTP: every request gets Moat's answer saying why.
    Deny,
    /// TLS terminated with a Moat CA leaf, the HTTP inside forwarded.
    Intercept,
    /// Plain HTTP the network policy inspects, forwarded request by request.
    Inspect,
    /// Bytes copied both ways, unread.
    Splice,
    /// The upstream could not be reached (not a refusal).
    Unreachable,
}

impl Action {
    /// The name recorded in events.
    fn as_str(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Deny => "deny",
            Self::Intercept => "intercept",
            Self::Inspect => "inspect",
            Self::Splice => "splice",
            Self::Unreachable => "unreachable",
        }
    }
}

/// Read until the first bytes say what the stream is (or a limit is hit).
async fn sniff<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<Peeked> {
    loop {
        match peek::classify(buf) {
            Peeked::NeedMore if buf.len() < peek::MAX_PEEK => {}
            Peeked::NeedMore => return Ok(Peeked::Other),
            verdict => return Ok(verdict),
        }
        let mut chunk = [0u8; 4096];
        let want = chunk.len().min(peek::MAX_PEEK - buf.len());
        let read = tokio::time::timeout(SNIFF_TIMEOUT, stream.read(&mut chunk[..want])).await;
        match read {
            Err(_) => return Ok(Peeked::Other), // the client waits for the server: raw TCP
            Ok(Ok(0)) => return Ok(Peeked::Other),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

impl Engine {
    /// Handle one client stream bound for `host:port` (the CONNECT authority,
    /// or the original destination). TLS for a granted host is intercepted;
    /// everything else is spliced.
    async fn handle_stream<S>(self: Arc<Self>, mut stream: S, host: String, port: u16)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = Vec::new();
        let peeked = match sniff(&mut stream, &mut buf).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%host, port, "client went away: {e}");
                return;
            }
        };
        let ssh = buf.starts_with(b"SSH-");
        let stream = Prefixed::new(Bytes::from(buf), stream);
        let host = match &peeked {
            Peeked::Tls { sni: Some(sni), .. } => sni.clone(),
            _ => host,
        };
        let tls = matches!(peeked, Peeked::Tls { .. });
        let http = matches!(peeked, Peeked::Http { .. });
        // The run's own services: served here, never forwarded, whatever the
        // policy says (plain HTTP only).
        if super::selfhost::is_self(&host) {
            if http {
                let target = self.target(host, port, false, None);
                self.serve_http(stream, target).await;
            }
            return;
        }
        let deny = self.denied(&host, port);
        let action = match () {
            _ if deny.is_some() && !(tls || http) => Action::Refuse,
            _ if deny.is_some() => Action::Deny,
            _ if tls && self.intercepts(&host, port) => Action::Intercept,
            _ if http && self.policy.network.inspects(&host, port) => Action::Inspect,
            _ => Action::Splice,
        };
        if action == Action::Splice {
            return self.splice(stream, host, port, (tls, http, ssh)).await;
        }
        self.emit(
            "connect",
            || json!({"host": host, "port": port, "action": action.as_str()}),
        );
        match action {
            // Raw TCP the policy refuses: closed at once.
            Action::Refuse => drop(stream),
            _ if tls => self.intercept(stream, host, port, deny).await,
            _ => {
                let target = self.target(host, port, false, deny);
                self.serve_http(stream, target).await
            }
        }
    }

    fn target(&self, host: String, port: u16, tls: bool, deny: Option<Refusal>) -> Arc<Target> {
        let plan = if tls && deny.is_none() {
            self.table.plan(&host, port)
        } else {
            Default::default()
        };
        // None: not a valid authority (every request gets a 400).
        let upstream = Slot::new(self.pool.clone(), &host, port, tls).ok();
        Arc::new(Target {
            host,
            port,
            tls,
            plan,
            deny,
            upstream,
        })
    }

    /// Terminate TLS with a Moat CA leaf, then serve the HTTP inside.
    async fn intercept<S>(
        self: Arc<Self>,
        stream: S,
        host: String,
        port: u16,
        deny: Option<Refusal>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = match self.ca.server_config(&host).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        let tls = match tokio::time::timeout(
            HEADER_READ_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(config).accept(stream),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%host, "client TLS handshake failed (does it trust the Moat CA?): {e}");
                return;
            }
            Err(_) => return,
        };
        if deny.is_none() {
            self.table
                .refresh_for(&host, port, self.upstream.as_ref())
                .await;
        }
        let target = self.target(host, port, true, deny);
        tracing::debug!(host = %target.host, port, grants = ?target.plan.grants, "intercepting");
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if !h2 && super::h1::applies(&target) {
            if let Some(rest) = super::h1::serve(&self, &target, tls, HEADER_READ_TIMEOUT).await {
                self.serve_http(rest, target).await;
            }
            return;
        }
        self.serve_http(tls, target).await
    }

    /// Serve HTTP/1 or HTTP/2 requests on a client connection, each
    /// forwarded (or refused) for `target`.
    async fn serve_http<S>(self: Arc<Self>, io: S, target: Arc<Target>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let engine = self.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let engine = engine.clone();
            let target = target.clone();
            async move { Ok::<_, Infallible>(forward(engine, target, req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .max_header_list_size(self.limits.max_header_bytes as u32)
            .max_concurrent_streams(256);
        if let Err(e) = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .await
        {
            tracing::debug!("intercepted connection ended: {e}");
        }
    }

    /// Connect to `host:port` and copy bytes both ways. When the connection
    /// cannot be made, a client speaking HTTP (in the clear, or over TLS that
    /// Moat may terminate) gets Moat's `403`/`502`/`504` saying why instead
    /// of a closed connection; a refusal by the safety guard is recorded as
    /// a `deny` event, with its reason. An SSH client's connection (`ssh`)
    /// has its server host key recorded when the run has `ssh:` grants.
    async fn splice<S>(
        self: Arc<Self>,
        mut stream: S,
        host: String,
        port: u16,
        (tls, http, ssh): (bool, bool, bool),
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connected = self.upstream.connect(&host, port, port == 443).await;
        let net = match connected {
            Ok(u) => {
                self.emit(
                    "connect",
                    || json!({"host": host, "port": port, "action": Action::Splice.as_str()}),
                );
                tracing::debug!(%host, port, "splicing");
                let mut upstream = super::upstream::with_idle_timeout(u, self.limits.idle_timeout);
                match self.ssh_host_keys.get() {
                    Some(keys) if ssh => {
                        self.splice_ssh(stream, upstream, &host, keys).await;
                    }
                    _ => {
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                    }
                }
                return;
            }
            Err(e) => e,
        };
        let refused = matches!(net, crate::net::NetError::Denied { .. });
        self.emit("connect", || {
            let action = if refused {
                Action::Deny
            } else {
                Action::Unreachable
            };
            json!({"host": host, "port": port, "action": action.as_str()})
        });
        self.note_refusal(&host, port, &net);
        let refusal = Some(Refusal::connect(&net));
        // A pinned host (no_intercept) is never answered with a Moat leaf.
        let pinned = self
            .policy
            .no_intercept
            .iter()
            .any(|p| p.matches(&host, port));
        if tls && !pinned {
            self.intercept(stream, host, port, refusal).await
        } else if http {
            let target = self.target(host, port, false, refusal);
            self.serve_http(stream, target).await
        } else {
            let _ = stream.shutdown().await;
        }
    }

    /// [`Self::splice`] for an SSH connection: the server's bytes pass
    /// through [`HostKeyWatch`](crate::ssh::wire::HostKeyWatch) until its
    /// host key is recorded for `host`, before the client gets them (so
    /// before the client can ask the agent to bind to it).
    async fn splice_ssh<S, U>(
        &self,
        client: S,
        upstream: U,
        host: &str,
        keys: &crate::ssh::HostKeys,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        use crate::ssh::wire::{HostKeyWatch, Watch};
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, mut up_w) = tokio::io::split(upstream);
        let up = async {
            let _ = tokio::io::copy(&mut client_r, &mut up_w).await;
            let _ = up_w.shutdown().await;
        };
        let down = async {
            let mut watch = HostKeyWatch::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match up_r.read(&mut buf).await {
                    Ok(n) if n > 0 => n,
                    // The server is done (or gone) before its key exchange:
                    // the client hears so, as copy_bidirectional would say it.
                    _ => {
                        let _ = client_w.shutdown().await;
                        return;
                    }
                };
                let verdict = watch.feed(&buf[..n]);
                if let Watch::HostKey(blob) = &verdict
                    && let Some(print) = keys.record(host, blob)
                {
                    self.emit(
                        "ssh",
                        || json!({"op": "host-key", "host": host, "host_key": print}),
                    );
                }
                if client_w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                if verdict != Watch::More {
                    break;
                }
            }
            let _ = tokio::io::copy(&mut up_r, &mut client_w).await;
            let _ = client_w.shutdown().await;
        };
        tokio::join!(up, down);
    }

    /// The next connection within the run's connection limit (over the limit,
    /// connections are closed at once; accept errors back off briefly).
    async fn accept(
        &self,
        listener: &TcpListener,
    ) -> (TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit) {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => match self.connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = tcp.set_nodelay(true);
                        return (tcp, peer, permit);
                    }
                    Err(_) => tracing::warn!(%peer, "connection limit reached; refusing"),
                },
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serve the explicit proxy on `listener`: every request must carry
    /// `Proxy-Authorization: Basic base64(moat:<token>)`.
    pub async fn serve_explicit(self: Arc<Self>, listener: TcpListener, token: String) {
        if let Ok(addr) = listener.local_addr() {
            self.add_listener(addr);
        }
        let expected: Arc<[u8]> =
            Arc::from(format!("Basic {}", B64.encode(format!("moat:{token}"))).into_bytes());
        loop {
            let (tcp, _peer, permit) = self.accept(&listener).await;
            let engine = self.clone();
            let expected = expected.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| {
                    let engine = engine.clone();
                    let expected = expected.clone();
                    async move { Ok::<_, Infallible>(engine.explicit_request(req, &expected).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    }

    async fn explicit_request(
        self: Arc<Self>,
        req: Request<Incoming>,
        expected: &[u8],
    ) -> Response<ProxyBody> {
        let authorized = req
            .headers()
            .get(header::PROXY_AUTHORIZATION)
            .is_some_and(|v| {
                v.as_bytes().len() == expected.len() && bool::from(v.as_bytes().ct_eq(expected))
            });
        if !authorized {
            let mut resp = moat_response(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "proxy authentication required (use the proxy URL Moat printed, with its password)",
            );
            resp.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"moat\""),
            );
            return resp;
        }
        if req.method() == Method::CONNECT {
            let Some((host, port)) = req
                .uri()
                .authority()
                .and_then(|a| a.port_u16().map(|p| (a.host().to_owned(), p)))
            else {
                return moat_response(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
            };
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            let engine = self.clone();
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => {
                        engine
                            .handle_stream(TokioIo::new(upgraded), host, port)
                            .await
                    }
                    Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
                }
            });
            return Response::new(super::target::full(Bytes::new()));
        }
        // Absolute-form: plain HTTP through the proxy. Forwarded, never injected.
        let (Some("http"), Some(authority)) =
            (req.uri().scheme_str(), req.uri().authority().cloned())
        else {
            return moat_response(
                StatusCode::BAD_REQUEST,
                "this is Moat's proxy: send CONNECT or absolute-form http:// requests",
            );
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(80);
        let deny = (!super::selfhost::is_self(&host))
            .then(|| self.denied(&host, port))
            .flatten();
        let target = self.target(host, port, false, deny);
        forward(self, target, req).await
    }

    /// Serve redirected connections on `listener`; `dst` recovers where each
    /// was going, `names` maps synthetic addresses back to host names.
    pub async fn serve_transparent(
        self: Arc<Self>,
        listener: TcpListener,
        dst: Arc<dyn OriginalDst>,
        names: Option<NameLookup>,
    ) {
        if let Ok(addr) = listener.local_addr() {
            self.add_listener(addr);
        }
        loop {
            let (tcp, peer, permit) = self.accept(&listener).await;
            let original = match dst.original_dst(&tcp) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(%peer, "no original destination: {e}");
                    continue;
                }
            };
            let host = names
                .as_ref()
                .and_then(|n| n(original.ip()))
                .unwrap_or_else(|| original.ip().to_string());
            let engine = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                engine.handle_stream(tcp, host, original.port()).await;
            });
        }
    }
}

/// The engine as the sandbox sees it (`net::front`): its two front doors.
impl crate::net::front::Front for Engine {
    fn transparent(
        self: Arc<Self>,
        listener: TcpListener,
        dst: Arc<dyn OriginalDst>,
        names: Option<NameLookup>,
    ) -> crate::net::front::Serving {
        Box::pin(self.serve_transparent(listener, dst, names))
    }

    fn explicit(
        self: Arc<Self>,
        listener: TcpListener,
        password: String,
    ) -> crate::net::front::Serving {
        Box::pin(self.serve_explicit(listener, password))
    }
}

#[cfg(test)]
mod tests {
    use super::Action;

    #[test]
    fn actions_keep_their_event_names() {
        let names = [
            Action::Refuse,
            Action::Deny,
            Action::Intercept,
            Action::Inspect,
            Action::Splice,
            Action::Unreachable,
        ]
        .map(Action::as_str);
        assert_eq!(
            names,
            [
                "refuse",
                "deny",
                "intercept",
                "inspect",
                "splice",
                "unreachable"
            ]
        );
    }
}
