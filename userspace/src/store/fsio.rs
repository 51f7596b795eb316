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
