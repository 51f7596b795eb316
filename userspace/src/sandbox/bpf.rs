//! The eBPF redirector (`--redirect ebpf`): loads `ebpf/redirect.bpf.c`
//! (compiled by `build.rs`, embedded here) and attaches it to one run's
//! cgroup v2 ([`RunCgroup`]). See `ebpf/README.md` for what each program does.
//!
//! Its programs rewrite the destination of every TCP `connect()` made by the
//! cgroup's processes to the proxy listener, DNS (UDP and TCP port 53) to the
//! DNS socket, refuse other UDP and all IPv6 with `EPERM`, and record each
//! redirected connection's original destination in a map that
//! [`BpfOriginalDst`] reads for the proxy. The sandbox keeps its own network
//! namespace (only `lo`): the cgroup decides *where* connections go, the
//! namespace guarantees nothing else can leave.
//!
//! # Call order (host side of `moat run`)
//!
//! 1. [`super::cgroup::sweep_stale`]: drop what killed runs left behind.
//! 2. [`RunCgroup::create`]`(run_id)`.
//! 3. Spawn `__sandbox-init --cgroup <path>`; it unshares its namespaces and
//!    waits on the sync pipe, before exec'ing anything of the user's. It
//!    forks PID 1 straight into the cgroup
//!    ([`ForkTarget::fork_into`](super::cgroup::ForkTarget::fork_into)):
//!    the command and everything it starts are born there.
//! 4. [`Redirector::attach`]`(&cgroup, RedirectConfig { proxy, dns_port })`,
//!    with `proxy` the listener's address *inside the sandbox namespace*
//!    (e.g. `127.0.0.1:<port>`). The listener and DNS sockets are created in
//!    the namespace as for nft (so plumb without the nft ruleset, or create
//!    them first and pass their ports); the programs need only the numbers.
//! 5. Serve the proxy with [`Redirector::original_dst`] as its
//!    [`OriginalDst`], and DNS, then release the child: its very first
//!    `connect()` is already redirected.
//! 6. On exit: drop the [`Redirector`] (detaches every program), then the
//!    [`RunCgroup`] (kills stragglers, removes the directory).
//!
//! The sandboxed command cannot undo this: the programs are attached through
//! BPF links held only by Moat's file descriptors (detaching needs the link,
//! or `CAP_SYS_ADMIN`/`CAP_NET_ADMIN`/`CAP_BPF` to find it, which the child
//! lacks). **But** a child running as uid 0 can, without any capability,
//! write its pid into the root cgroup's `cgroup.procs` (file permissions,
//! not capabilities, guard migration) and so leave the run's cgroup. A
//! cgroup namespace does not stop that unless cgroup2 is mounted with
//! `nsdelegate`, which the hybrid hosts we target lack (checked). So the
//! init, in the sandbox's mount namespace, must remount the cgroup2 mount
//! read-only (`MS_REMOUNT|MS_BIND|MS_RDONLY` on [`super::cgroup::cgroup2_mount`])
//! before it drops its capabilities; `vm-tests/ebpf.rs` checks that this
//! holds. Even outside the cgroup a process is still in the sandbox's
//! namespace, which has no way out.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap, MapData, MapError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps};
use aya::{Ebpf, EbpfError, EbpfLoader};
use tokio::net::TcpStream;

use super::cgroup::RunCgroup;
use crate::net::orig_dst::OriginalDst;

/// The compiled `ebpf/redirect.bpf.c`; empty when built without clang.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// The `cgroup/*` sock_addr programs, by function name in the C source.
const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    "getpeername4",
    "recvmsg4",
    "connect6",
    "sendmsg6",
    "sendmsg4",
    "connect4",
];
/// The sockops program.
const SOCKOPS_PROGRAM: &str = "record_orig";

/// Where the sandbox's traffic must land, as seen from inside its network
/// namespace. The DNS socket listens on the proxy's address, `dns_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectConfig {
    pub proxy: SocketAddrV4,
    pub dns_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "this moat was built without clang, so it has no eBPF redirector; install clang \
         and libbpf-dev and rebuild, or use --redirect nft"
    )]
    NotBuilt,

    #[error("the proxy port and the DNS port must not be 0 (got {0:?})")]
    BadConfig(RedirectConfig),

    #[error(
        "cannot load the eBPF redirector: {0} (needs root, a kernel with cgroup BPF and \
         BTF, Linux 5.10 or later; or use --redirect nft)"
    )]
    Load(#[source] Box<EbpfError>),

    #[error("the eBPF object has no {0} (moat built from a mismatched ebpf/redirect.bpf.c?)")]
    Missing(&'static str),

    #[error("{what} {name}: {source}")]
    Program {
        what: &'static str,
        name: String,
        #[source]
        source: Box<ProgramError>,
    },

    /// `detail` is the whole cause chain (aya's own message is only
    /// "`bpf_link_create` failed"; the errno is what tells the user why).
    #[error("attaching {section} to {cgroup}: {detail}{hint}")]
    Attach {
        section: String,
        cgroup: PathBuf,
        detail: String,
        hint: &'static str,
    },

    #[error("the eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

/// The redirector's programs attached to a run's cgroup. Dropping it
/// detaches them all (the links die with the object's file descriptors).
pub struct Redirector {
    /// Owns programs and links; held only to keep them attached.
    _ebpf: Ebpf,
    orig: BpfOriginalDst,
    cgroup: PathBuf,
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

/// Was this moat built with the eBPF programs (clang present at build time)?
pub fn is_built() -> bool {
    !OBJECT.is_empty()
}

/// The embedded programs being loaded on a background thread (maps created,
/// programs through the verifier): `moat run` overlaps this with the rest
/// of its start-up; [`Redirector::attach_with`] only configures and attaches.
pub struct Loader(std::thread::JoinHandle<Result<Ebpf, BpfError>>);

impl Loader {
    pub fn start() -> Self {
        Self(std::thread::spawn(load))
    }
}

/// Where aya looks for the kernel's BTF.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

fn load() -> Result<Ebpf, BpfError> {
    if OBJECT.is_empty() {
        return Err(BpfError::NotBuilt);
    }
    let t0 = std::time::Instant::now();
    let mut ebpf = loader_without_kernel_btf()
        .load(OBJECT)
        .map_err(|e| BpfError::Load(Box::new(e)))?;
    sockops(&mut ebpf)?
        .load()
        .map_err(prog_err("the kernel rejected", SOCKOPS_PROGRAM))?;
    for name in SOCK_ADDR_PROGRAMS {
        sock_addr(&mut ebpf, name)?
            .load()
            .map_err(prog_err("the kernel rejected", name))?;
    }
    tracing::debug!("eBPF programs loaded after {:?}", t0.elapsed());
    Ok(ebpf)
}

fn prog_err(what: &'static str, name: &str) -> impl FnOnce(ProgramError) -> BpfError {
    let name = name.to_owned();
    move |e| BpfError::Program {
        what,
        name,
        source: Box::new(e),
    }
}

fn sockops(ebpf: &mut Ebpf) -> Result<&mut SockOps, BpfError> {
    ebpf.program_mut(SOCKOPS_PROGRAM)
        .ok_or(BpfError::Missing("program record_orig (sockops)"))?
        .try_into()
        .map_err(prog_err("wrong type for", SOCKOPS_PROGRAM))
}

fn sock_addr<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing(name))?
        .try_into()
        .map_err(prog_err("wrong type for", name))
}

/// aya's `EbpfLoader::new()` reads and parses all of the kernel's BTF
/// ([`KERNEL_BTF`], megabytes: most of an eBPF run's start-up) for CO-RE
/// relocations, which these programs do not use (plain UAPI context fields,
/// no vmlinux.h), and has no way to skip it (aya-rs/aya#1172; `.btf(None)`
/// comes after the parse). So this thread gets a mount namespace of its own
/// in which that file is /dev/null: aya finds no kernel BTF and relocates
/// nothing. The object's own BTF (for its maps) is loaded as before. Other
/// threads and the host's mounts are untouched; without the privilege for
/// it, the loader parses as usual.
fn loader_without_kernel_btf() -> EbpfLoader<'static> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    let none: Option<&str> = None;
    let hidden = unshare(CloneFlags::CLONE_NEWNS)
        // Nothing mounted here may propagate to the host's namespace.
        .and_then(|()| mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none))
        .and_then(|()| mount(Some("/dev/null"), KERNEL_BTF, none, MsFlags::MS_BIND, none));
    if let Err(e) = hidden {
        tracing::debug!("kernel BTF left visible to aya ({e}): it parses it");
    }
    EbpfLoader::new()
}

impl Redirector {
    /// Loads the embedded programs, writes `config` into them and attaches
    /// them to `cgroup`. On error nothing stays attached.
    pub fn attach(cgroup: &RunCgroup, config: RedirectConfig) -> Result<Redirector, BpfError> {
        Self::attach_with(Loader::start(), cgroup, config)
    }

    /// [`Self::attach`] with a loader [`Loader::start`]ed earlier.
    pub fn attach_with(
        loader: Loader,
        cgroup: &RunCgroup,
        config: RedirectConfig,
    ) -> Result<Redirector, BpfError> {
        if config.proxy.port() == 0 || config.dns_port == 0 {
            return Err(BpfError::BadConfig(config));
        }
        // A panic on the loader thread is this thread's panic: loading again
        // here would put this thread in the loader's private mount namespace.
        let mut ebpf = loader
            .0
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;

        // Configure before anything is attached: unconfigured programs refuse.
        let map_err = |name| {
            move |e| BpfError::Map {
                name,
                source: Box::new(e),
            }
        };
        {
            let map = ebpf
                .map_mut("config")
                .ok_or(BpfError::Missing("map config"))?;
            let mut array: Array<_, [u8; 8]> = Array::try_from(map).map_err(map_err("config"))?;
            array
                .set(0, encode_config(&config), 0)
                .map_err(map_err("config"))?;
        }
        let orig_map = ebpf
            .take_map("orig_dst")
            .ok_or(BpfError::Missing("map orig_dst"))?;
        let orig: OrigMap = HashMap::try_from(orig_map).map_err(map_err("orig_dst"))?;

        let cgroup_path = cgroup.path().to_owned();
        let attach_err = |section: String| {
            let cgroup = cgroup_path.clone();
            move |e: ProgramError| {
                let detail = cause_chain(&e);
                BpfError::Attach {
                    hint: attach_hint(&detail),
                    section,
                    cgroup,
                    detail,
                }
            }
        };
        // sockops first, connect4 last: by the time a connection can be
        // rewritten, its original destination can be recorded.
        sockops(&mut ebpf)?
            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(attach_err("sockops".into()))?;
        for name in SOCK_ADDR_PROGRAMS {
            sock_addr(&mut ebpf, name)?
                .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                .map_err(attach_err(format!("cgroup/{name}")))?;
        }
        Ok(Redirector {
            _ebpf: ebpf,
            orig: BpfOriginalDst {
                map: Arc::new(Mutex::new(orig)),
            },
            cgroup: cgroup_path,
        })
    }

    /// What the proxy asks where a redirected connection was going. Stays
    /// usable (answering "not found") after the redirector is dropped.
    pub fn original_dst(&self) -> BpfOriginalDst {
        self.orig.clone()
    }
}

/// `e`, then each of its sources, joined by ": ".
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn attach_hint(detail: &str) -> &'static str {
    if detail.contains("Operation not permitted") || detail.contains("Permission denied") {
        " (attaching BPF programs to a cgroup needs root: CAP_BPF and CAP_NET_ADMIN)"
    } else {
        ""
    }
}

/// The `config` map's value (`struct config` in the C source): proxy IPv4
/// address, proxy port, DNS port, all in network byte order.
pub fn encode_config(config: &RedirectConfig) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[0..4].copy_from_slice(&config.proxy.ip().octets());
    v[4..6].copy_from_slice(&config.proxy.port().to_be_bytes());
    v[6..8].copy_from_slice(&config.dns_port.to_be_bytes());
    v
}

/// The `orig_dst` map's key (`struct peer_key`) for a client whose local
/// address (the proxy's peer) is `peer`: address in network byte order,
/// port as a host-order `u32`, as `bpf_sock_ops` gives them.
pub fn encode_peer_key(peer: SocketAddrV4) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[0..4].copy_from_slice(&peer.ip().octets());
    k[4..8].copy_from_slice(&u32::from(peer.port()).to_ne_bytes());
    k
}

/// Decodes an `orig_dst` value (`struct orig`: address and port in network
/// byte order, then a flag and padding).
pub fn decode_orig(value: [u8; 8]) -> SocketAddrV4 {
    let ip = Ipv4Addr::new(value[0], value[1], value[2], value[3]);
    SocketAddrV4::new(ip, u16::from_be_bytes([value[4], value[5]]))
}

/// `orig_dst`: `encode_peer_key` → `struct orig`.
type OrigMap = HashMap<MapData, [u8; 8], [u8; 8]>;

/// The eBPF redirector's answer to "where was this connection going":
/// looks the accepted stream's peer up in the `orig_dst` map and deletes the
/// entry (each connection is asked once; the map is LRU-bounded anyway).
#[derive(Clone)]
pub struct BpfOriginalDst {
    map: Arc<Mutex<OrigMap>>,
}

impl BpfOriginalDst {
    /// The original destination of the connection whose client side is
    /// `peer`, removed from the map.
    pub fn take(&self, peer: SocketAddrV4) -> io::Result<SocketAddrV4> {
        let key = encode_peer_key(peer);
        let mut map = self
            .map
            .lock()
            .map_err(|_| io::Error::other("the original-destination map lock is poisoned"))?;
        let value = match map.get(&key, 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no original destination recorded for {peer} (not a redirected \
                         connection from the sandbox)"
                    ),
                ));
            }
            Err(e) => return Err(io::Error::other(format!("reading orig_dst: {e}"))),
        };
        // Gone already is fine: the answer stands.
        let _ = map.remove(&key);
        Ok(decode_orig(value))
    }
}

impl std::fmt::Debug for BpfOriginalDst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfOriginalDst").finish_non_exhaustive()
    }
}

impl OriginalDst for BpfOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        match stream.peer_addr()? {
            SocketAddr::V4(peer) => self.take(peer).map(SocketAddr::V4),
            SocketAddr::V6(peer) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{peer}: the eBPF redirector only redirects IPv4"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_network_order() {
        let c = RedirectConfig {
            proxy: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 0x1234),
            dns_port: 53,
        };
        assert_eq!(encode_config(&c), [127, 0, 0, 1, 0x12, 0x34, 0, 53]);
    }

    #[test]
    fn peer_key_matches_bpf_sock_ops_layout() {
        let k = encode_peer_key(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 40000));
        assert_eq!(&k[..4], &[127, 0, 0, 1]);
        // local_port: a host-order u32.
        assert_eq!(u32::from_ne_bytes([k[4], k[5], k[6], k[7]]), 40000);
    }

    #[test]
    fn orig_decodes_network_order() {
        assert_eq!(
            decode_orig([198, 18, 0, 7, 0x01, 0xbb, 1, 0]),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 7), 443)
        );
    }

    #[test]
    fn object_is_embedded_when_clang_was_there() {
        // Built without clang the object is empty and attach says so; with
        // clang it is an ELF file.
        if OBJECT.is_empty() {
            assert!(BpfError::NotBuilt.to_string().contains("--redirect nft"));
        } else {
            assert_eq!(&OBJECT[..4], b"\x7fELF");
        }
    }

    #[test]
    fn attach_errors_name_program_and_cgroup() {
        let denied = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(nix::libc::EPERM),
        });
        let detail = cause_chain(&denied);
        let e = BpfError::Attach {
            section: "cgroup/connect4".into(),
            cgroup: PathBuf::from("/sys/fs/cgroup/unified/moat/ab12"),
            hint: attach_hint(&detail),
            detail,
        };
        let s = e.to_string();
        assert!(
            s.starts_with(
                "attaching cgroup/connect4 to /sys/fs/cgroup/unified/moat/ab12: \
                 `bpf_link_create` failed: Operation not permitted"
            ),
            "{s}"
        );
        assert!(s.contains("needs root"), "{s}");
    }
}
