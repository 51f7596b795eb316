//! Shared helpers for tests that run the real `moat` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const MOAT: &str = env!("CARGO_BIN_EXE_moat");

/// A private `$MOAT_HOME` and `$HOME` in a temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("moat-home")
    }

    pub fn user_home(&self) -> PathBuf {
        let h = self.dir.path().join("home");
        std::fs::create_dir_all(&h).unwrap();
        h
    }

    /// `moat` with a clean environment: nothing from the host leaks in
    /// (no tokens, no proxies, no keychain bus) unless the test adds it.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(MOAT);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.user_home())
            .env("MOAT_HOME", self.home())
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}/no-bus", self.dir.path().display()),
            )
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        self.cmd()
            .args(args)
            .envs(envs.iter().copied())
            .output()
            .expect("run moat")
    }

    /// `moat --token-stdin` style: feed `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], envs: &[(&str, &str)], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn providers_dir(&self) -> PathBuf {
        let d = self.home().join("providers");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The secret value of a stored credential (via `grant show --reveal --json`).
    pub fn reveal(&self, name: &str, envs: &[(&str, &str)]) -> Result<String, String> {
        let out = self.run(&["grant", "show", name, "--reveal", "--json"], envs);
        if !out.status.success() {
            return Err(stderr(&out));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        Ok(v["token"].as_str().unwrap_or_default().to_owned())
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn ok(o: &Output) -> &Output {
    assert!(
        o.status.success(),
        "moat failed ({:?})\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    o
}

/// A failure is a clean error (exit 1 with a message), never a panic (101).
#[track_caller]
pub fn fails(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a clean failure\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert!(err.contains("moat: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Write a YAML provider `name` whose token comes from env var `var`.
pub fn yaml_provider(dir: &Path, name: &str, var: &str) {
    std::fs::write(
        dir.join(format!("{name}.yaml")),
        format!("name: {name}\ndescription: test provider {name}\nhosts: [\"api.{name}.test\"]\ninject:\n  header: Authorization\n  prefix: \"Bearer \"\nsource_env: [{var}]\ncontainer_env: {var}\n"),
    )
    .unwrap();
}
