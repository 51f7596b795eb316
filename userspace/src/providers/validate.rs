//! The validation request `moat grant` makes, and how its answer is judged.
//! Pure: building and judging only; `net` sends it.

use secrecy::{ExposeSecret, SecretString};

use super::{HeaderValue, Injection, Provider};

/// What to send. The URL and header may hold the real token: never print them.
pub struct Request {
    pub method: String,
    pub url: SecretString,
    pub header: Option<(String, SecretString)>,
    /// Non-secret headers the API needs (`anthropic-version`).
    pub extra_headers: Vec<(String, String)>,
}

/// Build the request for `token`, or `None` when the provider has no
/// validation endpoint.
pub fn build(provider: &Provider, token: &str) -> Option<Request> {
    let v = provider.validate.as_ref()?;
    let (inject_header, inject_prefix) = match &provider.injection {
        Injection::Headers(rules) => match rules.first() {
            Some(r) => (
                Some(r.header.clone()),
                match &r.value {
                    HeaderValue::Prefixed(p) => p.clone(),
                    HeaderValue::Basic { .. } | HeaderValue::Fixed(_) => String::new(),
                },
            ),
            None => (None, String::new()),
        },
        _ => (None, String::new()),
    };
    let header_name = v.header.clone().or(inject_header);
    let prefix = if v.header.is_some() || !v.prefix.is_empty() {
        v.prefix.clone()
    } else {
        inject_prefix
    };
    let header = header_name
        .filter(|h| !h.is_empty())
        .map(|h| (h, SecretString::from(format!("{prefix}{token}"))));
    Some(Request {
        method: v.method.clone(),
        url: SecretString::from(v.url.replace("${token}", token)),
        header,
        extra_headers: v.extra_headers.clone(),
    })
}

/// The verdict on a validation response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx. `identity` is who the API says the token belongs to, when it says.
    Valid { identity: Option<String> },
    /// 401/403: the service refused the token.
    Rejected { status: u16, message: String },
    /// Anything else: the service answered, but not with a verdict.
    Unexpected { status: u16, message: String },
}

/// Fields that name the token's owner, most specific first.
const IDENTITY_POINTERS: &[&str] = &[
    "/login",
    "/username",
    "/user/login",
    "/user/username",
    "/result/username",
    "/data/username",
    "/name",
    "/email",
];

pub fn judge(status: u16, body: &[u8], token: &str) -> Outcome {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        let identity = json.as_ref().and_then(|j| {
            IDENTITY_POINTERS
                .iter()
                .find_map(|p| j.pointer(p).and_then(|v| v.as_str()).map(str::to_owned))
        });
        return Outcome::Valid {
            identity: identity.filter(|i| !(i.is_empty() || token.len() >= 8 && i.contains(token))),
        };
    }
    let message = json
        .as_ref()
        .and_then(|j| {
            [
                "/message",
                "/error/message",
                "/error_description",
                "/description",
                "/error",
            ]
            .iter()
            .find_map(|p| j.pointer(p).and_then(|v| v.as_str()).map(str::to_owned))
        })
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned()
        });
    // An API that echoes the token back must not get it printed.
    let message = if token.len() < 8 {
        message
    } else {
        message.replace(token, "[redacted]")
    };
    if status == 401 || status == 403 {
        Outcome::Rejected { status, message }
    } else {
        Outcome::Unexpected { status, message }
    }
}

impl Request {
    pub fn describe_host(&self) -> String {
        self.url
            .expose_secret()
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
            .unwrap_or_else(|| "the validation endpoint".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Registry;

    #[test]
    fn github_request_uses_bearer() {
        let reg = Registry::builtin_and_shipped();
        let r = build(reg.get("github").unwrap(), "ghp_x").unwrap();
        assert_eq!(r.url.expose_secret(), "https://api.github.com/user");
        let (h, v) = r.header.unwrap();
        assert_eq!(h, "Authorization");
        assert_eq!(v.expose_secret(), "Bearer ghp_x");
    }

    #[test]
    fn substitution_puts_token_in_url_only() {
        let reg = Registry::builtin_and_shipped();
        let r = build(reg.get("tg").unwrap(), "123:ABC").unwrap();
        assert_eq!(
            r.url.expose_secret(),
            "https://api.telegram.org/bot123:ABC/getMe"
        );
        assert!(r.header.is_none());
        assert_eq!(r.describe_host(), "api.telegram.org");
    }

    #[test]
    fn yaml_header_default_and_override() {
        let reg = Registry::builtin_and_shipped();
        let (h, v) = build(reg.get("gitlab").unwrap(), "glpat")
            .unwrap()
            .header
            .unwrap();
        assert_eq!((h.as_str(), v.expose_secret()), ("PRIVATE-TOKEN", "glpat"));
    }

    #[test]
    fn judging() {
        assert_eq!(
            judge(200, br#"{"login":"octocat"}"#, "t"),
            Outcome::Valid {
                identity: Some("octocat".into())
            }
        );
        assert_eq!(
            judge(200, br#"{"ok":true,"result":{"username":"my_bot"}}"#, "t"),
            Outcome::Valid {
                identity: Some("my_bot".into())
            }
        );
        assert_eq!(judge(204, b"", "t"), Outcome::Valid { identity: None });
        assert_eq!(
            judge(401, br#"{"message":"Bad credentials"}"#, "t"),
            Outcome::Rejected {
                status: 401,
                message: "Bad credentials".into()
            }
        );
        let Outcome::Unexpected { message, .. } =
            judge(500, b"oops secret-token here", "secret-token")
        else {
            panic!()
        };
        assert_eq!(message, "oops [redacted] here");
    }
}
