//! `moat-bench-relay`: the floors `just bench` measures Moat against. Two
//! relays in front of the benchmark's upstream, on one current-thread runtime
//! (as Moat's proxy runs on a 2-CPU machine), doing none of Moat's HTTP work:
//!
//! - `tcp`: copies bytes to `--to`; the client's TLS goes end to end.
//! - `tls`: terminates the client's TLS with a leaf for `--name` from a fresh
//!   CA (written to `--ca-out`), opens its own TLS connection to `--to`
//!   (trusting `--upstream-ca`), and copies the plaintext: the TLS work of an
//!   intercepting proxy, without parsing, rewriting or pooling anything.
//!
//! Prints `tcp 127.0.0.1:PORT`, `tls 127.0.0.1:PORT` and `ready`, then serves
//! until killed. Loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
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
            println!("tcp {}", tcp.local_addr()?);
            println!("tls {}", tls.local_addr()?);
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
            while let Ok((client, _)) = tls.accept().await {
                let (acceptor, connector, name) =
                    (acceptor.clone(), connector.clone(), server_name.clone());
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(upstream) = dial(to).await else { return };
                    let Ok(mut upstream) = connector.connect(name, upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
            anyhow::Ok(())
        })
}

async fn dial(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(to).await?;
    s.set_nodelay(true)?;
    Ok(s)
}
