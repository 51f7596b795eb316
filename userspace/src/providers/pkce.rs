//! OAuth 2.0 Authorization Code with PKCE (RFC 6749 §4.1, RFC 7636, `S256`)
//! for `moat grant oauth <name> --auth-url …`: the verifier and its
//! challenge, the authorize URL, judging the redirect that comes back to the
//! loopback listener, and the code-for-token request. Pure: the listener and
//! the HTTP calls live in the CLI.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::oauth::{OauthError, Request, form_escape, token_request};
use crate::store::Credential;

/// Path of the loopback redirect URI (`http://127.0.0.1:PORT/callback`).
pub const CALLBACK_PATH: &str = "/callback";

/// The redirect URI for a listener on `port`.
pub fn redirect_uri(port: u16) -> String {
    format!("http://127.0.0.1:{port}{CALLBACK_PATH}")
}

/// One authorization attempt's secrets: the PKCE verifier (sent only to the
/// token endpoint) and the `state` the redirect must carry back.
pub struct Attempt {
    verifier: zeroize::Zeroizing<String>,
    state: String,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attempt([redacted])")
    }
}

impl Attempt {
    /// From 32 random bytes for the verifier (43 base64url characters, RFC
    /// 7636 §4.1) and 16 for the state.
    pub fn from_random(verifier: [u8; 32], state: [u8; 16]) -> Self {
        Self {
            verifier: zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(verifier)),
            state: URL_SAFE_NO_PAD.encode(state),
        }
    }

    pub fn verifier(&self) -> &str {
        &self.verifier
    }

    pub fn state(&self) -> &str {
        &self.state
    }

    /// `BASE64URL(SHA256(verifier))` (RFC 7636 §4.2, `S256`).
    pub fn challenge(&self) -> String {
        challenge(&self.verifier)
    }
}

/// The `S256` code challenge of `verifier`.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// What goes in the authorize URL besides the attempt's own values.
pub struct Authorize<'a> {
    pub auth_url: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    /// Space-separated scopes, or none.
    pub scope: Option<&'a str>,
}

/// The URL the user opens: `auth_url` with `response_type=code`,
/// `client_id`, `redirect_uri`, `code_challenge`, `code_challenge_method=S256`,
/// `state` and `scope` added to any query it already has.
pub fn authorize_url(a: &Authorize<'_>, attempt: &Attempt) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", a.client_id)
        .append_pair("redirect_uri", a.redirect_uri)
        .append_pair("code_challenge", &attempt.challenge())
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", attempt.state());
    if let Some(scope) = a.scope.filter(|s| !s.is_empty()) {
        q.append_pair("scope", scope);
    }
    // A fragment is never sent to the server: dropped.
    let base = a.auth_url.split_once('#').map_or(a.auth_url, |(b, _)| b);
    let sep = if base.contains('?') {
        if base.ends_with('?') || base.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{base}{sep}{}", q.finish())
}

/// Why the redirect did not give a usable code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error(
        "the redirect's state does not match the one Moat sent (a stale or forged redirect); start the grant again"
    )]
    StateMismatch,
    #[error("authorization was denied ({error}{})", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Denied {
        error: String,
        description: Option<String>,
    },
    #[error("the redirect carries neither a code nor an error")]
    NoCode,
}

/// Judge the query of the redirect to [`CALLBACK_PATH`]: the code when
/// `state` matches. An `error` (`access_denied`, …) is reported as is, but
/// only once the state matches, so a forged redirect cannot pose as a denial.
pub fn judge_callback(query: &str, attempt: &Attempt) -> Result<SecretString, CallbackError> {
    let mut state = None;
    let mut code = None;
    let mut error = None;
    let mut description = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "state" => state = Some(v.into_owned()),
            "code" => code = Some(zeroize::Zeroizing::new(v.into_owned())),
            "error" => error = Some(v.into_owned()),
            "error_description" => description = Some(v.into_owned()),
            _ => {}
        }
    }
    let matches = state
        .as_deref()
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(attempt.state().as_bytes())));
    if !matches {
        return Err(CallbackError::StateMismatch);
    }
    if let Some(error) = error {
        // The server's words, kept short and printable.
        let clean = |s: String| -> String {
            s.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        };
        return Err(CallbackError::Denied {
            error: clean(error),
            description: description.map(clean),
        });
    }
    match code {
        Some(c) if !c.is_empty() => Ok(SecretString::from(c.as_str())),
        _ => Err(CallbackError::NoCode),
    }
}

/// `grant_type=authorization_code` at `cred`'s token URL, with the verifier
/// and the same redirect URI, plus the client id (and secret when there is
/// one).
pub fn code_request(
    cred: &Credential,
    code: &SecretString,
    attempt: &Attempt,
    redirect_uri: &str,
) -> Result<Request, OauthError> {
    let form = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        form_escape(code.expose_secret()),
        form_escape(redirect_uri),
        form_escape(attempt.verifier()),
    );
    token_request(cred, form)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::oauth::{CLIENT_ID, TOKEN_URL};

    fn attempt() -> Attempt {
        Attempt::from_random([7; 32], [9; 16])
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        // RFC 7636 Appendix B: this verifier has this S256 challenge.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        // The same verifier from the appendix's octets.
        let octets = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let a = Attempt::from_random(octets, [0; 16]);
        assert_eq!(a.verifier(), "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(a.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert_eq!(format!("{a:?}"), "Attempt([redacted])");
    }

    #[test]
    fn authorize_url_carries_every_parameter() {
        let a = attempt();
        let url = authorize_url(
            &Authorize {
                auth_url: "https://auth.corp.test/authorize",
                client_id: "moat cli",
                redirect_uri: &redirect_uri(4242),
                scope: Some("openid offline_access"),
            },
            &a,
        );
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "https://auth.corp.test/authorize");
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(get("response_type"), "code");
        assert_eq!(get("client_id"), "moat cli");
        assert_eq!(get("redirect_uri"), "http://127.0.0.1:4242/callback");
        assert_eq!(get("code_challenge"), a.challenge());
        assert_eq!(get("code_challenge_method"), "S256");
        assert_eq!(get("state"), a.state());
        assert_eq!(get("scope"), "openid offline_access");
        assert!(!url.contains(a.verifier()), "the verifier leaked: {url}");
        // An existing query is kept; no scope, no scope parameter.
        let url = authorize_url(
            &Authorize {
                auth_url: "https://idp.test/oauth?tenant=x#frag",
                client_id: "c",
                redirect_uri: "http://127.0.0.1:1/callback",
                scope: None,
            },
            &a,
        );
        assert!(
            url.starts_with("https://idp.test/oauth?tenant=x&response_type=code&"),
            "{url}"
        );
        assert!(!url.contains("scope=") && !url.contains('#'), "{url}");
    }

    #[test]
    fn callbacks() {
        let a = attempt();
        let st = a.state().to_owned();
        let code = judge_callback(&format!("code=abc%2Fdef&state={st}"), &a).unwrap();
        assert_eq!(code.expose_secret(), "abc/def");
        assert_eq!(
            judge_callback("code=abc&state=forged", &a).unwrap_err(),
            CallbackError::StateMismatch
        );
        assert_eq!(
            judge_callback("code=abc", &a).unwrap_err(),
            CallbackError::StateMismatch
        );
        // A denial with a forged state is a state mismatch, not a denial.
        assert_eq!(
            judge_callback("error=access_denied&state=forged", &a).unwrap_err(),
            CallbackError::StateMismatch
        );
        let denied = judge_callback(
            &format!("error=access_denied&error_description=The+user+said+no&state={st}"),
            &a,
        )
        .unwrap_err();
        assert_eq!(
            denied.to_string(),
            "authorization was denied (access_denied: The user said no)"
        );
        assert_eq!(
            judge_callback(&format!("state={st}&code="), &a).unwrap_err(),
            CallbackError::NoCode
        );
    }

    #[test]
    fn code_request_is_form_encoded_with_the_verifier() {
        let a = attempt();
        let mut c = Credential::new_static("oauth", SecretString::from(""), "test");
        c.metadata
            .insert(TOKEN_URL.into(), "https://auth.corp.test/token".into());
        c.metadata.insert(CLIENT_ID.into(), "moat cli".into());
        let r = code_request(
            &c,
            &SecretString::from("c/1"),
            &a,
            "http://127.0.0.1:4242/callback",
        )
        .unwrap();
        assert_eq!(r.url, "https://auth.corp.test/token");
        assert_eq!(
            r.form.as_str(),
            format!(
                "grant_type=authorization_code&code=c%2F1&redirect_uri=http%3A%2F%2F127.0.0.1%3A4242%2Fcallback&code_verifier={}&client_id=moat%20cli",
                a.verifier()
            )
        );
    }
}
