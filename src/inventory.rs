//! The device model every other module speaks: one [`Device`] per mock-accel function, as
//! discovered from sysfs, recorded in `MockAccelNode.status` and published in ResourceSlices.
//!
//! This module knows nothing of files, clients or sockets. It owns the naming rules that must
//! agree across the node agent and the controller: DRA device names (DNS labels derived from
//! sysfs names) and pool names (unique cluster-wide, one per node and NUMA node).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Default driver name; every use reads the `--driver-name` flag, this is only its default.
pub const DEFAULT_DRIVER_NAME: &str = "mock-accel.example.com";

/// Longest DNS label Kubernetes accepts (device names, pool path segments).
pub const DNS_LABEL_MAX: usize = 63;

/// Physical or virtual function. Decided from sysfs facts (a `physfn` link or PCI device id
/// `0x0002`), never from the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    Pf,
    Vf,
}

impl DeviceType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Pf => "pf",
            DeviceType::Vf => "vf",
        }
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One mock-accel function on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// DRA device name: a DNS label derived from `sysfs_name` (`mock0_vf0` → `mock0-vf0`).
    pub name: String,
    /// Class device name under `/sys/class/mock-accel/` (also the `/dev` node name).
    pub sysfs_name: String,
    pub device_type: DeviceType,
    /// Lowercase `%pUb` UUID as the kernel prints it.
    pub uuid: String,
    /// Bytes; may be 0 on 16 GiB PFs (the kernel reads the register as two dwords).
    pub memory: u64,
    /// PCI BDF `DDDD:BB:DD.F`.
    pub pci_address: String,
    /// `pci<domain>:<bus>` of the root complex, when the `bus/pci/devices` link resolves.
    pub pcie_root: Option<String>,
    /// `None` when the kernel reports `-1` (no NUMA information).
    pub numa_node: Option<u32>,
    /// VFs: the parent PF's DRA device name.
    pub physfn: Option<String>,
    pub capabilities: u32,
    /// Last read value of the status register.
    pub status: u32,
    /// `major.minor.patch` firmware version, when the attribute is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_version: Option<String>,
}

impl Device {
    /// The pool this device is published in on `node`.
    pub fn pool(&self, node: &str) -> String {
        pool_name(node, self.numa_node)
    }
}

/// Everything discovered on one node, sorted by DRA name so that every consumer sees the same
/// order (slice content, status diffs and printed tables stay stable across scans).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub devices: Vec<Device>,
}

impl Inventory {
    pub fn new(mut devices: Vec<Device>) -> Self {
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        Inventory { devices }
    }

    pub fn get(&self, name: &str) -> Option<&Device> {
        self.devices
            .binary_search_by(|d| d.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.devices[i])
    }

    pub fn count(&self, t: DeviceType) -> usize {
        self.devices.iter().filter(|d| d.device_type == t).count()
    }
}

/// Why a name cannot be used as a DRA device name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name {name:?} is empty after mapping to a DNS label")]
    Empty { name: String },
    #[error("name {name:?} maps to {label:?}, longer than {DNS_LABEL_MAX} characters")]
    TooLong { name: String, label: String },
    #[error(
        "name {name:?} maps to {label:?}, which is not a DNS label (lowercase letters, digits and '-', alphanumeric at both ends)"
    )]
    Invalid { name: String, label: String },
}

/// Maps a sysfs class name to a DRA device name: lowercase, `_` and `.` become `-`.
/// Anything else outside `[a-z0-9-]` is rejected rather than silently dropped, so two sysfs
/// names can never collapse onto one device name by accident.
pub fn dra_device_name(sysfs_name: &str) -> Result<String, NameError> {
    let label: String = sysfs_name
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if label.is_empty() {
        return Err(NameError::Empty {
            name: sysfs_name.to_string(),
        });
    }
    if label.len() > DNS_LABEL_MAX {
        return Err(NameError::TooLong {
            name: sysfs_name.to_string(),
            label,
        });
    }
    if !is_dns_label(&label) {
        return Err(NameError::Invalid {
            name: sysfs_name.to_string(),
            label,
        });
    }
    Ok(label)
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS_LABEL_MAX
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Pool name, unique cluster-wide: `<node>/numa<N>`, or `<node>/numa-none` for devices whose
/// `numa_node` is -1.
pub fn pool_name(node: &str, numa_node: Option<u32>) -> String {
    match numa_node {
        Some(n) => format!("{node}/numa{n}"),
        None => format!("{node}/numa-none"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vf_names_become_dns_labels() {
        assert_eq!(dra_device_name("mock0_vf0").unwrap(), "mock0-vf0");
        assert_eq!(dra_device_name("mock12").unwrap(), "mock12");
        assert_eq!(dra_device_name("Mock3").unwrap(), "mock3");
    }

    #[test]
    fn bad_names_are_rejected_with_the_name() {
        let err = dra_device_name("../etc").unwrap_err();
        assert!(err.to_string().contains("../etc"), "{err}");
        assert!(matches!(dra_device_name(""), Err(NameError::Empty { .. })));
        assert!(matches!(
            dra_device_name("_mock"),
            Err(NameError::Invalid { .. })
        ));
        assert!(matches!(
            dra_device_name(&"a".repeat(64)),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            dra_device_name("mock/0"),
            Err(NameError::Invalid { .. })
        ));
    }

    #[test]
    fn pools_carry_the_node_name() {
        assert_eq!(pool_name("node1", Some(0)), "node1/numa0");
        assert_eq!(pool_name("node1", None), "node1/numa-none");
    }

    #[test]
    fn inventory_is_sorted_and_searchable() {
        let mk = |n: &str, t| Device {
            name: n.into(),
            sysfs_name: n.into(),
            device_type: t,
            uuid: String::new(),
            memory: 0,
            pci_address: String::new(),
            pcie_root: None,
            numa_node: None,
            physfn: None,
            capabilities: 1,
            status: 1,
            fw_version: None,
        };
        let inv = Inventory::new(vec![
            mk("mock2", DeviceType::Vf),
            mk("mock0", DeviceType::Pf),
        ]);
        assert_eq!(inv.devices[0].name, "mock0");
        assert_eq!(inv.get("mock2").unwrap().device_type, DeviceType::Vf);
        assert!(inv.get("mock9").is_none());
        assert_eq!(inv.count(DeviceType::Pf), 1);
    }
}
