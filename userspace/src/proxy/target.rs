//! What an intercepted connection is talking to ([`Target`]), and the
//! answers Moat gives itself instead of an upstream's ([`Refusal`],
//! [`moat_response`]).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::inject::Plan;
use super::upstream::{ProxyBody, Slot};

/// What an intercepted connection is talking to.
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Upstream over TLS (the client spoke TLS to us).
    pub tls: bool,
    pub plan: Plan,
    /// Refused (by the network policy, the safety guard, or an upstream
    /// that cannot be reached): every request gets Moat's answer saying why.
    pub deny: Option<Refusal>,
    /// The upstream connection(s) used for it; `None` when host and port
    /// make no valid authority.
    pub upstream: Option<Slot>,
}

/// Moat's answer to every request on a connection it will not forward:
/// `403` for a refusal, `502`/`504` for an upstream it cannot reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    /// A `403`: the network policy or the safety guard said no.
    pub fn forbidden(reason: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            reason,
        }
    }

    /// Why a connection to the upstream could not be made: `403` when Moat
    /// refused it (the guard), `504` for a timeout, `502` otherwise.
    pub fn connect(net: &crate::net::NetError) -> Self {
        use crate::net::NetError;
        match net {
            NetError::Denied { .. } => Self::forbidden(format!("blocked by Moat policy: {net}")),
            NetError::Timeout { .. } => Self {
                status: StatusCode::GATEWAY_TIMEOUT,
                reason: net.to_string(),
            },
            _ => Self {
                status: StatusCode::BAD_GATEWAY,
                reason: net.to_string(),
            },
        }
    }

    pub fn response(&self) -> Response<ProxyBody> {
        moat_response(self.status, &self.reason)
    }
}

/// `body`, whole, as the proxy's body type.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response Moat itself makes (errors, policy). Always says it is Moat's.
pub fn moat_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(format!("moat: {message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        HeaderName::from_static("x-moat-error"),
        HeaderValue::from_static("1"),
    );
    resp
}
