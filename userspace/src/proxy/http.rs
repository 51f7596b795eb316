//! One intercepted HTTP exchange: rewrite, inject, forward, stream back.
//!
//! Bodies stream in both directions (no buffering beyond a substitution
//! tail), so SSE and chunked responses reach the client as they arrive and
//! multi-gigabyte uploads run in constant memory.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::Engine;
use super::substitute::{SubstBody, Substitutions};
use super::target::{Refusal, Target, full, moat_response};
use super::upstream::{BoxError, ProxyBody, UpstreamError};

/// Bodies up to this size are rewritten whole when a substitution changes
/// their length, so Content-Length stays exact; larger ones stream chunked.
const SMALL_BODY: u64 = 1 << 20;

/// Forward one request for `target` and return the upstream's response.
pub async fn forward(
    engine: Arc<Engine>,
    target: Arc<Target>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if super::selfhost::is_self(&target.host) && !target.tls {
        return super::selfhost::answer(&engine, req).await;
    }
    if req.method() == Method::CONNECT {
        return moat_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT inside an intercepted connection is not supported",
        );
    }
    if let Some(refusal) = &target.deny {
        return refusal.response();
    }
    let method = req.method().as_str();
    if let Some(reason) = refused_method(&target, method) {
        engine.emit(
            "deny",
            || serde_json::json!({"host": target.host, "port": target.port, "method": method, "path": req.uri().path(), "reason": reason}),
        );
        return moat_response(StatusCode::METHOD_NOT_ALLOWED, &reason);
    }
    let route = engine
        .policy
        .network
        .request(&target.host, target.port, method, req.uri().path());
    if let super::rules::Verdict::Deny(reason) = route {
        engine.emit(
            "deny",
            || serde_json::json!({"host": target.host, "port": target.port, "method": method, "path": req.uri().path(), "reason": reason}),
        );
        return moat_response(StatusCode::FORBIDDEN, &reason);
    }
    // Requests Moat answers itself (the Gemini CLI's token refresh).
    let mut req = match super::local::answer(&engine, &target, req).await {
        Ok(resp) => return resp,
        Err(req) => req,
    };
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let plan = &target.plan;

    let bad_target = || {
        moat_response(
            StatusCode::BAD_REQUEST,
            "the request target is not a valid URI",
        )
    };
    let Some(slot) = &target.upstream else {
        return bad_target();
    };
    // Origin-form from here on; the slot adds scheme and authority for HTTP/2.
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Did a credential go upstream on this request? Then the response is
    // scanned for it (`plan.reflect`).
    let mut injected = target.tls && !plan.headers.is_empty();
    let path = match plan
        .request_subst
        .as_ref()
        .and_then(|s| s.apply_str(path.as_str()))
    {
        None => path,
        Some(new) => match PathAndQuery::try_from(new) {
            Ok(p) => {
                injected = true;
                p
            }
            Err(_) => return bad_target(),
        },
    };
    let uri = Uri::from(path);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(header::HOST);
    if let Some(s) = &plan.request_subst {
        injected |= substitute_headers(&mut parts.headers, s);
    }
    if target.tls {
        for (name, value) in &plan.headers {
            // Replace, never duplicate: `insert` drops every value the client
            // sent under that name (a placeholder goes away).
            parts.headers.insert(name.clone(), value.clone());
        }
        for (name, item) in &plan.list_items {
            if let Some(v) = super::inject::with_list_item(parts.headers.get_all(name).iter(), item)
            {
                parts.headers.insert(name.clone(), v);
            }
        }
    } else if !plan.headers.is_empty() {
        tracing::warn!(host = %target.host, "not injecting credentials into plain HTTP");
    }
    if plan.response_subst.is_some() {
        // The token must be findable in the response: ask for no compression.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    // For events: the path as the client sent it (placeholders, never a
    // token), without the query.
    let client_uri = std::mem::replace(&mut parts.uri, uri);
    let request_path = client_uri.path();
    let body = match request_body(body, plan.request_subst.as_ref(), &mut parts.headers).await {
        Ok((b, substituted)) => {
            injected |= substituted;
            b
        }
        Err(e) => {
            return moat_response(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {e}"),
            );
        }
    };
    let body = match &plan.sigv4 {
        Some(aws) if target.tls => match resign(&engine, &target, aws, &mut parts, body).await {
            Ok(body) => body,
            Err(resp) => return resp,
        },
        _ => body,
    };
    if target.tls {
        note_injection(&engine, &target, parts.method.as_str(), request_path);
    }

    let sent = tokio::time::timeout(
        engine.limits.response_timeout,
        slot.send(Request::from_parts(parts, body)),
    )
    .await;
    let mut resp = match sent {
        Err(_) => {
            return moat_response(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "{}:{} sent no response within {} s (upstream timeout)",
                    target.host,
                    target.port,
                    engine.limits.response_timeout.as_secs_f32()
                ),
            );
        }
        Ok(Err(e)) => return upstream_error(&engine, &target, &e),
        Ok(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await)
                else {
                    return;
                };
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let subst = if injected {
        &plan.reflect
    } else {
        &plan.response_subst
    };
    let body: ProxyBody = match subst {
        Some(s) => {
            substitute_headers(&mut parts.headers, s);
            if s.changes_length() {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            SubstBody::new(body, s.clone())
                .map_err(BoxError::from)
                .boxed()
        }
        None => body.map_err(BoxError::from).boxed(),
    };
    Response::from_parts(parts, body)
}

/// STS and S3 Express calls that answer with credentials: re-signed with
/// the real keys, they would hand the sandbox real credentials of its own.
const MINTS_CREDENTIALS: &[&str] = &[
    "AssumeRole",
    "AssumeRoleWithSAML",
    "AssumeRoleWithWebIdentity",
    "AssumeRoot",
    "GetFederationToken",
    "GetSessionToken",
];

/// SigV4 mode: the request as the sandbox signed it (with placeholder
/// keys), re-signed with the AWS grant's real temporary credentials
/// (`proxy::sigv4`). Bodies the signature must hash and the client did not
/// (most non-S3 APIs) are read whole, up to [`SMALL_BODY`]; aws-chunked
/// bodies are re-signed chunk by chunk as they stream. What cannot be
/// re-signed gets Moat's 400 saying why, not AWS's signature error.
async fn resign(
    engine: &Engine,
    target: &Target,
    aws: &crate::aws::Session,
    parts: &mut http::request::Parts,
    body: ProxyBody,
) -> Result<ProxyBody, Response<ProxyBody>> {
    use super::sigv4::{self, ChunkBody, Refusal, Resigned, SigningCreds};
    let path = parts.uri.path().to_owned();
    let creds = match aws.credentials().await {
        Ok((c, assumed)) => {
            if assumed {
                engine.emit("aws_credentials", || aws.assumed_event(&c));
            }
            c
        }
        Err(e) => {
            return Err(moat_response(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "Moat could not get AWS credentials for grant '{}': {e}",
                    aws.grant
                ),
            ));
        }
    };
    let creds = SigningCreds {
        access_key_id: creds.access_key_id,
        secret_access_key: creds.secret_access_key,
        session_token: Some(creds.session_token),
    };
    let host = if target.port == 443 {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let key = &aws.placeholders.access_key_id;
    let now = std::time::SystemTime::now();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let is_sts = target.host.starts_with("sts.");
    let s3_session =
        target.host.contains("s3express") && query.split('&').any(|kv| kv == "session");
    if (is_sts && mints(&query)) || s3_session {
        return Err(sigv4_refusal(engine, target, &path, MINTS_WHY.into()));
    }
    match sigv4::resign(parts, &host, key, &creds, now) {
        Ok(Resigned::Chunked(r)) => Ok(ChunkBody::new(body, *r).boxed()),
        Ok(_) => Ok(body),
        Err(Refusal::BodyNotHashed { .. }) => {
            let whole = match read_whole(body).await {
                Ok(b) => b,
                Err(e) => {
                    return Err(sigv4_refusal(
                        engine,
                        target,
                        &path,
                        format!(
                            "its body must be hashed and could not be read whole (at most {} KiB): {e}",
                            SMALL_BODY / 1024
                        ),
                    ));
                }
            };
            if is_sts && mints(&String::from_utf8_lossy(&whole)) {
                return Err(sigv4_refusal(engine, target, &path, MINTS_WHY.into()));
            }
            match sigv4::resign_buffered(parts, &whole, &host, key, &creds, now) {
                Ok(_) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
                    Ok(full(whole))
                }
                Err(why) => Err(sigv4_refusal(engine, target, &path, why.to_string())),
            }
        }
        Err(why) => Err(sigv4_refusal(engine, target, &path, why.to_string())),
    }
}

/// `body` read whole, at most [`SMALL_BODY`].
async fn read_whole(mut body: ProxyBody) -> Result<Bytes, String> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > SMALL_BODY as usize {
                return Err(format!("larger than {} KiB", SMALL_BODY / 1024));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

const MINTS_WHY: &str = "it asks AWS for new credentials, which would reach the sandbox";

/// Does a query string or form body call one of [`MINTS_CREDENTIALS`]?
fn mints(text: &str) -> bool {
    text.split('&').any(|kv| {
        kv.strip_prefix("Action=")
            .is_some_and(|a| MINTS_CREDENTIALS.contains(&a))
    })
}

/// Moat's 400 for an AWS request it will not re-sign, recorded as a `deny`.
fn sigv4_refusal(engine: &Engine, target: &Target, path: &str, why: String) -> Response<ProxyBody> {
    let text = format!("Moat cannot re-sign this AWS request: {why}");
    engine.emit(
        "deny",
        || serde_json::json!({"host": target.host, "port": target.port, "path": path, "reason": format!("sigv4: {why}")}),
    );
    moat_response(StatusCode::BAD_REQUEST, &text)
}

/// Why a request with `method` is never forwarded to `target`: `TRACE`
/// (and Microsoft's `TRACK`) make the upstream echo the request, injected
/// credential and all, back to the sandbox. Only hosts Moat injects into.
pub(super) fn refused_method(target: &Target, method: &str) -> Option<String> {
    let echoes = method.eq_ignore_ascii_case("TRACE") || method.eq_ignore_ascii_case("TRACK");
    (echoes && !target.plan.grants.is_empty()).then(|| {
        format!(
            "{method} is not forwarded to {}: the upstream would echo the injected credential back",
            target.host
        )
    })
}

/// Log and record (for the run's events) that `method path` goes to
/// `target` with its grants' credentials: names, never values. `path` is the
/// client's, without the query.
pub(super) fn note_injection(engine: &Engine, target: &Target, method: &str, path: &str) {
    let grants = &target.plan.grants;
    if grants.is_empty() {
        return;
    }
    tracing::info!(host = %target.host, grants = ?grants, %method, "injecting");
    engine.emit_fields("inject", || Injected {
        grants: Names(grants),
        host: &target.host,
        method,
        path,
        port: target.port,
    });
}

/// An `inject` event's fields, in the order `emit` writes a `Value`'s
/// (sorted), so the lines read as before.
#[derive(serde::Serialize)]
struct Injected<'a> {
    grants: Names<'a>,
    host: &'a str,
    method: &'a str,
    path: &'a str,
    port: u16,
}

/// Grant names as a JSON array.
struct Names<'a>(&'a [Arc<str>]);

impl serde::Serialize for Names<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|g| &**g))
    }
}

/// The request body to send, with placeholders replaced, and whether a
/// token may be in it (known for a body rewritten whole; assumed for one
/// that streams).
async fn request_body(
    body: Incoming,
    subst: Option<&Arc<Substitutions>>,
    headers: &mut HeaderMap,
) -> Result<(ProxyBody, bool), BoxError> {
    use hyper::body::Body as _;
    let Some(s) = subst.filter(|_| !body.is_end_stream()) else {
        return Ok((body.map_err(BoxError::from).boxed(), false));
    };
    if !s.changes_length() {
        let body = SubstBody::new(body, s.clone()).map_err(BoxError::from);
        return Ok((body.boxed(), true));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(n) if n <= SMALL_BODY => {
            let bytes = Limited::new(body, SMALL_BODY as usize)
                .collect()
                .await?
                .to_bytes();
            let (bytes, substituted) = match s.apply(&bytes) {
                Some(new) => (Bytes::from(new), true),
                None => (bytes, false),
            };
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Ok((full(bytes), substituted))
        }
        _ => {
            headers.remove(header::CONTENT_LENGTH);
            let body = SubstBody::new(body, s.clone()).map_err(BoxError::from);
            Ok((body.boxed(), true))
        }
    }
}

/// Apply `s` to every header value; true when one changed.
fn substitute_headers(headers: &mut HeaderMap, s: &Substitutions) -> bool {
    let mut changed = false;
    for value in headers.values_mut() {
        if let Some(new) = s.apply(value.as_bytes())
            && let Ok(mut v) = HeaderValue::from_bytes(&new)
        {
            v.set_sensitive(true);
            *value = v;
            changed = true;
        }
    }
    changed
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Hop-by-hop headers removed whatever `Connection` names (besides
/// `Connection` and `Upgrade` themselves).
const HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
];

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), keeping `Upgrade` and
/// `Connection: upgrade` for an upgrade request and `TE: trailers`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests have no `Connection` header, or only `keep-alive`: no
    // list of names to build then.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            let skip = t.is_empty()
                || t.eq_ignore_ascii_case("keep-alive")
                || t.eq_ignore_ascii_case("close")
                || (keep_upgrade && t.eq_ignore_ascii_case("upgrade"));
            !skip
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("trailers")));
    headers.remove(header::TE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// 502 or 504 saying which host and why, 403 for a policy refusal (never a
/// header value or URL); a refusal is recorded as a `deny` event.
pub(super) fn upstream_error(
    engine: &Engine,
    target: &Target,
    e: &UpstreamError,
) -> Response<ProxyBody> {
    match e {
        UpstreamError::Connect(net) => {
            let refusal = Refusal::connect(net);
            engine.note_refusal(&target.host, target.port, net);
            refusal.response()
        }
        UpstreamError::Http(e) => moat_response(
            StatusCode::BAD_GATEWAY,
            &format!(
                "upstream {}:{} failed: {}",
                target.host,
                target.port,
                crate::net::error_chain(e)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("authorization", HeaderValue::from_static("Bearer p"));
        strip_hop_by_hop(&mut h, false);
        assert!(
            h.get("x-private").is_none()
                && h.get("keep-alive").is_none()
                && h.get("proxy-authorization").is_none()
        );
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("authorization").is_some());
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_stripped() {
        for name in [
            "connection",
            "upgrade",
            "te",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "transfer-encoding",
        ] {
            let mut h = HeaderMap::new();
            h.insert("accept", HeaderValue::from_static("*/*"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name} kept");
            assert_eq!(h.len(), 1, "{name}: other headers go too");
        }
    }

    #[test]
    fn upgrade_requests_keep_upgrade() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }
}
