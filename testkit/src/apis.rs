//! Stand-ins for the AI and developer APIs Moat's providers talk to. Each
//! answers the validation request `moat grant` makes, judging only the shape
//! of the credential (tokens containing `bad` are refused), and answers
//! `{"ok":true}` to anything else so tests can look at what arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Handler, Reply, Seen};

fn json(status: u16, body: &str) -> Reply {
    (status, "application/json", body.to_owned())
}

fn first<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.header(name).first().copied().unwrap_or("")
}

/// `GET /v1/models` of Anthropic (`x-api-key` + `anthropic-version`, or a
/// Bearer `sk-ant-oat…` token with the OAuth beta flag) and of OpenAI
/// (Bearer `sk-…`).
pub fn fake_ai_apis() -> Handler {
    Arc::new(|seen: &Seen| {
        if seen.path != "/v1/models" {
            return json(200, r#"{"ok":true}"#);
        }
        let key = first(seen, "x-api-key");
        let bearer = first(seen, "authorization")
            .strip_prefix("Bearer ")
            .unwrap_or("");
        let anthropic_ok = || !first(seen, "anthropic-version").is_empty();
        let unauthorized = |msg: &str| {
            json(
                401,
                &format!(
                    r#"{{"type":"error","error":{{"type":"authentication_error","message":"{msg}"}}}}"#
                ),
            )
        };
        if !key.is_empty() {
            return if key.starts_with("sk-ant-api03-") && !key.contains("bad") && anthropic_ok() {
                json(200, r#"{"data":[{"id":"claude-test"}]}"#)
            } else {
                unauthorized("invalid x-api-key")
            };
        }
        if bearer.starts_with("sk-ant-oat") {
            let beta = first(seen, "anthropic-beta").contains("oauth-2025-04-20");
            return if beta && anthropic_ok() && !bearer.contains("bad") {
                json(200, r#"{"data":[{"id":"claude-test"}]}"#)
            } else {
                unauthorized("Invalid bearer token")
            };
        }
        if bearer.starts_with("sk-") && !bearer.contains("bad") {
            return json(200, r#"{"object":"list","data":[]}"#);
        }
        json(
            401,
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#,
        )
    })
}

/// An npm registry's `GET [/path]/-/whoami`: Bearer tokens without `bad`
/// belong to `jsmith`.
pub fn fake_npm_registry() -> Handler {
    Arc::new(|seen: &Seen| {
        if !seen.path.ends_with("/-/whoami") {
            return json(200, r#"{"ok":true}"#);
        }
        match first(seen, "authorization").strip_prefix("Bearer ") {
            Some(t) if !t.is_empty() && !t.contains("bad") => json(200, r#"{"username":"jsmith"}"#),
            _ => json(401, r#"{"error":"Unauthorized: invalid token"}"#),
        }
    })
}

/// An OAuth token endpoint (`POST /token`, `grant_type=refresh_token`) that
/// counts its calls in `calls`. The first answer expires in 60 s (so a proxy
/// refreshes at once), later ones in an hour; access tokens are `at-<call>`.
/// Refresh tokens containing `bad` get `invalid_grant`. Other paths: `{"ok":true}`.
pub fn fake_oauth_endpoint(calls: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |seen: &Seen| {
        if seen.path != "/token" {
            return json(200, r#"{"ok":true}"#);
        }
        let form = String::from_utf8_lossy(&seen.body).into_owned();
        let field = |k: &str| {
            form.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_owned()
        };
        if seen.method != "POST" || field("grant_type") != "refresh_token" {
            return json(400, r#"{"error":"unsupported_grant_type"}"#);
        }
        if field("refresh_token").is_empty() || field("refresh_token").contains("bad") {
            return json(
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            );
        }
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let expires = if n == 1 { 60 } else { 3600 };
        json(
            200,
            &format!(r#"{{"access_token":"at-{n}","expires_in":{expires},"token_type":"Bearer"}}"#),
        )
    })
}

fn form_field(text: &str, key: &str) -> String {
    text.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
        .replace("%2F", "/")
        .replace("%2f", "/")
}

/// Google as the Gemini CLI uses it, for one test: `POST /token`
/// (oauth2.googleapis.com; refresh tokens starting `1//0real` without `bad`
/// are good, access tokens are `ya29.real-<call>`, the first expiring in
/// 60 s, later ones in an hour; `calls` counts them), `POST /tokeninfo`
/// (Bearer or `access_token=` must be a `ya29.real` token), and the Code
/// Assist API (cloudcode-pa.googleapis.com, any other path): Bearer
/// `ya29.real…` gets `{"ok":true}`, anything else 401.
pub fn fake_google(calls: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |seen: &Seen| {
        let body = String::from_utf8_lossy(&seen.body).into_owned();
        let bearer = first(seen, "authorization")
            .strip_prefix("Bearer ")
            .unwrap_or("")
            .to_owned();
        let real_access = |t: &str| t.starts_with("ya29.real") && !t.contains("bad");
        match seen.path.as_str() {
            "/token" => {
                if seen.method != "POST" || form_field(&body, "grant_type") != "refresh_token" {
                    return json(400, r#"{"error":"unsupported_grant_type"}"#);
                }
                if form_field(&body, "client_id").is_empty()
                    || form_field(&body, "client_secret").is_empty()
                {
                    return json(401, r#"{"error":"invalid_client"}"#);
                }
                let rt = form_field(&body, "refresh_token");
                if !rt.starts_with("1//0real") || rt.contains("bad") {
                    return json(
                        400,
                        r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
                    );
                }
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let expires = if n == 1 { 60 } else { 3600 };
                json(
                    200,
                    &format!(
                        r#"{{"access_token":"ya29.real-{n}","expires_in":{expires},"scope":"openid https://www.googleapis.com/auth/cloud-platform","token_type":"Bearer","id_token":"eyJreal.id.token"}}"#
                    ),
                )
            }
            "/tokeninfo" => {
                let t = if bearer.is_empty() {
                    form_field(&body, "access_token")
                } else {
                    bearer
                };
                if real_access(&t) {
                    json(
                        200,
                        &format!(
                            r#"{{"aud":"gemini-cli","scope":"openid","expires_in":"3500","email":"dev@example.com","echo":"{t}"}}"#
                        ),
                    )
                } else {
                    json(400, r#"{"error":"invalid_token"}"#)
                }
            }
            _ if real_access(&bearer) => json(200, r#"{"ok":true}"#),
            _ => json(
                401,
                r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
            ),
        }
    })
}

/// Meta's Graph API: `GET /vNN.N/me` with a Bearer token (tokens containing
/// `bad` get Graph's 400 OAuthException, code 190; others are Jane
/// Developer), and `GET /vNN.N/oauth/access_token?grant_type=fb_exchange_token`
/// which needs `client_id=123456` and `client_secret=app-secret` (anything
/// else: 400) and answers `EAAlong-<call>` for 60 days; `exchanges` counts
/// the successful ones. Other paths: `{"ok":true}`.
pub fn fake_graph_api(exchanges: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |seen: &Seen| {
        let (path, query) = seen
            .path
            .split_once('?')
            .unwrap_or((seen.path.as_str(), ""));
        let oauth_error = |msg: &str| {
            json(
                400,
                &format!(r#"{{"error":{{"message":"{msg}","type":"OAuthException","code":190}}}}"#),
            )
        };
        if path.ends_with("/me") {
            return match first(seen, "authorization").strip_prefix("Bearer ") {
                Some(t) if t.starts_with("EAA") && !t.contains("bad") => {
                    json(200, r#"{"id":"42","name":"Jane Developer"}"#)
                }
                _ => oauth_error("Invalid OAuth access token."),
            };
        }
        if path.ends_with("/oauth/access_token") {
            if form_field(query, "grant_type") != "fb_exchange_token"
                || form_field(query, "client_id") != "123456"
                || form_field(query, "client_secret") != "app-secret"
            {
                return oauth_error("Error validating client secret.");
            }
            let t = form_field(query, "fb_exchange_token");
            if !t.starts_with("EAA") || t.contains("bad") {
                return oauth_error("Invalid OAuth access token.");
            }
            let n = exchanges.fetch_add(1, Ordering::SeqCst) + 1;
            return json(
                200,
                &format!(
                    r#"{{"access_token":"EAAlong-{n}","token_type":"bearer","expires_in":5184000}}"#
                ),
            );
        }
        json(200, r#"{"ok":true}"#)
    })
}
