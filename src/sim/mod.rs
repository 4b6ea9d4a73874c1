//! `mock-accel-dra sim`: creates and changes a simulated sysfs tree that follows the kernel
//! module's real layout (sysfs contract §3-§5, §9-§10), so discovery, the node agent and the
//! end-to-end harness run against the same files a node with the module loaded would show.
//!
//! - [`model`] is pure: a topology becomes a list of [`SimDevice`]s, and a device becomes a list
//!   of [`Entry`]s (directories, files with their exact kernel text and mode, relative
//!   symlinks).
//! - [`tree`] is the thin writer and editor on disk: it puts entries on disk, always writing the
//!   `class/mock-accel/<name>` link last and removing it first, so a scanner never sees a
//!   half-made device through the class directory; and it reads devices back to change them
//!   (`set-numvfs`, `add-device`, `remove-device`, `set-status`).
//! - [`watch`] is the daemon behind `sim watch`.
//! - [`rebuild`] brings an existing tree in line with a topology, keeping the devices that
//!   still exist (what `node-agent --simulate` does when `spec.simulation` changes).
//!
//! What plain files cannot do by themselves: a kernel attribute reacts to a write (`status`
//! normalises to `0x%08x`, `sriov_numvfs` creates and removes VFs); a file just stores the text.
//! `sim set-status` and `sim set-numvfs` apply those effects on request, and `sim watch` is a
//! daemon that applies them to whatever is written to the files while it runs. The command-line
//! flags live with the other subcommands' in [`crate::cli`]; this module turns them into calls.

pub mod model;
pub mod rebuild;
pub mod tree;
pub mod watch;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
};

pub use self::{
    model::{
        AddDevice, Entry, FunctionKind, MAX_DEVICES, MAX_TOTAL_VFS, PF_MEMORY, Role, SIM_MAJOR,
        SimDevice, TopologySpec, VF_MEMORY, build_topology, device_entries, format_uuid,
        numvfs_entries, skeleton_entries, sriov_vf, uuid_bytes, uuid_string, vf_uuid_string,
    },
    rebuild::{RebuildPlan, rebuild},
    tree::{add_device, create, remove_device, set_numvfs, set_status, write_entries},
    watch::watch,
};
use crate::{
    cli::{self, AddDeviceArgs, CreateArgs, SimCommand, Topology},
    sysfs::{self, CLASS_DIR, SysfsError},
};

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

pub fn run(cmd: &SimCommand) -> Result<(), SimError> {
    match cmd {
        SimCommand::Create(a) => {
            let spec = topology_spec(a)?;
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
            let dev = add_device(&a.root, a.dev_root.as_deref(), &add_device_request(a)?)?;
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

/// Reads the `create` flags; size flags belong to `--topology custom` only.
fn topology_spec(a: &CreateArgs) -> Result<TopologySpec, SimError> {
    let sizes_given = a.numa_nodes.is_some() || a.pfs_per_numa.is_some() || a.vfs_per_pf.is_some();
    let mut spec = match a.topology {
        Topology::Canonical => TopologySpec::canonical(a.node_index),
        Topology::Sriov => TopologySpec::sriov(a.node_index),
        Topology::NumaNone => TopologySpec::numa_none(a.node_index),
        Topology::Custom => {
            let vfs = a.vfs_per_pf.unwrap_or(2);
            TopologySpec {
                node_index: a.node_index,
                numa_nodes: a.numa_nodes.unwrap_or(2),
                pfs_per_numa: a.pfs_per_numa.unwrap_or(1),
                vfs_per_pf: vfs,
                sriov: a.sriov,
                total_vfs: vfs,
                ..TopologySpec::canonical(a.node_index)
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

/// Reads the `add-device` flags.
fn add_device_request(a: &AddDeviceArgs) -> Result<AddDevice, SimError> {
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
        kind: match a.kind {
            cli::FunctionKind::Pf => FunctionKind::Pf,
            cli::FunctionKind::Vf => FunctionKind::Vf,
        },
        name: a.name.clone(),
        uuid_string: a.uuid_string.clone(),
        memory: a.memory,
        total_vfs: a.total_vfs,
    })
}
