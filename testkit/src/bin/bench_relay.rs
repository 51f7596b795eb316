//! `moat-bench-relay`: the floors `just bench` measures Moat against. Two
//! relays in front of the benchmark's upstream, on one current-thread runtime
//! (as Moat's proxy runs on a 2-CPU machine), doing none of Moat's HTTP work:
//!
//! - `tcp`: copies bytes to `--to`; the client's TLS goes end to end.
//! - `tls`: terminates the client's TLS with a leaf for `--name` from a fresh
//!   CA (written to `--ca-out`), opens its own TLS connection to `--to`
//!   (trusting `--upstream-ca`), and copies the plaintext: the TLS work of an
//!   intercepting proxy, without parsing, rewriting or pooling anything.
//! - `hyper`: the `tls` relay plus HTTP/1.1 through hyper on both sides, as
//!   Moat does it (a server connection, a `client::conn` sender per client
//!   connection), adding one header per request and nothing else: the floor
//!   for a proxy built on hyper.
//! - `h1`: the `tls` relay plus the least HTTP/1.1 work an injecting proxy
//!   can do: each request and response head parsed with `httparse`, one
//!   header added to the request, bodies copied by `Content-Length`, in one
//!   task per client connection. A measuring stick, not a proxy: anything
//!   but `Content-Length` framing closes the connection.
//!
//! Prints `tcp 127.0.0.1:PORT`, `tls 127.0.0.1:PORT`, `hyper 127.0.0.1:PORT`,
//! `h1 127.0.0.1:PORT` and `ready`, then serves until killed. Loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hyper::body::Incoming;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str =
    "usage: moat-bench-relay --to ADDR:PORT --upstream-ca FILE --ca-out FILE [--name HOST]";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut to, mut upstream_ca, mut ca_out, mut name) = (None, None, None, "bench.test".into());
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--to" => to = Some(value()?.parse::<SocketAddr>()?),
            "--upstream-ca" => upstream_ca = Some(PathBuf::from(value()?)),
            "--ca-out" => ca_out = Some(PathBuf::from(value()?)),
            "--name" => name = value()?,
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    let (Some(to), Some(upstream_ca), Some(ca_out)) = (to, upstream_ca, ca_out) else {
        bail!(USAGE);
    };

    let ca = moat_testkit::TestCa::new()?;
    std::fs::write(&ca_out, ca.pem())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&[&name], &[b"http/1.1"])?);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&upstream_ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let server_name = ServerName::try_from(name)?;

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            let tls = TcpListener::bind("127.0.0.1:0").await?;
            let hyper = TcpListener::bind("127.0.0.1:0").await?;
            let h1 = TcpListener::bind("127.0.0.1:0").await?;
            println!("tcp {}", tcp.local_addr()?);
            println!("tls {}", tls.local_addr()?);
            println!("hyper {}", hyper.local_addr()?);
            println!("h1 {}", h1.local_addr()?);
            println!("ready");
            tokio::spawn(async move {
                while let Ok((mut client, _)) = tcp.accept().await {
                    tokio::spawn(async move {
                        let Ok(mut upstream) = dial(to).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    });
                }
            });
            // The relays that terminate TLS: each connection is a TLS session
            // with the client and one to the upstream, then the floor's work.
            for (listener, floor) in [(tls, Floor::Tls), (hyper, Floor::Hyper), (h1, Floor::H1)] {
                let (acceptor, connector, name) =
                    (acceptor.clone(), connector.clone(), server_name.clone());
                tokio::spawn(async move {
                    while let Ok((client, _)) = listener.accept().await {
                        let (acceptor, connector, name) =
                            (acceptor.clone(), connector.clone(), name.clone());
                        tokio::spawn(async move {
                            let _ = client.set_nodelay(true);
                            let Ok(mut client) = acceptor.accept(client).await else {
                                return;
                            };
                            let Ok(upstream) = dial(to).await else { return };
                            let Ok(mut upstream) = connector.connect(name, upstream).await else {
                                return;
                            };
                            match floor {
                                Floor::Tls => {
                                    let _ =
                                        tokio::io::copy_bidirectional(&mut client, &mut upstream)
                                            .await;
                                }
                                Floor::Hyper => hyper_relay(client, upstream).await,
                                Floor::H1 => {
                                    let _ = h1_relay(client, upstream).await;
                                }
                            }
                        });
                    }
                });
            }
            std::future::pending::<()>().await;
            anyhow::Ok(())
        })
}

async fn dial(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(to).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What a TLS-terminating relay does with the plaintext.
#[derive(Clone, Copy)]
enum Floor {
    /// Copies it.
    Tls,
    /// Serves and forwards it with hyper.
    Hyper,
    /// Parses heads with httparse.
    H1,
}

/// The header both HTTP floors add, standing in for an injected credential.
const INJECTED: (&str, &str) = ("authorization", "Bearer bench-floor-credential");

async fn hyper_relay<C, U>(client: C, upstream: U)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::TokioIo;
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await
    else {
        return;
    };
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let sender = sender.clone();
        async move {
            req.headers_mut()
                .insert(INJECTED.0, http::HeaderValue::from_static(INJECTED.1));
            let mut sender = sender.lock().await;
            sender.ready().await?;
            sender.send_request(req).await
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

/// One client connection's requests, relayed in turn.
async fn h1_relay<C, U>(mut client: C, mut upstream: U) -> Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_client, mut from_upstream) = (Vec::with_capacity(8192), Vec::with_capacity(8192));
    let mut head = Vec::with_capacity(1024);
    loop {
        // Request: the head, rewritten with the injected header.
        head.clear();
        let Some((len, body)) = read_head(&mut client, &mut from_client, Some(&mut head)).await?
        else {
            return Ok(());
        };
        // The head goes out with what of the body has arrived: one TLS
        // record and one write for a small message, as hyper's writev does.
        let now = buffered(&from_client[len..], body);
        head.extend_from_slice(&from_client[len..len + now]);
        from_client.drain(..len + now);
        upstream.write_all(&head).await?;
        copy_body(
            &mut client,
            &mut from_client,
            &mut upstream,
            body - now as u64,
        )
        .await?;
        upstream.flush().await?;
        // Response: head and body as they come.
        let Some((len, body)) = read_head(&mut upstream, &mut from_upstream, None).await? else {
            bail!("upstream closed");
        };
        let now = len + buffered(&from_upstream[len..], body);
        client.write_all(&from_upstream[..now]).await?;
        from_upstream.drain(..now);
        copy_body(
            &mut upstream,
            &mut from_upstream,
            &mut client,
            body - (now - len) as u64,
        )
        .await?;
        client.flush().await?;
    }
}

/// Reads into `buf` until it holds a whole head: a request's when `rewrite`
/// is given (written there with the injected header), else a response's.
/// Returns the head's length and its `Content-Length` (0 without one);
/// `None` when the peer closed between messages.
async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    mut rewrite: Option<&mut Vec<u8>>,
) -> Result<Option<(usize, u64)>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let (status, headers) = match rewrite.as_deref_mut() {
            Some(out) => {
                let mut req = httparse::Request::new(&mut headers);
                let status = req.parse(buf)?;
                if status.is_complete() {
                    for part in [req.method.unwrap_or("GET"), " ", req.path.unwrap_or("/")] {
                        out.extend_from_slice(part.as_bytes());
                    }
                    out.extend_from_slice(b" HTTP/1.1\r\n");
                    for h in req.headers.iter() {
                        if !h.name.eq_ignore_ascii_case(INJECTED.0) {
                            for part in [h.name.as_bytes(), b": ", h.value, b"\r\n"] {
                                out.extend_from_slice(part);
                            }
                        }
                    }
                    for part in [INJECTED.0, ": ", INJECTED.1, "\r\n\r\n"] {
                        out.extend_from_slice(part.as_bytes());
                    }
                }
                (status, req.headers)
            }
            None => {
                let mut resp = httparse::Response::new(&mut headers);
                (resp.parse(buf)?, resp.headers)
            }
        };
        if let httparse::Status::Complete(len) = status {
            let mut body = 0;
            for h in headers.iter() {
                if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("only Content-Length bodies");
                }
                if h.name.eq_ignore_ascii_case("content-length") {
                    body = std::str::from_utf8(h.value)?.trim().parse()?;
                }
            }
            return Ok(Some((len, body)));
        }
        if buf.len() > 64 * 1024 {
            bail!("head too large");
        }
        if read_more(s, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                bail!("closed mid-head")
            };
        }
    }
}

/// How much of a `body`-byte body `buf` already holds.
fn buffered(buf: &[u8], body: u64) -> usize {
    buf.len().min(usize::try_from(body).unwrap_or(usize::MAX))
}

/// Moves `n` body bytes from `buf` (then `from`) to `to`.
async fn copy_body<R, W>(from: &mut R, buf: &mut Vec<u8>, to: &mut W, mut n: u64) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while n > 0 {
        if buf.is_empty() && read_more(from, buf).await? == 0 {
            bail!("closed mid-body");
        }
        let take = buffered(buf, n);
        to.write_all(&buf[..take]).await?;
        buf.drain(..take);
        n -= take as u64;
    }
    Ok(())
}

/// Appends what `s` has to `buf` (into spare capacity: nothing zero-filled).
async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<usize> {
    buf.reserve(16 * 1024);
    Ok(s.read_buf(buf).await?)
}
