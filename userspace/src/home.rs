//! Where Moat keeps its state (`$MOAT_HOME`, default `~/.moat`) and who owns it.
//!
//! Under `sudo`, Moat works in the *invoking* user's home and leaves every file
//! it creates owned by that user, so a later unprivileged `moat` can read it.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The uid/gid that files Moat creates must belong to (the `sudo` caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Moat's state directory and the identity its files belong to.
#[derive(Debug, Clone)]
pub struct MoatHome {
    root: PathBuf,
    owner: Option<Owner>,
}

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot find a home directory: set MOAT_HOME or HOME")]
    NoHome,
    #[error("SUDO_USER is '{0}' but no such user exists; run without sudo or set MOAT_HOME")]
    UnknownSudoUser(String),
    #[error("running under sudo for '{user}', whose home {} does not exist; set MOAT_HOME", home.display())]
    NoSudoUserHome { user: String, home: PathBuf },
}

impl MoatHome {
    /// Resolve from the environment: `MOAT_HOME`, else the sudo caller's
    /// `~/.moat`, else `$HOME/.moat`.
    pub fn from_env() -> Result<Self, HomeError> {
        let owner = sudo_owner();
        if let Some(dir) = non_empty_var("MOAT_HOME") {
            return Ok(Self::new(PathBuf::from(dir), owner));
        }
        if owner.is_some()
            && let Some(user) = non_empty_var("SUDO_USER")
        {
            let name = user.to_string_lossy().into_owned();
            let found = nix::unistd::User::from_name(&name).ok().flatten();
            let user = found.ok_or_else(|| HomeError::UnknownSudoUser(name.clone()))?;
            // Never create a user's home as root (nobody's is /nonexistent).
            if !user.dir.is_dir() {
                return Err(HomeError::NoSudoUserHome {
                    user: name,
                    home: user.dir,
                });
            }
            return Ok(Self::new(user.dir.join(".moat"), owner));
        }
        let home = non_empty_var("HOME").ok_or(HomeError::NoHome)?;
        Ok(Self::new(PathBuf::from(home).join(".moat"), owner))
    }

    pub fn new(root: PathBuf, owner: Option<Owner>) -> Self {
        Self { root, owner }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    pub fn credentials_dir(&self) -> PathBuf {
        self.root.join("credentials")
    }

    pub fn providers_dir(&self) -> PathBuf {
        self.root.join("providers")
    }

    pub fn key_file(&self) -> PathBuf {
        self.root.join("encryption.key")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }

    /// Create `dir` and any missing parents with mode 0700, owned by [`Owner`].
    pub fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.ensure_dir(parent)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => self.chown(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Give a file Moat created to the sudo caller (no-op otherwise).
    pub fn chown(&self, path: &Path) -> io::Result<()> {
        match self.owner {
            Some(o) => std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid)),
            None => Ok(()),
        }
    }

    /// Set a file's mode and owner in one place.
    pub fn seal_perms(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        self.chown(path)
    }
}

/// Under `sudo` as root, the invoking user (from `SUDO_UID`/`SUDO_GID`).
pub fn sudo_owner() -> Option<Owner> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let uid = var_u32("SUDO_UID")?;
    let gid = var_u32("SUDO_GID")?;
    (uid != 0).then_some(Owner { uid, gid })
}

fn var_u32(name: &str) -> Option<u32> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn non_empty_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}
