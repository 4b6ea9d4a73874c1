//! The status register (`status`: prepare writes 1, unprepare 0) and the device numbers (`dev`)
//! of one class device: the only sysfs writes the driver makes.

use std::path::Path;

use super::{
    SysfsError, check_sysfs_name, device_dir, parse_dev_numbers, parse_register, status_path,
};

/// Reads the status register; accepts decimal and `0x` hex (see [`parse_register`]).
pub fn read_status(root: &Path, sysfs_name: &str) -> Result<u32, SysfsError> {
    check_sysfs_name(root, sysfs_name)?;
    let path = status_path(root, sysfs_name);
    let text = std::fs::read_to_string(&path).map_err(|source| SysfsError::io(&path, source))?;
    parse_register(&text).map_err(|reason| SysfsError::parse(&path, &text, reason))
}

/// Writes `value` in decimal, as the kernel attribute accepts it.
pub fn write_status(root: &Path, sysfs_name: &str, value: u32) -> Result<(), SysfsError> {
    check_sysfs_name(root, sysfs_name)?;
    let path = status_path(root, sysfs_name);
    std::fs::write(&path, format!("{value}\n")).map_err(|source| SysfsError::io(&path, source))
}

/// Reads the class attribute `dev` (`major:minor`). `None` when it is absent (v0.1.0 created
/// class devices without a device number) or malformed.
pub fn read_dev_numbers(root: &Path, sysfs_name: &str) -> Option<(u32, u32)> {
    check_sysfs_name(root, sysfs_name).ok()?;
    let text = std::fs::read_to_string(device_dir(root, sysfs_name).join("dev")).ok()?;
    parse_dev_numbers(&text)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{
        sim::{self, TopologySpec},
        sysfs::dev_node_path,
    };

    fn canonical() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        sim::create(dir.path(), None, &TopologySpec::canonical(1)).unwrap();
        dir
    }

    fn put(root: &Path, name: &str, attr: &str, text: &str) {
        fs::write(device_dir(root, name).join(attr), text).unwrap();
    }

    #[test]
    fn status_register_round_trip_and_device_numbers() {
        let dir = canonical();
        let root = dir.path();
        assert_eq!(read_status(root, "mock0").unwrap(), 1);
        write_status(root, "mock0", 0).unwrap();
        assert_eq!(
            fs::read_to_string(status_path(root, "mock0")).unwrap(),
            "0\n"
        );
        assert_eq!(read_status(root, "mock0").unwrap(), 0);
        put(root, "mock0", "status", "0x00001234\n");
        assert_eq!(read_status(root, "mock0").unwrap(), 0x1234);
        assert_eq!(read_dev_numbers(root, "mock4"), Some((sim::SIM_MAJOR, 4)));
        assert_eq!(read_dev_numbers(root, "mock9"), None);
        assert_eq!(
            dev_node_path(Path::new("/dev"), "mock0_vf0"),
            Path::new("/dev/mock0_vf0")
        );
    }
}
