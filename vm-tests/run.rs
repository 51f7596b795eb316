//! `moat run` end to end, as root: a real sandbox (network, mount and PID
//! namespaces, nft redirect, Moat's DNS) around real clients, against a local
//! stand-in for api.github.com that only answers to the real token. Escape
//! attempts are aimed at addresses that exist nowhere (the sandbox has only
//! loopback), so nothing can leave this machine even if the sandbox breaks.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use common::*;
use moat_testkit::{StubServer, TestCa, fake_github_accepting};

const REAL: &str = "ghp_RealTokenInsideNothing0123456789abcd";

struct Setup {
    env: Env,
    ca_file: std::path::PathBuf,
    server: StubServer,
    workspace: std::path::PathBuf,
}

fn setup() -> Setup {
    assert!(
        nix_is_root(),
        "vm-tests run as root (CI does; locally: sudo ./scripts/test.sh)"
    );
    let env = Env::new();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_pem(env.dir.path()).unwrap();
    let server = StubServer::start(
        &ca,
        &["api.github.com", "github.com"],
        fake_github_accepting(Some(REAL.into())),
    )
    .unwrap();
    ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", REAL), ("MOAT_KEY_BACKEND", "file")],
    ));
    let workspace = env.dir.path().join("ws");
    std::fs::create_dir_all(&workspace).unwrap();
    Setup {
        env,
        ca_file,
        server,
        workspace,
    }
}

impl Setup {
    fn run(&self, script: &str) -> Output {
        self.env
            .cmd()
            .args(["run", self.workspace.to_str().unwrap(), "--grant", "github"])
            .args(["--resolve", &self.server.resolve_entry("api.github.com")])
            .args(["--upstream-ca", self.ca_file.to_str().unwrap()])
            .args([
                "-e",
                &format!("MOAT_HOME_SEEN={}", self.env.home().display()),
            ])
            .args(["--", "/bin/sh", "-c", script])
            .output()
            .unwrap()
    }
}

fn host_state() -> (String, String, String) {
    let out = |args: &[&str]| {
        String::from_utf8_lossy(
            &Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    (
        out(&["nft", "list", "ruleset"]),
        out(&["ip", "-o", "link"]),
        out(&["ip", "route"]),
    )
}

#[test]
fn clients_get_injected_credentials_they_never_see() {
    let s = setup();
    let before = host_state();
    let out = s.run(
        r#"set -e
echo "curl: $(curl -sS https://api.github.com/user)"
echo "noproxy: $(curl -sS --noproxy '*' https://api.github.com/user)"
echo "python: $(/usr/bin/python3 -c 'import http.client,ssl; c=http.client.HTTPSConnection("api.github.com"); c.request("GET","/user"); print(c.getresponse().read().decode())')"
echo "node: $(node -e 'fetch("https://api.github.com/user").then(r=>r.text()).then(t=>console.log(t))')"
echo "dns: $(getent hosts api.github.com)"
echo "placeholder: $GH_TOKEN"
env > "$PWD/env.txt"
"#,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for client in ["curl", "noproxy", "python", "node"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{client}:")))
            .unwrap_or_default();
        assert!(
            line.contains("\"login\":\"octocat\""),
            "{client} was not injected: {line}"
        );
    }
    assert!(text.lines().any(|l| l.starts_with("dns: 198.1")), "{text}");
    let ph = text
        .lines()
        .find_map(|l| l.strip_prefix("placeholder: "))
        .unwrap();
    assert!(
        ph.starts_with("ghp_") && ph.len() == 40 && ph != REAL,
        "{ph}"
    );
    let env = std::fs::read_to_string(s.workspace.join("env.txt")).unwrap();
    assert!(
        !env.contains(REAL) && !env.contains("GITHUB_TOKEN="),
        "{env}"
    );
    assert!(!text.contains(REAL));
    assert_eq!(host_state(), before, "the host namespace changed");
}

#[test]
fn nothing_of_the_host_leaks_in_and_the_rules_are_out_of_reach() {
    let s = setup();
    let out = s.run(
        r#"
echo "moat_home: $(ls -A "$MOAT_HOME_SEEN" 2>/dev/null | wc -l)"
echo "root: $(ls -A /root 2>/dev/null | wc -l)"
echo "home: $HOME"
nft flush ruleset 2>/dev/null && echo "nft: flushed" || echo "nft: refused"
ip route del default 2>/dev/null && echo "route: deleted" || echo "route: refused"
/usr/bin/python3 - <<'PY'
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("10.253.0.1", 443)); print("udp: sent")
except OSError as e:
    print("udp: blocked", e.errno)
t = time.time()
try:
    socket.create_connection(("fd00:253::1", 443), timeout=3); print("ipv6: connected")
except OSError:
    print("ipv6: failed %.2f" % (time.time() - t))
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("raw: opened")
except OSError:
    print("raw: refused")
PY
echo "after: $(curl -sS https://api.github.com/user)"
"#,
    );
    let text = stdout(&out);
    let line = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(line("moat_home:"), "moat_home: 0", "{text}");
    assert_eq!(line("root:"), "root: 0", "{text}");
    assert_eq!(line("home:"), "home: /tmp/home");
    assert_eq!(line("nft:"), "nft: refused", "{text}");
    assert_eq!(line("route:"), "route: refused", "{text}");
    assert!(line("udp:").starts_with("udp: blocked"), "{text}");
    let v6: f64 = line("ipv6:")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or(99.0);
    assert!(
        line("ipv6:").starts_with("ipv6: failed") && v6 < 1.0,
        "{text}"
    );
    assert_eq!(line("raw:"), "raw: refused", "{text}");
    assert!(
        line("after:").contains("octocat"),
        "the rules must still hold: {text}"
    );
}

#[test]
fn exit_codes_and_signals_propagate() {
    let s = setup();
    assert_eq!(s.run("exit 7").status.code(), Some(7));
    assert_eq!(s.run("kill -9 $$").status.code(), Some(137));
    let out = s
        .env
        .cmd()
        .args([
            "run",
            s.workspace.to_str().unwrap(),
            "--",
            "/no/such/program",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    // The workspace is the working directory, writable; /tmp is private.
    let out = s.run("pwd; touch made-inside; ls /tmp");
    assert!(
        stdout(&out).starts_with(&format!("{}\n", s.workspace.display())),
        "{}",
        stdout(&out)
    );
    assert!(s.workspace.join("made-inside").exists());
    // SIGTERM to moat reaches the command, which can clean up.
    let mut child = s
        .env
        .cmd()
        .args(["run", s.workspace.to_str().unwrap(), "--", "/bin/sh", "-c", "trap 'echo got-term > term.txt; exit 3' TERM; echo up > up.txt; while :; do sleep 0.1; done"])
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !s.workspace.join("up.txt").exists() {
        assert!(start.elapsed().as_secs() < 10, "sandbox did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().unwrap().code(), Some(3));
    assert_eq!(
        std::fs::read_to_string(s.workspace.join("term.txt"))
            .unwrap()
            .trim(),
        "got-term"
    );
}

#[test]
fn kill_9_of_moat_ends_the_sandbox() {
    let s = setup();
    let before = host_state();
    let mut moat = s
        .env
        .cmd()
        .args([
            "run",
            s.workspace.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "touch up.txt; exec sleep 3017",
        ])
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !s.workspace.join("up.txt").exists() {
        assert!(start.elapsed().as_secs() < 10, "sandbox did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    moat.kill().unwrap(); // SIGKILL: no cleanup code runs
    moat.wait().unwrap();
    let gone = || {
        !Command::new("pgrep")
            .args(["-f", "sleep 3017"])
            .status()
            .unwrap()
            .success()
    };
    let start = std::time::Instant::now();
    while !gone() {
        assert!(
            start.elapsed().as_secs() < 5,
            "the sandboxed command outlived moat"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(host_state(), before, "the host namespace changed");
}

fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
