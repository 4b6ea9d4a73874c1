//! The desired slices of one node: its devices mapped onto DRA devices, grouped into one pool
//! per NUMA node and split into slices of at most [`MAX_DEVICES_PER_SLICE`] devices, each pool
//! at a generation that changes only when its content does.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    CounterSet, Device as ApiDevice, DeviceAttribute, DeviceCapacity, DeviceTaint, ResourcePool,
    ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{
    MAX_DEVICES_PER_SLICE, STANDARD_DOMAIN, SliceError, binding,
    counters::{MAX_COUNTER_SETS_PER_SLICE, MAX_DEVICES_PER_SLICE_WITH_COUNTERS, pool_counters},
    diff, sharing,
    validate::{is_semver, validate_device},
};
use crate::{
    inventory::{Device, DeviceType},
    names::{
        LABEL_MANAGED_BY, LABEL_NODE, LABEL_POOL, MANAGED_BY, MAX_DRIVER_LEN, MAX_NAME_LEN,
        is_dns_subdomain, is_pool_name, node_label_value, pool_name, pool_suffix, slice_name,
    },
};

/// A pool's sort key: NUMA-less last, then NUMA node.
type PoolKey = (bool, Option<u32>);

/// What one slice of a pool carries: devices or counter sets (never both).
type SliceContent = (Option<Vec<ApiDevice>>, Option<Vec<CounterSet>>);

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
    /// Publish each card (a PF and its VFs) as a shared counter set that its functions consume
    /// ([`super::counters`]), so that a PF and its own VFs exclude each other. Only for API
    /// servers that accept counter sets in slices of their own (Kubernetes 1.35 and later with
    /// `DRAPartitionableDevices`).
    pub partitionable: bool,
    /// Device name → its taints ([`super::taints`]); devices not listed carry none. A pool
    /// with a tainted device is split at [`MAX_DEVICES_PER_SLICE_WITH_COUNTERS`] (64).
    pub taints: &'a BTreeMap<String, Vec<DeviceTaint>>,
    /// Publish the node's PFs in shares of their memory ([`super::sharing`]): the node asks
    /// for it by label and the API server serves consumable capacity.
    pub shared_pfs: bool,
    /// Make every device of the node wait for attachment ([`super::binding`]): the node asks
    /// for it by label and the API server serves binding conditions.
    pub binding_conditions: bool,
}

/// Result of [`desired_slices`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredSlices {
    /// Every slice the node should have, sorted by pool (NUMA node ascending, `numa-none`
    /// last) and then by index within the pool. Apply those that [`super::slice_differs`] from the
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
    let mut pools: BTreeMap<PoolKey, Vec<(ApiDevice, &Device)>> = BTreeMap::new();
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
        match api_device(input.driver, d).and_then(|mut api| {
            if input.shared_pfs && d.device_type == DeviceType::Pf {
                sharing::share_pf(input.driver, &mut api, d.memory);
            }
            if input.binding_conditions {
                binding::require_attachment(input.driver, &mut api);
            }
            validate_device(&api)?;
            Ok(api)
        }) {
            Ok(api) => pools
                .entry((d.numa_node.is_none(), d.numa_node))
                .or_default()
                .push((api, d)),
            Err(e) => rejected.push(e),
        }
    }

    let labels_base = [
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_NODE.to_string(), node_label_value(input.node_name)),
    ];
    let owners = owner_references(input);

    let mut slices = Vec::new();
    for ((_, numa), members) in pools {
        let pool = pool_name(input.node_name, numa);
        if !is_pool_name(&pool) {
            rejected.push(SliceError::InvalidPool {
                pool,
                devices: members.into_iter().map(|(d, _)| d.name).collect(),
            });
            continue;
        }
        let suffix = pool_suffix(numa);
        let (mut devices, inventory): (Vec<ApiDevice>, Vec<&Device>) = members.into_iter().unzip();
        let counters = if input.partitionable {
            pool_counters(&inventory)
        } else {
            Default::default()
        };
        let mut tainted = false;
        for d in &mut devices {
            if let Some(c) = counters.consumption.get(&d.name) {
                d.consumes_counters = Some(vec![c.clone()]);
            }
            if let Some(t) = input.taints.get(&d.name).filter(|t| !t.is_empty()) {
                d.taints = Some(t.clone());
                tainted = true;
            }
        }
        // The API's limit: 64 devices per slice once any of them has taints or counters.
        let per_slice = if counters.consumption.is_empty() && !tainted {
            MAX_DEVICES_PER_SLICE
        } else {
            MAX_DEVICES_PER_SLICE_WITH_COUNTERS
        };
        // Device slices first, so their names do not depend on the mode; counter slices after.
        let specs: Vec<SliceContent> = devices
            .chunks(per_slice)
            .map(|c| (Some(c.to_vec()), None))
            .chain(
                counters
                    .sets
                    .chunks(MAX_COUNTER_SETS_PER_SLICE)
                    .map(|c| (None, Some(c.to_vec()))),
            )
            .collect();
        let count = specs.len() as i64;

        let current: Vec<&ResourceSlice> = existing
            .iter()
            .filter(|s| {
                s.spec.driver == input.driver
                    && s.spec.node_name.as_deref() == Some(input.node_name)
                    && s.spec.pool.name == pool
            })
            .collect();
        let max_generation = current.iter().map(|s| s.spec.pool.generation).max();

        let mut pool_slices: Vec<ResourceSlice> = specs
            .into_iter()
            .enumerate()
            .map(|(index, (devices, shared_counters))| {
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
                        devices,
                        shared_counters,
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
                    old.metadata.name == new.metadata.name
                        && diff::spec_matches(&old.spec, &new.spec)
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

pub(super) fn string_attr(s: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.to_string()),
        ..DeviceAttribute::default()
    }
}

pub(super) fn int_attr(i: i64) -> DeviceAttribute {
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
