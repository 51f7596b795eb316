//! `moat claude`, `moat codex`, `moat gemini` as root with the real npm
//! packages (pinned in scripts/agent-packages.txt; scripts/setup.sh caches
//! them, and the tests' npm runs offline from that cache), in
//! non-interactive mode against local TLS stand-ins of their APIs
//! (testkit/src/agents.rs) reached by the real host names through Moat's
//! DNS and `MOAT_RESOLVE`, under a strict network policy that allows only
//! those hosts. Each stand-in answers only the real key, so the agent
//! printing its reply proves the proxy put the key in; the sandbox held a
//! placeholder.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use moat_testkit::TestCa;
use moat_testkit::agents::AgentStandins;

const ANTHROPIC_KEY: &str = "sk-ant-api03-RealAnthropicKeyForTheStandIn0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW";
const CLAUDE_TOKEN: &str = "sk-ant-oat01-RealClaudeOauthTokenForTheStandIn0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP";
const OPENAI_KEY: &str = "sk-proj-RealOpenAiKeyForTheStandIn0123456789abcdefghijklmnopqrstuvw";
const GEMINI_KEY: &str = "AIzaRealGeminiKeyForTheStandIn0123456";
const REPLY: &str = "Moat stand-in says hello";

/// `package@version` for `agent` from scripts/agent-packages.txt.
fn pinned(package: &str) -> String {
    let pins = fs::read_to_string(repo().join("scripts/agent-packages.txt")).unwrap();
    pins.lines()
        .find_map(|l| l.strip_prefix(&format!("{package}@")))
        .unwrap_or_else(|| panic!("{package} not pinned"))
        .to_owned()
}

struct Setup {
    env: Env,
    standins: AgentStandins,
    ca_file: PathBuf,
    ws: PathBuf,
    _ca: TestCa,
}

fn setup() -> Setup {
    assert!(is_root(), "vm-tests run as root");
    let ca = TestCa::new().unwrap();
    // api.anthropic.com takes the API key, or the OAuth token as a Bearer.
    let both = |host: &str, api_key: moat_testkit::Handler| -> moat_testkit::Handler {
        if host != AgentStandins::ANTHROPIC_HOST {
            return api_key;
        }
        let oauth = moat_testkit::agents::fake_anthropic(CLAUDE_TOKEN, REPLY);
        let bearer = format!("Bearer {CLAUDE_TOKEN}");
        std::sync::Arc::new(move |seen: &moat_testkit::Seen| {
            if seen.header("authorization").contains(&bearer.as_str()) {
                oauth(seen)
            } else {
                api_key(seen)
            }
        })
    };
    let standins =
        AgentStandins::start(&ca, [ANTHROPIC_KEY, OPENAI_KEY, GEMINI_KEY], REPLY, both).unwrap();
    let env = Env::new();
    let ca_file = ca.write_pem(env.dir.path()).unwrap();
    let ws = env.dir.path().join("project");
    fs::create_dir_all(&ws).unwrap();
    // Only the stand-ins' hosts: an agent that phones home elsewhere is
    // refused here, never sent to the internet.
    fs::write(
        ws.join("moat.yaml"),
        "network:\n  policy: strict\n  rules:\n    - api.anthropic.com\n    - api.openai.com\n    - generativelanguage.googleapis.com\n",
    )
    .unwrap();
    Setup {
        env,
        standins,
        ca_file,
        ws,
        _ca: ca,
    }
}

impl Setup {
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MOAT_RESOLVE", self.standins.resolve()),
            ("MOAT_UPSTREAM_CA", self.ca_file.display().to_string()),
            ("MOAT_KEY_BACKEND", "file".into()),
            ("npm_config_cache", "/opt/moat-npm-cache".into()),
            ("npm_config_offline", "true".into()),
            ("npm_config_update_notifier", "false".into()),
        ]
    }

    fn grant(&self, provider: &str, token: &str) {
        let out = self.env.run_stdin(
            &["grant", provider, "--token-stdin", "--no-validate"],
            &[("MOAT_KEY_BACKEND", "file")],
            token,
        );
        ok(&out);
    }

    /// `moat AGENT --agent-version V WS [extra] -- args`, with `path` as PATH.
    fn agent(&self, agent: &str, extra: &[&str], args: &[&str], path: Option<&str>) -> Output {
        let package = match agent {
            "claude" => "@anthropic-ai/claude-code",
            "codex" => "@openai/codex",
            _ => "@google/gemini-cli",
        };
        let version = pinned(package);
        let mut cmd = self.env.cmd();
        cmd.envs(self.vars())
            .args([agent, "--yes", "--agent-version", &version])
            .args(extra)
            .arg(&self.ws)
            .arg("--")
            .args(args);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        cmd.output().unwrap()
    }

    /// Every credential the stand-in for `host` was sent.
    fn keys_seen(&self, host: &str) -> Vec<String> {
        let server = match host {
            AgentStandins::ANTHROPIC_HOST => &self.standins.anthropic,
            AgentStandins::OPENAI_HOST => &self.standins.openai,
            _ => &self.standins.gemini,
        };
        server
            .seen()
            .iter()
            .flat_map(|s| {
                ["x-api-key", "authorization", "x-goog-api-key"]
                    .iter()
                    .flat_map(|h| s.header(h).into_iter().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// No real key in anything the sandbox could write: the workspace and
    /// the agents' state directories.
    fn assert_no_key_inside(&self) {
        let state = self.env.home().join("agents/state");
        for dir in [self.ws.as_path(), state.as_path()] {
            for key in [ANTHROPIC_KEY, CLAUDE_TOKEN, OPENAI_KEY, GEMINI_KEY] {
                let found = grep(dir, key);
                assert!(found.is_empty(), "{key} in {found:?}");
            }
        }
    }
}

/// Files under `dir` containing `needle`.
fn grep(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let p = e.path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            hits.extend(grep(&p, needle));
        } else if meta.is_file()
            && fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            hits.push(p);
        }
    }
    hits
}

impl Setup {
    /// The agents made no connection the strict policy had to refuse: with
    /// telemetry, error reports and update checks off, they call only their
    /// API.
    fn assert_nothing_refused(&self) {
        let mut refused = Vec::new();
        for id in self.env.run_ids() {
            let path = self.env.home().join("runs").join(id).join("events.jsonl");
            for l in fs::read_to_string(path).unwrap_or_default().lines() {
                let e: serde_json::Value = serde_json::from_str(l).unwrap();
                let action = e["action"].as_str().unwrap_or_default();
                if e["event"] == "connect" && matches!(action, "deny" | "refuse") {
                    refused.push(format!("{}:{} {action}", e["host"], e["port"]));
                }
            }
        }
        assert!(refused.is_empty(), "needless connections: {refused:?}");
    }
}

fn assert_replied(what: &str, out: &Output) {
    assert!(
        out.status.success() && stdout(out).contains(REPLY),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

#[test]
fn claude_prints_the_reply_with_its_oauth_grant_then_starts_from_the_cache() {
    let s = setup();
    s.grant("claude", CLAUDE_TOKEN);
    let out = s.agent("claude", &[], &["-p", "say hello"], None);
    assert_replied("moat claude -p", &out);
    assert!(
        stderr(&out).contains("installing @anthropic-ai/claude-code@"),
        "{}",
        stderr(&out)
    );
    let keys = s.keys_seen(AgentStandins::ANTHROPIC_HOST);
    assert!(
        keys.iter().any(|k| k == &format!("Bearer {CLAUDE_TOKEN}")),
        "the stand-in got the real token: {keys:?}"
    );
    // Claude Code's own betas stay; Moat adds the OAuth flag beside them.
    let betas: Vec<String> = s
        .standins
        .anthropic
        .seen()
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages"))
        .flat_map(|r| r.header("anthropic-beta").into_iter().map(str::to_owned))
        .collect();
    assert!(
        betas
            .iter()
            .any(|b| b.contains("oauth-2025-04-20") && b.contains("claude-code-")),
        "{betas:?}"
    );
    s.assert_no_key_inside();
    // The second start uses the cache: an npm that fails if called.
    let stub = s.env.dir.path().join("no-npm");
    fs::create_dir_all(&stub).unwrap();
    fs::write(
        stub.join("npm"),
        "#!/bin/sh\necho npm-was-called >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(stub.join("npm"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", stub.display(), std::env::var("PATH").unwrap());
    let again = s.agent("claude", &[], &["-p", "say hello"], Some(&path));
    assert_replied("second moat claude -p", &again);
    assert!(
        !stderr(&again).contains("npm-was-called"),
        "{}",
        stderr(&again)
    );
    assert!(!stderr(&again).contains("installing"), "{}", stderr(&again));
    s.assert_nothing_refused();
}

#[test]
fn claude_falls_back_to_anthropic_and_prefers_claude() {
    let s = setup();
    let none = s.agent("claude", &[], &["-p", "hi"], None);
    assert_eq!(none.status.code(), Some(125), "{}", stderr(&none));
    assert!(
        stderr(&none).contains("run 'moat grant claude'"),
        "{}",
        stderr(&none)
    );
    s.grant("anthropic", ANTHROPIC_KEY);
    let out = s.agent("claude", &[], &["-p", "hi"], None);
    assert_replied("anthropic fallback", &out);
    assert!(
        s.keys_seen(AgentStandins::ANTHROPIC_HOST)
            .iter()
            .any(|k| k == ANTHROPIC_KEY),
        "x-api-key: the real key"
    );
    s.grant("claude", CLAUDE_TOKEN);
    let before = s.keys_seen(AgentStandins::ANTHROPIC_HOST).len();
    let out = s.agent("claude", &[], &["-p", "hi"], None);
    assert_replied("claude preferred", &out);
    let after = s.keys_seen(AgentStandins::ANTHROPIC_HOST);
    assert!(
        after[before..]
            .iter()
            .all(|k| k == &format!("Bearer {CLAUDE_TOKEN}")),
        "only the claude token once both are stored: {:?}",
        &after[before..]
    );
    s.assert_no_key_inside();
}

#[test]
fn an_oauth_token_stored_as_anthropic_moves_to_claude() {
    let s = setup();
    // As an older Moat stored it: an OAuth token under 'anthropic' (the
    // grant command refuses that now, so the store is written directly).
    {
        use moat::store::{CredName, Credential, Keys, Policy, Store, keys::FileBackend};
        let home = moat::home::MoatHome::new(s.env.home(), None);
        let file = || Box::new(FileBackend::new(home.clone()));
        let store = Store::new(home.clone(), None, Keys::new(Policy::File, file(), file()));
        let cred = Credential::new_static("anthropic", CLAUDE_TOKEN.to_owned().into(), "stdin");
        store
            .put(&CredName::parse("anthropic").unwrap(), &cred)
            .unwrap();
    }
    let out = s.agent("claude", &[], &["-p", "hi"], None);
    let list = stdout(
        &s.env
            .run(&["grant", "list"], &[("MOAT_KEY_BACKEND", "file")]),
    );
    assert!(
        list.contains("claude") && !list.contains("anthropic"),
        "{list}"
    );
    assert_replied("after the migration", &out);
}

#[test]
fn codex_exec_prints_the_reply_with_the_openai_grant() {
    let s = setup();
    let none = s.agent("codex", &[], &["exec", "hi"], None);
    assert!(
        stderr(&none).contains("run 'moat grant openai'"),
        "{}",
        stderr(&none)
    );
    s.grant("openai", OPENAI_KEY);
    let out = s.agent(
        "codex",
        &[],
        &["exec", "--skip-git-repo-check", "say hello"],
        None,
    );
    assert_replied("moat codex exec", &out);
    assert!(
        s.keys_seen(AgentStandins::OPENAI_HOST)
            .iter()
            .any(|k| k == &format!("Bearer {OPENAI_KEY}")),
        "{:?}",
        s.keys_seen(AgentStandins::OPENAI_HOST)
    );
    s.assert_no_key_inside();
    s.assert_nothing_refused();
}

#[test]
fn gemini_prints_the_reply_with_the_gemini_grant() {
    let s = setup();
    s.grant("gemini", GEMINI_KEY);
    let out = s.agent("gemini", &[], &["-p", "say hello"], None);
    assert_replied("moat gemini -p", &out);
    assert!(
        s.keys_seen(AgentStandins::GEMINI_HOST)
            .iter()
            .any(|k| k == GEMINI_KEY),
        "{:?}",
        s.keys_seen(AgentStandins::GEMINI_HOST)
    );
    s.assert_no_key_inside();
    s.assert_nothing_refused();
}

/// In a container: the test image (glibc, no node) runs Claude Code's
/// native binary from Moat's cache, bound in read-only.
#[test]
fn claude_runs_in_docker_too() {
    let s = setup();
    s.grant("claude", CLAUDE_TOKEN);
    let mut yaml = fs::read_to_string(s.ws.join("moat.yaml")).unwrap();
    yaml.push_str(&format!("runtime: docker\nimage: {TEST_IMAGE}\n"));
    fs::write(s.ws.join("moat.yaml"), yaml).unwrap();
    let version = pinned("@anthropic-ai/claude-code");
    let out = s
        .env
        .cmd()
        .envs(s.vars())
        .env("DOCKER_HOST", docker_host())
        .args(["claude", "--yes", "--agent-version", &version])
        .arg(&s.ws)
        .args(["--", "-p", "say hello"])
        .output()
        .unwrap();
    assert_replied("moat claude in docker", &out);
    assert!(
        s.keys_seen(AgentStandins::ANTHROPIC_HOST)
            .iter()
            .any(|k| k == &format!("Bearer {CLAUDE_TOKEN}"))
    );
    s.assert_no_key_inside();
}
