//! Moat's SSH agent for one run, served on a socket only the sandbox can
//! reach, forwarding to the host's agent (`SSH_AUTH_SOCK`) what the grants
//! allow:
//!
//! - listing returns only the host agent's keys granted for some host of
//!   the run;
//! - signing works only with those keys, only for an SSH login
//!   ([`wire::userauth`]: no file or arbitrary-data signatures), and, on a
//!   connection that sent `session-bind@openssh.com`, only for that session
//!   and only when the bound server host key is one the proxy saw on a
//!   connection to a host the key is granted for ([`check_sign`]);
//! - adding, removing, locking, unlocking and every other extension are
//!   refused.
//!
//! A connection that never binds is served by the host → key mapping alone
//! (events say "unbound"); one whose bind is unreadable, does not verify,
//! is a second one, or is for agent forwarding gets no signature at all.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use ssh_agent_lib::agent::Session as _;
use ssh_agent_lib::client::Client;
use ssh_agent_lib::proto::extension::{MessageExtension as _, SessionBind};
use ssh_agent_lib::proto::{Extension, Request, Response};
use ssh_encoding::{Decode as _, Encode as _};
use ssh_key::public::KeyData;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

use super::{HostKeys, KeyGrant, wire};
use crate::events::Events;

/// The largest request accepted (a sign request is a few kilobytes).
const MAX_MESSAGE: usize = 256 * 1024;
/// Connections served at once; more wait.
const MAX_CONNECTIONS: usize = 64;
/// How long the host's agent may take (it may ask its user to confirm).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// What a connection said about the session it signs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// No `session-bind@openssh.com` (yet).
    Unbound,
    /// A verified bind: the server's host key and the session identifier.
    Bound {
        host_key: KeyData,
        session_id: Vec<u8>,
    },
    /// A bind that failed: nothing is signed on this connection.
    Spoiled(&'static str),
}

/// A signature the grants allow: for which key, and the host it is bound
/// to (`None`: unbound).
#[derive(Debug, PartialEq, Eq)]
pub struct Allowed<'a> {
    pub grant: &'a KeyGrant,
    pub host: Option<String>,
}

/// Why a signature is refused (the event's `reason`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the key is not granted to this run")]
    NotGranted,
    #[error("not an SSH login: Moat signs only user authentication")]
    NotALogin,
    #[error("the login names another key than the one asked to sign")]
    KeyMismatch,
    #[error("the login is for another session than the one bound")]
    SessionMismatch,
    #[error("the login names another host key than the one bound")]
    HostKeyMismatch,
    #[error("bound to host key {0}, which no connection of this run was served")]
    UnseenHostKey(String),
    #[error("bound to host key {key}, seen on {seen}; the key is granted for {granted}")]
    NotGrantedThere {
        key: String,
        seen: String,
        granted: String,
    },
    #[error("{0}")]
    Spoiled(&'static str),
}

/// May `key` sign `data` on a connection with `binding`, given the run's
/// `keys` and the host keys the proxy `seen`?
pub fn check_sign<'a>(
    keys: &'a [KeyGrant],
    seen: &HostKeys,
    binding: &Binding,
    key: &KeyData,
    data: &[u8],
) -> Result<Allowed<'a>, Refusal> {
    let grant = keys
        .iter()
        .find(|k| k.key == *key)
        .ok_or(Refusal::NotGranted)?;
    let login = wire::userauth(data).ok_or(Refusal::NotALogin)?;
    let named = KeyData::decode(&mut &login.key[..]).map_err(|_| Refusal::NotALogin)?;
    if named != *key {
        return Err(Refusal::KeyMismatch);
    }
    let (host_key, session_id) = match binding {
        Binding::Spoiled(why) => return Err(Refusal::Spoiled(why)),
        Binding::Unbound => return Ok(Allowed { grant, host: None }),
        Binding::Bound {
            host_key,
            session_id,
        } => (host_key, session_id),
    };
    if login.session_id != session_id.as_slice() {
        return Err(Refusal::SessionMismatch);
    }
    if let Some(blob) = login.host_key
        && KeyData::decode(&mut &blob[..]).ok().as_ref() != Some(host_key)
    {
        return Err(Refusal::HostKeyMismatch);
    }
    let hosts = seen.hosts_of(host_key);
    if hosts.is_empty() {
        return Err(Refusal::UnseenHostKey(super::fingerprint(host_key)));
    }
    match hosts.iter().find(|h| grant.hosts.contains(h)) {
        Some(host) => Ok(Allowed {
            grant,
            host: Some(host.clone()),
        }),
        None => Err(Refusal::NotGrantedThere {
            key: super::fingerprint(host_key),
            seen: hosts.join(", "),
            granted: grant.hosts.join(", "),
        }),
    }
}

/// The next binding after a `session-bind@openssh.com` request (an error
/// says why the bind was refused; the connection is spoiled then).
pub fn bind(current: &Binding, ext: &Extension) -> Result<Binding, &'static str> {
    if let Binding::Spoiled(why) = current {
        return Err(why);
    }
    let bind = match ext.parse_message::<SessionBind>() {
        Ok(Some(b)) => b,
        _ => return Err("an unreadable session-bind"),
    };
    if bind.is_forwarding {
        return Err("agent forwarding out of the sandbox is not allowed");
    }
    if *current != Binding::Unbound {
        return Err("a second session-bind on one connection");
    }
    if bind.verify_signature().is_err() {
        return Err("a session-bind whose host signature does not verify");
    }
    Ok(Binding::Bound {
        host_key: bind.host_key,
        session_id: bind.session_id,
    })
}

/// What is wrong with the host's agent for these grants, as lines to show
/// before the run starts: it does not answer, or lacks a granted key.
pub fn host_agent_problems(upstream: &std::path::Path, keys: &[KeyGrant]) -> Vec<String> {
    let listed = std::os::unix::net::UnixStream::connect(upstream)
        .and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(s)
        })
        .map_err(|e| e.to_string())
        .and_then(|s| {
            ssh_agent_lib::blocking::Client::new(s)
                .request_identities()
                .map_err(|e| e.to_string())
        });
    let held = match listed {
        Ok(ids) => ids,
        Err(e) => {
            return vec![format!(
                "your SSH agent ({}) does not answer ({e}): SSH logins from the sandbox will fail",
                upstream.display()
            )];
        }
    };
    keys.iter()
        .filter(|k| !held.iter().any(|id| *id.credential.key_data() == k.key))
        .map(|k| {
            format!(
                "the key granted for {} ({}) is not in your SSH agent: ssh-add it, or logins there will fail",
                k.hosts.join(", "),
                k.fingerprint
            )
        })
        .collect()
}

/// The agent a run's sandbox talks to.
pub struct Agent {
    keys: Vec<KeyGrant>,
    /// The host's agent.
    upstream: PathBuf,
    seen: Arc<HostKeys>,
    events: Events,
    connections: Arc<tokio::sync::Semaphore>,
}

impl Agent {
    pub fn new(
        keys: Vec<KeyGrant>,
        upstream: PathBuf,
        seen: Arc<HostKeys>,
        events: Events,
    ) -> Self {
        Self {
            keys,
            upstream,
            seen,
            events,
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        }
    }

    /// Serve the sandbox's connections on `listener` until the run ends.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("ssh agent: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().acquire_owned().await else {
                return;
            };
            let conn = Conn {
                agent: self.clone(),
                upstream: None,
                binding: Binding::Unbound,
            };
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = conn.serve(stream).await {
                    tracing::debug!("ssh agent connection ended: {e}");
                }
            });
        }
    }

    fn emit(&self, fields: serde_json::Value) {
        if self.events.is_enabled() {
            self.events.emit("ssh", fields);
        }
    }
}

/// One sandbox connection: its binding and its own connection to the
/// host's agent (opened on first use).
struct Conn {
    agent: Arc<Agent>,
    upstream: Option<Client<UnixStream>>,
    binding: Binding,
}

impl Conn {
    async fn serve(mut self, mut stream: UnixStream) -> std::io::Result<()> {
        loop {
            let mut len = [0u8; 4];
            match stream.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 || len > MAX_MESSAGE {
                return Err(std::io::Error::other(format!(
                    "a {len}-byte request (at most {MAX_MESSAGE})"
                )));
            }
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).await?;
            let response = match Request::decode(&mut &body[..]) {
                Ok(request) => self.handle(request).await,
                Err(_) => Response::Failure,
            };
            let mut out = Vec::new();
            let encoded = response
                .encoded_len()
                .and_then(|n| (n as u32).encode(&mut out))
                .and_then(|()| response.encode(&mut out));
            if encoded.is_err() {
                out.clear();
                let _ = 1u32.encode(&mut out);
                out.push(Response::Failure.message_id());
            }
            stream.write_all(&out).await?;
        }
    }

    async fn handle(&mut self, request: Request) -> Response {
        let refused = |agent: &Agent, op: &str, reason: &str| {
            agent.emit(json!({"op": op, "action": "refuse", "reason": reason}));
            Response::Failure
        };
        match request {
            Request::RequestIdentities => self.identities().await,
            Request::SignRequest(req) => self.sign(req).await,
            Request::Extension(ext) if ext.name == SessionBind::NAME => {
                match bind(&self.binding, &ext) {
                    Ok(bound) => {
                        self.binding = bound;
                        Response::Success
                    }
                    Err(why) => {
                        self.binding = Binding::Spoiled(why);
                        refused(&self.agent, "session-bind", why)
                    }
                }
            }
            Request::Extension(ext) => refused(
                &self.agent,
                "extension",
                &format!("extension {:?} is not offered by Moat's agent", ext.name),
            ),
            Request::AddIdentity(_)
            | Request::AddIdConstrained(_)
            | Request::AddSmartcardKey(_)
            | Request::AddSmartcardKeyConstrained(_) => refused(
                &self.agent,
                "add",
                "keys cannot be added to Moat's agent from the sandbox",
            ),
            Request::RemoveIdentity(_)
            | Request::RemoveAllIdentities
            | Request::RemoveSmartcardKey(_) => refused(
                &self.agent,
                "remove",
                "keys cannot be removed from the sandbox",
            ),
            Request::Lock(_) | Request::Unlock(_) => refused(
                &self.agent,
                "lock",
                "the agent cannot be locked or unlocked from the sandbox",
            ),
        }
    }

    /// The host agent, connected on first use.
    async fn upstream(&mut self) -> Result<&mut Client<UnixStream>, String> {
        if self.upstream.is_none() {
            let stream = UnixStream::connect(&self.agent.upstream)
                .await
                .map_err(|e| {
                    format!(
                        "the host's SSH agent ({}) does not answer: {e}",
                        self.agent.upstream.display()
                    )
                })?;
            self.upstream = Some(Client::new(stream));
        }
        Ok(self.upstream.as_mut().expect("connected above"))
    }

    async fn identities(&mut self) -> Response {
        let listed = match self.upstream().await {
            Ok(up) => tokio::time::timeout(UPSTREAM_TIMEOUT, up.request_identities()).await,
            Err(why) => {
                self.agent
                    .emit(json!({"op": "list", "action": "refuse", "reason": why}));
                return Response::Failure;
            }
        };
        let identities = match listed {
            Ok(Ok(ids)) => ids,
            failed => {
                self.upstream = None;
                let why = match failed {
                    Err(_) => "the host's SSH agent did not answer in time".to_owned(),
                    Ok(Err(e)) => format!("the host's SSH agent failed: {e}"),
                    Ok(Ok(_)) => unreachable!(),
                };
                self.agent
                    .emit(json!({"op": "list", "action": "refuse", "reason": why}));
                return Response::Failure;
            }
        };
        let offered: Vec<_> = identities
            .into_iter()
            .filter(|id| {
                self.agent
                    .keys
                    .iter()
                    .any(|k| k.key == *id.credential.key_data())
            })
            .collect();
        let prints: Vec<String> = offered
            .iter()
            .map(|id| super::fingerprint(id.credential.key_data()))
            .collect();
        self.agent
            .emit(json!({"op": "list", "action": "allow", "keys": prints}));
        Response::IdentitiesAnswer(offered)
    }

    async fn sign(&mut self, req: ssh_agent_lib::proto::SignRequest) -> Response {
        let key = req.credential.key_data().clone();
        let print = super::fingerprint(&key);
        let checked = check_sign(
            &self.agent.keys,
            &self.agent.seen,
            &self.binding,
            &key,
            &req.data,
        );
        let (hosts, host) = match checked {
            Ok(a) => (a.grant.hosts.clone(), a.host),
            Err(why) => {
                self.agent.emit(json!({
                    "op": "sign", "action": "refuse", "key": print, "reason": why.to_string(),
                }));
                return Response::Failure;
            }
        };
        let signed = match self.upstream().await {
            Ok(up) => tokio::time::timeout(UPSTREAM_TIMEOUT, up.sign(req))
                .await
                .map_err(|_| "the host's SSH agent did not answer in time".to_owned())
                .and_then(|r| r.map_err(|e| format!("the host's SSH agent refused: {e}"))),
            Err(why) => Err(why),
        };
        let binding = match &host {
            Some(_) => "bound",
            None => "unbound",
        };
        match signed {
            Ok(signature) => {
                self.agent.emit(json!({
                    "op": "sign", "action": "allow", "key": print, "binding": binding,
                    "host": host, "granted": hosts,
                }));
                Response::SignResponse(signature)
            }
            Err(why) => {
                self.upstream = None;
                self.agent.emit(json!({
                    "op": "sign", "action": "refuse", "key": print, "binding": binding,
                    "reason": why,
                }));
                Response::Failure
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::PrivateKey;
    use ssh_key::private::Ed25519Keypair;

    fn put_string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn blob(key: &KeyData) -> Vec<u8> {
        let mut out = Vec::new();
        key.encode(&mut out).unwrap();
        out
    }

    fn login(session_id: &[u8], key: &KeyData, host_key: Option<&KeyData>) -> Vec<u8> {
        let mut d = Vec::new();
        put_string(&mut d, session_id);
        d.push(50);
        put_string(&mut d, b"git");
        put_string(&mut d, b"ssh-connection");
        match host_key {
            Some(_) => put_string(&mut d, b"publickey-hostbound-v00@openssh.com"),
            None => put_string(&mut d, b"publickey"),
        }
        d.push(1);
        put_string(&mut d, b"ssh-ed25519");
        put_string(&mut d, &blob(key));
        if let Some(h) = host_key {
            put_string(&mut d, &blob(h));
        }
        d
    }

    fn ed25519(seed: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
    }

    struct World {
        keys: Vec<KeyGrant>,
        user: KeyData,
        git_host: PrivateKey,
        other_host: PrivateKey,
        seen: HostKeys,
    }

    fn world() -> World {
        let user = ed25519(1).public_key().key_data().clone();
        let keys = super::super::by_key(&[super::super::SshGrant {
            host: "git.test".into(),
            key: ssh_key::PublicKey::new(user.clone(), "u"),
        }]);
        let (git_host, other_host) = (ed25519(2), ed25519(3));
        let seen = HostKeys::default();
        seen.record("git.test", &blob(git_host.public_key().key_data()));
        seen.record("other.test", &blob(other_host.public_key().key_data()));
        World {
            keys,
            user,
            git_host,
            other_host,
            seen,
        }
    }

    fn session_bind(host: &PrivateKey, session_id: &[u8], forwarding: bool) -> Extension {
        use signature::Signer as _;
        let signature = host.try_sign(session_id).unwrap();
        Extension::new_message(SessionBind {
            host_key: host.public_key().key_data().clone(),
            session_id: session_id.to_vec(),
            signature,
            is_forwarding: forwarding,
        })
        .unwrap()
    }

    #[test]
    fn a_bound_login_to_the_granted_host_is_signed() {
        let w = world();
        let b = bind(&Binding::Unbound, &session_bind(&w.git_host, b"H1", false)).unwrap();
        let data = login(b"H1", &w.user, Some(w.git_host.public_key().key_data()));
        let ok = check_sign(&w.keys, &w.seen, &b, &w.user, &data).unwrap();
        assert_eq!(ok.host.as_deref(), Some("git.test"));
        let plain = login(b"H1", &w.user, None);
        assert!(check_sign(&w.keys, &w.seen, &b, &w.user, &plain).is_ok());
    }

    #[test]
    fn an_unbound_login_is_served_by_the_mapping_alone() {
        let w = world();
        let data = login(b"any", &w.user, None);
        let ok = check_sign(&w.keys, &w.seen, &Binding::Unbound, &w.user, &data).unwrap();
        assert_eq!(ok.host, None);
    }

    #[test]
    fn logins_elsewhere_or_off_the_bound_session_are_refused() {
        let w = world();
        let other = bind(
            &Binding::Unbound,
            &session_bind(&w.other_host, b"H2", false),
        )
        .unwrap();
        let data = login(b"H2", &w.user, None);
        assert!(matches!(
            check_sign(&w.keys, &w.seen, &other, &w.user, &data),
            Err(Refusal::NotGrantedThere { .. })
        ));
        let unseen = ed25519(4);
        let b = bind(&Binding::Unbound, &session_bind(&unseen, b"H3", false)).unwrap();
        let data = login(b"H3", &w.user, None);
        assert!(matches!(
            check_sign(&w.keys, &w.seen, &b, &w.user, &data),
            Err(Refusal::UnseenHostKey(_))
        ));
        let git = bind(&Binding::Unbound, &session_bind(&w.git_host, b"H1", false)).unwrap();
        let cases = [
            (login(b"H9", &w.user, None), Refusal::SessionMismatch),
            (
                login(b"H1", &w.user, Some(w.other_host.public_key().key_data())),
                Refusal::HostKeyMismatch,
            ),
            (b"SSHSIG\0\0\0\x01x".to_vec(), Refusal::NotALogin),
            (login(b"H1", &w.keys_other(), None), Refusal::KeyMismatch),
        ];
        for (data, want) in cases {
            assert_eq!(
                check_sign(&w.keys, &w.seen, &git, &w.user, &data).unwrap_err(),
                want
            );
        }
        let stranger = ed25519(5).public_key().key_data().clone();
        let data = login(b"H1", &stranger, None);
        assert_eq!(
            check_sign(&w.keys, &w.seen, &git, &stranger, &data).unwrap_err(),
            Refusal::NotGranted
        );
    }

    impl World {
        fn keys_other(&self) -> KeyData {
            self.other_host.public_key().key_data().clone()
        }
    }

    #[test]
    fn bad_second_or_forwarding_binds_spoil_the_connection() {
        let w = world();
        let good = session_bind(&w.git_host, b"H1", false);
        let bound = bind(&Binding::Unbound, &good).unwrap();
        assert!(bind(&bound, &good).is_err(), "a second bind");
        assert!(bind(&Binding::Unbound, &session_bind(&w.git_host, b"H1", true)).is_err());
        let mut forged = good.clone();
        let mut details = Vec::new();
        SessionBind {
            host_key: w.git_host.public_key().key_data().clone(),
            session_id: b"H1-forged".to_vec(),
            signature: {
                use signature::Signer as _;
                w.other_host.try_sign(b"H1-forged").unwrap()
            },
            is_forwarding: false,
        }
        .encode(&mut details)
        .unwrap();
        forged.details = ssh_agent_lib::proto::Unparsed::from(details);
        let why = bind(&Binding::Unbound, &forged).unwrap_err();
        assert!(why.contains("does not verify"), "{why}");
        let spoiled = Binding::Spoiled(why);
        assert!(bind(&spoiled, &good).is_err());
        let data = login(b"H1", &w.user, None);
        assert!(matches!(
            check_sign(&w.keys, &w.seen, &spoiled, &w.user, &data),
            Err(Refusal::Spoiled(_))
        ));
    }
}
