//! The per-run injection table: host pattern → what to put on the wire.
//! Pure: built from grants, asked per connection for a [`Plan`]. A grant
//! whose requests Moat answers itself gets a [`Responder`] (used by
//! [`local`](super::local)).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::refresh::{LiveToken, TokenEndpoint};
use super::substitute::Substitutions;
use crate::providers::builtin::gemini::oauth_placeholders;
use crate::providers::{self, HostPattern, Injection, LocalAnswer, Provider};

/// A credential made available to one run or proxy.
pub struct Grant {
    /// Credential name (`github`, `mcp-context7`).
    pub name: String,
    pub provider: Provider,
    pub token: SecretString,
    /// What the sandbox holds instead of the token (token substitution and
    /// response substitution need it).
    pub placeholder: Option<String>,
    /// For refreshable credentials: the live token, injected instead of
    /// `token` once refreshed.
    pub live: Option<Arc<LiveToken>>,
    /// For `aws`: the role session (credential_process or SigV4 re-signing).
    pub aws: Option<Arc<crate::aws::Session>>,
}

#[derive(Debug, thiserror::Error)]
#[error("grant '{grant}': {reason}")]
pub struct TableError {
    pub grant: String,
    pub reason: String,
}

struct HeaderRule {
    pattern: HostPattern,
    name: HeaderName,
    value: RuleValue,
    grant: Arc<str>,
    /// What the sandbox sees in place of this credential ([`stand_in`]).
    placeholder: Arc<str>,
    /// For a static value: its [`reflect_pairs`], compiled once (`None`
    /// when it carries no token).
    reflect: Option<Arc<Substitutions>>,
    /// A list item ([`providers::HeaderValue::Fixed`]): added to the
    /// client's comma-separated value, not replacing it.
    list: bool,
}

/// Tokens shorter than this are not looked for in responses: they would
/// match ordinary bytes.
const MIN_REFLECTED: usize = 8;

/// What replaces `token` in a response when its grant has no placeholder:
/// as long as the token (so lengths do not change), and plainly Moat's.
fn stand_in(token: &str) -> String {
    "moat-redacted-".chars().cycle().take(token.len()).collect()
}

/// Real → placeholder pairs for a header value carrying `token`: the token
/// itself and, for Basic, the base64 form the header carries.
fn reflect_pairs(
    how: &providers::HeaderValue,
    token: &str,
    placeholder: &str,
) -> Vec<(Vec<u8>, Zeroizing<Vec<u8>>)> {
    if token.len() < MIN_REFLECTED {
        return Vec::new();
    }
    let mut pairs = Vec::new();
    match how {
        providers::HeaderValue::Fixed(_) => return pairs,
        providers::HeaderValue::Prefixed(_) => {}
        providers::HeaderValue::Basic { user } => {
            let real = Zeroizing::new(format!("{user}:{token}"));
            pairs.push((
                B64.encode(real.as_bytes()).into_bytes(),
                Zeroizing::new(B64.encode(format!("{user}:{placeholder}")).into_bytes()),
            ));
        }
    }
    pairs.push((
        token.as_bytes().to_vec(),
        Zeroizing::new(placeholder.as_bytes().to_vec()),
    ));
    pairs
}

#[derive(Clone)]
enum RuleValue {
    Static(HeaderValue),
    /// Rendered from the live token when a connection is planned.
    Live {
        live: Arc<LiveToken>,
        render: providers::HeaderValue,
    },
}

/// The value of a comma-separated header (`anthropic-beta`) with `item`
/// added, from the client's `values`; `None` when it has the item already.
pub fn with_list_item<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    item: &HeaderValue,
) -> Option<HeaderValue> {
    let want = item.to_str().ok()?;
    let mut list: Vec<&str> = Vec::new();
    for v in values {
        let v = v.to_str().ok()?;
        list.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty()));
    }
    if list.contains(&want) {
        return None;
    }
    list.push(want);
    HeaderValue::from_str(&list.join(",")).ok()
}

/// The header value for `token`, marked sensitive so nothing logs it.
fn render(value: &providers::HeaderValue, token: &str) -> Option<HeaderValue> {
    let text = Zeroizing::new(match value {
        providers::HeaderValue::Prefixed(prefix) => format!("{prefix}{token}"),
        providers::HeaderValue::Basic { user } => {
            format!("Basic {}", B64.encode(format!("{user}:{token}")))
        }
        providers::HeaderValue::Fixed(value) => value.clone(),
    });
    let mut value = HeaderValue::from_str(&text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

struct SubstRule {
    pattern: HostPattern,
    pairs: Vec<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    grant: Arc<str>,
}

/// Answers one grant's local requests (see [`local`](super::local)).
pub struct Responder {
    pub(super) grant: Arc<str>,
    pub(super) answer: LocalAnswer,
    pub(super) access_placeholder: String,
    pub(super) refresh_placeholder: String,
    /// The token as loaded; `live`, when there is one, has the current one.
    token: SecretString,
    pub(super) live: Option<Arc<LiveToken>>,
}

impl Responder {
    /// `placeholder` is the grant's placeholder (what the sandbox files
    /// were derived from).
    pub fn new(
        grant: Arc<str>,
        answer: LocalAnswer,
        placeholder: &str,
        token: SecretString,
        live: Option<Arc<LiveToken>>,
    ) -> Self {
        let (access_placeholder, refresh_placeholder) = match &answer {
            LocalAnswer::GoogleOauth { .. } => oauth_placeholders(placeholder),
        };
        Self {
            grant,
            answer,
            access_placeholder,
            refresh_placeholder,
            token,
            live,
        }
    }

    pub fn grant(&self) -> &Arc<str> {
        &self.grant
    }

    pub(super) fn current(&self) -> SecretString {
        match &self.live {
            Some(l) => l.token(),
            None => self.token.clone(),
        }
    }
}

struct LocalRule {
    pattern: HostPattern,
    responder: Arc<Responder>,
}

/// What to do for one destination.
#[derive(Default)]
pub struct Plan {
    /// Headers to set, replacing any the client sent (values are sensitive).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Items added to a comma-separated header unless the client's value
    /// has them (Claude's OAuth beta flag beside Claude Code's own betas).
    pub list_items: Vec<(HeaderName, HeaderValue)>,
    /// Placeholder → token, in the URL, headers and body.
    pub request_subst: Option<Arc<Substitutions>>,
    /// Token → placeholder, in response headers and body.
    pub response_subst: Option<Arc<Substitutions>>,
    /// Every credential this plan puts on the wire (header values, the
    /// tokens substituted in) → its placeholder, with `response_subst`'s
    /// pairs: applied to a response whose request carried a credential, so
    /// an upstream that echoes the request does not hand the token back.
    pub reflect: Option<Arc<Substitutions>>,
    /// Names of the grants that apply (for the audit log; never values).
    pub grants: Vec<Arc<str>>,
    /// Requests Moat answers itself (see `proxy::local`).
    pub local: Option<Arc<Responder>>,
    /// AWS requests signed with the placeholder key are re-signed with
    /// this session's credentials (see `proxy::sigv4`).
    pub sigv4: Option<Arc<crate::aws::Session>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Plan")
            .field("headers", &headers)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.list_items.is_empty()
            && self.request_subst.is_none()
            && self.response_subst.is_none()
            && self.local.is_none()
            && self.sigv4.is_none()
    }
}

#[derive(Default)]
pub struct InjectionTable {
    headers: Vec<HeaderRule>,
    request: Vec<SubstRule>,
    response: Vec<SubstRule>,
    local: Vec<LocalRule>,
    /// Every AWS grant's session (the self host serves credential_process).
    aws: Vec<Arc<crate::aws::Session>>,
    /// Hosts whose requests SigV4-mode sessions re-sign.
    sigv4: Vec<(HostPattern, Arc<crate::aws::Session>)>,
    /// Every AWS grant's hosts: intercepted (and so recorded request by
    /// request) in credential_process mode too, though nothing is injected.
    aws_hosts: Vec<HostPattern>,
}

impl InjectionTable {
    pub fn build(grants: &[Grant]) -> Result<Self, TableError> {
        let mut t = Self::default();
        for g in grants {
            let grant: Arc<str> = Arc::from(g.name.as_str());
            let err = |reason: String| TableError {
                grant: g.name.clone(),
                reason,
            };
            let token = g.token.expose_secret();
            match &g.provider.injection {
                Injection::Headers(rules) => {
                    for rule in rules {
                        let name =
                            HeaderName::from_bytes(rule.header.as_bytes()).map_err(|_| {
                                err(format!("'{}' is not a valid header name", rule.header))
                            })?;
                        let value = render(&rule.value, token).ok_or_else(|| {
                            err(
                                "the token cannot be sent in an HTTP header (invalid characters)"
                                    .into(),
                            )
                        })?;
                        let placeholder: Arc<str> = g
                            .placeholder
                            .clone()
                            .unwrap_or_else(|| stand_in(token))
                            .into();
                        let reflect =
                            Substitutions::new(reflect_pairs(&rule.value, token, &placeholder))
                                .map(Arc::new);
                        let value = match (&g.live, &rule.value) {
                            (
                                Some(live),
                                providers::HeaderValue::Prefixed(_)
                                | providers::HeaderValue::Basic { .. },
                            ) => RuleValue::Live {
                                live: live.clone(),
                                render: rule.value.clone(),
                            },
                            _ => RuleValue::Static(value),
                        };
                        for pattern in &rule.hosts {
                            t.headers.push(HeaderRule {
                                pattern: pattern.clone(),
                                name: name.clone(),
                                value: value.clone(),
                                grant: grant.clone(),
                                placeholder: placeholder.clone(),
                                reflect: reflect.clone(),
                                list: matches!(rule.value, providers::HeaderValue::Fixed(_)),
                            });
                        }
                    }
                }
                Injection::Substitute => {
                    let placeholder = g
                        .placeholder
                        .as_ref()
                        .ok_or_else(|| err("token substitution needs a placeholder".into()))?;
                    for pattern in &g.provider.hosts {
                        t.request.push(SubstRule {
                            pattern: pattern.clone(),
                            pairs: vec![(
                                placeholder.as_bytes().to_vec(),
                                Zeroizing::new(token.as_bytes().to_vec()),
                            )],
                            grant: grant.clone(),
                        });
                    }
                }
                Injection::Special(_) => {}
            }
            if let Some(aws) = &g.aws {
                t.aws.push(aws.clone());
                t.aws_hosts.extend(g.provider.hosts.iter().cloned());
                if aws.inject() == crate::aws::Inject::Sigv4 {
                    for pattern in &g.provider.hosts {
                        t.sigv4.push((pattern.clone(), aws.clone()));
                    }
                }
            }
            if let Some(local) = &g.provider.local {
                let placeholder = g
                    .placeholder
                    .as_ref()
                    .ok_or_else(|| err("answering requests locally needs a placeholder".into()))?;
                let responder = Arc::new(Responder::new(
                    grant.clone(),
                    local.answer.clone(),
                    placeholder,
                    g.token.clone(),
                    g.live.clone(),
                ));
                for pattern in &local.hosts {
                    t.local.push(LocalRule {
                        pattern: pattern.clone(),
                        responder: responder.clone(),
                    });
                }
            }
            if let Some(placeholder) = &g.placeholder {
                for pattern in &g.provider.response_hosts {
                    t.response.push(SubstRule {
                        pattern: pattern.clone(),
                        pairs: vec![(
                            token.as_bytes().to_vec(),
                            Zeroizing::new(placeholder.as_bytes().to_vec()),
                        )],
                        grant: grant.clone(),
                    });
                }
            }
        }
        // Most specific pattern first: it wins a header both would set.
        t.headers
            .sort_by_key(|r| std::cmp::Reverse(r.pattern.specificity()));
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.request.is_empty()
            && self.response.is_empty()
            && self.local.is_empty()
            && self.aws.is_empty()
    }

    /// The AWS grants' sessions.
    pub fn aws_sessions(&self) -> impl Iterator<Item = &Arc<crate::aws::Session>> {
        self.aws.iter()
    }

    /// Does any grant apply to `host:port`? (Decides intercept vs splice.)
    pub fn covers(&self, host: &str, port: u16) -> bool {
        self.headers.iter().any(|r| r.pattern.matches(host, port))
            || self.request.iter().any(|r| r.pattern.matches(host, port))
            || self.response.iter().any(|r| r.pattern.matches(host, port))
            || self.local.iter().any(|r| r.pattern.matches(host, port))
            || self.aws_hosts.iter().any(|p| p.matches(host, port))
    }

    /// Refresh, where due, the refreshable credentials that apply to
    /// `host:port`, so the plan made next carries fresh tokens.
    pub async fn refresh_for(&self, host: &str, port: u16, endpoint: &dyn TokenEndpoint) {
        let mut seen: Vec<&Arc<LiveToken>> = Vec::new();
        for r in self
            .headers
            .iter()
            .filter(|r| r.pattern.matches(host, port))
        {
            if let RuleValue::Live { live, .. } = &r.value
                && !seen.iter().any(|s| Arc::ptr_eq(s, live))
            {
                seen.push(live);
            }
        }
        for live in seen {
            live.ensure_fresh(endpoint).await;
        }
    }

    pub fn plan(&self, host: &str, port: u16) -> Plan {
        let mut plan = Plan::default();
        let mut note = |grant: &Arc<str>| {
            if !plan.grants.iter().any(|g| g == grant) {
                plan.grants.push(grant.clone());
            }
        };
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        // The reflected pairs: compiled ones (static values), and pairs to
        // compile (live tokens, substitutions).
        let mut compiled: Vec<&Arc<Substitutions>> = Vec::new();
        let mut reflect_pairs_live = Vec::new();
        for r in self
            .headers
            .iter()
            .filter(|r| r.pattern.matches(host, port))
        {
            if headers.iter().any(|(n, _)| n == r.name) {
                continue;
            }
            if r.list {
                if let RuleValue::Static(v) = &r.value
                    && !plan.list_items.iter().any(|(n, _)| *n == r.name)
                {
                    plan.list_items.push((r.name.clone(), v.clone()));
                    note(&r.grant);
                }
                continue;
            }
            let value = match &r.value {
                RuleValue::Static(v) => {
                    compiled.extend(&r.reflect);
                    Some(v.clone())
                }
                RuleValue::Live { live, render: how } => {
                    let token = live.token();
                    reflect_pairs_live.extend(reflect_pairs(
                        how,
                        token.expose_secret(),
                        &r.placeholder,
                    ));
                    render(how, token.expose_secret())
                }
            };
            match value {
                Some(v) => {
                    headers.push((r.name.clone(), v));
                    note(&r.grant);
                }
                None => {
                    tracing::warn!(grant = %r.grant, "the refreshed token cannot be sent in an HTTP header; not injected")
                }
            }
        }
        let mut collect = |rules: &[SubstRule]| {
            let mut pairs = Vec::new();
            for r in rules.iter().filter(|r| r.pattern.matches(host, port)) {
                note(&r.grant);
                pairs.extend(r.pairs.iter().map(|(a, b)| (a.clone(), b.clone())));
            }
            pairs
        };
        let request_pairs = collect(&self.request);
        let response_pairs = collect(&self.response);
        // Substituted tokens go back to their placeholders.
        let substituted = request_pairs
            .iter()
            .filter(|(_, token)| token.len() >= MIN_REFLECTED)
            .map(|(ph, token)| ((**token).clone(), Zeroizing::new(ph.clone())));
        let mut pairs: Vec<_> = response_pairs.clone();
        pairs.extend(substituted);
        pairs.extend(reflect_pairs_live);
        plan.reflect = match (&compiled[..], pairs.is_empty()) {
            // One static credential (the common case): compiled once.
            ([one], true) => Some(Arc::clone(one)),
            _ => {
                for s in &compiled {
                    pairs.extend(s.pairs());
                }
                Substitutions::new(pairs).map(Arc::new)
            }
        };
        let request_subst = Substitutions::new(request_pairs).map(Arc::new);
        let response_subst = Substitutions::new(response_pairs).map(Arc::new);
        plan.local = self
            .local
            .iter()
            .find(|r| r.pattern.matches(host, port))
            .map(|r| r.responder.clone());
        if let Some(r) = &plan.local
            && !plan.grants.iter().any(|g| g == r.grant())
        {
            plan.grants.push(r.grant().clone());
        }
        plan.sigv4 = self
            .sigv4
            .iter()
            .find(|(p, _)| p.matches(host, port))
            .map(|(_, s)| s.clone());
        if let Some(s) = &plan.sigv4
            && !plan.grants.iter().any(|g| **g == *s.grant)
        {
            plan.grants.push(Arc::from(s.grant.as_str()));
        }
        plan.headers = headers;
        plan.request_subst = request_subst;
        plan.response_subst = response_subst;
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Registry;

    fn grant(reg: &Registry, provider: &str, token: &str, placeholder: Option<&str>) -> Grant {
        Grant {
            name: provider.to_owned(),
            provider: reg.get(provider).unwrap().clone(),
            token: SecretString::from(token),
            placeholder: placeholder.map(str::to_owned),
            live: None,
            aws: None,
        }
    }

    fn header(plan: &Plan, name: &str) -> Option<String> {
        plan.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn github_bearer_on_api_basic_on_git_none_elsewhere() {
        let reg = Registry::builtin_and_shipped();
        let t = InjectionTable::build(&[grant(&reg, "github", "ghp_real", None)]).unwrap();
        assert_eq!(
            header(&t.plan("api.github.com", 443), "authorization").unwrap(),
            "Bearer ghp_real"
        );
        // base64("x-access-token:ghp_real")
        assert_eq!(
            header(&t.plan("github.com", 443), "authorization").unwrap(),
            "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX3JlYWw="
        );
        assert!(t.plan("gist.github.com", 443).is_empty());
        assert!(!t.covers("example.com", 443));
        assert!(t.plan("api.github.com", 443).headers[0].1.is_sensitive());
    }

    #[test]
    fn wildcard_and_most_specific_wins() {
        let reg = Registry::builtin_and_shipped();
        let mut narrow = grant(&reg, "openai", "sk-narrow", None);
        narrow.name = "narrow".into();
        if let Injection::Headers(rules) = &mut narrow.provider.injection {
            rules[0].hosts = vec![HostPattern::parse("files.openai.com").unwrap()];
        }
        let wide = grant(&reg, "openai", "sk-wide", None);
        let t = InjectionTable::build(&[wide, narrow]).unwrap();
        // Exact beats the wildcard, whatever the grant order.
        let files = t.plan("files.openai.com", 443);
        assert_eq!(header(&files, "authorization").unwrap(), "Bearer sk-narrow");
        assert_eq!(files.grants, [Arc::<str>::from("narrow")]);
        assert_eq!(
            header(&t.plan("uploads.openai.com", 443), "authorization").unwrap(),
            "Bearer sk-wide"
        );
        assert_eq!(
            header(&t.plan("api.openai.com", 443), "authorization").unwrap(),
            "Bearer sk-wide"
        );
        assert!(t.plan("openai.com", 443).is_empty());
    }

    #[test]
    fn several_grants_on_one_host_each_set_their_header() {
        let reg = Registry::builtin_and_shipped();
        let t = InjectionTable::build(&[
            grant(&reg, "claude", "sk-ant-oat01-x", None),
            grant(&reg, "anthropic", "sk-ant-api03-y", None),
        ])
        .unwrap();
        let plan = t.plan("api.anthropic.com", 443);
        assert_eq!(
            header(&plan, "authorization").unwrap(),
            "Bearer sk-ant-oat01-x"
        );
        assert_eq!(header(&plan, "x-api-key").unwrap(), "sk-ant-api03-y");
        assert_eq!(header(&plan, "anthropic-beta"), None, "added, not replaced");
        let (name, item) = &plan.list_items[0];
        assert_eq!(
            (name.as_str(), item.to_str().unwrap()),
            ("anthropic-beta", "oauth-2025-04-20")
        );
        assert_eq!(plan.grants.len(), 2);
    }

    #[test]
    fn a_list_item_joins_the_clients_list_once() {
        let item = HeaderValue::from_static("oauth-2025-04-20");
        let client = [
            HeaderValue::from_static("claude-code-20250219, context-management-2025-06-27"),
            HeaderValue::from_static("effort-2025-11-24"),
        ];
        assert_eq!(
            with_list_item(client.iter(), &item).unwrap(),
            "claude-code-20250219,context-management-2025-06-27,effort-2025-11-24,oauth-2025-04-20"
        );
        let has = [HeaderValue::from_static(
            "claude-code-20250219,oauth-2025-04-20",
        )];
        assert_eq!(with_list_item(has.iter(), &item), None);
        assert_eq!(
            with_list_item([].iter(), &item).unwrap(),
            "oauth-2025-04-20"
        );
    }

    #[test]
    fn substitution_and_response_rules() {
        let reg = Registry::builtin_and_shipped();
        let mut tg = grant(&reg, "telegram", "123:REAL", Some("moat-abc"));
        tg.provider.response_hosts = vec![HostPattern::parse("oauth.telegram.test").unwrap()];
        let t = InjectionTable::build(&[tg]).unwrap();
        let plan = t.plan("api.telegram.org", 443);
        assert!(plan.headers.is_empty());
        let subs = plan.request_subst.unwrap();
        assert_eq!(
            subs.apply_str("/botmoat-abc/getMe").unwrap(),
            "/bot123:REAL/getMe"
        );
        let resp = t.plan("oauth.telegram.test", 443).response_subst.unwrap();
        assert_eq!(
            resp.apply(b"{\"access_token\":\"123:REAL\"}").unwrap(),
            b"{\"access_token\":\"moat-abc\"}"
        );
        assert!(t.covers("oauth.telegram.test", 443));
    }

    #[test]
    fn debug_never_shows_values() {
        let reg = Registry::builtin_and_shipped();
        let t = InjectionTable::build(&[grant(&reg, "github", "ghp_secretvalue", None)]).unwrap();
        let dbg = format!("{:?}", t.plan("api.github.com", 443));
        assert!(!dbg.contains("ghp_secretvalue"), "{dbg}");
    }
}
