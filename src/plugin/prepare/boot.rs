//! Setting aside a checkpoint written in an earlier boot of the node.
//!
//! The checkpoint is replaced by an atomic rename without a flush to disk (see
//! `crate::atomic_file`): it survives any crash of the node agent, but a power loss or a kernel
//! crash may leave an older version or, on a file system that does not order a rename after the
//! data it names, a torn one. Both mean a reboot, and after a reboot nothing the checkpoint
//! records exists any more: the status registers power on again, `/var/run/cdi` is a tmpfs, and
//! the kubelet prepares its pods' claims again. So at start, under the file lock, the agent
//! compares the boot id it recorded beside the checkpoint ([`BOOT_ID_FILE`]) with the kernel's
//! and, when they differ, moves the checkpoint aside (to `checkpoint.json`[`PREVIOUS_BOOT_SUFFIX`],
//! kept for inspection) and starts empty, rather than trusting or refusing a record of a boot
//! that is over. A plugin directory without the file (the first start of a release that
//! records it) keeps its checkpoint: nothing says it is from an earlier boot.

use std::{io, path::Path};

use crate::atomic_file::{self, Durability};

/// File in the plugin data directory holding the boot id of the agent that last started there.
pub const BOOT_ID_FILE: &str = "boot_id";

/// Appended to the checkpoint's file name when it is set aside.
pub const PREVIOUS_BOOT_SUFFIX: &str = ".previous-boot";

/// The kernel's id of the running boot, new at every boot.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The running boot's id, or `None` where the kernel does not tell it (then nothing is set
/// aside).
pub fn kernel_boot_id() -> Option<String> {
    std::fs::read_to_string(KERNEL_BOOT_ID)
        .ok()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

/// Whether a checkpoint beside the boot id `recorded` was written in an earlier boot than
/// `current`.
pub fn from_earlier_boot(recorded: Option<&str>, current: &str) -> bool {
    recorded.is_some_and(|recorded| recorded.trim() != current.trim())
}

/// What [`forget_earlier_boot`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum BootCheck {
    /// Same boot as the last start, or no record of one: the checkpoint is kept.
    Kept,
    /// The checkpoint was from an earlier boot and was moved to this path (`None`: there was
    /// no checkpoint to move).
    SetAside(Option<std::path::PathBuf>),
}

/// Moves `checkpoint` aside when the boot id recorded in `plugin_dir` is not `current`, then
/// records `current` (flushed to disk: it is written once per start, and it must outlive the
/// boot it names). Runs under the plugin directory's file lock. On an error the recorded id is
/// left as it was, so that the next start decides again.
pub fn forget_earlier_boot(
    plugin_dir: &Path,
    checkpoint: &Path,
    current: &str,
) -> io::Result<BootCheck> {
    let marker = plugin_dir.join(BOOT_ID_FILE);
    let recorded = match std::fs::read_to_string(&marker) {
        Ok(id) => Some(id),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if recorded.as_deref().map(str::trim) == Some(current.trim()) {
        return Ok(BootCheck::Kept);
    }
    let check = if from_earlier_boot(recorded.as_deref(), current) {
        let mut aside = checkpoint.as_os_str().to_owned();
        aside.push(PREVIOUS_BOOT_SUFFIX);
        let aside = std::path::PathBuf::from(aside);
        match std::fs::rename(checkpoint, &aside) {
            Ok(()) => BootCheck::SetAside(Some(aside)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BootCheck::SetAside(None),
            Err(e) => return Err(e),
        }
    } else {
        BootCheck::Kept
    };
    atomic_file::write_atomically(
        &marker,
        format!("{}\n", current.trim()).as_bytes(),
        Durability::PowerLoss,
    )?;
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_different_recorded_boot_is_earlier() {
        assert!(from_earlier_boot(Some("aaa\n"), "bbb"));
        assert!(!from_earlier_boot(Some("aaa\n"), "aaa"));
        assert!(!from_earlier_boot(None, "aaa"));
    }

    #[test]
    fn the_kernel_names_the_running_boot() {
        let id = kernel_boot_id().expect("Linux has /proc/sys/kernel/random/boot_id");
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(kernel_boot_id().as_deref(), Some(id.as_str()));
    }

    #[test]
    fn a_checkpoint_of_an_earlier_boot_is_moved_aside_once() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("checkpoint.json");
        std::fs::write(&checkpoint, b"old boot").unwrap();
        std::fs::write(dir.path().join(BOOT_ID_FILE), b"boot-1\n").unwrap();

        let aside = dir.path().join("checkpoint.json.previous-boot");
        assert_eq!(
            forget_earlier_boot(dir.path(), &checkpoint, "boot-2").unwrap(),
            BootCheck::SetAside(Some(aside.clone()))
        );
        assert!(!checkpoint.exists());
        assert_eq!(std::fs::read(&aside).unwrap(), b"old boot");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(BOOT_ID_FILE)).unwrap(),
            "boot-2\n"
        );

        // Written in this boot: kept at the next start.
        std::fs::write(&checkpoint, b"this boot").unwrap();
        assert_eq!(
            forget_earlier_boot(dir.path(), &checkpoint, "boot-2").unwrap(),
            BootCheck::Kept
        );
        assert_eq!(std::fs::read(&checkpoint).unwrap(), b"this boot");
    }

    #[test]
    fn without_a_recorded_boot_the_checkpoint_is_kept_and_the_boot_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("checkpoint.json");
        std::fs::write(&checkpoint, b"kept").unwrap();
        assert_eq!(
            forget_earlier_boot(dir.path(), &checkpoint, "boot-1").unwrap(),
            BootCheck::Kept
        );
        assert_eq!(std::fs::read(&checkpoint).unwrap(), b"kept");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(BOOT_ID_FILE)).unwrap(),
            "boot-1\n"
        );
        // An earlier boot with no checkpoint left: nothing to move.
        assert_eq!(
            forget_earlier_boot(dir.path(), &dir.path().join("absent.json"), "boot-2").unwrap(),
            BootCheck::SetAside(None)
        );
    }
}
