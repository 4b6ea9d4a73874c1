//! The simulated tree on disk: writes a model's entries ([`write_entries`], [`create`]) and
//! changes an existing tree the way the kernel would ([`set_numvfs`], [`add_device`],
//! [`remove_device`], [`set_status`]), reading devices back from the files to do so.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Component, Path, PathBuf},
};

use super::{
    SimError, io_err,
    model::{
        AddDevice, Entry, FunctionKind, PCI_DRIVER_DIR, PF_MEMORY, RW, Role, SimDevice,
        TopologySpec, VF_MEMORY, build_topology, device_entries, numvfs_entries, skeleton_entries,
        sriov_vf, uuid_bytes,
    },
};
use crate::sysfs::{self, Bdf, CLASS_DIR, PCI_BUS_DEVICES_DIR, PCI_DEVICE_PF};

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
pub(super) fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), SimError> {
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

/// A device read back from a tree: enough to rebuild its entries or to find its relatives.
pub(super) fn read_tree_device(root: &Path, name: &str) -> Result<SimDevice, SimError> {
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
pub(super) fn class_names(root: &Path) -> Result<Vec<String>, SimError> {
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
pub(super) fn used_minors(root: &Path) -> Result<BTreeSet<u32>, SimError> {
    Ok(class_names(root)?
        .iter()
        .filter_map(|n| sysfs::read_dev_numbers(root, n))
        .map(|(_, minor)| minor)
        .collect())
}

/// Lowest minor not in `used` (the kernel's IDA).
pub(super) fn lowest_free(used: &BTreeSet<u32>) -> u32 {
    (0..).find(|m| !used.contains(m)).unwrap_or(0)
}

/// The SR-IOV VFs of a PF, from its `virtfnN` links: (index, VF BDF).
pub(super) fn virtfns(root: &Path, pf: &SimDevice) -> Result<Vec<(u32, Bdf)>, SimError> {
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
        .join(sysfs::CLASS_NAME);
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes one device's files, the class link first.
pub(super) fn remove_entries(
    root: &Path,
    dev_root: Option<&Path>,
    dev: &SimDevice,
) -> Result<(), SimError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::model::uuid_string;

    fn names(devs: &[SimDevice]) -> Vec<&str> {
        devs.iter().map(|d| d.name.as_str()).collect()
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
