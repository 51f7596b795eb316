//! Where a redirected connection was going: the seam between the
//! redirectors (the sandbox's nftables rules or eBPF programs) and the
//! proxy's transparent listener.
//!
//! The syscall or map lookup stays behind [`OriginalDst`]; the proxy sees
//! only the address (and, through [`NameLookup`], the name the client
//! resolved). The sandbox implements the trait, the proxy consumes it, and
//! neither depends on the other.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

/// Where a redirected connection was going. Kept behind a trait so the
/// nftables (`SO_ORIGINAL_DST`) and eBPF (map lookup) redirectors plug in.
pub trait OriginalDst: Send + Sync {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
}

/// `SO_ORIGINAL_DST`, for connections redirected by netfilter.
pub struct SoOriginalDst;

impl OriginalDst for SoOriginalDst {
    #[cfg(target_os = "linux")]
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        use nix::sys::socket::{getsockopt, sockopt};
        let v4 = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
        Ok(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
    }

    #[cfg(not(target_os = "linux"))]
    fn original_dst(&self, _stream: &TcpStream) -> io::Result<SocketAddr> {
        Err(io::Error::other("SO_ORIGINAL_DST exists on Linux only"))
    }
}

/// Maps a destination address back to the name the client resolved
/// (Moat's DNS hands out synthetic addresses); `None` keeps the address.
pub type NameLookup = Arc<dyn Fn(std::net::IpAddr) -> Option<String> + Send + Sync>;
