//! `moat run` on Linux, host side: start the sandbox's init, plumb its
//! network namespace (transparent redirect to the proxy and DNS), serve the
//! proxy and DNS from the host namespace, wait, return the exit code.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use super::bpf::{Loader, RedirectConfig, Redirector};
use super::cgroup::{self, RunCgroup};
use super::dns::{self, SyntheticDns};
use super::init::{self, SYNC_FD};
use super::netns;
use crate::events::Events;
use crate::net::front::Front;
use crate::net::orig_dst::{NameLookup, OriginalDst, SoOriginalDst};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting the sandbox: {0}")]
    Spawn(std::io::Error),
    #[error("the sandbox did not start (see the message above)")]
    InitFailed,
    #[error(transparent)]
    Net(#[from] netns::NetnsError),
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::CgroupError),
    #[error(transparent)]
    Bpf(#[from] super::bpf::BpfError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "--redirect ebpf needs root (it attaches eBPF programs to a cgroup): \
         use sudo, or --redirect nft, which works without root"
    )]
    RootlessEbpf,
}

/// How the sandbox's connections are sent to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect {
    /// nftables rules inside the sandbox's namespace (`SO_ORIGINAL_DST`).
    Nft,
    /// eBPF programs on the run's cgroup (original destinations in a map).
    Ebpf,
}

pub struct RunSpec {
    /// The run's id (names its cgroup with [`Redirect::Ebpf`]).
    pub id: String,
    pub redirect: Redirect,
    /// The run's proxy (built once by the session).
    pub proxy: Arc<dyn Front>,
    /// Host files copied into the sandbox's fresh /tmp (host, inside).
    pub files: Vec<(PathBuf, PathBuf)>,
    pub workspace: PathBuf,
    /// Directories the command must not see (the workspace stays visible
    /// inside them).
    pub hide: Vec<PathBuf>,
    /// Paths covered even inside the workspace (see [`super::mask`]).
    pub mask: Vec<PathBuf>,
    pub env: Vec<(OsString, OsString)>,
    pub run_as: Option<(u32, u32)>,
    /// Moat is not root: the sandbox's init creates a user namespace and
    /// plumbs its network namespace itself, passing the sockets back (nft
    /// redirect only; `-p` goes through the init's dialer).
    pub rootless: bool,
    pub command: Vec<OsString>,
    pub events: Events,
    /// `-p HOSTPORT:PORT`: host 127.0.0.1:HOSTPORT → sandbox 127.0.0.1:PORT.
    pub publish: Vec<(u16, u16)>,
    /// With `ssh:` grants: the agent served on the socket the init binds
    /// at [`init::SSH_AGENT_INSIDE`].
    pub ssh_agent: Option<Arc<crate::ssh::Agent>>,
    /// Host directories attached inside under /tmp: (host, inside, read-only).
    pub dirs: Vec<(PathBuf, PathBuf, bool)>,
}

/// Run the command in the sandbox; its exit code (128+N for signal N).
pub fn run(spec: RunSpec) -> Result<i32, RunError> {
    let t0 = std::time::Instant::now();
    let bpf_loader = (spec.redirect == Redirect::Ebpf && !spec.rootless).then(Loader::start);
    if spec.redirect == Redirect::Nft && !spec.rootless {
        super::libnft::preload(); // ready by the time the namespace is
    }
    if spec.redirect == Redirect::Ebpf {
        // Cgroups of runs that were killed before they could clean up.
        match cgroup::sweep_stale() {
            Ok(gone) if !gone.is_empty() => tracing::info!(?gone, "removed stale run cgroups"),
            Ok(_) => {}
            Err(e) => tracing::warn!("sweeping stale run cgroups: {e}"),
        }
    }
    let (mut ours, theirs) = UnixStream::pair()?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("__sandbox-init")
        .arg("--workspace")
        .arg(&spec.workspace);
    for (host, inside) in &spec.files {
        cmd.arg("--file").arg(host).arg(inside);
    }
    for h in &spec.hide {
        cmd.arg("--hide").arg(h);
    }
    for m in &spec.mask {
        cmd.arg("--mask").arg(m);
    }
    if spec.rootless {
        if spec.redirect == Redirect::Ebpf {
            return Err(RunError::RootlessEbpf);
        }
        cmd.arg("--rootless");
        if !spec.publish.is_empty() {
            cmd.arg("--dial");
        }
    } else if let Some((uid, gid)) = spec.run_as {
        cmd.arg("--run-as").arg(format!("{uid}:{gid}"));
    }
    if spec.ssh_agent.is_some() {
        cmd.arg("--ssh-agent");
    }
    for (host, inside, read_only) in &spec.dirs {
        cmd.arg("--dir")
            .arg(host)
            .arg(inside)
            .arg(if *read_only { "ro" } else { "rw" });
    }
    // The init forks PID 1 straight into the run's cgroup: the command and
    // everything it starts are born in it (no process is ever moved).
    let cgroup = match spec.redirect {
        Redirect::Ebpf if !spec.rootless => {
            let cg = RunCgroup::create(&spec.id)?;
            cmd.arg("--cgroup").arg(cg.path());
            Some(cg)
        }
        _ => None,
    };
    cmd.arg("--")
        .args(&spec.command)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    // Rootless -p: the init's dialer connects inside for us.
    let dial = match spec.rootless && !spec.publish.is_empty() {
        true => Some(UnixStream::pair()?),
        false => None,
    };
    let dial_fd = dial
        .as_ref()
        .map(|(_, theirs)| std::os::fd::AsRawFd::as_raw_fd(theirs));
    let moat = nix::unistd::getpid();
    // SAFETY: fcntl and dup2 are async-signal-safe; they put the sync socket
    // on SYNC_FD (and the dial socket on DIAL_FD).
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (close-on-exec copies above 10), so that
            // neither dup2 overwrites the other's source, and dup2 never
            // gets equal descriptors (which would keep close-on-exec).
            let high = |from: i32| match nix::libc::fcntl(from, nix::libc::F_DUPFD_CLOEXEC, 10) {
                -1 => Err(std::io::Error::last_os_error()),
                fd => Ok(fd),
            };
            let sync = high(fd)?;
            let dial = dial_fd.map(high).transpose()?;
            if libc_dup2(sync, SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(dial) = dial
                && libc_dup2(dial, init::DIAL_FD) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // If Moat dies (even kill -9), the sandbox dies with it: no
            // command left running without its proxy. (Had it died since
            // the fork, the signal would not come: the parent changed.)
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != moat {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    tracing::debug!("sandbox init spawned after {:?}", t0.elapsed());
    drop(theirs);
    let dial = dial.map(|(ours, _theirs)| Dial::Init(Arc::new(std::sync::Mutex::new(ours))));

    if spec.rootless {
        // The init plumbed its own namespace and sent the sockets with its
        // ready byte. No `ns` handle: this process may not enter it.
        let Some(net) = receive_sockets(&ours) else {
            let _ = child.wait();
            return Err(RunError::InitFailed);
        };
        let dst: Arc<dyn OriginalDst> = Arc::new(SoOriginalDst);
        return serve(spec, child, ours, (dial, net, dst, None, None));
    }
    let mut ready = [0u8; 1];
    if ours.read_exact(&mut ready).is_err() || ready[0] != b'r' {
        let _ = child.wait();
        return Err(RunError::InitFailed);
    }
    let setup = || -> Result<Plumbed, RunError> {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", child.id()))?;
        tracing::debug!("sandbox init ready after {:?}", t0.elapsed());
        let net = netns::plumb(&ns, spec.redirect == Redirect::Nft)?;
        tracing::debug!("network plumbed after {:?}", t0.elapsed());
        let (dst, redirector): (Arc<dyn OriginalDst>, _) = match &cgroup {
            None => (Arc::new(SoOriginalDst), None),
            Some(cg) => {
                let config = RedirectConfig {
                    proxy: SocketAddrV4::new(Ipv4Addr::LOCALHOST, net.proxy_port),
                    dns_port: net.dns_port,
                };
                let loader = bpf_loader.unwrap_or_else(Loader::start);
                let r = Redirector::attach_with(loader, cg, config)?;
                tracing::debug!("eBPF redirector attached after {:?}", t0.elapsed());
                (Arc::new(r.original_dst()), Some(r))
            }
        };
        let dial = match spec.publish.is_empty() {
            true => None,
            false => Some(Dial::Ns(netns::Dialer::new(&ns)?)),
        };
        Ok((dial, net, dst, redirector, cgroup))
    };
    match setup() {
        Ok(plumbed) => serve(spec, child, ours, plumbed),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// How `-p` connects inside (if asked), the sandbox's sockets, how original
/// destinations are found, and the eBPF redirector with its cgroup.
type Plumbed = (
    Option<Dial>,
    netns::SandboxNet,
    Arc<dyn OriginalDst>,
    Option<Redirector>,
    Option<RunCgroup>,
);

/// Receives the ready byte and the three sockets a rootless init sends
/// (proxy listener, DNS UDP, DNS TCP; see `init::rootless`). None if the
/// init failed (it said why on stderr) or sent something else.
fn receive_sockets(sync: &UnixStream) -> Option<netns::SandboxNet> {
    let fds = receive_fds::<3>(sync, b'r')?;
    let mut fds = fds.into_iter();
    let (Some(proxy), Some(udp), Some(tcp)) = (fds.next(), fds.next(), fds.next()) else {
        return None;
    };
    let proxy_listener = std::net::TcpListener::from(proxy);
    let dns_udp = std::net::UdpSocket::from(udp);
    let dns_tcp = std::net::TcpListener::from(tcp);
    let proxy_port = proxy_listener.local_addr().ok()?.port();
    let dns_port = dns_udp.local_addr().ok()?.port();
    Some(netns::SandboxNet {
        proxy_listener,
        dns_udp,
        dns_tcp,
        proxy_port,
        dns_port,
    })
}

/// The SSH agent listener the init sends (`'a'` + one descriptor; see
/// `init::ssh_agent_socket`). None if the init failed (it said why).
fn receive_agent_socket(sync: &UnixStream) -> Option<std::os::unix::net::UnixListener> {
    let mut fds = receive_fds::<1>(sync, b'a')?;
    let listener = std::os::unix::net::UnixListener::from(fds.pop()?);
    listener.set_nonblocking(true).ok()?;
    Some(listener)
}

/// One message from the init on the sync socket: the byte `tag` with
/// exactly `N` descriptors attached (`SCM_RIGHTS`). None for anything else
/// (the init failed and said why on stderr).
fn receive_fds<const N: usize>(sync: &UnixStream, tag: u8) -> Option<Vec<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; N]);
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let msg = recvmsg::<()>(
        sync.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    (msg.bytes == 1 && byte[0] == tag && fds.len() == N).then_some(fds)
}

/// Serve the proxy and DNS on the sandbox's sockets, let the init go on,
/// wait for it; its exit code.
fn serve(
    spec: RunSpec,
    mut child: std::process::Child,
    mut ours: UnixStream,
    (dial, net, dst, redirector, cgroup): Plumbed,
) -> Result<i32, RunError> {
    let rt = crate::net::runtime::runtime()?;
    let published = match publish(&rt, dial, &spec.publish) {
        Ok(p) => p,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    serve_sandbox(&rt, spec.proxy.clone(), net, dst, &spec.events)?;
    if let Some(agent) = spec.ssh_agent.clone() {
        let Some(listener) = receive_agent_socket(&ours) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunError::InitFailed);
        };
        let _rt = rt.enter();
        let listener = tokio::net::UnixListener::from_std(listener)?;
        rt.spawn(agent.serve(listener));
    }
    // Ctrl-C reaches the command straight from the terminal; signals other
    // processes send to Moat are passed on (see `signals`). From before the
    // go: `moat stop` may signal as soon as `started` has told it the id.
    super::signals::forward_to(child.id() as i32)?;
    ours.write_all(b"g")?;
    tracing::debug!("command released");
    crate::runs::started(); // tells a waiting `moat run -d` (runs.rs)
    drop(ours);

    let status = child.wait()?;
    tracing::debug!("command ended");
    drop(published);
    drop(redirector);
    if let Some(cg) = cgroup
        && let Err(e) = cg.remove()
    {
        tracing::warn!("removing the run's cgroup: {e}");
    }
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Serve a plumbed sandbox from the host namespace on `rt`: the proxy's
/// transparent front door and Moat's DNS on `net`'s sockets, with DNS
/// answers going to `events`. Shared by the native and docker runtimes.
pub(crate) fn serve_sandbox(
    rt: &crate::net::runtime::ProxyRuntime,
    proxy: Arc<dyn Front>,
    net: netns::SandboxNet,
    dst: Arc<dyn OriginalDst>,
    events: &Events,
) -> Result<(), RunError> {
    let dns = Arc::new(SyntheticDns::new());
    let events = events.clone();
    dns.set_observer(Box::new(move |name, qtype, answer| {
        events.emit(
            "dns",
            serde_json::json!({"name": name, "type": qtype, "answer": answer.map(|a| a.to_string())}),
        );
    }));
    let _guard = rt.enter();
    let proxy_listener = tokio::net::TcpListener::from_std(net.proxy_listener)?;
    let dns_udp = tokio::net::UdpSocket::from_std(net.dns_udp)?;
    let dns_tcp = tokio::net::TcpListener::from_std(net.dns_tcp)?;
    let lookup_dns = dns.clone();
    let names: NameLookup = Arc::new(move |ip| lookup_dns.name_for(ip));
    rt.spawn(proxy.transparent(proxy_listener, dst, Some(names)));
    rt.spawn(dns::serve_udp(dns_udp, dns.clone()));
    rt.spawn(dns::serve_tcp(dns_tcp, dns));
    Ok(())
}

/// [`publish`] for a sandbox whose network namespace this (root) process
/// can enter: a container's.
pub(crate) fn publish_in(
    rt: &crate::net::runtime::ProxyRuntime,
    ns: &std::fs::File,
    ports: &[(u16, u16)],
) -> Result<Option<Dial>, RunError> {
    if ports.is_empty() {
        return Ok(None);
    }
    publish(rt, Some(Dial::Ns(netns::Dialer::new(ns)?)), ports)
}

/// Listen on the host's 127.0.0.1 for each `-p` and pass every connection
/// to the port inside the sandbox. Bound before the command starts, so a
/// taken port fails the run up front.
pub(crate) fn publish(
    rt: &crate::net::runtime::ProxyRuntime,
    dial: Option<Dial>,
    ports: &[(u16, u16)],
) -> Result<Option<Dial>, RunError> {
    let Some(dialer) = dial.filter(|_| !ports.is_empty()) else {
        return Ok(None);
    };
    for &(host_port, port) in ports {
        let listener = std::net::TcpListener::bind(("127.0.0.1", host_port)).map_err(|e| {
            RunError::Io(std::io::Error::new(
                e.kind(),
                format!("-p {host_port}:{port}: cannot listen on 127.0.0.1:{host_port}: {e}"),
            ))
        })?;
        listener.set_nonblocking(true)?;
        let _guard = rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let dialer = dialer.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut outside, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let dialer = dialer.clone();
                tokio::spawn(async move {
                    let inside = tokio::task::spawn_blocking(move || dialer.connect(port)).await;
                    let Ok(Ok(inside)) = inside else { return };
                    let _ = inside.set_nonblocking(true);
                    let Ok(mut inside) = tokio::net::TcpStream::from_std(inside) else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                });
            }
        });
    }
    Ok(Some(dialer))
}

/// Connects to `127.0.0.1:<port>` inside the sandbox, for `-p`.
#[derive(Clone)]
pub(crate) enum Dial {
    /// Root: a thread of this process in the sandbox's network namespace.
    Ns(netns::Dialer),
    /// Rootless: the init's dialer process, over a unix socket.
    Init(Arc<std::sync::Mutex<UnixStream>>),
}

impl Dial {
    /// Blocking; call from a blocking task.
    fn connect(&self, port: u16) -> std::io::Result<std::net::TcpStream> {
        match self {
            Dial::Ns(d) => d.connect(port),
            Dial::Init(sock) => {
                let sock = sock
                    .lock()
                    .map_err(|_| std::io::Error::other("the sandbox's dialer failed"))?;
                dial_through(&sock, port)
            }
        }
    }
}

/// One request to the init's dialer (see `init::dialer`).
fn dial_through(mut sock: &UnixStream, port: u16) -> std::io::Result<std::net::TcpStream> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let gone = || std::io::Error::other("the sandbox's network is gone");
    sock.write_all(&port.to_be_bytes()).map_err(|_| gone())?;
    let mut answer = [0u8; 4];
    let mut fd = None;
    let got = {
        let mut space = nix::cmsg_space!(std::os::fd::RawFd);
        let mut iov = [std::io::IoSliceMut::new(&mut answer)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel just installed this descriptor for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(r) };
                    fd.get_or_insert(owned);
                }
            }
        }
        msg.bytes
    };
    if got == 0 {
        return Err(gone());
    }
    sock.read_exact(&mut answer[got..]).map_err(|_| gone())?;
    match (i32::from_be_bytes(answer), fd) {
        (0, Some(fd)) => Ok(std::net::TcpStream::from(fd)),
        (0, None) => Err(gone()),
        (errno, _) => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

fn libc_dup2(from: i32, to: i32) -> i32 {
    // SAFETY: plain syscall on descriptors we own.
    unsafe { nix::libc::dup2(from, to) }
}

/// Parse `__sandbox-init` arguments (internal; built by [`run`]).
pub fn parse_init_args(raw: Vec<OsString>) -> Result<init::InitArgs, String> {
    let mut args = init::InitArgs::default();
    let mut argv = super::argv::Argv::new(raw);
    while let Some(flag) = argv.flag()? {
        match flag.as_str() {
            "--workspace" => args.workspace = argv.value(&flag)?.into(),
            "--file" => {
                let host = argv.value(&flag)?.into();
                args.files.push((host, argv.value(&flag)?.into()));
            }
            "--hide" => args.hide.push(argv.value(&flag)?.into()),
            "--mask" => args.mask.push(argv.value(&flag)?.into()),
            "--rootless" => args.rootless = true,
            "--cgroup" => args.cgroup = Some(argv.value(&flag)?.into()),
            "--dial" => args.dial = true,
            "--ssh-agent" => args.ssh_agent = true,
            "--dir" => {
                let host = argv.value(&flag)?.into();
                let inside = argv.value(&flag)?.into();
                let read_only = match argv.value(&flag)?.to_str() {
                    Some("ro") => true,
                    Some("rw") => false,
                    _ => return Err("--dir HOST INSIDE takes ro or rw last".into()),
                };
                args.dirs.push((host, inside, read_only));
            }
            "--run-as" => args.run_as = Some(argv.ids(&flag)?),
            _ => return Err(super::argv::unexpected(&flag)),
        }
    }
    args.command = argv.command()?;
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<init::InitArgs, String> {
        parse_init_args(a.iter().map(OsString::from).collect())
    }

    #[test]
    fn init_args_carry_rootless_and_run_as() {
        let a = args(&["--workspace", "/w", "--rootless", "--", "true"]).unwrap();
        assert!(a.rootless && a.run_as.is_none());
        assert_eq!(a.command, [OsString::from("true")]);
        let a = args(&[
            "--workspace",
            "/w",
            "--run-as",
            "1000:100",
            "--mask",
            "/w/.moat",
            "--",
            "sh",
        ])
        .unwrap();
        assert!(!a.rootless);
        assert_eq!(a.mask, [PathBuf::from("/w/.moat")]);
        assert_eq!(a.run_as, Some((1000, 100)));
        assert!(
            args(&["--workspace", "/w", "--rootless"]).is_err(),
            "no command"
        );
    }

    #[test]
    fn init_args_carry_extra_dirs_and_the_agent_socket() {
        let a = args(&[
            "--workspace",
            "/w",
            "--dir",
            "/h/agent",
            "/tmp/.moat/agent",
            "ro",
            "--dir",
            "/h/state",
            "/tmp/home/.claude",
            "rw",
            "--ssh-agent",
            "--",
            "true",
        ])
        .unwrap();
        assert!(a.ssh_agent);
        assert_eq!(
            a.dirs,
            [
                ("/h/agent".into(), "/tmp/.moat/agent".into(), true),
                ("/h/state".into(), "/tmp/home/.claude".into(), false),
            ]
        );
        assert!(args(&["--workspace", "/w", "--dir", "/a", "/b", "x", "--", "t"]).is_err());
    }

    #[test]
    fn rootless_refusals_say_what_to_do() {
        assert!(
            RunError::RootlessEbpf
                .to_string()
                .contains("--redirect nft")
        );
    }
}
