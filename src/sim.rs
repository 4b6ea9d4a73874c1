//! `mock-accel-dra sim`: creates and changes a simulated sysfs tree that follows the kernel
//! module's real layout (sysfs contract §3-§5, §9-§10), so discovery, the node agent and the
//! end-to-end harness run against the same files a node with the module loaded would show.
//!
//! The core is pure: a topology becomes a list of [`SimDevice`]s, and a device becomes a list of
//! [`Entry`]s (directories, files with their exact kernel text and mode, relative symlinks).
//! A thin writer puts entries on disk, always writing the `class/mock-accel/<name>` link last
//! and removing it first, so a scanner never sees a half-made device through the class
//! directory.
//!
//! What plain files cannot do by themselves: a kernel attribute reacts to a write (`status`
//! normalises to `0x%08x`, `sriov_numvfs` creates and removes VFs); a file just stores the text.
//! `sim set-status` and `sim set-numvfs` apply those effects on request, and `sim watch` is a
//! daemon that applies them to whatever is written to the files while it runs.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Component, Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use crate::sysfs::{
    self, Bdf, CLASS_DIR, PCI_BUS_DEVICES_DIR, PCI_DEVICE_PF, PCI_DEVICE_VF, PCI_VENDOR, SysfsError,
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
const WORDLIST_SIZE: u64 = 62_144;
/// The kernel module's PCI driver directory, relative to the root.
const PCI_DRIVER_DIR: &str = "bus/pci/drivers/mock-accel";
/// Root ports per root complex: buses `RR+1` to `RR+15` below root bus `RR = 0x10 * (numa+1)`.
const PORTS_PER_ROOT: u32 = 15;
/// One PF per slot, so a bus holds 32 PFs.
const SLOTS_PER_BUS: u32 = 32;
/// File modes of kernel attributes.
const RO: u32 = 0o444;
const RW: u32 = 0o644;
const WO: u32 = 0o200;

/// What failed, on which path, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "no device {name:?} under {class}; list them with `mock-accel-dra discover --sysfs-root {root}`",
        class = root.join(CLASS_DIR).display(),
        root = root.display()
    )]
    NoSuchDevice { root: PathBuf, name: String },
    #[error("{path}: {problem}", path = path.display())]
    Tree { path: PathBuf, problem: String },
    #[error(
        "{name}: writing {requested} to sriov_numvfs fails with EINVAL: the value must be 0..={total} (sriov_totalvfs)"
    )]
    NumVfsOutOfRange {
        name: String,
        requested: u32,
        total: u32,
    },
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error("watching {path}: {source}", path = path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SimCommand {
    /// Create a tree under --root (which must not already hold mock-accel devices).
    Create(CreateArgs),
    /// Write the class attribute sriov_numvfs of a PF: 0 removes its VFs, N>0 replaces them
    /// with N real SR-IOV VFs mock<P>_vf<I>.
    SetNumvfs(SetNumvfsArgs),
    /// Hot-add a PF or static VF at a PCI address.
    AddDevice(AddDeviceArgs),
    /// Hot-remove a device with its PCI function directory and links (a PF's VFs go with it).
    RemoveDevice(RemoveDeviceArgs),
    /// Write the status register; the file then reads back as 0x%08x like the kernel's.
    SetStatus(SetStatusArgs),
    /// Run until killed, applying the kernel's reaction to writes: sriov_numvfs writes create
    /// and remove VFs, status writes are normalised to 0x%08x (invalid ones are undone).
    Watch(WatchArgs),
}

/// Preset topologies (sysfs contract §9 and §3). The explanations live on `--topology`: doc
/// comments on the variants would switch clap's `--help` to its spaced long layout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    // One node of the two-node cluster: per NUMA node a PF and two static VFs (mock0..mock5).
    Canonical,
    // PFs only (11:00.0 and 21:00.0) with SR-IOV; VFs appear when sriov_numvfs is written.
    Sriov,
    // The canonical layout on a machine without NUMA information (numa_node -1).
    NumaNone,
    // Sizes from --numa-nodes, --pfs-per-numa and --vfs-per-pf (static VFs, or --sriov).
    Custom,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// Root of the simulated sysfs tree (plays the role of /sys).
    #[arg(long)]
    pub root: PathBuf,
    /// Also create `<dev-root>/<name>` stand-ins for the character devices (mode 0600).
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// canonical: PF + 2 static VFs per NUMA node (mock0..mock5); sriov: 2 PFs, VFs via
    /// sriov_numvfs; numa-none: canonical with numa_node -1; custom: sizes from the flags below.
    #[arg(long, value_enum, default_value_t = Topology::Canonical)]
    pub topology: Topology,
    /// Which cluster node the UUIDs belong to (`NODE<N>-NUMA0-PF` ...).
    #[arg(long, default_value_t = 1)]
    pub node_index: u32,
    /// Custom: NUMA nodes (1-15).
    #[arg(long)]
    pub numa_nodes: Option<u32>,
    /// Custom: PFs per NUMA node.
    #[arg(long)]
    pub pfs_per_numa: Option<u32>,
    /// Custom: VFs per PF (0-7).
    #[arg(long)]
    pub vfs_per_pf: Option<u32>,
    /// Custom: make the VFs real SR-IOV VFs (mock<P>_vf<I> with physfn links) instead of static
    /// functions.
    #[arg(long)]
    pub sriov: bool,
    /// sriov_totalvfs of each PF (default 4 for sriov, 2 for canonical, else the VFs per PF).
    #[arg(long)]
    pub total_vfs: Option<u32>,
    /// PFs report memory_size 0, as the real kernel does for 16 GiB PFs (contract §2).
    #[arg(long)]
    pub pf_memory_zero: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SetNumvfsArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Directory of the character device stand-ins, kept in step with the tree.
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// Class name of the PF (e.g. mock0).
    #[arg(long)]
    pub device: String,
    /// Number of VFs (0 removes them; at most sriov_totalvfs).
    #[arg(long)]
    pub count: u32,
}

/// PF or static VF, for `add-device`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionKind {
    Pf,
    Vf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AddDeviceArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Directory of the character device stand-ins, kept in step with the tree.
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// PCI address of the new function, e.g. 0000:31:00.0.
    #[arg(long)]
    pub bdf: String,
    /// NUMA node, or -1 for none.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub numa_node: i32,
    /// PF (PCI device 0x0001) or static VF (0x0002).
    #[arg(long = "type", value_enum, default_value_t = FunctionKind::Pf)]
    pub kind: FunctionKind,
    /// Class name; default mock<lowest free minor>, as the kernel names it.
    #[arg(long)]
    pub name: Option<String>,
    /// The device server's `-u` string (first 16 bytes become the UUID).
    #[arg(long)]
    pub uuid_string: Option<String>,
    /// memory_size in bytes (default 16 GiB for a PF, 2 GiB for a VF).
    #[arg(long)]
    pub memory: Option<u64>,
    /// PF: sriov_totalvfs (0-7).
    #[arg(long, default_value_t = 4)]
    pub total_vfs: u32,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RemoveDeviceArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Directory of the character device stand-ins, kept in step with the tree.
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// Class name of the device (e.g. mock3, mock0_vf1).
    #[arg(long)]
    pub device: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SetStatusArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Class name of the device (e.g. mock3, mock0_vf1).
    #[arg(long)]
    pub device: String,
    /// Decimal, 0x hex or 0-prefixed octal, as the kernel's kstrtou32 accepts.
    #[arg(long)]
    pub value: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Directory of the character device stand-ins, kept in step with the tree.
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
}

pub fn run(cmd: &SimCommand) -> Result<(), SimError> {
    match cmd {
        SimCommand::Create(a) => {
            let spec = TopologySpec::from_args(a)?;
            let devices = create(&a.root, a.dev_root.as_deref(), &spec)?;
            println!(
                "created {} devices under {}",
                devices.len(),
                a.root.display()
            );
            Ok(())
        }
        SimCommand::SetNumvfs(a) => {
            let vfs = set_numvfs(&a.root, a.dev_root.as_deref(), &a.device, a.count)?;
            println!("{}: {} VFs", a.device, vfs.len());
            Ok(())
        }
        SimCommand::AddDevice(a) => {
            let dev = add_device(&a.root, a.dev_root.as_deref(), &AddDevice::from_args(a)?)?;
            println!("added {} at {}", dev.name, dev.bdf);
            Ok(())
        }
        SimCommand::RemoveDevice(a) => {
            let removed = remove_device(&a.root, a.dev_root.as_deref(), &a.device)?;
            println!("removed {}", removed.join(", "));
            Ok(())
        }
        SimCommand::SetStatus(a) => {
            let value = sysfs::parse_kernel_u32(&a.value)
                .map_err(|reason| SimError::Invalid(format!("--value: {reason}")))?;
            set_status(&a.root, &a.device, value)?;
            Ok(())
        }
        SimCommand::Watch(a) => {
            let stop = AtomicBool::new(false);
            watch(&a.root, a.dev_root.as_deref(), &stop, || {
                println!("watching {}", a.root.join(CLASS_DIR).display());
                let _ = std::io::stdout().flush();
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

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

    /// Reads the `create` flags; size flags belong to `--topology custom` only.
    pub fn from_args(a: &CreateArgs) -> Result<Self, SimError> {
        let sizes_given =
            a.numa_nodes.is_some() || a.pfs_per_numa.is_some() || a.vfs_per_pf.is_some();
        let mut spec = match a.topology {
            Topology::Canonical => Self::canonical(a.node_index),
            Topology::Sriov => Self::sriov(a.node_index),
            Topology::NumaNone => Self::numa_none(a.node_index),
            Topology::Custom => {
                let vfs = a.vfs_per_pf.unwrap_or(2);
                TopologySpec {
                    node_index: a.node_index,
                    numa_nodes: a.numa_nodes.unwrap_or(2),
                    pfs_per_numa: a.pfs_per_numa.unwrap_or(1),
                    vfs_per_pf: vfs,
                    sriov: a.sriov,
                    total_vfs: vfs,
                    numa_known: true,
                    pf_memory_zero: false,
                }
            }
        };
        if a.topology != Topology::Custom && (sizes_given || a.sriov) {
            return Err(SimError::Invalid(
                "--numa-nodes, --pfs-per-numa, --vfs-per-pf and --sriov only apply to --topology custom"
                    .into(),
            ));
        }
        if let Some(total) = a.total_vfs {
            spec.total_vfs = total;
        }
        spec.pf_memory_zero = a.pf_memory_zero;
        spec.validate()?;
        Ok(spec)
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
fn pf_placement(numa: u32, pf: u32) -> (Bdf, String) {
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
    let pf_memory = if spec.pf_memory_zero { 0 } else { PF_MEMORY };

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
                        memory: VF_MEMORY,
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
                boot.push(sriov_vf(pf, i, next_minor));
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
fn pf_name_base(pf: &SimDevice) -> String {
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

fn file(path: String, contents: impl Into<String>, mode: u32) -> Entry {
    Entry::File {
        path,
        contents: contents.into(),
        mode,
    }
}

/// `../` repeated once per component of `dir`: from `dir` back to the root.
fn up_to_root(dir: &str) -> String {
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
        path: at(&fdir, "mock-accel"),
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

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

/// Puts entries on disk in order. Files are overwritten, links replaced.
pub fn write_entries(
    root: &Path,
    dev_root: Option<&Path>,
    entries: &[Entry],
) -> Result<(), SimError> {
    for entry in entries {
        match entry {
            Entry::Dir { path } => {
                let p = root.join(path);
                fs::create_dir_all(&p).map_err(io_err(&p))?;
            }
            Entry::File {
                path,
                contents,
                mode,
            } => write_file(&root.join(path), contents, *mode)?,
            Entry::Symlink { path, target } => {
                let p = root.join(path);
                match std::os::unix::fs::symlink(target, &p) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        fs::remove_file(&p).map_err(io_err(&p))?;
                        std::os::unix::fs::symlink(target, &p).map_err(io_err(&p))?;
                    }
                    other => other.map_err(io_err(&p))?,
                }
            }
            Entry::DevNode { name } => {
                if let Some(dev_root) = dev_root {
                    fs::create_dir_all(dev_root).map_err(io_err(dev_root))?;
                    write_file(&sysfs::dev_node_path(dev_root, name), "", 0o600)?;
                }
            }
        }
    }
    Ok(())
}

/// Writes a whole file, creating it with `mode` (subject to the umask). A read-only file is
/// made writable for the moment of the write, as the simulator plays the kernel's part.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), SimError> {
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
    };
    let mut f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o200))
                .map_err(io_err(path))?;
            let f = open().map_err(io_err(path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
            f
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    f.write_all(contents.as_bytes()).map_err(io_err(path))
}

/// Creates a whole tree. Refuses a root whose class directory already holds devices.
pub fn create(
    root: &Path,
    dev_root: Option<&Path>,
    spec: &TopologySpec,
) -> Result<Vec<SimDevice>, SimError> {
    let devices = build_topology(spec)?;
    let class = root.join(CLASS_DIR);
    if let Ok(mut entries) = fs::read_dir(&class)
        && entries.next().is_some()
    {
        return Err(SimError::Tree {
            path: class,
            problem: "already holds devices; remove the tree or pick another --root".into(),
        });
    }
    write_entries(root, dev_root, &skeleton_entries())?;
    for d in &devices {
        write_entries(root, dev_root, &device_entries(d))?;
    }
    Ok(devices)
}

// ---------------------------------------------------------------------------------------------
// Changing an existing tree
// ---------------------------------------------------------------------------------------------

/// A device read back from a tree: enough to rebuild its entries or to find its relatives.
fn read_tree_device(root: &Path, name: &str) -> Result<SimDevice, SimError> {
    sysfs::check_sysfs_name(root, name)?;
    let cdir = sysfs::device_dir(root, name);
    if fs::symlink_metadata(&cdir).is_err() {
        return Err(SimError::NoSuchDevice {
            root: root.to_path_buf(),
            name: name.to_string(),
        });
    }
    let fdir = relative_function_dir(root, &cdir.join("device"))?;
    let (parent_dir, bdf_text) = fdir.rsplit_once('/').ok_or_else(|| SimError::Tree {
        path: cdir.join("device"),
        problem: format!("function directory {fdir} is not below devices/"),
    })?;
    let bdf: Bdf = bdf_text.parse().map_err(|problem| SimError::Tree {
        path: cdir.join("device"),
        problem,
    })?;
    let read = |rel: &str| -> Result<String, SimError> {
        let p = cdir.join(rel);
        fs::read_to_string(&p).map_err(io_err(&p))
    };
    let parse_u32 = |rel: &str| -> Result<u32, SimError> {
        let text = read(rel)?;
        sysfs::parse_register(&text).map_err(|problem| SimError::Tree {
            path: cdir.join(rel),
            problem,
        })
    };
    let function = root.join(&fdir);
    let role = if let Ok(target) = fs::read_link(function.join("physfn")) {
        let pf = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<Bdf>().ok())
            .ok_or_else(|| SimError::Tree {
                path: function.join("physfn"),
                problem: format!("link target {} is not a PCI function", target.display()),
            })?;
        let index = u32::from(bdf.function.saturating_sub(pf.function + 1));
        Role::VirtFn { pf, index }
    } else if read("device/device")?.trim() == PCI_DEVICE_PF {
        Role::Pf {
            total_vfs: parse_u32("sriov_totalvfs").unwrap_or(0),
            num_vfs: parse_u32("sriov_numvfs").unwrap_or(0),
        }
    } else {
        Role::StaticVf
    };
    let uuid_hex: String = read("uuid")?.trim().chars().filter(|c| *c != '-').collect();
    let mut uuid = [0u8; 16];
    for (i, b) in uuid.iter_mut().enumerate() {
        *b = uuid_hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    let numa_node = read("numa_node")
        .or_else(|_| read("device/numa_node"))?
        .trim()
        .parse::<i32>()
        .unwrap_or(-1);
    let minor = sysfs::read_dev_numbers(root, name)
        .map(|(_, minor)| minor)
        .or_else(|| name.strip_prefix("mock").and_then(|n| n.parse().ok()))
        // The kernel falls back to 0 when it cannot tell (contract §3).
        .unwrap_or(0);
    Ok(SimDevice {
        name: name.to_string(),
        bdf,
        parent_dir: parent_dir.to_string(),
        role,
        uuid,
        memory: read("memory_size")?.trim().parse().unwrap_or(0),
        numa_node,
        minor,
        status: parse_u32("status").unwrap_or(1),
    })
}

/// The function directory a link points to, relative to the root (`devices/…/<BDF>`).
fn relative_function_dir(root: &Path, link: &Path) -> Result<String, SimError> {
    let croot = fs::canonicalize(root).map_err(io_err(root))?;
    let target = fs::canonicalize(link).map_err(io_err(link))?;
    let rel = target.strip_prefix(&croot).map_err(|_| SimError::Tree {
        path: link.to_path_buf(),
        problem: format!("points outside the root, to {}", target.display()),
    })?;
    rel.to_str()
        .map(str::to_string)
        .ok_or_else(|| SimError::Tree {
            path: link.to_path_buf(),
            problem: "target is not UTF-8".into(),
        })
}

/// Class names present, sorted.
fn class_names(root: &Path) -> Result<Vec<String>, SimError> {
    let class = root.join(CLASS_DIR);
    let mut names: Vec<String> = fs::read_dir(&class)
        .map_err(io_err(&class))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Minors in use, from every class device's `dev`.
fn used_minors(root: &Path) -> Result<BTreeSet<u32>, SimError> {
    Ok(class_names(root)?
        .iter()
        .filter_map(|n| sysfs::read_dev_numbers(root, n))
        .map(|(_, minor)| minor)
        .collect())
}

/// Lowest minor not in `used` (the kernel's IDA).
fn lowest_free(used: &BTreeSet<u32>) -> u32 {
    (0..).find(|m| !used.contains(m)).unwrap_or(0)
}

/// The SR-IOV VFs of a PF, from its `virtfnN` links: (index, VF BDF).
fn virtfns(root: &Path, pf: &SimDevice) -> Result<Vec<(u32, Bdf)>, SimError> {
    let fdir = root.join(pf.function_dir());
    let mut out = Vec::new();
    for entry in fs::read_dir(&fdir).map_err(io_err(&fdir))? {
        let entry = entry.map_err(io_err(&fdir))?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix("virtfn"))
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        let target = fs::read_link(entry.path()).map_err(io_err(&entry.path()))?;
        if let Some(bdf) = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        {
            out.push((index, bdf));
        }
    }
    out.sort();
    Ok(out)
}

/// Class names of the devices in a function directory (`<fn>/mock-accel/*`).
fn class_names_of_function(root: &Path, parent_dir: &str, bdf: Bdf) -> Vec<String> {
    let dir = root
        .join(parent_dir)
        .join(bdf.to_string())
        .join("mock-accel");
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes one device's files, the class link first.
fn remove_entries(root: &Path, dev_root: Option<&Path>, dev: &SimDevice) -> Result<(), SimError> {
    let remove_link = |p: PathBuf| -> Result<(), SimError> {
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p)(e)),
        }
    };
    remove_link(root.join(CLASS_DIR).join(&dev.name))?;
    remove_link(root.join(PCI_BUS_DEVICES_DIR).join(dev.bdf.to_string()))?;
    remove_link(root.join(PCI_DRIVER_DIR).join(dev.bdf.to_string()))?;
    if let Role::VirtFn { pf, index } = dev.role {
        remove_link(
            root.join(&dev.parent_dir)
                .join(pf.to_string())
                .join(format!("virtfn{index}")),
        )?;
    }
    if let Some(dev_root) = dev_root {
        remove_link(sysfs::dev_node_path(dev_root, &dev.name))?;
    }
    let fdir = root.join(dev.function_dir());
    match fs::remove_dir_all(&fdir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&fdir)(e)),
    }
}

/// Removes a PF's SR-IOV VFs; returns their names.
fn remove_vfs(
    root: &Path,
    dev_root: Option<&Path>,
    pf: &SimDevice,
) -> Result<Vec<String>, SimError> {
    let mut removed = Vec::new();
    let pf_dir = root.join(pf.function_dir());
    for (index, bdf) in virtfns(root, pf)? {
        let vf_dir = root.join(&pf.parent_dir).join(bdf.to_string());
        // Only a function that names this PF as its physfn is one of its VFs; a stray virtfn
        // link to anything else is dropped without touching what it points to.
        let is_our_vf = fs::read_link(vf_dir.join("physfn"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n == pf.bdf.to_string().as_str()))
            .unwrap_or(false);
        if is_our_vf {
            for name in class_names_of_function(root, &pf.parent_dir, bdf) {
                let vf = read_tree_device(root, &name)?;
                remove_entries(root, dev_root, &vf)?;
                removed.push(name);
            }
            // A VF function left without a class device (half-removed tree) goes too.
            if let Err(e) = fs::remove_dir_all(&vf_dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io_err(&vf_dir)(e));
            }
        }
        let link = pf_dir.join(format!("virtfn{index}"));
        if let Err(e) = fs::remove_file(&link)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io_err(&link)(e));
        }
    }
    Ok(removed)
}

/// Does what writing `count` to the class attribute `sriov_numvfs` of `pf_name` does: checks
/// the range (EINVAL above `sriov_totalvfs`), removes the PF's VFs, then creates `count` new ones
/// with the lowest free minors. Returns the new VFs.
pub fn set_numvfs(
    root: &Path,
    dev_root: Option<&Path>,
    pf_name: &str,
    count: u32,
) -> Result<Vec<SimDevice>, SimError> {
    let pf = read_tree_device(root, pf_name)?;
    let total = match pf.role {
        Role::Pf { total_vfs, .. } => total_vfs,
        // Static VFs show sriov_totalvfs 0, so any count but 0 is out of range.
        Role::StaticVf => 0,
        Role::VirtFn { .. } => {
            return Err(SimError::Invalid(format!(
                "{pf_name} is an SR-IOV VF; it has no sriov_numvfs attribute"
            )));
        }
    };
    if count > total {
        return Err(SimError::NumVfsOutOfRange {
            name: pf_name.to_string(),
            requested: count,
            total,
        });
    }
    remove_vfs(root, dev_root, &pf)?;
    let mut used = used_minors(root)?;
    let mut vfs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let minor = lowest_free(&used);
        used.insert(minor);
        let vf = sriov_vf(&pf, i, minor);
        if fs::symlink_metadata(root.join(PCI_BUS_DEVICES_DIR).join(vf.bdf.to_string())).is_ok() {
            return Err(SimError::Tree {
                path: root.join(PCI_BUS_DEVICES_DIR).join(vf.bdf.to_string()),
                problem: format!("VF {i} of {pf_name} needs this PCI address, which is taken"),
            });
        }
        vfs.push(vf);
    }
    for vf in &vfs {
        write_entries(root, dev_root, &device_entries(vf))?;
    }
    write_entries(root, None, &numvfs_entries(&pf, count, total))?;
    Ok(vfs)
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

impl AddDevice {
    pub fn from_args(a: &AddDeviceArgs) -> Result<Self, SimError> {
        let bdf = a
            .bdf
            .parse()
            .map_err(|e| SimError::Invalid(format!("--bdf: {e}")))?;
        if a.total_vfs > MAX_TOTAL_VFS {
            return Err(SimError::Invalid(format!(
                "--total-vfs {} must be at most {MAX_TOTAL_VFS}",
                a.total_vfs
            )));
        }
        if a.numa_node < -1 {
            return Err(SimError::Invalid(format!(
                "--numa-node {} must be -1 or a node number",
                a.numa_node
            )));
        }
        Ok(AddDevice {
            bdf,
            numa_node: a.numa_node,
            kind: a.kind,
            name: a.name.clone(),
            uuid_string: a.uuid_string.clone(),
            memory: a.memory,
            total_vfs: a.total_vfs,
        })
    }
}

/// The directory a new function on `bdf`'s bus goes into: next to an existing function on the
/// same bus, else below a new root complex `pci<DDDD>:<bus-1>` with root port `<bus-1>:00.0`.
fn parent_dir_for(root: &Path, bdf: Bdf) -> String {
    let bus_dir = root.join(PCI_BUS_DEVICES_DIR);
    let existing = fs::read_dir(&bus_dir).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok()).find_map(|e| {
            let other: Bdf = e.file_name().to_str()?.parse().ok()?;
            if other.domain != bdf.domain || other.bus != bdf.bus {
                return None;
            }
            let target = fs::read_link(e.path()).ok()?;
            let rel: PathBuf = target
                .components()
                .skip_while(|c| matches!(c, Component::ParentDir))
                .collect();
            rel.parent()?.to_str().map(str::to_string)
        })
    });
    existing.unwrap_or_else(|| {
        let d = bdf.domain;
        match bdf.bus.checked_sub(1) {
            Some(rb) => format!("devices/pci{d:04x}:{rb:02x}/{d:04x}:{rb:02x}:00.0"),
            None => format!("devices/pci{d:04x}:00"),
        }
    })
}

/// Hot-adds a PF or static VF (a new vfio-user function appearing at `bdf`).
pub fn add_device(
    root: &Path,
    dev_root: Option<&Path>,
    req: &AddDevice,
) -> Result<SimDevice, SimError> {
    let bus_link = root.join(PCI_BUS_DEVICES_DIR).join(req.bdf.to_string());
    if fs::symlink_metadata(&bus_link).is_ok() {
        return Err(SimError::Tree {
            path: bus_link,
            problem: "PCI address already in use; pick another --bdf or remove that device".into(),
        });
    }
    let minor = lowest_free(&used_minors(root)?);
    let name = req.name.clone().unwrap_or_else(|| format!("mock{minor}"));
    sysfs::check_sysfs_name(root, &name)?;
    if fs::symlink_metadata(sysfs::device_dir(root, &name)).is_ok() {
        return Err(SimError::Tree {
            path: sysfs::device_dir(root, &name),
            problem: "a device with this name exists; pick another --name".into(),
        });
    }
    let uuid = req
        .uuid_string
        .clone()
        .unwrap_or_else(|| format!("HP-{}", req.bdf));
    let (role, memory) = match req.kind {
        FunctionKind::Pf => (
            Role::Pf {
                total_vfs: req.total_vfs,
                num_vfs: 0,
            },
            PF_MEMORY,
        ),
        FunctionKind::Vf => (Role::StaticVf, VF_MEMORY),
    };
    let dev = SimDevice {
        name,
        bdf: req.bdf,
        parent_dir: parent_dir_for(root, req.bdf),
        role,
        uuid: uuid_bytes(&uuid),
        memory: req.memory.unwrap_or(memory),
        numa_node: req.numa_node,
        minor,
        status: 1,
    };
    write_entries(root, dev_root, &skeleton_entries())?;
    write_entries(root, dev_root, &device_entries(&dev))?;
    Ok(dev)
}

/// Hot-removes a device with its PCI function directory and links; a PF takes its SR-IOV VFs
/// with it, and removing a VF updates its PF's count. Returns the removed names.
pub fn remove_device(
    root: &Path,
    dev_root: Option<&Path>,
    name: &str,
) -> Result<Vec<String>, SimError> {
    let dev = read_tree_device(root, name)?;
    let mut removed = Vec::new();
    if let Role::Pf { .. } = dev.role {
        removed.extend(remove_vfs(root, dev_root, &dev)?);
    }
    remove_entries(root, dev_root, &dev)?;
    removed.push(name.to_string());
    if let Role::VirtFn { pf, .. } = dev.role
        && let Some(pf_name) = class_names_of_function(root, &dev.parent_dir, pf).first()
    {
        let pf_dev = read_tree_device(root, pf_name)?;
        if let Role::Pf { total_vfs, .. } = pf_dev.role {
            let left = virtfns(root, &pf_dev)?.len() as u32;
            write_entries(root, None, &numvfs_entries(&pf_dev, left, total_vfs))?;
        }
    }
    Ok(removed)
}

/// Writes the status register the way the kernel stores it: reads back as `0x%08x`.
pub fn set_status(root: &Path, name: &str, value: u32) -> Result<(), SimError> {
    sysfs::check_sysfs_name(root, name)?;
    if fs::symlink_metadata(sysfs::device_dir(root, name)).is_err() {
        return Err(SimError::NoSuchDevice {
            root: root.to_path_buf(),
            name: name.to_string(),
        });
    }
    write_file(
        &sysfs::status_path(root, name),
        &format!("0x{value:08x}\n"),
        RW,
    )
}

// ---------------------------------------------------------------------------------------------
// The watch daemon
// ---------------------------------------------------------------------------------------------

/// How often the daemon re-lists the class directory even without events (a safety net for
/// devices that appeared between listing and watching).
const RESYNC: Duration = Duration::from_secs(2);

/// Applies the kernel's reaction to attribute writes until `stop` is set: `status` is rewritten
/// as `0x%08x` (an invalid write is undone), and a changed `sriov_numvfs` creates or removes VFs
/// (an invalid one is undone). Watches every class device directory with inotify; `on_ready`
/// runs once the initial watches are in place and the tree has been brought in line.
pub fn watch(
    root: &Path,
    dev_root: Option<&Path>,
    stop: &AtomicBool,
    on_ready: impl FnOnce(),
) -> Result<(), SimError> {
    use notify::{
        EventKind, RecursiveMode, Watcher,
        event::{AccessKind, AccessMode, CreateKind, ModifyKind},
    };

    let class = root.join(CLASS_DIR);
    if !class.is_dir() {
        return Err(SimError::Tree {
            path: class,
            problem: "not a directory; create the tree first with `mock-accel-dra sim create`"
                .into(),
        });
    }
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })
    .map_err(|source| SimError::Watch {
        path: class.clone(),
        source,
    })?;
    watcher
        .watch(&class, RecursiveMode::NonRecursive)
        .map_err(|source| SimError::Watch {
            path: class.clone(),
            source,
        })?;

    let mut state = WatchState {
        root,
        dev_root,
        watched: HashSet::new(),
    };
    // Every newly watched device is brought in line right after its watch is placed, so a write
    // that landed before the watch is not missed.
    state.resync(&mut watcher);
    on_ready();

    while !stop.load(Ordering::Relaxed) {
        let event = match rx.recv_timeout(RESYNC) {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => {
                eprintln!("warning: watch error: {e}");
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                state.resync(&mut watcher);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let relevant = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Create(CreateKind::File | CreateKind::Any)
                | EventKind::Modify(ModifyKind::Name(_))
        );
        let mut class_changed = false;
        for path in &event.paths {
            if path.parent() == Some(class.as_path()) {
                class_changed = true;
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) && let Some(name) = path.file_name().and_then(|n| n.to_str())
                {
                    state.forget(&mut watcher, name);
                }
                continue;
            }
            if !relevant {
                continue;
            }
            let (Some(attr), Some(dir)) =
                (path.file_name().and_then(|n| n.to_str()), path.parent())
            else {
                continue;
            };
            if dir.parent() != Some(class.as_path()) {
                continue;
            }
            let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            match attr {
                "status" => state.normalise_status(name),
                "sriov_numvfs" => {
                    state.apply_numvfs(name);
                    class_changed = true;
                }
                _ => {}
            }
        }
        if class_changed {
            state.resync(&mut watcher);
        }
    }
    Ok(())
}

struct WatchState<'a> {
    root: &'a Path,
    dev_root: Option<&'a Path>,
    watched: HashSet<String>,
}

impl WatchState<'_> {
    /// Watches every class device directory not yet watched; forgets vanished ones.
    fn resync(&mut self, watcher: &mut impl notify::Watcher) {
        let Ok(names) = class_names(self.root) else {
            return;
        };
        let present: HashSet<String> = names.into_iter().collect();
        let gone: Vec<String> = self.watched.difference(&present).cloned().collect();
        for name in gone {
            self.forget(watcher, &name);
        }
        for name in present {
            if self.watched.contains(&name) {
                continue;
            }
            let dir = sysfs::device_dir(self.root, &name);
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.reconcile(&name);
                    self.watched.insert(name);
                }
                // A link whose device is still being written or already removed: next resync.
                Err(e) => eprintln!("warning: {}: cannot watch yet: {e}", dir.display()),
            }
        }
    }

    fn forget(&mut self, watcher: &mut impl notify::Watcher, name: &str) {
        if self.watched.remove(name) {
            let _ = watcher.unwatch(&sysfs::device_dir(self.root, name));
        }
    }

    fn reconcile(&mut self, name: &str) {
        self.normalise_status(name);
        if fs::symlink_metadata(sysfs::device_dir(self.root, name).join("sriov_numvfs")).is_ok() {
            self.apply_numvfs(name);
        }
    }

    fn normalise_status(&mut self, name: &str) {
        let path = sysfs::status_path(self.root, name);
        let Ok(text) = fs::read_to_string(&path) else {
            return;
        };
        if text.is_empty() {
            // Truncated by a writer that has not written yet; its close will bring us back.
            return;
        }
        let (value, note) = match sysfs::parse_kernel_u32(&text) {
            Ok(v) => (v, None),
            // The kernel rejects the write and keeps the register; the file already lost the
            // old value, so fall back to the power-on value.
            Err(reason) => (1, Some(reason)),
        };
        let normal = format!("0x{value:08x}\n");
        if text == normal {
            return;
        }
        if let Some(reason) = note {
            eprintln!(
                "warning: {}: write rejected ({reason}); register reset to 0x00000001",
                path.display()
            );
        }
        if let Err(e) = write_file(&path, &normal, RW) {
            eprintln!("warning: {e}");
        }
    }

    fn apply_numvfs(&mut self, name: &str) {
        let path = sysfs::device_dir(self.root, name).join("sriov_numvfs");
        let Ok(text) = fs::read_to_string(&path) else {
            return;
        };
        if text.is_empty() {
            return;
        }
        let Ok(dev) = read_tree_device(self.root, name) else {
            return;
        };
        let (current, total) = match dev.role {
            Role::Pf { total_vfs, .. } => (
                virtfns(self.root, &dev)
                    .map(|v| v.len() as u32)
                    .unwrap_or(0),
                total_vfs,
            ),
            Role::StaticVf => (0, 0),
            Role::VirtFn { .. } => return,
        };
        let restore = |why: String| {
            eprintln!("warning: {}: {why}; kept {current} VFs", path.display());
            if let Err(e) = write_entries(self.root, None, &numvfs_entries(&dev, current, total)) {
                eprintln!("warning: {e}");
            }
        };
        let requested = match sysfs::parse_kernel_u32(&text) {
            Ok(n) => n,
            Err(reason) => return restore(format!("write rejected ({reason})")),
        };
        if requested == current {
            if text != format!("{current}\n") {
                restore("rewritten in the kernel's format".into());
            }
            return;
        }
        match set_numvfs(self.root, self.dev_root, name, requested) {
            Ok(vfs) => eprintln!("{name}: sriov_numvfs {requested}: {} VFs", vfs.len()),
            Err(e) => restore(format!("write rejected ({e})")),
        }
    }
}

#[cfg(test)]
mod tests {
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
            pf_memory_zero: false,
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

    fn read(root: &Path, rel: &str) -> String {
        fs::read_to_string(root.join(rel)).unwrap()
    }

    #[test]
    fn set_numvfs_replaces_vfs_with_lowest_free_minors_and_updates_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let dev = root.join("dev");
        create(root, Some(&dev), &TopologySpec::sriov(1)).unwrap();
        let vfs = set_numvfs(root, Some(&dev), "mock0", 2).unwrap();
        assert_eq!(names(&vfs), ["mock0_vf0", "mock0_vf1"]);
        assert_eq!(vfs.iter().map(|v| v.minor).collect::<Vec<_>>(), [2, 3]);
        let vfs = set_numvfs(root, Some(&dev), "mock1", 1).unwrap();
        assert_eq!((vfs[0].name.as_str(), vfs[0].minor), ("mock1_vf0", 4));
        let pf = "devices/pci0000:10/0000:10:00.0/0000:11:00.0";
        assert_eq!(read(root, "class/mock-accel/mock0/sriov_numvfs"), "2\n");
        assert_eq!(read(root, &format!("{pf}/sriov_numvfs")), "2\n");
        assert_eq!(
            fs::read_link(root.join(pf).join("virtfn1")).unwrap(),
            Path::new("../0000:11:00.2")
        );
        assert!(dev.join("mock0_vf1").is_file());

        // 0 frees minors 2 and 3; the next VF takes 2 again.
        set_numvfs(root, Some(&dev), "mock0", 0).unwrap();
        assert!(!root.join(pf).join("virtfn0").exists());
        assert!(!dev.join("mock0_vf0").exists());
        assert!(
            !root
                .join("devices/pci0000:10/0000:10:00.0/0000:11:00.1")
                .exists()
        );
        let vfs = set_numvfs(root, None, "mock0", 1).unwrap();
        assert_eq!(vfs[0].minor, 2);

        let err = set_numvfs(root, None, "mock0", 5).unwrap_err();
        assert!(
            matches!(err, SimError::NumVfsOutOfRange { total: 4, .. }),
            "{err}"
        );
        assert!(matches!(
            set_numvfs(root, None, "mock0_vf0", 1),
            Err(SimError::Invalid(_))
        ));
        assert!(matches!(
            set_numvfs(root, None, "mock7", 1),
            Err(SimError::NoSuchDevice { .. })
        ));
    }

    #[test]
    fn static_vfs_refuse_any_vf_count_but_zero() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), None, &TopologySpec::canonical(1)).unwrap();
        let err = set_numvfs(dir.path(), None, "mock1", 1).unwrap_err();
        assert!(err.to_string().contains("0..=0"), "{err}");
        assert!(set_numvfs(dir.path(), None, "mock1", 0).unwrap().is_empty());
    }

    #[test]
    fn removing_a_pf_takes_its_vfs_and_removing_a_vf_updates_its_pf() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        create(root, None, &TopologySpec::sriov(1)).unwrap();
        set_numvfs(root, None, "mock0", 2).unwrap();
        set_numvfs(root, None, "mock1", 2).unwrap();

        assert_eq!(
            remove_device(root, None, "mock1_vf1").unwrap(),
            ["mock1_vf1"]
        );
        assert_eq!(read(root, "class/mock-accel/mock1/sriov_numvfs"), "1\n");
        assert!(
            !root
                .join("devices/pci0000:20/0000:20:00.0/0000:21:00.0/virtfn1")
                .exists()
        );

        let mut removed = remove_device(root, None, "mock0").unwrap();
        removed.sort();
        assert_eq!(removed, ["mock0", "mock0_vf0", "mock0_vf1"]);
        assert_eq!(class_names(root).unwrap(), ["mock1", "mock1_vf0"]);
        assert!(!root.join("bus/pci/devices/0000:11:00.0").exists());
        assert!(
            !root
                .join("bus/pci/drivers/mock-accel/0000:11:00.1")
                .exists()
        );
    }

    #[test]
    fn added_devices_join_an_existing_bus_or_get_a_root_complex() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        create(root, None, &TopologySpec::canonical(1)).unwrap();
        let req = |bdf: &str, kind| AddDevice {
            bdf: bdf.parse().unwrap(),
            numa_node: 0,
            kind,
            name: None,
            uuid_string: None,
            memory: None,
            total_vfs: 4,
        };
        let next = add_device(root, None, &req("0000:11:01.0", FunctionKind::Pf)).unwrap();
        assert_eq!(next.parent_dir, "devices/pci0000:10/0000:10:00.0");
        assert_eq!(next.name, "mock6");
        assert_eq!(uuid_string(&next.uuid), "HP-0000:11:01.0");
        let fresh = add_device(root, None, &req("0000:41:00.0", FunctionKind::Vf)).unwrap();
        assert_eq!(fresh.parent_dir, "devices/pci0000:40/0000:40:00.0");
        assert_eq!(
            (fresh.role.clone(), fresh.memory),
            (Role::StaticVf, VF_MEMORY)
        );
        assert!(add_device(root, None, &req("0000:41:00.0", FunctionKind::Pf)).is_err());
    }

    #[test]
    fn create_refuses_a_populated_root_and_set_status_normalises() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        create(root, None, &TopologySpec::canonical(1)).unwrap();
        let err = create(root, None, &TopologySpec::canonical(1)).unwrap_err();
        assert!(err.to_string().contains("already holds devices"), "{err}");
        set_status(root, "mock2", 4660).unwrap();
        assert_eq!(read(root, "class/mock-accel/mock2/status"), "0x00001234\n");
        assert!(matches!(
            set_status(root, "mock9", 1),
            Err(SimError::NoSuchDevice { .. })
        ));
    }
}
