//! The real Secret Service keychain: a private `gnome-keyring-daemon` in its
//! own `dbus-run-session`, with a throwaway HOME. Needs `gnome-keyring`,
//! `dbus` and `libsecret-tools` (scripts/test.sh installs them).

#![cfg(target_os = "linux")]

mod common;

use std::process::{Command, Output};

use common::*;

/// Run `script` (bash) inside a fresh session bus with an unlocked keyring.
/// `$MOAT` is the binary; HOME/MOAT_HOME point into `env`.
fn in_keyring_session(env: &Env, script: &str) -> Output {
    for tool in ["dbus-run-session", "gnome-keyring-daemon", "secret-tool"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{tool} is missing: install dbus gnome-keyring libsecret-tools (scripts/test.sh does)"
        );
    }
    let runtime = env.dir.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let full = format!(
        "set -e\necho -n test-password | gnome-keyring-daemon --unlock --components=secrets >/dev/null\n{script}\n"
    );
    Command::new("timeout")
        .args(["60", "dbus-run-session", "--", "bash", "-c", &full])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.user_home())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("MOAT_HOME", env.home())
        .env("MOAT", MOAT)
        .output()
        .unwrap()
}

#[test]
fn key_lives_in_the_keychain_and_survives_a_daemon_restart() {
    let env = Env::new();
    let out = in_keyring_session(
        &env,
        r#"OPENAI_API_KEY=sk-in-keychain "$MOAT" grant openai --no-validate
           "$MOAT" grant show openai --reveal --json
           echo "KEYCHAIN=$(secret-tool lookup service moat account encryption-key)""#,
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "stdout: {so}\nstderr: {se}");
    assert!(
        se.contains("encryption key created in the system keychain"),
        "{se}"
    );
    assert!(so.contains("\"token\": \"sk-in-keychain\""), "{so}");
    let stored = so
        .lines()
        .find_map(|l| l.strip_prefix("KEYCHAIN="))
        .unwrap_or_default();
    assert_eq!(
        stored.len(),
        44,
        "secret-tool found no 32-byte base64 key: {so}"
    );
    assert!(
        !env.home().join("encryption.key").exists(),
        "auto must not fall back while the keychain answers"
    );

    // No bus: the credential cannot be opened, and no new key is made.
    let err = fails(&env.run(&["grant", "show", "openai"], &[]));
    assert!(
        err.contains("keychain") && err.contains("not reachable"),
        "{err}"
    );
    let err = fails(&env.run(
        &["grant", "anthropic", "--no-validate"],
        &[("ANTHROPIC_API_KEY", "sk-ant-x")],
    ));
    assert!(err.contains("will not create a new key"), "{err}");
    assert!(!env.home().join("encryption.key").exists());

    // A new daemon over the same keyring files still has the key.
    let out = in_keyring_session(&env, r#""$MOAT" grant show openai --reveal --json"#);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"token\": \"sk-in-keychain\""),
        "{}",
        stdout(&out)
    );
}

#[test]
fn file_backend_chosen_explicitly_even_with_a_keychain() {
    let env = Env::new();
    let out = in_keyring_session(
        &env,
        r#"MOAT_KEY_BACKEND=file OPENAI_API_KEY=sk-file "$MOAT" grant openai --no-validate
           secret-tool lookup service moat account encryption-key && echo FOUND || echo ABSENT"#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ABSENT"), "{}", stdout(&out));
    assert!(env.home().join("encryption.key").exists());
    // Readable without any bus: the file names its backend.
    assert_eq!(env.reveal("openai", &[]).unwrap(), "sk-file");
}
