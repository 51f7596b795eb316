//! The host terminal while attached to the container's TTY.

use bollard::Docker;
use bollard::query_parameters::ResizeContainerTTYOptions;

pub(super) fn terminal_size() -> Option<(i32, i32)> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the struct we pass.
    let r = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((i32::from(ws.ws_col), i32::from(ws.ws_row)))
}

pub(super) fn resize(rt: &crate::net::runtime::ProxyRuntime, docker: &Docker, name: &str) {
    if let Some((w, h)) = terminal_size() {
        let _ = rt.block_on(docker.resize_container_tty(name, ResizeContainerTTYOptions { w, h }));
    }
}

/// The host terminal in raw mode while attached to the container's TTY;
/// restored on drop.
pub(super) struct RawMode(nix::libc::termios);

impl RawMode {
    pub(super) fn enter() -> Option<Self> {
        // SAFETY: plain termios calls on stdin with a zeroed struct to fill.
        unsafe {
            let mut t: nix::libc::termios = std::mem::zeroed();
            if nix::libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            nix::libc::cfmakeraw(&mut t);
            if nix::libc::tcsetattr(0, nix::libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(Self(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe {
            nix::libc::tcsetattr(0, nix::libc::TCSANOW, &self.0);
        }
    }
}
