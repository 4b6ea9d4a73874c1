//! The device model every other module speaks: one [`Device`] per mock-accel function, as
//! discovered from sysfs, recorded in `MockAccelNode.status` and published in ResourceSlices.
//!
//! This module knows nothing of files, clients or sockets. The naming rules that must agree
//! across the node agent and the controller (DRA device names derived from sysfs names, pool
//! names) live in [`crate::names`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names;

/// Default driver name; every use reads the `--driver-name` flag, this is only its default.
pub const DEFAULT_DRIVER_NAME: &str = "mock-accel.example.com";

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

/// Whether a device can be used, as the node agent reports it in `MockAccelNode.status` and to
/// the kubelet (derived in [`crate::health`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy,
    /// The agent cannot read the device (or `spec.health` declares it so).
    Unknown,
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
    /// `pci<domain>:<bus>` of the root complex, when the class link's target names one.
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
        names::pool_name(node, self.numa_node)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::devices;

    #[test]
    fn inventory_is_sorted_and_searchable() {
        let mk = |n: &str, t| devices::pf(n).device_type(t).build();
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
