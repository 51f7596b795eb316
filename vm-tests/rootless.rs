//! `moat run` without root: the test is root (to set things up and to look
//! at the host namespace), Moat runs as `nobody` through setpriv with its own
//! MOAT_HOME and HOME. Without `--network-mode`, Moat must pick the rootless
//! transparent sandbox (a user namespace owning the network, mount and PID
//! namespaces) and say so. Escape attempts aim only at addresses that exist
//! listeners on the host (tests/common `Tripwire`) from inside the sandbox's namespace, so
//! nothing can leave this machine even if the sandbox breaks.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::*;
use moat_testkit::{StubServer, TestCa, fake_github_accepting};

const REAL: &str = "ghp_RootlessRealTokenNowhere0123456789ab";
const NOBODY: u32 = 65534;

struct Setup {
    // Owns the temporary directory everything lives in.
    _env: Env,
    ca_file: PathBuf,
    server: StubServer,
    workspace: PathBuf,
    home: PathBuf,
    moat_home: PathBuf,
}

/// A stand-in for api.github.com that answers only to the real token, and
/// the github grant made by nobody into its own MOAT_HOME.
fn setup() -> Setup {
    assert!(
        is_root(),
        "vm-tests run as root (CI does; locally: sudo ./scripts/test.sh); \
         this one runs moat as nobody"
    );
    let env = Env::new();
    let ca = TestCa::new().unwrap();
    let dir = env.dir.path().to_owned();
    // nobody needs a way in to the CA file and its own directories.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca_file = ca.write_pem(&dir).unwrap();
    std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = StubServer::start(
        &ca,
        &["api.github.com"],
        fake_github_accepting(Some(REAL.into())),
    )
    .unwrap();
    let (home, moat_home, workspace) = (dir.join("home-nb"), dir.join("moat-nb"), dir.join("ws"));
    for d in [&home, &moat_home, &workspace] {
        std::fs::create_dir_all(d).unwrap();
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let s = Setup {
        _env: env,
        ca_file,
        server,
        workspace,
        home,
        moat_home,
    };
    ok(&s.nobody_output(&["grant", "github", "--token-stdin", "--no-validate"], REAL));
    s
}

impl Setup {
    /// `moat ARGS` as nobody, with a clean environment.
    fn nobody(&self, args: &[&str]) -> Command {
        let mut c = setpriv_nobody();
        c.arg(MOAT)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", &self.home)
            .env("MOAT_HOME", &self.moat_home)
            .env("MOAT_KEY_BACKEND", "file")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn nobody_output(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self.nobody(args).spawn().unwrap();
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    }

    /// `moat run` (no --network-mode) with the github grant and the
    /// stand-in wired in, `script` run by /bin/sh inside.
    fn run_args(&self, extra: &[&str], script: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            self.workspace.to_str().unwrap(),
            "--grant",
            "github",
            "--resolve",
            &self.server.resolve_entry("api.github.com"),
            "--upstream-ca",
            self.ca_file.to_str().unwrap(),
            "-e",
            &format!("MOAT_HOME_SEEN={}", self.moat_home.display()),
        ]
        .map(String::from)
        .into();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--", "/bin/sh", "-c", script].map(String::from));
        args
    }

    fn run(&self, script: &str) -> Output {
        let args = self.run_args(&[], script);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nobody_output(&args, "")
    }
}

#[test]
fn rootless_transparent_is_the_default_injects_and_holds() {
    let s = setup();
    let before = host_state();
    let trip = Tripwire::new();
    let out = s.run(
        &r#"
echo "id: $(id -u)"
echo "curl: $(curl -sS https://api.github.com/user)"
echo "noproxy: $(curl -sS --noproxy '*' https://api.github.com/user)"
echo "python: $(/usr/bin/python3 -c 'import http.client; c=http.client.HTTPSConnection("api.github.com"); c.request("GET","/user"); print(c.getresponse().read().decode())')"
echo "dns: $(getent hosts api.github.com)"
echo "placeholder: $GH_TOKEN"
echo "proxyvar: ${HTTPS_PROXY:-none}"
echo "moat_home: $(ls -A "$MOAT_HOME_SEEN" 2>/dev/null | wc -l)"
echo "home: $HOME"
env > "$PWD/env.txt"
cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' > "$PWD/proc-environ.txt"
nft flush ruleset 2>/dev/null && echo "nft: flushed" || echo "nft: refused"
ip route del default 2>/dev/null && echo "route: deleted" || echo "route: refused"
echo "caps: $(grep CapEff /proc/self/status | tr -d '\t')"
PROBE
echo "after: $(curl -sS https://api.github.com/user)"
"#
        .replace("PROBE", &escape_probe(&trip, "")),
    );
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}");
    trip.assert_untouched();
    assert!(
        err.contains("network mode transparent, rootless"),
        "the mode is announced: {err}"
    );
    let line = |k: &str| line(&text, k);
    assert_eq!(line("id:"), "id: 65534", "{text}");
    for client in ["curl:", "noproxy:", "python:", "after:"] {
        assert!(
            line(client).contains("\"login\":\"octocat\""),
            "{client} was not injected: {text}\n{err}"
        );
    }
    assert!(line("dns:").starts_with("dns: 198.1"), "{text}");
    assert_eq!(
        line("proxyvar:"),
        "proxyvar: none",
        "transparent, not env mode"
    );
    let ph = line("placeholder:");
    let ph = ph.strip_prefix("placeholder: ").unwrap_or_default();
    assert!(
        ph.starts_with("ghp_") && ph.len() == 40 && ph != REAL,
        "{ph}"
    );
    for file in ["env.txt", "proc-environ.txt"] {
        let env = std::fs::read_to_string(s.workspace.join(file)).unwrap();
        assert!(!env.contains(REAL), "{file}: {env}");
        assert!(env.contains("GH_TOKEN=ghp_"), "{file}: {env}");
    }
    assert!(!text.contains(REAL) && !err.contains(REAL));
    assert_eq!(line("moat_home:"), "moat_home: 0", "{text}");
    assert_eq!(line("home:"), "home: /tmp/home", "{text}");
    assert_eq!(line("nft:"), "nft: refused", "{text}");
    assert_eq!(line("route:"), "route: refused", "{text}");
    assert_eq!(line("caps:"), "caps: CapEff:0000000000000000", "{text}");
    assert_escapes_fail(&text);
    assert_eq!(host_state(), before, "the host namespace changed");
}

#[test]
fn rootless_exit_codes_propagate() {
    let s = setup();
    assert_eq!(s.run("exit 7").status.code(), Some(7));
    assert_eq!(s.run("kill -9 $$").status.code(), Some(137));
    let out = s.nobody_output(
        &[
            "run",
            s.workspace.to_str().unwrap(),
            "--",
            "/no/such/program",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    // The workspace is the working directory and writable, as nobody.
    let out = s.run("pwd; touch made-inside");
    assert!(
        stdout(&out).starts_with(&format!("{}\n", s.workspace.display())),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(s.workspace.join("made-inside")).unwrap();
    assert_eq!(made.uid(), NOBODY);
}

#[test]
fn kill_9_of_rootless_moat_ends_the_sandbox() {
    let s = setup();
    let before = host_state();
    let mut moat = s
        .nobody(&[
            "run",
            s.workspace.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "touch up.txt; exec sleep 3023",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(10, "sandbox did not start", || {
        s.workspace.join("up.txt").exists()
    });
    // setpriv execs moat: this pid is moat's. SIGKILL: no cleanup code runs.
    moat.kill().unwrap();
    moat.wait().unwrap();
    wait_for(5, "the sandboxed command outlived moat", || {
        !running("sleep 3023")
    });
    assert_eq!(host_state(), before, "the host namespace changed");
}

/// `moat run -d`, `logs` and `stop` as nobody: the command gets the SIGTERM
/// and exits its own way; the one it ignores is killed after --time; no
/// process of either run is left.
#[test]
fn rootless_detached_runs_stop() {
    let s = setup();
    let started = |script: &str| {
        let args = s.run_args(&["-d"], script);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.nobody_output(&args, "");
        let id = stdout(ok(&out)).trim().to_owned();
        assert_eq!(id.len(), 8, "{id:?}");
        id
    };
    let id =
        started("trap 'echo got-term; exit 3' TERM; echo up; while :; do sleep 0.1; done # 3031");
    wait_for(10, "the log never showed the output", || {
        stdout(&s.nobody_output(&["logs", &id], "")).contains("up")
    });
    let out = s.nobody_output(&["stop", &id], "");
    assert_eq!(stdout(ok(&out)).trim(), format!("{id} stopped 3"));
    assert!(stdout(&s.nobody_output(&["logs", &id], "")).contains("got-term"));
    wait_for(5, "the stopped command is still running", || {
        !running("# 3031")
    });

    let id = started("trap '' TERM; touch stubborn.txt; while :; do sleep 0.1; done # 3032");
    wait_for(10, "the command never set its trap", || {
        s.workspace.join("stubborn.txt").exists()
    });
    let out = s.nobody_output(&["stop", "--time", "1", &id], "");
    assert_eq!(
        stdout(ok(&out)).trim(),
        format!("{id} stopped 137"),
        "{}",
        stderr(&out)
    );
    wait_for(5, "the killed command is still running", || {
        !running("# 3032")
    });
}

#[test]
fn rootless_refuses_what_needs_root_and_says_so() {
    let s = setup();
    let out = s.nobody_output(
        &[
            "run",
            s.workspace.to_str().unwrap(),
            "--redirect",
            "ebpf",
            "--",
            "true",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--redirect ebpf needs root"),
        "{}",
        stderr(&out)
    );
    // Env mode stays available, chosen explicitly and silently.
    let out = s.nobody_output(
        &[
            "run",
            s.workspace.to_str().unwrap(),
            "--network-mode",
            "env",
            "--",
            "/bin/sh",
            "-c",
            "echo ${HTTPS_PROXY:+proxy-set}",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "proxy-set");
    assert!(!stderr(&out).contains("network mode"), "{}", stderr(&out));
}

#[test]
fn rootless_publish_exposes_a_sandbox_port_on_the_hosts_loopback() {
    let s = setup();
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(s.workspace.join("index.html"), "served-rootless").unwrap();
    let moat = s
        .nobody(&[
            "run",
            s.workspace.to_str().unwrap(),
            "-p",
            &format!("{host_port}:8000"),
            "--",
            "/bin/sh",
            "-c",
            "/usr/bin/python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 & \
             while [ ! -e done ]; do sleep 0.05; done; kill $!",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let body = get_until_answered(&format!("http://127.0.0.1:{host_port}/index.html"), 15);
    std::fs::write(s.workspace.join("done"), "").unwrap();
    let out = moat.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(body, "served-rootless");
    // The run is over: the host port is closed with it.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{host_port}/"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the port outlived the run");
}
