//! Requests the proxy answers itself instead of forwarding them, for hosts
//! a grant names in [`Provider::local`](crate::providers::Provider::local).
//!
//! Today one kind: Google's OAuth endpoint as the Gemini CLI uses it. The
//! CLI in the sandbox holds placeholder tokens. When it refreshes with the
//! placeholder refresh token, forwarding would fail (Google does not know
//! the placeholder), and even a substituted request would bring a *new* real
//! access token back that byte substitution cannot hide. So Moat answers it:
//! it refreshes the real token itself when due (through the [`LiveToken`],
//! so concurrent refreshes share one call) and replies with placeholder
//! tokens and the real token's remaining lifetime; the proxy injects the
//! real token on Code Assist. Any other request to that host (the CLI's
//! `tokeninfo` check) is forwarded with the placeholder access token
//! replaced by the real one, and the real one replaced by the placeholder
//! in the answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use secrecy::ExposeSecret;

use super::Engine;
use super::inject::Responder;
use super::target::{Target, full, moat_response};
use super::upstream::ProxyBody;
use crate::providers::LocalAnswer;

/// Request bodies larger than this are refused (token requests are tiny).
const MAX_BODY: usize = 64 * 1024;

/// What a Google access token's lifetime is said to be when Moat does not
/// know the real one.
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3599);

/// The request back when `target` has no local responder; else Moat's answer.
pub async fn answer(
    engine: &Arc<Engine>,
    target: &Target,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Request<Incoming>> {
    match &target.plan.local {
        Some(r) if target.tls => Ok(respond(engine, target, r, req).await),
        _ => Err(req),
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// `application/x-www-form-urlencoded` value of `key`, decoded.
fn form_field(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn respond(
    engine: &Arc<Engine>,
    target: &Target,
    r: &Responder,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return moat_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("reading the request body for {}: {e}", target.host),
            );
        }
    };
    let LocalAnswer::GoogleOauth { scope } = &r.answer;
    let is_placeholder_refresh = parts.method == Method::POST
        && parts.uri.path() == "/token"
        && form_field(&body, "grant_type").as_deref() == Some("refresh_token")
        && form_field(&body, "refresh_token").as_deref() == Some(r.refresh_placeholder.as_str());
    if is_placeholder_refresh {
        return google_refresh(engine, target, r, scope).await;
    }
    forward_substituted(engine, target, r, parts, body).await
}

/// The Gemini CLI's refresh: refresh the real token when due, answer with
/// placeholders and the real token's remaining lifetime.
async fn google_refresh(
    engine: &Arc<Engine>,
    target: &Target,
    r: &Responder,
    scope: &str,
) -> Response<ProxyBody> {
    engine.emit(
        "local",
        || serde_json::json!({"host": target.host, "port": target.port, "grants": [r.grant.as_ref()], "answer": "google oauth refresh"}),
    );
    let (now, expires_at) = match &r.live {
        Some(live) => {
            live.ensure_fresh(engine.upstream.as_ref()).await;
            (live.now(), live.expires_at())
        }
        None => (SystemTime::now(), None),
    };
    let remaining = match expires_at {
        Some(exp) => exp.duration_since(now).unwrap_or_default(),
        None => DEFAULT_EXPIRES_IN,
    };
    if remaining.is_zero() {
        let why = r
            .live
            .as_ref()
            .and_then(|l| l.last_failure())
            .map(|f| f.message)
            .unwrap_or_else(|| "the token has expired".into());
        tracing::warn!(grant = %r.grant, "answering the Gemini CLI's refresh with an error: {why}");
        return json_response(
            StatusCode::BAD_REQUEST,
            serde_json::json!({
                "error": "invalid_grant",
                "error_description": format!("moat could not refresh the '{}' credential ({why}); on the host run: moat grant gemini --import", r.grant),
            }),
        );
    }
    tracing::info!(grant = %r.grant, "answered the Gemini CLI's token refresh with placeholders");
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "access_token": r.access_placeholder,
            "refresh_token": r.refresh_placeholder,
            "expires_in": remaining.as_secs(),
            "scope": scope,
            "token_type": "Bearer",
        }),
    )
}

/// Any other request to the token host: placeholder access token → real in
/// the request, real → placeholder in the answer.
async fn forward_substituted(
    engine: &Arc<Engine>,
    target: &Target,
    r: &Responder,
    parts: http::request::Parts,
    body: Bytes,
) -> Response<ProxyBody> {
    let real = r.current();
    let real = real.expose_secret();
    let swap = |text: &str, from: &str, to: &str| text.replace(from, to);
    let body = match std::str::from_utf8(&body) {
        Ok(t) if t.contains(&r.access_placeholder) => {
            Bytes::from(swap(t, &r.access_placeholder, real))
        }
        _ => body,
    };
    let mut headers: Vec<(String, zeroize::Zeroizing<String>)> = Vec::new();
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
        if let Some(v) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
            headers.push((
                name.as_str().to_owned(),
                zeroize::Zeroizing::new(swap(v, &r.access_placeholder, real)),
            ));
        }
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path = swap(path, &r.access_placeholder, real);
    let port = if target.port == 443 {
        String::new()
    } else {
        format!(":{}", target.port)
    };
    let url = format!("https://{}{port}{path}", target.host);
    engine.emit(
        "inject",
        || serde_json::json!({"host": target.host, "port": target.port, "grants": [r.grant.as_ref()], "method": parts.method.as_str(), "path": parts.uri.path()}),
    );
    match engine
        .upstream
        .fetch(parts.method.as_str(), &url, &headers, body)
        .await
    {
        Ok(f) => {
            let body = match std::str::from_utf8(&f.body) {
                Ok(t) if t.contains(real) => Bytes::from(swap(t, real, &r.access_placeholder)),
                _ => f.body,
            };
            let mut resp = Response::new(full(body));
            *resp.status_mut() = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            resp
        }
        Err(e) => moat_response(
            StatusCode::BAD_GATEWAY,
            &format!("upstream {}:{} failed: {e}", target.host, target.port),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        let body = b"grant_type=refresh_token&refresh_token=1%2F%2F0abc&client_id=a+b";
        assert_eq!(
            form_field(body, "refresh_token").as_deref(),
            Some("1//0abc")
        );
        assert_eq!(form_field(body, "client_id").as_deref(), Some("a b"));
        assert_eq!(
            form_field(body, "grant_type").as_deref(),
            Some("refresh_token")
        );
        assert_eq!(form_field(body, "nope"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
