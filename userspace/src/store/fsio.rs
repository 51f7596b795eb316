//! Crash-safe file writes and the cross-process write lock.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::home::MoatHome;

/// Suffix of in-flight temporary files; any left behind are debris of a
/// killed writer and are removed by the next writer holding the lock.
pub const TMP_SUFFIX: &str = ".tmp";

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync,
/// rename, fsync the directory. A crash at any point leaves either the old
/// file or the new one, never a mix.
pub fn write_atomic(home: &MoatHome, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    home.ensure_dir(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(TMP_SUFFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    home.seal_perms(tmp.path(), mode)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// `name` (one plain path component) in `dir`, a directory the sandbox can
/// write too (an agent's state directory): replaced atomically by a file
/// made, chmodded and chowned through its own descriptor, so a symlink the
/// sandbox planted there is replaced, never followed.
pub fn replace_in_shared_dir(
    home: &MoatHome,
    dir: &Path,
    name: &Path,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    plain_name(name)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".moat-")
        .suffix(TMP_SUFFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    if let Some(o) = home.owner() {
        std::os::unix::fs::fchown(tmp.as_file(), Some(o.uid), Some(o.gid))?;
    }
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

/// `dir/name`'s bytes when it is a regular file (a symlink is not
/// followed); `None` otherwise.
pub fn read_in_shared_dir(dir: &Path, name: &Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    plain_name(name).ok()?;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(dir.join(name))
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut out = Vec::new();
    std::io::Read::take(&mut f, 1 << 20)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

fn plain_name(name: &Path) -> io::Result<()> {
    let mut parts = name.components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(_)), None) => Ok(()),
        _ => Err(io::Error::other(format!(
            "{} is not a plain file name",
            name.display()
        ))),
    }
}

/// Remove temp files a killed writer left in `dir`. Only call with the lock held.
pub fn sweep_debris(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TMP_SUFFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// An exclusive advisory lock on `$MOAT_HOME/.lock`, held until dropped.
/// Serializes writers across processes; readers need none (renames are atomic).
pub struct WriteLock {
    _file: File,
}

pub fn lock(home: &MoatHome) -> io::Result<WriteLock> {
    let path: PathBuf = home.lock_file();
    home.ensure_dir(home.root())?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    home.seal_perms(&path, 0o600)?;
    file.lock()?;
    Ok(WriteLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_dir_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep me").unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        std::os::unix::fs::symlink(&victim, shared.join("settings.json")).unwrap();
        let home = MoatHome::new(dir.path().join("home"), None);
        assert_eq!(
            read_in_shared_dir(&shared, Path::new("settings.json")),
            None
        );
        replace_in_shared_dir(&home, &shared, Path::new("settings.json"), b"{}", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
        let meta = fs::symlink_metadata(shared.join("settings.json")).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            read_in_shared_dir(&shared, Path::new("settings.json")).unwrap(),
            b"{}"
        );
        for bad in ["../victim", "a/b", "/etc/passwd", ""] {
            assert!(
                replace_in_shared_dir(&home, &shared, Path::new(bad), b"x", 0o600).is_err(),
                "{bad}"
            );
        }
    }
}
