//! The pure model of a simulated node: topologies of PFs and VFs with their PCI addresses,
//! NUMA nodes, UUIDs and minors ([`build_topology`]), and the files each device consists of in
//! the kernel's layout ([`device_entries`]), down to the exact text and mode of every
//! attribute. Nothing here touches the disk; [`super::tree`] does.

use super::SimError;
use crate::sysfs::{
    Bdf, CLASS_DIR, CLASS_NAME, PCI_BUS_DEVICES_DIR, PCI_DEVICE_PF, PCI_DEVICE_VF, PCI_VENDOR,
};

/// Character device major the simulator uses (the real one is dynamic).
pub const SIM_MAJOR: u32 = 240;
/// Default memory of a PF server (16 GiB).
pub const PF_MEMORY: u64 = 16 << 30;
/// Default memory of a VF server (2 GiB).
pub const VF_MEMORY: u64 = 2 << 30;
/// The device server's `--total-vfs` maximum.
pub const MAX_TOTAL_VFS: u32 = 7;
/// Upper bound on a generated tree, to catch typos before they fill a disk.
pub const MAX_DEVICES: u32 = 65_536;
/// Size in bytes of the chart's firmware wordlist, as `wordlist_size` reports it.
pub(super) const WORDLIST_SIZE: u64 = 62_144;
/// The kernel module's PCI driver directory, relative to the root.
pub(super) const PCI_DRIVER_DIR: &str = "bus/pci/drivers/mock-accel";
/// Root ports per root complex: buses `RR+1` to `RR+15` below root bus `RR = 0x10 * (numa+1)`.
pub(super) const PORTS_PER_ROOT: u32 = 15;
/// One PF per slot, so a bus holds 32 PFs.
pub(super) const SLOTS_PER_BUS: u32 = 32;
/// File modes of kernel attributes.
pub(super) const RO: u32 = 0o444;
pub(super) const RW: u32 = 0o644;
pub(super) const WO: u32 = 0o200;

/// PF or static VF, for a hot-added device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionKind {
    Pf,
    Vf,
}

/// What kind of function a device is, with the SR-IOV facts that go with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// PCI device 0x0001. `total_vfs` 0 means the SR-IOV capability is not visible.
    Pf { total_vfs: u32, num_vfs: u32 },
    /// A separate function with PCI device 0x0002 and no `physfn` (the shipped layout).
    StaticVf,
    /// A real SR-IOV VF of the PF at `pf`, the `index`-th (`virtfn<index>`).
    VirtFn { pf: Bdf, index: u32 },
}

/// One simulated function and its class device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDevice {
    /// Class device name (`mock0`, `mock0_vf1`).
    pub name: String,
    pub bdf: Bdf,
    /// Directory holding the function directory, relative to the root
    /// (`devices/pci0000:10/0000:10:00.0`).
    pub parent_dir: String,
    pub role: Role,
    /// The 16 BAR bytes behind `uuid`.
    pub uuid: [u8; 16],
    pub memory: u64,
    /// `-1` when the platform gives no NUMA information.
    pub numa_node: i32,
    pub minor: u32,
    pub status: u32,
}

impl SimDevice {
    /// The PCI function directory, relative to the root.
    pub fn function_dir(&self) -> String {
        format!("{}/{}", self.parent_dir, self.bdf)
    }

    /// The class device directory, relative to the root.
    pub fn class_dir(&self) -> String {
        format!("{}/mock-accel/{}", self.function_dir(), self.name)
    }

    pub fn pci_device_id(&self) -> &'static str {
        match self.role {
            Role::Pf { .. } => PCI_DEVICE_PF,
            Role::StaticVf | Role::VirtFn { .. } => PCI_DEVICE_VF,
        }
    }
}

/// The sizes and options of a generated tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologySpec {
    /// Cluster node the UUID strings name (`NODE<N>-…`).
    pub node_index: u32,
    pub numa_nodes: u32,
    pub pfs_per_numa: u32,
    pub vfs_per_pf: u32,
    /// VFs are real SR-IOV VFs (created as if `vfs_per_pf` were written to `sriov_numvfs`).
    pub sriov: bool,
    /// `sriov_totalvfs` of each PF.
    pub total_vfs: u32,
    /// `false`: every `numa_node` reads -1.
    pub numa_known: bool,
    pub pf_memory_zero: bool,
    /// `memory_size` of each PF and of each VF the topology creates, in bytes.
    pub pf_memory: u64,
    pub vf_memory: u64,
}

impl TopologySpec {
    /// Contract §9: mock0..mock5, PF + 2 static VFs per NUMA node, PFs with `--total-vfs 2`.
    pub fn canonical(node_index: u32) -> Self {
        TopologySpec {
            node_index,
            numa_nodes: 2,
            pfs_per_numa: 1,
            vfs_per_pf: 2,
            sriov: false,
            total_vfs: 2,
            numa_known: true,
            pf_memory_zero: false,
            pf_memory: PF_MEMORY,
            vf_memory: VF_MEMORY,
        }
    }

    /// Contract §3: PFs only, SR-IOV capable (`sriov_totalvfs` 4), no VFs yet.
    pub fn sriov(node_index: u32) -> Self {
        TopologySpec {
            vfs_per_pf: 0,
            sriov: true,
            total_vfs: 4,
            ..Self::canonical(node_index)
        }
    }

    /// The canonical layout with `numa_node` -1 everywhere.
    pub fn numa_none(node_index: u32) -> Self {
        TopologySpec {
            numa_known: false,
            ..Self::canonical(node_index)
        }
    }

    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Invalid(m));
        if !(1..=9).contains(&self.node_index) {
            return bad(format!("--node-index {} must be 1-9", self.node_index));
        }
        if !(1..=15).contains(&self.numa_nodes) {
            return bad(format!("--numa-nodes {} must be 1-15", self.numa_nodes));
        }
        if self.vfs_per_pf > MAX_TOTAL_VFS {
            return bad(format!(
                "--vfs-per-pf {} must be at most {MAX_TOTAL_VFS} (functions 1-7 of the PF's slot)",
                self.vfs_per_pf
            ));
        }
        if self.total_vfs > MAX_TOTAL_VFS {
            return bad(format!(
                "--total-vfs {} must be at most {MAX_TOTAL_VFS}",
                self.total_vfs
            ));
        }
        if self.sriov && self.vfs_per_pf > self.total_vfs {
            return bad(format!(
                "--vfs-per-pf {} exceeds --total-vfs {}",
                self.vfs_per_pf, self.total_vfs
            ));
        }
        let total = u64::from(self.numa_nodes)
            * u64::from(self.pfs_per_numa)
            * u64::from(1 + self.vfs_per_pf);
        if total > u64::from(MAX_DEVICES) {
            return bad(format!(
                "{total} devices requested, at most {MAX_DEVICES} are supported"
            ));
        }
        Ok(())
    }

    pub fn device_count(&self) -> u32 {
        self.numa_nodes * self.pfs_per_numa * (1 + self.vfs_per_pf)
    }
}

/// The UUID bytes of a device server started with `-u <s>`: the first 16 bytes of the string,
/// zero-padded (never parsed as a UUID).
pub fn uuid_bytes(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b;
    }
    out
}

/// `%pUb`: the 16 bytes as lowercase `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The `-u` string back from the UUID bytes (up to the first NUL).
pub fn uuid_string(bytes: &[u8; 16]) -> String {
    bytes
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| char::from(*b))
        .collect()
}

/// The `-u` string of a PF's `index`-th SR-IOV VF: `…-PF` becomes `…-VF<index>`, anything else
/// gets `-V<index>` appended (cut to the 16 bytes the server keeps).
pub fn vf_uuid_string(pf: &str, index: u32) -> String {
    let s = match pf.strip_suffix("PF") {
        Some(base) => format!("{base}VF{index}"),
        None => format!("{pf}-V{index}"),
    };
    s.chars().take(16).collect()
}

/// Where PF number `pf` (0-based within its NUMA node) of NUMA node `numa` sits. Each NUMA node
/// has a root complex `pci<DDDD>:<RR>` with `RR = 0x10 * (numa + 1)` (the pxb-pcie `bus_nr` of
/// the canonical cluster), root ports `RR:pp.0` with buses `RR+1+pp`, one PF per slot; more than
/// 15 buses' worth of PFs spill into the next PCI domain.
pub(super) fn pf_placement(numa: u32, pf: u32) -> (Bdf, String) {
    let per_domain = PORTS_PER_ROOT * SLOTS_PER_BUS;
    let domain = (pf / per_domain) as u16;
    let within = pf % per_domain;
    let port = within / SLOTS_PER_BUS;
    let slot = (within % SLOTS_PER_BUS) as u8;
    let root_bus = (0x10 * (numa + 1)) as u8;
    let bus = root_bus + 1 + port as u8;
    let parent =
        format!("devices/pci{domain:04x}:{root_bus:02x}/{domain:04x}:{root_bus:02x}:{port:02x}.0");
    (Bdf::new(domain, bus, slot, 0), parent)
}

/// Builds the devices of a topology, named and numbered in probe order (by PCI address, then
/// SR-IOV VFs after every boot-time function, as enabling them happens later).
pub fn build_topology(spec: &TopologySpec) -> Result<Vec<SimDevice>, SimError> {
    spec.validate()?;
    let upstream_names = spec.pfs_per_numa == 1;
    let uuid_of = |numa: u32, pf: u32, vf: Option<u32>| -> Result<[u8; 16], SimError> {
        let n = spec.node_index;
        let s = match (upstream_names, vf) {
            (true, None) => format!("NODE{n}-NUMA{numa}-PF"),
            (true, Some(i)) => format!("NODE{n}-NUMA{numa}-VF{i}"),
            (false, None) => format!("N{n}-M{numa}-P{pf}"),
            (false, Some(i)) => format!("N{n}-M{numa}-P{pf}-V{i}"),
        };
        if s.len() > 16 {
            return Err(SimError::Invalid(format!(
                "UUID string {s:?} is longer than the 16 bytes a device server keeps"
            )));
        }
        Ok(uuid_bytes(&s))
    };
    let numa_of = |numa: u32| if spec.numa_known { numa as i32 } else { -1 };
    let pf_memory = if spec.pf_memory_zero {
        0
    } else {
        spec.pf_memory
    };

    let mut boot = Vec::with_capacity(spec.device_count() as usize);
    for numa in 0..spec.numa_nodes {
        for pf in 0..spec.pfs_per_numa {
            let (bdf, parent) = pf_placement(numa, pf);
            boot.push(SimDevice {
                name: String::new(),
                bdf,
                parent_dir: parent.clone(),
                role: Role::Pf {
                    total_vfs: spec.total_vfs,
                    num_vfs: if spec.sriov { spec.vfs_per_pf } else { 0 },
                },
                uuid: uuid_of(numa, pf, None)?,
                memory: pf_memory,
                numa_node: numa_of(numa),
                minor: 0,
                status: 1,
            });
            if !spec.sriov {
                for i in 0..spec.vfs_per_pf {
                    boot.push(SimDevice {
                        name: String::new(),
                        bdf: bdf.with_function(1 + i as u8),
                        parent_dir: parent.clone(),
                        role: Role::StaticVf,
                        uuid: uuid_of(numa, pf, Some(i))?,
                        memory: spec.vf_memory,
                        numa_node: numa_of(numa),
                        minor: 0,
                        status: 1,
                    });
                }
            }
        }
    }
    boot.sort_by_key(|d| d.bdf);
    for (minor, d) in boot.iter_mut().enumerate() {
        d.minor = minor as u32;
        d.name = format!("mock{minor}");
    }
    if spec.sriov && spec.vfs_per_pf > 0 {
        let mut next_minor = boot.len() as u32;
        let pfs: Vec<SimDevice> = boot.clone();
        for pf in &pfs {
            for i in 0..spec.vfs_per_pf {
                let mut vf = sriov_vf(pf, i, next_minor);
                vf.memory = spec.vf_memory;
                boot.push(vf);
                next_minor += 1;
            }
        }
    }
    Ok(boot)
}

/// The `index`-th SR-IOV VF of `pf`: function `index + 1` (First VF Offset 1, VF Stride 1),
/// named after the PF's minor, inheriting its NUMA node, 2 GiB.
pub fn sriov_vf(pf: &SimDevice, index: u32, minor: u32) -> SimDevice {
    SimDevice {
        name: format!("{}_vf{index}", pf_name_base(pf)),
        bdf: pf.bdf.with_function(pf.bdf.function + 1 + index as u8),
        parent_dir: pf.parent_dir.clone(),
        role: Role::VirtFn { pf: pf.bdf, index },
        uuid: uuid_bytes(&vf_uuid_string(&uuid_string(&pf.uuid), index)),
        memory: VF_MEMORY,
        numa_node: pf.numa_node,
        minor,
        status: 1,
    }
}

/// `mock<PF minor>`: the kernel names a VF after its PF's minor, not its class name.
pub(super) fn pf_name_base(pf: &SimDevice) -> String {
    format!("mock{}", pf.minor)
}

/// One thing to create, relative to the root (or, for `DevNode`, to the dev root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
    },
    File {
        path: String,
        contents: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A regular file standing in for the character device `/dev/<name>` (mode 0600).
    DevNode {
        name: String,
    },
}

pub(super) fn file(path: String, contents: impl Into<String>, mode: u32) -> Entry {
    Entry::File {
        path,
        contents: contents.into(),
        mode,
    }
}

/// `../` repeated once per component of `dir`: from `dir` back to the root.
pub(super) fn up_to_root(dir: &str) -> String {
    "../".repeat(dir.split('/').count())
}

/// The directories every tree has, even with no devices (an empty class directory means the
/// module is loaded and found nothing).
pub fn skeleton_entries() -> Vec<Entry> {
    ["devices", CLASS_DIR, PCI_BUS_DEVICES_DIR, PCI_DRIVER_DIR]
        .into_iter()
        .map(|p| Entry::Dir {
            path: p.to_string(),
        })
        .collect()
}

/// Everything the kernel and the PCI core show for one device, in an order where the class
/// link comes last.
pub fn device_entries(dev: &SimDevice) -> Vec<Entry> {
    let fdir = dev.function_dir();
    let cdir = dev.class_dir();
    let at = |dir: &str, name: &str| format!("{dir}/{name}");
    let mut e = Vec::with_capacity(48);

    // The PCI function, as the PCI core shows it.
    e.push(Entry::Dir { path: fdir.clone() });
    e.push(file(at(&fdir, "vendor"), format!("{PCI_VENDOR}\n"), RO));
    e.push(file(
        at(&fdir, "device"),
        format!("{}\n", dev.pci_device_id()),
        RO,
    ));
    e.push(file(at(&fdir, "class"), "0x000000\n", RO));
    e.push(file(at(&fdir, "subsystem_vendor"), "0x0000\n", RO));
    e.push(file(at(&fdir, "subsystem_device"), "0x0000\n", RO));
    e.push(file(
        at(&fdir, "numa_node"),
        format!("{}\n", dev.numa_node),
        RO,
    ));
    e.push(file(
        at(&fdir, "uevent"),
        format!(
            "DRIVER=mock-accel\nPCI_CLASS=0\nPCI_ID=1DE5:{id:04X}\nPCI_SUBSYS_ID=0000:0000\nPCI_SLOT_NAME={bdf}\nMODALIAS=pci:v00001DE5d0000{id:04X}sv00000000sd00000000bc00sc00i00\n",
            id = if dev.pci_device_id() == PCI_DEVICE_PF { 1 } else { 2 },
            bdf = dev.bdf
        ),
        RO,
    ));
    if let Role::Pf { total_vfs, num_vfs } = dev.role
        && total_vfs > 0
    {
        // PCI-core SR-IOV files: read-only in effect (the driver has no sriov_configure, so
        // the kernel answers ENOENT to writes); the class attribute is the one to write.
        e.push(file(
            at(&fdir, "sriov_totalvfs"),
            format!("{total_vfs}\n"),
            RO,
        ));
        e.push(file(at(&fdir, "sriov_numvfs"), format!("{num_vfs}\n"), RO));
        e.push(file(at(&fdir, "sriov_offset"), "1\n", RO));
        e.push(file(at(&fdir, "sriov_stride"), "1\n", RO));
        e.push(file(at(&fdir, "sriov_vf_device"), "2\n", RO));
    }
    let fup = up_to_root(&fdir);
    e.push(Entry::Symlink {
        path: at(&fdir, "subsystem"),
        target: format!("{fup}bus/pci"),
    });
    e.push(Entry::Symlink {
        path: at(&fdir, "driver"),
        target: format!("{fup}{PCI_DRIVER_DIR}"),
    });
    if let Role::VirtFn { pf, index } = dev.role {
        e.push(Entry::Symlink {
            path: at(&fdir, "physfn"),
            target: format!("../{pf}"),
        });
        e.push(Entry::Symlink {
            path: format!("{}/{pf}/virtfn{index}", dev.parent_dir),
            target: format!("../{}", dev.bdf),
        });
    }

    // The class device, as the module creates it.
    e.push(Entry::Dir {
        path: at(&fdir, CLASS_NAME),
    });
    e.push(Entry::Dir { path: cdir.clone() });
    e.push(file(
        at(&cdir, "uuid"),
        format!("{}\n", format_uuid(&dev.uuid)),
        RO,
    ));
    e.push(file(
        at(&cdir, "memory_size"),
        format!("{}\n", dev.memory),
        RO,
    ));
    e.push(file(at(&cdir, "capabilities"), "0x00000001\n", RO));
    e.push(file(
        at(&cdir, "status"),
        format!("0x{:08x}\n", dev.status),
        RW,
    ));
    e.push(file(
        at(&cdir, "numa_node"),
        format!("{}\n", dev.numa_node),
        RO,
    ));
    e.push(file(at(&cdir, "fw_version"), "1.0.0\n", RO));
    // The probe-time firmware load never sets wordlist_loaded (contract §5).
    e.push(file(at(&cdir, "wordlist_loaded"), "0\n", RO));
    e.push(file(
        at(&cdir, "wordlist_size"),
        format!("{WORDLIST_SIZE}\n"),
        RO,
    ));
    e.push(file(at(&cdir, "load_wordlist"), "", WO));
    match dev.role {
        Role::Pf { total_vfs, num_vfs } => {
            e.push(file(
                at(&cdir, "sriov_totalvfs"),
                format!("{total_vfs}\n"),
                RO,
            ));
            e.push(file(at(&cdir, "sriov_numvfs"), format!("{num_vfs}\n"), RW));
        }
        // Static VFs are ordinary functions to the module: the attributes show, reading 0.
        Role::StaticVf => {
            e.push(file(at(&cdir, "sriov_totalvfs"), "0\n", RO));
            e.push(file(at(&cdir, "sriov_numvfs"), "0\n", RW));
        }
        Role::VirtFn { .. } => {}
    }
    e.push(file(at(&cdir, "passphrase_length"), "0\n", RW));
    e.push(file(at(&cdir, "passphrase_generate"), "", WO));
    e.push(file(at(&cdir, "passphrase_status"), "idle\n", RO));
    e.push(file(at(&cdir, "passphrase_count"), "0\n", RO));
    e.push(file(at(&cdir, "passphrase"), "\n", RO));
    e.push(file(
        at(&cdir, "dev"),
        format!("{SIM_MAJOR}:{}\n", dev.minor),
        RO,
    ));
    e.push(file(
        at(&cdir, "uevent"),
        format!(
            "MAJOR={SIM_MAJOR}\nMINOR={}\nDEVNAME={}\n",
            dev.minor, dev.name
        ),
        RW,
    ));
    e.push(Entry::Dir {
        path: at(&cdir, "power"),
    });
    e.push(file(at(&cdir, "power/control"), "auto\n", RW));
    e.push(file(at(&cdir, "power/runtime_status"), "unsupported\n", RO));
    e.push(Entry::Symlink {
        path: at(&cdir, "device"),
        target: format!("../../../{}", dev.bdf),
    });
    e.push(Entry::Symlink {
        path: at(&cdir, "subsystem"),
        target: format!("{}{CLASS_DIR}", up_to_root(&cdir)),
    });

    // Global links, the class link last.
    e.push(Entry::Symlink {
        path: format!("{PCI_DRIVER_DIR}/{}", dev.bdf),
        target: format!("{}{fdir}", up_to_root(PCI_DRIVER_DIR)),
    });
    e.push(Entry::Symlink {
        path: format!("{PCI_BUS_DEVICES_DIR}/{}", dev.bdf),
        target: format!("{}{fdir}", up_to_root(PCI_BUS_DEVICES_DIR)),
    });
    e.push(Entry::DevNode {
        name: dev.name.clone(),
    });
    e.push(Entry::Symlink {
        path: format!("{CLASS_DIR}/{}", dev.name),
        target: format!("{}{cdir}", up_to_root(CLASS_DIR)),
    });
    e
}

/// The files a PF's `sriov_numvfs` count shows in (class attribute and PCI core).
pub fn numvfs_entries(pf: &SimDevice, num_vfs: u32, total_vfs: u32) -> Vec<Entry> {
    let mut e = vec![file(
        format!("{}/sriov_numvfs", pf.class_dir()),
        format!("{num_vfs}\n"),
        RW,
    )];
    if total_vfs > 0 {
        e.push(file(
            format!("{}/sriov_numvfs", pf.function_dir()),
            format!("{num_vfs}\n"),
            RO,
        ));
    }
    e
}

/// A device to hot-add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddDevice {
    pub bdf: Bdf,
    pub numa_node: i32,
    pub kind: FunctionKind,
    pub name: Option<String>,
    pub uuid_string: Option<String>,
    pub memory: Option<u64>,
    pub total_vfs: u32,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn names(devs: &[SimDevice]) -> Vec<&str> {
        devs.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn uuid_strings_become_ascii_hex_as_in_the_contract() {
        let cases = [
            ("NODE1-NUMA0-PF", "4e4f4445-312d-4e55-4d41-302d50460000"),
            ("NODE1-NUMA0-VF0", "4e4f4445-312d-4e55-4d41-302d56463000"),
            ("NODE2-NUMA1-VF1", "4e4f4445-322d-4e55-4d41-312d56463100"),
            ("MOCK-0000-0001", "4d4f434b-2d30-3030-302d-303030310000"),
        ];
        for (s, hex) in cases {
            assert_eq!(format_uuid(&uuid_bytes(s)), hex, "{s}");
            assert_eq!(uuid_string(&uuid_bytes(s)), s);
        }
        // Only the first 16 bytes are kept.
        assert_eq!(
            uuid_string(&uuid_bytes("ABCDEFGHIJKLMNOPQRS")),
            "ABCDEFGHIJKLMNOP"
        );
    }

    #[test]
    fn vf_uuid_strings_follow_the_pf() {
        assert_eq!(vf_uuid_string("NODE1-NUMA0-PF", 1), "NODE1-NUMA0-VF1");
        assert_eq!(vf_uuid_string("N1-M0-P5", 3), "N1-M0-P5-V3");
        assert_eq!(vf_uuid_string("ABCDEFGHIJKLMNOP", 0).len(), 16);
    }

    #[test]
    fn canonical_topology_matches_contract_section_9() {
        let devs = build_topology(&TopologySpec::canonical(1)).unwrap();
        assert_eq!(
            names(&devs),
            ["mock0", "mock1", "mock2", "mock3", "mock4", "mock5"]
        );
        let bdfs: Vec<String> = devs.iter().map(|d| d.bdf.to_string()).collect();
        assert_eq!(
            bdfs,
            [
                "0000:11:00.0",
                "0000:11:00.1",
                "0000:11:00.2",
                "0000:21:00.0",
                "0000:21:00.1",
                "0000:21:00.2"
            ]
        );
        assert_eq!(devs[0].parent_dir, "devices/pci0000:10/0000:10:00.0");
        assert_eq!(devs[3].parent_dir, "devices/pci0000:20/0000:20:00.0");
        let uuids: Vec<String> = devs.iter().map(|d| format_uuid(&d.uuid)).collect();
        assert_eq!(
            uuids,
            [
                "4e4f4445-312d-4e55-4d41-302d50460000",
                "4e4f4445-312d-4e55-4d41-302d56463000",
                "4e4f4445-312d-4e55-4d41-302d56463100",
                "4e4f4445-312d-4e55-4d41-312d50460000",
                "4e4f4445-312d-4e55-4d41-312d56463000",
                "4e4f4445-312d-4e55-4d41-312d56463100",
            ]
        );
        assert_eq!(devs[0].memory, 17_179_869_184);
        assert_eq!(devs[1].memory, 2_147_483_648);
        assert_eq!(
            devs[0].role,
            Role::Pf {
                total_vfs: 2,
                num_vfs: 0
            }
        );
        assert_eq!(devs[1].role, Role::StaticVf);
        assert_eq!(
            devs.iter().map(|d| d.numa_node).collect::<Vec<_>>(),
            [0, 0, 0, 1, 1, 1]
        );
        assert_eq!(
            devs.iter().map(|d| d.minor).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );

        let node2 = build_topology(&TopologySpec::canonical(2)).unwrap();
        assert_eq!(
            format_uuid(&node2[5].uuid),
            "4e4f4445-322d-4e55-4d41-312d56463100"
        );
    }

    #[test]
    fn numa_none_and_zero_memory_variants() {
        let devs = build_topology(&TopologySpec::numa_none(1)).unwrap();
        assert!(devs.iter().all(|d| d.numa_node == -1));
        let spec = TopologySpec {
            pf_memory_zero: true,
            ..TopologySpec::canonical(1)
        };
        let devs = build_topology(&spec).unwrap();
        assert_eq!(devs[0].memory, 0);
        assert_eq!(devs[1].memory, VF_MEMORY);
    }

    #[test]
    fn sriov_topology_has_pfs_only_and_custom_sriov_names_vfs_after_pf_minors() {
        let devs = build_topology(&TopologySpec::sriov(1)).unwrap();
        assert_eq!(names(&devs), ["mock0", "mock1"]);
        assert_eq!(devs[1].bdf.to_string(), "0000:21:00.0");
        assert_eq!(
            devs[0].role,
            Role::Pf {
                total_vfs: 4,
                num_vfs: 0
            }
        );

        let spec = TopologySpec {
            vfs_per_pf: 2,
            ..TopologySpec::sriov(1)
        };
        let devs = build_topology(&spec).unwrap();
        assert_eq!(
            names(&devs),
            [
                "mock0",
                "mock1",
                "mock0_vf0",
                "mock0_vf1",
                "mock1_vf0",
                "mock1_vf1"
            ]
        );
        let vf = &devs[4];
        assert_eq!(vf.bdf.to_string(), "0000:21:00.1");
        assert_eq!(vf.minor, 4);
        assert_eq!(vf.numa_node, 1);
        assert_eq!(
            vf.role,
            Role::VirtFn {
                pf: devs[1].bdf,
                index: 0
            }
        );
        assert_eq!(uuid_string(&vf.uuid), "NODE1-NUMA1-VF0");
    }

    #[test]
    fn custom_topology_of_4096_devices_has_unique_addresses_names_and_uuids() {
        let spec = TopologySpec {
            node_index: 1,
            numa_nodes: 2,
            pfs_per_numa: 256,
            vfs_per_pf: 7,
            sriov: false,
            total_vfs: 7,
            numa_known: true,
            ..TopologySpec::canonical(1)
        };
        let devs = build_topology(&spec).unwrap();
        assert_eq!(devs.len(), 4096);
        let bdfs: HashSet<Bdf> = devs.iter().map(|d| d.bdf).collect();
        let uuids: HashSet<[u8; 16]> = devs.iter().map(|d| d.uuid).collect();
        let names: HashSet<&str> = devs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!((bdfs.len(), uuids.len(), names.len()), (4096, 4096, 4096));
        // 256 PFs per NUMA node need 8 buses below the node's root complex.
        assert!(devs.iter().any(|d| d.bdf.to_string() == "0000:18:1f.7"));
        assert!(devs.iter().all(|d| d.bdf.domain == 0));
    }

    #[test]
    fn many_pfs_spill_into_the_next_pci_domain() {
        let (bdf, parent) = pf_placement(0, 480);
        assert_eq!(bdf.to_string(), "0001:11:00.0");
        assert_eq!(parent, "devices/pci0001:10/0001:10:00.0");
        let (bdf, parent) = pf_placement(1, 33);
        assert_eq!(bdf.to_string(), "0000:22:01.0");
        assert_eq!(parent, "devices/pci0000:20/0000:20:01.0");
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_flag() {
        let spec = TopologySpec {
            vfs_per_pf: 8,
            ..TopologySpec::canonical(1)
        };
        assert!(
            build_topology(&spec)
                .unwrap_err()
                .to_string()
                .contains("--vfs-per-pf")
        );
        let spec = TopologySpec {
            numa_nodes: 16,
            ..TopologySpec::canonical(1)
        };
        assert!(
            build_topology(&spec)
                .unwrap_err()
                .to_string()
                .contains("--numa-nodes")
        );
        let spec = TopologySpec {
            vfs_per_pf: 5,
            ..TopologySpec::sriov(1)
        };
        assert!(
            build_topology(&spec)
                .unwrap_err()
                .to_string()
                .contains("--total-vfs")
        );
    }

    fn find<'a>(entries: &'a [Entry], path: &str) -> Option<&'a Entry> {
        entries.iter().find(|e| match e {
            Entry::Dir { path: p }
            | Entry::File { path: p, .. }
            | Entry::Symlink { path: p, .. } => p == path,
            Entry::DevNode { name } => name == path,
        })
    }

    fn contents<'a>(entries: &'a [Entry], path: &str) -> &'a str {
        match find(entries, path) {
            Some(Entry::File { contents, .. }) => contents,
            other => panic!("{path}: {other:?}"),
        }
    }

    fn target<'a>(entries: &'a [Entry], path: &str) -> &'a str {
        match find(entries, path) {
            Some(Entry::Symlink { target, .. }) => target,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn device_entries_print_like_the_kernel() {
        let devs = build_topology(&TopologySpec::canonical(1)).unwrap();
        let e = device_entries(&devs[0]);
        let c = "devices/pci0000:10/0000:10:00.0/0000:11:00.0/mock-accel/mock0";
        let f = "devices/pci0000:10/0000:10:00.0/0000:11:00.0";
        assert_eq!(
            contents(&e, &format!("{c}/uuid")),
            "4e4f4445-312d-4e55-4d41-302d50460000\n"
        );
        assert_eq!(contents(&e, &format!("{c}/memory_size")), "17179869184\n");
        assert_eq!(contents(&e, &format!("{c}/capabilities")), "0x00000001\n");
        assert_eq!(contents(&e, &format!("{c}/status")), "0x00000001\n");
        assert_eq!(contents(&e, &format!("{c}/numa_node")), "0\n");
        assert_eq!(contents(&e, &format!("{c}/fw_version")), "1.0.0\n");
        assert_eq!(contents(&e, &format!("{c}/sriov_totalvfs")), "2\n");
        assert_eq!(contents(&e, &format!("{c}/sriov_numvfs")), "0\n");
        assert_eq!(contents(&e, &format!("{c}/passphrase")), "\n");
        assert_eq!(contents(&e, &format!("{c}/dev")), "240:0\n");
        assert_eq!(contents(&e, &format!("{f}/vendor")), "0x1de5\n");
        assert_eq!(contents(&e, &format!("{f}/device")), "0x0001\n");
        assert_eq!(contents(&e, &format!("{f}/sriov_vf_device")), "2\n");
        assert_eq!(target(&e, &format!("{c}/device")), "../../../0000:11:00.0");
        assert_eq!(
            target(&e, &format!("{c}/subsystem")),
            "../../../../../../class/mock-accel"
        );
        assert_eq!(target(&e, "class/mock-accel/mock0"), format!("../../{c}"));
        assert_eq!(
            target(&e, "bus/pci/devices/0000:11:00.0"),
            format!("../../../{f}")
        );
        assert_eq!(
            target(&e, &format!("{f}/driver")),
            "../../../../bus/pci/drivers/mock-accel"
        );
        // The class link is the last thing written.
        assert!(
            matches!(e.last(), Some(Entry::Symlink { path, .. }) if path == "class/mock-accel/mock0")
        );
        assert!(matches!(
            find(&e, &format!("{c}/status")),
            Some(Entry::File { mode: 0o644, .. })
        ));
        assert!(matches!(
            find(&e, &format!("{c}/load_wordlist")),
            Some(Entry::File { mode: 0o200, .. })
        ));

        let vf = device_entries(&devs[1]);
        assert_eq!(
            contents(&vf, "devices/pci0000:10/0000:10:00.0/0000:11:00.1/device"),
            "0x0002\n"
        );
        assert_eq!(
            contents(
                &vf,
                "devices/pci0000:10/0000:10:00.0/0000:11:00.1/mock-accel/mock1/sriov_totalvfs"
            ),
            "0\n"
        );
        assert!(find(&vf, "devices/pci0000:10/0000:10:00.0/0000:11:00.1/physfn").is_none());
    }

    #[test]
    fn sriov_vf_entries_link_both_ways_and_hide_the_sriov_attributes() {
        let spec = TopologySpec {
            vfs_per_pf: 1,
            ..TopologySpec::sriov(1)
        };
        let devs = build_topology(&spec).unwrap();
        let vf = devs.iter().find(|d| d.name == "mock0_vf0").unwrap();
        let e = device_entries(vf);
        let p = "devices/pci0000:10/0000:10:00.0";
        assert_eq!(
            target(&e, &format!("{p}/0000:11:00.1/physfn")),
            "../0000:11:00.0"
        );
        assert_eq!(
            target(&e, &format!("{p}/0000:11:00.0/virtfn0")),
            "../0000:11:00.1"
        );
        assert!(
            find(
                &e,
                &format!("{p}/0000:11:00.1/mock-accel/mock0_vf0/sriov_totalvfs")
            )
            .is_none()
        );
        assert_eq!(
            contents(&e, &format!("{p}/0000:11:00.1/mock-accel/mock0_vf0/dev")),
            "240:2\n"
        );
    }
}
