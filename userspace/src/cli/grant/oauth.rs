//! `moat grant oauth <name>`: an OAuth 2.0 credential for any service, from
//! a pasted refresh token (checked by one refresh before anything is saved;
//! that refresh also gives the first access token) or, with `--auth-url`,
//! from a browser login: Authorization Code + PKCE with a loopback redirect
//! listener (`providers::pkce` holds the pure parts).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use secrecy::{ExposeSecret, SecretString};

use super::{GrantArgs, checked_token, token_from_stdin};
use crate::net::Upstream;
use crate::providers::builtin::oauth::HOSTS;
use crate::providers::oauth::{
    self, CLIENT_ID, CLIENT_SECRET, OauthError, REFRESH_TOKEN, TOKEN_URL,
};
use crate::providers::pkce::{self, Attempt, Authorize};
use crate::providers::{HostPattern, Provider};
use crate::proxy::refresh::TokenEndpoint;
use crate::store::{Credential, Kind};

const USAGE: &str = "moat grant oauth <name> --token-url URL --client-id ID --host HOST [--host HOST…] (refresh token from --token-stdin, OAUTH_REFRESH_TOKEN or a prompt; client secret from OAUTH_CLIENT_SECRET or a prompt), or log in through the browser with --auth-url URL [--scope S…]";

/// How long `--auth-url` waits for the browser unless `--auth-timeout` says.
const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long one connection to the redirect listener may take to send its
/// request head (a browser's idle pre-connection must not hold things up).
const CALLBACK_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata keys of a credential from the browser login.
const AUTH_URL: &str = "auth_url";
const SCOPE: &str = "scope";

fn env_secret(var: &str) -> Result<Option<SecretString>> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => {
            let v = zeroize::Zeroizing::new(v.to_string_lossy().into_owned());
            eprintln!("Using {var}");
            Ok(Some(checked_token(&v, var)?))
        }
        None => Ok(None),
    }
}

pub(super) fn obtain(provider: &Provider, args: &GrantArgs) -> Result<Credential> {
    let token_url = args
        .token_url
        .as_deref()
        .ok_or_else(|| anyhow!("--token-url is required: {USAGE}"))?;
    if !token_url.starts_with("https://") {
        bail!("--token-url must be an https:// URL (the refresh token travels to it)");
    }
    if args.host.is_empty() {
        bail!("name at least one host to inject the access token on with --host: {USAGE}");
    }
    for h in &args.host {
        HostPattern::parse(h).map_err(|e| anyhow!("--host {h}: {e}"))?;
    }
    if let Some(auth_url) = &args.auth_url {
        return authorization_code(provider, args, token_url, auth_url);
    }
    let tty = std::io::stdin().is_terminal();
    let refresh = if args.token_stdin {
        token_from_stdin(provider)?
    } else if let Some(t) = env_secret("OAUTH_REFRESH_TOKEN")? {
        t
    } else if tty {
        let t = zeroize::Zeroizing::new(
            crate::cli::prompt::hidden("Refresh token: ").context("reading the refresh token")?,
        );
        checked_token(&t, "the prompt")?
    } else {
        bail!("no refresh token: pipe it with --token-stdin or set OAUTH_REFRESH_TOKEN. {USAGE}");
    };
    let client_secret =
        client_secret(tty && !args.token_stdin, "Client secret (Enter for none): ")?;
    let mut cred = base_credential(
        provider,
        args,
        token_url,
        "oauth-refresh-token",
        client_secret,
    );
    cred.secrets.insert(REFRESH_TOKEN.into(), refresh);
    first_refresh(
        &mut cred,
        "the token endpoint",
        "check the refresh token, client id and secret",
    )?;
    Ok(cred)
}

/// The client secret from `OAUTH_CLIENT_SECRET`, else (when `ask`) a hidden
/// prompt where Enter means none.
fn client_secret(ask: bool, question: &str) -> Result<Option<SecretString>> {
    match env_secret("OAUTH_CLIENT_SECRET")? {
        Some(s) => Ok(Some(s)),
        None if ask => {
            let s = zeroize::Zeroizing::new(
                crate::cli::prompt::hidden(question).context("reading the client secret")?,
            );
            (!s.trim().is_empty())
                .then(|| checked_token(&s, "the prompt"))
                .transpose()
        }
        None => Ok(None),
    }
}

/// An OAuth credential without tokens yet: token URL, client, hosts.
fn base_credential(
    provider: &Provider,
    args: &GrantArgs,
    token_url: &str,
    source: &str,
    client_secret: Option<SecretString>,
) -> Credential {
    let mut cred = Credential::new_static(&provider.name, SecretString::from(""), source);
    cred.kind = Kind::Oauth;
    cred.metadata.insert(TOKEN_URL.into(), token_url.to_owned());
    if let Some(id) = &args.client_id {
        cred.metadata.insert(CLIENT_ID.into(), id.clone());
    }
    cred.metadata.insert(HOSTS.into(), args.host.join(","));
    if let Some(s) = client_secret {
        cred.secrets.insert(CLIENT_SECRET.into(), s);
    }
    cred
}

/// `--auth-url`: Authorization Code + PKCE (RFC 7636, S256) with a
/// redirect to a listener on 127.0.0.1. The code is exchanged once for the
/// access and refresh tokens; any failure (state mismatch, denial, timeout,
/// a refused exchange) saves nothing.
fn authorization_code(
    provider: &Provider,
    args: &GrantArgs,
    token_url: &str,
    auth_url: &str,
) -> Result<Credential> {
    if !auth_url.starts_with("https://") {
        bail!("--auth-url must be an https:// URL (the login page of the authorization server)");
    }
    let client_id = args.client_id.as_deref().ok_or_else(|| {
        anyhow!("--client-id is required with --auth-url (the authorization server needs to know the client): {USAGE}")
    })?;
    let tty = std::io::stdin().is_terminal();
    let secret = client_secret(
        tty,
        "Client secret (Enter for none; public clients using PKCE have none): ",
    )?;
    let mut cred = base_credential(
        provider,
        args,
        token_url,
        "oauth-authorization-code",
        secret,
    );
    cred.metadata.insert(AUTH_URL.into(), auth_url.to_owned());
    let scope = args.scope.join(" ");
    if !scope.is_empty() {
        cred.metadata.insert(SCOPE.into(), scope.clone());
    }

    let mut random = zeroize::Zeroizing::new([0u8; 48]);
    getrandom::fill(&mut random[..]).map_err(|e| anyhow!("no randomness for PKCE: {e}"))?;
    let mut verifier = [0u8; 32];
    let mut state = [0u8; 16];
    verifier.copy_from_slice(&random[..32]);
    state.copy_from_slice(&random[32..]);
    let attempt = Attempt::from_random(verifier, state);
    zeroize::Zeroize::zeroize(&mut verifier);

    let timeout = args.auth_timeout.unwrap_or(DEFAULT_AUTH_TIMEOUT);
    let (code, redirect_uri) = super::super::block_on(async {
        let port = args.redirect_port.unwrap_or(0);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| {
                anyhow!("cannot listen on 127.0.0.1:{port} for the redirect: {e}; free the port or pick another --redirect-port (it must match a redirect URI registered for the client)")
            })?;
        let port = listener
            .local_addr()
            .context("the redirect listener's port")?
            .port();
        let redirect_uri = pkce::redirect_uri(port);
        let url = pkce::authorize_url(
            &Authorize {
                auth_url,
                client_id,
                redirect_uri: &redirect_uri,
                scope: Some(&scope),
            },
            &attempt,
        );
        eprintln!("Open this URL in a browser on this machine to authorize Moat:\n\n  {url}\n");
        open_browser(&url);
        eprintln!(
            "Waiting for the redirect to {redirect_uri} (up to {})...",
            humantime::format_duration(timeout)
        );
        let code = tokio::time::timeout(timeout, wait_for_code(&listener, &attempt))
            .await
            .map_err(|_| {
                anyhow!(
                    "no authorization arrived within {} (the browser must reach {redirect_uri} on this machine). Nothing was saved; run the command again, or wait longer with --auth-timeout",
                    humantime::format_duration(timeout)
                )
            })??;
        Ok::<_, anyhow::Error>((code, redirect_uri))
    })??;

    eprintln!("Exchanging the authorization code...");
    let req = pkce::code_request(&cred, &code, &attempt, &redirect_uri)?;
    let upstream = Upstream::from_env()?;
    let (status, body) = super::super::block_on(upstream.post_form(&req.url, &req.form))?
        .map_err(|e| anyhow!("cannot reach the token endpoint: {e}. Nothing was saved"))?;
    let mut known: Vec<zeroize::Zeroizing<String>> = cred
        .secrets
        .values()
        .map(|s| zeroize::Zeroizing::new(s.expose_secret().to_owned()))
        .collect();
    known.push(zeroize::Zeroizing::new(code.expose_secret().to_owned()));
    known.push(zeroize::Zeroizing::new(attempt.verifier().to_owned()));
    let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    let tokens = oauth::parse_response(status, &body, &known).map_err(|e| match e {
        OauthError::Refused { status, message } => anyhow!(
            "the token endpoint refused the authorization code (HTTP {status}: {message}). Nothing was saved; check --token-url, --client-id and the client secret, then grant again"
        ),
        other => anyhow!("{other}. Nothing was saved"),
    })?;
    let rotates = tokens.refresh_token.is_some();
    let expires = tokens.expires_in.is_some();
    oauth::apply(&mut cred, tokens, crate::store::credential::now_secs());
    eprintln!("Authorized.");
    if !rotates && expires {
        eprintln!(
            "moat: warning: the token endpoint gave no refresh token, so Moat cannot refresh the access token when it expires; grant again then, or ask for offline access (many servers need --scope offline_access)"
        );
    }
    Ok(cred)
}

/// Accept connections on the redirect listener until one brings the
/// callback; answer the browser with a short page either way. Requests for
/// other paths (a favicon) get a 404 and the wait goes on. Connections are
/// read concurrently, so an idle pre-connection cannot block the real one.
async fn wait_for_code(
    listener: &tokio::net::TcpListener,
    attempt: &Attempt,
) -> Result<SecretString> {
    use tokio::sync::mpsc;
    let (tx, mut rx) = mpsc::channel::<(tokio::net::TcpStream, String)>(8);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, _) = accepted.context("accepting the browser's connection")?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(Some(target)) =
                        tokio::time::timeout(CALLBACK_READ_TIMEOUT, read_target(&mut stream)).await
                    {
                        let _ = tx.send((stream, target)).await;
                    }
                });
            }
            Some((mut stream, target)) = rx.recv() => {
                let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
                if path != pkce::CALLBACK_PATH {
                    respond(&mut stream, "404 Not Found", "Not found", "This is Moat's login listener; it only answers the OAuth redirect.").await;
                    continue;
                }
                return match pkce::judge_callback(query, attempt) {
                    Ok(code) => {
                        respond(&mut stream, "200 OK", "Moat: authorized", "Moat received the authorization. You can close this tab and return to the terminal.").await;
                        Ok(code)
                    }
                    Err(e) => {
                        respond(&mut stream, "400 Bad Request", "Moat: authorization failed", &format!("Authorization failed: {e}. Nothing was saved. You can close this tab and return to the terminal.")).await;
                        Err(anyhow!("{e}. Nothing was saved"))
                    }
                };
            }
        }
    }
}

/// The request target (path and query) of a GET, or None for anything that
/// is not one complete, small GET request head.
async fn read_target(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return (req.method == Some("GET"))
                    .then(|| req.path.map(str::to_owned))
                    .flatten();
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => {}
            _ => return None,
        }
    }
}

/// A small HTML page, then close.
async fn respond(stream: &mut tokio::net::TcpStream, status: &str, title: &str, text: &str) {
    use tokio::io::AsyncWriteExt as _;
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body><p>{}</p></body></html>\n",
        escape(title),
        escape(text)
    );
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Open `url` in the user's browser when Moat runs on a terminal with a
/// browser to open (`open` on macOS; `xdg-open` with a display elsewhere).
/// Never in scripts or tests: without a terminal the printed URL is all.
fn open_browser(url: &str) {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        "xdg-open"
    } else {
        return;
    };
    if let Ok(mut child) = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        eprintln!("(opened with {opener})");
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }
}

/// One refresh, now: proves the refresh token works and yields the first
/// access token. Failure: nothing is saved. `endpoint` names the token
/// endpoint and `fix` says what to do, in the error.
pub(super) fn first_refresh(cred: &mut Credential, endpoint: &str, fix: &str) -> Result<()> {
    eprintln!("Validating refresh token...");
    let req = oauth::refresh_request(cred)?;
    let upstream = Upstream::from_env()?;
    let (status, body) = super::super::block_on(upstream.post_form(&req.url, &req.form))?
        .map_err(|e| anyhow!("cannot reach {endpoint}: {e}. Nothing was saved"))?;
    let known: Vec<zeroize::Zeroizing<String>> = cred
        .secrets
        .values()
        .map(|s| zeroize::Zeroizing::new(s.expose_secret().to_owned()))
        .collect();
    let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    let tokens = oauth::parse_response(status, &body, &known)
        .map_err(|e| anyhow!("{e}. Nothing was saved; {fix}"))?;
    oauth::apply(cred, tokens, crate::store::credential::now_secs());
    eprintln!("Refresh token is valid.");
    Ok(())
}
