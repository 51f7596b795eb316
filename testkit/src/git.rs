//! A Git smart-HTTP server (Git's own `git http-backend` behind a TLS stub),
//! for testing that git clients get credentials injected.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Result;
use http_body_util::BodyExt;
use hyper::Response;
use tokio::io::AsyncWriteExt;

use super::{StubServer, TestCa, record, sink_full};

/// Serve the bare repositories under `root` as `https://<names>/<repo>.git`,
/// only to requests whose `Authorization` header is exactly `authorization`
/// (others get a 401 with a Basic challenge, as GitHub sends).
pub fn git_server(
    ca: &TestCa,
    names: &[&str],
    root: PathBuf,
    authorization: String,
) -> Result<StubServer> {
    let config = ca.server_config(names, &[b"http/1.1"])?;
    let root = Arc::new(root);
    let authorization = Arc::new(authorization);
    StubServer::start_service(
        config,
        Arc::new(move |req, seen| {
            let (root, authorization) = (root.clone(), authorization.clone());
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let rec = record(&hyper::Request::from_parts(parts.clone(), ()), body.clone());
                let authorized =
                    rec.header("authorization").first() == Some(&authorization.as_str());
                if let Ok(mut s) = seen.lock() {
                    s.push(rec);
                }
                if !authorized {
                    let mut resp = Response::new(sink_full("authentication required"));
                    *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                    resp.headers_mut().insert(
                        "www-authenticate",
                        http::HeaderValue::from_static("Basic realm=\"GitHub\""),
                    );
                    return resp;
                }
                match cgi(&root, &parts, &body).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        let mut resp = Response::new(sink_full(format!("git http-backend: {e}")));
                        *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                        resp
                    }
                }
            })
        }),
    )
}

/// Run `git http-backend` as a CGI program for one request.
async fn cgi(
    root: &std::path::Path,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<Response<super::SinkBody>> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body).await?;
    }
    let out = child.wait_with_output().await?;
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        })
        .ok_or_else(|| anyhow::anyhow!("no CGI header block"))?;
    let head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let mut resp = Response::new(sink_full(out.stdout[split.0 + split.1..].to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("200").parse()?;
            *resp.status_mut() = hyper::StatusCode::from_u16(code)?;
        } else if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}
