//! The run's own services, on one reserved host name that only the sandbox
//! reaches, through its proxy: `http://moat.internal/…`. In transparent
//! mode Moat's DNS answers the name like any other and the connection comes
//! to the proxy like every other; in env mode it arrives through
//! `HTTP_PROXY` (behind the proxy's password). The proxy never forwards it,
//! whatever the network policy says, and the run's token (random per run,
//! [`Engine::self_token`]) must be presented as `Authorization: Bearer`.
//!
//! Services:
//! - `GET /aws/credentials/GRANT`: the AWS grant's temporary credentials as
//!   `credential_process` JSON (credential_process mode only).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use secrecy::ExposeSecret;

use super::Engine;
use super::target::{full, moat_response};
use super::upstream::ProxyBody;
use crate::aws::{Inject, session};

/// The reserved host name.
pub const SELF_HOST: &str = "moat.internal";
/// Where `credential_process` asks (`/GRANT` follows).
pub const AWS_PATH: &str = "/aws/credentials";

/// Is `host` the reserved name?
pub fn is_self(host: &str) -> bool {
    host.trim_end_matches('.').eq_ignore_ascii_case(SELF_HOST)
}

/// Answer one request to the reserved host.
pub async fn answer(engine: &Arc<Engine>, req: Request<Incoming>) -> Response<ProxyBody> {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| {
            use subtle::ConstantTimeEq;
            bool::from(
                t.as_bytes()
                    .ct_eq(engine.self_token().expose_secret().as_bytes()),
            )
        });
    if !authorized {
        engine.emit(
            "deny",
            || serde_json::json!({"host": SELF_HOST, "path": req.uri().path(), "reason": "no or wrong run token"}),
        );
        return moat_response(
            StatusCode::UNAUTHORIZED,
            "moat.internal serves this run's sandbox only, with the run's token",
        );
    }
    let path = req.uri().path();
    let Some(grant) = path
        .strip_prefix(AWS_PATH)
        .and_then(|p| p.strip_prefix('/'))
    else {
        return moat_response(
            StatusCode::NOT_FOUND,
            &format!("moat.internal has no {path}"),
        );
    };
    if req.method() != Method::GET {
        return moat_response(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let Some(aws) = engine
        .table
        .aws_sessions()
        .find(|s| s.grant == grant && s.inject() == Inject::CredentialProcess)
    else {
        return moat_response(
            StatusCode::NOT_FOUND,
            &format!("this run has no AWS grant '{grant}' in credential_process mode"),
        );
    };
    match aws.credentials().await {
        Ok((c, assumed)) => {
            if assumed {
                engine.emit("aws_credentials", || aws.assumed_event(&c));
            }
            let mut resp = Response::new(full(session::process_json(&c)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(e) => {
            tracing::warn!(%grant, "assuming the role failed: {e}");
            moat_response(StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}
