//! The argument lists of Moat's internal commands (`__sandbox-init`,
//! `__env-init`, `__container-init`): `--flag [VALUE…]` up to `--`, then
//! the command. Moat writes them itself, so the parser is small and strict:
//! an unknown flag or a missing value is an error, and so is no command.

use std::ffi::OsString;

/// Reads one internal command line.
pub struct Argv {
    it: std::vec::IntoIter<OsString>,
    command: Vec<OsString>,
}

impl Argv {
    pub fn new(raw: Vec<OsString>) -> Self {
        Self {
            it: raw.into_iter(),
            command: Vec::new(),
        }
    }

    /// The next flag (`Ok(None)` once `--` has taken the rest as the
    /// command, or at the end).
    pub fn flag(&mut self) -> Result<Option<String>, String> {
        let Some(a) = self.it.next() else {
            return Ok(None);
        };
        match a.to_str() {
            Some("--") => {
                self.command = self.it.by_ref().collect();
                Ok(None)
            }
            Some(f) if f.starts_with("--") => Ok(Some(f.to_owned())),
            _ => Err(unexpected(&a)),
        }
    }

    /// The value after `flag`.
    pub fn value(&mut self, flag: &str) -> Result<OsString, String> {
        self.it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))
    }

    /// A `UID:GID` value after `flag`.
    pub fn ids(&mut self, flag: &str) -> Result<(u32, u32), String> {
        let v = self.value(flag)?.to_string_lossy().into_owned();
        let (u, g) = v.split_once(':').ok_or(format!("{flag} UID:GID"))?;
        Ok((
            u.parse().map_err(|_| "bad uid")?,
            g.parse().map_err(|_| "bad gid")?,
        ))
    }

    /// The command after `--`; an error when there is none.
    pub fn command(self) -> Result<Vec<OsString>, String> {
        if self.command.is_empty() {
            return Err("no command".into());
        }
        Ok(self.command)
    }
}

/// The error for a flag the command does not take.
pub fn unexpected(flag: impl AsRef<std::ffi::OsStr>) -> String {
    format!("unexpected argument {}", flag.as_ref().to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Argv {
        Argv::new(a.iter().map(OsString::from).collect())
    }

    #[test]
    fn flags_values_and_the_command_after_the_separator() {
        let mut a = argv(&["--x", "v", "--run-as", "1:2", "--", "sh", "--x"]);
        assert_eq!(a.flag().unwrap().as_deref(), Some("--x"));
        assert_eq!(a.value("--x").unwrap(), "v");
        assert_eq!(a.flag().unwrap().as_deref(), Some("--run-as"));
        assert_eq!(a.ids("--run-as").unwrap(), (1, 2));
        assert_eq!(a.flag().unwrap(), None);
        assert_eq!(a.command().unwrap(), ["sh", "--x"]);
    }

    #[test]
    fn strict_about_what_moat_never_writes() {
        let mut a = argv(&["--x"]);
        assert_eq!(a.flag().unwrap().as_deref(), Some("--x"));
        assert_eq!(a.value("--x").unwrap_err(), "--x needs a value");
        assert!(argv(&["stray"]).flag().is_err());
        let mut a = argv(&["--run-as", "1"]);
        a.flag().unwrap();
        assert!(a.ids("--run-as").is_err());
        let mut a = argv(&["--"]);
        assert_eq!(a.flag().unwrap(), None);
        assert_eq!(a.command().unwrap_err(), "no command");
    }
}
