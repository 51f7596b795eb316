//! Built-in providers end to end: `moat grant` from each source, validation
//! against local stand-ins of each API (TLS, test CA, `MOAT_RESOLVE`), and
//! the exact header per host through the real `moat proxy`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use moat_testkit::{StubServer, TestCa};

const ANTHROPIC_KEY: &str = "sk-ant-api03-RealAnthropicKey0123456789";
const CLAUDE_TOKEN: &str = "sk-ant-oat01-RealClaudeOauthToken0123456789";
const OPENAI_KEY: &str = "sk-proj-RealOpenAiKey0123456789";
const GRAPHITE_TOKEN: &str = "RealGraphiteToken0123456789";

/// A temp MOAT_HOME/HOME plus a TLS stand-in answering for `names`.
struct World {
    env: Env,
    ca_file: PathBuf,
    server: StubServer,
    resolve: String,
}

impl World {
    fn new(names: &[&str], handler: moat_testkit::Handler) -> Self {
        let env = Env::new();
        let ca = TestCa::new().unwrap();
        let ca_file = ca.write_pem(env.dir.path()).unwrap();
        let server = StubServer::start(&ca, names, handler).unwrap();
        let resolve = names
            .iter()
            .map(|n| server.resolve_entry(n))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            env,
            ca_file,
            server,
            resolve,
        }
    }

    /// The environment that sends Moat's own requests to the stand-in.
    fn net<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![
            ("MOAT_KEY_BACKEND", "file"),
            ("MOAT_RESOLVE", self.resolve.as_str()),
            ("MOAT_UPSTREAM_CA", self.ca_file.to_str().unwrap()),
        ];
        v.extend_from_slice(extra);
        v
    }

    fn grant(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut full = vec!["grant"];
        full.extend_from_slice(args);
        self.env.run(&full, &self.net(extra))
    }

    fn grant_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut full = vec!["grant"];
        full.extend_from_slice(args);
        self.env.run_stdin(&full, &self.net(&[]), input)
    }

    fn show(&self, name: &str) -> serde_json::Value {
        let out = self.grant(&["show", name, "--json"], &[]);
        serde_json::from_slice(&ok(&out).stdout).unwrap()
    }

    /// `moat grant PROVIDER --token-stdin --no-validate`: `token` saved unchecked.
    fn save_unvalidated(&self, provider: &str, token: &str) {
        ok(&self.grant_stdin(&[provider, "--token-stdin", "--no-validate"], token));
    }

    fn stored(&self, name: &str) -> bool {
        self.env
            .home()
            .join(format!("credentials/{name}.enc"))
            .exists()
    }

    /// The values of header `name` on the last request the stand-in received.
    fn last_header(&self, name: &str) -> Vec<String> {
        let seen = self.server.seen();
        let last = seen.last().expect("the stand-in saw no request");
        last.header(name).iter().map(|s| s.to_string()).collect()
    }

    /// The requests the stand-in received for `path`, oldest first.
    fn seen_at(&self, path: &str) -> Vec<moat_testkit::Seen> {
        let mut seen = self.server.seen();
        seen.retain(|s| s.path == path);
        seen
    }

    /// The body (a form, say) of the last request the stand-in received for `path`.
    fn last_body(&self, path: &str) -> String {
        let seen = self.seen_at(path);
        let last = seen
            .last()
            .unwrap_or_else(|| panic!("no request for {path}"));
        String::from_utf8_lossy(&last.body).into_owned()
    }

    /// `moat proxy --grant …` against the stand-in.
    fn proxy(&self, grants: &[&str]) -> Proxy<'_> {
        let mut cmd = self.env.cmd();
        cmd.arg("-vv").arg("proxy");
        for g in grants {
            cmd.args(["--grant", g]);
        }
        let log = self.env.dir.path().join("proxy.log");
        let mut child = cmd
            .envs(self.net(&[]))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let url = proxy_url(&mut child, &log);
        Proxy {
            world: self,
            child,
            url,
            ca: self.env.home().join("ca/ca.crt"),
            log,
        }
    }
}

/// A running `moat proxy`, and the [`World`] whose stand-in it forwards to.
struct Proxy<'w> {
    world: &'w World,
    child: Child,
    url: String,
    ca: PathBuf,
    log: PathBuf,
}

impl Proxy<'_> {
    /// curl `url` through the proxy, trusting the Moat CA, with the client's
    /// `headers` and further curl `args`; curl's output (panics if curl fails).
    fn curl(&self, url: &str, headers: &[&str], args: &[&str]) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-x", &self.url, "--cacert"])
            .arg(&self.ca)
            .args(args);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd.arg(url).output().expect("curl");
        assert!(
            out.status.success(),
            "curl {url}: {}\n{}",
            stderr(&out),
            self.log_text()
        );
        stdout(&out)
    }

    /// GET through the proxy; the response body.
    fn get(&self, url: &str, headers: &[&str]) -> String {
        self.curl(url, headers, &[])
    }

    /// POST `data` through the proxy; (HTTP status, body).
    fn post(&self, url: &str, headers: &[&str], data: &str) -> (u16, String) {
        let text = self.curl(url, headers, &[WITH_STATUS, &["--data-raw", data]].concat());
        status_and_body(&text)
    }

    /// GET `url` through the proxy with the client's `headers`; the
    /// Authorization header the stand-in received (what Moat injected).
    fn upstream_authorization(&self, url: &str, headers: &[&str]) -> Vec<String> {
        self.get(url, headers);
        self.world.last_header("authorization")
    }

    /// For each `(url, authorization)`: a GET of `url` through the proxy,
    /// without client headers, reaches the stand-in with exactly that
    /// Authorization header.
    #[track_caller]
    fn assert_injects(&self, cases: &[(&str, &str)]) {
        for (url, authorization) in cases {
            assert_eq!(
                self.upstream_authorization(url, &[]),
                [*authorization],
                "{url}"
            );
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl arguments that add the HTTP status on a line after the body.
const WITH_STATUS: &[&str] = &["-w", "\n%{http_code}"];

/// What curl printed with [`WITH_STATUS`]: (HTTP status, body).
fn status_and_body(text: &str) -> (u16, String) {
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

fn ai_world() -> World {
    World::new(
        &[
            "api.anthropic.com",
            "api.openai.com",
            "chatgpt.com",
            "files.openai.com",
            "api.graphite.com",
            "app.graphite.com",
            "elsewhere.test",
        ],
        moat_testkit::apis::fake_ai_apis(),
    )
}

#[test]
fn anthropic_api_key_sources_and_validation() {
    let w = ai_world();
    // From ANTHROPIC_API_KEY, validated (no terminal: no question asked).
    let out = w.grant(&["anthropic"], &[("ANTHROPIC_API_KEY", ANTHROPIC_KEY)]);
    let text = stderr(ok(&out));
    assert!(
        text.contains("Using token from ANTHROPIC_API_KEY"),
        "{text}"
    );
    assert!(text.contains("Token is valid."), "{text}");
    assert_eq!(w.last_header("x-api-key"), [ANTHROPIC_KEY]);
    assert_eq!(w.last_header("anthropic-version"), ["2023-06-01"]);
    assert_eq!(w.show("anthropic")["source"], "env:ANTHROPIC_API_KEY");
    assert_eq!(w.env.reveal("anthropic", &[]).unwrap(), ANTHROPIC_KEY);

    // Refused by the API: nothing saved, the key not echoed.
    let w2 = ai_world();
    let err = fails(&w2.grant(
        &["anthropic"],
        &[("ANTHROPIC_API_KEY", "sk-ant-api03-bad-key-000")],
    ));
    assert!(
        err.contains("rejected the token") && err.contains("invalid x-api-key"),
        "{err}"
    );
    assert!(!err.contains("sk-ant-api03-bad-key-000"), "{err}");
    assert!(!w2.stored("anthropic"));

    // An OAuth token is not an API key: pointed at 'moat grant claude'.
    let err = fails(&w2.grant_stdin(&["anthropic", "--token-stdin"], CLAUDE_TOKEN));
    assert!(err.contains("moat grant claude"), "{err}");
    assert!(!err.contains(CLAUDE_TOKEN), "{err}");
    assert!(!w2.stored("anthropic"));

    // --token-stdin.
    ok(&w2.grant_stdin(&["anthropic", "--token-stdin"], ANTHROPIC_KEY));
    assert_eq!(w2.show("anthropic")["source"], "stdin");
}

fn write_claude_credentials(home: &Path, token: &str, expires_ms: u128) {
    let dir = home.join(".claude");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".credentials.json"),
        format!(
            r#"{{"claudeAiOauth":{{"accessToken":"{token}","refreshToken":"sk-ant-ort01-refresh","expiresAt":{expires_ms},"scopes":["user:inference"],"subscriptionType":"max"}}}}"#
        ),
    )
    .unwrap();
}

fn ms_from_now(secs: i64) -> u128 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i128;
    (now + secs as i128 * 1000) as u128
}

#[test]
fn claude_oauth_token_sources_and_validation() {
    let w = ai_world();
    // --token-stdin, validated with Bearer + the OAuth beta flag.
    let out = w.grant_stdin(&["claude", "--token-stdin"], CLAUDE_TOKEN);
    let text = stderr(ok(&out));
    assert!(text.contains("Token is valid."), "{text}");
    assert_eq!(
        w.last_header("authorization"),
        [format!("Bearer {CLAUDE_TOKEN}")]
    );
    assert_eq!(w.last_header("anthropic-beta"), ["oauth-2025-04-20"]);
    assert_eq!(w.show("claude")["source"], "stdin");

    // A rejected token saves nothing.
    let w2 = ai_world();
    let err = fails(&w2.grant_stdin(&["claude", "--token-stdin"], "sk-ant-oat01-bad-0000"));
    assert!(err.contains("rejected the token"), "{err}");
    assert!(!w2.stored("claude"));

    // An API key is pointed at 'moat grant anthropic'.
    let err = fails(&w2.grant_stdin(&["claude", "--token-stdin"], ANTHROPIC_KEY));
    assert!(err.contains("moat grant anthropic"), "{err}");

    // No terminal and no source: says every way to do it.
    let err = fails(&w2.grant(&["claude"], &[]));
    assert!(
        err.contains("--token-stdin")
            && err.contains("--import")
            && err.contains("claude setup-token"),
        "{err}"
    );

    // CLAUDE_CODE_OAUTH_TOKEN (what claude setup-token says to export).
    ok(&w2.grant(&["claude"], &[("CLAUDE_CODE_OAUTH_TOKEN", CLAUDE_TOKEN)]));
    assert_eq!(w2.show("claude")["source"], "env:CLAUDE_CODE_OAUTH_TOKEN");
}

#[test]
fn claude_imports_claude_code_credentials() {
    let w = ai_world();
    let home = w.env.user_home();
    let err = fails(&w.grant(&["claude", "--import"], &[]));
    assert!(
        err.contains(".claude/.credentials.json") && err.contains("log in"),
        "{err}"
    );

    // Expired: nothing saved, says how to refresh.
    write_claude_credentials(&home, CLAUDE_TOKEN, ms_from_now(-3600));
    let err = fails(&w.grant(&["claude", "--import", "--no-validate"], &[]));
    assert!(
        err.contains("expired") && err.contains("Claude Code session"),
        "{err}"
    );
    assert!(!w.stored("claude"));

    write_claude_credentials(&home, CLAUDE_TOKEN, ms_from_now(7200));
    let out = w.grant(&["claude", "--import"], &[]);
    let text = stderr(ok(&out));
    assert!(text.contains("Found Claude Code credentials."), "{text}");
    assert!(text.contains("Subscription: max"), "{text}");
    assert!(text.contains("Expires: 20"), "{text}");
    assert!(!text.contains(CLAUDE_TOKEN) && !stdout(&out).contains(CLAUDE_TOKEN));
    let v = w.show("claude");
    assert_eq!(v["source"], "claude-code");
    assert_eq!(v["kind"], "oauth");
    assert_eq!(v["metadata"]["subscription"], "max");
    assert!(v["expires"].as_str().unwrap().starts_with("20"));
    // The refresh token is not taken: Moat does not refresh imported tokens.
    assert_eq!(v["secrets"], serde_json::json!([]));
    assert_eq!(w.env.reveal("claude", &[]).unwrap(), CLAUDE_TOKEN);
}

#[test]
fn claude_menu_on_a_terminal_runs_setup_token() {
    use std::io::{Read, Write};
    let w = ai_world();
    // A fake 'claude' CLI on PATH that prints a token the way setup-token does.
    let bin = w.env.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("claude");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n[ \"$1\" = setup-token ] || exit 2\necho 'Long-lived authentication token created:'\necho\necho '{CLAUDE_TOKEN}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cmd = w.env.cmd();
    let mut child = Command::new("script")
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env("PATH", &path)
        .envs(w.net(&[]))
        .args(["-qec", &format!("{MOAT} grant claude"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux is needed");
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("Enter choice [1-3]: ") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "no menu: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    child.stdin.as_mut().unwrap().write_all(b"1\n").unwrap();
    out.read_to_end(&mut seen).unwrap();
    let shown = String::from_utf8_lossy(&seen);
    assert!(child.wait().unwrap().success(), "{shown}");
    assert!(
        shown.contains("Import existing Claude Code credentials"),
        "{shown}"
    );
    assert!(shown.contains("Claude credential saved"), "{shown}");
    assert!(
        !shown.contains(CLAUDE_TOKEN),
        "the token was shown: {shown}"
    );
    assert_eq!(w.show("claude")["source"], "claude-setup-token");
    assert_eq!(w.env.reveal("claude", &[]).unwrap(), CLAUDE_TOKEN);
}

#[test]
fn openai_and_graphite_sources_and_validation() {
    let w = ai_world();
    let text = stderr(ok(&w.grant(&["openai"], &[("OPENAI_API_KEY", OPENAI_KEY)])));
    assert!(text.contains("Token is valid."), "{text}");
    assert_eq!(
        w.last_header("authorization"),
        [format!("Bearer {OPENAI_KEY}")]
    );
    let err = fails(&w.grant(&["openai"], &[("OPENAI_API_KEY", "sk-bad-openai-key")]));
    assert!(err.contains("Incorrect API key provided"), "{err}");
    assert!(!err.contains("sk-bad-openai-key"));
    assert_eq!(w.env.reveal("openai", &[]).unwrap(), OPENAI_KEY);
    assert_eq!(w.show("openai")["source"], "env:OPENAI_API_KEY");
    // --token-stdin, validated the same way; a refused key changes nothing.
    let err = fails(&w.grant_stdin(&["openai", "--token-stdin"], "sk-bad-stdin-key"));
    assert!(err.contains("Incorrect API key provided"), "{err}");
    assert_eq!(w.show("openai")["source"], "env:OPENAI_API_KEY");
    let out = w.grant_stdin(&["openai", "--token-stdin"], "sk-proj-FromStdin0123456789");
    let text = stderr(ok(&out));
    assert!(text.contains("Token is valid."), "{text}");
    assert_eq!(
        w.last_header("authorization"),
        ["Bearer sk-proj-FromStdin0123456789"]
    );
    assert_eq!(w.show("openai")["source"], "stdin");

    // Graphite: GRAPHITE_TOKEN first, then GT_TOKEN. Not validated: there
    // is no documented endpoint to check a token against (docs/providers.md),
    // so no request is made and nothing claims the token was checked.
    let seen_before = w.server.seen().len();
    let text = stderr(ok(&w.grant(
        &["graphite"],
        &[("GT_TOKEN", "from-gt"), ("GRAPHITE_TOKEN", GRAPHITE_TOKEN)],
    )));
    assert!(!text.contains("alidat"), "{text}");
    assert_eq!(w.server.seen().len(), seen_before);
    assert_eq!(w.show("graphite")["source"], "env:GRAPHITE_TOKEN");
    ok(&w.grant(&["graphite"], &[("GT_TOKEN", "from-gt")]));
    assert_eq!(w.show("graphite")["source"], "env:GT_TOKEN");
    ok(&w.grant_stdin(&["graphite", "--token-stdin"], GRAPHITE_TOKEN));
    assert_eq!(w.env.reveal("graphite", &[]).unwrap(), GRAPHITE_TOKEN);
}

#[test]
fn proxy_injects_the_exact_header_per_host() {
    let w = ai_world();
    let grants = [
        ("claude", CLAUDE_TOKEN),
        ("anthropic", ANTHROPIC_KEY),
        ("openai", OPENAI_KEY),
        ("graphite", GRAPHITE_TOKEN),
    ];
    for (provider, token) in grants {
        w.save_unvalidated(provider, token);
    }

    // Placeholders: format-valid, never the token.
    let ph = |n: &str| w.show(n)["placeholder"].as_str().unwrap().to_owned();
    let (claude_ph, anthropic_ph, openai_ph, graphite_ph) =
        (ph("claude"), ph("anthropic"), ph("openai"), ph("graphite"));
    assert!(claude_ph.starts_with("sk-ant-oat01-") && claude_ph.len() == 108);
    assert!(anthropic_ph.starts_with("sk-ant-api03-") && anthropic_ph.len() == 108);
    assert!(openai_ph.starts_with("sk-proj-") && openai_ph.len() == 72);
    assert!(graphite_ph.len() == 40 && graphite_ph.bytes().all(|b| b.is_ascii_alphanumeric()));

    let p = w.proxy(&["claude", "anthropic", "openai", "graphite"]);
    // api.anthropic.com: both grants, each its own header; the client's
    // placeholders replaced, not duplicated.
    p.get(
        "https://api.anthropic.com/v1/messages",
        &[
            &format!("Authorization: Bearer {claude_ph}"),
            &format!("x-api-key: {anthropic_ph}"),
        ],
    );
    assert_eq!(
        w.last_header("authorization"),
        [format!("Bearer {CLAUDE_TOKEN}")]
    );
    assert_eq!(w.last_header("anthropic-beta"), ["oauth-2025-04-20"]);
    assert_eq!(w.last_header("x-api-key"), [ANTHROPIC_KEY]);

    let openai_auth = format!("Authorization: Bearer {openai_ph}");
    for host in ["api.openai.com", "chatgpt.com", "files.openai.com"] {
        assert_eq!(
            p.upstream_authorization(&format!("https://{host}/v1/x"), &[&openai_auth]),
            [format!("Bearer {OPENAI_KEY}")],
            "{host}"
        );
    }
    for host in ["api.graphite.com", "app.graphite.com"] {
        assert_eq!(
            p.upstream_authorization(&format!("https://{host}/v1/x"), &[]),
            [format!("token {GRAPHITE_TOKEN}")],
            "{host}"
        );
    }
    // Nothing leaks into the log.
    let log = p.log_text();
    for (_, secret) in grants {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn grant_providers_lists_every_builtin() {
    let env = Env::new();
    let out = env.run(&["grant", "providers", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&ok(&out).stdout).unwrap();
    let providers = v.as_array().unwrap();
    let names: Vec<&str> = providers
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let entry = |n: &str| providers.iter().find(|p| p["name"] == n).unwrap();
    for n in [
        "github",
        "claude",
        "anthropic",
        "openai",
        "gemini",
        "graphite",
        "meta",
        "npm",
        "mcp",
        "oauth",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
        let p = entry(n);
        assert_eq!(p["origin"], "built-in", "{n}");
        assert_eq!(p["available"], true, "{n}");
    }
    assert_eq!(entry("claude")["available"], true);
    let table = stdout(ok(&env.run(&["grant", "providers"], &[])));
    assert!(
        table.contains("api.graphite.com, *.graphite.com"),
        "{table}"
    );
    assert!(table.contains("given at grant time"), "{table}");
    // Which built-ins make a validation request at grant time.
    let validates = |n: &str| entry(n)["validates"].as_bool().unwrap();
    for n in [
        "github",
        "claude",
        "anthropic",
        "openai",
        "meta",
        "npm",
        "oauth",
    ] {
        assert!(validates(n), "{n}");
    }
    // graphite: no endpoint to validate against; mcp: any server's secret;
    // gemini: API keys are not checked (its OAuth import is, by a refresh).
    for n in ["graphite", "mcp", "gemini"] {
        assert!(!validates(n), "{n}");
    }
}

fn npm_world() -> World {
    World::new(
        &["npm.corp.test", "pkgs.other.test", "extra.corp.test"],
        moat_testkit::apis::fake_npm_registry(),
    )
}

#[test]
fn npm_registries_from_npmrc_env_and_host_merge_into_one_credential() {
    let w = npm_world();
    std::fs::write(
        w.env.user_home().join(".npmrc"),
        "registry=https://npm.corp.test/\n@myorg:registry=https://npm.corp.test/\n@other:registry=https://pkgs.other.test/api/npm/\n//npm.corp.test/:_authToken=corp-token\n//pkgs.other.test/api/npm/:_authToken=${OTHER_TOKEN}\n",
    )
    .unwrap();
    let text = stderr(ok(&w.grant(&["npm"], &[("OTHER_TOKEN", "other-token")])));
    assert!(
        text.contains(
            "Found registries: npm.corp.test (default, @myorg), pkgs.other.test (@other)"
        ),
        "{text}"
    );
    assert!(
        text.contains("✓ npm.corp.test — authenticated as \"jsmith\""),
        "{text}"
    );
    assert!(
        text.contains("✓ pkgs.other.test — authenticated as"),
        "{text}"
    );
    assert!(!text.contains("corp-token") && !text.contains("other-token"));
    let whoami: Vec<String> = w.server.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(whoami, ["/-/whoami", "/api/npm/-/whoami"]);

    // --host merges a third registry into the same credential.
    ok(&w.grant_stdin(
        &["npm", "--host", "extra.corp.test", "--token-stdin"],
        "extra-token",
    ));
    let v = w.show("npm");
    let regs: serde_json::Value =
        serde_json::from_str(v["metadata"]["registries"].as_str().unwrap()).unwrap();
    let hosts: Vec<&str> = regs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        ["extra.corp.test", "npm.corp.test", "pkgs.other.test"]
    );
    assert_eq!(v["placeholder"], "npm_moatProxyInjected00000000");

    // A refused token: nothing changes.
    let err = fails(&w.grant_stdin(
        &["npm", "--host", "extra.corp.test", "--token-stdin"],
        "bad-token",
    ));
    assert!(err.contains("extra.corp.test rejected the token"), "{err}");
    assert!(!err.contains("bad-token"));
    // --token-stdin without --host does not guess the registry.
    let err = fails(&w.grant(&["npm", "--token-stdin"], &[]));
    assert!(err.contains("--host"), "{err}");

    // Each registry host gets its own Bearer token through the proxy.
    let p = w.proxy(&["npm"]);
    let placeholder = ["Authorization: Bearer npm_moatProxyInjected00000000"];
    for (host, token) in [
        ("npm.corp.test", "corp-token"),
        ("pkgs.other.test", "other-token"),
        ("extra.corp.test", "extra-token"),
    ] {
        assert_eq!(
            p.upstream_authorization(&format!("https://{host}/@myorg%2fpkg"), &placeholder),
            [format!("Bearer {token}")],
            "{host}"
        );
    }
}

#[test]
fn npm_token_env_needs_a_known_default_registry() {
    let w = npm_world();
    let err = fails(&w.grant(&["npm"], &[("PATH", "/nonexistent")]));
    assert!(
        err.contains("no npm registry tokens found") && err.contains("--host"),
        "{err}"
    );
    let err = fails(&w.grant(
        &["npm"],
        &[("PATH", "/nonexistent"), ("NPM_TOKEN", "env-token")],
    ));
    assert!(err.contains("default registry is unknown"), "{err}");
    ok(&w.grant(
        &["npm"],
        &[
            ("NPM_TOKEN", "env-token"),
            ("npm_config_registry", "https://npm.corp.test/"),
        ],
    ));
    let v = w.show("npm");
    assert_eq!(v["source"], "env:NPM_TOKEN");
    assert!(
        v["metadata"]["registries"]
            .as_str()
            .unwrap()
            .contains("\"default\":true")
    );
    assert_eq!(w.env.reveal("npm", &[]).unwrap(), "env-token");
}

fn oauth_world(calls: Arc<AtomicUsize>) -> World {
    World::new(
        &["auth.corp.test", "api.corp.test"],
        moat_testkit::apis::fake_oauth_endpoint(calls),
    )
}

/// The stand-in's authorize endpoint, for `--auth-url`.
const CORP_AUTH_URL: &str = "https://auth.corp.test/authorize";

/// `moat grant` arguments for `oauth corp` against the stand-in: its token
/// endpoint, client `moat-test` and host `api.corp.test`, then `extra`.
fn corp_oauth<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "oauth",
        "corp",
        "--token-url",
        "https://auth.corp.test/token",
        "--client-id",
        "moat-test",
        "--host",
        "api.corp.test",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn oauth_grant_validates_by_refresh_and_proxy_refreshes_once_for_concurrent_requests() {
    let calls = Arc::new(AtomicUsize::new(0));
    let w = oauth_world(calls.clone());
    let args = corp_oauth(&["--token-stdin"]);
    // A refused refresh token: nothing saved, the token not echoed.
    let err = fails(&w.grant_stdin(&args, "rt-bad-0123456789"));
    assert!(
        err.contains("invalid_grant") || err.contains("expired or revoked"),
        "{err}"
    );
    assert!(!err.contains("rt-bad-0123456789"));
    assert!(!w.stored("oauth-corp"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let text = stderr(ok(&w.grant_stdin(&args, "rt-good-0123456789")));
    assert!(text.contains("Refresh token is valid."), "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let form = w.last_body("/token");
    assert!(
        form.contains("client_id=moat-test") && form.contains("refresh_token=rt-good"),
        "{form}"
    );
    let v = w.show("oauth-corp");
    assert_eq!(v["kind"], "oauth");
    assert_eq!(v["secrets"], serde_json::json!(["refresh_token"]));
    assert_eq!(w.env.reveal("oauth-corp", &[]).unwrap(), "at-1");

    // at-1 expires within 5 minutes: the proxy refreshes before injecting,
    // once for 8 concurrent requests, and re-seals the new token.
    let p = w.proxy(&["oauth-corp"]);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| p.get("https://api.corp.test/v1/things", &[]));
        }
    });
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{}", p.log_text());
    let api = w.seen_at("/v1/things");
    assert_eq!(api.len(), 8);
    for s in &api {
        assert_eq!(s.header("authorization"), ["Bearer at-2"]);
    }
    assert_eq!(w.env.reveal("oauth-corp", &[]).unwrap(), "at-2");
    assert!(!p.log_text().contains("rt-good-0123456789"));
}

#[test]
fn github_enterprise_host_is_its_own_credential() {
    let handler: moat_testkit::Handler = Arc::new(|s: &moat_testkit::Seen| {
        let auth = s
            .header("authorization")
            .first()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match s.path.as_str() {
            "/api/v3/user" if auth == "Bearer ghe-token-0123456789" => {
                (200, "application/json", r#"{"login":"ent-user"}"#.into())
            }
            "/api/v3/user" => (
                401,
                "application/json",
                r#"{"message":"Bad credentials"}"#.into(),
            ),
            _ => (200, "application/json", r#"{"ok":true}"#.into()),
        }
    });
    let w = World::new(&["ghe.corp.test", "api.github.com"], handler);
    let err = fails(&w.grant_stdin(
        &["github", "--host", "ghe.corp.test", "--token-stdin"],
        "ghe-bad-0123456789",
    ));
    assert!(err.contains("rejected the token"), "{err}");
    let out = w.grant_stdin(
        &["github", "--host", "ghe.corp.test", "--token-stdin"],
        "ghe-token-0123456789",
    );
    let (text, said) = (stderr(ok(&out)), stdout(&out));
    assert!(text.contains("Authenticated as: ent-user"), "{text}");
    assert!(said.contains("GitHub Enterprise (ghe.corp.test)"), "{said}");
    assert_eq!(
        w.show("github:ghe.corp.test")["metadata"]["enterprise_host"],
        "ghe.corp.test"
    );
    w.save_unvalidated("github", "ghp_dotcom0123456789");

    let p = w.proxy(&["github:ghe.corp.test", "github"]);
    p.assert_injects(&[
        (
            "https://ghe.corp.test/api/v3/repos/o/r",
            "Bearer ghe-token-0123456789",
        ),
        ("https://api.github.com/user", "Bearer ghp_dotcom0123456789"),
    ]);
}

#[test]
fn mcp_grant_stores_mcp_name() {
    let env = Env::new();
    let file = [("MOAT_KEY_BACKEND", "file")];
    let said = stdout(ok(&env.run_stdin(
        &["grant", "mcp", "context7", "--token-stdin"],
        &file,
        "c7-key-0123",
    )));
    assert!(
        said.contains("MCP credential 'mcp-context7' saved"),
        "{said}"
    );
    assert_eq!(env.reveal("mcp-context7", &file).unwrap(), "c7-key-0123");
    let err = fails(&env.run(&["grant", "mcp"], &file));
    assert!(err.contains("moat grant mcp <name>"), "{err}");
}

const GEMINI_REFRESH: &str = "1//0real-refresh-token-0123456789";

fn write_gemini_credentials(home: &Path, refresh: &str, expiry_ms: u128) {
    let dir = home.join(".gemini");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("oauth_creds.json"),
        format!(
            r#"{{"access_token":"ya29.imported-old","refresh_token":"{refresh}","scope":"openid https://www.googleapis.com/auth/cloud-platform","token_type":"Bearer","id_token":"eyJx.y.z","expiry_date":{expiry_ms}}}"#
        ),
    )
    .unwrap();
}

fn google_world(calls: Arc<AtomicUsize>) -> World {
    World::new(
        &[
            "oauth2.googleapis.com",
            "cloudcode-pa.googleapis.com",
            "generativelanguage.googleapis.com",
        ],
        moat_testkit::apis::fake_google(calls),
    )
}

#[test]
fn gemini_oauth_import_validates_by_refresh_and_fails_cleanly() {
    let calls = Arc::new(AtomicUsize::new(0));
    let w = google_world(calls.clone());
    // Nothing to import.
    let err = fails(&w.grant(&["gemini", "--import"], &[]));
    assert!(err.contains("oauth_creds.json"), "{err}");
    // A revoked refresh token: nothing saved, nothing echoed.
    write_gemini_credentials(&w.env.user_home(), "1//0real-bad-000000", ms_from_now(3600));
    let err = fails(&w.grant(&["gemini", "--import"], &[]));
    assert!(err.contains("expired or revoked"), "{err}");
    assert!(!err.contains("1//0real-bad-000000"), "{err}");
    assert!(!w.stored("gemini"));
    // Logged in but no terminal and no flag: says how to choose.
    let err = fails(&w.grant(&["gemini"], &[]));
    assert!(
        err.contains("--import") && err.contains("GEMINI_API_KEY"),
        "{err}"
    );
    assert!(!w.stored("gemini"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // With GEMINI_API_KEY set the key is taken (API-key mode unchanged).
    ok(&w.grant(&["gemini"], &[("GEMINI_API_KEY", "AIzaRealKey0123456789")]));
    let v = w.show("gemini");
    assert_eq!(v["source"], "env:GEMINI_API_KEY");
    assert_eq!(v["kind"], "static");
    assert!(v["placeholder"].as_str().unwrap().starts_with("AIza"));
    let p = w.proxy(&["gemini"]);
    p.get(
        "https://generativelanguage.googleapis.com/v1beta/models",
        &[],
    );
    assert_eq!(w.last_header("x-goog-api-key"), ["AIzaRealKey0123456789"]);
    drop(p);
    // --token-stdin gives an API key too.
    ok(&w.grant_stdin(&["gemini", "--token-stdin"], "AIzaFromStdin0123456789"));
    let v = w.show("gemini");
    assert_eq!(v["source"], "stdin");
    assert_eq!(v["kind"], "static");
    assert_eq!(
        w.env.reveal("gemini", &[]).unwrap(),
        "AIzaFromStdin0123456789"
    );
}

#[test]
fn gemini_oauth_is_injected_refreshed_and_the_cli_refresh_answered_with_placeholders() {
    let calls = Arc::new(AtomicUsize::new(0));
    let w = google_world(calls.clone());
    // The CLI's token has expired: the import refreshes it.
    write_gemini_credentials(&w.env.user_home(), GEMINI_REFRESH, ms_from_now(-60));
    let text = stderr(ok(&w.grant(&["gemini", "--import"], &[])));
    assert!(text.contains("Found Gemini CLI credentials."), "{text}");
    assert!(text.contains("Refresh token is valid."), "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let form = String::from_utf8_lossy(&w.server.seen().last().unwrap().body).into_owned();
    assert!(
        form.contains(
            "client_id=681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
        ),
        "{form}"
    );
    let v = w.show("gemini");
    assert_eq!(v["kind"], "oauth");
    assert_eq!(v["source"], "gemini-cli");
    assert_eq!(v["metadata"]["mode"], "oauth");
    assert_eq!(w.env.reveal("gemini", &[]).unwrap(), "ya29.real-1");
    let placeholder = v["placeholder"].as_str().unwrap().to_owned();
    let (access_ph, refresh_ph) =
        moat::providers::builtin::gemini::oauth_placeholders(&placeholder);

    // ya29.real-1 expires within 15 minutes: refreshed before injecting.
    let p = w.proxy(&["gemini"]);
    let body = p.get(
        "https://cloudcode-pa.googleapis.com/v1internal:loadCodeAssist",
        &[&format!("Authorization: Bearer {access_ph}")],
    );
    assert_eq!(body, r#"{"ok":true}"#);
    assert_eq!(w.last_header("authorization"), ["Bearer ya29.real-2"]);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{}", p.log_text());

    // The CLI's own refresh, with the placeholder refresh token: answered by
    // Moat with placeholders, never forwarded.
    let seen_before = w.server.seen().len();
    let (status, body) = p.post(
        "https://oauth2.googleapis.com/token",
        &["Content-Type: application/x-www-form-urlencoded"],
        &format!(
            "grant_type=refresh_token&refresh_token={}&client_id=681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com&client_secret=x",
            refresh_ph.replace('/', "%2F")
        ),
    );
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["access_token"], access_ph.as_str());
    assert_eq!(json["refresh_token"], refresh_ph.as_str());
    assert_eq!(json["token_type"], "Bearer");
    let expires_in = json["expires_in"].as_u64().unwrap();
    assert!((3500..=3600).contains(&expires_in), "{expires_in}");
    assert!(
        !body.contains("ya29.real") && !body.contains("1//0real"),
        "{body}"
    );
    assert_eq!(w.server.seen().len(), seen_before, "forwarded upstream");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // tokeninfo (the CLI's startup check) works with the placeholder: asked
    // with the real token, answered with the placeholder.
    let (status, body) = p.post(
        "https://oauth2.googleapis.com/tokeninfo",
        &[&format!("Authorization: Bearer {access_ph}")],
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&access_ph) && !body.contains("ya29.real"),
        "{body}"
    );
    assert_eq!(w.last_header("authorization"), ["Bearer ya29.real-2"]);

    // Google's token endpoint saw only the real refresh token.
    for s in w.seen_at("/token") {
        let form = String::from_utf8_lossy(&s.body);
        assert!(
            form.contains("refresh_token=1%2F%2F0real-refresh-token"),
            "{form}"
        );
        assert!(!form.contains(&refresh_ph[4..]), "{form}");
    }
    assert!(!p.log_text().contains(GEMINI_REFRESH));
    assert!(!p.log_text().contains("ya29.real"));
}

#[test]
fn meta_token_is_validated_exchanged_with_app_credentials_and_injected() {
    let exchanges = Arc::new(AtomicUsize::new(0));
    let w = World::new(
        &["graph.facebook.com", "graph.instagram.com"],
        moat_testkit::apis::fake_graph_api(exchanges.clone()),
    );
    // Refused by the Graph API: nothing saved, token not echoed.
    let err = fails(&w.grant(&["meta"], &[("META_ACCESS_TOKEN", "EAAbad-token-0123")]));
    assert!(err.contains("Invalid OAuth access token"), "{err}");
    assert!(!err.contains("EAAbad-token-0123"), "{err}");
    assert!(!w.stored("meta"));
    // Half the app credentials, or a wrong secret: nothing saved.
    let err = fails(&w.grant(
        &["meta"],
        &[
            ("META_ACCESS_TOKEN", "EAAshort-token"),
            ("META_APP_ID", "123456"),
        ],
    ));
    assert!(err.contains("META_APP_SECRET"), "{err}");
    let err = fails(&w.grant(
        &["meta"],
        &[
            ("META_ACCESS_TOKEN", "EAAshort-token"),
            ("META_APP_ID", "123456"),
            ("META_APP_SECRET", "wrong-secret"),
        ],
    ));
    assert!(err.contains("token exchange failed"), "{err}");
    assert!(!err.contains("wrong-secret"), "{err}");
    assert!(!w.stored("meta"));
    assert_eq!(exchanges.load(Ordering::SeqCst), 0);

    // Good: validated on META_API_VERSION, exchanged for a long-lived token.
    let text = stderr(ok(&w.grant(
        &["meta"],
        &[
            ("META_ACCESS_TOKEN", "EAAshort-token"),
            ("META_APP_ID", "123456"),
            ("META_APP_SECRET", "app-secret"),
            ("META_API_VERSION", "v26.0"),
        ],
    )));
    assert!(text.contains("Authenticated as: Jane Developer"), "{text}");
    assert!(
        text.contains("Found META_APP_ID and META_APP_SECRET"),
        "{text}"
    );
    let seen = w.server.seen();
    assert_eq!(seen[seen.len() - 2].path, "/v26.0/me?fields=id,name");
    assert_eq!(
        seen[seen.len() - 2].header("authorization"),
        ["Bearer EAAshort-token"]
    );
    assert!(
        seen[seen.len() - 1]
            .path
            .starts_with("/v26.0/oauth/access_token?grant_type=fb_exchange_token")
    );
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);
    assert_eq!(w.env.reveal("meta", &[]).unwrap(), "EAAlong-1");
    let v = w.show("meta");
    assert_eq!(v["metadata"]["app_id"], "123456");
    assert_eq!(v["metadata"]["api_version"], "v26.0");
    assert_eq!(v["metadata"]["identity"], "Jane Developer");
    assert_eq!(v["secrets"], serde_json::json!(["app_secret"]));
    assert!(v["expires"].is_string());
    assert!(v["placeholder"].is_null());

    // Bearer on both Graph hosts; exchanged today, so not again.
    let p = w.proxy(&["meta"]);
    p.assert_injects(&[
        ("https://graph.facebook.com/v26.0/me", "Bearer EAAlong-1"),
        ("https://graph.instagram.com/me", "Bearer EAAlong-1"),
    ]);
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);
    assert!(!p.log_text().contains("app-secret"));

    // No app credentials: saved as is, static.
    let w2 = World::new(
        &["graph.facebook.com"],
        moat_testkit::apis::fake_graph_api(exchanges.clone()),
    );
    let out = w2.grant(&["meta"], &[("META_ACCESS_TOKEN", "EAAsystem-user")]);
    let text = stderr(ok(&out));
    assert!(text.contains("No app credentials"), "{text}");
    assert_eq!(w2.env.reveal("meta", &[]).unwrap(), "EAAsystem-user");
    assert_eq!(
        w2.server.seen().last().unwrap().path,
        "/v25.0/me?fields=id,name"
    );
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);

    // --token-stdin: validated the same way; refused saves nothing new.
    let err = fails(&w2.grant_stdin(&["meta", "--token-stdin"], "EAAbad-stdin-0123"));
    assert!(err.contains("Invalid OAuth access token"), "{err}");
    assert_eq!(w2.env.reveal("meta", &[]).unwrap(), "EAAsystem-user");
    let out = w2.grant_stdin(&["meta", "--token-stdin"], "EAAfrom-stdin");
    let text = stderr(ok(&out));
    assert!(text.contains("Authenticated as: Jane Developer"), "{text}");
    assert_eq!(w2.last_header("authorization"), ["Bearer EAAfrom-stdin"]);
    assert_eq!(w2.show("meta")["source"], "stdin");
    assert_eq!(w2.env.reveal("meta", &[]).unwrap(), "EAAfrom-stdin");
}

/// `moat grant oauth corp --auth-url …` running in the background, with the
/// authorize URL it printed; its stderr is collected until it exits.
struct Login {
    child: Child,
    url: String,
    rest: std::thread::JoinHandle<String>,
}

impl Login {
    fn start(w: &World, extra: &[&str]) -> Login {
        let mut cmd = w.env.cmd();
        cmd.arg("grant")
            .args(corp_oauth(&["--auth-url", CORP_AUTH_URL]))
            .args(extra)
            .envs(w.net(&[]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let rest = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines() {
                let line = line.unwrap_or_default();
                if let Some(url) = line.strip_prefix("  https://") {
                    let _ = tx.send(format!("https://{url}"));
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let url = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no authorize URL printed:\n{}", rest.join().unwrap());
            }
        };
        Login { child, url, rest }
    }

    /// The port of the redirect URI in the authorize URL.
    fn port(&self) -> u16 {
        let at = self.url.find("127.0.0.1%3A").expect("redirect_uri") + "127.0.0.1%3A".len();
        let digits: String = self.url[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().unwrap()
    }

    /// Wait for `moat` to exit: its whole output.
    fn finish(mut self) -> Output {
        let mut stdout_text = Vec::new();
        std::io::Read::read_to_end(self.child.stdout.as_mut().unwrap(), &mut stdout_text).unwrap();
        let status = self.child.wait().unwrap();
        Output {
            status,
            stdout: stdout_text,
            stderr: self.rest.join().unwrap().into_bytes(),
        }
    }
}

/// A browser: GET `url` trusting the test CA, the stand-in's names resolved
/// to it, following redirects when `follow`; (HTTP status, body).
fn browse(w: &World, url: &str, follow: bool) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30"])
        .args(WITH_STATUS)
        .arg("--cacert")
        .arg(&w.ca_file)
        .args([
            "--connect-to",
            &format!("auth.corp.test:443:{}", w.server.addr),
        ]);
    if follow {
        cmd.arg("-L");
    }
    let out = cmd.arg(url).output().expect("curl");
    assert!(out.status.success(), "curl {url}: {}", stderr(&out));
    status_and_body(&stdout(&out))
}

#[test]
fn oauth_browser_login_with_pkce_stores_a_credential_that_injects_and_refreshes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let w = oauth_world(calls.clone());
    let login = Login::start(&w, &["--scope", "openid", "--scope", "offline_access"]);
    assert!(
        login
            .url
            .starts_with("https://auth.corp.test/authorize?response_type=code&client_id=moat-test&redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{}",
        login.url
    );
    for part in [
        "code_challenge_method=S256",
        "scope=openid+offline_access",
        "&state=",
    ] {
        assert!(login.url.contains(part), "{part} missing: {}", login.url);
    }
    // Anything but the callback gets a 404 and the wait goes on.
    let (status, _) = browse(
        &w,
        &format!("http://127.0.0.1:{}/favicon.ico", login.port()),
        false,
    );
    assert_eq!(status, 404);
    // The user logs in: the stand-in redirects the browser to Moat's listener.
    let (status, page) = browse(&w, &login.url, true);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("You can close this tab"), "{page}");
    let out = login.finish();
    ok(&out);
    let text = stderr(&out);
    assert!(text.contains("Exchanging the authorization code"), "{text}");
    assert!(text.contains("Authorized."), "{text}");
    assert!(
        !text.contains("at-code-1") && !text.contains("rt-code-1"),
        "{text}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The token endpoint got the code, the verifier and the same redirect
    // URI (the stand-in checked SHA-256(verifier) against the challenge).
    let form = w.last_body("/token");
    for part in [
        "grant_type=authorization_code",
        "code=code-1",
        "code_verifier=",
        "redirect_uri=http%3A%2F%2F127.0.0.1%3A",
        "client_id=moat-test",
    ] {
        assert!(form.contains(part), "{part} missing: {form}");
    }
    let v = w.show("oauth-corp");
    assert_eq!(v["kind"], "oauth");
    assert_eq!(v["source"], "oauth-authorization-code");
    assert_eq!(v["metadata"]["auth_url"], CORP_AUTH_URL);
    assert_eq!(v["metadata"]["scope"], "openid offline_access");
    assert_eq!(v["metadata"]["hosts"], "api.corp.test");
    assert_eq!(v["secrets"], serde_json::json!(["refresh_token"]));
    assert!(v["expires"].is_string());
    assert_eq!(w.env.reveal("oauth-corp", &[]).unwrap(), "at-code-1");

    // at-code-1 expires within 5 minutes: the proxy refreshes it with the
    // refresh token from the code exchange, then injects.
    let p = w.proxy(&["oauth-corp"]);
    p.assert_injects(&[("https://api.corp.test/v1/things", "Bearer at-2")]);
    let form = w.last_body("/token");
    assert!(
        form.contains("grant_type=refresh_token") && form.contains("refresh_token=rt-code-1"),
        "{form}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn oauth_browser_login_failures_save_nothing() {
    let calls = Arc::new(AtomicUsize::new(0));
    let w = oauth_world(calls.clone());

    // A code challenge that is not Moat's (as if the request was tampered
    // with): the stand-in refuses Moat's verifier at the exchange.
    let login = Login::start(&w, &[]);
    let at = login.url.find("code_challenge=").unwrap() + "code_challenge=".len();
    let tampered = format!(
        "{}E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM{}",
        &login.url[..at],
        &login.url[at + 43..]
    );
    assert_ne!(tampered, login.url);
    let (status, _) = browse(&w, &tampered, true);
    assert_eq!(status, 200);
    let err = fails(&login.finish());
    assert!(
        err.contains("refused the authorization code") && err.contains("PKCE verification failed"),
        "{err}"
    );
    assert!(!err.contains("code-1"), "the code was echoed: {err}");
    assert!(!w.stored("oauth-corp"));

    // A redirect with another state (a forged or stale redirect).
    let login = Login::start(&w, &[]);
    let (status, page) = browse(
        &w,
        &format!(
            "http://127.0.0.1:{}/callback?code=code-forged&state=forged",
            login.port()
        ),
        false,
    );
    assert_eq!(status, 400);
    assert!(page.contains("state does not match"), "{page}");
    let err = fails(&login.finish());
    assert!(
        err.contains("state does not match") && err.contains("Nothing was saved"),
        "{err}"
    );
    assert!(!w.stored("oauth-corp"));

    // The user refuses consent.
    let login = Login::start(&w, &["--scope", "deny"]);
    let (status, page) = browse(&w, &login.url, true);
    assert_eq!(status, 400);
    assert!(page.contains("access_denied"), "{page}");
    let err = fails(&login.finish());
    assert!(
        err.contains("authorization was denied (access_denied: The user denied access)"),
        "{err}"
    );
    assert!(!w.stored("oauth-corp"));

    // A redirect port that is taken: a clear error before any URL is shown.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = fails(&w.grant(
        &corp_oauth(&["--auth-url", CORP_AUTH_URL, "--redirect-port", &port]),
        &[],
    ));
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("--redirect-port"),
        "{err}"
    );
    assert!(!err.contains("https://auth.corp.test/authorize?"), "{err}");
    drop(taken);

    // Nobody comes back (on the port asked for, now free).
    let login = Login::start(&w, &["--auth-timeout", "1s", "--redirect-port", &port]);
    assert_eq!(login.port().to_string(), port);
    let err = fails(&login.finish());
    assert!(
        err.contains("no authorization arrived within 1s") && err.contains("--auth-timeout"),
        "{err}"
    );
    assert!(!w.stored("oauth-corp"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // The flags say what is missing (here --client-id).
    let err = fails(&w.grant(
        &[
            "oauth",
            "corp",
            "--auth-url",
            CORP_AUTH_URL,
            "--token-url",
            "https://auth.corp.test/token",
            "--host",
            "api.corp.test",
        ],
        &[],
    ));
    assert!(
        err.contains("--client-id is required with --auth-url"),
        "{err}"
    );
    let err = fails(&w.grant(
        &corp_oauth(&["--auth-url", "http://auth.corp.test/authorize"]),
        &[],
    ));
    assert!(err.contains("--auth-url must be an https:// URL"), "{err}");
    assert!(!w.stored("oauth-corp"));
}

#[test]
fn oauth_refresh_failure_in_the_proxy_keeps_the_old_token_and_reports_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let revoked = Arc::new(AtomicBool::new(false));
    let w = World::new(
        &["auth.corp.test", "api.corp.test"],
        moat_testkit::apis::fake_oauth_endpoint_revocable(calls.clone(), revoked.clone()),
    );
    // From OAUTH_REFRESH_TOKEN, with a client secret from OAUTH_CLIENT_SECRET.
    let text = stderr(ok(&w.grant(
        &corp_oauth(&[]),
        &[
            ("OAUTH_REFRESH_TOKEN", "rt-env-0123456789"),
            ("OAUTH_CLIENT_SECRET", "cs-env-0123456789"),
        ],
    )));
    assert!(text.contains("Using OAUTH_REFRESH_TOKEN"), "{text}");
    let form = String::from_utf8_lossy(&w.seen_at("/token")[0].body).into_owned();
    assert!(
        form.contains("refresh_token=rt-env-0123456789")
            && form.contains("client_secret=cs-env-0123456789"),
        "{form}"
    );
    let v = w.show("oauth-corp");
    assert_eq!(v["source"], "oauth-refresh-token");
    assert_eq!(
        v["secrets"],
        serde_json::json!(["client_secret", "refresh_token"])
    );
    assert_eq!(w.env.reveal("oauth-corp", &[]).unwrap(), "at-1");

    // at-1 is due (it expires in 60 s), but the refresh token has been
    // revoked: the proxy keeps injecting at-1 and says why in its log.
    revoked.store(true, Ordering::SeqCst);
    let p = w.proxy(&["oauth-corp"]);
    p.assert_injects(&[("https://api.corp.test/v1/things", "Bearer at-1")]);
    assert_eq!(w.seen_at("/token").len(), 2, "{}", p.log_text());
    let log = p.log_text();
    assert!(
        log.contains("refresh failed, still using the current token")
            && log.contains("oauth-corp")
            && log.contains("expired or revoked"),
        "{log}"
    );
    for secret in ["rt-env-0123456789", "cs-env-0123456789", "at-1"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    // No retry storm: the next request within a minute does not ask again.
    p.assert_injects(&[("https://api.corp.test/v1/things", "Bearer at-1")]);
    assert_eq!(w.seen_at("/token").len(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    drop(p);
    assert_eq!(w.env.reveal("oauth-corp", &[]).unwrap(), "at-1");
}
