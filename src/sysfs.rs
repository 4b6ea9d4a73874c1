//! Reading the mock-accel class devices from a sysfs tree (real or simulated) and writing
//! their status register.
//!
//! The layout and formats are the kernel module's (see the sysfs contract): class entries in
//! `class/mock-accel/` are symlinks into `devices/pci…/<BDF>/mock-accel/<name>`, the class
//! directory's `device` link names the PCI function, `device/physfn` marks a real SR-IOV VF and
//! `device/device` = `0x0002` a static VF. [`scan`] turns that into an [`Inventory`]; a device
//! whose files are missing or malformed becomes a warning and is left out, so one broken function
//! never hides the others.
//!
//! Scanning reads a fixed number of files per device and resolves parents through one map from
//! BDF to device, so its cost grows linearly with the number of devices (no directory walks).

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
    io::Read,
    path::{Path, PathBuf},
    str::FromStr,
};

use crate::{
    inventory::{Device, DeviceType, Inventory},
    names::dra_device_name,
};

/// Class directory, relative to the sysfs root.
pub const CLASS_DIR: &str = "class/mock-accel";
/// PCI bus device links, relative to the sysfs root (targets give the pcieRoot).
pub const PCI_BUS_DEVICES_DIR: &str = "bus/pci/devices";
/// PCI vendor id of every mock-accel function, as `device/vendor` prints it.
pub const PCI_VENDOR: &str = "0x1de5";
/// PCI device id of a physical function, as `device/device` prints it.
pub const PCI_DEVICE_PF: &str = "0x0001";
/// PCI device id of a VF, static function or real SR-IOV VF alike.
pub const PCI_DEVICE_VF: &str = "0x0002";

/// What failed, on which file. Every variant's message starts with the path it concerns, so a
/// warning prints as `warning: <file>: <problem>`.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {value:?}: {reason}", path = path.display())]
    Parse {
        path: PathBuf,
        value: String,
        reason: String,
    },
    #[error("{path}: {problem}", path = path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error(
        "{path}: directory missing; the mock-accel module is not loaded (or the root is not a sysfs tree), so no devices",
        path = path.display()
    )]
    ModuleNotLoaded { path: PathBuf },
    #[error("{source}; device {device} skipped")]
    DeviceSkipped {
        device: String,
        source: Box<SysfsError>,
    },
}

impl SysfsError {
    /// The file or directory the error concerns.
    pub fn path(&self) -> &Path {
        match self {
            SysfsError::Io { path, .. }
            | SysfsError::Parse { path, .. }
            | SysfsError::Invalid { path, .. }
            | SysfsError::ModuleNotLoaded { path } => path,
            SysfsError::DeviceSkipped { source, .. } => source.path(),
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        SysfsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn invalid(path: &Path, problem: impl Into<String>) -> Self {
        SysfsError::Invalid {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    fn parse(path: &Path, value: &str, reason: impl Into<String>) -> Self {
        SysfsError::Parse {
            path: path.to_path_buf(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// A PCI function address `DDDD:BB:SS.F` (domain, bus, slot 0-31, function 0-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl Bdf {
    pub fn new(domain: u16, bus: u8, slot: u8, function: u8) -> Self {
        Bdf {
            domain,
            bus,
            slot,
            function,
        }
    }

    /// The same bus and slot, another function.
    pub fn with_function(self, function: u8) -> Self {
        Bdf { function, ..self }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

impl FromStr for Bdf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a PCI address DDDD:BB:SS.F");
        let b = s.as_bytes();
        if b.len() != 12 || b[4] != b':' || b[7] != b':' || b[10] != b'.' {
            return Err(bad());
        }
        let hex = |r: std::ops::Range<usize>| -> Result<u32, String> {
            let part = &s[r];
            if part.bytes().all(|c| c.is_ascii_hexdigit()) {
                u32::from_str_radix(part, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let domain = hex(0..4)?;
        let bus = hex(5..7)?;
        let slot = hex(8..10)?;
        let function = hex(11..12)?;
        if slot > 31 || function > 7 {
            return Err(format!("{s:?}: slot must be 00-1f and function 0-7"));
        }
        Ok(Bdf::new(
            domain as u16,
            bus as u8,
            slot as u8,
            function as u8,
        ))
    }
}

/// `<root>/class/mock-accel/<sysfs name>`: the class device directory (through its symlink).
pub fn device_dir(root: &Path, sysfs_name: &str) -> PathBuf {
    root.join(CLASS_DIR).join(sysfs_name)
}

/// `<dev root>/<sysfs name>`: the character device node.
pub fn dev_node_path(dev_root: &Path, sysfs_name: &str) -> PathBuf {
    dev_root.join(sysfs_name)
}

/// `<root>/class/mock-accel/<sysfs name>/status`.
pub fn status_path(root: &Path, sysfs_name: &str) -> PathBuf {
    device_dir(root, sysfs_name).join("status")
}

/// Refuses names that could leave the class directory when joined to a path (`/`, `..`, NUL,
/// empty). The kernel never creates such names; a tree that holds one is not to be trusted.
pub fn check_sysfs_name(root: &Path, sysfs_name: &str) -> Result<(), SysfsError> {
    if sysfs_name.is_empty()
        || sysfs_name.contains('/')
        || sysfs_name.contains('\0')
        || sysfs_name.contains("..")
        || sysfs_name == "."
    {
        return Err(SysfsError::invalid(
            &root.join(CLASS_DIR),
            format!(
                "refusing class entry {sysfs_name:?}: a device name must not contain '/', '..' or NUL"
            ),
        ));
    }
    Ok(())
}

/// Parses an integer as the kernel's `kstrtoull(.., 0, ..)` does: decimal, `0x` hex or
/// leading-`0` octal, an optional leading `+`, at most one trailing newline, nothing else.
pub fn parse_kernel_u64(text: &str) -> Result<u64, String> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    let t = t.strip_prefix('+').unwrap_or(t);
    let (digits, radix) = match t.as_bytes() {
        [b'0', b'x' | b'X', c, ..] if c.is_ascii_hexdigit() => (&t[2..], 16),
        [b'0', _, ..] => (&t[1..], 8),
        _ => (t, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!(
            "{text:?} is not a number (decimal, 0x hex or 0 octal); the kernel answers EINVAL"
        ));
    }
    u64::from_str_radix(digits, radix)
        .map_err(|_| format!("{text:?} does not fit in 64 bits; the kernel answers ERANGE"))
}

/// Parses a 32-bit value as `kstrtou32(.., 0, ..)` does (see [`parse_kernel_u64`]).
pub fn parse_kernel_u32(text: &str) -> Result<u32, String> {
    let v = parse_kernel_u64(text)?;
    u32::try_from(v)
        .map_err(|_| format!("{text:?} does not fit in 32 bits; the kernel answers ERANGE"))
}

/// Parses a register value read from sysfs: what [`parse_kernel_u32`] accepts, with
/// surrounding whitespace tolerated (the kernel prints `0x%08x`; simulated files may hold
/// whatever was last written, e.g. a decimal `1`).
pub fn parse_register(text: &str) -> Result<u32, String> {
    parse_kernel_u32(text.trim())
}

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

/// Parses `major:minor` with an optional trailing newline.
pub fn parse_dev_numbers(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim_end_matches('\n').split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The result of one scan: the devices that could be read, and a warning for everything that
/// was skipped or doubtful.
#[derive(Debug, Default)]
pub struct Scan {
    pub inventory: Inventory,
    pub warnings: Vec<SysfsError>,
}

/// One class device as read from its files, before parents are resolved.
struct RawDevice {
    sysfs_name: String,
    name: String,
    bdf: Bdf,
    /// Basename of the `device/physfn` link target: a real SR-IOV VF.
    physfn_bdf: Option<Bdf>,
    device_type: DeviceType,
    uuid: String,
    memory: u64,
    pcie_root: Option<String>,
    numa_node: Option<u32>,
    capabilities: u32,
    status: u32,
    fw_version: Option<String>,
}

/// Scans `<root>/class/mock-accel/*`. Only an unusable root is an error; a missing class
/// directory is an empty inventory with a warning, and a broken device is a warning.
pub fn scan(root: &Path) -> Result<Scan, SysfsError> {
    let meta = std::fs::metadata(root).map_err(|source| SysfsError::io(root, source))?;
    if !meta.is_dir() {
        return Err(SysfsError::invalid(
            root,
            "not a directory; pass the sysfs root (the directory that holds class/)",
        ));
    }
    let class_dir = root.join(CLASS_DIR);
    let mut warnings = Vec::new();
    let entries = match std::fs::read_dir(&class_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            warnings.push(SysfsError::ModuleNotLoaded { path: class_dir });
            return Ok(Scan {
                inventory: Inventory::default(),
                warnings,
            });
        }
        Err(source) => return Err(SysfsError::io(&class_dir, source)),
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

    let mut raws: Vec<RawDevice> = Vec::with_capacity(names.len());
    let mut by_name: HashMap<String, String> = HashMap::with_capacity(names.len());
    let mut by_bdf: HashMap<Bdf, usize> = HashMap::with_capacity(names.len());
    for outcome in read_all(root, &names) {
        warnings.extend(outcome.soft);
        let raw = match outcome.result {
            Ok(raw) => raw,
            Err(e) => {
                warnings.push(SysfsError::DeviceSkipped {
                    device: outcome.sysfs_name,
                    source: Box::new(e),
                });
                continue;
            }
        };
        match by_name.entry(raw.name.clone()) {
            Entry::Occupied(first) => {
                warnings.push(SysfsError::invalid(
                    &device_dir(root, &raw.sysfs_name),
                    format!(
                        "maps to DRA device name {:?}, already taken by {:?}; {} skipped, {} kept",
                        raw.name,
                        first.get(),
                        raw.sysfs_name,
                        first.get()
                    ),
                ));
                continue;
            }
            Entry::Vacant(slot) => {
                slot.insert(raw.sysfs_name.clone());
            }
        }
        match by_bdf.entry(raw.bdf) {
            Entry::Occupied(first) => {
                warnings.push(SysfsError::invalid(
                    &device_dir(root, &raw.sysfs_name).join("device"),
                    format!(
                        "PCI function {} already belongs to {}; {} skipped",
                        raw.bdf,
                        raws[*first.get()].sysfs_name,
                        raw.sysfs_name
                    ),
                ));
                by_name.remove(&raw.name);
                continue;
            }
            Entry::Vacant(slot) => {
                slot.insert(raws.len());
            }
        }
        raws.push(raw);
    }

    let mut devices = Vec::with_capacity(raws.len());
    for raw in &raws {
        let physfn = match raw.device_type {
            DeviceType::Pf => None,
            DeviceType::Vf => resolve_parent(root, raw, &raws, &by_bdf, &mut warnings),
        };
        devices.push(Device {
            name: raw.name.clone(),
            sysfs_name: raw.sysfs_name.clone(),
            device_type: raw.device_type,
            uuid: raw.uuid.clone(),
            memory: raw.memory,
            pci_address: raw.bdf.to_string(),
            pcie_root: raw.pcie_root.clone(),
            numa_node: raw.numa_node,
            physfn,
            capabilities: raw.capabilities,
            status: raw.status,
            fw_version: raw.fw_version.clone(),
        });
    }
    Ok(Scan {
        inventory: Inventory::new(devices),
        warnings,
    })
}

/// What reading one class entry gave: the device or the reason to skip it, plus warnings that
/// do not cost the device its place.
struct Outcome {
    sysfs_name: String,
    result: Result<RawDevice, SysfsError>,
    soft: Vec<SysfsError>,
}

/// Devices per reading thread. Reading is a few dozen system calls per device, so below this
/// a thread costs more than it saves.
const DEVICES_PER_THREAD: usize = 256;

/// Reads every named class device, in order. Large trees are split across threads: the work
/// is all path lookups and small reads, which scale with cores.
fn read_all(root: &Path, names: &[String]) -> Vec<Outcome> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(names.len().div_ceil(DEVICES_PER_THREAD))
        .max(1);
    if threads == 1 {
        return read_chunk(root, names);
    }
    let per_thread = names.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(per_thread)
            .map(|chunk| s.spawn(move || read_chunk(root, chunk)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn read_chunk(root: &Path, names: &[String]) -> Vec<Outcome> {
    let mut reader = AttrReader::default();
    names
        .iter()
        .map(|name| {
            let mut soft = Vec::new();
            let result = read_device(root, name, &mut reader, &mut soft);
            Outcome {
                sysfs_name: name.clone(),
                result,
                soft,
            }
        })
        .collect()
}

/// The parent PF's DRA name: the `physfn` target for a real VF, function 0 of the same bus
/// and slot for a static VF. A VF whose parent is not a mock-accel PF is still listed, without
/// a parent, and the gap is reported.
fn resolve_parent(
    root: &Path,
    raw: &RawDevice,
    raws: &[RawDevice],
    by_bdf: &HashMap<Bdf, usize>,
    warnings: &mut Vec<SysfsError>,
) -> Option<String> {
    let (parent_bdf, how) = match raw.physfn_bdf {
        Some(bdf) => (bdf, "device/physfn points to"),
        None => (raw.bdf.with_function(0), "function 0 of its slot is"),
    };
    let parent = by_bdf
        .get(&parent_bdf)
        .map(|&i| &raws[i])
        .filter(|p| p.device_type == DeviceType::Pf && p.bdf != raw.bdf);
    match parent {
        Some(p) => Some(p.name.clone()),
        None => {
            let file = if raw.physfn_bdf.is_some() {
                "device/physfn"
            } else {
                "device"
            };
            warnings.push(SysfsError::invalid(
                &device_dir(root, &raw.sysfs_name).join(file),
                format!(
                    "VF's {how} {parent_bdf}, which is not a listed mock-accel PF; published without a parent"
                ),
            ));
            None
        }
    }
}

/// Reads small attribute files into one reused buffer, with plain `read` calls (no size
/// probing: sysfs reports every attribute as 4096 bytes long anyway).
#[derive(Default)]
struct AttrReader {
    buf: String,
}

impl AttrReader {
    /// The file's text, or the I/O error naming the file.
    fn read(&mut self, path: &Path) -> Result<&str, SysfsError> {
        let f = std::fs::File::open(path).map_err(|source| SysfsError::io(path, source))?;
        self.fill(path, f)?;
        Ok(&self.buf)
    }

    /// Like [`AttrReader::read`], but `None` when the file does not exist.
    fn read_optional(&mut self, path: &Path) -> Result<Option<&str>, SysfsError> {
        match std::fs::File::open(path) {
            Ok(f) => {
                self.fill(path, f)?;
                Ok(Some(&self.buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SysfsError::io(path, source)),
        }
    }

    fn fill(&mut self, path: &Path, mut f: std::fs::File) -> Result<(), SysfsError> {
        // sysfs hands out a whole attribute (at most a page) in one read, and a local file
        // read that comes back short is at its end, so a short read needs no second call.
        let mut chunk = [0u8; 4096];
        let mut bytes = std::mem::take(&mut self.buf).into_bytes();
        bytes.clear();
        loop {
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) if n < chunk.len() => {
                    bytes.extend_from_slice(&chunk[..n]);
                    break;
                }
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(SysfsError::io(path, source)),
            }
        }
        self.buf = String::from_utf8(bytes).map_err(|e| {
            SysfsError::parse(
                path,
                &String::from_utf8_lossy(e.as_bytes()),
                "not UTF-8 text",
            )
        })?;
        Ok(())
    }

    fn register(&mut self, path: &Path) -> Result<u32, SysfsError> {
        let text = self.read(path)?;
        parse_register(text).map_err(|reason| SysfsError::parse(path, text, reason))
    }
}

/// Reads one class device. Soft problems (an unreadable `fw_version`, a missing pcieRoot link)
/// go to `warnings`; the error is the reason to skip the device.
fn read_device(
    root: &Path,
    sysfs_name: &str,
    r: &mut AttrReader,
    warnings: &mut Vec<SysfsError>,
) -> Result<RawDevice, SysfsError> {
    let name = dra_device_name(sysfs_name)
        .map_err(|e| SysfsError::invalid(&root.join(CLASS_DIR).join(sysfs_name), e.to_string()))?;
    let dir = device_dir(root, sysfs_name);

    let device_link = dir.join("device");
    let bdf = link_basename(&device_link)?
        .parse::<Bdf>()
        .map_err(|reason| SysfsError::invalid(&device_link, format!("link target: {reason}")))?;

    let uuid_path = dir.join("uuid");
    let uuid = parse_uuid(r.read(&uuid_path)?)
        .map_err(|reason| SysfsError::parse(&uuid_path, &r.buf, reason))?;

    let mem_path = dir.join("memory_size");
    let memory = {
        let text = r.read(&mem_path)?;
        text.trim().parse::<u64>().map_err(|e| {
            SysfsError::parse(&mem_path, text, format!("not a decimal byte count: {e}"))
        })?
    };

    let capabilities = r.register(&dir.join("capabilities"))?;
    let status = r.register(&dir.join("status"))?;

    let class_numa = dir.join("numa_node");
    let numa_path = match r.read_optional(&class_numa)? {
        Some(_) => class_numa,
        None => {
            let pci_numa = dir.join("device/numa_node");
            r.read(&pci_numa)?;
            pci_numa
        }
    };
    let numa_node =
        parse_numa(&r.buf).map_err(|reason| SysfsError::parse(&numa_path, &r.buf, reason))?;

    let fw_path = dir.join("fw_version");
    let fw_version = match r.read_optional(&fw_path) {
        Ok(None) => None,
        Ok(Some(text)) => match parse_fw_version(text) {
            Ok(v) => Some(v),
            Err(reason) => {
                warnings.push(SysfsError::parse(
                    &fw_path,
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

    let physfn_link = dir.join("device/physfn");
    let physfn_bdf = match std::fs::read_link(&physfn_link) {
        Ok(target) => Some(
            target
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("{} has no last component", target.display()))
                .and_then(str::parse::<Bdf>)
                .map_err(|reason| {
                    SysfsError::invalid(&physfn_link, format!("link target: {reason}"))
                })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(SysfsError::io(&physfn_link, source)),
    };

    let pci_device_path = dir.join("device/device");
    let pci_device = r.read(&pci_device_path)?.trim();
    let device_type = match (pci_device, physfn_bdf) {
        (_, Some(_)) | (PCI_DEVICE_VF, None) => DeviceType::Vf,
        (PCI_DEVICE_PF, None) => DeviceType::Pf,
        (other, None) => {
            return Err(SysfsError::parse(
                &pci_device_path,
                other,
                format!(
                    "not a mock-accel PCI device id ({PCI_DEVICE_PF} PF or {PCI_DEVICE_VF} VF)"
                ),
            ));
        }
    };

    let bus_link = root.join(PCI_BUS_DEVICES_DIR).join(bdf.to_string());
    let pcie_root = match pcie_root_of(&bus_link) {
        Ok(root) => Some(root),
        Err(e) => {
            warnings.push(SysfsError::invalid(
                e.path(),
                format!("{}; pcieRoot left out for {sysfs_name}", error_problem(&e)),
            ));
            None
        }
    };

    Ok(RawDevice {
        sysfs_name: sysfs_name.to_string(),
        name,
        bdf,
        physfn_bdf,
        device_type,
        uuid,
        memory,
        pcie_root,
        numa_node,
        capabilities,
        status,
        fw_version,
    })
}

/// The message of an error without its leading path.
fn error_problem(e: &SysfsError) -> String {
    let full = e.to_string();
    let prefix = format!("{}: ", e.path().display());
    full.strip_prefix(&prefix).unwrap_or(&full).to_string()
}

/// The last component of a symlink's target (the BDF for `device` and `physfn` links).
fn link_basename(link: &Path) -> Result<String, SysfsError> {
    let target = std::fs::read_link(link).map_err(|source| SysfsError::io(link, source))?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            SysfsError::invalid(
                link,
                format!(
                    "link target {} has no usable last component",
                    target.display()
                ),
            )
        })
}

/// `pci<domain>:<bus>` from a `bus/pci/devices/<BDF>` link: the first component after
/// `devices/` in its target (`../../../devices/pci0000:10/0000:10:00.0/0000:11:00.0`).
fn pcie_root_of(bus_link: &Path) -> Result<String, SysfsError> {
    let target = std::fs::read_link(bus_link).map_err(|source| SysfsError::io(bus_link, source))?;
    pcie_root_from_target(&target).ok_or_else(|| {
        SysfsError::invalid(
            bus_link,
            format!(
                "link target {} has no pci<domain>:<bus> after devices/",
                target.display()
            ),
        )
    })
}

/// Pure part of [`pcie_root_of`].
pub fn pcie_root_from_target(target: &Path) -> Option<String> {
    let mut parts = target.components().map(|c| c.as_os_str().to_str());
    parts.by_ref().find(|c| *c == Some("devices"))?;
    let next = parts.next()??;
    next.starts_with("pci").then(|| next.to_string())
}

/// `%pUb`: 8-4-4-4-12 hex digits. Returned lowercase as the kernel prints it.
pub fn parse_uuid(text: &str) -> Result<String, String> {
    let t = text.trim();
    let ok = t.len() == 36
        && t.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(t.to_ascii_lowercase())
    } else {
        Err("not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)".to_string())
    }
}

/// `%d` of the PCI device's node; `-1` means no NUMA information.
pub fn parse_numa(text: &str) -> Result<Option<u32>, String> {
    match text.trim().parse::<i32>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 => Ok(Some(n as u32)),
        Ok(n) => Err(format!("NUMA node {n} is neither -1 nor a node number")),
        Err(e) => Err(format!("not a NUMA node number: {e}")),
    }
}

/// `%u.%u.%u`.
pub fn parse_fw_version(text: &str) -> Result<String, String> {
    let t = text.trim();
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
    {
        Ok(t.to_string())
    } else {
        Err("not a firmware version major.minor.patch".to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::sim::{self, TopologySpec};

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

    #[test]
    fn kernel_integer_parsing_follows_kstrtou32_base_0() {
        assert_eq!(parse_kernel_u32("4660"), Ok(4660));
        assert_eq!(parse_kernel_u32("4660\n"), Ok(4660));
        assert_eq!(parse_kernel_u32("0x00001234\n"), Ok(0x1234));
        assert_eq!(parse_kernel_u32("0X1f"), Ok(31));
        assert_eq!(parse_kernel_u32("010"), Ok(8));
        assert_eq!(parse_kernel_u32("0"), Ok(0));
        assert_eq!(parse_kernel_u32("+7"), Ok(7));
        assert_eq!(parse_kernel_u32("4294967295"), Ok(u32::MAX));
        for bad in [
            "", "\n", "0x", "0x\n", "abc", " 1", "1 ", "1\n\n", "-1", "08", "0xg",
        ] {
            assert!(
                parse_kernel_u32(bad).unwrap_err().contains("EINVAL"),
                "{bad:?}"
            );
        }
        assert!(
            parse_kernel_u32("4294967296")
                .unwrap_err()
                .contains("ERANGE")
        );
        // Reads tolerate surrounding whitespace.
        assert_eq!(parse_register(" 0x00000001 \n"), Ok(1));
    }

    #[test]
    fn bdfs_parse_and_print() {
        let b: Bdf = "0000:11:00.2".parse().unwrap();
        assert_eq!(b, Bdf::new(0, 0x11, 0, 2));
        assert_eq!(b.to_string(), "0000:11:00.2");
        assert_eq!(
            "0001:ab:1f.7".parse::<Bdf>().unwrap().to_string(),
            "0001:ab:1f.7"
        );
        for bad in [
            "0000:11:00",
            "0000:11:20.0",
            "0000:11:00.8",
            "000g:11:00.0",
            "mock0",
            "",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }

    #[test]
    fn attribute_parsers_accept_the_kernel_formats() {
        assert_eq!(
            parse_uuid("4E4F4445-312d-4e55-4d41-302d50460000\n").unwrap(),
            "4e4f4445-312d-4e55-4d41-302d50460000"
        );
        assert!(parse_uuid("NODE1-NUMA0-PF").is_err());
        assert!(parse_uuid("4e4f4445312d4e554d41302d50460000").is_err());
        assert_eq!(parse_numa("-1\n"), Ok(None));
        assert_eq!(parse_numa("1\n"), Ok(Some(1)));
        assert!(parse_numa("-2").is_err());
        assert!(parse_numa("zero").is_err());
        assert_eq!(parse_fw_version("1.0.0\n").unwrap(), "1.0.0");
        assert!(parse_fw_version("1.0").is_err());
        assert_eq!(
            pcie_root_from_target(Path::new(
                "../../../devices/pci0000:20/0000:20:00.0/0000:21:00.1"
            )),
            Some("pci0000:20".into())
        );
        assert_eq!(
            pcie_root_from_target(Path::new("../../devices/0000:21:00.1")),
            None
        );
        assert_eq!(parse_dev_numbers("240:3\n"), Some((240, 3)));
        assert_eq!(parse_dev_numbers("240"), None);
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
            ("mock1", "device", None, "mock1/device: No such file"),
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
        fs::remove_file(root.join(PCI_BUS_DEVICES_DIR).join("0000:21:00.0")).unwrap();
        let scan = scan(root).unwrap();
        assert_eq!(scan.inventory.devices.len(), 6);
        let inv = &scan.inventory;
        assert_eq!(inv.get("mock0").unwrap().fw_version, None);
        assert_eq!(inv.get("mock1").unwrap().fw_version, None);
        assert_eq!(inv.get("mock3").unwrap().pcie_root, None);
        let w = warnings(&scan);
        assert_eq!(scan.warnings.len(), 2, "{w}");
        assert!(w.contains("mock1/fw_version: cannot parse"), "{w}");
        assert!(w.contains("devices/0000:21:00.0: No such file"), "{w}");
        assert!(w.contains("pcieRoot left out for mock3"), "{w}");
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

    #[test]
    fn two_class_devices_on_one_function_keep_the_first() {
        let dir = canonical();
        let root = dir.path();
        // mock2's device link now claims mock1's function.
        let link = device_dir(root, "mock2").join("device");
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("../../../0000:11:00.1", &link).unwrap();
        let scan = scan(root).unwrap();
        assert_eq!(names(&scan), ["mock0", "mock1", "mock3", "mock4", "mock5"]);
        assert!(warnings(&scan).contains("0000:11:00.1 already belongs to mock1; mock2 skipped"));
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
