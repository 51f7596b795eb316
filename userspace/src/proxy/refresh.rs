//! Keeping refreshable credentials fresh during a run.
//!
//! A [`LiveToken`] holds one credential. Before a connection to one of its
//! hosts is planned, the proxy asks it to be fresh: when its policy says it
//! is due, one refresh runs (concurrent askers wait for that one, so N
//! requests make one token-endpoint call), the new tokens are re-sealed in
//! the store, and every later plan injects the new access token. A failed
//! refresh keeps the old token, is reported, and is not retried for
//! [`RETRY_AFTER`] so a broken endpoint is not hammered.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};

use crate::net::Upstream;
use crate::providers::oauth::{self, Policy};
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

    async fn refresh(&self, endpoint: &dyn TokenEndpoint) -> Result<(), String> {
        let (req, known) = {
            let cred = self.cred.read().unwrap_or_else(|p| p.into_inner());
            let req = oauth::refresh_request(&cred).map_err(|e| e.to_string())?;
            let known: Vec<zeroize::Zeroizing<String>> = cred
                .secrets
                .values()
                .map(|s| zeroize::Zeroizing::new(s.expose_secret().to_owned()))
                .collect();
            (req, known)
        };
        let (status, body) = endpoint.post_form(&req.url, &req.form).await?;
        let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
        let tokens = oauth::parse_response(status, &body, &known).map_err(|e| e.to_string())?;
        let now = self.clock.now();
        let mut next = {
            let cred = self.cred.read().unwrap_or_else(|p| p.into_inner());
            Credential::from_plaintext(&cred.to_plaintext()).map_err(|e| e.to_string())?
        };
        oauth::apply(&mut next, tokens, now);
        // Sealed first: a token we could not keep is still used for this run,
        // but the failure to save is reported.
        let saved = self.persist.save(&next);
        *self.cred.write().unwrap_or_else(|p| p.into_inner()) = next;
        saved.map_err(|e| format!("refreshed, but saving the new token failed: {e}"))
    }
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
}
