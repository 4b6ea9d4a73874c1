//! The desired ResourceSlices of one node: a pure function from the node's devices (and the
//! slices that exist now) to the `resource.k8s.io/v1` objects the controller should apply.
//!
//! This module owns the mapping of a [`Device`] onto a DRA device (attributes, capacity), the
//! split of a node into pools and slices, slice object names and labels, pool generations, and
//! the API validation rules a slice must pass. It performs no I/O:
//! the controller reads the world, calls [`desired_slices`], applies the slices for which
//! [`slice_differs`] says so and deletes the ones [`obsolete_slices`] returns.
//!
//! Rules it follows (see the design's "Names and shapes" and the DRA contract):
//! - one pool per node and NUMA node, named by [`inventory::pool_name`]; at most
//!   [`MAX_DEVICES_PER_SLICE`] devices per slice, devices sorted by name;
//! - a pool's generation stays put while its content is unchanged and is bumped (highest
//!   existing + 1) when anything in it changes, so consumers never mix old and new slices;
//! - an invalid device is left out and reported in [`DesiredSlices::rejected`]; the rest of the
//!   node is still published.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::resource::v1::{
    Device as ApiDevice, DeviceAttribute, DeviceCapacity, ResourcePool, ResourceSlice,
    ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use crate::inventory::{self, Device};

/// API limit on devices per slice without taints, counters or list attributes (we use none).
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// API limit on attributes plus capacities of one device.
pub const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
/// API limit on the length of a string or version attribute value.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 64;
/// Domain of the standard attributes shared across drivers (KEP-6072 and
/// `deviceattribute` in dynamic-resource-allocation).
pub const STANDARD_DOMAIN: &str = "resource.kubernetes.io";

/// Label on every slice we publish; the controller watches and lists slices by it.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "mock-accel-controller";
/// Label naming the node a slice belongs to; value from [`node_label_value`].
pub const LABEL_NODE: &str = "mock-accel.example.com/node";
/// Label naming the pool within the node: `numa<N>` or `numa-none`.
pub const LABEL_POOL: &str = "mock-accel.example.com/pool";

const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_VALUE_LEN: usize = 63;
const MAX_DRIVER_LEN: usize = 63;
const MAX_ID_LEN: usize = 32;
/// Hex digits of SHA-256 kept when a name must be shortened: 40 bits, enough to keep the
/// handful of names per node apart.
const HASH_LEN: usize = 10;

/// Everything [`desired_slices`] needs to know about one node.
#[derive(Clone, Copy, Debug)]
pub struct NodeSlicesInput<'a> {
    /// Driver name (`--driver-name`); also the domain of our attributes and capacity.
    pub driver: &'a str,
    /// Kubernetes Node name; goes into pool names, slice names, labels and `spec.nodeName`.
    pub node_name: &'a str,
    /// The Node's UID. When known, the Node becomes the slices' controlling owner, so that
    /// deleting the Node deletes its slices.
    pub node_uid: Option<&'a str>,
    /// The node's `MockAccelNode`, added as a second, non-controlling owner (its `controller`
    /// field is forced to `false`; the Node is the controller).
    pub owner: Option<&'a OwnerReference>,
    /// The node's devices, in any order.
    pub devices: &'a [Device],
}

/// Result of [`desired_slices`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredSlices {
    /// Every slice the node should have, sorted by pool (NUMA node ascending, `numa-none`
    /// last) and then by index within the pool. Apply those that [`slice_differs`] from the
    /// existing object of the same name; create the missing ones.
    pub slices: Vec<ResourceSlice>,
    /// Devices (or whole pools) left out because they would fail API validation, each naming
    /// the device or pool and the reason; report them as Events or conditions.
    pub rejected: Vec<SliceError>,
}

/// One pool as published, for status reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSummary {
    pub name: String,
    pub generation: i64,
    pub devices: usize,
    pub slices: usize,
}

impl DesiredSlices {
    /// The published pools in slice order, with their generation and sizes.
    pub fn pools(&self) -> Vec<PoolSummary> {
        let mut pools: Vec<PoolSummary> = Vec::new();
        for slice in &self.slices {
            let pool = &slice.spec.pool;
            let devices = slice.spec.devices.as_ref().map_or(0, Vec::len);
            match pools.last_mut() {
                Some(last) if last.name == pool.name => {
                    last.devices += devices;
                    last.slices += 1;
                }
                _ => pools.push(PoolSummary {
                    name: pool.name.clone(),
                    generation: pool.generation,
                    devices,
                    slices: 1,
                }),
            }
        }
        pools
    }
}

/// Why a node, a pool or a device cannot be published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    #[error(
        "driver name {driver:?} is not a DNS subdomain of at most {MAX_DRIVER_LEN} characters; fix --driver-name"
    )]
    InvalidDriver { driver: String },
    #[error(
        "node name {node:?} is not a DNS subdomain of at most {MAX_NAME_LEN} characters; no slices can be published for it"
    )]
    InvalidNode { node: String },
    #[error(
        "device {device:?} is not published: its name is not a DNS label (lowercase letters, digits and '-', at most 63); rename it in the inventory"
    )]
    DeviceName { device: String },
    #[error(
        "device {device:?} is not published: another device on node {node:?} has the same name; device names must be unique per node"
    )]
    DuplicateDevice { device: String, node: String },
    #[error(
        "device {device:?} is not published: memory of {memory} bytes does not fit a 64-bit signed integer attribute"
    )]
    MemoryTooLarge { device: String, memory: u64 },
    #[error(
        "device {device:?} is not published: it has {count} attributes and capacities, more than the API allows ({MAX_ATTRIBUTES_AND_CAPACITIES})"
    )]
    TooManyAttributes { device: String, count: usize },
    #[error(
        "device {device:?} is not published: attribute or capacity name {name:?} is not a qualified name (C identifier of at most 32 characters, optionally after a DNS subdomain domain and '/')"
    )]
    AttributeName { device: String, name: String },
    #[error("device {device:?} is not published: attribute {name:?} {reason}")]
    AttributeValue {
        device: String,
        name: String,
        reason: String,
    },
    #[error(
        "pool {pool:?} is not published (devices {devices:?}): its name is not at most {MAX_NAME_LEN} characters of DNS subdomains joined by '/'; use a shorter node name"
    )]
    InvalidPool { pool: String, devices: Vec<String> },
}

impl SliceError {
    /// The device this error concerns, when it concerns one device.
    pub fn device(&self) -> Option<&str> {
        match self {
            SliceError::DeviceName { device }
            | SliceError::DuplicateDevice { device, .. }
            | SliceError::MemoryTooLarge { device, .. }
            | SliceError::TooManyAttributes { device, .. }
            | SliceError::AttributeName { device, .. }
            | SliceError::AttributeValue { device, .. } => Some(device),
            SliceError::InvalidDriver { .. }
            | SliceError::InvalidNode { .. }
            | SliceError::InvalidPool { .. } => None,
        }
    }
}

/// Computes the slices `input`'s node should have.
///
/// `existing` is what the API holds now (any slices; only those of the same driver, node and
/// pool are considered); it decides each pool's generation: kept when the pool's current
/// slices (those at the pool's highest generation) already have exactly the desired content
/// and names, otherwise the highest existing generation + 1 (1 for a new pool).
///
/// Fails only when nothing at all can be published (invalid driver or node name). Invalid
/// devices are left out and listed in [`DesiredSlices::rejected`].
pub fn desired_slices(
    input: &NodeSlicesInput,
    existing: &[ResourceSlice],
) -> Result<DesiredSlices, SliceError> {
    if !is_dns_subdomain(input.driver, MAX_DRIVER_LEN) {
        return Err(SliceError::InvalidDriver {
            driver: input.driver.to_string(),
        });
    }
    if !is_dns_subdomain(input.node_name, MAX_NAME_LEN) {
        return Err(SliceError::InvalidNode {
            node: input.node_name.to_string(),
        });
    }

    let mut rejected = Vec::new();

    // Device names identify devices on the node (the kubelet plugin looks them up by name),
    // so a name used twice cannot be published for either device.
    let mut seen = BTreeMap::<&str, usize>::new();
    for d in input.devices {
        *seen.entry(d.name.as_str()).or_default() += 1;
    }

    // Pools keyed so that NUMA nodes sort numerically and `numa-none` comes last.
    let mut pools: BTreeMap<(bool, Option<u32>), Vec<ApiDevice>> = BTreeMap::new();
    let mut sorted: Vec<&Device> = input.devices.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for d in sorted {
        if seen.get(d.name.as_str()).copied().unwrap_or(0) > 1 {
            rejected.push(SliceError::DuplicateDevice {
                device: d.name.clone(),
                node: input.node_name.to_string(),
            });
            continue;
        }
        match api_device(input.driver, d).and_then(|api| {
            validate_device(&api)?;
            Ok(api)
        }) {
            Ok(api) => pools
                .entry((d.numa_node.is_none(), d.numa_node))
                .or_default()
                .push(api),
            Err(e) => rejected.push(e),
        }
    }

    let labels_base = [
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_NODE.to_string(), node_label_value(input.node_name)),
    ];
    let owners = owner_references(input);

    let mut slices = Vec::new();
    for ((_, numa), devices) in pools {
        let pool = inventory::pool_name(input.node_name, numa);
        if !is_pool_name(&pool) {
            rejected.push(SliceError::InvalidPool {
                pool,
                devices: devices.into_iter().map(|d| d.name).collect(),
            });
            continue;
        }
        let suffix = pool_suffix(numa);
        let chunks: Vec<&[ApiDevice]> = devices.chunks(MAX_DEVICES_PER_SLICE).collect();
        let count = chunks.len() as i64;

        let current: Vec<&ResourceSlice> = existing
            .iter()
            .filter(|s| {
                s.spec.driver == input.driver
                    && s.spec.node_name.as_deref() == Some(input.node_name)
                    && s.spec.pool.name == pool
            })
            .collect();
        let max_generation = current.iter().map(|s| s.spec.pool.generation).max();

        let mut pool_slices: Vec<ResourceSlice> = chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| {
                let mut labels: BTreeMap<String, String> = labels_base.iter().cloned().collect();
                labels.insert(LABEL_POOL.to_string(), suffix.clone());
                ResourceSlice {
                    metadata: ObjectMeta {
                        name: Some(slice_name(input.node_name, &suffix, index, input.driver)),
                        labels: Some(labels),
                        owner_references: (!owners.is_empty()).then(|| owners.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: ResourceSliceSpec {
                        driver: input.driver.to_string(),
                        node_name: Some(input.node_name.to_string()),
                        pool: ResourcePool {
                            name: pool.clone(),
                            generation: max_generation.unwrap_or(0),
                            resource_slice_count: count,
                        },
                        devices: Some(chunk.to_vec()),
                        ..ResourceSliceSpec::default()
                    },
                }
            })
            .collect();

        let unchanged = max_generation.is_some_and(|generation| {
            let mut at_max: Vec<&ResourceSlice> = current
                .iter()
                .copied()
                .filter(|s| s.spec.pool.generation == generation)
                .collect();
            at_max.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            at_max.len() == pool_slices.len()
                && at_max.iter().zip(&pool_slices).all(|(old, new)| {
                    old.metadata.name == new.metadata.name && spec_matches(&old.spec, &new.spec)
                })
        });
        if !unchanged {
            let generation = max_generation.unwrap_or(0).saturating_add(1);
            for s in &mut pool_slices {
                s.spec.pool.generation = generation;
            }
        }
        slices.extend(pool_slices);
    }

    Ok(DesiredSlices { slices, rejected })
}

/// Whether `existing` must be written to become `desired` (same object name assumed).
///
/// Compares only what we own: the labels we set (others' labels are ignored), the owner
/// references to the Node and to the kinds we add (others' are ignored), and the spec content
/// we set (server-populated metadata such as UID, resourceVersion and managedFields is
/// ignored). Quantities compare by value, so a server's canonical spelling is not a change.
pub fn slice_differs(desired: &ResourceSlice, existing: &ResourceSlice) -> bool {
    if desired.metadata.name != existing.metadata.name {
        return true;
    }
    let existing_labels = existing.metadata.labels.as_ref();
    let labels_differ = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .any(|(k, v)| existing_labels.and_then(|l| l.get(k)) != Some(v));
    if labels_differ {
        return true;
    }

    let desired_refs = desired.metadata.owner_references.as_deref().unwrap_or(&[]);
    let ours = |r: &&OwnerReference| {
        (r.kind == "Node" && r.api_version == "v1")
            || r.kind == "MockAccelNode"
            || desired_refs
                .iter()
                .any(|d| d.kind == r.kind && d.api_version == r.api_version)
    };
    let mut want: Vec<&OwnerReference> = desired_refs.iter().collect();
    let mut have: Vec<&OwnerReference> = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(ours)
        .collect();
    want.sort_by(|a, b| a.uid.cmp(&b.uid));
    have.sort_by(|a, b| a.uid.cmp(&b.uid));
    if want != have {
        return true;
    }

    !spec_matches(&existing.spec, &desired.spec)
}

/// The existing slices whose names are not among the desired ones: delete them.
///
/// Pass only slices this controller owns for the node being reconciled (for example those
/// labelled [`LABEL_MANAGED_BY`] and [`LABEL_NODE`]); every one not desired is returned.
pub fn obsolete_slices<'a>(
    desired: &[ResourceSlice],
    existing: &'a [ResourceSlice],
) -> Vec<&'a ResourceSlice> {
    let names: BTreeSet<&str> = desired
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    existing
        .iter()
        .filter(|s| {
            s.metadata
                .name
                .as_deref()
                .is_none_or(|n| !names.contains(n))
        })
        .collect()
}

/// Value of the [`LABEL_NODE`] label for `node`: the node name itself when it is a valid label
/// value, otherwise a shortened form ending in a hash of the full name (node names may be up
/// to 253 characters, label values only 63). List slices by this value, not by the raw name.
pub fn node_label_value(node: &str) -> String {
    if is_label_value(node) {
        return node.to_string();
    }
    let hash = short_hash(node);
    let keep = MAX_LABEL_VALUE_LEN - HASH_LEN - 1;
    let head: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() || !head.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// Label selector matching every slice this controller publishes for `node`, for lists and
/// watches: `app.kubernetes.io/managed-by=mock-accel-controller,mock-accel.example.com/node=<value>`.
pub fn node_label_selector(node: &str) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_NODE}={}",
        node_label_value(node)
    )
}

/// Object name of slice `index` of the pool `suffix` (`numa0`, `numa-none`) on `node`:
/// `<node>-<suffix>-<index, 3 digits>-<driver>`, a DNS subdomain. The index is zero-padded so
/// that name order is index order (the scheduler walks slices in name order). When the name
/// would exceed 253 characters, the node part is shortened and a hash of the full name keeps
/// it unique.
pub fn slice_name(node: &str, suffix: &str, index: usize, driver: &str) -> String {
    let tail = format!("-{suffix}-{index:03}-{driver}");
    let full = format!("{node}{tail}");
    if full.len() <= MAX_NAME_LEN {
        return full;
    }
    let hash = short_hash(&full);
    let room = MAX_NAME_LEN.saturating_sub(tail.len() + HASH_LEN + 1);
    let head: String = node.chars().take(room).collect();
    let head = head.trim_end_matches(['-', '.']);
    if head.is_empty() {
        format!("{hash}{tail}")
    } else {
        format!("{head}-{hash}{tail}")
    }
}

/// Memory capacity as the API server stores it, so that a stored slice compares equal to the
/// desired one: binary suffixes for whole multiples of 1024 (`16Gi`, `2Gi`), otherwise the
/// decimal canonical form of the exact byte count (`1536`, `3k`, `0`). This mirrors
/// apimachinery's canonicalisation of a `BinarySI` quantity parsed back from our string.
pub fn memory_quantity(bytes: u64) -> Quantity {
    const BINARY: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    const DECIMAL: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        let (mut n, mut exp) = (bytes, 0);
        while exp < BINARY.len() - 1 && n.is_multiple_of(1024) {
            n /= 1024;
            exp += 1;
        }
        return Quantity(format!("{n}{}", BINARY[exp]));
    }
    let (mut n, mut exp) = (bytes, 0);
    while n != 0 && exp < DECIMAL.len() - 1 && n.is_multiple_of(1000) {
        n /= 1000;
        exp += 1;
    }
    Quantity(format!("{n}{}", DECIMAL[exp]))
}

/// The DRA device published for `d`, with fully qualified attribute and capacity names.
pub fn api_device(driver: &str, d: &Device) -> Result<ApiDevice, SliceError> {
    let memory = i64::try_from(d.memory).map_err(|_| SliceError::MemoryTooLarge {
        device: d.name.clone(),
        memory: d.memory,
    })?;
    let ours = |id: &str| format!("{driver}/{id}");
    let std = |id: &str| format!("{STANDARD_DOMAIN}/{id}");
    let mut attrs = BTreeMap::new();
    attrs.insert(ours("uuid"), string_attr(&d.uuid));
    attrs.insert(ours("memory"), int_attr(memory));
    attrs.insert(ours("deviceType"), string_attr(d.device_type.as_str()));
    attrs.insert(ours("pciAddress"), string_attr(&d.pci_address));
    if let Some(pf) = &d.physfn {
        attrs.insert(ours("physfn"), string_attr(pf));
    }
    attrs.insert(ours("capabilities"), int_attr(i64::from(d.capabilities)));
    if let Some(n) = d.numa_node {
        attrs.insert(ours("numaNode"), int_attr(i64::from(n)));
        attrs.insert(std("numaNode"), int_attr(i64::from(n)));
    }
    attrs.insert(ours("sysfsName"), string_attr(&d.sysfs_name));
    // A firmware version the API would reject as semver is left out rather than sinking the
    // whole device: it is informational.
    if let Some(fw) = d.fw_version.as_deref().filter(|v| is_semver(v)) {
        attrs.insert(
            ours("fwVersion"),
            DeviceAttribute {
                version: Some(fw.to_string()),
                ..DeviceAttribute::default()
            },
        );
    }
    attrs.insert(std("pciBusID"), string_attr(&d.pci_address));
    if let Some(root) = &d.pcie_root {
        attrs.insert(std("pcieRoot"), string_attr(root));
    }
    let capacity = BTreeMap::from([(
        ours("memory"),
        DeviceCapacity {
            value: memory_quantity(d.memory),
            ..DeviceCapacity::default()
        },
    )]);
    Ok(ApiDevice {
        name: d.name.clone(),
        attributes: Some(attrs),
        capacity: Some(capacity),
        ..ApiDevice::default()
    })
}

/// Checks a device against the API's rules for ResourceSlice devices: DNS-label name, at most
/// [`MAX_ATTRIBUTES_AND_CAPACITIES`] attributes and capacities, qualified names, exactly one
/// value per attribute, string and version values of at most [`MAX_ATTRIBUTE_VALUE_LEN`]
/// characters, versions in semver 2.0.0 form.
pub fn validate_device(device: &ApiDevice) -> Result<(), SliceError> {
    let name = || device.name.clone();
    if !inventory::is_dns_label(&device.name) {
        return Err(SliceError::DeviceName { device: name() });
    }
    let attrs = device.attributes.as_ref();
    let caps = device.capacity.as_ref();
    let count = attrs.map_or(0, BTreeMap::len) + caps.map_or(0, BTreeMap::len);
    if count > MAX_ATTRIBUTES_AND_CAPACITIES {
        return Err(SliceError::TooManyAttributes {
            device: name(),
            count,
        });
    }
    let keys = attrs
        .into_iter()
        .flat_map(BTreeMap::keys)
        .chain(caps.into_iter().flat_map(BTreeMap::keys));
    for key in keys {
        if !is_qualified_name(key) {
            return Err(SliceError::AttributeName {
                device: name(),
                name: key.clone(),
            });
        }
    }
    for (key, attr) in attrs.into_iter().flatten() {
        let bad = |reason: String| SliceError::AttributeValue {
            device: name(),
            name: key.clone(),
            reason,
        };
        let set = [
            attr.bool.is_some(),
            attr.int.is_some(),
            attr.string.is_some(),
            attr.version.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(bad(format!("must have exactly one value, has {set}")));
        }
        for v in attr.string.iter().chain(&attr.version) {
            if v.chars().count() > MAX_ATTRIBUTE_VALUE_LEN {
                return Err(bad(format!(
                    "value {v:?} is longer than {MAX_ATTRIBUTE_VALUE_LEN} characters"
                )));
            }
        }
        if let Some(v) = attr.version.as_deref().filter(|v| !is_semver(v)) {
            return Err(bad(format!("value {v:?} is not a semantic version")));
        }
    }
    Ok(())
}

fn string_attr(s: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.to_string()),
        ..DeviceAttribute::default()
    }
}

fn int_attr(i: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(i),
        ..DeviceAttribute::default()
    }
}

fn owner_references(input: &NodeSlicesInput) -> Vec<OwnerReference> {
    let mut refs = Vec::new();
    if let Some(uid) = input.node_uid {
        refs.push(OwnerReference {
            api_version: "v1".to_string(),
            kind: "Node".to_string(),
            name: input.node_name.to_string(),
            uid: uid.to_string(),
            controller: Some(true),
            block_owner_deletion: None,
        });
    }
    if let Some(owner) = input.owner {
        refs.push(OwnerReference {
            controller: Some(false),
            ..owner.clone()
        });
    }
    refs
}

/// `numa<N>` or `numa-none`: the pool name after `<node>/`, used in slice names and labels.
fn pool_suffix(numa: Option<u32>) -> String {
    match numa {
        Some(n) => format!("numa{n}"),
        None => "numa-none".to_string(),
    }
}

/// Pool content equality on what we set; server-side extras are ignored.
fn spec_matches(a: &ResourceSliceSpec, b: &ResourceSliceSpec) -> bool {
    let devices = |s: &ResourceSliceSpec| s.devices.clone().unwrap_or_default();
    let (da, db) = (devices(a), devices(b));
    a.driver == b.driver
        && a.node_name == b.node_name
        && a.pool == b.pool
        && a.node_selector.is_none()
        && a.all_nodes.is_none_or(|x| !x)
        && a.per_device_node_selection.is_none_or(|x| !x)
        && a.shared_counters.as_ref().is_none_or(Vec::is_empty)
        && da.len() == db.len()
        && da.iter().zip(&db).all(|(x, y)| device_matches(x, y))
}

fn device_matches(a: &ApiDevice, b: &ApiDevice) -> bool {
    let empty_attrs = BTreeMap::new();
    let empty_caps = BTreeMap::new();
    let caps_a = a.capacity.as_ref().unwrap_or(&empty_caps);
    let caps_b = b.capacity.as_ref().unwrap_or(&empty_caps);
    a.name == b.name
        && a.attributes.as_ref().unwrap_or(&empty_attrs)
            == b.attributes.as_ref().unwrap_or(&empty_attrs)
        && caps_a.len() == caps_b.len()
        && caps_a.iter().zip(caps_b).all(|((ka, va), (kb, vb))| {
            ka == kb
                && va.request_policy == vb.request_policy
                && quantities_equal(&va.value, &vb.value)
        })
}

fn quantities_equal(a: &Quantity, b: &Quantity) -> bool {
    match (integer_quantity(&a.0), integer_quantity(&b.0)) {
        (Some(x), Some(y)) => x == y,
        _ => a.0 == b.0,
    }
}

/// Value of a non-negative integer quantity with an optional SI or binary suffix (the forms
/// [`memory_quantity`] and the API server produce for byte counts); `None` for anything else.
fn integer_quantity(s: &str) -> Option<u128> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u128 = digits.parse().ok()?;
    let factor: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(HASH_LEN)
        .collect()
}

/// RFC 1123 subdomain as Kubernetes checks it: dot-separated parts of lowercase letters, digits
/// and '-', each alphanumeric at both ends; at most `max` characters in all.
pub fn is_dns_subdomain(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Pool name rule: at most 253 characters, DNS subdomains joined by '/'.
fn is_pool_name(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && s.split('/').all(|seg| is_dns_subdomain(seg, MAX_NAME_LEN))
}

/// Label value rule: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= MAX_LABEL_VALUE_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_none_or(u8::is_ascii_alphanumeric)
        && b.last().is_none_or(u8::is_ascii_alphanumeric)
}

/// Attribute and capacity names: a C identifier of at most 32 characters, optionally preceded
/// by a DNS subdomain of at most 63 characters and '/'.
fn is_qualified_name(s: &str) -> bool {
    let (domain, id) = match s.split_once('/') {
        Some((d, i)) => (Some(d), i),
        None => (None, s),
    };
    let id_ok = id.len() <= MAX_ID_LEN
        && id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    id_ok && domain.is_none_or(|d| is_dns_subdomain(d, MAX_DRIVER_LEN))
}

/// Semantic Versioning 2.0.0, as the API validates `version` attributes: `MAJOR.MINOR.PATCH`
/// without leading zeros, optional `-prerelease` and `+build` identifiers.
pub fn is_semver(s: &str) -> bool {
    let ident_ok =
        |id: &str| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let numeric_ok = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_digit())
            && (n == "0" || !n.starts_with('0'))
            && n.parse::<u64>().is_ok()
    };
    let (rest, build) = match s.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (s, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let core_parts: Vec<&str> = core.split('.').collect();
    core_parts.len() == 3
        && core_parts.iter().all(|p| numeric_ok(p))
        && pre.is_none_or(|p| {
            p.split('.').all(|id| {
                ident_ok(id) && (!id.chars().all(|c| c.is_ascii_digit()) || numeric_ok(id))
            })
        })
        && build.is_none_or(|b| b.split('.').all(ident_ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::DeviceType;

    const DRIVER: &str = "mock-accel.example.com";
    const GI: u64 = 1 << 30;

    fn mk_device(name: &str, numa: Option<u32>, memory: u64) -> Device {
        Device {
            name: name.to_string(),
            sysfs_name: name.to_string(),
            device_type: DeviceType::Pf,
            uuid: format!("00000000-0000-0000-0000-{:012}", name.len()),
            memory,
            pci_address: "0000:11:00.0".to_string(),
            pcie_root: Some("pci0000:10".to_string()),
            numa_node: numa,
            physfn: None,
            capabilities: 1,
            status: 1,
            fw_version: Some("1.0.0".to_string()),
        }
    }

    fn mk_vf(name: &str, parent: &str, numa: Option<u32>, memory: u64) -> Device {
        Device {
            device_type: DeviceType::Vf,
            physfn: Some(parent.to_string()),
            ..mk_device(name, numa, memory)
        }
    }

    /// The canonical static-function node: two PFs with two VFs each, one PF per NUMA node.
    fn canonical_node() -> Vec<Device> {
        let at = |mut d: Device, bdf: &str, root: &str, uuid: &str| {
            d.pci_address = bdf.to_string();
            d.pcie_root = Some(root.to_string());
            d.uuid = uuid.to_string();
            d
        };
        vec![
            at(
                mk_device("mock0", Some(0), 16 * GI),
                "0000:11:00.0",
                "pci0000:10",
                "4e4f4445-312d-4e55-4d41-302d50460000",
            ),
            at(
                mk_vf("mock1", "mock0", Some(0), 2 * GI),
                "0000:11:00.1",
                "pci0000:10",
                "4e4f4445-312d-4e55-4d41-302d56463000",
            ),
            at(
                mk_vf("mock2", "mock0", Some(0), 2 * GI),
                "0000:11:00.2",
                "pci0000:10",
                "4e4f4445-312d-4e55-4d41-302d56463100",
            ),
            at(
                mk_device("mock3", Some(1), 16 * GI),
                "0000:21:00.0",
                "pci0000:20",
                "4e4f4445-312d-4e55-4d41-312d50460000",
            ),
            at(
                mk_vf("mock4", "mock3", Some(1), 2 * GI),
                "0000:21:00.1",
                "pci0000:20",
                "4e4f4445-312d-4e55-4d41-312d56463000",
            ),
            at(
                mk_vf("mock5", "mock3", Some(1), 2 * GI),
                "0000:21:00.2",
                "pci0000:20",
                "4e4f4445-312d-4e55-4d41-312d56463100",
            ),
        ]
    }

    fn input<'a>(node: &'a str, devices: &'a [Device]) -> NodeSlicesInput<'a> {
        NodeSlicesInput {
            driver: DRIVER,
            node_name: node,
            node_uid: Some("uid-1"),
            owner: None,
            devices,
        }
    }

    fn compute(node: &str, devices: &[Device], existing: &[ResourceSlice]) -> DesiredSlices {
        desired_slices(&input(node, devices), existing).unwrap()
    }

    fn find<'a>(out: &'a DesiredSlices, device: &str) -> &'a ApiDevice {
        out.slices
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten())
            .find(|d| d.name == device)
            .unwrap_or_else(|| panic!("device {device} not published"))
    }

    fn attr<'a>(d: &'a ApiDevice, key: &str) -> Option<&'a DeviceAttribute> {
        d.attributes.as_ref().unwrap().get(key)
    }

    fn s(v: &str) -> DeviceAttribute {
        string_attr(v)
    }

    fn i(v: i64) -> DeviceAttribute {
        int_attr(v)
    }

    fn generations(out: &DesiredSlices) -> Vec<(String, i64)> {
        out.slices
            .iter()
            .map(|s| (s.spec.pool.name.clone(), s.spec.pool.generation))
            .collect()
    }

    /// Every API rule a slice must pass, checked on our own output.
    fn assert_valid(out: &DesiredSlices) {
        let mut names = BTreeSet::new();
        for slice in &out.slices {
            let name = slice.metadata.name.as_deref().unwrap();
            assert!(is_dns_subdomain(name, 253), "invalid slice name {name:?}");
            assert!(
                names.insert(name.to_string()),
                "duplicate slice name {name}"
            );
            assert!(is_pool_name(&slice.spec.pool.name));
            for v in slice.metadata.labels.as_ref().unwrap().values() {
                assert!(is_label_value(v), "invalid label value {v:?}");
            }
            let devices = slice.spec.devices.as_ref().unwrap();
            assert!(!devices.is_empty() && devices.len() <= MAX_DEVICES_PER_SLICE);
            for d in devices {
                validate_device(d).unwrap();
            }
        }
    }

    #[test]
    fn canonical_node_has_two_pools_with_exact_attributes() {
        let devices = canonical_node();
        let out = compute("node1", &devices, &[]);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_valid(&out);

        assert_eq!(
            out.pools(),
            vec![
                PoolSummary {
                    name: "node1/numa0".into(),
                    generation: 1,
                    devices: 3,
                    slices: 1
                },
                PoolSummary {
                    name: "node1/numa1".into(),
                    generation: 1,
                    devices: 3,
                    slices: 1
                },
            ]
        );
        let slice = &out.slices[0];
        assert_eq!(
            slice.metadata.name.as_deref(),
            Some("node1-numa0-000-mock-accel.example.com")
        );
        assert_eq!(slice.spec.driver, DRIVER);
        assert_eq!(slice.spec.node_name.as_deref(), Some("node1"));
        assert_eq!(slice.spec.pool.resource_slice_count, 1);
        let names: Vec<&str> = slice
            .spec
            .devices
            .iter()
            .flatten()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["mock0", "mock1", "mock2"]);
        assert_eq!(
            slice.metadata.labels.as_ref().unwrap(),
            &BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                (LABEL_NODE.to_string(), "node1".to_string()),
                (LABEL_POOL.to_string(), "numa0".to_string()),
            ])
        );
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap(),
            &vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: "node1".into(),
                uid: "uid-1".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]
        );

        let mock0 = find(&out, "mock0");
        let expected: BTreeMap<String, DeviceAttribute> = [
            (
                "mock-accel.example.com/uuid",
                s("4e4f4445-312d-4e55-4d41-302d50460000"),
            ),
            ("mock-accel.example.com/memory", i(17179869184)),
            ("mock-accel.example.com/deviceType", s("pf")),
            ("mock-accel.example.com/pciAddress", s("0000:11:00.0")),
            ("mock-accel.example.com/capabilities", i(1)),
            ("mock-accel.example.com/numaNode", i(0)),
            ("mock-accel.example.com/sysfsName", s("mock0")),
            (
                "mock-accel.example.com/fwVersion",
                DeviceAttribute {
                    version: Some("1.0.0".into()),
                    ..Default::default()
                },
            ),
            ("resource.kubernetes.io/pciBusID", s("0000:11:00.0")),
            ("resource.kubernetes.io/pcieRoot", s("pci0000:10")),
            ("resource.kubernetes.io/numaNode", i(0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(mock0.attributes.as_ref().unwrap(), &expected);
        let cap = mock0.capacity.as_ref().unwrap();
        assert_eq!(cap.len(), 1);
        assert_eq!(cap["mock-accel.example.com/memory"].value.0, "16Gi");

        let mock1 = find(&out, "mock1");
        assert_eq!(
            attr(mock1, "mock-accel.example.com/deviceType"),
            Some(&s("vf"))
        );
        assert_eq!(
            attr(mock1, "mock-accel.example.com/physfn"),
            Some(&s("mock0"))
        );
        assert_eq!(
            attr(mock1, "mock-accel.example.com/memory"),
            Some(&i(2147483648))
        );
        assert_eq!(
            attr(mock1, "resource.kubernetes.io/pcieRoot"),
            Some(&s("pci0000:10"))
        );
        assert_eq!(
            attr(mock1, "resource.kubernetes.io/pciBusID"),
            Some(&s("0000:11:00.1"))
        );
        assert_eq!(attr(mock1, "mock-accel.example.com/numaNode"), Some(&i(0)));
        assert_eq!(attr(mock1, "resource.kubernetes.io/numaNode"), Some(&i(0)));
        assert_eq!(
            mock1.capacity.as_ref().unwrap()["mock-accel.example.com/memory"]
                .value
                .0,
            "2Gi"
        );
        assert_eq!(attr(mock0, "mock-accel.example.com/physfn"), None);
    }

    #[test]
    fn sriov_vf_keeps_its_sysfs_name_and_parent() {
        let mut vf = mk_vf("mock0-vf0", "mock0", Some(0), 2 * GI);
        vf.sysfs_name = "mock0_vf0".into();
        vf.pci_address = "0000:11:00.1".into();
        let devices = vec![mk_device("mock0", Some(0), 16 * GI), vf];
        let out = compute("node1", &devices, &[]);
        assert!(out.rejected.is_empty());
        assert_valid(&out);
        assert_eq!(out.slices.len(), 1);
        let vf = find(&out, "mock0-vf0");
        assert_eq!(
            attr(vf, "mock-accel.example.com/sysfsName"),
            Some(&s("mock0_vf0"))
        );
        assert_eq!(attr(vf, "mock-accel.example.com/physfn"), Some(&s("mock0")));
        assert_eq!(
            attr(vf, "mock-accel.example.com/deviceType"),
            Some(&s("vf"))
        );
    }

    #[test]
    fn numa_none_devices_go_to_their_own_pool_without_numa_attributes() {
        let devices = vec![
            mk_device("mock0", None, 16 * GI),
            mk_vf("mock1", "mock0", None, 2 * GI),
        ];
        let out = compute("node1", &devices, &[]);
        assert_valid(&out);
        assert_eq!(out.slices.len(), 1);
        let slice = &out.slices[0];
        assert_eq!(slice.spec.pool.name, "node1/numa-none");
        assert_eq!(
            slice.metadata.name.as_deref(),
            Some("node1-numa-none-000-mock-accel.example.com")
        );
        assert_eq!(
            slice.metadata.labels.as_ref().unwrap()[LABEL_POOL],
            "numa-none"
        );
        for d in slice.spec.devices.iter().flatten() {
            let keys: Vec<&String> = d.attributes.as_ref().unwrap().keys().collect();
            assert!(
                keys.iter().all(|k| !k.ends_with("/numaNode")),
                "{}: {keys:?}",
                d.name
            );
        }
    }

    #[test]
    fn numa_none_pool_sorts_after_numbered_pools() {
        let devices = vec![
            mk_device("a", None, GI),
            mk_device("b", Some(10), GI),
            mk_device("c", Some(2), GI),
        ];
        let out = compute("n", &devices, &[]);
        let pools: Vec<String> = out.pools().into_iter().map(|p| p.name).collect();
        assert_eq!(pools, ["n/numa2", "n/numa10", "n/numa-none"]);
    }

    #[test]
    fn many_devices_are_split_into_slices_of_at_most_128() {
        let devices: Vec<Device> = (0..4096)
            .map(|n| mk_device(&format!("mock{n}"), Some(n % 2), GI))
            .collect();
        let out = compute("node1", &devices, &[]);
        assert!(out.rejected.is_empty());
        assert_valid(&out);
        // 2048 devices per pool → 16 slices each.
        assert_eq!(out.slices.len(), 32);
        for pool in out.pools() {
            assert_eq!(pool.devices, 2048);
            assert_eq!(pool.slices, 16);
        }
        for slice in &out.slices {
            assert_eq!(slice.spec.devices.as_ref().unwrap().len(), 128);
            assert_eq!(slice.spec.pool.resource_slice_count, 16);
        }
        let published: usize = out
            .slices
            .iter()
            .map(|s| s.spec.devices.as_ref().unwrap().len())
            .sum();
        assert_eq!(published, 4096);
        // Within a pool devices follow name order across slices, and slice names sort by index.
        let pool0: Vec<&ResourceSlice> = out
            .slices
            .iter()
            .filter(|s| s.spec.pool.name == "node1/numa0")
            .collect();
        let mut names: Vec<&str> = pool0
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        let in_order = names.clone();
        names.sort();
        assert_eq!(names, in_order);
        let all: Vec<&str> = pool0
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten().map(|d| d.name.as_str()))
            .collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            pool0[15].metadata.name.as_deref(),
            Some("node1-numa0-015-mock-accel.example.com")
        );
    }

    #[test]
    fn a_pool_of_exactly_128_devices_is_one_slice_and_129_are_two() {
        let devices: Vec<Device> = (0..129)
            .map(|n| mk_device(&format!("d{n:03}"), Some(0), GI))
            .collect();
        assert_eq!(compute("n", &devices[..128], &[]).slices.len(), 1);
        let out = compute("n", &devices, &[]);
        assert_eq!(out.slices.len(), 2);
        assert_eq!(out.slices[1].spec.devices.as_ref().unwrap().len(), 1);
        assert_eq!(out.slices[1].spec.pool.resource_slice_count, 2);
    }

    #[test]
    fn generation_stays_while_content_is_unchanged() {
        let devices = canonical_node();
        let first = compute("node1", &devices, &[]);
        let again = compute("node1", &devices, &first.slices);
        assert_eq!(generations(&again), generations(&first));
        assert_eq!(again, first);

        // A pool that already sits at a high generation keeps it.
        let mut stored = first.slices.clone();
        for s in &mut stored {
            s.spec.pool.generation = 7;
        }
        let again = compute("node1", &devices, &stored);
        assert!(again.slices.iter().all(|s| s.spec.pool.generation == 7));
        assert!(
            again
                .slices
                .iter()
                .zip(&stored)
                .all(|(d, e)| !slice_differs(d, e))
        );
    }

    #[test]
    fn generation_bumps_when_a_device_is_added() {
        let mut devices = canonical_node();
        let first = compute("node1", &devices, &[]);
        devices.push(mk_vf("mock6", "mock3", Some(1), 2 * GI));
        let out = compute("node1", &devices, &first.slices);
        assert_eq!(
            generations(&out),
            [("node1/numa0".into(), 1), ("node1/numa1".into(), 2)]
        );
        assert!(!slice_differs(&out.slices[0], &first.slices[0]));
        assert!(slice_differs(&out.slices[1], &first.slices[1]));
    }

    #[test]
    fn generation_bumps_when_a_device_is_removed() {
        let mut devices = canonical_node();
        let first = compute("node1", &devices, &[]);
        devices.retain(|d| d.name != "mock2");
        let out = compute("node1", &devices, &first.slices);
        assert_eq!(
            generations(&out),
            [("node1/numa0".into(), 2), ("node1/numa1".into(), 1)]
        );
    }

    #[test]
    fn generation_bumps_when_an_attribute_changes() {
        let mut devices = canonical_node();
        let first = compute("node1", &devices, &[]);
        devices[4].capabilities = 3;
        let out = compute("node1", &devices, &first.slices);
        assert_eq!(
            generations(&out),
            [("node1/numa0".into(), 1), ("node1/numa1".into(), 2)]
        );
        // ... and it is stable again on the next pass.
        let next = compute("node1", &devices, &out.slices);
        assert_eq!(generations(&next), generations(&out));
    }

    #[test]
    fn generation_bumps_when_a_slice_of_the_pool_is_missing() {
        let devices: Vec<Device> = (0..200)
            .map(|n| mk_device(&format!("d{n:03}"), Some(0), GI))
            .collect();
        let first = compute("n", &devices, &[]);
        let out = compute("n", &devices, &first.slices[..1]);
        assert!(out.slices.iter().all(|s| s.spec.pool.generation == 2));
    }

    #[test]
    fn other_nodes_and_drivers_do_not_affect_generations() {
        let devices = canonical_node();
        let mut foreign = compute("node2", &devices, &[]).slices;
        let other_driver = NodeSlicesInput {
            driver: "other.example.com",
            ..input("node1", &devices)
        };
        foreign.extend(desired_slices(&other_driver, &[]).unwrap().slices);
        for s in &mut foreign {
            s.spec.pool.generation = 40;
        }
        let out = compute("node1", &devices, &foreign);
        assert!(out.slices.iter().all(|s| s.spec.pool.generation == 1));
    }

    #[test]
    fn metadata_changes_rewrite_slices_without_a_generation_bump() {
        let devices = canonical_node();
        let without_uid = NodeSlicesInput {
            node_uid: None,
            ..input("node1", &devices)
        };
        let first = desired_slices(&without_uid, &[]).unwrap();
        assert!(first.slices[0].metadata.owner_references.is_none());
        let owner = OwnerReference {
            api_version: "mock-accel.example.com/v1alpha1".into(),
            kind: "MockAccelNode".into(),
            name: "node1".into(),
            uid: "man-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let with_owners = NodeSlicesInput {
            owner: Some(&owner),
            ..input("node1", &devices)
        };
        let out = desired_slices(&with_owners, &first.slices).unwrap();
        assert_eq!(generations(&out), generations(&first));
        assert!(slice_differs(&out.slices[0], &first.slices[0]));
        let refs = out.slices[0].metadata.owner_references.as_ref().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].kind, "Node");
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(refs[1].kind, "MockAccelNode");
        assert_eq!(refs[1].controller, Some(false));
        assert_eq!(refs[1].block_owner_deletion, Some(true));
    }

    #[test]
    fn slice_differs_ignores_server_metadata_and_foreign_additions() {
        let devices = canonical_node();
        let out = compute("node1", &devices, &[]);
        let desired = &out.slices[0];
        let mut stored = desired.clone();
        stored.metadata.uid = Some("abc".into());
        stored.metadata.resource_version = Some("42".into());
        stored.metadata.generation = Some(3);
        stored
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        stored
            .metadata
            .owner_references
            .as_mut()
            .unwrap()
            .push(OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "x".into(),
                uid: "d".into(),
                ..Default::default()
            });
        // The server may spell a quantity differently; the value is what counts.
        let dev = &mut stored.spec.devices.as_mut().unwrap()[0];
        dev.capacity
            .as_mut()
            .unwrap()
            .get_mut("mock-accel.example.com/memory")
            .unwrap()
            .value = Quantity("17179869184".into());
        assert!(!slice_differs(desired, &stored));

        let mut changed = stored.clone();
        changed
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_POOL.into(), "numa1".into());
        assert!(slice_differs(desired, &changed));

        let mut changed = stored.clone();
        changed.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-2".into();
        assert!(slice_differs(desired, &changed));

        let mut changed = stored.clone();
        changed.spec.devices.as_mut().unwrap().pop();
        assert!(slice_differs(desired, &changed));

        let mut changed = stored.clone();
        changed.spec.pool.generation += 1;
        assert!(slice_differs(desired, &changed));

        let mut changed = stored;
        changed.spec.devices.as_mut().unwrap()[0]
            .attributes
            .as_mut()
            .unwrap()
            .insert("mock-accel.example.com/uuid".into(), s("other"));
        assert!(slice_differs(desired, &changed));
    }

    #[test]
    fn obsolete_slices_are_those_not_desired() {
        let devices = canonical_node();
        let before = compute("node1", &devices, &[]);
        let numa0_only: Vec<Device> = devices
            .iter()
            .filter(|d| d.numa_node == Some(0))
            .cloned()
            .collect();
        let after = compute("node1", &numa0_only, &before.slices);
        let obsolete = obsolete_slices(&after.slices, &before.slices);
        assert_eq!(obsolete.len(), 1);
        assert_eq!(obsolete[0].spec.pool.name, "node1/numa1");
        assert!(obsolete_slices(&before.slices, &before.slices).is_empty());
        assert_eq!(obsolete_slices(&[], &before.slices).len(), 2);
    }

    #[test]
    fn a_pf_with_zero_memory_is_published_with_zero_capacity() {
        let devices = vec![mk_device("mock0", Some(0), 0)];
        let out = compute("node1", &devices, &[]);
        assert!(out.rejected.is_empty());
        let d = find(&out, "mock0");
        assert_eq!(attr(d, "mock-accel.example.com/memory"), Some(&i(0)));
        assert_eq!(
            d.capacity.as_ref().unwrap()["mock-accel.example.com/memory"]
                .value
                .0,
            "0"
        );
    }

    #[test]
    fn invalid_devices_are_rejected_while_the_others_publish() {
        let mut long_uuid = mk_device("mock3", Some(0), GI);
        long_uuid.uuid = "u".repeat(65);
        let devices = vec![
            mk_device("mock0", Some(0), GI),
            mk_device("Mock_1", Some(0), GI),
            mk_device("mock2", Some(1), GI),
            mk_device("mock2", Some(0), GI),
            long_uuid,
            mk_device("mock4", Some(0), u64::MAX),
        ];
        let out = compute("node1", &devices, &[]);
        assert_valid(&out);
        let published: Vec<&str> = out
            .slices
            .iter()
            .flat_map(|s| s.spec.devices.iter().flatten().map(|d| d.name.as_str()))
            .collect();
        assert_eq!(published, ["mock0"]);
        let rejected: Vec<Option<&str>> = out.rejected.iter().map(SliceError::device).collect();
        assert_eq!(
            rejected,
            [
                Some("Mock_1"),
                Some("mock2"),
                Some("mock2"),
                Some("mock3"),
                Some("mock4")
            ]
        );
        assert!(matches!(out.rejected[0], SliceError::DeviceName { .. }));
        assert!(matches!(
            out.rejected[1],
            SliceError::DuplicateDevice { .. }
        ));
        assert!(matches!(out.rejected[3], SliceError::AttributeValue { .. }));
        assert!(matches!(out.rejected[4], SliceError::MemoryTooLarge { .. }));
        assert!(out.rejected[0].to_string().contains("Mock_1"));
        assert!(
            out.rejected[3]
                .to_string()
                .contains("mock-accel.example.com/uuid")
        );
    }

    #[test]
    fn an_invalid_firmware_version_is_left_out() {
        let mut d = mk_device("mock0", Some(0), GI);
        d.fw_version = Some("1.0".into());
        let out = compute("node1", &[d], &[]);
        assert!(out.rejected.is_empty());
        assert_eq!(
            attr(find(&out, "mock0"), "mock-accel.example.com/fwVersion"),
            None
        );
    }

    #[test]
    fn device_validation_follows_the_api_rules() {
        let base = api_device(DRIVER, &mk_device("mock0", Some(0), GI)).unwrap();
        validate_device(&base).unwrap();

        let mut many = base.clone();
        let attrs = many.attributes.as_mut().unwrap();
        for n in 0..21 {
            attrs.insert(format!("{DRIVER}/extra{n}"), i(n));
        }
        assert_eq!(attrs.len() + 1, 33);
        assert!(matches!(
            validate_device(&many),
            Err(SliceError::TooManyAttributes { count: 33, .. })
        ));
        many.attributes
            .as_mut()
            .unwrap()
            .remove(&format!("{DRIVER}/extra0"));
        validate_device(&many).unwrap();

        for bad in [
            "9lives",
            "a-b",
            &"x".repeat(33),
            "Bad.Domain/x",
            "a/b/c",
            "dom/",
        ] {
            let mut d = base.clone();
            d.attributes.as_mut().unwrap().insert(bad.to_string(), i(1));
            assert!(
                matches!(validate_device(&d), Err(SliceError::AttributeName { .. })),
                "{bad} accepted"
            );
        }
        let mut d = base.clone();
        d.attributes
            .as_mut()
            .unwrap()
            .insert("plain_id".into(), i(1));
        validate_device(&d).unwrap();

        let mut two_values = base.clone();
        two_values.attributes.as_mut().unwrap().insert(
            format!("{DRIVER}/both"),
            DeviceAttribute {
                int: Some(1),
                string: Some("x".into()),
                ..Default::default()
            },
        );
        assert!(matches!(
            validate_device(&two_values),
            Err(SliceError::AttributeValue { .. })
        ));

        let mut bad_version = base.clone();
        bad_version.attributes.as_mut().unwrap().insert(
            format!("{DRIVER}/v"),
            DeviceAttribute {
                version: Some("01.0.0".into()),
                ..Default::default()
            },
        );
        assert!(validate_device(&bad_version).is_err());

        let mut bad_name = base;
        bad_name.name = "mock0_vf0".into();
        assert!(matches!(
            validate_device(&bad_name),
            Err(SliceError::DeviceName { .. })
        ));
    }

    #[test]
    fn long_node_names_still_give_valid_names() {
        let devices = canonical_node();
        // A valid node name of 240 characters: slice names need shortening, pools still fit.
        let node = format!("{}.{}", "a".repeat(120), "b".repeat(119));
        assert_eq!(node.len(), 240);
        let out = compute(&node, &devices, &[]);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_valid(&out);
        assert_eq!(out.slices.len(), 2);
        for slice in &out.slices {
            let name = slice.metadata.name.as_deref().unwrap();
            assert!(name.len() <= 253);
            assert!(name.ends_with("-000-mock-accel.example.com"), "{name}");
            assert_eq!(
                slice.metadata.labels.as_ref().unwrap()[LABEL_NODE],
                node_label_value(&node)
            );
        }
        assert_eq!(
            node_label_selector("node1"),
            "app.kubernetes.io/managed-by=mock-accel-controller,mock-accel.example.com/node=node1"
        );
        let again = compute(&node, &devices, &[]);
        assert_eq!(again.slices, out.slices, "names are deterministic");

        // Two long names that differ only in their last character still get different names.
        let other = format!("{}.{}c", "a".repeat(120), "b".repeat(118));
        assert_ne!(
            slice_name(&node, "numa0", 0, DRIVER),
            slice_name(&other, "numa0", 0, DRIVER)
        );
        assert_ne!(node_label_value(&node), node_label_value(&other));
        assert!(node_label_value(&node).len() <= 63);

        // A node name so long that `<node>/numa0` exceeds 253: the pools are rejected, named.
        let huge = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        let out = compute(&huge, &devices, &[]);
        assert!(out.slices.is_empty());
        assert_eq!(out.rejected.len(), 2);
        assert!(
            matches!(&out.rejected[0], SliceError::InvalidPool { devices, .. } if devices.len() == 3)
        );
    }

    #[test]
    fn invalid_driver_or_node_fails_the_whole_node() {
        let devices = canonical_node();
        let bad_driver = NodeSlicesInput {
            driver: "Mock_Accel",
            ..input("node1", &devices)
        };
        assert!(matches!(
            desired_slices(&bad_driver, &[]),
            Err(SliceError::InvalidDriver { .. })
        ));
        assert!(matches!(
            desired_slices(&input("Node_1", &devices), &[]),
            Err(SliceError::InvalidNode { .. })
        ));
    }

    #[test]
    fn memory_quantities_are_in_the_servers_canonical_form() {
        let cases = [
            (0, "0"),
            (512, "512"),
            (1000, "1k"),
            (1024, "1Ki"),
            (1536, "1536"),
            (3000, "3k"),
            (1536 * 1024, "1536Ki"),
            (GI, "1Gi"),
            (2 * GI, "2Gi"),
            (16 * GI, "16Gi"),
            (16 * GI + 1, "17179869185"),
            (1 << 40, "1Ti"),
            (1 << 62, "4Ei"),
        ];
        for (bytes, want) in cases {
            assert_eq!(memory_quantity(bytes).0, want, "{bytes}");
            assert_eq!(integer_quantity(want), Some(u128::from(bytes)));
        }
    }

    #[test]
    fn semver_follows_the_spec() {
        for ok in [
            "1.0.0",
            "0.0.0",
            "10.20.30",
            "1.0.0-rc.1",
            "1.0.0-alpha-1+build.5",
        ] {
            assert!(is_semver(ok), "{ok}");
        }
        for bad in [
            "1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", "1..0", "",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }
}
