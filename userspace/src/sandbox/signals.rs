//! Signals sent to Moat, passed on to the command it runs.
//!
//! A terminal sends Ctrl-C (SIGINT), Ctrl-\ (SIGQUIT) and a hangup (SIGHUP)
//! to its whole foreground process group, the command included: those reach
//! it already and must not arrive twice. A signal another process sent to
//! Moat (`kill -INT`, systemd, `moat stop`) reaches only Moat and is passed
//! on. The kernel tells the two apart (`si_code`), so Moat does too.

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::Cause;

/// The signals [`forward_to`] passes on.
pub const FORWARDED: [i32; 4] = [SIGTERM, SIGINT, SIGQUIT, SIGHUP];

/// From now on, [`FORWARDED`] signals a process sends to Moat go to `pid`
/// (from a background thread); Moat itself no longer dies of them.
pub fn forward_to(pid: i32) -> std::io::Result<()> {
    let mut signals = SignalsInfo::<WithOrigin>::new(FORWARDED)?;
    std::thread::Builder::new()
        .name("moat-signals".into())
        .spawn(move || {
            for origin in &mut signals {
                if should_forward(origin.cause) {
                    // SAFETY: kill(2) with a pid we started and a valid signal.
                    unsafe { nix::libc::kill(pid, origin.signal) };
                }
            }
        })?;
    Ok(())
}

/// Sent by a process (kill, sigqueue, tgkill): yes. From the kernel (the
/// terminal's line discipline) or unknown: no, the group got it already.
fn should_forward(cause: Cause) -> bool {
    matches!(cause, Cause::Sent(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use signal_hook::low_level::siginfo::Sent;

    #[test]
    fn forwards_what_a_process_sent_and_not_what_the_terminal_sent() {
        assert!(should_forward(Cause::Sent(Sent::User)));
        assert!(should_forward(Cause::Sent(Sent::TKill)));
        assert!(should_forward(Cause::Sent(Sent::Queue)));
        assert!(!should_forward(Cause::Kernel));
        assert!(!should_forward(Cause::Unknown));
    }
}
