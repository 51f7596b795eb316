//! Keeping refreshable credentials fresh during a run.
//!
//! A [`LiveToken`] holds one credential. Before a connection to one of its
//! hosts is planned, the proxy asks it to be fresh: when its policy says it
//! is due, one refresh runs (concurrent askers wait for that one, so N
//! requests make one token-endpoint call), the new tokens are re-sealed in
//! the store, and every later plan injects the new access token. A failed
//! refresh keeps the old token, is reported, and is not retried for
//! [`RETRY_AFTER`] so a broken endpoint is not hammered.
//!
//! How a refresh gets the new token is the policy's [`Renew`]: an OAuth
//! refresh grant, Meta's `fb_exchange_token`, or re-running the command the
//! token came from (`gh auth token`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};

use crate::net::Upstream;
use crate::providers::oauth::{self, Policy, Renew};
use crate::store::Credential;

/// How long after a failed refresh the next attempt may be made.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Time, injectable so tests move it instead of sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where refresh requests go: `(status, body)` or a connection error.
pub trait TokenEndpoint: Send + Sync {
    fn post_form<'a>(
        &'a self,
        url: &'a str,
        form: &'a str,
    ) -> BoxFuture<'a, Result<(u16, Bytes), String>>;

    /// `GET url` (Meta's token exchange). The URL holds secrets: never log it.
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(u16, Bytes), String>> {
        let _ = url;
        Box::pin(async { Err("this endpoint does not make GET requests".to_owned()) })
    }
}

impl TokenEndpoint for Upstream {
    fn post_form<'a>(
        &'a self,
        url: &'a str,
        form: &'a str,
    ) -> BoxFuture<'a, Result<(u16, Bytes), String>> {
        Box::pin(async move {
            self.fetch(
                "POST",
                url,
                &[("content-type", "application/x-www-form-urlencoded")],
                Bytes::copy_from_slice(form.as_bytes()),
            )
            .await
            .map(|f| (f.status, f.body))
            .map_err(|e| e.to_string())
        })
    }

    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(u16, Bytes), String>> {
        Box::pin(async move {
            self.fetch("GET", url, &[], Bytes::new())
                .await
                .map(|f| (f.status, f.body))
                .map_err(|e| e.to_string())
        })
    }
}

/// Run `argv` on the host and take its trimmed stdout as the token. Errors
/// name the command and its exit status, never its output.
async fn run_source_command(argv: Vec<String>) -> Result<SecretString, String> {
    let shown = argv.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        let (program, args) = argv.split_first().ok_or("empty command")?;
        std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run it: {e}"))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    .map_err(|e| format!("'{shown}': {e}"))?;
    let text = zeroize::Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
    let token = text.trim();
    if !out.status.success() {
        return Err(format!(
            "'{shown}' failed ({}); is the tool still logged in?",
            out.status
        ));
    }
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{shown}' printed no single token"));
    }
    Ok(SecretString::from(token))
}

/// Where a refreshed credential is re-sealed.
pub trait Persist: Send + Sync {
    fn save(&self, cred: &Credential) -> Result<(), String>;
}

/// Re-seal into the store the credential was loaded from.
pub struct StorePersist {
    pub store: crate::store::Store,
    pub name: crate::store::CredName,
}

impl Persist for StorePersist {
    fn save(&self, cred: &Credential) -> Result<(), String> {
        self.store
            .put(&self.name, cred)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The last refresh failure, for the user and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub at: SystemTime,
    pub message: String,
}

pub struct LiveToken {
    name: String,
    policy: Policy,
    clock: Arc<dyn Clock>,
    persist: Arc<dyn Persist>,
    cred: RwLock<Credential>,
    /// Held while a refresh is in flight: the single flight.
    refreshing: tokio::sync::Mutex<()>,
    failure: Mutex<Option<Failure>>,
}

impl LiveToken {
    pub fn new(
        name: &str,
        cred: Credential,
        policy: Policy,
        clock: Arc<dyn Clock>,
        persist: Arc<dyn Persist>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            policy,
            clock,
            persist,
            cred: RwLock::new(cred),
            refreshing: tokio::sync::Mutex::new(()),
            failure: Mutex::new(None),
        }
    }

    /// The access token to inject now.
    pub fn token(&self) -> SecretString {
        self.cred
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .token
            .clone()
    }

    pub fn last_failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn due(&self) -> bool {
        let now = self.clock.now();
        if let Some(f) = self.last_failure()
            && now < f.at + RETRY_AFTER
        {
            return false;
        }
        self.policy
            .due(&self.cred.read().unwrap_or_else(|p| p.into_inner()), now)
    }

    /// Refresh when due. Concurrent callers share one refresh; failures keep
    /// the old token and are logged (never with a secret).
    pub async fn ensure_fresh(&self, endpoint: &dyn TokenEndpoint) {
        if !self.due() {
            return;
        }
        let _flight = self.refreshing.lock().await;
        // Someone else may have refreshed while we waited.
        if !self.due() {
            return;
        }
        match self.refresh(endpoint).await {
            Ok(()) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(grant = %self.name, "credential refreshed");
            }
            Err(message) => {
                tracing::warn!(grant = %self.name, "refresh failed, still using the current token: {message}");
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Failure {
                    at: self.clock.now(),
                    message,
                });
            }
        }
    }

    /// When the current access token expires, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.cred
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .expires_at
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    async fn refresh(&self, endpoint: &dyn TokenEndpoint) -> Result<(), String> {
        match &self.policy.how {
            Renew::RefreshToken => self.refresh_oauth(endpoint).await,
            Renew::FbExchange => {
                let (url, known) = {
                    let cred = self.cred.read().unwrap_or_else(|p| p.into_inner());
                    let url = crate::providers::builtin::meta::exchange_url(&cred)
                        .map_err(|e| e.to_string())?;
                    (url, known_secrets(&cred))
                };
                let (status, body) = endpoint.get(&url).await?;
                let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                let tokens =
                    oauth::parse_response(status, &body, &known).map_err(|e| e.to_string())?;
                self.store(|next, now| {
                    next.token = tokens.access_token;
                    // A token without expires_in (a system user's) never expires.
                    next.expires_at = tokens.expires_in.map(|d| now + d);
                    next.updated_at = now;
                })
            }
            Renew::Command(argv) => {
                let token = run_source_command(argv.clone()).await?;
                self.store(|next, now| {
                    next.token = token;
                    next.updated_at = now;
                })
            }
        }
    }

    /// Change a copy of the credential, re-seal it, then use it.
    fn store(&self, change: impl FnOnce(&mut Credential, SystemTime)) -> Result<(), String> {
        let now = self.clock.now();
        let mut next = {
            let cred = self.cred.read().unwrap_or_else(|p| p.into_inner());
            Credential::from_plaintext(&cred.to_plaintext()).map_err(|e| e.to_string())?
        };
        change(&mut next, now);
        let saved = self.persist.save(&next);
        *self.cred.write().unwrap_or_else(|p| p.into_inner()) = next;
        saved.map_err(|e| format!("refreshed, but saving the new token failed: {e}"))
    }

    async fn refresh_oauth(&self, endpoint: &dyn TokenEndpoint) -> Result<(), String> {
        let (req, known) = {
            let cred = self.cred.read().unwrap_or_else(|p| p.into_inner());
            let req = oauth::refresh_request(&cred).map_err(|e| e.to_string())?;
            (req, known_secrets(&cred))
        };
        let (status, body) = endpoint.post_form(&req.url, &req.form).await?;
        let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
        let tokens = oauth::parse_response(status, &body, &known).map_err(|e| e.to_string())?;
        // Sealed first: a token we could not keep is still used for this run,
        // but the failure to save is reported.
        self.store(|next, now| oauth::apply(next, tokens, now))
    }
}

/// The credential's secrets and token, for redaction from error messages.
fn known_secrets(cred: &Credential) -> Vec<zeroize::Zeroizing<String>> {
    cred.secrets
        .values()
        .chain(std::iter::once(&cred.token))
        .map(|s| zeroize::Zeroizing::new(s.expose_secret().to_owned()))
        .collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::store::Kind;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::UNIX_EPOCH;

    pub struct ManualClock(pub Mutex<SystemTime>);

    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }

    /// A token endpoint that counts calls, answers after a yield (so
    /// concurrent callers really overlap), and can be told to fail.
    struct Endpoint {
        calls: AtomicUsize,
        fail: Mutex<bool>,
    }

    impl TokenEndpoint for Endpoint {
        fn post_form<'a>(
            &'a self,
            _url: &'a str,
            form: &'a str,
        ) -> BoxFuture<'a, Result<(u16, Bytes), String>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(form.contains("refresh_token=rt-1"));
                if *self.fail.lock().unwrap() {
                    return Ok((400, Bytes::from_static(br#"{"error":"invalid_grant"}"#)));
                }
                Ok((
                    200,
                    Bytes::from(format!(r#"{{"access_token":"at-{n}","expires_in":3600}}"#)),
                ))
            })
        }
    }

    #[derive(Default)]
    struct Saved(Mutex<Vec<String>>);

    impl Persist for Saved {
        fn save(&self, cred: &Credential) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push(cred.token.expose_secret().to_owned());
            Ok(())
        }
    }

    fn setup(expires_in: u64) -> (Arc<ManualClock>, Arc<Saved>, Arc<LiveToken>, Endpoint) {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let mut c = Credential::new_static("oauth", SecretString::from("at-0"), "stdin");
        c.kind = Kind::Oauth;
        c.expires_at = Some(t0 + Duration::from_secs(expires_in));
        c.metadata
            .insert(oauth::TOKEN_URL.into(), "https://auth.test/token".into());
        c.secrets
            .insert(oauth::REFRESH_TOKEN.into(), SecretString::from("rt-1"));
        let saved = Arc::new(Saved::default());
        let live = Arc::new(LiveToken::new(
            "corp",
            c,
            Policy::OAUTH,
            clock.clone(),
            saved.clone(),
        ));
        let endpoint = Endpoint {
            calls: AtomicUsize::new(0),
            fail: Mutex::new(false),
        };
        (clock, saved, live, endpoint)
    }

    #[tokio::test]
    async fn refreshes_only_within_five_minutes_of_expiry() {
        let (clock, saved, live, endpoint) = setup(3600);
        live.ensure_fresh(&endpoint).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 0);
        clock.advance(Duration::from_secs(3600 - 301));
        live.ensure_fresh(&endpoint).await;
        assert_eq!(live.token().expose_secret(), "at-0");
        clock.advance(Duration::from_secs(1));
        live.ensure_fresh(&endpoint).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
        assert_eq!(live.token().expose_secret(), "at-1");
        assert_eq!(*saved.0.lock().unwrap(), ["at-1"]);
        // Fresh for another hour now.
        live.ensure_fresh(&endpoint).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_refresh() {
        let (_clock, _saved, live, endpoint) = setup(10);
        let endpoint = Arc::new(endpoint);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (live, endpoint) = (live.clone(), endpoint.clone());
                tokio::spawn(async move {
                    live.ensure_fresh(&*endpoint).await;
                    live.token().expose_secret().to_owned()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "at-1");
        }
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failure_keeps_the_old_token_reports_and_backs_off() {
        let (clock, saved, live, endpoint) = setup(10);
        *endpoint.fail.lock().unwrap() = true;
        live.ensure_fresh(&endpoint).await;
        assert_eq!(live.token().expose_secret(), "at-0");
        let f = live.last_failure().unwrap();
        assert!(
            f.message.contains("invalid_grant") && f.message.contains("400"),
            "{}",
            f.message
        );
        assert!(saved.0.lock().unwrap().is_empty());
        // No retry storm: the next attempt waits RETRY_AFTER.
        live.ensure_fresh(&endpoint).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
        *endpoint.fail.lock().unwrap() = false;
        clock.advance(RETRY_AFTER);
        live.ensure_fresh(&endpoint).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
        assert_eq!(live.token().expose_secret(), "at-2");
        assert!(live.last_failure().is_none());
    }

    /// Meta's Graph API exchange: counts calls, can be told to fail.
    struct Graph {
        calls: AtomicUsize,
        fail: Mutex<bool>,
    }

    impl TokenEndpoint for Graph {
        fn post_form<'a>(
            &'a self,
            _url: &'a str,
            _form: &'a str,
        ) -> BoxFuture<'a, Result<(u16, Bytes), String>> {
            Box::pin(async { Err("POST not expected".to_owned()) })
        }

        fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(u16, Bytes), String>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(url.contains("grant_type=fb_exchange_token&client_id=123"));
                if *self.fail.lock().unwrap() {
                    return Ok((
                        400,
                        Bytes::from_static(
                            br#"{"error":{"message":"Error validating client secret.","code":1}}"#,
                        ),
                    ));
                }
                Ok((
                    200,
                    Bytes::from(format!(
                        r#"{{"access_token":"EAAlong-{n}","expires_in":5184000}}"#
                    )),
                ))
            })
        }
    }

    #[tokio::test]
    async fn meta_exchanges_once_a_day_and_a_failure_keeps_the_token() {
        use crate::providers::builtin::meta;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let mut c = Credential::new_static("meta", SecretString::from("EAAshort"), "env");
        c.metadata.insert(meta::APP_ID.into(), "123".into());
        c.secrets
            .insert(meta::APP_SECRET.into(), SecretString::from("app-secret"));
        c.updated_at = t0;
        c.expires_at = Some(t0 + Duration::from_secs(60 * 86_400));
        let saved = Arc::new(Saved::default());
        let policy = meta::policy(&c).unwrap();
        let live = LiveToken::new("meta", c, policy, clock.clone(), saved.clone());
        let graph = Graph {
            calls: AtomicUsize::new(0),
            fail: Mutex::new(false),
        };
        clock.advance(meta::EXCHANGE_EVERY - Duration::from_secs(1));
        live.ensure_fresh(&graph).await;
        assert_eq!(graph.calls.load(Ordering::SeqCst), 0);
        clock.advance(Duration::from_secs(1));
        live.ensure_fresh(&graph).await;
        assert_eq!(live.token().expose_secret(), "EAAlong-1");
        assert_eq!(*saved.0.lock().unwrap(), ["EAAlong-1"]);
        // The next day the exchange fails: the token stays, the failure is
        // reported (never with the secret), retried after RETRY_AFTER.
        *graph.fail.lock().unwrap() = true;
        clock.advance(meta::EXCHANGE_EVERY);
        live.ensure_fresh(&graph).await;
        assert_eq!(live.token().expose_secret(), "EAAlong-1");
        let f = live.last_failure().unwrap();
        assert!(f.message.contains("client secret"), "{}", f.message);
        assert!(!f.message.contains("app-secret"), "{}", f.message);
        live.ensure_fresh(&graph).await;
        assert_eq!(graph.calls.load(Ordering::SeqCst), 2);
        *graph.fail.lock().unwrap() = false;
        clock.advance(RETRY_AFTER);
        live.ensure_fresh(&graph).await;
        assert_eq!(live.token().expose_secret(), "EAAlong-3");
        assert!(live.last_failure().is_none());
    }

    #[tokio::test]
    async fn gh_token_is_reread_every_30_minutes_and_a_failing_gh_keeps_it() {
        use crate::providers::Registry;
        use crate::providers::builtin::github;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("token");
        let gh = dir.path().join("gh");
        std::fs::write(
            &gh,
            format!(
                "#!/bin/sh\n[ \"$*\" = \"auth token\" ] || exit 3\ncat {} || exit 1\n",
                out.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&out, "gho_second\n").unwrap();

        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let mut c = Credential::new_static("github", SecretString::from("gho_first"), "gh");
        c.updated_at = t0;
        let reg = Registry::builtin_and_shipped();
        let mut policy = github::policy(reg.get("github").unwrap(), &c).unwrap();
        // The fake gh stands in for the one on PATH.
        policy.how = Renew::Command(vec![
            gh.display().to_string(),
            "auth".into(),
            "token".into(),
        ]);
        let saved = Arc::new(Saved::default());
        let live = LiveToken::new("github", c, policy, clock.clone(), saved.clone());
        let (_, _, _, endpoint) = setup(1);
        clock.advance(github::REREAD_EVERY - Duration::from_secs(1));
        live.ensure_fresh(&endpoint).await;
        assert_eq!(live.token().expose_secret(), "gho_first");
        clock.advance(Duration::from_secs(1));
        live.ensure_fresh(&endpoint).await;
        assert_eq!(live.token().expose_secret(), "gho_second");
        assert_eq!(*saved.0.lock().unwrap(), ["gho_second"]);
        // gh logged out: the token stays, the failure names the command.
        std::fs::remove_file(&out).unwrap();
        clock.advance(github::REREAD_EVERY);
        live.ensure_fresh(&endpoint).await;
        assert_eq!(live.token().expose_secret(), "gho_second");
        let f = live.last_failure().unwrap();
        assert!(
            f.message.contains("auth token") && f.message.contains("failed"),
            "{}",
            f.message
        );
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 0);
    }

    /// Gemini's OAuth mode through its real policy (from the registry): not
    /// refreshed at 15 minutes + 1 s before expiry, refreshed at 15 minutes;
    /// a refused refresh keeps the current token and is reported.
    #[tokio::test]
    async fn gemini_refreshes_15_minutes_before_expiry_and_a_failure_keeps_the_token() {
        use crate::providers::Registry;
        use crate::providers::builtin::gemini;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let mut c =
            Credential::new_static("gemini", SecretString::from("ya29.real-0"), "gemini-cli");
        c.kind = Kind::Oauth;
        c.updated_at = t0;
        c.expires_at = Some(t0 + Duration::from_secs(3600));
        c.metadata
            .insert(gemini::MODE.into(), gemini::MODE_OAUTH.into());
        c.metadata
            .insert(oauth::TOKEN_URL.into(), gemini::TOKEN_URL.into());
        c.secrets
            .insert(oauth::REFRESH_TOKEN.into(), SecretString::from("rt-1"));
        let reg = Registry::builtin_and_shipped();
        let policy = reg.get("gemini").unwrap().refresh_policy(&c).unwrap();
        let saved = Arc::new(Saved::default());
        let live = LiveToken::new("gemini", c, policy, clock.clone(), saved.clone());
        let (_, _, _, endpoint) = setup(1);

        clock.advance(Duration::from_secs(3600 - 15 * 60 - 1));
        live.ensure_fresh(&endpoint).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 0);
        assert_eq!(live.token().expose_secret(), "ya29.real-0");
        clock.advance(Duration::from_secs(1));
        live.ensure_fresh(&endpoint).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
        assert_eq!(live.token().expose_secret(), "at-1");
        assert_eq!(*saved.0.lock().unwrap(), ["at-1"]);

        // The refresh token is revoked: at-1 stays in use, the failure is
        // reported, nothing is re-sealed.
        *endpoint.fail.lock().unwrap() = true;
        clock.advance(Duration::from_secs(3600 - 15 * 60));
        live.ensure_fresh(&endpoint).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
        assert_eq!(live.token().expose_secret(), "at-1");
        let f = live.last_failure().unwrap();
        assert!(f.message.contains("invalid_grant"), "{}", f.message);
        assert!(!f.message.contains("rt-1"), "{}", f.message);
        assert_eq!(*saved.0.lock().unwrap(), ["at-1"]);
    }

    /// Providers whose tokens do not refresh get no policy, whatever the
    /// credential says about expiry.
    #[test]
    fn static_credentials_have_no_refresh_policy() {
        use crate::providers::Registry;
        let reg = Registry::builtin_and_shipped();
        let soon = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cases: Vec<(&str, Credential)> = vec![
            ("claude", {
                // Imported from Claude Code: has an expiry, never refreshed.
                let mut c = Credential::new_static(
                    "claude",
                    SecretString::from("sk-ant-oat01-x"),
                    "claude-code",
                );
                c.kind = Kind::Oauth;
                c.expires_at = Some(soon);
                c
            }),
            (
                "anthropic",
                Credential::new_static(
                    "anthropic",
                    SecretString::from("sk-ant-api03-x"),
                    "env:ANTHROPIC_API_KEY",
                ),
            ),
            (
                "openai",
                Credential::new_static("openai", SecretString::from("sk-x"), "env:OPENAI_API_KEY"),
            ),
            (
                "graphite",
                Credential::new_static("graphite", SecretString::from("gt"), "env:GRAPHITE_TOKEN"),
            ),
            (
                "npm",
                Credential::new_static("npm", SecretString::from("npm_x"), "npmrc"),
            ),
            (
                "mcp",
                Credential::new_static("mcp", SecretString::from("k"), "stdin"),
            ),
            (
                "gemini",
                Credential::new_static("gemini", SecretString::from("AIzaX"), "env:GEMINI_API_KEY"),
            ),
            (
                "github",
                Credential::new_static("github", SecretString::from("ghp_x"), "env:GITHUB_TOKEN"),
            ),
            (
                "meta",
                Credential::new_static("meta", SecretString::from("EAAx"), "env:META_ACCESS_TOKEN"),
            ),
        ];
        for (name, cred) in cases {
            let p = reg.get(name).unwrap();
            assert!(p.refresh_policy(&cred).is_none(), "{name}");
        }
    }
}
