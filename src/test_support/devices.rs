//! [`Device`] fixtures: one builder with plausible defaults, so that a test states only the
//! facts it is about (`pf("mock0").numa(Some(1))`, `vf("mock0_vf0", "mock0")`).

use crate::{
    inventory::{Device, DeviceType},
    names::dra_device_name,
};

/// A device under construction; [`DeviceBuilder::build`] (or `.into()`) finishes it.
#[derive(Clone, Debug)]
#[must_use]
pub struct DeviceBuilder(Device);

/// A PF named `sysfs_name` (the DRA name is derived from it as discovery does): 16 GiB, NUMA
/// node 0, `0000:11:00.0` under `pci0000:10`, capabilities 1, register 0, no firmware version.
pub fn pf(sysfs_name: &str) -> DeviceBuilder {
    DeviceBuilder(Device {
        name: dra_device_name(sysfs_name).unwrap_or_else(|_| sysfs_name.to_string()),
        sysfs_name: sysfs_name.to_string(),
        device_type: DeviceType::Pf,
        uuid: "4e4f4445-312d-4e55-4d41-302d50460000".to_string(),
        memory: 16 << 30,
        pci_address: "0000:11:00.0".to_string(),
        pcie_root: Some("pci0000:10".to_string()),
        numa_node: Some(0),
        physfn: None,
        capabilities: 1,
        status: 0,
        fw_version: None,
    })
}

/// A 2 GiB VF of the PF whose DRA name is `parent`; otherwise as [`pf`].
pub fn vf(sysfs_name: &str, parent: &str) -> DeviceBuilder {
    pf(sysfs_name)
        .device_type(DeviceType::Vf)
        .physfn(Some(parent))
        .memory(2 << 30)
}

impl DeviceBuilder {
    /// The DRA device name, when it should differ from the one derived from the sysfs name.
    pub fn name(mut self, name: &str) -> Self {
        self.0.name = name.to_string();
        self
    }

    pub fn device_type(mut self, device_type: DeviceType) -> Self {
        self.0.device_type = device_type;
        self
    }

    pub fn uuid(mut self, uuid: impl Into<String>) -> Self {
        self.0.uuid = uuid.into();
        self
    }

    pub fn memory(mut self, bytes: u64) -> Self {
        self.0.memory = bytes;
        self
    }

    pub fn pci_address(mut self, bdf: impl Into<String>) -> Self {
        self.0.pci_address = bdf.into();
        self
    }

    pub fn pcie_root(mut self, root: Option<&str>) -> Self {
        self.0.pcie_root = root.map(str::to_string);
        self
    }

    pub fn numa(mut self, numa_node: Option<u32>) -> Self {
        self.0.numa_node = numa_node;
        self
    }

    pub fn physfn(mut self, parent: Option<&str>) -> Self {
        self.0.physfn = parent.map(str::to_string);
        self
    }

    pub fn capabilities(mut self, bits: u32) -> Self {
        self.0.capabilities = bits;
        self
    }

    /// The status register value of the last scan.
    pub fn status(mut self, value: u32) -> Self {
        self.0.status = value;
        self
    }

    pub fn fw_version(mut self, version: Option<&str>) -> Self {
        self.0.fw_version = version.map(str::to_string);
        self
    }

    pub fn build(self) -> Device {
        self.0
    }
}

impl From<DeviceBuilder> for Device {
    fn from(b: DeviceBuilder) -> Self {
        b.build()
    }
}
