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
use moat_testkit::{Sink, StubServer, TestCa, fake_github_accepting, git_server};

const REAL: &str = "ghp_RealTokenInsideNothing0123456789abcd";

struct Setup {
    env: Env,
    ca: TestCa,
    ca_file: std::path::PathBuf,
    server: StubServer,
    git: StubServer,
    workspace: std::path::PathBuf,
}

fn setup() -> Setup {
    assert!(
        is_root(),
        "vm-tests run as root (CI does; locally: sudo ./scripts/test.sh)"
    );
    let env = Env::new();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_pem(env.dir.path()).unwrap();
    let server = StubServer::start(
        &ca,
        &["api.github.com", "files.pypi.test"],
        fake_github_accepting(Some(REAL.into())),
    )
    .unwrap();
    // github.com: a real Git smart-HTTP server with one repository, open
    // only to Basic x-access-token:<the real token>.
    let repos = env.dir.path().join("repos");
    make_repo(&repos.join("octo/hello.git"));
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{REAL}"));
    let git = git_server(&ca, &["github.com"], repos, format!("Basic {basic}")).unwrap();
    ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", REAL), ("MOAT_KEY_BACKEND", "file")],
    ));
    let workspace = env.dir.path().join("ws");
    std::fs::create_dir_all(&workspace).unwrap();
    Setup {
        env,
        ca,
        ca_file,
        server,
        git,
        workspace,
    }
}

/// A bare repository at `path` holding one commit with README = "hello".
fn make_repo(path: &std::path::Path) {
    let work = path.with_extension("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("README"), "hello from git\n").unwrap();
    let git = |dir: &std::path::Path, args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    };
    git(&work, &["init", "-q"]);
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-qm", "one"]);
    git(
        &work,
        &["clone", "-q", "--bare", ".", path.to_str().unwrap()],
    );
}

impl Setup {
    /// `moat run` with the github grant and the stand-ins wired in.
    fn cmd(&self, extra: &[&str], script: &str) -> Command {
        let mut cmd = self.env.cmd();
        cmd.args(["run", self.workspace.to_str().unwrap(), "--grant", "github"])
            .args(["--resolve", &self.server.resolve_entry("api.github.com")])
            .args(["--resolve", &self.server.resolve_entry("files.pypi.test")])
            .args(["--resolve", &self.git.resolve_entry("github.com")])
            .args(["--upstream-ca", self.ca_file.to_str().unwrap()])
            .args([
                "-e",
                &format!("MOAT_HOME_SEEN={}", self.env.home().display()),
            ])
            .args(extra)
            .args(["--", "/bin/sh", "-c", script]);
        cmd
    }

    fn run(&self, script: &str) -> Output {
        self.run_with(&[], script)
    }

    fn run_with(&self, extra: &[&str], script: &str) -> Output {
        self.cmd(extra, script).output().unwrap()
    }

    /// The events of the only run so far.
    fn events(&self) -> Vec<serde_json::Value> {
        let runs: Vec<_> = std::fs::read_dir(self.env.home().join("runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(runs.len(), 1, "{runs:?}");
        std::fs::read_to_string(runs[0].join("events.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The redirectors every transparent test runs with.
const REDIRECTS: [&str; 2] = ["nft", "ebpf"];

const JAVA_CLIENT: &str = r#"
import java.net.URI;
import java.net.http.*;
public class Main {
    public static void main(String[] args) throws Exception {
        var client = HttpClient.newHttpClient();
        var req = HttpRequest.newBuilder(URI.create("https://api.github.com/user")).build();
        System.out.println(client.send(req, HttpResponse.BodyHandlers.ofString()).body());
    }
}
"#;

#[test]
fn clients_get_injected_credentials_they_never_see() {
    let s = setup();
    std::fs::write(s.workspace.join("Main.java"), JAVA_CLIENT).unwrap();
    for redirect in REDIRECTS {
        let before = host_state();
        let mounts = host_mounts();
        let out = s.run_with(
            &["--redirect", redirect],
            r#"set -e
echo "curl: $(curl -sS https://api.github.com/user)"
echo "noproxy: $(curl -sS --noproxy '*' https://api.github.com/user)"
echo "python: $(/usr/bin/python3 -c 'import http.client,ssl; c=http.client.HTTPSConnection("api.github.com"); c.request("GET","/user"); print(c.getresponse().read().decode())')"
echo "requests: $(/usr/bin/python3 -c 'import requests; print(requests.get("https://api.github.com/user").text)')"
echo "node: $(node -e 'fetch("https://api.github.com/user").then(r=>r.text()).then(t=>console.log(t))')"
echo "java: $(java Main.java 2>/dev/null)"
rm -rf hello && git clone -q https://github.com/octo/hello.git 2>&1 && echo "git: $(cat hello/README)"
echo "dns: $(getent hosts api.github.com)"
echo "placeholder: $GH_TOKEN"
env > "$PWD/env.txt"
cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' > "$PWD/proc-environ.txt"
"#,
        );
        let text = stdout(&out);
        assert!(out.status.success(), "{redirect}: {text}\n{}", stderr(&out));
        for client in ["curl", "noproxy", "python", "requests", "node", "java"] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{client}:")))
                .unwrap_or_default();
            assert!(
                line.contains("\"login\":\"octocat\""),
                "{redirect}: {client} was not injected: {line}\n{}",
                stderr(&out)
            );
        }
        assert!(text.contains("git: hello from git"), "{redirect}: {text}");
        assert!(text.lines().any(|l| l.starts_with("dns: 198.1")), "{text}");
        let ph = text
            .lines()
            .find_map(|l| l.strip_prefix("placeholder: "))
            .unwrap();
        assert!(
            ph.starts_with("ghp_") && ph.len() == 40 && ph != REAL,
            "{ph}"
        );
        for file in ["env.txt", "proc-environ.txt"] {
            let env = std::fs::read_to_string(s.workspace.join(file)).unwrap();
            assert!(
                !env.contains(REAL) && !env.contains("GITHUB_TOKEN="),
                "{file}: {env}"
            );
            assert!(env.contains("GH_TOKEN=ghp_"), "{file}");
        }
        assert!(!text.contains(REAL));
        assert_eq!(
            host_state(),
            before,
            "{redirect}: the host namespace changed"
        );
        assert_eq!(
            host_mounts(),
            mounts,
            "{redirect}: the host's mounts changed"
        );
    }
    // No file the command could read holds the token: the workspace, and
    // what a run leaves in $MOAT_HOME (events, not secrets).
    let grep = Command::new("grep")
        .args(["-rlF", REAL])
        .arg(&s.workspace)
        .arg(s.env.home().join("runs"))
        .output()
        .unwrap();
    assert!(grep.stdout.is_empty(), "{}", stdout(&grep));
}

#[test]
fn nothing_of_the_host_leaks_in_and_the_rules_are_out_of_reach() {
    let s = setup();
    let trip = Tripwire::new();
    for redirect in REDIRECTS {
        let out = s.run_with(
            &["--redirect", redirect],
            &r#"
echo "moat_home: $(ls -A "$MOAT_HOME_SEEN" 2>/dev/null | wc -l)"
echo "root: $(ls -A /root 2>/dev/null | wc -l)"
echo "home: $HOME"
nft flush ruleset 2>/dev/null && echo "nft: flushed" || echo "nft: refused"
ip route del default 2>/dev/null && echo "route: deleted" || echo "route: refused"
PROBE
echo "after: $(curl -sS https://api.github.com/user)"
"#
            .replace(
                "PROBE",
                &escape_probe(
                    &trip,
                    r#"# DNS to "another resolver" is answered by Moat (a synthetic address),
# never by that resolver.
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04leak\x04test\x00\x00\x01\x00\x01"
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.settimeout(3)
try:
    d.sendto(q, ("127.0.0.2", 53))
    a = d.recv(512)
    print("dns: answer %d.%d.%d.%d" % tuple(a[-4:]))
except OSError as e:
    print("dns: failed", e)"#,
                ),
            ),
        );
        let text = stdout(&out);
        let line = |k: &str| line(&text, k);
        assert_eq!(line("moat_home:"), "moat_home: 0", "{text}");
        assert_eq!(line("root:"), "root: 0", "{text}");
        assert_eq!(line("home:"), "home: /tmp/home");
        assert_eq!(line("nft:"), "nft: refused", "{text}");
        assert_eq!(line("route:"), "route: refused", "{text}");
        assert_escapes_fail(&text);
        assert!(
            line("dns:").starts_with("dns: answer 198.1"),
            "{redirect}: {text}"
        );
        trip.assert_untouched();
        assert!(
            line("after:").contains("octocat"),
            "the rules must still hold: {text}"
        );
    }
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
    // A terminal passes through: the command's stdin is a TTY.
    let out = in_pty(&s.cmd(&[], "tty; test -t 0 && echo stdin-is-a-tty; exit 4"));
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("/dev/pts/") && shown.contains("stdin-is-a-tty"),
        "{shown}"
    );
    // SIGTERM, SIGINT and SIGHUP sent to moat by a process (not a terminal)
    // reach the command, which can clean up.
    for (sig, code) in [("TERM", 3), ("INT", 4), ("HUP", 5)] {
        let _ = std::fs::remove_file(s.workspace.join("up.txt"));
        let script = format!(
            "trap 'echo got-{sig} > sig.txt; exit {code}' {sig}; echo up > up.txt; \
             while :; do sleep 0.1; done"
        );
        let mut child = s
            .env
            .cmd()
            .args([
                "run",
                s.workspace.to_str().unwrap(),
                "--",
                "/bin/sh",
                "-c",
                &script,
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(10, "sandbox did not start", || {
            s.workspace.join("up.txt").exists()
        });
        assert!(
            Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = wait_within(&mut child, 10, &format!("moat after SIG{sig}"));
        assert_eq!(status.code(), Some(code), "SIG{sig}");
        assert_eq!(
            std::fs::read_to_string(s.workspace.join("sig.txt"))
                .unwrap()
                .trim(),
            format!("got-{sig}")
        );
    }
}

#[test]
fn kill_9_of_moat_ends_the_sandbox_and_clean_removes_the_rest() {
    let s = setup();
    let cgroups = || -> Vec<String> {
        let mount = moat::sandbox::cgroup::cgroup2_mount().unwrap();
        std::fs::read_dir(mount.join("moat"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for redirect in REDIRECTS {
        let _ = std::fs::remove_dir_all(s.env.home().join("runs"));
        let _ = std::fs::remove_file(s.workspace.join("up.txt"));
        let before = host_state();
        let mut moat = s
            .cmd(&["--redirect", redirect], "touch up.txt; exec sleep 3017")
            .spawn()
            .unwrap();
        wait_for(10, "sandbox did not start", || {
            s.workspace.join("up.txt").exists()
        });
        let list = stdout(ok(&s.env.run(&["list"], &[])));
        assert!(list.contains("running"), "{list}");
        moat.kill().unwrap(); // SIGKILL: no cleanup code runs
        moat.wait().unwrap();
        wait_for(
            5,
            &format!("{redirect}: the sandboxed command outlived moat"),
            || !running("sleep 3017"),
        );
        assert_eq!(
            host_state(),
            before,
            "{redirect}: the host namespace changed"
        );
        let list = stdout(ok(&s.env.run(&["list"], &[])));
        assert!(list.contains("killed"), "{list}");
        let run_dir = std::fs::read_dir(s.env.home().join("runs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(run_dir.join("ca-bundle.pem").exists(), "debris expected");
        if redirect == "ebpf" {
            assert!(cgroups().contains(&id), "a killed run leaves its cgroup");
        }
        let cleaned = stdout(ok(&s.env.run(&["clean"], &[])));
        assert!(!run_dir.join("ca-bundle.pem").exists(), "{cleaned}");
        assert!(run_dir.join("events.jsonl").exists(), "events are kept");
        assert!(!cgroups().contains(&id), "{redirect}: {cleaned}");
    }
    // A stale cgroup is also removed by the next eBPF run.
    let mount = moat::sandbox::cgroup::cgroup2_mount().unwrap();
    let stale = mount.join("moat").join("stale0test");
    std::fs::create_dir_all(&stale).unwrap();
    ok(&s.run_with(&["--redirect", "ebpf"], "true"));
    assert!(!stale.exists(), "the next run sweeps stale cgroups");
    ok(&s.env.run(&["clean", "--events"], &[]));
    assert_eq!(
        std::fs::read_dir(s.env.home().join("runs"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn detached_runs_logs_stop_list_and_destroy() {
    let s = setup();
    let ws = s.workspace.to_str().unwrap();
    // -d without a command (an interactive shell): refused, no run made.
    let out = s.env.cmd().args(["run", ws, "-d"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("-d needs a command"),
        "{}",
        stderr(&out)
    );
    assert!(s.env.run_ids().is_empty());

    // A detached run: its id once the command runs, output in its log.
    let out = s
        .cmd(
            &["-d"],
            "trap 'echo got-term; exit 3' TERM; echo out-line; echo err-line >&2; \
             while :; do sleep 0.1; done",
        )
        .output()
        .unwrap();
    let id = stdout(ok(&out)).trim().to_owned();
    assert!(
        id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id:?}"
    );
    let info = s.env.run_info(&id);
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["runtime"], "native", "{info}");
    assert_eq!(info["detached"], true, "{info}");
    assert!(info["pid"].as_i64().unwrap() > 0, "{info}");
    // logs -f follows (from the start) until the run ends.
    let follower = s
        .env
        .cmd()
        .args(["logs", "-f", &id[..6]])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(10, "the log never showed the output", || {
        let out = s.env.run(&["logs", &id], &[]);
        let text = stdout(ok(&out));
        text.contains("out-line") && text.contains("err-line")
    });
    let out = s.env.run(&["stop", &id], &[]);
    assert_eq!(stdout(ok(&out)).trim(), format!("{id} stopped 3"));
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success());
    let text = stdout(&followed);
    for l in ["out-line", "err-line", "got-term"] {
        assert!(text.contains(l), "logs -f: {text}");
    }
    let info = s.env.run_info(&id);
    assert_eq!(
        (&info["state"], &info["exit_code"]),
        (&"stopped".into(), &3.into()),
        "{info}"
    );
    assert!(info["pid"].is_null(), "{info}");
    // Stopping it again is not an error.
    ok(&s.env.run(&["stop", &id], &[]));

    // A command that ignores SIGTERM is killed after --time.
    let out = s
        .cmd(
            &["-d"],
            "trap '' TERM; touch stubborn.txt; while :; do sleep 0.1; done",
        )
        .output()
        .unwrap();
    let stubborn = stdout(ok(&out)).trim().to_owned();
    wait_for(10, "the command never started", || {
        s.workspace.join("stubborn.txt").exists()
    });
    let t = std::time::Instant::now();
    let out = s.env.run(&["stop", "--time", "1", &stubborn], &[]);
    assert_eq!(stdout(ok(&out)).trim(), format!("{stubborn} stopped 137"));
    assert!(t.elapsed().as_secs() < 8, "{:?}", t.elapsed());
    assert!(stderr(&out).contains("killing it"), "{}", stderr(&out));

    // A run whose setup fails: no id, the error, non-zero.
    let before = s.env.run_ids();
    let out = s
        .env
        .cmd()
        .args(["run", ws, "-d", "--grant", "nosuchgrant", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("nosuchgrant"), "{}", stderr(&out));
    let failed: Vec<String> = s.env.run_ids().difference(&before).cloned().collect();
    assert_eq!(s.env.run_info(&failed[0])["state"], "failed");

    // A foreground run has no log, and says so.
    let before = s.env.run_ids();
    ok(&s.run("true"));
    let fg: Vec<String> = s.env.run_ids().difference(&before).cloned().collect();
    let err = fails(&s.env.run(&["logs", &fg[0]], &[]));
    assert!(err.contains("ran in the foreground"), "{err}");
    assert_eq!(s.env.run_info(&fg[0])["detached"], false);
    let err = fails(&s.env.run(&["logs", "nosuchrun"], &[]));
    assert!(err.contains("no run 'nosuchrun'"), "{err}");

    // destroy: refuses a running run without --force; removes the run.
    let out = s
        .cmd(&["-d"], "touch busy.txt; exec sleep 3019")
        .output()
        .unwrap();
    let busy = stdout(ok(&out)).trim().to_owned();
    let err = fails(&s.env.run(&["destroy", &busy], &[]));
    assert!(
        err.contains("is running") && err.contains("--force"),
        "{err}"
    );
    ok(&s.env.run(&["destroy", "--force", &busy], &[]));
    assert!(!s.env.home().join("runs").join(&busy).exists());
    wait_for(5, "destroy --force left the command running", || {
        !running("sleep 3019")
    });
    ok(&s.env.run(&["destroy", &id], &[]));
    assert!(s.env.run_info(&id).is_null());
}

/// `moat stop` right after `moat run -d` printed the id: the signal may
/// reach Moat before the command exists. It still ends the command (143, as
/// a SIGTERM does) and leaves no process behind, every time.
#[test]
fn a_run_stopped_the_moment_it_starts_ends_and_leaves_nothing() {
    let s = setup();
    for i in 0..6 {
        let marker = format!("sleep 40{i}3");
        let out = s.cmd(&["-d"], &format!("exec {marker}")).output().unwrap();
        let id = stdout(ok(&out)).trim().to_owned();
        let out = s.env.run(&["stop", "--time", "20", &id], &[]);
        assert_eq!(
            stdout(ok(&out)).trim(),
            format!("{id} stopped 143"),
            "attempt {i}: {}",
            stderr(&out)
        );
        wait_for(5, &format!("attempt {i}: '{marker}' still running"), || {
            !running(&marker)
        });
    }
}

#[test]
fn hostile_requests_get_no_credential_back_and_no_route_bypass() {
    let s = setup();
    std::fs::write(
        s.workspace.join("moat.yaml"),
        "network:\n  rules:\n    - api.github.com:\n        - deny * /admin/**\n        - allow * /**\n",
    )
    .unwrap();
    // api.github.com here: a sink whose /reflect echoes Authorization back.
    let sink = Sink::start(&s.ca, &["api.github.com"], &[b"h2", b"http/1.1"]).unwrap();
    for redirect in REDIRECTS {
        let out = s
            .env
            .cmd()
            .args(["run", s.workspace.to_str().unwrap(), "--grant", "github", "--yes"])
            .args(["--redirect", redirect])
            .args(["--resolve", &sink.server.resolve_entry("api.github.com")])
            .args(["--upstream-ca", s.ca_file.to_str().unwrap()])
            .args(["--", "/bin/sh", "-c"])
            .arg(
                r#"
code() { curl -sS --path-as-is -o /dev/null -w '%{http_code}' "$@"; }
echo "reflect: $(curl -sS -i https://api.github.com/reflect | tr -d '\r' | tr '\n' ' ')"
echo "reflect-length: $(curl -sS -i 'https://api.github.com/reflect?length' | tr -d '\r' | tr '\n' ' ')"
echo "reflect-h1: $(curl -sS --http1.1 -i https://api.github.com/reflect | tr -d '\r' | tr '\n' ' ')"
echo "placeholder: $GH_TOKEN"
echo "trace: $(code -X TRACE https://api.github.com/user)"
for p in /admin/x /x/../admin/x /%61dmin/x //admin/x /admin/./x; do
  echo "route $p: $(code "https://api.github.com$p")"
done
"#,
            )
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(out.status.success(), "{redirect}: {text}\n{}", stderr(&out));
        assert!(
            !text.contains(REAL),
            "{redirect}: the real token came back: {text}"
        );
        let ph = line(&text, "placeholder:");
        let ph = ph.trim_start_matches("placeholder: ");
        for key in ["reflect:", "reflect-length:", "reflect-h1:"] {
            let l = line(&text, key);
            assert!(
                l.contains(&format!("x-echo-authorization: Bearer {ph}"))
                    && l.contains(&format!("got: Bearer {ph} end")),
                "{redirect}: {l}"
            );
        }
        assert_eq!(line(&text, "trace:"), "trace: 405", "{redirect}");
        for p in [
            "/admin/x",
            "/x/../admin/x",
            "/%61dmin/x",
            "//admin/x",
            "/admin/./x",
        ] {
            assert_eq!(
                line(&text, &format!("route {p}:")),
                format!("route {p}: 403"),
                "{redirect}: {text}"
            );
        }
    }
    assert!(
        !sink
            .server
            .seen()
            .iter()
            .any(|r| r.method == "TRACE" || r.path.contains("admin")),
        "reached the upstream"
    );
}

#[test]
fn strict_policy_refuses_what_is_neither_granted_nor_allowed() {
    let s = setup();
    std::fs::write(
        s.workspace.join("moat.yaml"),
        "network:\n  policy: strict\n  rules:\n    - files.pypi.test:\n        - deny DELETE /**\n",
    )
    .unwrap();
    for redirect in REDIRECTS {
        let _ = std::fs::remove_dir_all(s.env.home().join("runs"));
        let out = s.run_with(
            &["--yes", "--redirect", redirect],
            r#"
echo "granted: $(curl -sS https://api.github.com/user)"
echo "allowed: $(curl -sS -o /dev/null -w '%{http_code}' https://files.pypi.test/simple/)"
echo "route: $(curl -sS -o /dev/null -w '%{http_code}' -X DELETE https://files.pypi.test/simple/)"
echo "route-why: $(curl -sS -X DELETE https://files.pypi.test/simple/)"
echo "route-h1: $(curl -sS --http1.1 -o /dev/null -w '%{http_code}' -X DELETE https://files.pypi.test/simple/)"
echo "granted-h1: $(curl -sS --http1.1 https://api.github.com/user)"
echo "denied: $(curl -sS -o /dev/null -w '%{http_code}' https://evil.test/)"
echo "denied-why: $(curl -sS https://evil.test/)"
/usr/bin/python3 - <<'PY'
import socket
s = socket.create_connection(("evil.test", 5432), timeout=5)
try:
    s.sendall(b"hello\r\n")
    print("raw: got %r" % s.recv(100))
except OSError as e:
    print("raw: closed", e.errno)
PY
"#,
        );
        let text = stdout(&out);
        let line = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(k))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            line("granted:").contains("octocat"),
            "{redirect}: {text}\n{}",
            stderr(&out)
        );
        assert_eq!(line("allowed:"), "allowed: 404", "{redirect}: {text}");
        assert_eq!(line("route:"), "route: 403", "{redirect}: {text}");
        assert!(
            line("route-why:").contains("deny DELETE /**"),
            "{redirect}: {text}"
        );
        // HTTP/1.1 takes Moat's own path (proxy/h1): same refusal, same
        // injection, same events.
        assert_eq!(line("route-h1:"), "route-h1: 403", "{redirect}: {text}");
        assert!(
            line("granted-h1:").contains("octocat"),
            "{redirect}: {text}"
        );
        assert_eq!(line("denied:"), "denied: 403", "{redirect}: {text}");
        assert!(
            line("denied-why:").contains("strict network policy"),
            "{redirect}: {text}"
        );
        assert!(
            line("raw:") == "raw: got b''" || line("raw:").starts_with("raw: closed"),
            "{redirect}: {text}"
        );
        // Only the allowed request reached the stand-in.
        assert!(
            !s.server.seen().iter().any(|r| r.method == "DELETE"),
            "a denied request went upstream"
        );

        let events = s.events();
        let has = |event: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
            events.iter().any(|e| e["event"] == event && pred(e))
        };
        assert!(has("start", &|e| e["grants"][0] == "github"), "{events:?}");
        assert!(has("dns", &|e| e["name"] == "evil.test"), "{events:?}");
        assert!(has("inject", &|e| e["host"] == "api.github.com"
            && e["grants"][0] == "github"
            && e["path"] == "/user"));
        let injected = events
            .iter()
            .filter(|e| e["event"] == "inject" && e["path"] == "/user" && e["method"] == "GET")
            .count();
        assert_eq!(
            injected, 2,
            "one inject event per request, h2 and h1: {events:?}"
        );
        let denied_routes = events
            .iter()
            .filter(|e| e["event"] == "deny" && e["method"] == "DELETE")
            .count();
        assert_eq!(denied_routes, 3, "h2, h2, h1: {events:?}");
        assert!(has("deny", &|e| e["host"] == "evil.test" && e["port"] == 443));
        assert!(has("deny", &|e| e["host"] == "evil.test" && e["port"] == 5432));
        assert!(has("deny", &|e| e["method"] == "DELETE"));
        assert!(has("exit", &|e| e["code"] == 0), "{events:?}");
        let raw = serde_json::to_string(&events).unwrap();
        assert!(!raw.contains(REAL));
    }
}

/// A one-shot HTTP server on the host's loopback answering `body`.
fn host_service(body: &'static str) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, handle)
}

#[test]
fn host_services_only_through_network_host() {
    let s = setup();
    let (open, _a) = host_service("hello-from-host");
    let (closed, _b) = host_service("must-not-be-seen");
    std::fs::write(
        s.workspace.join("moat.yaml"),
        format!("network:\n  host: [{open}]\n"),
    )
    .unwrap();
    let out = s.run_with(
        &["--yes"],
        &format!(
            r#"
echo "open: $(curl -sS --max-time 5 http://host.moat.internal:{open}/ 2>&1)"
echo "closed: $(curl -sS --max-time 5 http://host.moat.internal:{closed}/ 2>&1)"
echo "loopback: $(curl -sS --max-time 5 http://127.0.0.1:{open}/ 2>&1)"
"#
        ),
    );
    let text = stdout(&out);
    assert!(
        text.contains("open: hello-from-host"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(!text.contains("must-not-be-seen"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("closed: ") && l.contains("not published")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("loopback: curl:")),
        "the sandbox's own loopback is not the host's: {text}"
    );
}

#[test]
fn publish_exposes_a_sandbox_port_on_the_hosts_loopback() {
    let s = setup();
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(s.workspace.join("index.html"), "served-from-the-sandbox").unwrap();
    let mut moat = s
        .cmd(
            &["-p", &format!("{host_port}:8000")],
            "/usr/bin/python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 & \
             while [ ! -e done ]; do sleep 0.05; done; kill $!",
        )
        .spawn()
        .unwrap();
    let body = get_until_answered(&format!("http://127.0.0.1:{host_port}/index.html"), 15);
    std::fs::write(s.workspace.join("done"), "").unwrap();
    assert_eq!(moat.wait().unwrap().code(), Some(0));
    assert_eq!(body, "served-from-the-sandbox");
}

#[test]
fn system_directories_are_read_only_and_the_cgroup_is_out_of_reach() {
    let s = setup();
    for redirect in REDIRECTS {
        let out = s.run_with(
            &["--redirect", redirect],
            r#"
touch /usr/moat-was-here 2>/dev/null && echo "usr: written" || echo "usr: refused"
touch /etc/moat-was-here 2>/dev/null && echo "etc: written" || echo "etc: refused"
touch ws-ok && echo "workspace: written"
for f in /sys/fs/cgroup/unified/cgroup.procs /sys/fs/cgroup/cgroup.procs; do
  [ -e "$f" ] && { echo $$ > "$f" 2>/dev/null && echo "cgroup: escaped" || echo "cgroup: refused"; }
done
echo "after: $(curl -sS https://api.github.com/user)"
"#,
        );
        let text = stdout(&out);
        assert!(text.contains("usr: refused"), "{redirect}: {text}");
        assert!(text.contains("etc: refused"), "{redirect}: {text}");
        assert!(text.contains("workspace: written"), "{redirect}: {text}");
        assert!(
            text.contains("cgroup: refused") && !text.contains("cgroup: escaped"),
            "{redirect}: {text}"
        );
        assert!(text.contains("octocat"), "{redirect}: {text}");
        assert!(!std::path::Path::new("/usr/moat-was-here").exists());
    }
}

#[test]
fn env_mode_injects_through_the_proxy_variables() {
    let s = setup();
    let out = s.run_with(
        &["--network-mode", "env"],
        r#"
echo "curl: $(curl -sS https://api.github.com/user)"
echo "requests: $(/usr/bin/python3 -c 'import requests; print(requests.get("https://api.github.com/user").text)')"
echo "direct: $(curl -sS --noproxy '*' --max-time 3 https://api.github.com/user 2>&1 | head -c 80)"
case "$HTTPS_PROXY" in http://moat:*@127.0.0.1:*) echo "proxy: ok";; *) echo "proxy: $HTTPS_PROXY";; esac
echo "node: $NODE_USE_ENV_PROXY"
"#,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.lines()
            .any(|l| l.starts_with("curl:") && l.contains("octocat")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("requests:") && l.contains("octocat")),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("direct:") && l.contains("octocat")),
        "{text}"
    );
    assert!(
        text.contains("proxy: ok") && text.contains("node: 1"),
        "{text}"
    );
    assert!(!text.contains(REAL));
}

#[test]
fn env_mode_works_as_nobody() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    // nobody needs its own MOAT_HOME and HOME, and a way in to the CA file.
    let dir = s.env.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (home, moat_home) = (dir.join("nobody-home"), dir.join("nobody-moat"));
    for d in [&home, &moat_home, &s.workspace] {
        std::fs::create_dir_all(d).unwrap();
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    let nobody = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(MOAT)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", &home)
            .env("MOAT_HOME", &moat_home)
            .env("MOAT_KEY_BACKEND", "file")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes());
        child.wait_with_output().unwrap()
    };
    ok(&nobody(
        &["grant", "github", "--token-stdin", "--no-validate"],
        Some(REAL),
    ));
    let out = nobody(
        &[
            "run",
            s.workspace.to_str().unwrap(),
            "--network-mode",
            "env",
            "--grant",
            "github",
            "--resolve",
            &s.server.resolve_entry("api.github.com"),
            "--upstream-ca",
            s.ca_file.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "echo \"id: $(id -u)\"; echo \"curl: $(curl -sS https://api.github.com/user)\"; echo \"proxy: ${HTTPS_PROXY:+set}\"",
        ],
        None,
    );
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{err}");
    // Where user namespaces work (here), nobody's default is the rootless
    // transparent sandbox (vm-tests/rootless.rs); env mode is asked for.
    assert!(text.contains("proxy: set"), "env mode: {text}");
    assert!(text.contains("id: 65534"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("curl:") && l.contains("octocat")),
        "{text}\n{err}"
    );
    // The eBPF redirector without root says what to do.
    let out = nobody(&["run", "--redirect", "ebpf", "--", "true"], None);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
}

#[test]
fn provider_files_and_mcp_servers_reach_the_sandbox() {
    let s = setup();
    let ca = TestCa::new().unwrap();
    let apis_dir = s.env.dir.path().join("apis");
    std::fs::create_dir_all(&apis_dir).unwrap();
    let ca_file = ca.write_pem(&apis_dir).unwrap();
    let apis = StubServer::start(
        &ca,
        &["npm.corp.test", "mcp.context7.test"],
        moat_testkit::apis::fake_npm_registry(),
    )
    .unwrap();
    let file = [("MOAT_KEY_BACKEND", "file")];
    ok(&s.env.run_stdin(
        &[
            "grant",
            "npm",
            "--host",
            "npm.corp.test",
            "--token-stdin",
            "--no-validate",
        ],
        &file,
        "npm_RealRegistryToken",
    ));
    ok(&s.env.run_stdin(
        &["grant", "mcp", "context7", "--token-stdin"],
        &file,
        "c7-real-key",
    ));
    std::fs::write(
        s.workspace.join("moat.yaml"),
        "grants: [npm]\nmcp:\n  - name: context7\n    url: https://mcp.context7.test/mcp\n    auth: {grant: mcp-context7, header: CONTEXT7_API_KEY}\n",
    )
    .unwrap();
    let out = s
        .env
        .cmd()
        .args(["run", s.workspace.to_str().unwrap(), "--yes"])
        .args(["--resolve", &apis.resolve_entry("npm.corp.test")])
        .args(["--resolve", &apis.resolve_entry("mcp.context7.test")])
        .args(["--upstream-ca", ca_file.to_str().unwrap()])
        .args([
            "--",
            "/bin/sh",
            "-c",
            r#"
echo "npmrc: $(grep -c moatProxyInjected ~/.npmrc) $(stat -c %U ~/.npmrc)"
echo "whoami: $(npm whoami --registry https://npm.corp.test/ 2>&1)"
echo "mcp: $(curl -sS -X POST https://mcp.context7.test/mcp -d '{}')"
"#,
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("npmrc: 1 root"), "{text}");
    assert!(text.contains("whoami: jsmith"), "{text}\n{}", stderr(&out));
    assert!(text.contains(r#"mcp: {"ok":true}"#), "{text}");
    let seen = apis.seen();
    assert!(
        seen.iter()
            .any(|r| r.header("authorization") == ["Bearer npm_RealRegistryToken"]),
        "npm's token was not injected: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.path == "/mcp" && r.header("context7_api_key") == ["c7-real-key"]),
        "the MCP header was not injected: {seen:?}"
    );
    assert!(!text.contains("npm_RealRegistryToken") && !text.contains("c7-real-key"));
}
