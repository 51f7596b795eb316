//! The credential-injecting TLS proxy engine.
//!
//! Two front doors feed one engine: *transparent* (connections redirected to
//! a listener; the original destination comes from
//! [`OriginalDst`](crate::net::orig_dst::OriginalDst)) and
//! *explicit* (an HTTP proxy with a per-run password). Either way the first
//! bytes are sniffed: a TLS ClientHello for a host with a grant is
//! terminated with a leaf from the Moat CA, the HTTP inside is forwarded with
//! credentials injected; anything else is spliced to its destination.

pub mod ca;
pub mod guard;
mod h1;
pub mod http;
pub mod inject;
pub mod io;
pub mod local;
pub mod path;
pub mod peek;
pub mod refresh;
pub mod rules;
pub mod selfhost;
pub mod server;
pub mod sigv4;
pub mod substitute;
pub mod target;
pub mod upstream;

use std::sync::{Arc, RwLock};

pub use crate::net::runtime::{ProxyRuntime, runtime};
pub use ca::MoatCa;
pub use guard::Guard;
pub use inject::{Grant, InjectionTable};

use crate::events::Events;
use crate::net::{ConnectGuard, NetError, Upstream};
use crate::providers::HostPattern;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Table(#[from] inject::TableError),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// What the proxy may do beyond injecting for granted hosts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Hosts never intercepted, even with a grant (clients that pin
    /// certificates): spliced, never injected.
    pub no_intercept: Vec<HostPattern>,
    /// Hosts allowed to reach restricted addresses (the host's loopback, a
    /// local dev server). Link-local metadata needs an explicit entry too.
    pub allow_restricted: Vec<HostPattern>,
    /// Terminate TLS for every host (not only granted ones), so requests can
    /// be inspected and logged; hosts without a grant get nothing injected.
    /// Clients must trust the Moat CA for every host then.
    pub inspect_all: bool,
    /// `moat.yaml` `network:`: strict/permissive and per-host rules.
    pub network: rules::NetworkPolicy,
}

/// Limits that keep one run from exhausting the host.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// How long an upstream may take to send its response head (LLM APIs
    /// can think for minutes before answering a non-streaming request).
    pub response_timeout: std::time::Duration,
    /// An upstream that sends nothing for this long is cut off (a stalled
    /// body, a dead peer). Generous, so quiet long-polls and streams survive.
    pub idle_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
            response_timeout: std::time::Duration::from_secs(300),
            idle_timeout: std::time::Duration::from_secs(15 * 60),
        }
    }
}

/// The guard as the connector sees it; listeners are added once bound.
struct SharedGuard(RwLock<Guard>);

impl ConnectGuard for SharedGuard {
    fn check(&self, host: &str, port: u16, addr: std::net::SocketAddr) -> Result<(), String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .check(host, port, addr)
            .map_err(|d| d.to_string())
    }
}

/// 32 random bytes, hex.
fn random_token() -> secrecy::SecretString {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source works");
    secrecy::SecretString::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// One run's proxy: CA, injection table, policy, upstream pool.
pub struct Engine {
    ca: Arc<MoatCa>,
    table: InjectionTable,
    policy: Policy,
    limits: Limits,
    upstream: Arc<Upstream>,
    pool: Arc<upstream::Pool>,
    guard: Arc<SharedGuard>,
    connections: Arc<tokio::sync::Semaphore>,
    events: std::sync::OnceLock<Events>,
    /// With `ssh:` grants: where spliced SSH connections' server host keys
    /// are recorded, for the run's SSH agent (`crate::ssh`).
    ssh_host_keys: std::sync::OnceLock<Arc<crate::ssh::HostKeys>>,
    /// Authenticates the sandbox to [`selfhost`] (random per engine).
    self_token: secrecy::SecretString,
}

impl Engine {
    /// `upstream` carries `MOAT_RESOLVE`, `MOAT_UPSTREAM_CA` and the host's
    /// proxy settings; the engine adds its safety guard to it.
    pub fn new(
        ca: Arc<MoatCa>,
        grants: &[Grant],
        upstream: Upstream,
        policy: Policy,
        limits: Limits,
    ) -> Result<Arc<Self>, ProxyError> {
        let table = InjectionTable::build(grants)?;
        let guard = Arc::new(SharedGuard(RwLock::new(Guard::for_this_host(
            policy.allow_restricted.clone(),
        ))));
        let upstream = Arc::new(upstream.with_guard(guard.clone()));
        let pool = upstream::Pool::new(upstream.clone(), limits.idle_timeout);
        let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        Ok(Arc::new(Self {
            ca,
            table,
            policy,
            limits,
            upstream,
            pool,
            guard,
            connections,
            events: std::sync::OnceLock::new(),
            ssh_host_keys: std::sync::OnceLock::new(),
            self_token: random_token(),
        }))
    }

    /// Tell the loop guard about a listening socket of ours.
    pub fn add_listener(&self, addr: std::net::SocketAddr) {
        self.guard
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .add_listener(addr);
    }

    /// Record connections, injections and denials here (once; later calls
    /// are ignored).
    pub fn set_events(&self, events: Events) {
        let _ = self.events.set(events);
    }

    /// Record the server host key of every spliced SSH connection in
    /// `keys` (once; later calls are ignored).
    pub fn watch_ssh(&self, keys: Arc<crate::ssh::HostKeys>) {
        let _ = self.ssh_host_keys.set(keys);
    }

    /// Record `event` in the run's events; `fields` is only built when the
    /// run records events (`moat proxy` does not).
    fn emit(&self, event: &str, fields: impl FnOnce() -> serde_json::Value) {
        if let Some(events) = self.events.get().filter(|e| e.is_enabled()) {
            events.emit(event, fields());
        }
    }

    /// [`Self::emit`] for events written once per request: `fields` is a
    /// struct serialized straight into the line.
    fn emit_fields<T: serde::Serialize>(&self, event: &str, fields: impl FnOnce() -> T) {
        if let Some(events) = self.events.get().filter(|e| e.is_enabled()) {
            events.emit_fields(event, &fields());
        }
    }

    /// The token the sandbox presents to `moat.internal` ([`selfhost`]).
    pub fn self_token(&self) -> &secrecy::SecretString {
        &self.self_token
    }

    pub fn ca(&self) -> &MoatCa {
        &self.ca
    }

    /// The network policy's word on a connection to `host:port`: `None` to
    /// allow, or why it is denied (recorded as a `deny` event).
    fn denied(&self, host: &str, port: u16) -> Option<target::Refusal> {
        let granted = self.table.covers(host, port);
        match self.policy.network.connection(host, port, granted) {
            rules::Verdict::Allow => None,
            rules::Verdict::Deny(reason) => {
                self.emit(
                    "deny",
                    || serde_json::json!({"host": host, "port": port, "reason": reason}),
                );
                Some(target::Refusal::forbidden(reason))
            }
        }
    }

    /// Record an upstream connection the safety guard refused (loopback,
    /// link-local metadata, the proxy itself) as a `deny` event; other
    /// connection failures are logged only.
    fn note_refusal(&self, host: &str, port: u16, net: &NetError) {
        match net {
            NetError::Denied { reason, .. } => {
                tracing::info!(%host, port, "refused: {reason}");
                self.emit(
                    "deny",
                    || serde_json::json!({"host": host, "port": port, "reason": net.to_string()}),
                );
            }
            _ => tracing::info!(%host, port, "{net}"),
        }
    }

    /// Intercept (terminate TLS) for this destination?
    fn intercepts(&self, host: &str, port: u16) -> bool {
        (self.policy.inspect_all
            || self.table.covers(host, port)
            || self.policy.network.inspects(host, port))
            && !self
                .policy
                .no_intercept
                .iter()
                .any(|p| p.matches(host, port))
    }
}
