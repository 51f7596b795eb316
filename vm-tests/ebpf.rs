//! The eBPF redirector for real: a throwaway network namespace (held by
//! `unshare --net sleep`) with a "proxy" listener and a DNS responder inside
//! it, a run cgroup (`moat::sandbox::cgroup::RunCgroup`) with the redirector
//! attached (`moat::sandbox::bpf::Redirector`), and python clients that join
//! the cgroup before they exec, then enter the namespace.
//!
//! Root only (CI runs it). Traffic goes only to loopback inside the
//! namespace, whose only link is `lo`: the 198.18/10.253/fd00 addresses the
//! clients ask for are rewritten or refused before any packet exists, and
//! would have no route anyway. Nothing is left behind: the cgroup directory
//! is gone and the programs are unloaded after drop, and the host's nftables
//! ruleset and links are unchanged.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{NetnsHolder, host_cmd, host_state, stderr, stdout};
use moat::net::orig_dst::OriginalDst;
use moat::sandbox::bpf::{RedirectConfig, Redirector};
use moat::sandbox::cgroup::{self, ForkTarget, RunCgroup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "vm-tests run as root (they create cgroups and attach BPF programs); \
         CI does; locally: sudo ./scripts/test.sh"
    );
}

/// Capabilities the sandboxed command loses in `moat run`.
const DROPPED_CAPS: &str = "-net_admin,-sys_admin,-bpf,-net_raw,-sys_ptrace,-sys_module";

/// Runs `python3 -c script args…` as a sandboxed command would: it joins the
/// cgroup *before* exec (so its first connect() is already redirected), then
/// enters the namespace. `restricted`: additionally with the cgroup2 mount
/// read-only in a mount namespace of its own, without
/// CAP_NET_ADMIN/SYS_ADMIN/BPF, with no_new_privs, still uid 0 (what a
/// root-run command would have in `moat run`).
fn sandboxed(
    holder: &NetnsHolder,
    cg: &Path,
    restricted: bool,
    script: &str,
    args: &[&str],
) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" || exit 99; shift; exec "$@""#)
        .arg("sh")
        .arg(cg)
        .args(["nsenter", &format!("--net={}", holder.ns_path), "--"]);
    if restricted {
        // What the sandbox's init must do: in its own mount namespace, the
        // cgroup2 mount is read-only, so even uid 0 cannot write its pid
        // into another cgroup's cgroup.procs (a cgroup namespace would only
        // stop that on an `nsdelegate` mount, which hybrid hosts lack).
        let mount = cgroup::cgroup2_mount().unwrap();
        cmd.args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            r#"mount -o remount,bind,ro "$0" || exit 98; exec "$@""#,
        ])
        .arg(mount)
        .args([
            "setpriv",
            "--no-new-privs",
            "--bounding-set",
            DROPPED_CAPS,
            "--",
        ]);
    }
    let o = cmd
        .args(["python3", "-c", script])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    assert_ne!(o.status.code(), Some(99), "could not join the cgroup");
    assert_ne!(o.status.code(), Some(98), "remount: {}", stderr(&o));
    o
}

/// Every check a sandboxed client makes; one line each.
const CLIENT: &str = r#"
import errno, socket
def err(e):
    return errno.errorcode.get(e.errno, str(e.errno))
c = socket.create_connection(("198.18.0.7", 443), timeout=3)
print("TCP", c.makefile().readline().strip(), "PEER %s:%d" % c.getpeername())
c.close()
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x" * 32, ("10.253.0.2", 9999))
    print("UDP SENT")
except OSError as e:
    print("UDP", err(e))
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("10.253.0.2", 443))
    print("UDPCONNECT OK")
except OSError as e:
    print("UDPCONNECT", err(e))
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.settimeout(3)
d.sendto(b"hello", ("10.253.0.2", 53))
r, peer = d.recvfrom(512)
print("DNS", r.decode(), "%s:%d" % peer)
t = socket.create_connection(("10.253.0.2", 53), timeout=3)
print("TCPDNS", t.makefile().readline().strip(), "PEER %s:%d" % t.getpeername())
for name, fam, typ, addr in [
    ("V6", socket.AF_INET6, socket.SOCK_STREAM, ("fd00:253::1", 443)),
    ("MAPPED", socket.AF_INET6, socket.SOCK_STREAM, ("::ffff:198.18.0.7", 443)),
    ("LOOP6", socket.AF_INET6, socket.SOCK_STREAM, ("::1", 443)),
]:
    s = socket.socket(fam, typ)
    s.settimeout(3)
    try:
        s.connect(addr)
        print(name, "CONNECTED")
    except OSError as e:
        print(name, err(e))
try:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.sendto(b"x", ("fd00:253::1", 53))
    print("UDP6 SENT")
except OSError as e:
    print("UDP6", err(e))
"#;

const CLIENT_EXPECTED: &str = "\
TCP ORIG 198.18.0.7:443 PEER 198.18.0.7:443
UDP EPERM
UDPCONNECT EPERM
DNS DNS:hello 10.253.0.2:53
TCPDNS TCPDNS PEER 10.253.0.2:53
V6 EPERM
MAPPED EPERM
LOOP6 EPERM
UDP6 EPERM
";

/// A uid-0 command without the capabilities tries to undo the redirection:
/// leave the cgroup (argv[1]: the cgroup2 mount), detach connect4 with
/// bpftool (argv[2]: the run cgroup, argv[3]: connect4's program id), then
/// connects again.
const ESCAPE: &str = r#"
import errno, os, socket, subprocess, sys
mount, cg, prog = sys.argv[1], sys.argv[2], sys.argv[3]
for target in [mount, os.path.dirname(cg)]:
    try:
        with open(os.path.join(target, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        print("MOVED", target)
    except OSError as e:
        print("STAYED", errno.errorcode.get(e.errno, e.errno))
r = subprocess.run(["bpftool", "cgroup", "detach", cg, "connect4", "id", prog],
                   capture_output=True)
print("DETACH", "OK" if r.returncode == 0 else "FAILED")
c = socket.create_connection(("198.18.0.7", 443), timeout=3)
print("TCP", c.makefile().readline().strip())
"#;

/// The ids of the programs attached to `cg`, by attach type.
fn attached(cg: &Path) -> Vec<(String, u64)> {
    let out = host_cmd(&["bpftool", "-j", "cgroup", "show", &cg.to_string_lossy()]);
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["attach_type"].as_str().unwrap_or("?").to_owned(),
                p["id"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn redirects_refuses_resists_and_leaves_nothing() {
    assert_root();
    let before = host_state();
    let holder = NetnsHolder::spawn();
    assert!(
        Command::new("nsenter")
            .args([
                &format!("--net={}", holder.ns_path),
                "ip",
                "link",
                "set",
                "lo",
                "up"
            ])
            .status()
            .unwrap()
            .success()
    );

    // The "proxy" listener and a DNS responder, inside the namespace.
    let (proxy, dns, dns_tcp) = holder.inside(|| {
        let proxy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        // A fresh namespace: the same TCP port is free but for the proxy's.
        let tcp = TcpListener::bind(udp.local_addr().unwrap()).unwrap();
        (proxy, udp, tcp)
    });
    let proxy_addr = match proxy.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let dns_port = dns.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = dns.recv_from(&mut buf) {
            let mut reply = b"DNS:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = dns.send_to(&reply, peer);
        }
    });

    std::thread::spawn(move || {
        for mut s in dns_tcp.incoming().flatten() {
            let _ = s.write_all(b"TCPDNS\n");
        }
    });

    let run_id = format!("ebpf-test-{}", std::process::id());
    let cg = RunCgroup::create(&run_id).unwrap_or_else(|e| panic!("{e}"));
    let cg_path = cg.path().to_owned();
    assert!(cg_path.ends_with(format!("moat/{run_id}")), "{cg_path:?}");
    let redirector = Redirector::attach(
        &cg,
        RedirectConfig {
            proxy: proxy_addr,
            dns_port,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let orig = redirector.original_dst();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    {
        let _guard = rt.enter();
        proxy.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(proxy).unwrap();
        let orig = orig.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let line = match orig.original_dst(&s) {
                    Ok(a) => format!("ORIG {a}\n"),
                    Err(e) => format!("NOORIG {e}\n"),
                };
                tokio::spawn(async move {
                    let _ = s.write_all(line.as_bytes()).await;
                    let mut buf = [0u8; 512];
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    })
                    .await;
                });
            }
        });
    }

    let programs = attached(&cg_path);
    let types: Vec<&str> = programs.iter().map(|(t, _)| t.as_str()).collect();
    for t in [
        "cgroup_inet4_connect",
        "cgroup_udp4_sendmsg",
        "cgroup_udp4_recvmsg",
        "cgroup_inet4_getpeername",
        "cgroup_inet6_connect",
        "cgroup_udp6_sendmsg",
        "cgroup_sock_ops",
    ] {
        assert!(types.contains(&t), "{t} not attached: {programs:?}");
    }

    // The sandboxed client: the first connect() after exec is redirected,
    // getpeername() shows the original, UDP is DNS only, no IPv6.
    let o = sandboxed(&holder, &cg_path, false, CLIENT, &[]);
    assert_eq!(stdout(&o), CLIENT_EXPECTED, "stderr: {}", stderr(&o));

    // A uid-0 command without the capabilities cannot undo it.
    let connect4 = programs
        .iter()
        .find(|(t, _)| t == "cgroup_inet4_connect")
        .map(|(_, id)| id.to_string())
        .unwrap();
    let mount = cgroup::cgroup2_mount().unwrap();
    let o = sandboxed(
        &holder,
        &cg_path,
        true,
        ESCAPE,
        &[
            &mount.to_string_lossy(),
            &cg_path.to_string_lossy(),
            &connect4,
        ],
    );
    let out = stdout(&o);
    eprintln!("escape attempt: {out}{}", stderr(&o));
    assert!(!out.contains("MOVED"), "left the cgroup: {out}");
    assert_eq!(out.matches("STAYED").count(), 2, "{out}");
    assert!(out.contains("DETACH FAILED"), "{out}");
    assert!(out.contains("TCP ORIG 198.18.0.7:443"), "{out}");
    assert_eq!(attached(&cg_path), programs, "programs changed");

    // Answered entries are deleted; unknown peers say so.
    let unknown = orig.take(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
    assert_eq!(unknown.unwrap_err().kind(), std::io::ErrorKind::NotFound);

    // A process left in the cgroup dies when the cgroup is removed.
    let mut straggler = Command::new("sleep").arg("300").spawn().unwrap();
    cg.add_pid(straggler.id()).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![straggler.id()]);

    // Leave nothing behind.
    drop(redirector);
    cg.remove().unwrap_or_else(|e| panic!("{e}"));
    let status = straggler.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(!cg_path.exists(), "{cg_path:?} still exists");
    for (t, id) in &programs {
        let o = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{t} program {id} still loaded");
    }
    drop(orig);
    drop(rt);
    drop(holder);
    assert_eq!(host_state(), before, "host namespace changed");
}

#[test]
fn sweep_removes_only_what_dead_runs_left() {
    assert_root();
    let mount = cgroup::cgroup2_mount().unwrap();
    let pid = std::process::id();
    // A live run (locked), empty.
    let live = RunCgroup::create(&format!("sweep-live-{pid}")).unwrap();
    // A dead run's leftover: unlocked and empty.
    let stale = mount
        .join(cgroup::PARENT)
        .join(format!("sweep-stale-{pid}"));
    std::fs::create_dir(&stale).unwrap();
    // Unlocked but not empty: not ours to kill.
    let busy = mount.join(cgroup::PARENT).join(format!("sweep-busy-{pid}"));
    std::fs::create_dir(&busy).unwrap();
    let mut sleeper = Command::new("sleep").arg("300").spawn().unwrap();
    std::fs::write(busy.join("cgroup.procs"), sleeper.id().to_string()).unwrap();

    let removed = cgroup::sweep_stale().unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let busy_still_there = busy.exists();
    for _ in 0..100 {
        if std::fs::remove_dir(&busy).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    assert!(removed.contains(&stale), "{removed:?}");
    assert!(!stale.exists());
    assert!(live.path().exists(), "swept a live run's cgroup");
    assert!(!removed.iter().any(|p| p == live.path()));
    assert!(busy_still_there, "swept a cgroup with processes in it");
    let live_path = live.path().to_owned();
    drop(live);
    assert!(!live_path.exists());
    // Creating the same id twice is refused.
    let a = RunCgroup::create(&format!("sweep-twice-{pid}")).unwrap();
    assert!(RunCgroup::create(&format!("sweep-twice-{pid}")).is_err());
    drop(a);
}

/// The sandbox init forks PID 1 straight into the run's cgroup (`clone3`);
/// where `clone3` is refused, the child moves itself in (`join`).
#[test]
fn children_are_born_in_the_run_cgroup() {
    assert_root();
    let id = format!("fork-into-{}", std::process::id());
    let cg = RunCgroup::create(&id).unwrap_or_else(|e| panic!("{e}"));
    let inside = format!("0::/{}/{id}\n", cgroup::PARENT);
    let cgroup_of = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("0::"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    assert_ne!(cgroup_of(std::process::id() as i32), inside);

    let target = ForkTarget::open(cg.path()).unwrap();
    // SAFETY: the child only calls pause(2) and _exit(2), both
    // async-signal-safe, so forking this multi-threaded test is sound.
    match unsafe { target.fork_into() }.unwrap() {
        // SAFETY: plain syscalls with no arguments to check; _exit skips
        // the atexit handlers a forked child must not run.
        nix::unistd::ForkResult::Child => unsafe {
            nix::libc::pause();
            nix::libc::_exit(0)
        },
        nix::unistd::ForkResult::Parent { child } => {
            let seen = cgroup_of(child.as_raw());
            nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
            nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(seen, inside, "clone3 into the cgroup");
        }
    }

    let mut cat = Command::new("cat");
    cat.arg("/proc/self/cgroup");
    // SAFETY: join() is one write(2) on a descriptor opened beforehand.
    unsafe { cat.pre_exec(move || target.join()) };
    let out = cat.output().unwrap();
    assert!(stdout(&out).contains(&inside), "join: {}", stdout(&out));

    cg.remove().unwrap_or_else(|e| panic!("{e}"));
}
