//! Replacing a file so that a reader (or a crash) sees either the old content or the new one,
//! never a mix: the CDI specs the container runtime reads and the plugin's checkpoint both rely
//! on it.
//!
//! How far a replace must survive is the caller's choice ([`Durability`]). A crash of the
//! process needs nothing beyond the rename: the page cache belongs to the kernel, so every later
//! reader, the restarted process included, sees the old file or the new one. Only a power loss
//! or a kernel crash can lose a rename that was not flushed, and that means a reboot, after which
//! the status registers and `/var/run/cdi` (a tmpfs) are gone and the kubelet prepares its pods'
//! claims again: the checkpoint and the CDI specs are written for the process crash only (the
//! checkpoint is set aside when the boot changed, see `plugin::prepare::boot`), which spares
//! every prepare and unprepare the disk flushes that dominated their latency.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

/// Suffix of the temporary file written next to the target. It must not end in `.json` or
/// `.yaml`, so that a CDI runtime scanning the directory never loads a half-written spec.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The temporary sibling `write_atomically` uses for `path`: `.<file name>.tmp` in the same
/// directory (a rename is only atomic within one file system).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

/// What a replace or a removal must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A crash of this process: the rename alone gives it, with no flush to disk. For files
    /// that describe state a reboot clears anyway.
    ProcessCrash,
    /// A power loss or a kernel crash too: the file is flushed before the rename and the
    /// directory after it.
    PowerLoss,
}

/// Writes `bytes` to a temporary sibling and renames it over `path`; with
/// [`Durability::PowerLoss`] the file is flushed to disk first and the directory after, so
/// that the rename itself survives a power loss.
pub fn write_atomically(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = write_and_rename(&tmp, path, bytes, durability);
    if result.is_err() {
        // Best effort: a leftover temp file is harmless (never loaded), only untidy.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_and_rename(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    durability: Durability,
) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    file.write_all(bytes)?;
    if durability == Durability::PowerLoss {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(tmp, path)?;
    if durability == Durability::PowerLoss {
        sync_parent(path)?;
    }
    Ok(())
}

/// Removes `path` if it exists; with [`Durability::PowerLoss`] the directory is flushed after.
/// `Ok(false)` when there was nothing to remove.
pub fn remove(path: &Path, durability: Durability) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            if durability == Durability::PowerLoss {
                sync_parent(path)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// What to do about a failed write, for the error message: a full or read-only file system
/// says so, anything else falls back to `otherwise` (usually a permission question).
pub fn remedy<'a>(e: &io::Error, otherwise: &'a str) -> &'a str {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "the file system is full: free space on it; nothing was half-written and the next call retries"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            "the file system is mounted read-only: remount it read-write; nothing was written"
        }
        _ => otherwise,
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.json");
        write_atomically(&path, b"one", Durability::PowerLoss).unwrap();
        write_atomically(&path, b"two", Durability::ProcessCrash).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("spec.json")]);
    }

    #[test]
    fn temp_name_is_hidden_and_not_a_spec_extension() {
        let tmp = temp_path(Path::new("/run/cdi/a-b_c.json"));
        assert_eq!(tmp, Path::new("/run/cdi/.a-b_c.json.tmp"));
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/spec.json");
        for durability in [Durability::ProcessCrash, Durability::PowerLoss] {
            assert!(write_atomically(&path, b"x", durability).is_err());
        }
        assert!(!path.exists());
    }

    #[test]
    fn remove_reports_whether_something_was_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        assert!(remove(&path, Durability::ProcessCrash).unwrap());
        assert!(!remove(&path, Durability::PowerLoss).unwrap());
    }
}
