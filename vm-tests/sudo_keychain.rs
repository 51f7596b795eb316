//! `sudo moat grant`: root works for the invoking user — their `$MOAT_HOME`,
//! their files, their keychain (reached through a helper running as them).
//! Root only (CI runs it); `nobody` (65534) plays the sudo caller.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;

struct Session(Child);

impl Drop for Session {
    fn drop(&mut self) {
        // The session's bash leads its own process group: end it all.
        let _ = Command::new("kill")
            .args(["--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

fn as_nobody(dir: &Path) -> Command {
    let mut c = setpriv_nobody();
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_RUNTIME_DIR", dir.join("run"));
    c
}

#[test]
fn sudo_grant_uses_the_callers_keychain_and_ownership() {
    assert!(
        is_root(),
        "vm-tests run as root (CI does; locally: sudo ./scripts/test.sh)"
    );
    let env = Env::new();
    let dir = env.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["home", "run"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::os::unix::fs::chown(dir.join(sub), Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // The helper re-executes the binary as the caller: it must be reachable by them.
    let moat = dir.join("moat");
    std::fs::copy(MOAT, &moat).unwrap();
    let addr_file = dir.join("run/bus-address");

    // The caller's desktop session: a bus and an unlocked keyring, as nobody.
    let script = format!(
        "set -e; echo -n pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null; \
         echo \"$DBUS_SESSION_BUS_ADDRESS\" > {}; exec sleep 120",
        addr_file.display()
    );
    let session = Session(
        as_nobody(dir)
            .args(["setsid", "dbus-run-session", "--", "bash", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("setpriv, dbus-run-session and gnome-keyring-daemon are needed"),
    );
    let start = Instant::now();
    let addr = loop {
        let a = std::fs::read_to_string(&addr_file).unwrap_or_default();
        if !a.trim().is_empty() {
            break a.trim().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the caller's keyring session did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let moat_home = dir.join("moat-home");
    let sudo = [
        ("SUDO_UID", "65534"),
        ("SUDO_GID", "65534"),
        ("SUDO_USER", "nobody"),
        ("DBUS_SESSION_BUS_ADDRESS", addr.as_str()),
        ("OPENAI_API_KEY", "sk-sudo-granted"),
    ];
    let out = Command::new(&moat)
        .args(["grant", "openai", "--no-validate"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MOAT_HOME", &moat_home)
        .envs(sudo)
        .output()
        .unwrap();
    ok(&out);
    assert!(
        stderr(&out).contains("encryption key created in the system keychain"),
        "{}",
        stderr(&out)
    );
    assert!(
        !moat_home.join("encryption.key").exists(),
        "the key went to a file, not the caller's keychain"
    );
    for p in ["", "credentials", "credentials/openai.enc", ".lock"] {
        assert_eq!(
            std::fs::metadata(moat_home.join(p)).unwrap().uid(),
            NOBODY,
            "{p} not owned by the caller"
        );
    }

    // The caller, without sudo, reads it back through their own keychain.
    let out = as_nobody(dir)
        .env("DBUS_SESSION_BUS_ADDRESS", &addr)
        .env("MOAT_HOME", &moat_home)
        .args([
            moat.to_str().unwrap(),
            "grant",
            "show",
            "openai",
            "--reveal",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("\"token\": \"sk-sudo-granted\""),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let out = as_nobody(dir)
        .env("DBUS_SESSION_BUS_ADDRESS", &addr)
        .args([
            "secret-tool",
            "lookup",
            "service",
            "moat",
            "account",
            "encryption-key",
        ])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).trim().len(),
        44,
        "no key in the caller's keychain"
    );

    // Without MOAT_HOME, sudo uses the caller's home; nobody's (/nonexistent) is
    // missing, and root must not create it.
    let out = Command::new(&moat)
        .args(["grant", "openai", "--no-validate"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/root")
        .envs(sudo)
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(
        err.contains("'nobody'") && err.contains("/nonexistent") && err.contains("MOAT_HOME"),
        "{err}"
    );
    assert!(
        !Path::new("/nonexistent").exists(),
        "moat created the caller's home"
    );
    drop(session);
}
