//! Plumbing a sandbox's network namespace from the host side.
//!
//! [`plumb`] enters the sandbox namespace on a dedicated thread (the caller's
//! thread never leaves the host namespace), and there:
//!
//! 1. brings `lo` up and adds `default dev lo src 127.0.0.1` over rtnetlink
//!    (without a route, connect() fails with `ENETUNREACH` before any nat hook
//!    runs; without `src`, redirected peers show up as `0.0.0.0`);
//! 2. creates the proxy listener and the DNS sockets (UDP and TCP on one port)
//!    on `127.0.0.1`, so they belong to the sandbox namespace;
//! 3. loads [`super::nft::ruleset`] through libnftables ([`super::libnft`])
//!    from that thread, so the rules land in the thread's namespace.
//!
//! The sockets come back to the caller, who serves them from the host
//! namespace: a socket stays in the namespace it was created in, wherever the
//! process that holds it lives. Nothing is created in the host namespace, so
//! there is nothing to clean up: rules, route and sockets' namespace all go
//! when the sandbox's last process exits and the sockets are closed.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::{libnft, nft};

/// The sockets a plumbed sandbox's traffic lands on. All of them live in the
/// sandbox's network namespace, bound to `127.0.0.1`, and are non-blocking.
#[derive(Debug)]
pub struct SandboxNet {
    /// Every TCP connection leaving the sandbox (except DNS) arrives here;
    /// `SO_ORIGINAL_DST` ([`crate::net::orig_dst::SoOriginalDst`]) names its target.
    pub proxy_listener: TcpListener,
    /// DNS over UDP, whatever resolver the sandbox asked.
    pub dns_udp: UdpSocket,
    /// DNS over TCP, same port as [`Self::dns_udp`].
    pub dns_tcp: TcpListener,
    pub proxy_port: u16,
    pub dns_port: u16,
}

/// What went wrong while plumbing a sandbox's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "cannot inspect the sandbox network namespace handle: {0} \
         (pass an open /proc/<pid>/ns/net of the sandbox)"
    )]
    Inspect(#[source] io::Error),

    #[error(
        "refusing to plumb the host's own network namespace: the handle must be the \
         sandbox's /proc/<pid>/ns/net, not this process's"
    )]
    HostNamespace,

    #[error("cannot start the thread that enters the sandbox network namespace: {0}")]
    Thread(#[source] io::Error),

    #[error("the thread plumbing the sandbox network namespace panicked")]
    ThreadPanicked,

    #[error(
        "cannot enter the sandbox network namespace: {0}. Moat needs CAP_SYS_ADMIN over \
         it: run as root, or rootless from inside the user namespace that owns it; the \
         handle must be a network namespace (/proc/<pid>/ns/net)"
    )]
    Setns(#[source] nix::Error),

    #[error("cannot start the netlink runtime inside the sandbox namespace: {0}")]
    Runtime(#[source] io::Error),

    #[error("cannot open a netlink socket inside the sandbox namespace: {0}")]
    NetlinkSocket(#[source] io::Error),

    #[error(
        "the sandbox namespace has no loopback link `lo` ({0}); \
         is the handle a network namespace?"
    )]
    NoLoopback(#[source] nix::Error),

    #[error(
        "netlink: cannot {what} inside the sandbox namespace: {cause} \
         (Moat needs CAP_NET_ADMIN there)"
    )]
    Netlink {
        what: &'static str,
        cause: rtnetlink::Error,
    },

    #[error("cannot {what} inside the sandbox namespace: {cause}")]
    Socket {
        what: &'static str,
        cause: io::Error,
    },

    #[error(transparent)]
    Nft(#[from] libnft::LibNftError),
}

/// Plumbs the network namespace `netns` (an open `/proc/<pid>/ns/net`, or a
/// pidfd) for transparent redirection and returns the sockets its traffic
/// lands on. See the module documentation for what is done; the caller's
/// thread stays in its own namespace.
///
/// Refuses the caller's own network namespace, so a wrong handle can never
/// change the host's routes or firewall.
pub fn plumb(netns: &File, nft_rules: bool) -> Result<SandboxNet, NetnsError> {
    refuse_own_namespace(netns)?;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("moat-netns".into())
            .spawn_scoped(scope, || plumb_inside(netns, nft_rules))
            .map_err(NetnsError::Thread)?;
        worker.join().map_err(|_| NetnsError::ThreadPanicked)?
    })
}

/// Opens TCP connections to `127.0.0.1:<port>` *inside* a sandbox's network
/// namespace, for `moat run -p`: one thread lives in the namespace and
/// connects on request, so no runtime thread ever changes namespace.
#[derive(Clone)]
pub struct Dialer {
    requests: std::sync::mpsc::Sender<(
        u16,
        std::sync::mpsc::SyncSender<io::Result<std::net::TcpStream>>,
    )>,
}

impl Dialer {
    pub fn new(netns: &File) -> Result<Self, NetnsError> {
        refuse_own_namespace(netns)?;
        let netns = netns.try_clone().map_err(NetnsError::Inspect)?;
        let (tx, rx) = std::sync::mpsc::channel::<(
            u16,
            std::sync::mpsc::SyncSender<io::Result<std::net::TcpStream>>,
        )>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("moat-dialer".into())
            .spawn(move || {
                let entered = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                // Ends when every Dialer is dropped.
                for (port, reply) in rx {
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    let _ = reply.send(std::net::TcpStream::connect(addr));
                }
            })
            .map_err(NetnsError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { requests: tx }),
            Ok(Err(e)) => Err(NetnsError::Setns(e)),
            Err(_) => Err(NetnsError::ThreadPanicked),
        }
    }

    /// Connect to `127.0.0.1:port` in the sandbox (blocking; call from a
    /// blocking task).
    pub fn connect(&self, port: u16) -> io::Result<std::net::TcpStream> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let gone = || io::Error::other("the sandbox's network is gone");
        self.requests.send((port, tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

/// Errors if `netns` is the calling thread's own network namespace.
fn refuse_own_namespace(netns: &File) -> Result<(), NetnsError> {
    let target = netns.metadata().map_err(NetnsError::Inspect)?;
    let own = std::fs::metadata("/proc/thread-self/ns/net").map_err(NetnsError::Inspect)?;
    if (target.dev(), target.ino()) == (own.dev(), own.ino()) {
        return Err(NetnsError::HostNamespace);
    }
    Ok(())
}

/// Runs on a thread of its own, which ends (namespace and all) when done.
fn plumb_inside(netns: &File, nft_rules: bool) -> Result<SandboxNet, NetnsError> {
    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Setns)?;
    plumb_here(nft_rules)
}

/// Plumbs the network namespace the calling thread is in (steps 1–3 of the
/// module documentation) and returns its sockets.
///
/// Used by [`plumb`] after `setns`, and by a rootless sandbox's init, which
/// holds CAP_NET_ADMIN over its own namespace through the user namespace it
/// created, plumbs it itself and passes the sockets out over a unix socket.
/// Never call it from a thread in the host's namespace: it would change the
/// host's routes and firewall.
pub fn plumb_here(nft_rules: bool) -> Result<SandboxNet, NetnsError> {
    let t0 = std::time::Instant::now();
    route_loopback()?;
    tracing::debug!("loopback routed in {:?}", t0.elapsed());
    let (proxy_listener, dns_udp, dns_tcp) = bind_sockets()?;
    let local = |what, r: io::Result<std::net::SocketAddr>| {
        r.map(|a| a.port())
            .map_err(|cause| NetnsError::Socket { what, cause })
    };
    let proxy_port = local("read the proxy port", proxy_listener.local_addr())?;
    let dns_port = local("read the DNS port", dns_udp.local_addr())?;

    if nft_rules {
        let t1 = std::time::Instant::now();
        super::sys::Kernel::load_ruleset(
            &super::sys::LinuxKernel,
            &nft::ruleset(proxy_port, dns_port),
        )?;
        tracing::debug!("nft ruleset loaded in {:?}", t1.elapsed());
    }

    for (what, r) in [
        (
            "make the proxy listener non-blocking",
            proxy_listener.set_nonblocking(true),
        ),
        (
            "make the DNS UDP socket non-blocking",
            dns_udp.set_nonblocking(true),
        ),
        (
            "make the DNS TCP listener non-blocking",
            dns_tcp.set_nonblocking(true),
        ),
    ] {
        r.map_err(|cause| NetnsError::Socket { what, cause })?;
    }
    Ok(SandboxNet {
        proxy_listener,
        dns_udp,
        dns_tcp,
        proxy_port,
        dns_port,
    })
}

/// `ip link set lo up; ip route replace default dev lo src 127.0.0.1`, over
/// a netlink socket opened in the current (sandbox) namespace.
fn route_loopback() -> Result<(), NetnsError> {
    let lo = nix::net::if_::if_nametoindex("lo").map_err(NetnsError::NoLoopback)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetnsError::Runtime)?;
    rt.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(NetnsError::NetlinkSocket)?;
        let conn = tokio::spawn(connection);
        let result = async {
            handle
                .link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(|source| NetnsError::Netlink {
                    what: "bring lo up",
                    cause: source,
                })?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(lo)
                .pref_source(Ipv4Addr::LOCALHOST)
                .scope(RouteScope::Link)
                .build();
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(|source| NetnsError::Netlink {
                    what: "add the route `default dev lo src 127.0.0.1`",
                    cause: source,
                })
        }
        .await;
        conn.abort();
        result
    })
}

/// The proxy listener on `127.0.0.1:0`, and UDP + TCP DNS sockets sharing
/// one port on `127.0.0.1`.
fn bind_sockets() -> Result<(TcpListener, UdpSocket, TcpListener), NetnsError> {
    let proxy =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| NetnsError::Socket {
            what: "bind the proxy listener on 127.0.0.1",
            cause: source,
        })?;
    // A fresh namespace has its whole port range free, but the UDP port
    // picked by the kernel may be taken for TCP: try a few.
    let mut last = None;
    for _ in 0..16 {
        let udp =
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| NetnsError::Socket {
                what: "bind the DNS UDP socket on 127.0.0.1",
                cause: source,
            })?;
        let port = udp
            .local_addr()
            .map_err(|source| NetnsError::Socket {
                what: "read the DNS port",
                cause: source,
            })?
            .port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(tcp) => return Ok((proxy, udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(source) => {
                return Err(NetnsError::Socket {
                    what: "bind the DNS TCP listener on 127.0.0.1",
                    cause: source,
                });
            }
        }
    }
    Err(NetnsError::Socket {
        what: "find a port free for both UDP and TCP DNS on 127.0.0.1",
        cause: last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_callers_own_namespace() {
        // Only the check: plumb() itself is exercised in vm-tests/netns_redirect.rs.
        let own = File::open("/proc/thread-self/ns/net").unwrap();
        assert!(matches!(
            refuse_own_namespace(&own),
            Err(NetnsError::HostNamespace)
        ));
        let not_a_netns = File::open("/proc/thread-self/ns/mnt").unwrap();
        assert!(refuse_own_namespace(&not_a_netns).is_ok());
    }

    #[test]
    fn errors_say_what_to_do() {
        let missing = NetnsError::from(libnft::LibNftError::Missing("not found".into()));
        assert!(
            missing.to_string().contains("install nftables"),
            "{missing}"
        );
        let e = NetnsError::Setns(nix::Error::EPERM);
        assert!(e.to_string().contains("run as root"), "{e}");
    }
}
