//! Transparent redirection in a sandbox network namespace, for real: a
//! throwaway namespace (held by `unshare --net sleep`) is plumbed by
//! `moat::sandbox::netns::plumb`, its sockets are served from the host
//! namespace, and real clients run inside it through `nsenter`.
//!
//! Root only (CI runs it). Nothing is created in the host namespace: the test
//! checks that the host's nftables ruleset, links and named namespaces are the
//! same afterwards, and that nothing refers to the sandbox namespace any more.
//! Traffic goes only to loopback inside the namespace, whose only link is `lo`.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{NetnsHolder, host_cmd, ns_inode, stderr, stdout};
use moat::net::orig_dst::{OriginalDst, SoOriginalDst};
use moat::sandbox::dns::{self, SyntheticDns};
use moat::sandbox::{netns, nft};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "vm-tests run as root (they create network namespaces and load nftables rules); \
         CI does; locally: sudo ./scripts/test.sh"
    );
}

/// What must not change in the host namespace.
fn host_state() -> (String, String, String) {
    (
        host_cmd(&["nft", "list", "ruleset"]),
        host_cmd(&["ip", "-o", "link"]),
        host_cmd(&["ip", "-all", "netns", "list"]),
    )
}

/// Every process or open fd that still refers to the namespace `ino`.
fn refs_to_netns(ino: u64) -> Vec<String> {
    let needle = format!("net:[{ino}]");
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = p.path();
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let mut links = vec![dir.join("ns/net")];
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for l in links {
            if std::fs::read_link(&l).is_ok_and(|t| t.to_string_lossy() == needle) {
                found.push(l.display().to_string());
            }
        }
    }
    found
}

#[test]
fn ruleset_passes_nft_check_inside_a_throwaway_namespace() {
    assert_root();
    let before = host_state();
    {
        let holder = NetnsHolder::spawn();
        let o = holder.run(&["nft", "-c", "-f", "-"], Some(&nft::ruleset(41000, 42000)));
        assert!(o.status.success(), "nft -c: {}", stderr(&o));
        // -c loads nothing.
        let o = holder.run(&["nft", "list", "ruleset"], None);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stdout(&o).contains("moat"), "{}", stdout(&o));
    }
    assert_eq!(host_state(), before, "host namespace changed");
}

/// Python inside the sandbox: a raw DNS A query for `api.github.com` to
/// 9.9.9.9:53 over UDP and over TCP, then a TCP connection to the answer.
const DNS_CLIENT: &str = r#"
import socket, struct
def query(qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in b"api.github.com".split(b"."):
        q += bytes([len(label)]) + label
    return q + b"\x00" + struct.pack(">HH", 1, 1)
def first_a(r):
    (ancount,) = struct.unpack(">H", r[6:8])
    assert ancount >= 1, r
    i = 12
    while r[i] != 0:
        i += 1 + r[i]
    i += 5
    for _ in range(ancount):
        if r[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while r[i] != 0:
                i += 1 + r[i]
            i += 1
        typ, cls, ttl, rdlen = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        if typ == 1:
            return socket.inet_ntoa(r[i:i + 4])
        i += rdlen
    raise Exception("no A record")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(query(0x1234), ("9.9.9.9", 53))
r, peer = u.recvfrom(4096)
assert r[:2] == b"\x12\x34", r
print("UDP", first_a(r), "%s:%d" % peer)
t = socket.create_connection(("9.9.9.9", 53), timeout=3)
q = query(0x4321)
t.sendall(struct.pack(">H", len(q)) + q)
(n,) = struct.unpack(">H", t.recv(2))
r = b""
while len(r) < n:
    r += t.recv(n - len(r))
print("TCP", first_a(r))
ip = first_a(r)
c = socket.create_connection((ip, 443), timeout=3)
print("CONNECT", c.makefile().readline().strip())
"#;

/// UDP to an outside address (QUIC-like): must error or get no reply.
const UDP_CLIENT: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
try:
    s.sendto(b"\x00" * 32, ("10.253.0.1", 443))
    s.recvfrom(2048)
    print("REPLY")
except OSError as e:
    print("BLOCKED", type(e).__name__, e)
"#;

/// IPv6 to a non-loopback address: must fail, fast.
const V6_CLIENT: &str = r#"
import socket, time
t = time.monotonic()
try:
    socket.create_connection(("fd00:253::1", 443), timeout=5)
    print("CONNECTED")
except OSError as e:
    print("FAILED %.3f %s" % (time.monotonic() - t, e))
"#;

#[test]
fn sandbox_traffic_lands_on_host_served_sockets() {
    assert_root();
    let before = host_state();
    let host_ns = ns_inode("/proc/self/ns/net");
    let holder = NetnsHolder::spawn();
    let sandbox_ino = ns_inode(&holder.ns_path);
    assert_ne!(sandbox_ino, host_ns);

    let handle = File::open(&holder.ns_path).unwrap();
    let net = netns::plumb(&handle, true).unwrap_or_else(|e| panic!("plumb: {e}"));
    drop(handle);
    // This thread never left the host namespace.
    assert_eq!(ns_inode("/proc/thread-self/ns/net"), host_ns);

    // Serve the sockets from here (host namespace), on a runtime whose drop
    // closes them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let questions = Arc::new(AtomicUsize::new(0));
    let synthetic = Arc::new(SyntheticDns::new());
    {
        let _guard = rt.enter();
        let q = questions.clone();
        synthetic.set_observer(Box::new(move |_, _, _| {
            q.fetch_add(1, Ordering::SeqCst);
        }));
        let listener = tokio::net::TcpListener::from_std(net.proxy_listener).unwrap();
        let count = accepted.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let line = match SoOriginalDst.original_dst(&s) {
                        Ok(a) => format!("ORIG {a}\n"),
                        Err(e) => format!("NOORIG {e}\n"),
                    };
                    let _ = s.write_all(line.as_bytes()).await;
                    // Read what the client sends until it closes, so our
                    // close is a clean FIN, not a reset.
                    let mut buf = [0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    })
                    .await;
                });
            }
        });
        let udp = tokio::net::UdpSocket::from_std(net.dns_udp).unwrap();
        rt.spawn(dns::serve_udp(udp, synthetic.clone()));
        let tcp = tokio::net::TcpListener::from_std(net.dns_tcp).unwrap();
        rt.spawn(dns::serve_tcp(tcp, synthetic.clone()));
    }

    // (f) rules and route are in the sandbox namespace.
    let o = holder.run(&["nft", "list", "ruleset"], None);
    let rules = stdout(&o);
    assert!(rules.contains("table ip moat {"), "{rules}");
    assert!(rules.contains("table ip6 moat6 {"), "{rules}");
    assert!(
        rules.contains(&format!("redirect to :{}", net.proxy_port)),
        "{rules}"
    );
    let routes = stdout(&holder.run(&["ip", "route"], None));
    assert!(
        routes.contains("default dev lo") && routes.contains("src 127.0.0.1"),
        "{routes}"
    );

    // (a) TCP to anywhere lands on the proxy, original destination intact.
    let o = holder.run(
        &[
            "curl",
            "-sS",
            "--http0.9",
            "--max-time",
            "5",
            "http://10.253.0.1:8080/",
        ],
        None,
    );
    assert_eq!(stdout(&o), "ORIG 10.253.0.1:8080\n", "curl: {}", stderr(&o));

    // (b) DNS to any resolver is answered by Moat, over UDP and TCP; the
    // synthetic address then names the host of the next connection.
    let o = holder.run(&["python3", "-c", DNS_CLIENT], None);
    let out = stdout(&o);
    eprintln!("DNS client: {out}");
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    let udp: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(udp[0], "UDP", "{out}");
    assert_eq!(
        udp[2], "9.9.9.9:53",
        "reply seems to come from the resolver asked: {out}"
    );
    let ip: Ipv4Addr = udp[1].parse().unwrap();
    assert_eq!(
        synthetic.name_for(IpAddr::V4(ip)).as_deref(),
        Some("api.github.com"),
        "{out}"
    );
    assert_eq!(lines[1], format!("TCP {ip}"), "{out}");
    assert_eq!(lines[2], format!("CONNECT ORIG {ip}:443"), "{out}");
    assert!(questions.load(Ordering::SeqCst) >= 2);

    // (c) other UDP goes nowhere, and reaches none of our sockets.
    let (conns, asked) = (
        accepted.load(Ordering::SeqCst),
        questions.load(Ordering::SeqCst),
    );
    let o = holder.run(&["python3", "-c", UDP_CLIENT], None);
    let out = stdout(&o);
    eprintln!("UDP out: {out}");
    assert!(out.starts_with("BLOCKED"), "{out}{}", stderr(&o));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(accepted.load(Ordering::SeqCst), conns);
    assert_eq!(questions.load(Ordering::SeqCst), asked);

    // (d) IPv6 out of loopback fails fast.
    let o = holder.run(&["python3", "-c", V6_CLIENT], None);
    let out = stdout(&o);
    eprintln!("IPv6 out: {out}");
    let secs: f64 = out
        .strip_prefix("FAILED ")
        .and_then(|r| r.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("IPv6 connect should fail: {out}{}", stderr(&o)));
    assert!(secs < 1.0, "IPv6 failure took {secs} s: {out}");

    // (e) no ICMP out.
    let o = holder.run(&["ping", "-c1", "-W1", "10.253.0.1"], None);
    eprintln!("ping: {}{}", stdout(&o), stderr(&o));
    assert!(!o.status.success(), "ping got through: {}", stdout(&o));
    assert_eq!(accepted.load(Ordering::SeqCst), conns);

    // (g) close everything: nothing refers to the namespace any more.
    drop(rt);
    drop(holder);
    let left = refs_to_netns(sandbox_ino);
    assert!(left.is_empty(), "still in the sandbox netns: {left:?}");

    assert_eq!(host_state(), before, "host namespace changed");
}
