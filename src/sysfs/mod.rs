//! Reading the mock-accel class devices from a sysfs tree (real or simulated) and writing
//! their status register.
//!
//! The layout and formats are the kernel module's (see the sysfs contract): class entries in
//! `class/mock-accel/` are symlinks into `devices/pci…/<BDF>/mock-accel/<name>`, the class
//! directory's `device` link names the PCI function, `device/physfn` marks a real SR-IOV VF and
//! `device/device` = `0x0002` a static VF.
//!
//! - [`class_link`]: what a class entry's link target says (PCI address, pcieRoot, the path of
//!   the class directory), pure.
//! - [`parse`]: the pure value parsers, one per format the kernel prints (integers as
//!   `kstrtou32` reads them, BDFs, UUIDs, NUMA nodes, firmware versions).
//! - [`scan`]: a tree becomes an [`crate::inventory::Inventory`]; a device whose files are
//!   missing or malformed becomes a warning and is left out, so one broken function never hides
//!   the others.
//! - [`register`]: the status register and device numbers of one device.
//!
//! This module holds what they share: the paths of the layout and the one error type.

pub mod class_link;
pub mod parse;
pub mod register;
pub mod scan;

use std::path::{Path, PathBuf};

pub use self::{
    parse::{
        Bdf, parse_dev_numbers, parse_fw_version, parse_kernel_u32, parse_kernel_u64, parse_numa,
        parse_register, parse_uuid,
    },
    register::{read_dev_numbers, read_status, write_status},
    scan::{Scan, scan, scan_on_threads},
};

/// The module's device class: the class directory's name, the directory the kernel puts each
/// class device in below its PCI function, and the uevents' SUBSYSTEM.
pub const CLASS_NAME: &str = "mock-accel";
/// Class directory, relative to the sysfs root (`class/` and [`CLASS_NAME`]).
pub const CLASS_DIR: &str = "class/mock-accel";
/// PCI bus device links, relative to the sysfs root (the simulator makes them; the scan takes
/// the pcieRoot from the class links, which name the same directories).
pub const PCI_BUS_DEVICES_DIR: &str = "bus/pci/devices";
/// PCI vendor id of every mock-accel function, as `device/vendor` prints it.
pub const PCI_VENDOR: &str = "0x1de5";
/// PCI device id of a physical function, as `device/device` prints it.
pub const PCI_DEVICE_PF: &str = "0x0001";
/// PCI device id of a VF, static function or real SR-IOV VF alike.
pub const PCI_DEVICE_VF: &str = "0x0002";

/// What failed, on which file. Every variant's message starts with the path it concerns, so a
/// warning prints as `warning: <file>: <problem>`.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {value:?}: {reason}", path = path.display())]
    Parse {
        path: PathBuf,
        value: String,
        reason: String,
    },
    #[error("{path}: {problem}", path = path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error(
        "{path}: directory missing; the mock-accel module is not loaded (or the root is not a sysfs tree), so no devices",
        path = path.display()
    )]
    ModuleNotLoaded { path: PathBuf },
    #[error("{source}; device {device} skipped")]
    DeviceSkipped {
        device: String,
        source: Box<SysfsError>,
    },
}

impl SysfsError {
    /// The file or directory the error concerns.
    pub fn path(&self) -> &Path {
        match self {
            SysfsError::Io { path, .. }
            | SysfsError::Parse { path, .. }
            | SysfsError::Invalid { path, .. }
            | SysfsError::ModuleNotLoaded { path } => path,
            SysfsError::DeviceSkipped { source, .. } => source.path(),
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        SysfsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn invalid(path: &Path, problem: impl Into<String>) -> Self {
        SysfsError::Invalid {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    fn parse(path: &Path, value: &str, reason: impl Into<String>) -> Self {
        SysfsError::Parse {
            path: path.to_path_buf(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// `<root>/class/mock-accel/<sysfs name>`: the class device directory (through its symlink).
pub fn device_dir(root: &Path, sysfs_name: &str) -> PathBuf {
    root.join(CLASS_DIR).join(sysfs_name)
}

/// `<dev root>/<sysfs name>`: the character device node.
pub fn dev_node_path(dev_root: &Path, sysfs_name: &str) -> PathBuf {
    dev_root.join(sysfs_name)
}

/// `<root>/class/mock-accel/<sysfs name>/status`.
pub fn status_path(root: &Path, sysfs_name: &str) -> PathBuf {
    device_dir(root, sysfs_name).join("status")
}

/// Refuses names that could leave the class directory when joined to a path (`/`, `..`, NUL,
/// empty). The kernel never creates such names; a tree that holds one is not to be trusted.
pub fn check_sysfs_name(root: &Path, sysfs_name: &str) -> Result<(), SysfsError> {
    if sysfs_name.is_empty()
        || sysfs_name.contains('/')
        || sysfs_name.contains('\0')
        || sysfs_name.contains("..")
        || sysfs_name == "."
    {
        return Err(SysfsError::invalid(
            &root.join(CLASS_DIR),
            format!(
                "refusing class entry {sysfs_name:?}: a device name must not contain '/', '..' or NUL"
            ),
        ));
    }
    Ok(())
}
