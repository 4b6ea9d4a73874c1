//! CDI (Container Device Interface) specs for prepared claims: the content model, built from
//! plain data, and a thin writer.
//!
//! One spec per prepared claim, kind `<driver>/accel`, file `<driver>-accel_<claim UID>.json`
//! in the CDI directory (the `GenerateTransientSpecName` convention of the Go CDI library).
//! Device names are `<claim UID>-<DRA device name>`: container runtimes cache specs by device
//! name, so a name must never be reused by another claim. `cdiVersion` is the lowest version
//! whose schema covers the content, because runtimes built with an older CDI library refuse
//! versions they do not know.
//!
//! Per device the spec sets `MOCK_ACCEL_UUID`, `MOCK_ACCEL_PCI`, `MOCK_ACCEL_DEVICE` (the
//! sysfs name), `MOCK_ACCEL_SYSFS` (where its sysfs directory is in the container) and, for a
//! share of a PF (consumable capacity), `MOCK_ACCEL_MEMORY` (the bytes granted),
//! bind-mounts the device's sysfs directory read-only there, and adds the character device
//! `/dev/<sysfs name>` when the host has one. The directory is `/sys/class/mock-accel/<name>`
//! for the kernel module's devices and `/var/run/mock-accel/<name>` for simulated ones
//! ([`ContainerLayout`]). The spec-level edits set `MOCK_ACCEL_DEVICES`, the comma-separated
//! sysfs names of the claim, and `MOCK_ACCEL_SYSFS_DIR`, the directory holding them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{atomic_file, names};

/// Class segment of the CDI kind: devices are `<driver>/accel=<name>`.
pub const CDI_CLASS: &str = "accel";

/// Container path of the class directory, as in the kernel's sysfs.
const CONTAINER_CLASS_DIR: &str = "/sys/class/mock-accel";
/// Container directory of simulated devices: a container's `/sys` is a read-only sysfs of its
/// own, without `class/mock-accel` unless the kernel module is loaded on the host, so runc
/// cannot create a mount target there. Below `/var/run` the runtime can create one.
const CONTAINER_SIMULATED_DIR: &str = "/var/run/mock-accel";
/// Host path of a simulated device's character device: a simulated device has none of its
/// own, and a runtime refuses a CDI device node whose host path is not a device node, so the
/// container gets the host's `/dev/null` under the device's name (`/dev/<sysfs name>`).
pub const SIMULATED_DEV_NODE: &str = "/dev/null";

/// Where a device's sysfs directory appears inside the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContainerLayout {
    /// `/sys/class/mock-accel/<name>`, where the kernel module shows it (the container's own
    /// sysfs has the directory, so the bind mount has a target).
    #[default]
    Kernel,
    /// `/var/run/mock-accel/<name>`: devices of a simulated tree (`node-agent --simulate`).
    Simulated,
}

impl ContainerLayout {
    /// The container directory holding the devices' sysfs directories (`MOCK_ACCEL_SYSFS_DIR`).
    pub fn container_dir(self) -> &'static str {
        match self {
            ContainerLayout::Kernel => CONTAINER_CLASS_DIR,
            ContainerLayout::Simulated => CONTAINER_SIMULATED_DIR,
        }
    }
}

/// Why a spec cannot be built, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error(
        "{what} {name:?} cannot be used in a CDI spec: {reason} (check --driver-name and the claim UID)"
    )]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("claim {claim_uid}: a CDI spec needs at least one device")]
    NoDevices { claim_uid: String },
    #[error("cannot encode the CDI spec for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path}: {source} ({})",
        crate::atomic_file::remedy(source, "is the CDI directory writable by the node agent?")
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A CDI spec file, limited to the fields this driver emits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.device_nodes.is_empty() && self.mounts.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    /// Path on the host, when it differs from `path` (a `--dev-root` other than `/dev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// `c` for the mock-accel character devices.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub mount_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// What the spec needs to know about one device of the claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecDevice {
    /// DRA device name.
    pub name: String,
    pub sysfs_name: String,
    pub uuid: String,
    pub pci_address: String,
    /// The host's character device, when it exists.
    pub dev_node: Option<DevNode>,
    /// Bytes of the device's memory granted to the claim when it holds shares of the device
    /// (consumable capacity); `MOCK_ACCEL_MEMORY` in the container.
    pub memory: Option<u64>,
}

/// A character device on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevNode {
    pub host_path: PathBuf,
    /// `(major, minor)` from the class device's `dev` attribute; when unknown the runtime
    /// reads them from the host node itself.
    pub numbers: Option<(u32, u32)>,
}

/// `<driver>/accel`.
pub fn kind(driver: &str) -> String {
    format!("{driver}/{CDI_CLASS}")
}

/// The unqualified CDI device name of `device` in `claim_uid`'s spec.
pub fn device_name(claim_uid: &str, device: &str) -> String {
    format!("{claim_uid}-{device}")
}

/// The fully qualified id handed to the kubelet: `<driver>/accel=<claim UID>-<device>`.
pub fn qualified_device_id(driver: &str, claim_uid: &str, device: &str) -> String {
    format!("{}={}", kind(driver), device_name(claim_uid, device))
}

/// `<driver>-accel_<claim UID>.json`, with `/` in the id replaced as the Go library does.
pub fn spec_file_name(driver: &str, claim_uid: &str) -> String {
    format!("{driver}-{CDI_CLASS}_{}.json", claim_uid.replace('/', "_"))
}

pub fn spec_path(cdi_dir: &Path, driver: &str, claim_uid: &str) -> PathBuf {
    cdi_dir.join(spec_file_name(driver, claim_uid))
}

/// The claim UID of one of this driver's spec files, `None` for any other file.
pub fn claim_uid_of_spec_file(driver: &str, file_name: &str) -> Option<String> {
    file_name
        .strip_prefix(&format!("{driver}-{CDI_CLASS}_"))?
        .strip_suffix(".json")
        .filter(|uid| !uid.is_empty())
        .map(str::to_string)
}

/// Builds the spec of one claim. `devices` must not repeat a DRA device name.
pub fn claim_spec(
    driver: &str,
    claim_uid: &str,
    sysfs_root: &Path,
    layout: ContainerLayout,
    devices: &[SpecDevice],
) -> Result<Spec, CdiError> {
    check_vendor(driver)?;
    if devices.is_empty() {
        return Err(CdiError::NoDevices {
            claim_uid: claim_uid.to_string(),
        });
    }
    let mut cdi_devices = Vec::with_capacity(devices.len());
    for d in devices {
        let name = device_name(claim_uid, &d.name);
        check_device_name(&name)?;
        cdi_devices.push(Device {
            name,
            container_edits: device_edits(sysfs_root, layout, d),
        });
    }
    let all: Vec<&str> = devices.iter().map(|d| d.sysfs_name.as_str()).collect();
    let mut spec = Spec {
        cdi_version: String::new(),
        kind: kind(driver),
        devices: cdi_devices,
        container_edits: ContainerEdits {
            env: vec![
                format!("MOCK_ACCEL_DEVICES={}", all.join(",")),
                format!("MOCK_ACCEL_SYSFS_DIR={}", layout.container_dir()),
            ],
            ..ContainerEdits::default()
        },
    };
    spec.cdi_version = minimum_version(&spec).to_string();
    Ok(spec)
}

fn device_edits(sysfs_root: &Path, layout: ContainerLayout, d: &SpecDevice) -> ContainerEdits {
    let host_dir = sysfs_root.join("class/mock-accel").join(&d.sysfs_name);
    let container_dir = format!("{}/{}", layout.container_dir(), d.sysfs_name);
    let mut env = vec![
        format!("MOCK_ACCEL_UUID={}", d.uuid),
        format!("MOCK_ACCEL_PCI={}", d.pci_address),
        format!("MOCK_ACCEL_DEVICE={}", d.sysfs_name),
        format!("MOCK_ACCEL_SYSFS={container_dir}"),
    ];
    if let Some(bytes) = d.memory {
        env.push(format!("MOCK_ACCEL_MEMORY={bytes}"));
    }
    ContainerEdits {
        env,
        device_nodes: d
            .dev_node
            .iter()
            .map(|node| DeviceNode {
                path: format!("/dev/{}", d.sysfs_name),
                host_path: Some(node.host_path.display().to_string()),
                node_type: Some("c".to_string()),
                major: node.numbers.map(|(major, _)| i64::from(major)),
                minor: node.numbers.map(|(_, minor)| i64::from(minor)),
                permissions: None,
            })
            .collect(),
        // No mount `type`: a bind mount is expressed by its options, and `type` would raise
        // the required version to 0.4.0 for nothing.
        mounts: vec![Mount {
            host_path: host_dir.display().to_string(),
            container_path: container_dir,
            mount_type: None,
            options: ["ro", "nosuid", "nodev", "bind"].map(String::from).to_vec(),
        }],
    }
}

/// The lowest CDI version whose schema covers `spec`, by the rules of the CDI libraries:
/// 0.4.0 for a mount `type`; 0.5.0 for a device name not starting with a letter or a device
/// node with a `hostPath`; 0.6.0 for a `.` in the class. The oldest the Go library loads is
/// 0.3.0.
pub fn minimum_version(spec: &Spec) -> &'static str {
    let all_edits = || {
        std::iter::once(&spec.container_edits)
            .chain(spec.devices.iter().map(|d| &d.container_edits))
    };
    let class_has_dot = spec
        .kind
        .split_once('/')
        .is_some_and(|(_, class)| class.contains('.'));
    if class_has_dot {
        return "0.6.0";
    }
    let name_needs_050 = spec
        .devices
        .iter()
        .any(|d| !d.name.chars().next().is_some_and(char::is_alphabetic));
    let host_path = all_edits()
        .flat_map(|e| &e.device_nodes)
        .any(|n| n.host_path.as_deref().is_some_and(|p| !p.is_empty()));
    if name_needs_050 || host_path {
        return "0.5.0";
    }
    let mount_type = all_edits()
        .flat_map(|e| &e.mounts)
        .any(|m| m.mount_type.as_deref().is_some_and(|t| !t.is_empty()));
    if mount_type {
        return "0.4.0";
    }
    "0.3.0"
}

/// The driver name as a CDI vendor ([`names::check_cdi_vendor`]).
fn check_vendor(vendor: &str) -> Result<(), CdiError> {
    names::check_cdi_vendor(vendor).map_err(|reason| CdiError::InvalidName {
        what: "CDI vendor (driver name)",
        name: vendor.to_string(),
        reason,
    })
}

/// A device name of the spec ([`names::check_cdi_device_name`]).
fn check_device_name(name: &str) -> Result<(), CdiError> {
    names::check_cdi_device_name(name).map_err(|reason| CdiError::InvalidName {
        what: "CDI device name",
        name: name.to_string(),
        reason,
    })
}

/// Writes `spec` as `<cdi dir>/<driver>-accel_<claim UID>.json`, atomically.
pub fn write_spec(
    cdi_dir: &Path,
    driver: &str,
    claim_uid: &str,
    spec: &Spec,
) -> Result<PathBuf, CdiError> {
    let path = spec_path(cdi_dir, driver, claim_uid);
    let bytes = serde_json::to_vec_pretty(spec).map_err(|source| CdiError::Encode {
        path: path.clone(),
        source,
    })?;
    // `/var/run/cdi` is a tmpfs, emptied by the reboot a power loss means: a process crash is
    // all a spec must survive (see `atomic_file`).
    atomic_file::write_atomically(&path, &bytes, atomic_file::Durability::ProcessCrash).map_err(
        |source| CdiError::Io {
            path: path.clone(),
            source,
        },
    )?;
    Ok(path)
}

/// Removes the claim's spec; `Ok(false)` when there was none.
pub fn remove_spec(cdi_dir: &Path, driver: &str, claim_uid: &str) -> Result<bool, CdiError> {
    let path = spec_path(cdi_dir, driver, claim_uid);
    atomic_file::remove(&path, atomic_file::Durability::ProcessCrash)
        .map_err(|source| CdiError::Io { path, source })
}

pub fn spec_exists(cdi_dir: &Path, driver: &str, claim_uid: &str) -> bool {
    spec_path(cdi_dir, driver, claim_uid).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;
    use container_device_interface as cdi_crate;

    const DRIVER: &str = "mock-accel.example.com";
    const UID_DIGIT: &str = "0d1f6a52-8f35-4a52-9f0e-3c2b1a6e7d10";
    const UID_LETTER: &str = "ad1f6a52-8f35-4a52-9f0e-3c2b1a6e7d10";

    fn device(name: &str, sysfs: &str, dev_node: Option<DevNode>) -> SpecDevice {
        SpecDevice {
            name: name.to_string(),
            sysfs_name: sysfs.to_string(),
            uuid: format!("uuid-of-{sysfs}"),
            pci_address: "0000:11:00.1".to_string(),
            dev_node,
            memory: None,
        }
    }

    fn node(sysfs: &str, numbers: Option<(u32, u32)>) -> Option<DevNode> {
        Some(DevNode {
            host_path: PathBuf::from("/host/dev").join(sysfs),
            numbers,
        })
    }

    /// Loads `spec` the way a runtime would, through the reference crate: schema validation,
    /// name and version checks, and our computed version equals the crate's minimum.
    fn validate_with_cdi_crate(spec: &Spec) -> cdi_crate::spec::Spec {
        let json = serde_json::to_value(spec).unwrap();
        let raw: cdi_crate::specs::config::Spec = serde_json::from_value(json).unwrap();
        cdi_crate::spec::validate_spec(&raw).unwrap();
        let min = cdi_crate::version::minimum_required_version(&raw).unwrap();
        assert_eq!(
            min.to_string(),
            spec.cdi_version,
            "cdiVersion is not the minimum"
        );
        let path = PathBuf::from("/var/run/cdi").join(spec_file_name(DRIVER, "x"));
        cdi_crate::spec::new_spec(&raw, &path, 0).unwrap()
    }

    #[test]
    fn a_share_carries_the_granted_memory_and_a_whole_device_does_not() {
        let share = SpecDevice {
            memory: Some(8 << 30),
            ..device("mock0", "mock0", None)
        };
        let spec = claim_spec(
            DRIVER,
            UID_LETTER,
            Path::new("/sys"),
            ContainerLayout::Kernel,
            &[share],
        )
        .unwrap();
        assert_eq!(
            spec.devices[0]
                .container_edits
                .env
                .last()
                .map(String::as_str),
            Some("MOCK_ACCEL_MEMORY=8589934592")
        );
        let whole = claim_spec(
            DRIVER,
            UID_LETTER,
            Path::new("/sys"),
            ContainerLayout::Kernel,
            &[device("mock0", "mock0", None)],
        )
        .unwrap();
        assert!(
            !whole.devices[0]
                .container_edits
                .env
                .iter()
                .any(|e| e.starts_with("MOCK_ACCEL_MEMORY="))
        );
    }

    #[test]
    fn single_device_spec_has_env_mount_and_node() {
        let spec = claim_spec(
            DRIVER,
            UID_LETTER,
            Path::new("/sys"),
            ContainerLayout::Kernel,
            &[device(
                "mock0-vf0",
                "mock0_vf0",
                node("mock0_vf0", Some((239, 1))),
            )],
        )
        .unwrap();
        assert_eq!(spec.kind, "mock-accel.example.com/accel");
        // hostPath on the device node needs 0.5.0 even though the name starts with a letter.
        assert_eq!(spec.cdi_version, "0.5.0");
        let d = &spec.devices[0];
        assert_eq!(d.name, format!("{UID_LETTER}-mock0-vf0"));
        assert_eq!(
            d.container_edits.env,
            vec![
                "MOCK_ACCEL_UUID=uuid-of-mock0_vf0",
                "MOCK_ACCEL_PCI=0000:11:00.1",
                "MOCK_ACCEL_DEVICE=mock0_vf0",
                "MOCK_ACCEL_SYSFS=/sys/class/mock-accel/mock0_vf0"
            ]
        );
        assert_eq!(
            d.container_edits.mounts[0],
            Mount {
                host_path: "/sys/class/mock-accel/mock0_vf0".into(),
                container_path: "/sys/class/mock-accel/mock0_vf0".into(),
                mount_type: None,
                options: vec!["ro".into(), "nosuid".into(), "nodev".into(), "bind".into()],
            }
        );
        let n = &d.container_edits.device_nodes[0];
        assert_eq!(n.path, "/dev/mock0_vf0");
        assert_eq!(n.host_path.as_deref(), Some("/host/dev/mock0_vf0"));
        assert_eq!(
            (n.node_type.as_deref(), n.major, n.minor),
            (Some("c"), Some(239), Some(1))
        );
        assert_eq!(
            spec.container_edits.env,
            vec![
                "MOCK_ACCEL_DEVICES=mock0_vf0",
                "MOCK_ACCEL_SYSFS_DIR=/sys/class/mock-accel"
            ]
        );

        let loaded = validate_with_cdi_crate(&spec);
        assert_eq!(loaded.get_vendor(), DRIVER);
        assert_eq!(loaded.get_class(), "accel");
        let qualified = loaded.get_device(&d.name).unwrap().get_qualified_name();
        assert_eq!(
            qualified,
            qualified_device_id(DRIVER, UID_LETTER, "mock0-vf0")
        );
    }

    #[test]
    fn without_device_nodes_and_letter_uid_the_oldest_version_suffices() {
        let spec = claim_spec(
            DRIVER,
            UID_LETTER,
            Path::new("/sys"),
            ContainerLayout::Kernel,
            &[
                device("mock0", "mock0", None),
                device("mock1", "mock1", None),
            ],
        )
        .unwrap();
        assert_eq!(spec.cdi_version, "0.3.0");
        assert!(
            spec.devices
                .iter()
                .all(|d| d.container_edits.device_nodes.is_empty())
        );
        assert_eq!(
            spec.container_edits.env,
            vec![
                "MOCK_ACCEL_DEVICES=mock0,mock1",
                "MOCK_ACCEL_SYSFS_DIR=/sys/class/mock-accel"
            ]
        );
        let loaded = validate_with_cdi_crate(&spec);
        assert_eq!(loaded.get_devices().len(), 2);
    }

    #[test]
    fn uid_starting_with_a_digit_needs_050() {
        let spec = claim_spec(
            DRIVER,
            UID_DIGIT,
            Path::new("/sys"),
            ContainerLayout::Kernel,
            &[device("mock0", "mock0", None)],
        )
        .unwrap();
        assert_eq!(spec.cdi_version, "0.5.0");
        validate_with_cdi_crate(&spec);
    }

    #[test]
    fn node_without_numbers_lets_the_runtime_fill_them_in() {
        let spec = claim_spec(
            DRIVER,
            UID_DIGIT,
            Path::new("/sim/sys"),
            ContainerLayout::Kernel,
            &[device("mock1", "mock1", node("mock1", None))],
        )
        .unwrap();
        let n = &spec.devices[0].container_edits.device_nodes[0];
        assert_eq!((n.major, n.minor), (None, None));
        assert_eq!(
            spec.devices[0].container_edits.mounts[0].host_path,
            "/sim/sys/class/mock-accel/mock1"
        );
        validate_with_cdi_crate(&spec);
    }

    #[test]
    fn simulated_devices_mount_below_var_run_and_get_dev_null_as_their_node() {
        let spec = claim_spec(
            DRIVER,
            UID_LETTER,
            Path::new("/var/run/mock-accel/sim"),
            ContainerLayout::Simulated,
            &[device(
                "mock1",
                "mock1",
                Some(DevNode {
                    host_path: PathBuf::from(SIMULATED_DEV_NODE),
                    numbers: None,
                }),
            )],
        )
        .unwrap();
        let edits = &spec.devices[0].container_edits;
        assert_eq!(
            edits.mounts[0].host_path,
            "/var/run/mock-accel/sim/class/mock-accel/mock1"
        );
        assert_eq!(edits.mounts[0].container_path, "/var/run/mock-accel/mock1");
        assert!(
            edits
                .env
                .contains(&"MOCK_ACCEL_SYSFS=/var/run/mock-accel/mock1".to_string())
        );
        assert!(
            spec.container_edits
                .env
                .contains(&"MOCK_ACCEL_SYSFS_DIR=/var/run/mock-accel".to_string())
        );
        let n = &edits.device_nodes[0];
        assert_eq!(
            (n.path.as_str(), n.host_path.as_deref(), n.major),
            ("/dev/mock1", Some("/dev/null"), None)
        );
        validate_with_cdi_crate(&spec);
    }

    #[test]
    fn version_rules_follow_the_reference_crate() {
        let base = claim_spec(
            DRIVER,
            UID_LETTER,
            Path::new("/sys"),
            ContainerLayout::Kernel,
            &[device("m", "m", None)],
        )
        .unwrap();
        let mut typed_mount = base.clone();
        typed_mount.devices[0].container_edits.mounts[0].mount_type = Some("bind".into());
        let mut dotted_class = base.clone();
        dotted_class.kind = "mock-accel.example.com/accel.v2".into();
        for (spec, expected) in [
            (&base, "0.3.0"),
            (&typed_mount, "0.4.0"),
            (&dotted_class, "0.6.0"),
        ] {
            assert_eq!(minimum_version(spec), expected);
            let raw: cdi_crate::specs::config::Spec =
                serde_json::from_value(serde_json::to_value(spec).unwrap()).unwrap();
            let min = cdi_crate::version::minimum_required_version(&raw).unwrap();
            assert_eq!(min.to_string(), expected);
        }
    }

    #[test]
    fn names_follow_the_go_conventions() {
        assert_eq!(
            spec_file_name(DRIVER, UID_DIGIT),
            format!("mock-accel.example.com-accel_{UID_DIGIT}.json")
        );
        assert_eq!(
            spec_file_name(DRIVER, "a/b"),
            "mock-accel.example.com-accel_a_b.json"
        );
        assert_eq!(
            qualified_device_id(DRIVER, "u1", "mock0-vf1"),
            "mock-accel.example.com/accel=u1-mock0-vf1"
        );
        assert_eq!(
            claim_uid_of_spec_file(DRIVER, &spec_file_name(DRIVER, UID_DIGIT)).as_deref(),
            Some(UID_DIGIT)
        );
        assert_eq!(
            claim_uid_of_spec_file(DRIVER, "other.example.com-accel_x.json"),
            None
        );
        assert_eq!(
            claim_uid_of_spec_file(DRIVER, &format!("{DRIVER}-accel_x.json.tmp")),
            None
        );
    }

    #[test]
    fn bad_names_are_refused() {
        let d = [device("mock0", "mock0", None)];
        for uid in ["../../etc/x", "uid with space", "-leading"] {
            let err = claim_spec(DRIVER, uid, Path::new("/sys"), ContainerLayout::Kernel, &d)
                .unwrap_err();
            assert!(matches!(err, CdiError::InvalidName { .. }), "{uid}: {err}");
            assert!(err.to_string().contains(uid), "{err}");
        }
        for driver in ["", "1driver.example.com", "driver.example.com-", "a/b"] {
            let err = claim_spec(
                driver,
                UID_LETTER,
                Path::new("/sys"),
                ContainerLayout::Kernel,
                &d,
            )
            .unwrap_err();
            assert!(
                matches!(err, CdiError::InvalidName { .. }),
                "{driver}: {err}"
            );
        }
        assert!(matches!(
            claim_spec(
                DRIVER,
                UID_LETTER,
                Path::new("/sys"),
                ContainerLayout::Kernel,
                &[]
            ),
            Err(CdiError::NoDevices { .. })
        ));
    }

    #[test]
    fn written_specs_load_through_the_reference_cache() {
        let dir = tempfile::tempdir().unwrap();
        let uids = [UID_DIGIT, UID_LETTER];
        for uid in uids {
            let spec = claim_spec(
                DRIVER,
                uid,
                Path::new("/sys"),
                ContainerLayout::Kernel,
                &[device("mock0", "mock0", node("mock0", Some((240, 0))))],
            )
            .unwrap();
            let path = write_spec(dir.path(), DRIVER, uid, &spec).unwrap();
            assert_eq!(path, spec_path(dir.path(), DRIVER, uid));
            assert!(spec_exists(dir.path(), DRIVER, uid));
            let read: Spec = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(read, spec);
        }
        let dir_str = dir.path().to_str().unwrap();
        let cache = cdi_crate::cache::new_cache(vec![
            cdi_crate::spec_dirs::with_spec_dirs(&[dir_str]),
            cdi_crate::cache::with_auto_refresh(false),
        ]);
        let mut cache = cache.lock().unwrap();
        cache.refresh().unwrap();
        assert!(cache.get_errors().is_empty(), "{:?}", cache.get_errors());
        let mut listed = cache.list_devices();
        listed.sort();
        let mut expected: Vec<_> = uids
            .iter()
            .map(|u| qualified_device_id(DRIVER, u, "mock0"))
            .collect();
        expected.sort();
        assert_eq!(listed, expected);
        drop(cache);

        assert!(remove_spec(dir.path(), DRIVER, UID_DIGIT).unwrap());
        assert!(!remove_spec(dir.path(), DRIVER, UID_DIGIT).unwrap());
        assert!(!spec_exists(dir.path(), DRIVER, UID_DIGIT));
        assert!(spec_exists(dir.path(), DRIVER, UID_LETTER));
    }

    #[test]
    fn unknown_fields_are_refused_when_reading_back() {
        let err = serde_json::from_str::<Spec>(
            r#"{"cdiVersion":"0.3.0","kind":"a.b/c","devices":[],"bogus":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
