//! A hidden prompt on the terminal. Unlike printing a prompt and then
//! turning echo off, echo goes off *before* the prompt appears, so a token
//! pasted the instant the prompt shows is never echoed to the screen.

use std::io::{BufRead, Write};

use anyhow::{Context as _, Result};
use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};

/// Ask for a secret on `/dev/tty` without echoing it; the line, without its
/// line ending.
pub fn hidden(prompt: &str) -> Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("opening the terminal")?;
    let saved = tcgetattr(&tty).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet).context("turning echo off")?;
    // Restored on every path, errors and panics included.
    struct Restore<'a>(&'a std::fs::File, nix::sys::termios::Termios);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = tcsetattr(self.0, SetArg::TCSAFLUSH, &self.1);
        }
    }
    let _restore = Restore(&tty, saved);
    (&tty).write_all(prompt.as_bytes())?;
    (&tty).flush()?;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::BufReader::new(&tty)
        .read_line(&mut line)
        .context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
