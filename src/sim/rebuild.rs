//! Brings an existing simulated tree in line with a topology, the way `node-agent --simulate`
//! follows `MockAccelNode.spec.simulation`: devices that still exist are left alone, files and
//! status register included (a prepared device stays prepared), devices the topology no longer
//! has are removed, and new ones are added. [`plan`] is pure; [`rebuild`] reads the tree and
//! applies the plan with the writers of [`super::tree`].
//!
//! A device "still exists" when the topology has a device of the same name at the same PCI
//! address with the same identity (UUID, memory, NUMA node, kind, minor). In the SR-IOV layout
//! the topology describes the PFs only: their VFs come and go through `sriov_numvfs`, so VFs of
//! a PF that stays are kept, and VFs of a PF that goes are removed with it.

use std::{collections::HashSet, path::Path};

use super::{
    SimError,
    model::{Role, SimDevice, TopologySpec, build_topology, device_entries, skeleton_entries},
    tree::{class_names, read_tree_device, remove_entries, write_entries},
};
use crate::sysfs::Bdf;

/// What a rebuild removes and adds; devices in neither list are kept as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildPlan {
    /// Removed first (VFs before their PF), so a PCI address or minor is free before reuse.
    pub remove: Vec<SimDevice>,
    pub add: Vec<SimDevice>,
    /// Names of the devices left untouched.
    pub kept: Vec<String>,
}

impl RebuildPlan {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

/// Whether `have` (read from the tree) is the device `want` (from the topology). The status
/// register is state, not identity, and a PF's VF count is the SR-IOV layout's business.
fn same_device(have: &SimDevice, want: &SimDevice) -> bool {
    let role_matches = match (&have.role, &want.role) {
        (Role::Pf { total_vfs: a, .. }, Role::Pf { total_vfs: b, .. }) => a == b,
        (a, b) => a == b,
    };
    have.name == want.name
        && have.bdf == want.bdf
        && have.parent_dir == want.parent_dir
        && role_matches
        && have.uuid == want.uuid
        && have.memory == want.memory
        && have.numa_node == want.numa_node
        && have.minor == want.minor
}

/// The changes that turn the devices `current` into `desired`. With `sriov_layout`, SR-IOV VFs
/// in `current` are kept while their PF is kept (`desired` lists PFs only).
pub fn plan(current: &[SimDevice], desired: &[SimDevice], sriov_layout: bool) -> RebuildPlan {
    let mut out = RebuildPlan::default();
    let mut kept_pfs: HashSet<Bdf> = HashSet::new();
    let mut present: HashSet<&str> = HashSet::new();
    for have in current
        .iter()
        .filter(|d| !matches!(d.role, Role::VirtFn { .. }))
    {
        match desired.iter().find(|w| w.name == have.name) {
            Some(want) if same_device(have, want) => {
                present.insert(&want.name);
                kept_pfs.insert(have.bdf);
                out.kept.push(have.name.clone());
            }
            _ => out.remove.push(have.clone()),
        }
    }
    // SR-IOV VFs: kept with their PF in the SR-IOV layout, removed otherwise (before the PFs).
    let mut vfs_removed = Vec::new();
    for vf in current.iter() {
        if let Role::VirtFn { pf, .. } = vf.role {
            if sriov_layout && kept_pfs.contains(&pf) {
                out.kept.push(vf.name.clone());
            } else {
                vfs_removed.push(vf.clone());
            }
        }
    }
    vfs_removed.append(&mut out.remove);
    out.remove = vfs_removed;
    out.add = desired
        .iter()
        .filter(|w| !present.contains(w.name.as_str()))
        .cloned()
        .collect();
    out.kept.sort();
    out
}

/// The devices of a tree, read back from its class directory (none when it does not exist).
pub fn read_devices(root: &Path) -> Result<Vec<SimDevice>, SimError> {
    if !root.join(crate::sysfs::CLASS_DIR).is_dir() {
        return Ok(Vec::new());
    }
    class_names(root)?
        .iter()
        .map(|name| read_tree_device(root, name))
        .collect()
}

/// Makes the tree under `root` hold exactly `spec`'s devices (creating the tree when needed),
/// keeping every device that still exists. Returns what it did.
pub fn rebuild(
    root: &Path,
    dev_root: Option<&Path>,
    spec: &TopologySpec,
) -> Result<RebuildPlan, SimError> {
    let desired = build_topology(spec)?;
    // In the SR-IOV layout the VFs are not part of the topology (see the module comment).
    let desired: Vec<SimDevice> = desired
        .into_iter()
        .filter(|d| !(spec.sriov && matches!(d.role, Role::VirtFn { .. })))
        .collect();
    let current = read_devices(root)?;
    let plan = plan(&current, &desired, spec.sriov);
    write_entries(root, dev_root, &skeleton_entries())?;
    for d in &plan.remove {
        remove_entries(root, dev_root, d)?;
    }
    for d in &plan.add {
        write_entries(root, dev_root, &device_entries(d))?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{create, set_numvfs, set_status};

    fn names(devs: &[SimDevice]) -> Vec<&str> {
        devs.iter().map(|d| d.name.as_str()).collect()
    }

    fn register(root: &Path, name: &str) -> String {
        std::fs::read_to_string(crate::sysfs::status_path(root, name)).unwrap()
    }

    #[test]
    fn an_empty_root_gets_the_whole_topology() {
        let dir = tempfile::tempdir().unwrap();
        let plan = rebuild(dir.path(), None, &TopologySpec::canonical(1)).unwrap();
        assert_eq!(plan.add.len(), 6);
        assert!(plan.remove.is_empty() && plan.kept.is_empty());
        assert_eq!(read_devices(dir.path()).unwrap().len(), 6);
        // The same topology again changes nothing.
        let again = rebuild(dir.path(), None, &TopologySpec::canonical(1)).unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(again.kept.len(), 6);
    }

    #[test]
    fn adding_a_numa_node_keeps_every_device_and_its_register() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        create(root, None, &TopologySpec::canonical(1)).unwrap();
        set_status(root, "mock1", 1).unwrap();
        let three = TopologySpec {
            numa_nodes: 3,
            ..TopologySpec::canonical(1)
        };
        let plan = rebuild(root, None, &three).unwrap();
        assert!(plan.remove.is_empty(), "{:?}", names(&plan.remove));
        assert_eq!(names(&plan.add), ["mock6", "mock7", "mock8"]);
        assert_eq!(plan.add[0].numa_node, 2);
        assert_eq!(register(root, "mock1"), "0x00000001\n");

        // Back to two NUMA nodes: the third one's devices go, the rest stay.
        let plan = rebuild(root, None, &TopologySpec::canonical(1)).unwrap();
        assert_eq!(names(&plan.remove), ["mock6", "mock7", "mock8"]);
        assert!(plan.add.is_empty());
        assert_eq!(register(root, "mock1"), "0x00000001\n");
        assert_eq!(read_devices(root).unwrap().len(), 6);
        assert!(!root.join("bus/pci/devices/0000:31:00.0").exists());
    }

    #[test]
    fn changing_vfs_per_pf_replaces_the_devices_whose_identity_changed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        create(root, None, &TopologySpec::canonical(1)).unwrap();
        let three = TopologySpec {
            vfs_per_pf: 3,
            total_vfs: 3,
            ..TopologySpec::canonical(1)
        };
        let plan = rebuild(root, None, &three).unwrap();
        // mock1 and mock2 are the same functions of NUMA 0 (VFs 11:00.1 and .2); the PF mock0
        // now shows sriov_totalvfs 3, and everything after them moved to another name or
        // address.
        assert_eq!(plan.kept, ["mock1", "mock2"]);
        let devs = read_devices(root).unwrap();
        assert_eq!(devs.len(), 8);
        assert_eq!(
            devs.iter().filter(|d| d.role == Role::StaticVf).count(),
            6,
            "three VFs per PF"
        );
    }

    #[test]
    fn sriov_layout_keeps_the_vfs_of_kept_pfs_and_memory_changes_replace_devices() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let spec = TopologySpec::sriov(1);
        rebuild(root, None, &spec).unwrap();
        set_numvfs(root, None, "mock0", 2).unwrap();
        set_status(root, "mock0_vf1", 1).unwrap();
        let plan = rebuild(root, None, &spec).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.kept, ["mock0", "mock0_vf0", "mock0_vf1", "mock1"]);
        assert_eq!(register(root, "mock0_vf1"), "0x00000001\n");

        // One NUMA node: mock1 goes; mock0 and its VFs stay.
        let one = TopologySpec {
            numa_nodes: 1,
            ..spec.clone()
        };
        let plan = rebuild(root, None, &one).unwrap();
        assert_eq!(names(&plan.remove), ["mock1"]);

        // Other PF memory: the PF is another device now, and its VFs go with it.
        let bigger = TopologySpec {
            pf_memory: 32 << 30,
            ..one
        };
        let plan = rebuild(root, None, &bigger).unwrap();
        assert_eq!(names(&plan.remove), ["mock0_vf0", "mock0_vf1", "mock0"]);
        assert_eq!(names(&plan.add), ["mock0"]);
        let devs = read_devices(root).unwrap();
        assert_eq!(names(&devs), ["mock0"]);
        assert_eq!(devs[0].memory, 32 << 30);
    }

    #[test]
    fn switching_layouts_removes_the_other_layouts_vfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        rebuild(root, None, &TopologySpec::sriov(1)).unwrap();
        set_numvfs(root, None, "mock1", 1).unwrap();
        rebuild(root, None, &TopologySpec::canonical(1)).unwrap();
        let devs = read_devices(root).unwrap();
        assert_eq!(
            names(&devs),
            ["mock0", "mock1", "mock2", "mock3", "mock4", "mock5"]
        );
        assert!(devs.iter().all(|d| !matches!(d.role, Role::VirtFn { .. })));
    }
}
