//! Local stand-ins for upstream services, for Moat's tests, demo and
//! benchmarks: a throwaway CA and HTTPS servers on 127.0.0.1 that record what
//! they receive. Nothing here ever reaches beyond loopback.

pub mod agents;
pub mod apis;
pub mod aws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

mod git;
pub use git::git_server;
mod raw;
pub use raw::{Canned, RawUpstream};
mod registry;
pub use registry::Registry;

/// A test certificate authority. Its PEM goes in `MOAT_UPSTREAM_CA`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Moat Test Upstream CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Write the CA certificate to `dir/test-ca.pem` and return the path.
    pub fn write_pem(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, self.pem())?;
        Ok(path)
    }

    /// A rustls server config with a leaf for `names`, offering `alpn`.
    pub fn server_config(
        &self,
        names: &[&str],
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>> {
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let chain = vec![
            leaf.der().clone(),
            CertificateDer::from(self.issuer.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    /// All values of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What a handler answers: status, content type, body. With the content
/// type [`REDIRECT`] the body is a `Location` instead (and the response has
/// no body), e.g. `(302, REDIRECT, "http://127.0.0.1:PORT/callback?…")`.
pub type Reply = (u16, &'static str, String);

/// The content type of a [`Reply`] that redirects to its body.
pub const REDIRECT: &str = "x-moat-testkit/redirect";
pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An HTTPS server on 127.0.0.1 (h1 and h2) that records every request.
/// Runs on its own thread; stops when dropped.
pub struct StubServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: TlsServer,
}

/// A TLS server's accept loop on 127.0.0.1, on a thread and runtime of its
/// own: `serve` gets each connection once its handshake is done. Stops (and
/// joins the thread) when dropped.
pub(crate) struct TlsServer {
    pub(crate) addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    pub(crate) fn start<F, Fut>(config: Arc<rustls::ServerConfig>, serve: F) -> Result<Self>
    where
        F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serve = Arc::new(serve);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let accept_loop = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let (acceptor, serve) = (acceptor.clone(), serve.clone());
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve(tls).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept_loop => {}
                    _ = rx => {}
                }
            });
        });
        Ok(Self {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `HOST:443=ADDR` for `MOAT_RESOLVE`.
pub(crate) fn resolve_entry(host: &str, addr: SocketAddr) -> String {
    format!("{host}:443={addr}")
}

impl StubServer {
    pub fn start(ca: &TestCa, names: &[&str], handler: Handler) -> Result<Self> {
        let config = ca.server_config(names, &[b"h2", b"http/1.1"])?;
        Self::start_service(
            config,
            Arc::new(move |req, seen| {
                let handler = handler.clone();
                Box::pin(async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let record = record(&Request::from_parts(parts, ()), body);
                    let (status, ctype, text) = handler(&record);
                    if let Ok(mut s) = seen.lock() {
                        s.push(record);
                    }
                    if ctype == REDIRECT {
                        let mut resp = Response::new(sink_full(String::new()));
                        *resp.status_mut() =
                            hyper::StatusCode::from_u16(status).expect("valid status");
                        resp.headers_mut()
                            .insert("location", text.parse().expect("valid Location"));
                        return resp;
                    }
                    let mut resp = Response::new(sink_full(text));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
                    resp.headers_mut()
                        .insert("content-type", ctype.parse().expect("valid content type"));
                    resp
                })
            }),
        )
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// `HOST:443=127.0.0.1:PORT` for `MOAT_RESOLVE`.
    pub fn resolve_entry(&self, host: &str) -> String {
        resolve_entry(host, self.addr)
    }
}

/// A stand-in for GitHub's `GET /user`: tokens starting `ghp_` are valid
/// (login `octocat`) unless they start `ghp_bad`; anything else is a 401.
pub fn fake_github() -> Handler {
    fake_github_accepting(None)
}

/// Like [`fake_github`], but with `Some(token)` only that exact token is valid.
pub fn fake_github_accepting(only: Option<String>) -> Handler {
    Arc::new(move |seen: &Seen| {
        let auth = seen
            .header("authorization")
            .first()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        let valid = match &only {
            Some(t) => token == t,
            None => token.starts_with("ghp_") && !token.starts_with("ghp_bad"),
        };
        match seen.path.as_str() {
            "/user" if valid => (
                200,
                "application/json",
                r#"{"login":"octocat","id":1}"#.into(),
            ),
            "/user" => (
                401,
                "application/json",
                r#"{"message":"Bad credentials"}"#.into(),
            ),
            _ => (404, "application/json", r#"{"message":"Not Found"}"#.into()),
        }
    })
}

/// A stand-in for a corporate HTTP proxy: accepts `CONNECT host:port`,
/// records the request head, and tunnels every request to `target` (a local
/// stub) whatever host was asked for — so nothing is ever resolved or reached
/// beyond loopback. Stops when dropped.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    _rt: Arc<tokio::runtime::Runtime>,
}

impl ConnectProxy {
    pub fn start(target: SocketAddr) -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?,
        );
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let heads = Arc::new(Mutex::new(Vec::new()));
        let heads2 = heads.clone();
        let task = rt.spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let heads = heads2.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                        if client.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let is_connect = text.starts_with("CONNECT ");
                    if let Ok(mut h) = heads.lock() {
                        h.push(text);
                    }
                    if !is_connect {
                        let _ = client
                            .write_all(
                                b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                        let _ = client
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            heads,
            task,
            _rt: rt,
        })
    }

    /// Request heads received so far (`CONNECT host:port HTTP/1.1\r\n…`).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type SinkBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn sink_full(b: impl Into<Bytes>) -> SinkBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A many-purpose upstream for proxy tests. Every request is recorded
/// (method, path, headers, version; body as received for echo endpoints).
///
/// - any path: echo as JSON (`method`, `path`, `version`, `headers`, `body`)
/// - `/count`: stream the body, answer `{"bytes":N,"matches":M}`, M counting
///   occurrences of the `x-count-pattern` request header value
/// - `/sse`: `data: one`, then waits for [`Sink::release_sse`], then `data: two`
/// - `/reset`: promises 1 MiB, sends 64 KiB, then breaks the connection
/// - `/big?n=N`: N bytes of `x`
/// - `/ws`: `101 Switching Protocols`, then echoes every byte
/// - `/reflect`: `authorization` echoed in `x-echo-authorization` and in the
///   body, split across two frames (`?length`: with a Content-Length)
/// - `/slow`: answers after 5 s
/// - `/stall`: promises 1000 bytes, sends 7, then goes quiet for 30 s
/// - `/trailers`: a body followed by an `x-checksum` trailer
pub struct Sink {
    pub server: StubServer,
    sse_gate: Arc<tokio::sync::Notify>,
}

impl Sink {
    /// `alpn`: what the upstream offers (`&[b"http/1.1"]` for an h1-only server).
    pub fn start(ca: &TestCa, names: &[&str], alpn: &[&[u8]]) -> Result<Self> {
        let gate = Arc::new(tokio::sync::Notify::new());
        let config = ca.server_config(names, alpn)?;
        let g = gate.clone();
        let server = StubServer::start_service(
            config,
            Arc::new(move |req, seen| Box::pin(sink(req, seen, g.clone()))),
        )?;
        Ok(Self {
            server,
            sse_gate: gate,
        })
    }

    pub fn release_sse(&self) {
        self.sse_gate.notify_one();
    }
}

/// An async request handler: gets the request and the record list.
pub type Service = Arc<
    dyn Fn(
            Request<Incoming>,
            Arc<Mutex<Vec<Seen>>>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<SinkBody>> + Send>>
        + Send
        + Sync,
>;

impl StubServer {
    /// Serve `service` over TLS with `config` on 127.0.0.1.
    pub fn start_service(config: Arc<rustls::ServerConfig>, service: Service) -> Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let server = TlsServer::start(config, move |tls| {
            let (service, seen) = (service.clone(), recorded.clone());
            async move {
                let svc = service_fn(move |req| {
                    let fut = service(req, seen.clone());
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            }
        })?;
        Ok(Self {
            addr: server.addr,
            seen,
            _server: server,
        })
    }
}

fn record<B>(req: &Request<B>, body: Bytes) -> Seen {
    Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .chain(std::iter::once((
                ":version".to_owned(),
                format!("{:?}", req.version()),
            )))
            .collect(),
        body,
    }
}

async fn sink(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<tokio::sync::Notify>,
) -> Response<SinkBody> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let push = |s: Seen| {
        if let Ok(mut v) = seen.lock() {
            v.push(s);
        }
    };
    match path.as_str() {
        "/count" => {
            push(record(&req, Bytes::new()));
            let pattern = req
                .headers()
                .get("x-count-pattern")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            let mut body = req.into_body();
            let (mut bytes, mut matches, mut tail) = (0u64, 0u64, Vec::<u8>::new());
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    bytes += data.len() as u64;
                    if !pattern.is_empty() {
                        tail.extend_from_slice(&data);
                        matches += tail
                            .windows(pattern.len())
                            .filter(|w| *w == pattern.as_slice())
                            .count() as u64;
                        let keep = pattern.len() - 1;
                        if tail.len() > keep {
                            tail.drain(..tail.len() - keep);
                        }
                    }
                }
            }
            Response::new(sink_full(format!(
                "{{\"bytes\":{bytes},\"matches\":{matches}}}"
            )))
        }
        "/sse" => {
            push(record(&req, Bytes::new()));
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"data: one\n\n")).await;
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(10), gate.notified()).await;
                let _ = tx.send_data(Bytes::from_static(b"data: two\n\n")).await;
            });
            let mut resp = Response::new(body.boxed());
            resp.headers_mut()
                .insert("content-type", "text/event-stream".parse().expect("static"));
            resp
        }
        "/reset" => {
            push(record(&req, Bytes::new()));
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from(vec![b'r'; 65536])).await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                tx.abort("upstream reset".into());
            });
            let mut resp = Response::new(body.boxed());
            resp.headers_mut()
                .insert("content-length", "1048576".parse().expect("static"));
            resp
        }
        "/big" => {
            push(record(&req, Bytes::new()));
            let n: u64 = query
                .strip_prefix("n=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(8);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len() as u64) as usize;
                    if tx.send_data(chunk.slice(..take)).await.is_err() {
                        return;
                    }
                    left -= take as u64;
                }
            });
            let mut resp = Response::new(body.boxed());
            resp.headers_mut()
                .insert("content-length", n.to_string().parse().expect("number"));
            resp
        }
        "/stall" => {
            push(record(&req, Bytes::new()));
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"partial")).await;
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                drop(tx);
            });
            let mut resp = Response::new(body.boxed());
            resp.headers_mut()
                .insert("content-length", "1000".parse().expect("static"));
            resp
        }
        "/reflect" => {
            // Echoes `authorization` in a header and in the body, the value
            // split across two body frames (`?length`: with a Content-Length).
            push(record(&req, Bytes::new()));
            let value = req
                .headers()
                .get("authorization")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            let half = value.len() / 2;
            let (first, second) = (
                [b"got: ".as_slice(), &value[..half]].concat(),
                [&value[half..], b" end".as_slice()].concat(),
            );
            let length = first.len() + second.len();
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from(first)).await;
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                let _ = tx.send_data(Bytes::from(second)).await;
            });
            let mut resp = Response::new(body.boxed());
            if let Ok(v) = hyper::header::HeaderValue::from_bytes(&value) {
                resp.headers_mut().insert("x-echo-authorization", v);
            }
            if query == "length" {
                resp.headers_mut().insert("content-length", length.into());
            }
            resp
        }
        "/slow" => {
            push(record(&req, Bytes::new()));
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Response::new(sink_full("slow"))
        }
        "/trailers" => {
            push(record(&req, Bytes::new()));
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
            tokio::spawn(async move {
                let _ = tx
                    .send_data(Bytes::from_static(b"body-before-trailers"))
                    .await;
                let mut t = hyper::HeaderMap::new();
                t.insert("x-checksum", "abc123".parse().expect("static"));
                let _ = tx.send_trailers(t).await;
            });
            Response::new(body.boxed())
        }
        "/ws" => {
            push(record(&req, Bytes::new()));
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut resp = Response::new(sink_full(Bytes::new()));
            *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("upgrade", "websocket".parse().expect("static"));
            resp.headers_mut()
                .insert("connection", "upgrade".parse().expect("static"));
            resp
        }
        _ => {
            let (parts, body) = req.into_parts();
            let body = http_body_util::Limited::new(body, 16 << 20)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let req = Request::from_parts(parts, ());
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        ),
                    )
                })
                .collect();
            let json = serde_json::json!({
                "method": req.method().as_str(),
                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
                "version": format!("{:?}", req.version()),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            push(record(&req, body));
            let mut resp = Response::new(sink_full(json.to_string()));
            resp.headers_mut()
                .insert("content-type", "application/json".parse().expect("static"));
            resp
        }
    }
}
