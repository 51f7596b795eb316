//! `credential_process` inside the sandbox: `moat __aws-credentials` asks
//! the run's proxy, on its reserved host ([`SELF_HOST`]), for the grant's
//! current temporary credentials and prints the proxy's JSON as is. It
//! reaches the proxy the way any program in the sandbox does: by name
//! (transparent mode: Moat's DNS, every TCP connection to the proxy), or
//! through `HTTP_PROXY` (env mode). The run's token authenticates it; the
//! token means nothing outside this run's proxy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;

use crate::proxy::selfhost::{AWS_PATH, SELF_HOST};

/// The SDKs wait on the process; an answer takes one STS call at most.
const TIMEOUT: Duration = Duration::from_secs(40);
/// The JSON is a few hundred bytes; anything this large is not it.
const MAX_ANSWER: u64 = 64 * 1024;

/// `~/.aws/config` for the sandbox: one default profile whose
/// credentials come from `moat_argv… __aws-credentials`.
pub fn config_file(moat_argv: &[String], grant: &str, token: &str, region: Option<&str>) -> String {
    let quote = |a: &str| {
        if a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=+@".contains(&b))
        {
            a.to_owned()
        } else {
            format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\""))
        }
    };
    let mut cmd: Vec<String> = moat_argv.iter().map(|a| quote(a)).collect();
    cmd.extend(["__aws-credentials".into(), quote(grant), quote(token)]);
    let mut out = format!(
        "# Written by Moat for this run: credentials come from the run's proxy.\n\
         [default]\ncredential_process = {}\n",
        cmd.join(" ")
    );
    if let Some(r) = region {
        out.push_str(&format!("region = {r}\n"));
    }
    out
}

/// `moat __aws-credentials GRANT TOKEN`: print the credential JSON.
pub fn main(args: &[String]) -> Result<()> {
    let [grant, token] = args else {
        bail!("usage: moat __aws-credentials GRANT TOKEN (written by Moat into AWS_CONFIG_FILE)");
    };
    let path = format!("{AWS_PATH}/{grant}");
    let proxy = ["HTTP_PROXY", "http_proxy"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    let (mut conn, request) = match proxy {
        Some(url) => {
            let (addr, auth) = proxy_addr(&url)?;
            let conn = TcpStream::connect(&addr)
                .with_context(|| format!("connecting to Moat's proxy at {addr}"))?;
            let auth = auth
                .map(|a| {
                    format!(
                        "Proxy-Authorization: Basic {}\r\n",
                        base64::engine::general_purpose::STANDARD.encode(a)
                    )
                })
                .unwrap_or_default();
            (
                conn,
                format!("GET http://{SELF_HOST}{path} HTTP/1.1\r\nHost: {SELF_HOST}\r\n{auth}"),
            )
        }
        None => {
            let conn = TcpStream::connect((SELF_HOST, 80))
                .with_context(|| format!("connecting to {SELF_HOST} (Moat's proxy)"))?;
            (
                conn,
                format!("GET {path} HTTP/1.1\r\nHost: {SELF_HOST}\r\n"),
            )
        }
    };
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let request = format!("{request}Authorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    conn.take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .context("reading Moat's answer")?;
    let (status, body) = parse_answer(&answer)?;
    if status != 200 {
        bail!("Moat could not get AWS credentials: {}", body.trim());
    }
    std::io::stdout().write_all(body.as_bytes())?;
    Ok(())
}

/// `http://user:pass@host:port` → (`host:port`, `user:pass`).
fn proxy_addr(url: &str) -> Result<(String, Option<String>)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("HTTP_PROXY '{url}' is not an http:// URL"))?;
    let rest = rest.split('/').next().unwrap_or(rest);
    Ok(match rest.rsplit_once('@') {
        Some((auth, addr)) => (addr.to_owned(), Some(auth.to_owned())),
        None => (rest.to_owned(), None),
    })
}

/// Status and body of an HTTP/1.1 answer read to its end (Moat's answers
/// carry Content-Length and close).
fn parse_answer(raw: &[u8]) -> Result<(u16, String)> {
    let text = std::str::from_utf8(raw).context("Moat's answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("Moat's answer ended early")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("Moat's answer has no status")?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_process_and_region() {
        let c = config_file(
            &["/usr/bin/moat".into()],
            "aws",
            "tok123",
            Some("us-west-2"),
        );
        assert!(
            c.contains("credential_process = /usr/bin/moat __aws-credentials aws tok123\n"),
            "{c}"
        );
        assert!(c.contains("region = us-west-2\n"));
        let c = config_file(&["/opt/my moat/moat".into()], "aws", "t", None);
        assert!(c.contains("\"/opt/my moat/moat\" __aws-credentials"), "{c}");
        assert!(!c.contains("region"));
    }

    #[test]
    fn answers_and_proxy_urls_parse() {
        let (s, b) = parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert_eq!(
            proxy_addr("http://moat:pw@127.0.0.1:9000").unwrap(),
            ("127.0.0.1:9000".into(), Some("moat:pw".into()))
        );
        assert_eq!(
            proxy_addr("http://127.0.0.1:9000/").unwrap(),
            ("127.0.0.1:9000".into(), None)
        );
        assert!(proxy_addr("socks5://x").is_err());
    }
}
