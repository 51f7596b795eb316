//! `moat run --runtime docker` end to end, as root, against a private Docker
//! engine (no bridge, no iptables: scripts/test-dockerd.sh, started here when
//! DOCKER_HOST is not set) and an image made without a registry
//! (scripts/test-image.sh: host files `docker import`ed as moat-test-base).
//! The upstream is a local stand-in for api.github.com that only answers to
//! the real token; escape attempts aim at addresses that exist nowhere.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use moat_testkit::{Registry, StubServer, TestCa, fake_github_accepting};

const REAL: &str = "ghp_RealTokenInsideNothing0123456789abcd";
const IMAGE: &str = TEST_IMAGE;

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .env("DOCKER_HOST", docker_host())
        .args(args)
        .output()
        .unwrap()
}

struct Setup {
    env: Env,
    ca_file: PathBuf,
    server: StubServer,
    workspace: PathBuf,
}

fn setup() -> Setup {
    assert!(
        is_root(),
        "vm-tests run as root (CI does; locally: sudo ./scripts/test.sh)"
    );
    docker_host();
    let env = Env::new();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_pem(env.dir.path()).unwrap();
    let server = StubServer::start(
        &ca,
        &["api.github.com"],
        fake_github_accepting(Some(REAL.into())),
    )
    .unwrap();
    ok(&env.run(
        &["grant", "github", "--no-validate"],
        &[("GITHUB_TOKEN", REAL), ("MOAT_KEY_BACKEND", "file")],
    ));
    let workspace = env.dir.path().join("ws");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(
        workspace.join("moat.yaml"),
        format!("runtime: docker\nimage: {IMAGE}\n"),
    )
    .unwrap();
    Setup {
        env,
        ca_file,
        server,
        workspace,
    }
}

impl Setup {
    /// `moat` (clean environment) talking to the test engine.
    fn moat(&self) -> Command {
        let mut cmd = self.env.cmd();
        cmd.env("DOCKER_HOST", docker_host());
        cmd
    }

    fn cmd(&self, extra: &[&str], script: &str) -> Command {
        let mut cmd = self.moat();
        cmd.args(["run", self.workspace.to_str().unwrap(), "--grant", "github"])
            .args(["--runtime", "docker"])
            .args(["--resolve", &self.server.resolve_entry("api.github.com")])
            .args(["--upstream-ca", self.ca_file.to_str().unwrap()])
            .args(extra)
            .args(["--", "/bin/sh", "-c", script]);
        cmd
    }

    fn run(&self, script: &str) -> Output {
        self.cmd(&[], script).output().unwrap()
    }

    fn events(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        for run in std::fs::read_dir(self.env.home().join("runs")).unwrap() {
            let path = run.unwrap().path().join("events.jsonl");
            for l in std::fs::read_to_string(path).unwrap().lines() {
                all.push(serde_json::from_str(l).unwrap());
            }
        }
        all
    }

    /// Every container and moat-env image the runs of this test made.
    fn containers_left(&self) -> String {
        let mut left = String::new();
        for run in std::fs::read_dir(self.env.home().join("runs")).unwrap() {
            let id = run.unwrap().file_name().to_string_lossy().into_owned();
            let out = docker(&["ps", "-aq", "--filter", &format!("label=io.moat.run={id}")]);
            left.push_str(&stdout(&out));
        }
        left
    }
}

#[test]
fn docker_run_injects_and_the_container_sees_only_placeholders() {
    let s = setup();
    let before = host_state();
    let out = s.run(
        r#"
echo "curl: $(curl -sS https://api.github.com/user)"
echo "system-store: $(env -u CURL_CA_BUNDLE -u SSL_CERT_FILE curl -sS https://api.github.com/user)"
echo "python: $(python3 -c 'import http.client; c=http.client.HTTPSConnection("api.github.com"); c.request("GET","/user"); print(c.getresponse().read().decode())')"
echo "placeholder: $GH_TOKEN"
echo "id: $(id -u):$(id -g)"
echo "pwd: $PWD"
echo "home: $HOME"
echo "bundle: $(grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt)"
touch made-inside
env > /workspace/env.txt
cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' > /workspace/proc-environ.txt
"#,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for client in ["curl:", "system-store:", "python:"] {
        assert!(
            line(&text, client).contains("\"login\":\"octocat\""),
            "{client} was not injected: {text}\n{}",
            stderr(&out)
        );
    }
    let ph = line(&text, "placeholder: ");
    let ph = ph.trim_start_matches("placeholder: ");
    assert!(
        ph.starts_with("ghp_") && ph.len() == 40 && ph != REAL,
        "{ph}"
    );
    // Moat runs as root: the command is an unprivileged id (never the host's
    // root), and what it writes through the id-mapped workspace is root's.
    assert_eq!(line(&text, "id:"), "id: 2147352576:2147352576", "{text}");
    assert_eq!(line(&text, "pwd:"), "pwd: /workspace", "{text}");
    assert_eq!(line(&text, "home:"), "home: /tmp/home", "{text}");
    use std::os::unix::fs::MetadataExt as _;
    let made = std::fs::metadata(s.workspace.join("made-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
    assert_eq!(
        std::fs::read_dir(s.env.home().join("runs"))
            .unwrap()
            .flat_map(|r| std::fs::read_dir(r.unwrap().path()).unwrap())
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("idmapped"))
            .count(),
        0,
        "the id-mapped views outlived the run"
    );
    for file in ["env.txt", "proc-environ.txt"] {
        let env = std::fs::read_to_string(s.workspace.join(file)).unwrap();
        assert!(
            !env.contains(REAL) && !env.contains("GITHUB_TOKEN="),
            "{file}: {env}"
        );
        assert!(env.contains("GH_TOKEN=ghp_"), "{file}: {env}");
    }
    assert!(!text.contains(REAL));
    assert_eq!(host_state(), before, "the host namespace changed");
    assert_eq!(s.containers_left(), "", "the container outlived the run");
    let events = s.events();
    assert!(
        events.iter().any(|e| e["event"] == "container"
            || e.get("kind").is_some_and(|k| k == "container")
            || e.to_string().contains("\"container\"")),
        "{events:?}"
    );
    // As the sudo caller, the command runs as that user.
    let out = s
        .cmd(&[], "echo id: $(id -u):$(id -g)")
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .unwrap();
    assert_eq!(
        line(&stdout(&out), "id:"),
        "id: 65534:65534",
        "{}",
        stderr(&out)
    );
}

#[test]
fn docker_escapes_fail_and_the_rules_are_out_of_reach() {
    let s = setup();
    std::fs::write(
        s.workspace.join("moat.yaml"),
        format!("runtime: docker\nimage: {IMAGE}\nnetwork:\n  policy: strict\n"),
    )
    .unwrap();
    let trip = Tripwire::new();
    let host_ip = trip
        .host_ip
        .expect("the host has a non-loopback IPv4 address");
    let out = s.run(
        &r#"
PROBE
echo "after: $(curl -sS https://api.github.com/user)"
cat /proc/self/status | grep CapEff
"#
        .replace(
            "PROBE",
            &escape_probe(
                &trip,
                &format!(
                    r#"try:
    c = socket.create_connection(("{host_ip}", {tcp}), timeout=3)
    c.settimeout(3)
    print("tcp: peer", c.getpeername()[0], "data", c.recv(100))
except OSError as e:
    print("tcp: failed", e)"#,
                    tcp = trip.tcp_port()
                ),
            ),
        ),
    );
    let text = stdout(&out);
    trip.assert_untouched();
    assert_escapes_fail(&text);
    // Other TCP lands on Moat's proxy (strict: refused there), never on the wire.
    assert!(
        line(&text, "tcp:").starts_with("tcp: failed") || line(&text, "tcp:").contains("data b''"),
        "{text}"
    );
    assert_eq!(
        line(&text, "CapEff:"),
        "CapEff:\t0000000000000000",
        "{text}"
    );
    assert!(line(&text, "after:").contains("octocat"), "{text}");
    let events = s.events();
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains(&host_ip.to_string())),
        "the raw TCP connection did not reach the proxy: {events:?}"
    );
    assert_eq!(s.containers_left(), "");
}

#[test]
fn docker_exit_codes_signals_and_keep() {
    let s = setup();
    assert_eq!(s.run("exit 7").status.code(), Some(7));
    assert_eq!(s.run("kill -9 $$").status.code(), Some(137));
    let out = s
        .moat()
        .args([
            "run",
            s.workspace.to_str().unwrap(),
            "--runtime",
            "docker",
            "--",
            "/no/such/program",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    // stdin passes through.
    let mut child = s
        .cmd(&[], "tr a-z A-Z")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello through stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "HELLO THROUGH STDIN\n", "{}", stderr(&out));
    // A terminal passes through: the command's stdin is a TTY.
    let out = in_pty(&s.cmd(&[], "tty; test -t 0 && echo stdin-is-a-tty; exit 4"));
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("/dev/pts/") && shown.contains("stdin-is-a-tty"),
        "{shown}"
    );
    // SIGTERM to moat reaches the command, which can clean up.
    let mut child = s
        .cmd(
            &[],
            "trap 'echo got-term > term.txt; exit 3' TERM; echo up > up.txt; while :; do sleep 0.1; done",
        )
        .spawn()
        .unwrap();
    wait_for(30, "the command never started", || {
        s.workspace.join("up.txt").exists()
    });
    nix_kill_term(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(s.workspace.join("term.txt").exists());
    assert_eq!(s.containers_left(), "");
    // --keep leaves the container (stopped) behind.
    let out = s.cmd(&["--keep"], "true").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let left = s.containers_left();
    assert_eq!(left.lines().count(), 1, "{left}");
    ok(&docker(&["rm", "-f", left.trim()]));
}

/// A tar of a root filesystem holding only a static busybox (`/bin/busybox`,
/// `/bin/sh`): no C library at all.
fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .unwrap();
    std::fs::copy(stdout(&busybox).trim(), root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let tar = dir.join("busybox.tar");
    assert!(
        Command::new("tar")
            .args([
                "-C",
                root.to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                "."
            ])
            .status()
            .unwrap()
            .success()
    );
    tar
}

#[test]
fn docker_runs_images_without_glibc() {
    let s = setup();
    let image = format!("moat-test-busybox-{}:latest", std::process::id());
    let tar = busybox_rootfs_tar(s.env.dir.path());
    ok(&docker(&["import", tar.to_str().unwrap(), &image]));
    std::fs::write(
        s.workspace.join("moat.yaml"),
        format!("runtime: docker\nimage: {image}\n"),
    )
    .unwrap();
    let out = s.run(
        "for d in /lib /lib64 /usr/lib; do test -e $d && echo has-$d; done; \
         /bin/busybox echo ran-without-glibc; exit 5",
    );
    let _ = docker(&["rmi", "-f", &image]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ran-without-glibc", "{}", stderr(&out));
    assert_eq!(s.containers_left(), "");
}

#[test]
fn docker_pulls_an_image_it_does_not_have() {
    let s = setup();
    let tar = busybox_rootfs_tar(s.env.dir.path());
    let repo = format!("moat-test/pulled-{}", std::process::id());
    let registry = Registry::start(&repo, "1", std::fs::read(&tar).unwrap()).unwrap();
    let image = registry.image();
    std::fs::write(
        s.workspace.join("moat.yaml"),
        format!("runtime: docker\nimage: {image}\n"),
    )
    .unwrap();
    let first = s.run("echo pulled-and-ran");
    let pulls_after_first = registry.requests();
    let second = s.run("echo ran-again");
    let pulls_after_second = registry.requests();
    let _ = docker(&["rmi", "-f", &image]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(stdout(&first).trim(), "pulled-and-ran");
    assert!(
        stderr(&first).contains(&format!("pulling {image}")),
        "{}",
        stderr(&first)
    );
    assert!(
        pulls_after_first.iter().any(|r| r.contains("/manifests/1"))
            && pulls_after_first
                .iter()
                .any(|r| r.contains("/blobs/sha256:")),
        "{pulls_after_first:?}"
    );
    // Present now: the second run does not ask the registry again.
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(stdout(&second).trim(), "ran-again");
    assert_eq!(pulls_after_first, pulls_after_second);
    assert_eq!(s.containers_left(), "");
}

#[test]
fn docker_says_what_it_pulls_and_fails_in_one_line_when_the_registry_is_unreachable() {
    let s = setup();
    // A registry on a loopback port nothing listens on: offline, as far as
    // this engine can tell (127.0.0.0/8 registries are plain HTTP to Docker).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let image = format!("127.0.0.1:{port}/moat-test/absent:1");
    std::fs::write(
        s.workspace.join("moat.yaml"),
        format!("runtime: docker\nimage: {image}\n"),
    )
    .unwrap();
    let out = s.run("true");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("pulling {image} from 127.0.0.1:{port}")),
        "{err}"
    );
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("moat: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    let line = errors[0];
    assert!(line.contains("cannot be reached (offline?)"), "{line}");
    assert!(
        line.contains("image:") && line.contains("dependencies:"),
        "{line}"
    );
    assert!(!line.contains("500") && line.len() < 300, "{line}");
    assert_eq!(err.lines().count(), 2, "{err}");
    assert_eq!(s.containers_left(), "");
}

/// The containers (any state) labelled with run `id`.
fn containers_of(id: &str) -> Vec<String> {
    let out = docker(&["ps", "-aq", "--filter", &format!("label=io.moat.run={id}")]);
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
fn docker_detached_stop_destroy_and_clean() {
    let s = setup();
    // -d: the id once the command runs in its container.
    let out = s
        .cmd(
            &["-d"],
            "trap 'echo got-term; exit 3' TERM; echo container-out; while :; do sleep 0.1; done",
        )
        .output()
        .unwrap();
    let id = stdout(ok(&out)).trim().to_owned();
    assert_eq!(id.len(), 8, "{id:?}");
    let info = s.env.run_info(&id);
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["runtime"], "docker", "{info}");
    let container = info["container"].as_str().unwrap_or_default().to_owned();
    assert_eq!(containers_of(&id).len(), 1);
    assert!(container.starts_with(&containers_of(&id)[0]), "{info}");
    wait_for(10, "the container's output never reached the log", || {
        stdout(ok(&s.env.run(&["logs", &id], &[]))).contains("container-out")
    });
    let out = s.moat().args(["stop", &id]).output().unwrap();
    assert_eq!(stdout(ok(&out)).trim(), format!("{id} stopped 3"));
    assert!(stdout(ok(&s.env.run(&["logs", &id], &[]))).contains("got-term"));
    wait_for(5, "the stopped run's container is still there", || {
        containers_of(&id).is_empty()
    });

    // A command that ignores SIGTERM: stop kills the container after --time.
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
    let out = s
        .moat()
        .args(["stop", "--time", "1", &stubborn])
        .output()
        .unwrap();
    assert_eq!(
        stdout(ok(&out)).trim(),
        format!("{stubborn} stopped 137"),
        "{}",
        stderr(&out)
    );
    wait_for(5, "the killed run's container is still there", || {
        containers_of(&stubborn).is_empty()
    });

    // destroy removes a kept container with its run.
    let before = s.env.run_ids();
    ok(&s.cmd(&["--keep"], "true").output().unwrap());
    let kept: Vec<String> = s.env.run_ids().difference(&before).cloned().collect();
    let kept = kept[0].clone();
    assert_eq!(containers_of(&kept).len(), 1);
    let out = s.moat().args(["destroy", &kept]).output().unwrap();
    assert!(stdout(ok(&out)).contains(&format!("removed container moat-{kept}")));
    assert!(containers_of(&kept).is_empty());
    assert!(!s.env.home().join("runs").join(&kept).exists());

    // clean removes a stopped container of a dead run, only in its own home.
    let before = s.env.run_ids();
    ok(&s.cmd(&["--keep"], "true").output().unwrap());
    let left: Vec<String> = s.env.run_ids().difference(&before).cloned().collect();
    let left = left[0].clone();
    assert_eq!(containers_of(&left).len(), 1);
    let other = Env::new();
    let out = other
        .cmd()
        .env("DOCKER_HOST", docker_host())
        .arg("clean")
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(
        containers_of(&left).len(),
        1,
        "another home's clean took it"
    );
    let out = s.moat().arg("clean").output().unwrap();
    assert!(
        stdout(ok(&out)).contains(&format!("removed container moat-{left}")),
        "{}",
        stdout(&out)
    );
    assert!(containers_of(&left).is_empty());
    assert!(
        s.env
            .home()
            .join("runs")
            .join(&left)
            .join("events.jsonl")
            .exists()
    );
    assert_eq!(s.containers_left(), "");
}

#[test]
fn docker_kill_9_of_moat_takes_the_container_with_it() {
    let s = setup();
    let before = s.env.run_ids();
    let mut moat = s.cmd(&[], "touch up.txt; exec sleep 3023").spawn().unwrap();
    wait_for(30, "the command never started", || {
        s.workspace.join("up.txt").exists()
    });
    let ids: Vec<String> = s.env.run_ids().difference(&before).cloned().collect();
    let id = ids[0].clone();
    assert_eq!(containers_of(&id).len(), 1);
    moat.kill().unwrap(); // SIGKILL: no cleanup code runs
    moat.wait().unwrap();
    wait_for(5, "the container outlived moat", || {
        containers_of(&id).is_empty()
    });
    assert_eq!(s.env.run_info(&id)["state"], "killed");
    // A container whose Moat died while it was kept (--keep) stops, and
    // moat clean removes it.
    std::fs::remove_file(s.workspace.join("up.txt")).unwrap();
    let before = s.env.run_ids();
    let mut moat = s
        .cmd(&["--keep"], "touch up.txt; exec sleep 3023")
        .spawn()
        .unwrap();
    wait_for(30, "the command never started", || {
        s.workspace.join("up.txt").exists()
    });
    let ids: Vec<String> = s.env.run_ids().difference(&before).cloned().collect();
    let id = ids[0].clone();
    moat.kill().unwrap();
    moat.wait().unwrap();
    wait_for(5, "the kept container did not stop without moat", || {
        let out = docker(&["ps", "-q", "--filter", &format!("label=io.moat.run={id}")]);
        stdout(&out).trim().is_empty()
    });
    assert_eq!(containers_of(&id).len(), 1, "kept, stopped");
    let out = s.moat().arg("clean").output().unwrap();
    assert!(
        stdout(ok(&out)).contains("removed container"),
        "{}",
        stdout(&out)
    );
    assert_eq!(s.containers_left(), "");
}

#[test]
fn docker_no_engine_is_a_clear_error() {
    let s = setup();
    let out = s
        .cmd(&[], "true")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("no Docker engine answers at unix:///nonexistent/docker.sock")
            && err.contains("DOCKER_HOST"),
        "{err}"
    );
}

#[test]
fn docker_image_from_dependencies_is_cached_by_content() {
    let s = setup();
    // A package name of this test run only: no image of an earlier run can
    // answer for it.
    let unique = format!(
        "moat-test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let write = |deps: &str| {
        std::fs::write(
            s.workspace.join("moat.yaml"),
            format!("runtime: docker\nbase_image: {IMAGE}\ndependencies: [{unique}, {deps}]\n"),
        )
        .unwrap();
    };
    let built = |out: &Output| stderr(out).contains("moat: building image moat-env:");
    write("git, python@3.11");
    let first = s.run("cat /var/lib/moat-test-apt.log");
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(built(&first), "{}", stderr(&first));
    // The engine's build log as docker build prints it: no "  | " prefix,
    // and its forwarding warning (this engine runs without ip_forward) once.
    let log = stderr(&first);
    assert!(log.contains("Step 1/") && !log.contains("  | "), "{log}");
    assert!(
        log.matches("IPv4 forwarding is disabled").count() <= 1,
        "{log}"
    );
    let log = stdout(&first);
    assert!(
        log.contains(&format!(
            "install -y --no-install-recommends ca-certificates git {unique} python3"
        )),
        "{log}"
    );
    // Same config, other order: the same image, no build.
    write("python@3.11, git");
    let second = s.run("true");
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(!built(&second), "rebuilt: {}", stderr(&second));
    // A changed dependency: another image.
    write("git, jq, python@3.11");
    let third = s.run("cat /var/lib/moat-test-apt.log");
    assert!(built(&third), "{}", stderr(&third));
    assert!(
        stdout(&third).contains(&format!(" git jq {unique} python3")),
        "{}",
        stdout(&third)
    );
    // --rebuild forces.
    let fourth = s.cmd(&["--rebuild"], "true").output().unwrap();
    assert!(built(&fourth), "{}", stderr(&fourth));
    // Clean up the images this test made.
    let images: std::collections::BTreeSet<String> = s
        .events()
        .iter()
        .filter_map(|e| e.get("image").and_then(|i| i.as_str()).map(String::from))
        .filter(|i| i.starts_with("moat-env:"))
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    for i in images {
        ok(&docker(&["rmi", "-f", &i]));
    }
    // The image --rebuild replaced, untagged now.
    ok(&docker(&[
        "image",
        "prune",
        "-f",
        "--filter",
        "label=io.moat.generated=1",
    ]));
    assert_eq!(s.containers_left(), "");
}

fn nix_kill_term(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn docker_masks_moat_home_the_agent_and_credentials_inside_the_workspace() {
    docker_host();
    let env = Env::new();
    // The workspace is HOME, which holds $MOAT_HOME, the agent socket and
    // a tool's credentials.
    let home = env.user_home();
    let moat_home = home.join(".moat");
    let agent = home.join(".agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    std::fs::write(home.join(".netrc"), "machine x password netrc-secret\n").unwrap();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "PRIVATE KEY\n").unwrap();
    std::fs::write(home.join(".ssh/known_hosts"), "kh-visible\n").unwrap();
    std::fs::write(
        home.join("moat.yaml"),
        format!("runtime: docker\nimage: {IMAGE}\n"),
    )
    .unwrap();
    let moat = |args: &[&str]| {
        let mut c = env.cmd();
        c.env("MOAT_HOME", &moat_home)
            .env("MOAT_KEY_BACKEND", "file")
            .env("SSH_AUTH_SOCK", &agent)
            .env("DOCKER_HOST", docker_host())
            .args(args);
        c
    };
    ok(&moat(&["grant", "github", "--no-validate"])
        .env("GITHUB_TOKEN", REAL)
        .output()
        .unwrap());
    let out = moat(&[
        "run",
        home.to_str().unwrap(),
        "--grant",
        "github",
        "--",
        "/bin/sh",
        "-c",
        r#"
W=/workspace
echo "list: $(ls -A $W/.moat 2>/dev/null | wc -l)"
touch $W/.moat/planted 2>/dev/null && echo "write: ok" || echo "write: refused"
[ -s $W/.netrc ] && echo "cred: netrc readable"
[ -s $W/.ssh/id_ed25519 ] && echo "cred: key readable"
echo x 2>/dev/null >> $W/.netrc && echo "cred: netrc written"
echo "known_hosts: $(cat $W/.ssh/known_hosts)"
python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect("/workspace/.agent.sock"); print("agent: connected")' 2>/dev/null || echo "agent: refused"
"#,
    ])
    .output()
    .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert_eq!(line(&text, "list:"), "list: 0", "{text}");
    assert_eq!(line(&text, "write:"), "write: refused", "{text}");
    assert!(!text.contains("cred:"), "{text}");
    assert_eq!(
        line(&text, "known_hosts:"),
        "known_hosts: kh-visible",
        "{text}"
    );
    assert_eq!(line(&text, "agent:"), "agent: refused", "{text}");
    assert!(
        stderr(&out).contains("masked inside the workspace"),
        "{}",
        stderr(&out)
    );
    assert!(!moat_home.join("planted").exists());
    assert_eq!(
        std::fs::read_to_string(home.join(".netrc")).unwrap(),
        "machine x password netrc-secret\n"
    );
}

/// `--grant aws` in a container: AWS_CONFIG_FILE's credential_process runs
/// Moat's binary through the host's loader, asks the run's proxy on
/// moat.internal, and prints the assumed role's temporary credentials
/// (the role assumed by the proxy through STS at the moto stand-in).
#[test]
fn docker_aws_credential_process_reaches_the_runs_proxy() {
    use moat_testkit::aws::{Moto, ROLE_ARN};
    let s = setup();
    let ca = TestCa::new().unwrap();
    let moto = Moto::start(&ca).unwrap();
    let keys = moto.seed().unwrap();
    let creds = moto.credentials_file(&keys.user).unwrap();
    let vars = [
        ("MOAT_RESOLVE", moto.moat_resolve()),
        ("MOAT_UPSTREAM_CA", moto.ca_path().display().to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("MOAT_KEY_BACKEND", "file".into()),
    ];
    let out = s
        .moat()
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(["grant", "aws", "--role", ROLE_ARN, "--region", "us-east-1"])
        .output()
        .unwrap();
    ok(&out);
    let out = s
        .moat()
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(["run", s.workspace.to_str().unwrap(), "--grant", "aws"])
        .args(["--runtime", "docker", "--"])
        .args([
            "/bin/sh",
            "-c",
            "echo \"file=$AWS_CONFIG_FILE region=$AWS_REGION\"; \
             cmd=$(sed -n 's/^credential_process = //p' \"$AWS_CONFIG_FILE\"); $cmd",
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    let (first, json) = text.split_once('\n').unwrap();
    assert_eq!(first, "file=/tmp/home/.aws/config region=us-east-1");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["Version"], 1);
    assert!(
        v["AccessKeyId"].as_str().unwrap().starts_with("ASIA"),
        "{v}"
    );
    assert!(v["Expiration"].as_str().unwrap().ends_with('Z'), "{v}");
    assert_ne!(v["AccessKeyId"].as_str().unwrap(), keys.user.id);
    assert!(s.containers_left().trim().is_empty());
}
