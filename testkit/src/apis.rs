//! Stand-ins for the AI and developer APIs Moat's providers talk to. Each
//! answers the validation request `moat grant` makes, judging only the shape
//! of the credential (tokens containing `bad` are refused), and answers
//! `{"ok":true}` to anything else so tests can look at what arrived.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// An OAuth authorization server.
///
/// `POST /token`, `grant_type=refresh_token`: counts its calls in `calls`;
/// the first answer expires in 60 s (so a proxy refreshes at once), later
/// ones in an hour; access tokens are `at-<call>`. Refresh tokens containing
/// `bad` get `invalid_grant`.
///
/// Authorization Code + PKCE (RFC 7636, `S256` only): `GET /authorize?
/// response_type=code&client_id&redirect_uri&code_challenge&
/// code_challenge_method=S256&state[&scope]` plays a user who logs in and
/// consents: a 302 to `redirect_uri?code=code-<n>&state=<state>`; when the
/// scope contains `deny`, the user refuses: a 302 with
/// `error=access_denied&state=<state>`. A malformed request gets a 400 page
/// (no redirect), as real servers do. `POST /token` with
/// `grant_type=authorization_code&code&redirect_uri&code_verifier&client_id`
/// answers `{"access_token":"at-code-<n>","refresh_token":"rt-code-<n>",
/// "expires_in":60}` only when the code is one it issued (each works once),
/// redirect URI and client id are the ones it was issued for, and
/// `BASE64URL(SHA256(code_verifier))` equals the challenge; otherwise
/// `invalid_grant`. Code exchanges count in `calls` too. Other paths:
/// `{"ok":true}`.
pub fn fake_oauth_endpoint(calls: Arc<AtomicUsize>) -> Handler {
    fake_oauth_endpoint_revocable(calls, Arc::new(AtomicBool::new(false)))
}

/// [`fake_oauth_endpoint`], where every refresh token counts as revoked
/// (`invalid_grant`) once `revoked` is set.
pub fn fake_oauth_endpoint_revocable(calls: Arc<AtomicUsize>, revoked: Arc<AtomicBool>) -> Handler {
    struct Issued {
        client_id: String,
        redirect_uri: String,
        challenge: String,
    }
    let issued: Mutex<HashMap<String, Issued>> = Mutex::new(HashMap::new());
    let codes = AtomicUsize::new(0);
    Arc::new(move |seen: &Seen| {
        let (path, query) = seen
            .path
            .split_once('?')
            .unwrap_or((seen.path.as_str(), ""));
        if path == "/authorize" {
            let q = decode_form(query.as_bytes());
            let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
            let bad = |why: &str| {
                (
                    400,
                    "text/html",
                    format!("<p>Invalid authorization request: {why}</p>"),
                )
            };
            if get("response_type") != "code" {
                return bad("response_type must be code");
            }
            if get("client_id").is_empty() {
                return bad("no client_id");
            }
            let redirect = get("redirect_uri");
            if !redirect.starts_with("http://127.0.0.1:") || !redirect.ends_with("/callback") {
                return bad("redirect_uri is not a loopback callback");
            }
            if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 {
                return bad("PKCE S256 code_challenge required");
            }
            if get("state").is_empty() {
                return bad("no state");
            }
            let back = |pairs: &[(&str, &str)]| {
                let mut ser = form_urlencoded::Serializer::new(String::new());
                for (k, v) in pairs {
                    ser.append_pair(k, v);
                }
                (302, crate::REDIRECT, format!("{redirect}?{}", ser.finish()))
            };
            if get("scope").contains("deny") {
                return back(&[
                    ("error", "access_denied"),
                    ("error_description", "The user denied access"),
                    ("state", get("state")),
                ]);
            }
            let code = format!("code-{}", codes.fetch_add(1, Ordering::SeqCst) + 1);
            if let Ok(mut map) = issued.lock() {
                map.insert(
                    code.clone(),
                    Issued {
                        client_id: get("client_id").to_owned(),
                        redirect_uri: redirect.to_owned(),
                        challenge: get("code_challenge").to_owned(),
                    },
                );
            }
            return back(&[("code", &code), ("state", get("state"))]);
        }
        if path != "/token" {
            return json(200, r#"{"ok":true}"#);
        }
        let form = decode_form(&seen.body);
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let invalid_grant = |why: &str| {
            json(
                400,
                &format!(r#"{{"error":"invalid_grant","error_description":"{why}"}}"#),
            )
        };
        if seen.method != "POST" {
            return json(400, r#"{"error":"unsupported_grant_type"}"#);
        }
        match field("grant_type") {
            "refresh_token" => {
                if field("refresh_token").is_empty()
                    || field("refresh_token").contains("bad")
                    || revoked.load(Ordering::SeqCst)
                {
                    return invalid_grant("Token has been expired or revoked.");
                }
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let expires = if n == 1 { 60 } else { 3600 };
                json(
                    200,
                    &format!(
                        r#"{{"access_token":"at-{n}","expires_in":{expires},"token_type":"Bearer"}}"#
                    ),
                )
            }
            "authorization_code" => {
                let code = field("code");
                let Some(grant) = issued.lock().ok().and_then(|mut m| m.remove(code)) else {
                    return invalid_grant("The authorization code is invalid or was already used.");
                };
                if grant.redirect_uri != field("redirect_uri") {
                    return invalid_grant("redirect_uri does not match the authorization request.");
                }
                if grant.client_id != field("client_id") {
                    return invalid_grant("The code was issued to another client.");
                }
                use base64::Engine as _;
                use sha2::Digest as _;
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(sha2::Sha256::digest(field("code_verifier").as_bytes()));
                if field("code_verifier").len() < 43 || challenge != grant.challenge {
                    return invalid_grant(
                        "PKCE verification failed: code_verifier does not match code_challenge.",
                    );
                }
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                json(
                    200,
                    &format!(
                        r#"{{"access_token":"at-code-{n}","refresh_token":"rt-code-{n}","expires_in":60,"token_type":"Bearer"}}"#
                    ),
                )
            }
            _ => json(400, r#"{"error":"unsupported_grant_type"}"#),
        }
    })
}

/// An `application/x-www-form-urlencoded` body or query as a map.
fn decode_form(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
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
