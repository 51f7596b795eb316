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

impl Env {
    /// `moat list --json`'s entry for run `id` (Null if there is none).
    pub fn run_info(&self, id: &str) -> serde_json::Value {
        let out = self.run(&["list", "--json"], &[]);
        let list: serde_json::Value = serde_json::from_slice(&ok(&out).stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }

    /// The ids of the runs so far.
    pub fn run_ids(&self) -> std::collections::BTreeSet<String> {
        match std::fs::read_dir(self.home().join("runs")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Default::default(),
        }
    }
}

/// Poll `cond` every 50 ms for up to `secs` seconds; panics with `what`.
#[track_caller]
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed().as_secs() < secs, "{what} (waited {secs}s)");
        std::thread::sleep(std::time::Duration::from_millis(50));
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

/// Listeners on the *host* that escape tests aim at, so that even a broken
/// sandbox (say, one running in the host's network namespace) sends nothing
/// off this machine: a UDP socket and a TCP listener on all IPv4 addresses
/// and a TCP listener on `[::1]`. From inside a working sandbox, `127.0.0.1`
/// and `::1` are the sandbox's own loopback and the host's address is
/// redirected to Moat's proxy, so none of them may ever see a packet.
pub struct Tripwire {
    pub udp: std::net::UdpSocket,
    pub tcp: std::net::TcpListener,
    pub tcp6: std::net::TcpListener,
    /// One of the host's own non-loopback IPv4 addresses, if it has one.
    pub host_ip: Option<std::net::Ipv4Addr>,
}

impl Tripwire {
    pub fn new() -> Self {
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        let tcp = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let tcp6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        tcp6.set_nonblocking(true).unwrap();
        let out = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "scope", "global"])
            .output()
            .unwrap();
        let host_ip = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next()?.parse().ok());
        Self {
            udp,
            tcp,
            tcp6,
            host_ip,
        }
    }

    pub fn udp_port(&self) -> u16 {
        self.udp.local_addr().unwrap().port()
    }

    pub fn tcp_port(&self) -> u16 {
        self.tcp.local_addr().unwrap().port()
    }

    pub fn tcp6_port(&self) -> u16 {
        self.tcp6.local_addr().unwrap().port()
    }

    /// Panics if anything reached one of the listeners.
    pub fn assert_untouched(&self) {
        let mut buf = [0u8; 64];
        assert!(
            self.udp.recv_from(&mut buf).is_err(),
            "a UDP packet escaped the sandbox"
        );
        assert!(
            self.tcp.accept().is_err(),
            "a TCP connection escaped the sandbox"
        );
        assert!(
            self.tcp6.accept().is_err(),
            "an IPv6 connection escaped the sandbox"
        );
    }
}

/// The first line of `text` that starts with `key` ("" if none).
pub fn line(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .to_owned()
}

/// A shell snippet for inside a sandbox: python3 tries the escapes every
/// sandbox must stop, aimed at `trip` (UDP to 127.0.0.1, TCP to `[::1]`, a
/// raw socket), then runs `more` (further Python, same `socket` and `time`
/// imports). Prints `udp:`, `ipv6:` and `raw:` lines for
/// [`assert_escapes_fail`].
pub fn escape_probe(trip: &Tripwire, more: &str) -> String {
    format!(
        r#"python3 - <<'PY'
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("127.0.0.1", {udp})); print("udp: sent")
except OSError as e:
    print("udp: blocked", e.errno)
t = time.time()
try:
    socket.create_connection(("::1", {tcp6}), timeout=3); print("ipv6: connected")
except OSError:
    print("ipv6: failed %.2f" % (time.time() - t))
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("raw: opened")
except OSError:
    print("raw: refused")
{more}
PY
"#,
        udp = trip.udp_port(),
        tcp6 = trip.tcp6_port(),
    )
}

/// What [`escape_probe`] printed shows every escape failed: UDP refused,
/// IPv6 failing fast (unroutable, not a timeout), no raw socket.
pub fn assert_escapes_fail(text: &str) {
    assert!(line(text, "udp:").starts_with("udp: blocked"), "{text}");
    let v6 = line(text, "ipv6:");
    let secs: f64 = v6.rsplit(' ').next().unwrap().parse().unwrap_or(99.0);
    assert!(v6.starts_with("ipv6: failed") && secs < 1.0, "{text}");
    assert_eq!(line(text, "raw:"), "raw: refused", "{text}");
}

/// The uid and gid of `nobody`, which vm-tests use as an unprivileged user.
pub const NOBODY_ID: u32 = 65534;

/// `setpriv` that runs what follows as `nobody`, with no groups (root only):
/// add the program and its arguments.
pub fn setpriv_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY_ID}"),
        &format!("--regid={NOBODY_ID}"),
        "--clear-groups",
        "--",
    ]);
    c
}

/// Is this test process root? (vm-tests assert it up front.)
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The host namespace's nft ruleset, links and routes: a run must leave
/// all three exactly as it found them.
pub fn host_state() -> (String, String, String) {
    (
        host_cmd(&["nft", "list", "ruleset"]),
        host_cmd(&["ip", "-o", "link"]),
        host_cmd(&["ip", "route"]),
    )
}

/// `args` run on the host; its stdout (a panic with its stderr if it fails).
pub fn host_cmd(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// The host's mount table (this process's mount namespace), propagation
/// included: a run must neither add a mount here nor change one's sharing.
pub fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// `curl` `url` until it answers with a body (at most `secs` seconds); the body.
pub fn get_until_answered(url: &str, secs: u64) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "2", url])
            .output()
            .unwrap();
        if out.status.success() && !out.stdout.is_empty() {
            return stdout(&out);
        }
        assert!(
            start.elapsed().as_secs() < secs,
            "{url} never answered: {}",
            stderr(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The URL `moat proxy` (spawned with stdout piped) prints first,
/// `http://moat:<password>@127.0.0.1:<port>`; a panic with the proxy's log
/// (`log`) if it printed something else.
pub fn proxy_url(proxy: &mut std::process::Child, log: &Path) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(proxy.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim_end().rsplit(':').next().unwrap_or_default();
    assert!(
        line.starts_with("http://moat:") && port.parse::<u16>().is_ok(),
        "moat proxy did not start: {line:?}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    line.trim().to_owned()
}

/// Whether a process whose command line contains `pattern` runs (`pgrep -f`).
pub fn running(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `child`'s exit status, or a panic naming `what` if it has not exited
/// within `secs` (the child is killed first, so a failing test never hangs).
pub fn wait_within(
    child: &mut std::process::Child,
    secs: u64,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `cmd` (built with [`Env::cmd`]: a cleared environment) with a
/// pseudo-terminal as its stdin, stdout and stderr, through util-linux
/// `script`; what the terminal showed comes back as stdout.
pub fn in_pty(cmd: &Command) -> Output {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let mut line = String::from("exec env -i");
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            line.push_str(&format!(" {}={}", k.to_string_lossy(), quote(v)));
        }
    }
    line.push(' ');
    line.push_str(&quote(cmd.get_program()));
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(a));
    }
    Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux script")
}

/// A process alone in a new network namespace (`unshare --net sleep 300`),
/// for tests that plumb or load into a namespace of their own; killed and
/// reaped on drop, which (with every handle and socket closed) ends the
/// namespace.
pub struct NetnsHolder {
    child: std::process::Child,
    pub ns_path: String,
}

impl NetnsHolder {
    pub fn spawn() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .expect("run `unshare --net sleep 300` (util-linux)");
        let holder = Self {
            ns_path: format!("/proc/{}/ns/net", child.id()),
            child,
        };
        // unshare(2) happens before exec: wait until the namespace differs.
        let host = ns_inode("/proc/self/ns/net");
        let t = std::time::Instant::now();
        while ns_inode(&holder.ns_path) == host {
            assert!(
                t.elapsed().as_secs() < 5,
                "holder never left the host netns"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        holder
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsFd;
        let ns = std::fs::File::open(&self.ns_path).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the test netns");
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }

    /// `nsenter --net=<ns> -- args…` (stdin: `input`).
    pub fn run(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .arg("--")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsenter (util-linux)");
        if let Some(input) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The inode of a namespace file (`/proc/PID/ns/net`): equal means the same
/// namespace.
pub fn ns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// The image vm-tests run containers from (scripts/test-image.sh).
pub const TEST_IMAGE: &str = "moat-test-base:latest";

/// The repository's root (scripts live there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The socket of the private Docker engine `scripts/test-dockerd.sh` runs.
const PRIVATE_SOCKET: &str = "/run/moat-test-docker.sock";

extern "C" fn stop_private_engine() {
    let _ = Command::new(repo().join("scripts/test-dockerd.sh"))
        .arg("stop")
        .output();
}

/// The engine's address: DOCKER_HOST as given, else the private test engine
/// (started if needed); the test image is made if missing.
pub fn docker_host() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let host = match std::env::var("DOCKER_HOST") {
            Ok(h) => h,
            Err(_) => {
                let running = Path::new(PRIVATE_SOCKET).exists()
                    && Command::new("docker")
                        .env("DOCKER_HOST", format!("unix://{PRIVATE_SOCKET}"))
                        .arg("version")
                        .output()
                        .is_ok_and(|o| o.status.success());
                let out = Command::new(repo().join("scripts/test-dockerd.sh"))
                    .arg("start")
                    .output()
                    .unwrap();
                assert!(out.status.success(), "test-dockerd: {}", stderr(&out));
                if !running {
                    // Started here: stopped when this test binary exits.
                    // SAFETY: registers a plain function with the C runtime.
                    unsafe { nix::libc::atexit(stop_private_engine) };
                }
                stdout(&out)
                    .trim()
                    .strip_prefix("DOCKER_HOST=")
                    .unwrap()
                    .to_owned()
            }
        };
        let out = Command::new(repo().join("scripts/test-image.sh"))
            .env("DOCKER_HOST", &host)
            .output()
            .unwrap();
        assert!(out.status.success(), "test-image: {}", stderr(&out));
        host
    })
    .clone()
}
