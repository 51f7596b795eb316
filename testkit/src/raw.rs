//! An HTTP/1.1 upstream that answers with canned bytes, for response shapes
//! a hyper server never sends (until-close bodies, 1xx before the answer,
//! `Connection`-named headers, a silent close after a response).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{TestCa, TlsServer};

/// What to send for one path.
#[derive(Clone)]
pub struct Canned {
    /// The whole response, head and body, as written.
    pub bytes: &'static [u8],
    /// Close the connection after it (without saying so in a header).
    pub close: bool,
}

/// A TLS (ALPN `http/1.1`) server on 127.0.0.1: each request (a head, then
/// `Content-Length` bytes of body, or a chunked one) gets its path's [`Canned`] answer; any
/// other path gets `200` with the request exactly as received (head and
/// body) as its body. Records every request's bytes and counts connections.
pub struct RawUpstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    _server: TlsServer,
}

impl RawUpstream {
    pub fn start(
        ca: &TestCa,
        names: &[&str],
        canned: HashMap<&'static str, Canned>,
    ) -> Result<Self> {
        let config = ca.server_config(names, &[b"http/1.1"])?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (requests.clone(), connections.clone());
        let canned = Arc::new(canned);
        let server = TlsServer::start(config, move |tls| {
            count.fetch_add(1, Ordering::SeqCst);
            let (seen, canned) = (seen.clone(), canned.clone());
            async move {
                let _ = serve(tls, &seen, &canned).await;
            }
        })?;
        Ok(Self {
            addr: server.addr,
            requests,
            connections,
            _server: server,
        })
    }

    /// Every request received so far, head and body, as text.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Connections accepted (TLS handshake done) so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// `HOST:443=127.0.0.1:PORT` for `MOAT_RESOLVE`.
    pub fn resolve_entry(&self, host: &str) -> String {
        crate::resolve_entry(host, self.addr)
    }
}

async fn serve<S>(
    mut io: S,
    seen: &Mutex<Vec<String>>,
    canned: &HashMap<&'static str, Canned>,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    loop {
        let (head_len, path, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let chunked = req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
                let length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok());
                let path = req.path.unwrap_or("").to_owned();
                break (
                    n,
                    path,
                    if chunked {
                        None
                    } else {
                        Some(length.unwrap_or(0usize))
                    },
                );
            }
            if read_more(&mut io, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        // Chunked bodies (no trailers, for tests) end at the last chunk.
        let end = loop {
            let end = match body_len {
                Some(n) => (buf.len() >= head_len + n).then_some(head_len + n),
                None => buf[head_len..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|i| head_len + i + 5),
            };
            if let Some(end) = end {
                break end;
            }
            if read_more(&mut io, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let request: Vec<u8> = buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&request).into_owned();
        if let Ok(mut s) = seen.lock() {
            s.push(text);
        }
        match canned.get(path.as_str()) {
            Some(c) => {
                io.write_all(c.bytes).await?;
                if c.close {
                    io.shutdown().await?;
                    return Ok(());
                }
            }
            None => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    request.len()
                );
                io.write_all(head.as_bytes()).await?;
                io.write_all(&request).await?;
            }
        }
        io.flush().await?;
    }
}

async fn read_more<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    buf.reserve(16 * 1024);
    io.read_buf(buf).await
}
