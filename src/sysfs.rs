//! Reading the mock-accel class devices from a sysfs tree (real or simulated) and writing
//! their status register. TODO: discovery.

use std::path::{Path, PathBuf};

/// What failed, on which file.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {value:?}: {reason}")]
    Parse {
        path: PathBuf,
        value: String,
        reason: String,
    },
}

/// `<root>/class/mock-accel/<sysfs name>/status`.
pub fn status_path(root: &Path, sysfs_name: &str) -> PathBuf {
    root.join("class/mock-accel")
        .join(sysfs_name)
        .join("status")
}

/// Parses a register value as the kernel's `kstrtou32(.., 0, ..)` does for our purposes:
/// decimal or `0x` hex, optional trailing newline.
pub fn parse_register(text: &str) -> Result<u32, String> {
    let t = text.trim_end_matches('\n').trim();
    let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else {
        t.parse::<u32>()
    };
    parsed.map_err(|e| e.to_string())
}

pub fn read_status(root: &Path, sysfs_name: &str) -> Result<u32, SysfsError> {
    let path = status_path(root, sysfs_name);
    let text = std::fs::read_to_string(&path).map_err(|source| SysfsError::Io {
        path: path.clone(),
        source,
    })?;
    parse_register(&text).map_err(|reason| SysfsError::Parse {
        path,
        value: text.clone(),
        reason,
    })
}

/// Writes `value` in decimal, as the kernel attribute accepts it.
pub fn write_status(root: &Path, sysfs_name: &str, value: u32) -> Result<(), SysfsError> {
    let path = status_path(root, sysfs_name);
    std::fs::write(&path, format!("{value}\n")).map_err(|source| SysfsError::Io { path, source })
}
