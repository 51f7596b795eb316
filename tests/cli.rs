//! The real `moat` binary against a private `$MOAT_HOME`: grant, list, show,
//! revoke, profiles, concurrency, crashes, validation against a local TLS
//! server, provider files. Unprivileged; any user.

mod common;

use std::collections::HashSet;
use std::fs;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use moat_testkit::{StubServer, TestCa, fake_github};

const GH: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyz";

#[test]
fn grant_from_env_then_list_show_revoke() {
    let env = Env::new();
    let out = ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", GH)],
    ))
    .clone();
    assert_eq!(stdout(&out).trim(), "GitHub credential saved");
    assert!(
        stderr(&out).contains("Using token from GITHUB_TOKEN"),
        "{}",
        stderr(&out)
    );
    // GH_TOKEN is the second source.
    let out = ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GH_TOKEN", "ghp_second")],
    ))
    .clone();
    assert!(stderr(&out).contains("Using token from GH_TOKEN"));
    assert_eq!(env.reveal("github", &[]).unwrap(), "ghp_second");

    let file = env.home().join("credentials/github.enc");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&env.home().join("credentials")), 0o700);
    assert_eq!(mode(&env.home()), 0o700);
    assert_eq!(mode(&env.home().join("encryption.key")), 0o600);
    let raw = fs::read(&file).unwrap();
    assert!(
        !raw.windows(10).any(|w| w == b"ghp_second"),
        "token stored in clear"
    );
    assert!(raw.starts_with(b"MOATCRED"));

    let list = ok(&env.run(&["grant", "list", "--json"], &[])).clone();
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "github");
    assert_eq!(items[0]["provider"], "github");
    assert_eq!(items[0]["source"], "env:GH_TOKEN");
    assert!(items[0]["profile"].is_null());
    let created = items[0]["created"].as_str().unwrap();
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "{created}"
    );
    assert!(!stdout(&list).contains("ghp_second"));

    let table = stdout(ok(&env.run(&["grant", "list"], &[])));
    assert!(
        table.starts_with("NAME") && table.contains("github") && table.contains("env:GH_TOKEN"),
        "{table}"
    );

    let show = ok(&env.run(&["grant", "show", "github"], &[])).clone();
    assert!(stdout(&show).contains("provider:    github"));
    assert!(!stdout(&show).contains("ghp_second"));
    let reveal = ok(&env.run(&["grant", "show", "github", "--reveal"], &[])).clone();
    assert!(stdout(&reveal).contains("ghp_second"));
    assert!(stderr(&reveal).contains("warning"), "{}", stderr(&reveal));

    let out = ok(&env.run(&["revoke", "github"], &[])).clone();
    assert!(stdout(&out).contains("revoked"));
    assert!(!file.exists());
    let err = fails(&env.run(&["revoke", "github"], &[]));
    assert!(err.contains("no credential 'github'"), "{err}");
    assert_eq!(
        stdout(ok(&env.run(&["grant", "list", "--json"], &[]))).trim(),
        "[]"
    );
}

#[test]
fn revoke_unknown_lists_what_exists() {
    let env = Env::new();
    ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-one")],
    ));
    ok(&env.run_stdin(
        &["grant", "mcp", "context7", "--token-stdin"],
        &[],
        "mcp-secret\n",
    ));
    let err = fails(&env.run(&["revoke", "gitlab"], &[]));
    assert!(err.contains("stored: mcp-context7, openai"), "{err}");
    assert_eq!(env.reveal("mcp-context7", &[]).unwrap(), "mcp-secret");
}

#[test]
fn token_stdin_and_missing_sources() {
    let env = Env::new();
    ok(&env.run_stdin(
        &["grant", "gitlab", "--token-stdin", "--no-validate"],
        &[("GITLAB_TOKEN", "from-env")],
        "  glpat-piped \n",
    ));
    assert_eq!(env.reveal("gitlab", &[]).unwrap(), "glpat-piped");
    // Non-interactive, no source: non-zero with the env vars it tried.
    let err = fails(&env.run(&["grant", "gitlab", "--no-validate"], &[]));
    assert!(err.contains("GITLAB_TOKEN, GL_TOKEN"), "{err}");
    assert!(err.contains("--token-stdin"), "{err}");
    let err = fails(&env.run_stdin(&["grant", "gitlab", "--token-stdin"], &[], "\n"));
    assert!(err.contains("empty"), "{err}");
    let err = fails(&env.run(&["grant", "nosuch"], &[]));
    assert!(
        err.contains("unknown provider 'nosuch'") && err.contains("github"),
        "{err}"
    );
    // Aliases work and store under the provider's name.
    ok(&env.run(
        &["grant", "tg", "--no-validate"],
        &[("TELEGRAM_BOT_TOKEN", "123:abc")],
    ));
    assert_eq!(env.reveal("telegram", &[]).unwrap(), "123:abc");
}

#[test]
fn profiles_are_isolated() {
    let env = Env::new();
    ok(&env.run(
        &["grant", "github", "--no-validate", "--profile", "work"],
        &[("GITHUB_TOKEN", "ghp_work")],
    ));
    ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", "ghp_default")],
    ));
    assert!(
        env.home()
            .join("credentials/profiles/work/github.enc")
            .exists()
    );
    assert_eq!(env.reveal("github", &[]).unwrap(), "ghp_default");
    assert_eq!(
        env.reveal("github", &[("MOAT_PROFILE", "work")]).unwrap(),
        "ghp_work"
    );
    ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("MOAT_PROFILE", "work"), ("OPENAI_API_KEY", "sk-w")],
    ));
    let list: serde_json::Value = serde_json::from_slice(
        &ok(&env.run(&["grant", "list", "--json", "--profile", "work"], &[])).stdout,
    )
    .unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["github", "openai"]);
    assert_eq!(list[0]["profile"], "work");
    let list: serde_json::Value =
        serde_json::from_slice(&ok(&env.run(&["grant", "list", "--json"], &[])).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    ok(&env.run(&["revoke", "github", "--profile", "work"], &[]));
    assert_eq!(env.reveal("github", &[]).unwrap(), "ghp_default");
    for bad in ["-leading-dash", "has spaces", "uses.dots"] {
        let err = fails(&env.run(&["grant", "list", &format!("--profile={bad}")], &[]));
        assert!(err.contains("starts with a letter or digit"), "{err}");
        let err = fails(&env.run(
            &["grant", "github", "--no-validate"],
            &[("MOAT_PROFILE", bad), ("GITHUB_TOKEN", GH)],
        ));
        assert!(
            err.contains(&format!("invalid profile name '{bad}'")),
            "{err}"
        );
    }
}

/// Start one `moat grant NAME` per (name, token) at once; all must succeed.
fn grant_all_at_once(env: &Env, grants: impl Iterator<Item = (String, String)>) {
    let children: Vec<_> = grants
        .map(|(name, token)| {
            env.cmd()
                .args(["grant", &name, "--no-validate"])
                .env("P_TOKEN", token)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        ok(&c.wait_with_output().unwrap());
    }
}

#[test]
fn concurrent_grants_lose_nothing() {
    let env = Env::new();
    let dir = env.providers_dir();
    for i in 0..20 {
        yaml_provider(&dir, &format!("p{i:02}"), "P_TOKEN");
    }
    // 20 different names at once, on a store with no key yet: exactly one key.
    grant_all_at_once(
        &env,
        (0..20).map(|i| (format!("p{i:02}"), format!("value-{i}"))),
    );
    for i in 0..20 {
        assert_eq!(
            env.reveal(&format!("p{i:02}"), &[]).unwrap(),
            format!("value-{i}")
        );
    }
    // 20 writers of the same name: the survivor is one of them, intact.
    grant_all_at_once(
        &env,
        (0..20).map(|i| ("p00".to_owned(), format!("same-{i}"))),
    );
    let survivor = env.reveal("p00", &[]).unwrap();
    assert!(
        (0..20).any(|i| survivor == format!("same-{i}")),
        "{survivor}"
    );
    let debris: Vec<_> = fs::read_dir(env.home().join("credentials"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(debris.is_empty(), "{debris:?}");
}

#[test]
fn kill_9_during_grant_leaves_a_readable_value() {
    let env = Env::new();
    ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-initial")],
    ));
    let mut written: HashSet<String> = HashSet::from(["sk-initial".to_owned()]);
    for i in 0..40u64 {
        let value = format!("sk-attempt-{i}");
        written.insert(value.clone());
        let mut child = env
            .cmd()
            .args(["grant", "openai", "--no-validate"])
            .env("OPENAI_API_KEY", &value)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kill over the process's life, start to finish.
        std::thread::sleep(Duration::from_micros((i * 397) % 6000));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let now = env
            .reveal("openai", &[])
            .expect("credential must stay readable after kill -9");
        assert!(written.contains(&now), "unexpected value {now}");
    }
    // The next writer clears any temp file a killed one left.
    ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-final")],
    ));
    let names: Vec<String> = fs::read_dir(env.home().join("credentials"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["openai.enc"]);
    assert_eq!(env.reveal("openai", &[]).unwrap(), "sk-final");
}

#[test]
fn validation_against_local_tls_server() {
    let env = Env::new();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_pem(env.dir.path()).unwrap();
    let server = StubServer::start(&ca, &["api.github.com"], fake_github()).unwrap();
    let resolve = server.resolve_entry("api.github.com");
    let net = [
        ("MOAT_RESOLVE", resolve.as_str()),
        ("MOAT_UPSTREAM_CA", ca_file.to_str().unwrap()),
    ];

    let good = env.run(
        &["grant", "github"],
        &[net[0], net[1], ("GITHUB_TOKEN", GH)],
    );
    ok(&good);
    assert!(
        stderr(&good).contains("Authenticated as: octocat"),
        "{}",
        stderr(&good)
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/user");
    assert_eq!(seen[0].header("authorization"), [format!("Bearer {GH}")]);
    assert!(seen[0].header("user-agent")[0].starts_with("moat/"));
    let show = stdout(ok(&env.run(&["grant", "show", "github"], &[])));
    assert!(
        show.lines()
            .any(|l| l.starts_with("identity:") && l.ends_with(" octocat")),
        "{show}"
    );

    // A rejected token: clear error, nothing saved, token not echoed.
    let env2 = Env::new();
    let err = fails(&env2.run(
        &["grant", "github"],
        &[net[0], net[1], ("GITHUB_TOKEN", "ghp_bad_token_value")],
    ));
    assert!(
        err.contains("rejected the token")
            && err.contains("401")
            && err.contains("Bad credentials"),
        "{err}"
    );
    assert!(!err.contains("ghp_bad_token_value"), "{err}");
    assert!(!env2.home().join("credentials/github.enc").exists());

    // Without the test CA the upstream is untrusted.
    let err = fails(&env2.run(&["grant", "github"], &[net[0], ("GITHUB_TOKEN", GH)]));
    assert!(
        err.contains("api.github.com") && err.contains("MOAT_UPSTREAM_CA"),
        "{err}"
    );

    // --no-validate makes no request.
    let before = server.seen().len();
    ok(&env2.run(
        &["grant", "github", "--no-validate"],
        &[net[0], net[1], ("GITHUB_TOKEN", "ghp_bad_but_saved")],
    ));
    assert_eq!(server.seen().len(), before);

    // Malformed MOAT_RESOLVE is quoted back.
    let err = fails(&env2.run(
        &["grant", "github"],
        &[
            ("MOAT_RESOLVE", "api.github.com=1.2.3.4"),
            ("GITHUB_TOKEN", GH),
        ],
    ));
    assert!(err.contains("'api.github.com=1.2.3.4'"), "{err}");
}

#[test]
fn validation_with_token_in_url_and_custom_provider() {
    let env = Env::new();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_pem(env.dir.path()).unwrap();
    let handler: moat_testkit::Handler =
        std::sync::Arc::new(|s: &moat_testkit::Seen| match s.path.as_str() {
            "/bot123:ABC/getMe" => (
                200,
                "application/json",
                r#"{"ok":true,"result":{"username":"moat_test_bot"}}"#.into(),
            ),
            "/v1/me" if s.header("x-acme-key") == ["acme-secret"] && s.method == "POST" => {
                (200, "application/json", r#"{"username":"ada"}"#.into())
            }
            _ => (
                401,
                "application/json",
                r#"{"description":"Unauthorized"}"#.into(),
            ),
        });
    let server = StubServer::start(&ca, &["api.telegram.org", "api.acme.test"], handler).unwrap();
    let resolve = format!(
        "{},{}",
        server.resolve_entry("api.telegram.org"),
        server.resolve_entry("api.acme.test")
    );
    let net = [
        ("MOAT_RESOLVE", resolve.as_str()),
        ("MOAT_UPSTREAM_CA", ca_file.to_str().unwrap()),
    ];
    let out = ok(&env.run(
        &["grant", "telegram"],
        &[net[0], net[1], ("TELEGRAM_BOT_TOKEN", "123:ABC")],
    ))
    .clone();
    assert!(
        stderr(&out).contains("Authenticated as: moat_test_bot"),
        "{}",
        stderr(&out)
    );
    assert!(server.seen()[0].header("authorization").is_empty());

    fs::write(
        env.providers_dir().join("acme.yaml"),
        "name: acme\ndescription: Acme\nhosts: [api.acme.test]\ninject:\n  header: X-Acme-Key\nsource_env: [ACME_KEY]\nvalidate:\n  url: https://api.acme.test/v1/me\n  method: POST\n",
    )
    .unwrap();
    let out = ok(&env.run(
        &["grant", "acme"],
        &[net[0], net[1], ("ACME_KEY", "acme-secret")],
    ))
    .clone();
    assert!(
        stderr(&out).contains("Authenticated as: ada"),
        "{}",
        stderr(&out)
    );
    let err = fails(&env.run(&["grant", "acme"], &[net[0], net[1], ("ACME_KEY", "wrong")]));
    assert!(err.contains("401"), "{err}");
}

#[test]
fn provider_files_errors_and_precedence() {
    let env = Env::new();
    let dir = env.providers_dir();
    fs::write(
        dir.join("broken.yaml"),
        "name: broken\ndescription: d\nhosts: [a.test]\ninject:\n  header: X\n  prefx: y\n",
    )
    .unwrap();
    fs::write(
        dir.join("github.yaml"),
        "name: github\ndescription: hijack\nhosts: [evil.test]\ninject: {header: X}\n",
    )
    .unwrap();
    fs::write(dir.join("gitlab.yaml"), "name: gitlab\ndescription: Corp GitLab\nhosts: [git.corp.test]\ninject: {header: PRIVATE-TOKEN}\nsource_env: [GITLAB_TOKEN]\n").unwrap();
    let out = ok(&env.run(&["grant", "providers", "--json"], &[])).clone();
    let err = stderr(&out);
    assert!(
        err.contains("broken.yaml:6") && err.contains("prefx"),
        "{err}"
    );
    assert!(
        err.contains("github.yaml") && err.contains("cannot be overridden"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_name = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
    };
    assert!(by_name("broken").is_none());
    assert_eq!(by_name("github").unwrap()["origin"], "built-in");
    assert_eq!(by_name("gitlab").unwrap()["origin"], "custom");
    assert_eq!(
        by_name("gitlab").unwrap()["hosts"],
        serde_json::json!(["git.corp.test"])
    );
    assert_eq!(by_name("vercel").unwrap()["origin"], "shipped");
    for name in [
        "github",
        "claude",
        "anthropic",
        "openai",
        "gemini",
        "graphite",
        "meta",
        "npm",
        "aws",
        "ssh",
        "mcp",
        "telegram",
        "datadog",
    ] {
        assert!(by_name(name).is_some(), "{name} not listed");
    }
    let table = stdout(ok(&env.run(&["grant", "providers"], &[])));
    assert!(
        table.contains("api.github.com, github.com") && table.contains("*.openai.com"),
        "{table}"
    );
}

#[test]
fn changed_key_and_damaged_files_give_clear_errors() {
    let env = Env::new();
    ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", GH)],
    ));
    ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-x")],
    ));
    let creds = env.home().join("credentials");

    // Truncated and garbage files: named, no panic.
    let original = fs::read(creds.join("openai.enc")).unwrap();
    fs::write(creds.join("openai.enc"), &original[..12]).unwrap();
    let err = fails(&env.run(&["grant", "show", "openai"], &[]));
    assert!(
        err.contains("openai.enc") && err.contains("truncated"),
        "{err}"
    );
    fs::write(
        creds.join("openai.enc"),
        b"this is not a credential file at all, just text",
    )
    .unwrap();
    let err = fails(&env.run(&["grant", "show", "openai"], &[]));
    assert!(
        err.contains("openai.enc") && err.contains("not a Moat credential file"),
        "{err}"
    );
    let mut flipped = original.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    fs::write(creds.join("openai.enc"), &flipped).unwrap();
    let err = fails(&env.run(&["grant", "show", "openai"], &[]));
    assert!(
        err.contains("message authentication failed") && err.contains("modified or corrupted"),
        "{err}"
    );
    // list survives a bad entry.
    let list: serde_json::Value =
        serde_json::from_slice(&ok(&env.run(&["grant", "list", "--json"], &[])).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list[1]["error"]
            .as_str()
            .unwrap()
            .contains("authentication failed")
    );

    // A different key under the same backend.
    fs::write(
        env.home().join("encryption.key"),
        "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\n",
    )
    .unwrap();
    let err = fails(&env.run(&["grant", "show", "github"], &[]));
    assert!(
        err.contains("decrypting credential 'github': cipher: message authentication failed — the encryption key changed since it was stored; run 'moat grant github' again"),
        "{err}"
    );
    // Group-readable key file is refused with the fix.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        env.home().join("encryption.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = fails(&env.run(&["grant", "show", "github"], &[]));
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn never_creates_a_key_that_would_orphan_credentials() {
    let env = Env::new();
    ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", GH)],
    ));
    let key = env.home().join("encryption.key");
    let saved = fs::read(&key).unwrap();
    fs::remove_file(&key).unwrap();
    let err = fails(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-x")],
    ));
    assert!(
        err.contains("will not create a new key") && err.contains("orphan"),
        "{err}"
    );
    assert!(!key.exists(), "a new key was created");
    let err = fails(&env.run(&["grant", "show", "github"], &[]));
    assert!(err.contains("encryption.key"), "{err}");
    // Restoring the key restores everything.
    fs::write(&key, saved).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(env.reveal("github", &[]).unwrap(), GH);
    ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-x")],
    ));
}

#[test]
fn file_backend_when_no_keychain_answers() {
    let env = Env::new();
    let out = ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-x")],
    ))
    .clone();
    assert!(
        stderr(&out).contains("no keychain answered"),
        "{}",
        stderr(&out)
    );
    assert!(env.home().join("encryption.key").exists());
    // Said once: the second grant is quiet about it.
    let out = ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-y")],
    ))
    .clone();
    assert!(!stderr(&out).contains("keychain"), "{}", stderr(&out));
    // Forcing the keychain without one fails, and creates nothing.
    let env2 = Env::new();
    let err = fails(&env2.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-x"), ("MOAT_KEY_BACKEND", "keyring")],
    ));
    assert!(
        err.contains("keychain") && err.contains("not reachable"),
        "{err}"
    );
    assert!(!env2.home().join("encryption.key").exists());
    let err = fails(&env2.run(&["grant", "list"], &[("MOAT_KEY_BACKEND", "vault")]));
    assert!(err.contains("auto, keyring, file"), "{err}");
}

#[test]
fn sudo_caller_owns_what_moat_creates() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let me = fs::metadata(env.dir.path()).unwrap().uid();
    let root = me == 0;
    // As root, SUDO_UID/SUDO_GID name the caller; otherwise they are ignored.
    let uid = if root { "65534" } else { "4242" };
    ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[
            ("OPENAI_API_KEY", "sk-x"),
            ("SUDO_UID", uid),
            ("SUDO_GID", uid),
            ("MOAT_KEY_BACKEND", "file"),
        ],
    ));
    let expect = if root { 65534 } else { me };
    for p in [
        "",
        "credentials",
        "credentials/openai.enc",
        "encryption.key",
        ".lock",
    ] {
        let path = env.home().join(p);
        assert_eq!(
            fs::metadata(&path).unwrap().uid(),
            expect,
            "{}",
            path.display()
        );
    }
}

#[test]
fn help_and_completions() {
    let env = Env::new();
    let help = stdout(ok(&env.run(&["grant", "--help"], &[])));
    assert!(
        help.contains("--token-stdin") && help.contains("Examples:"),
        "{help}"
    );
    let help = stdout(ok(&env.run(&["--help"], &[])));
    assert!(
        help.contains("MOAT_RESOLVE") && help.contains("--profile"),
        "{help}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(ok(&env.run(&["completions", shell], &[])));
        assert!(
            script.contains("grant") && script.contains("revoke"),
            "{shell}"
        );
    }
}

#[test]
fn hidden_prompt_on_a_terminal() {
    use std::io::{Read, Write};
    let env = Env::new();
    // `script` gives moat a real pseudo-terminal; type only once the prompt shows.
    // The clean environment of Env::cmd, but run through script(1).
    let cmd = env.cmd();
    let mut script = std::process::Command::new("script");
    script
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    let mut child = script
        .args([
            "-qec",
            &format!("{MOAT} grant openai --no-validate"),
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("script(1) from util-linux is needed: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("Token: ") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"sk-typed-secret\n")
        .unwrap();
    out.read_to_end(&mut seen).unwrap();
    assert!(child.wait().unwrap().success());
    let shown = String::from_utf8_lossy(&seen);
    assert!(shown.contains("platform.openai.com/api-keys"), "{shown}");
    assert!(shown.contains("OpenAI credential saved"), "{shown}");
    assert!(
        !shown.contains("sk-typed-secret"),
        "the token was echoed: {shown}"
    );
    assert_eq!(env.reveal("openai", &[]).unwrap(), "sk-typed-secret");
    let list: serde_json::Value =
        serde_json::from_slice(&ok(&env.run(&["grant", "list", "--json"], &[])).stdout).unwrap();
    assert_eq!(list[0]["source"], "prompt");
}

#[test]
fn host_proxy_settings_are_honoured() {
    let env = Env::new();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_pem(env.dir.path()).unwrap();
    let server = StubServer::start(&ca, &["api.github.com", "localhost"], fake_github()).unwrap();
    let proxy = moat_testkit::ConnectProxy::start(server.addr).unwrap();
    let proxy_url = format!("http://corp:s3cret@{}", proxy.addr);
    let ca_env = ("MOAT_UPSTREAM_CA", ca_file.to_str().unwrap());

    // No MOAT_RESOLVE: the validation request goes through HTTPS_PROXY.
    let out = env.run(
        &["grant", "github"],
        &[ca_env, ("HTTPS_PROXY", &proxy_url), ("GITHUB_TOKEN", GH)],
    );
    ok(&out);
    assert!(
        stderr(&out).contains("Authenticated as: octocat"),
        "{}",
        stderr(&out)
    );
    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("CONNECT api.github.com:443 HTTP/1.1\r\n"),
        "{heads:?}"
    );
    // Basic corp:s3cret
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("proxy-authorization: basic y29ycdpzm2nyzxq="),
        "{heads:?}"
    );
    assert!(
        !heads[0].contains(GH),
        "the token must travel inside TLS only"
    );
    assert_eq!(server.seen().len(), 1);

    // NO_PROXY exempts a host: a dead proxy is never tried for it.
    let port = server.addr.port();
    fs::write(
        env.providers_dir().join("local.yaml"),
        format!("name: local\ndescription: d\nhosts: [localhost]\ninject: {{header: Authorization, prefix: \"Bearer \"}}\nsource_env: [LOCAL_TOKEN]\nvalidate:\n  url: https://localhost:{port}/user\n"),
    )
    .unwrap();
    let dead = ("HTTPS_PROXY", "http://127.0.0.1:9");
    let out = env.run(
        &["grant", "local"],
        &[
            ca_env,
            dead,
            ("NO_PROXY", "localhost"),
            ("LOCAL_TOKEN", "ghp_local"),
        ],
    );
    ok(&out);
    let err = fails(&env.run(
        &["grant", "local"],
        &[ca_env, dead, ("LOCAL_TOKEN", "ghp_local")],
    ));
    assert!(err.contains("through proxy 127.0.0.1:9"), "{err}");
    assert_eq!(proxy.heads().len(), 1);

    // A bad MOAT_UPSTREAM_CA is named.
    let err = fails(&env.run(
        &["grant", "github"],
        &[
            ("MOAT_UPSTREAM_CA", "/no/such/ca.pem"),
            ("GITHUB_TOKEN", GH),
        ],
    ));
    assert!(err.contains("MOAT_UPSTREAM_CA /no/such/ca.pem"), "{err}");
}

#[test]
fn github_token_from_the_gh_cli_first() {
    let env = Env::new();
    let bin = env.dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let gh = bin.join("gh");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let write_gh = |script: &str| {
        fs::write(&gh, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&gh, fs::Permissions::from_mode(0o755)).unwrap();
    };
    // Logged in: gh wins over GITHUB_TOKEN.
    write_gh(
        "#!/bin/sh\n[ \"$1 $2\" = \"auth token\" ] && echo ghp_from_gh_cli_000000000000000000000000 && exit 0\nexit 2\n",
    );
    let out = ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("PATH", &path), ("GITHUB_TOKEN", GH)],
    ))
    .clone();
    assert!(
        stderr(&out).contains("Using token from gh CLI"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        env.reveal("github", &[]).unwrap(),
        "ghp_from_gh_cli_000000000000000000000000"
    );
    let list: serde_json::Value =
        serde_json::from_slice(&ok(&env.run(&["grant", "list", "--json"], &[])).stdout).unwrap();
    assert_eq!(list[0]["source"], "gh");
    // Not logged in: fall back to the environment.
    write_gh("#!/bin/sh\necho 'not logged in' >&2\nexit 1\n");
    let out = ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("PATH", &path), ("GITHUB_TOKEN", GH)],
    ))
    .clone();
    assert!(
        stderr(&out).contains("Using token from GITHUB_TOKEN"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.reveal("github", &[]).unwrap(), GH);
}

#[test]
fn doctor_list_and_clean_on_a_fresh_home() {
    let env = Env::new();
    let out = ok(&env.run(&["doctor", "--json"], &[("MOAT_KEY_BACKEND", "file")])).clone();
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mode = v["network_mode"].as_str().unwrap();
    assert!(mode == "transparent" || mode == "env", "{v}");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in ["keychain", "docker"] {
        assert!(names.contains(&n), "{names:?}");
    }
    // Every failed check says how to fix it.
    for c in v["checks"].as_array().unwrap() {
        assert!(c["ok"] == true || c["fix"].is_string(), "{c}");
    }
    let text = stdout(ok(&env.run(&["doctor"], &[]))).to_string();
    assert!(text.contains("moat run will use --network-mode"), "{text}");

    assert_eq!(stdout(ok(&env.run(&["list", "--json"], &[]))).trim(), "[]");
    assert!(stdout(ok(&env.run(&["list"], &[]))).contains("No runs"));
    assert!(stdout(ok(&env.run(&["clean"], &[]))).contains("Nothing to clean"));
}

#[test]
fn init_writes_a_commented_moat_yaml_that_loads() {
    let env = Env::new();
    let ws = env.dir.path().join("my-agent");
    std::fs::create_dir_all(&ws).unwrap();
    let out = env.run(&["init", ws.to_str().unwrap()], &[]);
    assert!(stdout(ok(&out)).contains("moat.yaml"));
    let path = ws.join("moat.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("name: \"my-agent\""), "{text}");
    assert!(text.contains("# runtime: docker"), "{text}");
    let config = moat::config::Config::find(&ws).unwrap();
    assert_eq!(config.name.as_deref(), Some("my-agent"));
    assert!(config.grants.is_empty() && config.runtime.is_none());
    // An existing file is kept unless --force.
    std::fs::write(&path, "grants: [mine]\n").unwrap();
    let err = fails(&env.run(&["init", ws.to_str().unwrap()], &[]));
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "grants: [mine]\n");
    ok(&env.run(&["init", "--force", ws.to_str().unwrap()], &[]));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    // agent.yaml (the legacy name) counts as existing too.
    let legacy = env.dir.path().join("legacy");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::write(legacy.join("agent.yaml"), "grants: []\n").unwrap();
    fails(&env.run(&["init", legacy.to_str().unwrap()], &[]));
    // The current directory by default.
    let here = env.dir.path().join("here");
    std::fs::create_dir_all(&here).unwrap();
    ok(&env.cmd().current_dir(&here).arg("init").output().unwrap());
    assert!(here.join("moat.yaml").exists());
}

#[test]
fn run_management_without_runs() {
    let env = Env::new();
    for cmd in [["logs", "abc"], ["stop", "abc"], ["destroy", "abc"]] {
        let err = fails(&env.run(&cmd, &[]));
        assert!(err.contains("no run 'abc'"), "{err}");
    }
    let out = env.run(&["run", "-d", "--network-mode", "env"], &[]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("-d needs a command"),
        "{}",
        stderr(&out)
    );
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn secrets_reach_the_command_from_env_and_op() {
    let env = Env::new();
    let ws = env.dir.path().join("ws");
    fs::create_dir_all(&ws).unwrap();
    // A stand-in for the 1Password CLI: one item.
    let bin = env.dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let op = bin.join("op");
    fs::write(
        &op,
        "#!/bin/sh\n[ \"$1 $2 $3\" = 'read --no-newline op://Private/db/password' ] && \
         { printf 'op-value'; exit 0; }\necho \"[ERROR] no item $3\" >&2; exit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&op, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |yaml: &str, extra: &[(&str, &str)]| {
        fs::write(ws.join("moat.yaml"), yaml).unwrap();
        env.cmd()
            .env("PATH", &path)
            .env("MOAT_TEST_SECRET_SRC", "from-host")
            .envs(extra.iter().copied())
            .args(["run", ws.to_str().unwrap(), "--yes", "--network-mode", "env", "--"])
            .args([
                "sh",
                "-c",
                "echo \"env=$FROM_ENV op=$FROM_OP ssm=$FROM_SSM src=${MOAT_TEST_SECRET_SRC:-unset}\"",
            ])
            .output()
            .unwrap()
    };
    let out = run(
        "secrets:\n  FROM_ENV: env://MOAT_TEST_SECRET_SRC\n  FROM_OP: op://Private/db/password\n",
        &[],
    );
    assert_eq!(
        stdout(&out).trim(),
        "env=from-host op=op-value ssm= src=unset",
        "{}",
        stderr(&out)
    );
    // The events name the variables, never a value.
    let runs = env.run_ids();
    let events = fs::read_to_string(
        env.home()
            .join("runs")
            .join(runs.first().unwrap())
            .join("events.jsonl"),
    )
    .unwrap();
    assert!(
        events.contains("FROM_OP") && !events.contains("op-value"),
        "{events}"
    );
    // A reference that does not resolve fails the run, saying which and why.
    let out = run("secrets:\n  FROM_OP: op://Private/nope/x\n", &[]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("secrets: FROM_OP") && err.contains("no item op://Private/nope/x"),
        "{err}"
    );
    let out = run("secrets:\n  X: env://MOAT_TEST_SURELY_UNSET\n", &[]);
    assert!(
        stderr(&out).contains("MOAT_TEST_SURELY_UNSET is not set"),
        "{}",
        stderr(&out)
    );

    // ssm:// is tested against moto in tests/aws.rs.
}

/// `moat ARGS` as an unprivileged user: as `nobody` (setpriv) when the test
/// runs as root, as the test's own user otherwise. HOME, MOAT_HOME and the
/// workspace are made that user's.
fn unprivileged(env: &Env, args: &[&str]) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let dirs = [env.user_home(), env.home(), env.dir.path().join("ws")];
    for d in &dirs {
        fs::create_dir_all(d).unwrap();
    }
    let mut c = if is_root() {
        fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for d in &dirs {
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            MOAT,
        ]);
        c
    } else {
        Command::new(MOAT)
    };
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &dirs[0])
        .env("MOAT_HOME", &dirs[1])
        .env("MOAT_KEY_BACKEND", "file")
        .current_dir(&dirs[2])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn doctor_says_what_run_uses_and_knows_the_file_backend() {
    let env = Env::new();
    if is_root() && !on_path("setpriv") {
        eprintln!("skipped: no setpriv to run moat unprivileged");
        return;
    }
    let out = unprivileged(&env, &["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ok(&out).stdout).unwrap();
    // What moat run announces it uses (no --network-mode: it picks and says).
    let run = unprivileged(&env, &["run", ".", "--", "true"]);
    let said = stderr(&run);
    let run_mode = if said.contains("network mode transparent") {
        "transparent"
    } else if said.contains("network mode env") {
        "env"
    } else {
        panic!("moat run did not say its network mode: {said}")
    };
    assert_eq!(v["network_mode"], run_mode, "doctor: {v}\nrun: {said}");
    if run_mode == "transparent" {
        let text = v.to_string();
        assert!(!text.contains("needs root"), "{v}");
        assert!(v["reason"].as_str().unwrap().contains("rootless"), "{v}");
    }
    // MOAT_KEY_BACKEND=file: the row says the file backend is in use, and passes.
    let keychain = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "keychain")
        .unwrap();
    assert_eq!(keychain["ok"], true, "{keychain}");
    assert!(
        keychain["detail"]
            .as_str()
            .unwrap()
            .contains("file backend in use"),
        "{keychain}"
    );
}

#[test]
fn no_command_panics_on_a_closed_stdout() {
    let env = Env::new();
    ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", GH)],
    ));
    for args in [
        &["list", "--json"][..],
        &["list"],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["grant", "list"],
        &["grant", "list", "--json"],
        &["grant", "providers"],
        &["grant", "show", "github"],
        &["doctor"],
        &["ca", "path"],
        &["ca", "export"],
        &["--help"],
        &["init", "--help"],
    ] {
        // The reader is gone before moat starts: its first write fails (EPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = env
            .cmd()
            .args(args)
            .current_dir(env.dir.path())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn list_is_ordered_by_start_time_newest_last() {
    let env = Env::new();
    // Ids in the opposite order of their start times.
    for (id, ts) in [
        ("aaaa0001", "2026-03-02T10:00:00.000Z"),
        ("ffff0002", "2026-03-01T10:00:00.000Z"),
        ("bbbb0003", "2026-03-03T09:59:59.999Z"),
        ("0000beef", "2026-03-02T10:00:00.001Z"),
    ] {
        let dir = env.home().join("runs").join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("events.jsonl"),
            format!(
                "{{\"ts\":\"{ts}\",\"event\":\"start\",\"command\":[\"true\"],\"grants\":[]}}\n\
                 {{\"ts\":\"{ts}\",\"event\":\"exit\",\"code\":0}}\n"
            ),
        )
        .unwrap();
    }
    let want = ["ffff0002", "aaaa0001", "0000beef", "bbbb0003"];
    let list: serde_json::Value =
        serde_json::from_slice(&ok(&env.run(&["list", "--json"], &[])).stdout).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want);
    let text = stdout(ok(&env.run(&["list"], &[])));
    let rows: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(rows, want, "{text}");
}

/// How often `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn store_errors_say_their_reason_once() {
    let env = Env::new();
    ok(&env.run(
        &["grant", "openai", "--no-validate"],
        &[("OPENAI_API_KEY", "sk-x")],
    ));
    let file = env.home().join("credentials").join("openai.enc");
    let original = fs::read(&file).unwrap();
    let mut flipped = original.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    let cases: [(Vec<u8>, &str); 3] = [
        (flipped, "the file was modified or corrupted"),
        (original[..12].to_vec(), "file is truncated"),
        (b"not a credential".to_vec(), "bad magic bytes"),
    ];
    for (bytes, reason) in cases {
        fs::write(&file, bytes).unwrap();
        let err = fails(&env.run(&["grant", "show", "openai"], &[]));
        assert_eq!(count(&err, reason), 1, "{err}");
    }
    // A key file that cannot be read (a directory): its I/O error once.
    fs::write(&file, &original).unwrap();
    let key = env.home().join("encryption.key");
    let saved = fs::read(&key).unwrap();
    fs::remove_file(&key).unwrap();
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().mode(0o700).create(&key).unwrap();
    }
    let err = fails(&env.run(&["grant", "show", "openai"], &[]));
    assert!(err.contains("encryption.key"), "{err}");
    assert_eq!(count(&err, "Is a directory"), 1, "{err}");
    fs::remove_dir(&key).unwrap();
    fs::write(&key, saved).unwrap();
}

/// With --json, stderr is one JSON object (`error`, `hint`).
#[track_caller]
fn json_error(out: &Output, code: i32) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&err).expect("stderr is JSON");
    assert!(v["error"].is_string() && v.get("hint").is_some(), "{v}");
    v
}

#[test]
fn json_errors_are_one_object_on_stderr() {
    let env = Env::new();
    // A command's error: exit 1, as without --json.
    let v = json_error(&env.run(&["grant", "show", "nope", "--json"], &[]), 1);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("no credential 'nope'"),
        "{v}"
    );
    assert_eq!(v["hint"], "run 'moat grant nope' first", "{v}");
    // moat run's: 125.
    let v = json_error(
        &env.run(&["--json", "run", "-d", "--network-mode", "env"], &[]),
        125,
    );
    assert!(
        v["error"].as_str().unwrap().contains("-d needs a command"),
        "{v}"
    );
    // A command line clap refuses: its exit code (2).
    let v = json_error(&env.run(&["list", "--json", "--bogus"], &[]), 2);
    assert!(v["error"].as_str().unwrap().contains("--bogus"), "{v}");
    assert!(v["hint"].as_str().unwrap().contains("--help"), "{v}");
    // Without --json, nothing changes; help is still help.
    let err = fails(&env.run(&["grant", "show", "nope"], &[]));
    assert!(
        err.starts_with("moat: error: no credential 'nope'"),
        "{err}"
    );
    let help = env.run(&["list", "--json", "--help"], &[]);
    assert!(stdout(ok(&help)).contains("Usage"), "{}", stdout(&help));
}

#[test]
fn providers_listing_is_true_and_revoke_help_uses_a_real_example() {
    let env = Env::new();
    let text = stdout(ok(&env.run(&["grant", "providers"], &[])));
    let (table, rest) = text.split_once("\n\n").unwrap_or((&text, ""));
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"github") && names.contains(&"mcp"),
        "{text}"
    );
    assert!(names.contains(&"aws"), "{text}");
    assert!(names.contains(&"ssh"), "ssh listed as usable:\n{text}");
    assert!(!rest.contains("Not yet available"), "{text}");
    let list: serde_json::Value =
        serde_json::from_slice(&ok(&env.run(&["grant", "providers", "--json"], &[])).stdout)
            .unwrap();
    for p in list.as_array().unwrap() {
        assert_eq!(p["available"], true, "{p}");
    }
    // Each example of moat revoke --help names something moat grant can store.
    let help = stdout(ok(&env.run(&["revoke", "--help"], &[])));
    assert!(help.contains("moat revoke ssh:github.com"), "{help}");
    assert!(help.contains("moat revoke github:ghe.corp.test"), "{help}");
    ok(&env.run(
        &[
            "grant",
            "github",
            "--host",
            "ghe.corp.test",
            "--no-validate",
        ],
        &[("GITHUB_TOKEN", GH)],
    ));
    let out = ok(&env.run(&["revoke", "github:ghe.corp.test"], &[])).clone();
    assert!(stdout(&out).contains("revoked"), "{}", stdout(&out));
}

#[test]
fn an_http_mcp_url_says_mcp_urls_must_be_https() {
    let env = Env::new();
    ok(&env.run_stdin(
        &["grant", "mcp", "plain", "--token-stdin"],
        &[],
        "mcp-secret\n",
    ));
    let ws = env.dir.path().join("ws");
    fs::create_dir_all(&ws).unwrap();
    fs::write(
        ws.join("moat.yaml"),
        "mcp:\n  - name: plain\n    url: http://mcp.plain.test/mcp\n    auth: {grant: mcp-plain, header: X-Api-Key}\n",
    )
    .unwrap();
    let out = env.run(
        &[
            "run",
            ws.to_str().unwrap(),
            "--yes",
            "--network-mode",
            "env",
            "--",
            "true",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("moat.yaml mcp 'plain'"), "{err}");
    assert!(err.contains("MCP URLs must be https://"), "{err}");
    assert!(!err.contains("again"), "{err}");
}

#[test]
fn grant_list_marks_expired_tokens() {
    let env = Env::new();
    let file = [("MOAT_KEY_BACKEND", "file")];
    // A static token whose expiry has passed (sealed through the library:
    // no grant flow stores an expired token on purpose).
    let home = moat::home::MoatHome::new(env.home(), None);
    let store = moat::store::Store::new(
        home.clone(),
        None,
        moat::store::Keys::new(
            moat::store::Policy::File,
            Box::new(moat::store::keyring::KeyringBackend::new(None)),
            Box::new(moat::store::keys::FileBackend::new(home)),
        ),
    );
    let mut old =
        moat::store::Credential::new_static("openai", String::from("sk-old").into(), "test");
    old.expires_at = Some(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    store
        .put(&moat::store::CredName::parse("openai").unwrap(), &old)
        .unwrap();
    // A Gemini login whose access token has expired: Moat refreshes it.
    let gemini = env.user_home().join(".gemini");
    fs::create_dir_all(&gemini).unwrap();
    fs::write(
        gemini.join("oauth_creds.json"),
        r#"{"access_token":"ya29.a0old","refresh_token":"1//0real","scope":"openid","token_type":"Bearer","expiry_date":1700000000000}"#,
    )
    .unwrap();
    ok(&env.run(&["grant", "gemini", "--import", "--no-validate"], &file));
    // And one that does not expire.
    ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", GH), file[0]],
    ));

    let list: serde_json::Value =
        serde_json::from_slice(&ok(&env.run(&["grant", "list", "--json"], &file)).stdout).unwrap();
    let by = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by("openai")["expired"], true, "{list}");
    assert_eq!(by("openai")["refreshed_by_moat"], false, "{list}");
    assert_eq!(by("gemini")["expired"], true, "{list}");
    assert_eq!(by("gemini")["refreshed_by_moat"], true, "{list}");
    assert_eq!(by("github")["expired"], false, "{list}");
    let text = stdout(ok(&env.run(&["grant", "list"], &file)));
    let row = |n: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap()
            .to_owned()
    };
    assert!(
        row("openai").contains("EXPIRED; run 'moat grant openai' again"),
        "{text}"
    );
    assert!(
        row("gemini").contains("expired; Moat refreshes it on next use"),
        "{text}"
    );
    assert!(!row("github").contains("xpired"), "{text}");
}

#[test]
fn readme_providers_paragraph_is_true() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("\nProviders: ")
        .expect("a Providers: paragraph");
    let para = &readme[start..][..readme[start..].find("\n\n").unwrap()];
    let env = Env::new();
    let list: serde_json::Value =
        serde_json::from_slice(&ok(&env.run(&["grant", "providers", "--json"], &[])).stdout)
            .unwrap();
    let available = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .map(|p| p["available"] == true)
    };
    // Nothing is left being built: every provider it names can be granted.
    assert!(!para.contains("being built"), "{para}");
    assert!(
        para.contains("ssh:HOST") && available("ssh") == Some(true),
        "{para}"
    );
    assert!(
        para.contains("aws (") && available("aws") == Some(true),
        "{para}"
    );
    // The browser login it names exists.
    assert!(
        para.contains("PKCE") && para.contains("--auth-url"),
        "{para}"
    );
    let help = stdout(ok(&env.run(&["grant", "--help"], &[])));
    assert!(
        help.contains("--auth-url") && help.contains("PKCE"),
        "{help}"
    );
    assert_eq!(available("oauth"), Some(true));
}
