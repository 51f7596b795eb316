//! `moat grant ssh` and `moat run --grant ssh:HOST`, as root, against real
//! OpenSSH: two `sshd`s in a network (and mount) namespace this test makes,
//! on test addresses (10.77.0.2 git.test, 10.77.0.3 other.test, each with
//! its own host key), reached from the host's loopback through forwarders
//! into that namespace and from the sandbox by their names through
//! `MOAT_RESOLVE`; a real `ssh-agent` holding two keys; the real `ssh`,
//! `ssh-add` and `git` inside, over nft and eBPF. Nothing tries the
//! internet, and the host's network is not touched: the addresses live on
//! the test namespace's loopback.
//!
//! other.test accepts both keys, so only Moat's binding of a signature to
//! the host key the proxy saw keeps key 1 (granted for git.test) from
//! logging in there.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

use common::*;

const GIT_ADDR: &str = "10.77.0.2:22";
const OTHER_ADDR: &str = "10.77.0.3:22";

/// A process alone in new network and mount namespaces; killed on drop,
/// which ends both (and every sshd started in them with it, see `Sshd`).
struct Holder {
    child: Child,
    pid: u32,
}

impl Holder {
    fn spawn() -> Self {
        let child = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--propagation",
                "private",
                "sleep",
                "600",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let pid = child.id();
        let host = ns_inode("/proc/self/ns/net");
        wait_for(5, "the holder's namespaces", || {
            ns_inode(&format!("/proc/{pid}/ns/net")) != host
        });
        Self { child, pid }
    }

    /// `nsenter` into both namespaces.
    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.pid))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.pid))
            .arg("--");
        c
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects inside the holder's network namespace: a thread that entered
/// it dials for the forwarders (a socket stays in the namespace it was
/// made in).
fn dialer(pid: u32) -> mpsc::Sender<(SocketAddr, mpsc::Sender<std::io::Result<TcpStream>>)> {
    let (tx, rx) = mpsc::channel::<(SocketAddr, mpsc::Sender<std::io::Result<TcpStream>>)>();
    let ns = fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    std::thread::spawn(move || {
        use std::os::fd::AsFd;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        for (addr, reply) in rx {
            let _ = reply.send(TcpStream::connect_timeout(
                &addr,
                std::time::Duration::from_secs(5),
            ));
        }
    });
    tx
}

/// 127.0.0.1:PORT on the host → `to` in the test namespace, for as long as
/// the test process lives.
fn forward(
    dial: mpsc::Sender<(SocketAddr, mpsc::Sender<std::io::Result<TcpStream>>)>,
    to: &str,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let to: SocketAddr = to.parse().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (reply, got) = mpsc::channel();
            if dial.send((to, reply)).is_err() {
                return;
            }
            let Ok(Ok(server)) = got.recv() else {
                continue;
            };
            let pipe = |mut a: TcpStream, mut b: TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(server, client);
        }
    });
    port
}

/// A user key: its private file (outside every workspace) and public line.
struct Key {
    path: PathBuf,
    public: String,
}

impl Key {
    fn make(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("{name}@moat-test"))
            .arg("-f")
            .arg(&path)
            .output()
            .expect("ssh-keygen (openssh-client)");
        assert!(out.status.success(), "{}", stderr(&out));
        let public = fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        Key { path, public }
    }

    fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.path.with_extension("pub"))
            .output()
            .unwrap();
        stdout(&out).split_whitespace().nth(1).unwrap().to_owned()
    }

    /// The base64 body's start, to look for the private key's bytes.
    fn private_marker(&self) -> String {
        let text = fs::read_to_string(&self.path).unwrap();
        // The fifth base64 line holds the private seed (the first ones are
        // the same header in every key, then the public key).
        text.lines().nth(4).unwrap()[..40].to_owned()
    }
}

/// Everything the SSH tests need; dropped in reverse (sshds, agent, holder).
struct World {
    // Dropped first: the servers, their namespace, the agent.
    _sshds: Vec<Kill>,
    _holder: Holder,
    _agent: Kill,
    env: Env,
    /// The test's own files: keys, host keys, sshd configs, the repository.
    dir: tempfile::TempDir,
    key1: Key,
    key2: Key,
    agent_sock: PathBuf,
    resolve: String,
    /// `git.test ssh-ed25519 …` and `other.test ssh-ed25519 …`.
    known_hosts: String,
}

/// A child killed and reaped on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `ssh-agent` listening at `sock`.
fn start_agent(sock: &Path) -> Kill {
    let agent = Kill(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client)"),
    );
    wait_for(5, "ssh-agent's socket", || {
        std::os::unix::net::UnixStream::connect(sock).is_ok()
    });
    agent
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

impl World {
    fn start() -> Self {
        assert!(is_root(), "vm-tests run as root");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key1 = Key::make(d, "key1");
        let key2 = Key::make(d, "key2");

        // The agent, with both keys.
        let agent_sock = d.join("agent.sock");
        let agent = start_agent(&agent_sock);
        for k in [&key1, &key2] {
            sh(Command::new("ssh-add")
                .arg(&k.path)
                .env("SSH_AUTH_SOCK", &agent_sock));
        }

        // A bare repository in git's home, served by git.test.
        let git_home = d.join("git-home");
        fs::create_dir_all(&git_home).unwrap();
        let seed = d.join("seed");
        sh(Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .arg(&seed));
        fs::write(seed.join("README"), "cloned through moat's ssh agent\n").unwrap();
        sh(Command::new("git")
            .arg("-C")
            .arg(&seed)
            .args(["add", "README"]));
        sh(Command::new("git").arg("-C").arg(&seed).args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "seed",
        ]));
        sh(Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&seed)
            .arg(git_home.join("repo.git")));

        // Two servers, each with its own host key; other.test accepts both keys.
        let mut known_hosts = String::new();
        let mut configs = Vec::new();
        for (name, addr, keys) in [
            ("git.test", GIT_ADDR, vec![&key1]),
            ("other.test", OTHER_ADDR, vec![&key1, &key2]),
        ] {
            let host_key = d.join(format!("{name}-host"));
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&host_key));
            let public = fs::read_to_string(d.join(format!("{name}-host.pub"))).unwrap();
            let public: Vec<&str> = public.split_whitespace().collect();
            known_hosts.push_str(&format!("{name} {} {}\n", public[0], public[1]));
            let authorized = d.join(format!("{name}-authorized"));
            let lines: Vec<&str> = keys.iter().map(|k| k.public.as_str()).collect();
            fs::write(&authorized, lines.join("\n") + "\n").unwrap();
            let config = d.join(format!("{name}-sshd.conf"));
            fs::write(
                &config,
                format!(
                    "ListenAddress {addr}\nHostKey {}\nAuthorizedKeysFile {}\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nUsePAM no\nStrictModes no\n\
                     PermitRootLogin prohibit-password\nPidFile none\nLogLevel VERBOSE\n",
                    host_key.display(),
                    authorized.display(),
                ),
            )
            .unwrap();
            configs.push((name, config));
        }

        // The namespace: the addresses on its loopback, a `git` user (uid 0,
        // home = git-home) and sshd's privilege-separation directory, all in
        // its own mount namespace.
        let holder = Holder::spawn();
        let passwd = d.join("passwd");
        let mut users = fs::read_to_string("/etc/passwd").unwrap();
        users.push_str(&format!("git:x:0:0:git:{}:/bin/sh\n", git_home.display()));
        fs::write(&passwd, users).unwrap();
        sh(holder.enter().args([
            "sh",
            "-ec",
            &format!(
                "ip link set lo up; ip addr add 10.77.0.2/32 dev lo; ip addr add 10.77.0.3/32 dev lo; \
                 mount --bind {} /etc/passwd; mount -t tmpfs -o mode=755 tmpfs /run; \
                 mkdir -m 755 /run/sshd",
                passwd.display()
            ),
        ]));
        let mut sshds = Vec::new();
        for (name, config) in &configs {
            let log = fs::File::create(d.join(format!("{name}-sshd.log"))).unwrap();
            sshds.push(Kill(
                holder
                    .enter()
                    .arg("/usr/sbin/sshd")
                    .args(["-D", "-e", "-f"])
                    .arg(config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("sshd (openssh-server)"),
            ));
        }
        let dial = dialer(holder.pid);
        let mut resolve = Vec::new();
        for (name, addr) in [("git.test", GIT_ADDR), ("other.test", OTHER_ADDR)] {
            let port = forward(dial.clone(), addr);
            wait_for(10, &format!("{name}'s sshd"), || {
                let mut s = match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => s,
                    Err(_) => return false,
                };
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut banner = [0u8; 4];
                s.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
            });
            resolve.push(format!("{name}:22=127.0.0.1:{port}"));
        }
        World {
            env: Env::new(),
            dir,
            key1,
            key2,
            agent_sock,
            _agent: agent,
            _sshds: sshds,
            _holder: holder,
            resolve: resolve.join(","),
            known_hosts,
        }
    }

    fn vars(&self) -> Vec<(&str, String)> {
        vec![
            ("SSH_AUTH_SOCK", self.agent_sock.display().to_string()),
            ("MOAT_RESOLVE", self.resolve.clone()),
            ("MOAT_KEY_BACKEND", "file".into()),
        ]
    }

    fn moat(&self, args: &[&str]) -> Output {
        self.env
            .cmd()
            .envs(self.vars())
            .args(args)
            .output()
            .unwrap()
    }

    fn grant(&self, host: &str, key: &Key) {
        let print = key.fingerprint();
        let out = self.moat(&["grant", "ssh", "--host", host, "--key", &print]);
        ok(&out);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("Using key: {}@moat-test ({print})", key_name(key))),
            "{err}"
        );
        assert!(
            stdout(&out).contains(&format!("Granted SSH access to {host}")),
            "{}",
            stdout(&out)
        );
    }

    /// A workspace with `ssh_config` and `known_hosts`, as `inside` (its
    /// path in the sandbox) names them.
    fn workspace(&self, name: &str, inside: Option<&str>) -> PathBuf {
        let ws = self.env.dir.path().join(name);
        fs::create_dir_all(&ws).unwrap();
        let at = inside.map_or_else(|| ws.display().to_string(), str::to_owned);
        fs::write(ws.join("known_hosts"), &self.known_hosts).unwrap();
        fs::write(
            ws.join("ssh_config"),
            format!(
                "Host *\n  UserKnownHostsFile {at}/known_hosts\n  StrictHostKeyChecking yes\n  \
                 BatchMode yes\n  ConnectTimeout 10\n"
            ),
        )
        .unwrap();
        ws
    }

    fn run(&self, grants: &[&str], how: &[&str], ws: &Path, script: &str) -> Output {
        let mut args = vec!["run"];
        for g in grants {
            args.extend(["--grant", g]);
        }
        args.extend_from_slice(how);
        let ws = ws.display().to_string();
        args.extend([ws.as_str(), "--", "sh", "-c", script]);
        self.moat(&args)
    }

    fn sshd_log(&self) -> String {
        ["git.test", "other.test"]
            .map(|n| {
                fs::read_to_string(self.dir.path().join(format!("{n}-sshd.log")))
                    .unwrap_or_default()
            })
            .join("\n")
    }

    /// Every `ssh` event of this test's runs.
    fn ssh_events(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        for id in self.env.run_ids() {
            let path = self.env.home().join("runs").join(id).join("events.jsonl");
            for l in fs::read_to_string(path).unwrap_or_default().lines() {
                let e: serde_json::Value = serde_json::from_str(l).unwrap();
                if e["event"] == "ssh" {
                    all.push(e);
                }
            }
        }
        all
    }
}

fn key_name(k: &Key) -> String {
    k.path.file_name().unwrap().to_string_lossy().into_owned()
}

/// What the sandbox does: logs in, clones, lists, tries to change the
/// agent, looks for the private keys, and tries other.test with key 1.
fn script(w: &World, cfg: &str) -> String {
    let ssh = format!("ssh -F {cfg}/ssh_config");
    let unreadable: Vec<String> = [&w.key1, &w.key2]
        .iter()
        .map(|k| {
            format!(
                "if cat {p} >/dev/null 2>&1; then echo READABLE {p}; fi; \
                 if grep -rqs -F '{m}' /tmp /etc {cfg} 2>/dev/null; then echo FOUND-KEY-BYTES; fi",
                p = k.path.display(),
                m = k.private_marker()
            )
        })
        .collect();
    format!(
        "set -u\n\
         echo \"sock=$SSH_AUTH_SOCK\"\n\
         echo \"socket-mode=$(stat -c %a:%u \"$SSH_AUTH_SOCK\") me=600:$(id -u)\"\n\
         {ssh} git@git.test 'echo login-ok' || echo login-failed\n\
         GIT_SSH_COMMAND='{ssh}' git clone -q git@git.test:repo.git clone && cat clone/README || echo clone-failed\n\
         echo listed; ssh-add -L; echo end-listed\n\
         {ssh} git@other.test 'echo OTHER-LOGGED-IN' 2>/dev/null || echo other-refused\n\
         ssh-keygen -q -t ed25519 -N '' -f /tmp/throwaway && ssh-add /tmp/throwaway 2>/dev/null && echo ADD-ALLOWED || echo add-refused\n\
         ssh-add -D 2>/dev/null && echo DELETE-ALLOWED || echo delete-refused\n\
         printf 'pw\\npw\\n' | ssh-add -x 2>/dev/null && echo LOCK-ALLOWED || echo lock-refused\n\
         ls -a ~/.ssh 2>/dev/null | grep -q id_ && echo HOME-KEYS\n\
         SSH_AUTH_SOCK={host_sock} ssh-add -l >/dev/null 2>&1 && echo HOST-AGENT-REACHABLE\n\
         {unreadable}\n",
        host_sock = w.agent_sock.display(),
        unreadable = unreadable.join("\n"),
    )
}

fn check_run(w: &World, out: &Output, sock: &str) {
    let text = stdout(out);
    let all = format!("{text}\nstderr: {}\nsshd:\n{}", stderr(out), w.sshd_log());
    assert!(out.status.success(), "{all}");
    assert!(text.contains(&format!("sock={sock}")), "{all}");
    // Only the command's user may connect.
    let modes = text
        .lines()
        .find_map(|l| l.strip_prefix("socket-mode="))
        .unwrap_or_default();
    let (mode, me) = modes.split_once(" me=").unwrap_or_default();
    assert!(
        !mode.is_empty() && mode == me,
        "socket mode and owner: {all}"
    );
    assert!(text.contains("login-ok"), "ssh git.test: {all}");
    assert!(
        text.contains("cloned through moat's ssh agent"),
        "git clone: {all}"
    );
    let listed = text
        .split("listed\n")
        .nth(1)
        .and_then(|t| t.split("end-listed").next())
        .unwrap_or_default();
    assert!(listed.contains(&w.key1.public[..80]), "key 1 listed: {all}");
    assert!(
        !listed.contains(&w.key2.public[..80]),
        "key 2 not listed: {all}"
    );
    for (yes, no) in [
        ("other-refused", "OTHER-LOGGED-IN"),
        ("add-refused", "ADD-ALLOWED"),
        ("delete-refused", "DELETE-ALLOWED"),
        ("lock-refused", "LOCK-ALLOWED"),
    ] {
        assert!(text.contains(yes) && !text.contains(no), "{yes}: {all}");
    }
    for leak in [
        "READABLE",
        "FOUND-KEY-BYTES",
        "HOME-KEYS",
        "HOST-AGENT-REACHABLE",
    ] {
        assert!(!text.contains(leak), "{leak}: {all}");
    }
    // The agent still holds both keys: nothing inside changed it.
    let host_list = Command::new("ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", &w.agent_sock)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&host_list).lines().count(),
        2,
        "{}",
        stdout(&host_list)
    );
}

fn check_events(w: &World) {
    let events = w.ssh_events();
    let print1 = w.key1.fingerprint();
    let bound_ok = events.iter().any(|e| {
        e["op"] == "sign"
            && e["action"] == "allow"
            && e["key"] == print1.as_str()
            && e["binding"] == "bound"
            && e["host"] == "git.test"
    });
    assert!(bound_ok, "a bound signature for git.test: {events:#?}");
    let refused_other = events.iter().any(|e| {
        e["op"] == "sign"
            && e["action"] == "refuse"
            && e["key"] == print1.as_str()
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("other.test"))
    });
    assert!(refused_other, "key 1 refused for other.test: {events:#?}");
    for op in ["add", "remove", "lock"] {
        assert!(
            events
                .iter()
                .any(|e| e["op"] == op && e["action"] == "refuse"),
            "{op} refused: {events:#?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["op"] == "host-key" && e["host"] == "git.test"),
        "{events:#?}"
    );
}

#[test]
fn ssh_grant_over_nft_and_ebpf_signs_only_for_the_granted_host() {
    let w = World::start();
    w.grant("git.test", &w.key1);
    w.grant("other.test", &w.key2);
    let list = w.moat(&["grant", "list"]);
    ok(&list);
    assert!(stdout(&list).contains("ssh:git.test"), "{}", stdout(&list));
    let ws = w.workspace("ws", None);
    let cfg = ws.display().to_string();
    for redirect in ["nft", "ebpf"] {
        let out = w.run(
            &["ssh:git.test"],
            &["--redirect", redirect],
            &ws,
            &script(&w, &cfg),
        );
        check_run(&w, &out, "/tmp/.moat/ssh/agent.sock");
        let _ = fs::remove_dir_all(ws.join("clone"));
    }
    check_events(&w);
}

/// Rootless: Moat as `nobody` (its own agent, keys, MOAT_HOME and HOME),
/// the init binding the socket inside its user namespace.
#[test]
fn ssh_grant_rootless_as_nobody() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::start();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let own = |p: &Path| std::os::unix::fs::chown(p, Some(NOBODY_ID), Some(NOBODY_ID)).unwrap();
    let (home, moat_home, ws) = (
        dir.path().join("home"),
        dir.path().join("moat"),
        dir.path().join("ws"),
    );
    for d in [&home, &moat_home, &ws] {
        fs::create_dir_all(d).unwrap();
        own(d);
    }
    let key = home.join("id_ed25519");
    fs::copy(&w.key1.path, &key).unwrap();
    own(&key);
    let sock = home.join("agent.sock");
    let _agent = Kill(
        setpriv_nobody()
            .arg("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(5, "nobody's ssh-agent", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    let nobody = |args: &[&str]| {
        let mut c = setpriv_nobody();
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("MOAT_HOME", &moat_home)
            .env("MOAT_KEY_BACKEND", "file")
            .env("MOAT_RESOLVE", &w.resolve)
            .env("SSH_AUTH_SOCK", &sock)
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    ok(&nobody(&["ssh-add", key.to_str().unwrap()]));
    ok(&nobody(&[MOAT, "grant", "ssh", "--host", "git.test"]));
    fs::write(ws.join("known_hosts"), &w.known_hosts).unwrap();
    let at = ws.display();
    fs::write(
        ws.join("ssh_config"),
        format!(
            "Host *\n  UserKnownHostsFile {at}/known_hosts\n  StrictHostKeyChecking yes\n  \
             BatchMode yes\n  ConnectTimeout 10\n"
        ),
    )
    .unwrap();
    let script = format!(
        "echo \"sock=$SSH_AUTH_SOCK\"; ssh -F {at}/ssh_config git@git.test 'echo login-ok' || echo login-failed; \
         ssh -F {at}/ssh_config git@other.test 'echo OTHER-LOGGED-IN' 2>/dev/null || echo other-refused"
    );
    let out = nobody(&[
        MOAT,
        "run",
        "--network-mode",
        "transparent",
        "--grant",
        "ssh:git.test",
        ws.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let text = stdout(&out);
    let all = format!("{text}\nstderr: {}\nsshd:\n{}", stderr(&out), w.sshd_log());
    assert!(out.status.success(), "{all}");
    assert!(text.contains("sock=/tmp/.moat/ssh/agent.sock"), "{all}");
    assert!(
        text.contains("login-ok") && !text.contains("login-failed"),
        "{all}"
    );
    assert!(
        text.contains("other-refused") && !text.contains("OTHER-LOGGED-IN"),
        "{all}"
    );
}

/// A server that says its banner and hangs up before the key exchange: the
/// client (whose connection Moat watches for the host key) sees the close
/// at once rather than waiting on a half-open connection.
#[test]
fn a_server_hanging_up_before_its_key_exchange_is_seen_closing() {
    let mut w = World::start();
    w.grant("git.test", &w.key1);
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write as _;
        for mut c in dead.incoming().flatten() {
            let _ = c.write_all(b"SSH-2.0-HangsUp\r\n");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    w.resolve
        .push_str(&format!(",dead.test:22=127.0.0.1:{port}"));
    let ws = w.workspace("ws", None);
    let cfg = ws.display().to_string();
    let out = w.run(
        &["ssh:git.test"],
        &["--redirect", "nft"],
        &ws,
        &format!("timeout 30 ssh -F {cfg}/ssh_config git@dead.test true; echo dead-rc=$?"),
    );
    let text = stdout(&out);
    assert!(
        text.contains("dead-rc=255"),
        "ssh failed at once, not timed out (124): {text}\n{}",
        stderr(&out)
    );
}

/// The same in a container (the test image carries ssh, ssh-add and git;
/// the container's user gets a passwd entry, which ssh needs).
#[test]
fn ssh_grant_in_docker_signs_only_for_the_granted_host() {
    let w = World::start();
    w.grant("git.test", &w.key1);
    let ws = w.workspace("ws-docker", Some("/workspace"));
    fs::write(
        ws.join("moat.yaml"),
        format!("runtime: docker\nimage: {TEST_IMAGE}\n"),
    )
    .unwrap();
    let host = docker_host();
    let mut args = vec!["run", "--grant", "ssh:git.test", "--runtime", "docker"];
    let ws_arg = ws.display().to_string();
    let script = script(&w, "/workspace");
    args.extend([ws_arg.as_str(), "--", "sh", "-c", &script]);
    let out = w
        .env
        .cmd()
        .envs(w.vars())
        .env("DOCKER_HOST", host)
        .args(&args)
        .output()
        .unwrap();
    check_run(&w, &out, "/.moat/ssh/sock");
    check_events(&w);
}

/// A crafted agent client (python, the system's `cryptography`) sends
/// session-binds ssh never would: to a host key no connection was served,
/// and one whose signature is not the host's. Neither gets key 1 a
/// signature; a genuine bind to git.test's key (the probe holds that host
/// key here) and an unbound request do, so the probe itself works.
#[test]
fn a_session_bind_to_an_unexpected_host_key_is_refused() {
    let w = World::start();
    w.grant("git.test", &w.key1);
    let ws = w.workspace("ws", None);
    let cfg = ws.display().to_string();
    fs::copy(w.dir.path().join("git.test-host"), ws.join("git-host-key")).unwrap();
    fs::write(ws.join("probe.py"), PROBE).unwrap();
    let out = w.run(
        &["ssh:git.test"],
        &["--redirect", "nft"],
        &ws,
        &format!(
            "ssh -F {cfg}/ssh_config git@git.test true || echo login-failed\n\
             python3 {cfg}/probe.py {cfg}/git-host-key"
        ),
    );
    let text = stdout(&out);
    let all = format!("{text}\n{}", stderr(&out));
    assert!(
        out.status.success() && !text.contains("login-failed"),
        "{all}"
    );
    for line in [
        "unseen bind=ok sign=refused",
        "forged bind=refused sign=refused",
        "genuine bind=ok sign=ok",
        "wrong-session bind=ok sign=refused",
        "not-a-login bind=none sign=refused",
        "unbound bind=none sign=ok",
    ] {
        assert!(text.contains(line), "{line}: {all}");
    }
    let events = w.ssh_events();
    assert!(
        events
            .iter()
            .any(|e| e["binding"] == "unbound" && e["action"] == "allow"),
        "unbound signatures are recorded as such: {events:#?}"
    );
}

const PROBE: &str = r#"
import os, socket, struct, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

def s(b): return struct.pack(">I", len(b)) + b
def u32(b, i): return struct.unpack(">I", b[i:i+4])[0], i + 4
def string(b, i):
    n, i = u32(b, i)
    return b[i:i+n], i + n

def connect():
    c = socket.socket(socket.AF_UNIX)
    c.connect(os.environ["SSH_AUTH_SOCK"])
    return c

def call(c, kind, body):
    m = bytes([kind]) + body
    c.sendall(struct.pack(">I", len(m)) + m)
    n = struct.unpack(">I", c.recv(4, socket.MSG_WAITALL))[0]
    return c.recv(n, socket.MSG_WAITALL)

def blob(priv):
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return s(b"ssh-ed25519") + s(raw)

def bind(c, host_blob, sid, signer):
    sig = s(b"ssh-ed25519") + s(signer.sign(sid))
    ext = s(b"session-bind@openssh.com") + s(host_blob) + s(sid) + s(sig) + b"\x00"
    return "ok" if call(c, 27, ext)[0] == 6 else "refused"

def login(sid, key):
    return (s(sid) + b"\x32" + s(b"git") + s(b"ssh-connection") + s(b"publickey")
            + b"\x01" + s(b"ssh-ed25519") + s(key))

def sign(c, key, data):
    reply = call(c, 13, s(key) + s(data) + struct.pack(">I", 0))
    return "ok" if reply[0] == 14 else "refused"

c = connect()
ids = call(c, 11, b"")
assert ids[0] == 12, ids
count, i = u32(ids, 1)
assert count == 1, count
key, i = string(ids, i)
c.close()

git_host = serialization.load_ssh_private_key(open(sys.argv[1], "rb").read(), None)
cases = [
    ("unseen", lambda: (lambda k: (blob(k), b"S1", k))(Ed25519PrivateKey.generate()), b"S1"),
    ("forged", lambda: (blob(git_host), b"S2", Ed25519PrivateKey.generate()), b"S2"),
    ("genuine", lambda: (blob(git_host), b"S3", git_host), b"S3"),
    ("wrong-session", lambda: (blob(git_host), b"S4", git_host), b"S4-other"),
]
for name, make, signed_sid in cases:
    c = connect()
    host_blob, sid, signer = make()
    b = bind(c, host_blob, sid, signer)
    print(f"{name} bind={b} sign={sign(c, key, login(signed_sid, key))}")
    c.close()
c = connect()
print(f"not-a-login bind=none sign={sign(c, key, b'SSHSIG' + s(b'file') + s(b'data'))}")
c.close()
c = connect()
print(f"unbound bind=none sign={sign(c, key, login(b'S5', key))}")
c.close()
"#;

#[test]
fn grant_errors_say_what_to_do() {
    let env = Env::new();
    let no_agent = env.run(&["grant", "ssh", "--host", "git.test"], &[]);
    let err = fails(&no_agent);
    assert!(
        err.contains("SSH_AUTH_SOCK is not set") && err.contains("ssh-add"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _agent = start_agent(&sock);
    let sock = sock.display().to_string();
    let empty = env.run(
        &["grant", "ssh", "--host", "git.test"],
        &[("SSH_AUTH_SOCK", &sock)],
    );
    let err = fails(&empty);
    assert!(
        err.contains("holds no keys") && err.contains("ssh-add"),
        "{err}"
    );
    let k1 = Key::make(dir.path(), "key1");
    let k2 = Key::make(dir.path(), "key2");
    for k in [&k1, &k2] {
        sh(Command::new("ssh-add")
            .arg(&k.path)
            .env("SSH_AUTH_SOCK", &sock));
    }
    let several = env.run(
        &["grant", "ssh", "--host", "git.test"],
        &[("SSH_AUTH_SOCK", &sock)],
    );
    let err = fails(&several);
    assert!(
        err.contains("--key") && err.contains(&k2.fingerprint()),
        "{err}"
    );
    let unknown = env.run(
        &[
            "grant",
            "ssh",
            "--host",
            "git.test",
            "--key",
            "nobody@nowhere",
        ],
        &[("SSH_AUTH_SOCK", &sock)],
    );
    assert!(fails(&unknown).contains("no key in your SSH agent matches"));
    let by_comment = env.run(
        &[
            "grant",
            "ssh",
            "--host",
            "git.test",
            "--key",
            "key2@moat-test",
        ],
        &[("SSH_AUTH_SOCK", &sock)],
    );
    ok(&by_comment);
    // Only the public key is stored.
    let shown = env.run(&["grant", "show", "ssh:git.test", "--reveal"], &[]);
    ok(&shown);
    assert!(
        stdout(&shown).contains(&k2.public[..60]),
        "{}",
        stdout(&shown)
    );
    assert!(
        !stdout(&shown).contains("PRIVATE KEY"),
        "{}",
        stdout(&shown)
    );
    // A run without the agent says so before anything starts.
    let ws = env.dir.path().join("ws");
    fs::create_dir_all(&ws).unwrap();
    let run_true = |envs: &[(&str, &str)]| {
        let ws = ws.to_str().unwrap();
        env.run(&["run", "--grant", "ssh:git.test", ws, "--", "true"], envs)
    };
    let run = run_true(&[]);
    assert_eq!(run.status.code(), Some(125), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("SSH_AUTH_SOCK is not set"),
        "{}",
        stderr(&run)
    );
    // A granted key missing from the agent: the run starts, and says so.
    sh(Command::new("ssh-add")
        .arg("-d")
        .arg(k2.path.with_extension("pub"))
        .env("SSH_AUTH_SOCK", &sock));
    let missing = run_true(&[("SSH_AUTH_SOCK", &sock)]);
    ok(&missing);
    assert!(
        stderr(&missing).contains(&format!(
            "the key granted for git.test ({}) is not in your SSH agent",
            k2.fingerprint()
        )),
        "{}",
        stderr(&missing)
    );
    ok(&env.run(&["revoke", "ssh:git.test"], &[]));
    assert!(!stdout(&env.run(&["grant", "list"], &[])).contains("ssh:git.test"));
}
