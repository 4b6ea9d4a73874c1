//! The scan: reads every class device of a sysfs tree into an [`Inventory`].
//!
//! Scanning reads a fixed number of files per device and resolves parents through one map from
//! BDF to device, so its cost grows linearly with the number of devices (no directory walks).
//! A device's class entry is read as a link, whose target gives its PCI address and pcieRoot
//! (see [`super::class_link`]) and the path of its directory; that directory is opened relative
//! to a handle on the directory that holds its PCI function (shared by the functions of one
//! root port), and each file relative to that, one path component away. Large trees are read on
//! a few threads.

use std::{
    collections::{HashMap, hash_map::Entry},
    ffi::OsStr,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use rustix::{
    fs::{Access, AtFlags, CWD, Mode, OFlags},
    io::Errno,
};

use super::{
    Bdf, CLASS_DIR, PCI_DEVICE_PF, PCI_DEVICE_VF, SysfsError, check_sysfs_name,
    class_link::parse_class_link, device_dir, parse_fw_version, parse_numa, parse_register,
    parse_uuid,
};
use crate::{
    inventory::{Device, DeviceType, Inventory},
    names::dra_device_name,
};

/// The result of one scan: the devices that could be read, and a warning for everything that
/// was skipped or doubtful.
#[derive(Debug, Default)]
pub struct Scan {
    pub inventory: Inventory,
    pub warnings: Vec<SysfsError>,
}

/// One class device as read from its files: the device with its parent not yet resolved
/// (`physfn` is `None`), and what resolving it needs.
struct RawDevice {
    device: Device,
    /// Where it sits: the PCI function, and the basename of the `device/physfn` link target
    /// for a real SR-IOV VF.
    pci: PciPlace,
}

#[derive(Clone, Copy)]
struct PciPlace {
    bdf: Bdf,
    physfn_bdf: Option<Bdf>,
}

/// Scans `<root>/class/mock-accel/*`. Only an unusable root is an error; a missing class
/// directory is an empty inventory with a warning, and a broken device is a warning.
pub fn scan(root: &Path) -> Result<Scan, SysfsError> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    scan_on_threads(root, cores)
}

/// [`scan`] on at most `max_threads` threads (at least one): the same result whatever the
/// number; the benchmark compares one thread with the cores.
pub fn scan_on_threads(root: &Path, max_threads: usize) -> Result<Scan, SysfsError> {
    let meta = std::fs::metadata(root).map_err(|source| SysfsError::io(root, source))?;
    if !meta.is_dir() {
        return Err(SysfsError::invalid(
            root,
            "not a directory; pass the sysfs root (the directory that holds class/)",
        ));
    }
    let class_dir = root.join(CLASS_DIR);
    let mut warnings = Vec::new();
    let class = match open_dir(CWD, &class_dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            warnings.push(SysfsError::ModuleNotLoaded { path: class_dir });
            return Ok(Scan {
                inventory: Inventory::default(),
                warnings,
            });
        }
        Err(source) => return Err(SysfsError::io(&class_dir, source)),
    };
    let entries =
        std::fs::read_dir(&class_dir).map_err(|source| SysfsError::io(&class_dir, source))?;
    let dirs = Dirs {
        root,
        root_fd: open_dir(CWD, root).map_err(|source| SysfsError::io(root, source))?,
        class,
    };

    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SysfsError::io(&class_dir, source))?;
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(raw) => warnings.push(SysfsError::invalid(
                &class_dir.join(&raw),
                "class entry name is not UTF-8; skipped",
            )),
        }
    }
    // Directory order is arbitrary; sorting makes "which one is skipped" reproducible.
    names.sort();

    names.retain(|name| match check_sysfs_name(root, name) {
        Ok(()) => true,
        Err(e) => {
            warnings.push(e);
            false
        }
    });

    // The devices kept, in order, and where each sits (for its parent).
    let mut devices: Vec<Device> = Vec::with_capacity(names.len());
    let mut places: Vec<PciPlace> = Vec::with_capacity(names.len());
    // DRA name -> index in `devices` of the device that holds it.
    let mut by_name: HashMap<String, usize> = HashMap::with_capacity(names.len());
    let mut by_bdf: HashMap<Bdf, usize> = HashMap::with_capacity(names.len());
    // The readers' results, one list per thread in order, walked without joining them into
    // one list first (for 4,096 devices that would be another megabyte to fill and copy).
    let outcomes = read_all(&dirs, &names, max_threads).into_iter().flatten();
    for (sysfs_name, outcome) in names.iter().zip(outcomes) {
        warnings.extend(outcome.soft);
        let RawDevice { device, pci } = match outcome.result {
            Ok(raw) => raw,
            Err(e) => {
                warnings.push(SysfsError::DeviceSkipped {
                    device: sysfs_name.clone(),
                    source: Box::new(e),
                });
                continue;
            }
        };
        match by_name.entry(device.name.clone()) {
            Entry::Occupied(first) => {
                let first = &devices[*first.get()].sysfs_name;
                warnings.push(SysfsError::invalid(
                    &device_dir(root, &device.sysfs_name),
                    format!(
                        "maps to DRA device name {:?}, already taken by {first:?}; {} skipped, {first} kept",
                        device.name, device.sysfs_name,
                    ),
                ));
                continue;
            }
            Entry::Vacant(slot) => {
                slot.insert(devices.len());
            }
        }
        match by_bdf.entry(pci.bdf) {
            Entry::Occupied(first) => {
                warnings.push(SysfsError::invalid(
                    &device_dir(root, &device.sysfs_name),
                    format!(
                        "PCI function {} already belongs to {}; {} skipped",
                        pci.bdf,
                        devices[*first.get()].sysfs_name,
                        device.sysfs_name
                    ),
                ));
                by_name.remove(&device.name);
                continue;
            }
            Entry::Vacant(slot) => {
                slot.insert(devices.len());
            }
        }
        devices.push(device);
        places.push(pci);
    }

    let parents: Vec<Option<String>> = devices
        .iter()
        .zip(&places)
        .map(|(device, place)| match device.device_type {
            DeviceType::Pf => None,
            DeviceType::Vf => {
                resolve_parent(root, device, *place, &devices, &by_bdf, &mut warnings)
            }
        })
        .collect();
    for (device, parent) in devices.iter_mut().zip(parents) {
        device.physfn = parent;
    }
    Ok(Scan {
        inventory: Inventory::new(devices),
        warnings,
    })
}

/// What reading one class entry gave: the device or the reason to skip it, plus warnings that
/// do not cost the device its place.
struct Outcome {
    result: Result<RawDevice, SysfsError>,
    soft: Vec<SysfsError>,
}

/// Devices per reading thread. Reading a device takes about 30 µs of system calls, so 64 of
/// them outweigh starting a thread (tens of µs) many times over; below that a thread costs
/// more than it saves.
const DEVICES_PER_THREAD: usize = 64;

/// How many threads read `devices` class devices when at most `max_threads` may: one per
/// [`DEVICES_PER_THREAD`], at least one.
pub fn reading_threads(devices: usize, max_threads: usize) -> usize {
    max_threads.min(devices.div_ceil(DEVICES_PER_THREAD)).max(1)
}

/// Runs `read` over `names` split into [`reading_threads`] consecutive parts, each on a thread
/// of its own (one part runs on the calling thread), and returns the parts' results in the
/// order of `names`; a panic in a reader is raised again here. The scan reads with it, and so
/// does the discovery benchmark's floor, which must split a tree exactly alike.
pub fn on_reading_threads<T: Send>(
    names: &[String],
    max_threads: usize,
    read: impl Fn(&[String]) -> T + Sync,
) -> Vec<T> {
    let threads = reading_threads(names.len(), max_threads);
    if threads == 1 {
        return vec![read(names)];
    }
    let per_thread = names.len().div_ceil(threads);
    let read = &read;
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(per_thread)
            .map(|chunk| s.spawn(move || read(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Reads every named class device: one list per reading thread, the lists and their entries
/// in the order of `names`. Large trees are split across threads: the work is all path lookups
/// and small reads, which the kernel serves on every core at once, though not without
/// contention (the threads share one descriptor table; BENCHMARKS.md, Discovery).
fn read_all(dirs: &Dirs<'_>, names: &[String], max_threads: usize) -> Vec<Vec<Outcome>> {
    on_reading_threads(names, max_threads, |chunk| read_chunk(dirs, chunk))
}

fn read_chunk(dirs: &Dirs<'_>, names: &[String]) -> Vec<Outcome> {
    let mut reader = AttrReader::default();
    let mut parents = ParentDirs::default();
    names
        .iter()
        .map(|name| {
            let mut soft = Vec::new();
            let result = read_device(dirs, name, &mut reader, &mut parents, &mut soft);
            Outcome { result, soft }
        })
        .collect()
}

/// The parent PF's DRA name: the `physfn` target for a real VF, function 0 of the same bus
/// and slot for a static VF. A VF whose parent is not a mock-accel PF is still listed, without
/// a parent, and the gap is reported.
fn resolve_parent(
    root: &Path,
    vf: &Device,
    place: PciPlace,
    devices: &[Device],
    by_bdf: &HashMap<Bdf, usize>,
    warnings: &mut Vec<SysfsError>,
) -> Option<String> {
    let (parent_bdf, how) = match place.physfn_bdf {
        Some(bdf) => (bdf, "device/physfn points to"),
        None => (place.bdf.with_function(0), "function 0 of its slot is"),
    };
    // A function is no parent of itself (a static VF that is function 0 of its slot).
    let parent = by_bdf
        .get(&parent_bdf)
        .filter(|_| parent_bdf != place.bdf)
        .map(|&i| &devices[i])
        .filter(|p| p.device_type == DeviceType::Pf);
    match parent {
        Some(p) => Some(p.name.clone()),
        None => {
            let file = if place.physfn_bdf.is_some() {
                "device/physfn"
            } else {
                "device"
            };
            warnings.push(SysfsError::invalid(
                &device_dir(root, &vf.sysfs_name).join(file),
                format!(
                    "VF's {how} {parent_bdf}, which is not a listed mock-accel PF; published without a parent"
                ),
            ));
            None
        }
    }
}

/// The directories every scan starts from, opened once per scan: the sysfs root, below which
/// the functions' parent directories are opened, and the class directory, whose entries are
/// read as links.
struct Dirs<'a> {
    root: &'a Path,
    root_fd: OwnedFd,
    class: OwnedFd,
}

/// Handles on the directories that hold PCI functions' directories (a root port's, such as
/// `devices/pci0000:10/0000:10:00.0`), opened once per scan thread and shared by the devices
/// below them, so that opening a device's directory is three path components
/// (`0000:11:00.0/mock-accel/mock0`) instead of the class symlink and its eight. At most
/// [`PARENT_HANDLES`] are kept: on a tree whose functions each sit under their own port, the
/// others are opened from the root instead, and the scan holds no more descriptors.
#[derive(Default)]
struct ParentDirs(Vec<(String, OwnedFd)>);

/// Parent directories kept open per scan thread: a node has a few PCI root ports.
const PARENT_HANDLES: usize = 64;

impl ParentDirs {
    /// Opens `<parent>/<below>` (both relative to the root) as a directory handle.
    fn open_below(
        &mut self,
        root: &OwnedFd,
        parent: &str,
        below: &str,
    ) -> std::io::Result<OwnedFd> {
        if let Some((_, fd)) = self.0.iter().find(|(path, _)| path == parent) {
            return open_dir(fd, Path::new(below));
        }
        if self.0.len() == PARENT_HANDLES {
            return open_dir(root, &Path::new(parent).join(below));
        }
        let fd = open_dir(root, Path::new(parent))?;
        let dir = open_dir(&fd, Path::new(below))?;
        self.0.push((parent.to_string(), fd));
        Ok(dir)
    }
}

/// One class device's directory, opened once (`O_PATH`) by the path its class link names: each
/// of its files is then one path component away (`uuid`), the PCI function's files three
/// (`../../device`), where a lookup from the class directory (`mock3/uuid`) would walk the class
/// symlink's target, eight components, for every file again.
struct DeviceDir<'a> {
    root: &'a Path,
    sysfs_name: &'a str,
    fd: OwnedFd,
    /// From the class link's target.
    bdf: Bdf,
    /// From the class link's target too, or the warning that it names none.
    pcie_root: Result<String, SysfsError>,
}

impl<'a> DeviceDir<'a> {
    /// Reads the class entry's link and opens the directory it names.
    fn open(
        dirs: &Dirs<'a>,
        sysfs_name: &'a str,
        link_buf: &mut [u8],
        parents: &mut ParentDirs,
    ) -> Result<Self, SysfsError> {
        let entry = || device_dir(dirs.root, sysfs_name);
        let target = match read_link_at(link_buf, &dirs.class, sysfs_name) {
            Ok(target) => target,
            Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
                return Err(SysfsError::invalid(
                    &entry(),
                    "not a symbolic link; the kernel makes every class entry a link into devices/",
                ));
            }
            Err(source) => return Err(SysfsError::io(&entry(), source)),
        };
        let target = target
            .to_str()
            .ok_or_else(|| SysfsError::invalid(&entry(), "class link target is not UTF-8"))?;
        let link =
            parse_class_link(target).map_err(|problem| SysfsError::invalid(&entry(), problem))?;
        let pcie_root = link.pcie_root.map(str::to_string).ok_or_else(|| {
            SysfsError::invalid(
                &entry(),
                format!(
                    "class link target {target:?} has no pci<domain>:<bus> after devices/; pcieRoot left out for {sysfs_name}"
                ),
            )
        });
        let fd = parents
            .open_below(&dirs.root_fd, link.function_parent, link.below_parent)
            .map_err(|source| SysfsError::io(&entry(), source))?;
        Ok(DeviceDir {
            root: dirs.root,
            sysfs_name,
            fd,
            bdf: link.bdf,
            pcie_root,
        })
    }

    /// Whether the class directory holds `name`, in one lookup that opens nothing. A failure
    /// counts as "no", so the caller makes the probe this check would have saved.
    fn shows(&self, name: &str) -> bool {
        rustix::fs::accessat(&self.fd, name, Access::EXISTS, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// `<root>/class/mock-accel/<sysfs name>/<attr>`, for error messages only.
    fn path(&self, attr: &str) -> PathBuf {
        device_dir(self.root, self.sysfs_name).join(attr)
    }
}

/// A directory handle for `*at` lookups: `O_PATH` needs no read permission and reads nothing.
fn open_dir(dir: impl AsFd, path: &Path) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
}

/// Longest symlink target read; the kernel's `PATH_MAX`.
const LINK_MAX: usize = 4096;

/// First read size: sysfs hands out an attribute (at most a page) in one read.
const READ_BUF: usize = 4096;

/// A file read for a device: the path opened relative to its directory handle, and the path
/// that errors name below `class/mock-accel/<name>/` (where a user would look).
#[derive(Clone, Copy)]
struct Attr {
    open: &'static str,
    shown: &'static str,
}

/// A class attribute: opened and named alike.
impl From<&'static str> for Attr {
    fn from(name: &'static str) -> Self {
        Attr {
            open: name,
            shown: name,
        }
    }
}

/// The PCI function's files. Its directory is the class directory's grandparent, where the
/// class directory's `device` link points (see [`super::class_link`]); `../../` reaches it
/// without following that link, and the errors name the files through it, as before.
const PCI_DEVICE_ID: Attr = Attr {
    open: "../../device",
    shown: "device/device",
};
const PCI_NUMA_NODE: Attr = Attr {
    open: "../../numa_node",
    shown: "device/numa_node",
};
const PCI_PHYSFN: Attr = Attr {
    open: "../../physfn",
    shown: "device/physfn",
};

/// The class attribute the module shows on every function but a virtfn (contract §5).
const SRIOV_TOTALVFS: &str = "sriov_totalvfs";

/// Whether a class device's name has the form the module gives a virtfn (`mock0_vf1`, after
/// its PF's name), which orders the scan's lookups and nothing else.
fn named_like_virtfn(sysfs_name: &str) -> bool {
    sysfs_name
        .rsplit_once("_vf")
        .is_some_and(|(_, index)| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads small attribute files and symlinks relative to a device's directory handle, into
/// buffers reused for every device: three system calls per file (open, one read, close), one
/// per link, and no allocation unless something fails or a file is longer than a page.
struct AttrReader {
    /// The file `buf` holds (for error messages).
    attr: Attr,
    /// Read straight into; `len` bytes are the file's text. Zeroed once, when it grows.
    buf: Vec<u8>,
    len: usize,
    link: Vec<u8>,
}

impl Default for AttrReader {
    fn default() -> Self {
        AttrReader {
            attr: Attr::from(""),
            buf: vec![0; READ_BUF],
            len: 0,
            link: vec![0; LINK_MAX],
        }
    }
}

impl AttrReader {
    /// The text of `<device>/<attr>`, or the I/O error naming the file.
    fn read(&mut self, dev: &DeviceDir<'_>, attr: impl Into<Attr>) -> Result<&str, SysfsError> {
        let attr = attr.into();
        self.fill(dev, attr)
            .map_err(|source| SysfsError::io(&dev.path(attr.shown), source))?;
        self.text(dev)
    }

    /// Like [`AttrReader::read`], but `None` when the file does not exist.
    fn read_optional(
        &mut self,
        dev: &DeviceDir<'_>,
        attr: impl Into<Attr>,
    ) -> Result<Option<&str>, SysfsError> {
        let attr = attr.into();
        match self.fill(dev, attr) {
            Ok(()) => self.text(dev).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SysfsError::io(&dev.path(attr.shown), source)),
        }
    }

    /// Reads the file `attr` of the device into `buf`.
    fn fill(&mut self, dev: &DeviceDir<'_>, attr: Attr) -> std::io::Result<()> {
        self.attr = attr;
        self.len = 0;
        let fd = rustix::fs::openat(
            &dev.fd,
            attr.open,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // sysfs hands out a whole attribute (at most a page) in one read, and a local file
        // read that comes back short is at its end, so a short read needs no second call.
        loop {
            match rustix::io::read(&fd, &mut self.buf[self.len..]) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.len += n;
                    if self.len < self.buf.len() {
                        return Ok(());
                    }
                    // A full buffer: a simulated tree's file may hold more than a page.
                    self.buf.resize(self.buf.len() * 2, 0);
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn text(&self, dev: &DeviceDir<'_>) -> Result<&str, SysfsError> {
        let bytes = &self.buf[..self.len];
        std::str::from_utf8(bytes).map_err(|_| {
            SysfsError::parse(
                &dev.path(self.attr.shown),
                &String::from_utf8_lossy(bytes),
                "not UTF-8 text",
            )
        })
    }

    /// Reads a register; one found empty is read again, up to [`EMPTY_REGISTER_REREADS`]
    /// times. Real sysfs never shows an empty attribute, but in a simulated tree the register is
    /// a regular file that the driver's own write truncates before it writes: a scan between
    /// the two would see nothing and drop the device, failing a prepare that runs meanwhile.
    fn register(&mut self, dev: &DeviceDir<'_>, attr: &'static str) -> Result<u32, SysfsError> {
        let mut rereads = 0;
        while self.read(dev, attr)?.is_empty() && rereads < EMPTY_REGISTER_REREADS {
            rereads += 1;
            // Long enough for a writer that was preempted between its truncate and its write
            // (a loaded node) to finish; scans run on the blocking pool.
            std::thread::sleep(EMPTY_REGISTER_PAUSE);
        }
        let text = self.text(dev)?;
        parse_register(text).map_err(|reason| SysfsError::parse(&dev.path(attr), text, reason))
    }

    /// The target of the symlink `<device>/<attr>`, `None` when there is none.
    fn link(&mut self, dev: &DeviceDir<'_>, attr: Attr) -> Result<Option<&Path>, SysfsError> {
        match read_link_at(&mut self.link, &dev.fd, attr.open) {
            Ok(target) => Ok(Some(target)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SysfsError::io(&dev.path(attr.shown), source)),
        }
    }
}

/// How often [`AttrReader::register`] reads an empty register again before it reports it, and
/// the pause before each reread: at most 100 ms per register (a writer preempted on a loaded
/// node), spent only on simulated trees and only while a write is in flight.
const EMPTY_REGISTER_REREADS: u32 = 200;
const EMPTY_REGISTER_PAUSE: std::time::Duration = std::time::Duration::from_micros(500);

/// The target of the symlink `rel` under `dir`, in one `readlinkat` into `buf`.
fn read_link_at<'b>(buf: &'b mut [u8], dir: impl AsFd, rel: &str) -> std::io::Result<&'b Path> {
    let len = rustix::fs::readlinkat_raw(dir, rel, &mut *buf)?;
    if len >= LINK_MAX {
        return Err(std::io::Error::other(
            "link target is PATH_MAX bytes or longer, which no sysfs link is",
        ));
    }
    Ok(Path::new(OsStr::from_bytes(&buf[..len])))
}

/// Reads one class device. Soft problems (an unreadable `fw_version`, a missing pcieRoot link)
/// go to `warnings`; the error is the reason to skip the device.
fn read_device(
    dirs: &Dirs<'_>,
    sysfs_name: &str,
    r: &mut AttrReader,
    parents: &mut ParentDirs,
    warnings: &mut Vec<SysfsError>,
) -> Result<RawDevice, SysfsError> {
    let root = dirs.root;
    let name = dra_device_name(sysfs_name)
        .map_err(|e| SysfsError::invalid(&root.join(CLASS_DIR).join(sysfs_name), e.to_string()))?;
    let dev = DeviceDir::open(dirs, sysfs_name, &mut r.link, parents)?;
    let bdf = dev.bdf;

    let uuid = {
        let text = r.read(&dev, "uuid")?;
        parse_uuid(text).map_err(|reason| SysfsError::parse(&dev.path("uuid"), text, reason))?
    };

    let memory = {
        let text = r.read(&dev, "memory_size")?;
        text.trim().parse::<u64>().map_err(|e| {
            SysfsError::parse(
                &dev.path("memory_size"),
                text,
                format!("not a decimal byte count: {e}"),
            )
        })?
    };

    let capabilities = r.register(&dev, "capabilities")?;
    let status = r.register(&dev, "status")?;

    let numa_node = {
        let mut attr = Attr::from("numa_node");
        if r.read_optional(&dev, attr)?.is_none() {
            attr = PCI_NUMA_NODE;
            r.read(&dev, attr)?;
        }
        let text = r.text(&dev)?;
        parse_numa(text).map_err(|reason| SysfsError::parse(&dev.path(attr.shown), text, reason))?
    };

    let fw_version = match r.read_optional(&dev, "fw_version") {
        Ok(None) => None,
        Ok(Some(text)) => match parse_fw_version(text) {
            Ok(v) => Some(v),
            Err(reason) => {
                warnings.push(SysfsError::parse(
                    &dev.path("fw_version"),
                    text,
                    format!("{reason}; firmware version left out"),
                ));
                None
            }
        },
        Err(e) => {
            warnings.push(e);
            None
        }
    };

    // Only a real SR-IOV VF (a virtfn) has a `physfn` link, and the module hides
    // `sriov_totalvfs` from virtfns alone (PFs show it, static VFs show 0): a class directory
    // that shows it needs no probe. On a simulated tree (tmpfs) the probe of a link that is not
    // there is a lookup that finds nothing, which tmpfs does not remember, several times the
    // cost of finding a name that exists (BENCHMARKS.md, Discovery). A name of the form the
    // module gives virtfns is probed at once, so that a real VF pays for no second lookup;
    // the name only orders the lookups, the link alone decides.
    let maybe_virtfn = named_like_virtfn(sysfs_name) || !dev.shows(SRIOV_TOTALVFS);
    let physfn = if maybe_virtfn {
        r.link(&dev, PCI_PHYSFN)?
    } else {
        None
    };
    let physfn_bdf = match physfn {
        Some(target) => Some(
            link_basename(target)
                .and_then(|b| {
                    b.parse::<Bdf>()
                        .map_err(|reason| format!("link target: {reason}"))
                })
                .map_err(|problem| SysfsError::invalid(&dev.path(PCI_PHYSFN.shown), problem))?,
        ),
        None => None,
    };

    // A `physfn` link makes the function a VF whatever its PCI device id says, so the id is
    // read only for functions without one (PFs and static VFs): three calls fewer per SR-IOV VF.
    let device_type = match physfn_bdf {
        Some(_) => DeviceType::Vf,
        None => match r.read(&dev, PCI_DEVICE_ID)?.trim() {
            PCI_DEVICE_VF => DeviceType::Vf,
            PCI_DEVICE_PF => DeviceType::Pf,
            other => {
                return Err(SysfsError::parse(
                    &dev.path(PCI_DEVICE_ID.shown),
                    other,
                    format!(
                        "not a mock-accel PCI device id ({PCI_DEVICE_PF} PF or {PCI_DEVICE_VF} VF)"
                    ),
                ));
            }
        },
    };

    let pcie_root = match dev.pcie_root {
        Ok(root) => Some(root),
        Err(e) => {
            warnings.push(e);
            None
        }
    };

    Ok(RawDevice {
        device: Device {
            name,
            sysfs_name: sysfs_name.to_string(),
            device_type,
            uuid,
            memory,
            pci_address: bdf.to_string(),
            pcie_root,
            numa_node,
            physfn: None,
            capabilities,
            status,
            fw_version,
        },
        pci: PciPlace { bdf, physfn_bdf },
    })
}

/// The last component of a symlink's target (the BDF for `device` and `physfn` links).
fn link_basename(target: &Path) -> Result<&str, String> {
    target.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        format!(
            "link target {} has no usable last component",
            target.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::sim::{self, TopologySpec};
    use crate::sysfs::{PCI_BUS_DEVICES_DIR, read_dev_numbers, read_status, write_status};

    fn canonical() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        sim::create(dir.path(), None, &TopologySpec::canonical(1)).unwrap();
        dir
    }

    fn put(root: &Path, name: &str, attr: &str, text: &str) {
        fs::write(device_dir(root, name).join(attr), text).unwrap();
    }

    fn names(scan: &Scan) -> Vec<&str> {
        scan.inventory
            .devices
            .iter()
            .map(|d| d.name.as_str())
            .collect()
    }

    fn warnings(scan: &Scan) -> String {
        scan.warnings.iter().map(|w| format!("{w}\n")).collect()
    }

    /// A prepare writes the status register while the agent's resync scans: on a simulated tree
    /// (regular files) the write truncates first, and the scan must not take the empty file
    /// for a broken device.
    #[test]
    fn a_register_write_during_a_scan_does_not_drop_the_device() {
        let dir = canonical();
        let root = dir.path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (root, stop) = (root.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut value = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    write_status(&root, "mock1", value).unwrap();
                    value ^= 1;
                    // Prepares come one at a time, each with other work around its write.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            })
        };
        let mut dropped = 0;
        for _ in 0..300 {
            if scan(&root).unwrap().inventory.get("mock1").is_none() {
                dropped += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(dropped, 0, "scans that lost mock1 during register writes");
    }

    #[test]
    fn canonical_static_layout_types_vfs_by_pci_id_and_parents_by_slot() {
        let dir = canonical();
        let scan = scan(dir.path()).unwrap();
        assert!(scan.warnings.is_empty(), "{}", warnings(&scan));
        assert_eq!(
            names(&scan),
            ["mock0", "mock1", "mock2", "mock3", "mock4", "mock5"]
        );
        let inv = &scan.inventory;
        let m0 = inv.get("mock0").unwrap();
        assert_eq!(m0.device_type, DeviceType::Pf);
        assert_eq!(m0.uuid, "4e4f4445-312d-4e55-4d41-302d50460000");
        assert_eq!(m0.memory, 17_179_869_184);
        assert_eq!(m0.pci_address, "0000:11:00.0");
        assert_eq!(m0.pcie_root.as_deref(), Some("pci0000:10"));
        assert_eq!(m0.numa_node, Some(0));
        assert_eq!(m0.physfn, None);
        assert_eq!((m0.capabilities, m0.status), (1, 1));
        assert_eq!(m0.fw_version.as_deref(), Some("1.0.0"));
        for (vf, parent) in [
            ("mock1", "mock0"),
            ("mock2", "mock0"),
            ("mock4", "mock3"),
            ("mock5", "mock3"),
        ] {
            let d = inv.get(vf).unwrap();
            assert_eq!(d.device_type, DeviceType::Vf, "{vf}");
            assert_eq!(d.physfn.as_deref(), Some(parent), "{vf}");
            assert_eq!(d.memory, 2_147_483_648);
        }
        let m5 = inv.get("mock5").unwrap();
        assert_eq!(m5.pci_address, "0000:21:00.2");
        assert_eq!(m5.pcie_root.as_deref(), Some("pci0000:20"));
        assert_eq!(m5.numa_node, Some(1));
        assert_eq!(m5.uuid, "4e4f4445-312d-4e55-4d41-312d56463100");
        assert_eq!(inv.count(DeviceType::Pf), 2);
    }

    #[test]
    fn sriov_layout_maps_vf_names_and_follows_physfn() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        sim::create(root, None, &TopologySpec::sriov(1)).unwrap();
        let before = scan(root).unwrap();
        assert_eq!(names(&before), ["mock0", "mock1"]);

        sim::set_numvfs(root, None, "mock0", 2).unwrap();
        let after = scan(root).unwrap();
        assert!(after.warnings.is_empty(), "{}", warnings(&after));
        assert_eq!(names(&after), ["mock0", "mock0-vf0", "mock0-vf1", "mock1"]);
        let vf = after.inventory.get("mock0-vf0").unwrap();
        assert_eq!(vf.sysfs_name, "mock0_vf0");
        assert_eq!(vf.device_type, DeviceType::Vf);
        assert_eq!(vf.physfn.as_deref(), Some("mock0"));
        assert_eq!(vf.pci_address, "0000:11:00.1");
        assert_eq!(vf.numa_node, Some(0));
        assert_eq!(vf.memory, 2_147_483_648);
        assert_eq!(
            read_dev_numbers(root, "mock0_vf1"),
            Some((sim::SIM_MAJOR, 3))
        );

        sim::set_numvfs(root, None, "mock0", 0).unwrap();
        assert_eq!(names(&scan(root).unwrap()), ["mock0", "mock1"]);
    }

    /// Renames a class entry: the same link target under another name.
    fn rename_class_entry(root: &Path, from: &str, to: &str) {
        let class = root.join(CLASS_DIR);
        let target = fs::read_link(class.join(from)).unwrap();
        std::os::unix::fs::symlink(target, class.join(to)).unwrap();
        fs::remove_file(class.join(from)).unwrap();
    }

    /// The scan skips the `physfn` probe where `sriov_totalvfs` shows and probes names of the
    /// virtfn form first; neither may change what a device is.
    #[test]
    fn a_virtfn_is_known_by_its_link_and_a_static_vf_by_its_id_whatever_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        sim::create(root, None, &TopologySpec::sriov(1)).unwrap();
        sim::set_numvfs(root, None, "mock0", 2).unwrap();
        rename_class_entry(root, "mock0_vf1", "accel7");
        // The link, pointed at the other PF, must decide the parent (function 0 of the VF's
        // slot is mock0).
        let mock1 = fs::read_link(root.join(CLASS_DIR).join("mock1")).unwrap();
        let mock1_bdf = mock1
            .iter()
            .rev()
            .nth(2)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let physfn = device_dir(root, "accel7").join("device/physfn");
        fs::remove_file(&physfn).unwrap();
        std::os::unix::fs::symlink(format!("../{mock1_bdf}"), &physfn).unwrap();
        let sriov = scan(root).unwrap();
        assert!(sriov.warnings.is_empty(), "{}", warnings(&sriov));
        let vf = sriov.inventory.get("accel7").unwrap();
        assert_eq!(vf.device_type, DeviceType::Vf);
        assert_eq!(vf.physfn.as_deref(), Some("mock1"));
        assert_eq!(vf.pci_address, "0000:11:00.2");

        let dir = canonical();
        rename_class_entry(dir.path(), "mock1", "mock0_vf5");
        let fixed = scan(dir.path()).unwrap();
        assert!(fixed.warnings.is_empty(), "{}", warnings(&fixed));
        let vf = fixed.inventory.get("mock0-vf5").unwrap();
        assert_eq!(vf.device_type, DeviceType::Vf);
        assert_eq!(
            vf.physfn.as_deref(),
            Some("mock0"),
            "function 0 of its slot"
        );
        assert_eq!(vf.pci_address, "0000:11:00.1");
        // A function that shows sriov_totalvfs is no virtfn (the module hides it from them
        // alone), so a physfn link beside it is not looked for.
        let static_vf = device_dir(dir.path(), "mock2");
        assert!(static_vf.join("sriov_totalvfs").exists());
        std::os::unix::fs::symlink("../0000:21:00.0", static_vf.join("device/physfn")).unwrap();
        let linked = scan(dir.path()).unwrap();
        let mock3 = linked.inventory.get("mock3").unwrap();
        assert_eq!(
            (mock3.device_type, mock3.pci_address.as_str()),
            (DeviceType::Pf, "0000:21:00.0")
        );
        let mock2 = linked.inventory.get("mock2").unwrap();
        assert_eq!(
            mock2.physfn.as_deref(),
            Some("mock0"),
            "function 0 of its slot, not the link"
        );
        let pf = fixed.inventory.get("mock0").unwrap();
        assert_eq!(
            (pf.device_type, pf.physfn.as_deref()),
            (DeviceType::Pf, None)
        );
    }

    #[test]
    fn only_the_virtfn_name_form_orders_the_physfn_probe_first() {
        for name in ["mock0_vf0", "mock12_vf3", "x_vf_vf10"] {
            assert!(named_like_virtfn(name), "{name}");
        }
        for name in [
            "mock0",
            "mock0_vf",
            "mock0_vfx",
            "mock0_vf1a",
            "vf1",
            "mock0-vf1",
        ] {
            assert!(!named_like_virtfn(name), "{name}");
        }
    }

    #[test]
    fn a_vf_whose_parent_pf_is_broken_is_kept_without_parent() {
        let dir = canonical();
        fs::remove_file(device_dir(dir.path(), "mock0").join("uuid")).unwrap();
        let scan = scan(dir.path()).unwrap();
        assert_eq!(names(&scan), ["mock1", "mock2", "mock3", "mock4", "mock5"]);
        assert_eq!(scan.inventory.get("mock1").unwrap().physfn, None);
        let w = warnings(&scan);
        assert!(w.contains("mock0/uuid: No such file"), "{w}");
        assert!(w.contains("device mock0 skipped"), "{w}");
        assert!(
            w.contains("0000:11:00.0, which is not a listed mock-accel PF"),
            "{w}"
        );
    }

    #[test]
    fn status_and_capabilities_accept_hex_and_decimal_and_memory_may_be_zero() {
        let dir = canonical();
        let root = dir.path();
        put(root, "mock0", "status", "4660\n");
        put(root, "mock1", "status", "0x00001234\n");
        put(root, "mock2", "capabilities", "0x0000000b\n");
        put(root, "mock3", "memory_size", "0\n");
        let scan = scan(root).unwrap();
        assert!(scan.warnings.is_empty(), "{}", warnings(&scan));
        let inv = &scan.inventory;
        assert_eq!(inv.get("mock0").unwrap().status, 0x1234);
        assert_eq!(inv.get("mock1").unwrap().status, 0x1234);
        assert_eq!(inv.get("mock2").unwrap().capabilities, 0xb);
        assert_eq!(inv.get("mock3").unwrap().memory, 0);
        assert_eq!(inv.get("mock3").unwrap().device_type, DeviceType::Pf);
    }

    #[test]
    fn numa_comes_from_the_class_attribute_or_the_pci_device() {
        let dir = canonical();
        let root = dir.path();
        put(root, "mock0", "numa_node", "-1\n");
        fs::remove_file(device_dir(root, "mock1").join("numa_node")).unwrap();
        put(root, "mock1", "device/numa_node", "1\n");
        fs::remove_file(device_dir(root, "mock2").join("numa_node")).unwrap();
        put(root, "mock2", "device/numa_node", "-1\n");
        let scan = scan(root).unwrap();
        let inv = &scan.inventory;
        assert_eq!(inv.get("mock0").unwrap().numa_node, None);
        assert_eq!(inv.get("mock1").unwrap().numa_node, Some(1));
        assert_eq!(inv.get("mock2").unwrap().numa_node, None);
        assert_eq!(inv.get("mock3").unwrap().numa_node, Some(1));

        let none = tempfile::tempdir().unwrap();
        sim::create(none.path(), None, &TopologySpec::numa_none(1)).unwrap();
        let scan = super::scan(none.path()).unwrap();
        assert!(scan.inventory.devices.iter().all(|d| d.numa_node.is_none()));
    }

    #[test]
    fn malformed_and_missing_files_skip_only_that_device_and_name_the_file() {
        let cases: [(&str, &str, Option<&str>, &str); 8] = [
            (
                "mock1",
                "uuid",
                Some("NODE1-NUMA0-VF0\n"),
                "mock1/uuid: cannot parse",
            ),
            (
                "mock1",
                "memory_size",
                Some("2G\n"),
                "mock1/memory_size: cannot parse",
            ),
            (
                "mock1",
                "memory_size",
                None,
                "mock1/memory_size: No such file",
            ),
            (
                "mock1",
                "status",
                Some("busy\n"),
                "mock1/status: cannot parse \"busy\\n\"",
            ),
            (
                "mock1",
                "capabilities",
                None,
                "mock1/capabilities: No such file",
            ),
            (
                "mock1",
                "numa_node",
                Some("x\n"),
                "mock1/numa_node: cannot parse",
            ),
            (
                "mock1",
                "device/device",
                Some("0x0003\n"),
                "mock1/device/device: cannot parse",
            ),
            (
                "mock1",
                "device/device",
                None,
                "mock1/device/device: No such file",
            ),
        ];
        for (dev, attr, text, expect) in cases {
            let dir = canonical();
            let root = dir.path();
            let path = device_dir(root, dev).join(attr);
            match text {
                Some(t) => fs::write(&path, t).unwrap(),
                None => fs::remove_file(&path).unwrap(),
            }
            let scan = scan(root).unwrap();
            assert_eq!(
                names(&scan),
                ["mock0", "mock2", "mock3", "mock4", "mock5"],
                "{attr}"
            );
            let w = warnings(&scan);
            assert_eq!(scan.warnings.len(), 1, "{w}");
            assert!(w.contains(expect), "{attr}: {w}");
            assert!(w.contains("device mock1 skipped"), "{w}");
            assert!(
                scan.warnings[0]
                    .path()
                    .ends_with(Path::new("mock1").join(attr)),
                "{w}"
            );
        }
    }

    #[test]
    fn optional_facts_are_warned_about_but_keep_the_device() {
        let dir = canonical();
        let root = dir.path();
        fs::remove_file(device_dir(root, "mock0").join("fw_version")).unwrap();
        put(root, "mock1", "fw_version", "one\n");
        // mock3's class link reaches its function through a directory not named pci<...>.
        std::os::unix::fs::symlink("pci0000:20", root.join("devices/host0")).unwrap();
        let entry = root.join(CLASS_DIR).join("mock3");
        fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/host0/0000:20:00.0/0000:21:00.0/mock-accel/mock3",
            &entry,
        )
        .unwrap();
        let scan = scan(root).unwrap();
        assert_eq!(scan.inventory.devices.len(), 6);
        let inv = &scan.inventory;
        assert_eq!(inv.get("mock0").unwrap().fw_version, None);
        assert_eq!(inv.get("mock1").unwrap().fw_version, None);
        let m3 = inv.get("mock3").unwrap();
        assert_eq!(m3.pcie_root, None);
        assert_eq!(
            (m3.pci_address.as_str(), m3.numa_node),
            ("0000:21:00.0", Some(1))
        );
        let w = warnings(&scan);
        assert_eq!(scan.warnings.len(), 2, "{w}");
        assert!(w.contains("mock1/fw_version: cannot parse"), "{w}");
        assert!(
            w.contains("has no pci<domain>:<bus> after devices/; pcieRoot left out for mock3"),
            "{w}"
        );
        assert_eq!(scan.warnings[1].path(), entry, "{w}");
    }

    /// The PCI address and the pcieRoot come from the class link's target: the class
    /// directory's `device` link and the `bus/pci/devices` link, which name the same
    /// directory in the kernel's layout, are not read.
    #[test]
    fn the_pci_address_and_pcie_root_come_from_the_class_link() {
        let dir = canonical();
        let root = dir.path();
        fs::remove_file(root.join(PCI_BUS_DEVICES_DIR).join("0000:21:00.0")).unwrap();
        fs::remove_file(device_dir(root, "mock4").join("device")).unwrap();
        let scan = scan(root).unwrap();
        assert!(scan.warnings.is_empty(), "{}", warnings(&scan));
        let m3 = scan.inventory.get("mock3").unwrap();
        assert_eq!(m3.pcie_root.as_deref(), Some("pci0000:20"));
        let m4 = scan.inventory.get("mock4").unwrap();
        assert_eq!(m4.pci_address, "0000:21:00.1");
        assert_eq!(m4.physfn.as_deref(), Some("mock3"));
    }

    #[test]
    fn missing_class_directory_is_an_empty_inventory_and_a_bad_root_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let scan = scan(dir.path()).unwrap();
        assert!(scan.inventory.devices.is_empty());
        assert!(matches!(
            scan.warnings[..],
            [SysfsError::ModuleNotLoaded { .. }]
        ));
        assert!(warnings(&scan).contains("class/mock-accel: directory missing"));

        fs::create_dir_all(dir.path().join(CLASS_DIR)).unwrap();
        let scan = super::scan(dir.path()).unwrap();
        assert!(scan.inventory.devices.is_empty() && scan.warnings.is_empty());

        assert!(super::scan(&dir.path().join("nope")).is_err());
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(
            super::scan(&file)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }

    #[test]
    fn escaping_and_colliding_names_are_refused() {
        let dir = canonical();
        let root = dir.path();
        let class = root.join(CLASS_DIR);
        let target = fs::read_link(class.join("mock1")).unwrap();
        std::os::unix::fs::symlink(&target, class.join("..mock9")).unwrap();
        std::os::unix::fs::symlink(&target, class.join("MOCK1")).unwrap();
        let scan = scan(root).unwrap();
        assert_eq!(
            names(&scan),
            ["mock0", "mock1", "mock2", "mock3", "mock4", "mock5"]
        );
        // MOCK1 sorts before mock1, so it keeps the DRA name and mock1 is skipped.
        assert_eq!(scan.inventory.get("mock1").unwrap().sysfs_name, "MOCK1");
        let w = warnings(&scan);
        assert!(w.contains("refusing class entry \"..mock9\""), "{w}");
        assert!(
            w.contains("already taken by \"MOCK1\"; mock1 skipped, MOCK1 kept"),
            "{w}"
        );

        assert!(check_sysfs_name(root, "../etc").is_err());
        assert!(check_sysfs_name(root, "a/b").is_err());
        assert!(check_sysfs_name(root, "a\0b").is_err());
        assert!(check_sysfs_name(root, "mock0_vf0").is_ok());
        assert!(read_status(root, "../../etc").is_err());
        assert!(write_status(root, "..", 1).is_err());
    }

    /// A class entry whose target is gone (a device removed between listing and reading) is
    /// reported as itself, not as its first file.
    #[test]
    fn a_dangling_class_entry_skips_that_device_and_names_the_entry() {
        let dir = canonical();
        let root = dir.path();
        let entry = root.join(CLASS_DIR).join("mock1");
        fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0000:10/0000:10:00.0/0000:11:00.7/mock-accel/mock1",
            &entry,
        )
        .unwrap();
        let scan = scan(root).unwrap();
        assert_eq!(names(&scan), ["mock0", "mock2", "mock3", "mock4", "mock5"]);
        let w = warnings(&scan);
        assert_eq!(scan.warnings.len(), 1, "{w}");
        assert_eq!(scan.warnings[0].path(), entry, "{w}");
        assert!(w.contains("No such file"), "{w}");
        assert!(w.contains("device mock1 skipped"), "{w}");
    }

    #[test]
    fn two_class_devices_on_one_function_keep_the_first() {
        let dir = canonical();
        let root = dir.path();
        // mock2's class link now leads into mock1's function.
        let class = root.join(CLASS_DIR);
        let target = fs::read_link(class.join("mock1")).unwrap();
        fs::remove_file(class.join("mock2")).unwrap();
        std::os::unix::fs::symlink(&target, class.join("mock2")).unwrap();
        let scan = scan(root).unwrap();
        assert_eq!(names(&scan), ["mock0", "mock1", "mock3", "mock4", "mock5"]);
        let w = warnings(&scan);
        assert!(
            w.contains("class/mock-accel/mock2: PCI function 0000:11:00.1 already belongs to mock1; mock2 skipped"),
            "{w}"
        );
    }

    /// A class entry that is not a link of the kernel's form skips that device, and the
    /// warning names the entry, its target and the form expected.
    #[test]
    fn a_class_link_of_another_shape_skips_that_device_and_names_the_entry() {
        let dir = canonical();
        let root = dir.path();
        let class = root.join(CLASS_DIR);
        fs::remove_file(class.join("mock1")).unwrap();
        std::os::unix::fs::symlink("../../devices/gone/mock-accel/mock1", class.join("mock1"))
            .unwrap();
        // mock2 becomes a plain directory, which the kernel never makes.
        fs::remove_file(class.join("mock2")).unwrap();
        fs::create_dir(class.join("mock2")).unwrap();
        let scan = scan(root).unwrap();
        assert_eq!(names(&scan), ["mock0", "mock3", "mock4", "mock5"]);
        let w = warnings(&scan);
        assert_eq!(scan.warnings.len(), 2, "{w}");
        assert_eq!(scan.warnings[0].path(), class.join("mock1"), "{w}");
        assert!(
            w.contains(
                "class link target \"../../devices/gone/mock-accel/mock1\" has no PCI address before mock-accel/"
            ),
            "{w}"
        );
        assert!(
            w.contains("expected ../../devices/<path>/<PCI address>/mock-accel/<name>"),
            "{w}"
        );
        assert!(w.contains("device mock1 skipped"), "{w}");
        assert_eq!(scan.warnings[1].path(), class.join("mock2"), "{w}");
        assert!(
            w.contains("mock2: not a symbolic link; the kernel makes every class entry a link"),
            "{w}"
        );
    }

    /// Devices under more parent directories than a thread keeps handles for are read all
    /// the same (opened from the root), and one thread reads what several read.
    #[test]
    fn many_parent_directories_and_any_thread_count_give_the_same_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let spec = TopologySpec {
            numa_nodes: 2,
            pfs_per_numa: 40,
            vfs_per_pf: 1,
            total_vfs: 1,
            ..TopologySpec::canonical(1)
        };
        sim::create(root, None, &spec).unwrap();
        // Each PF and its VF under a directory of their own: 80 parents, more than are kept.
        let class = root.join(CLASS_DIR);
        let mut moved = 0;
        for entry in fs::read_dir(&class).unwrap() {
            let entry = entry.unwrap().path();
            let target = fs::read_link(&entry).unwrap();
            let target = target.to_str().unwrap();
            let link = parse_class_link(target).unwrap();
            let own = format!(
                "{}/port-{}",
                link.function_parent,
                link.bdf.with_function(0)
            );
            let own_dir = root.join(&own);
            if !own_dir.exists() {
                fs::create_dir(&own_dir).unwrap();
            }
            let function = link.below_parent.split('/').next().unwrap();
            let from = root.join(link.function_parent).join(function);
            if from.exists() {
                fs::rename(&from, own_dir.join(function)).unwrap();
            }
            fs::remove_file(&entry).unwrap();
            std::os::unix::fs::symlink(format!("../../{own}/{}", link.below_parent), &entry)
                .unwrap();
            moved += 1;
        }
        assert_eq!(moved, 160);
        let many = scan_on_threads(root, 4).unwrap();
        assert!(many.warnings.is_empty(), "{}", warnings(&many));
        assert_eq!(many.inventory.devices.len(), 160);
        assert_eq!(many.inventory.count(DeviceType::Pf), 80);
        assert!(
            many.inventory.devices.iter().all(|d| d.pcie_root.is_some()
                && (d.device_type == DeviceType::Pf) == d.physfn.is_none())
        );
        let one = scan_on_threads(root, 1).unwrap();
        assert_eq!(one.inventory, many.inventory);
    }
}
