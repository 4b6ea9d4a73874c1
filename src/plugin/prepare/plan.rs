//! The pure half of prepare: from a fetched ResourceClaim, this node's inventory and the
//! checkpoint, decide which devices a claim gets, which registers a prepare writes, and what
//! the checkpoint entry, the kubelet's answer and `status.preparedClaims` say. No I/O here;
//! [`super::Preparer`] performs what these functions decide.
//!
//! Shares of a PF (consumable capacity): results with a `shareID` on one device coexist, each
//! with its own consumed memory; the first share prepared on a device writes its register and
//! the last one unprepared clears it. A share never coexists with a whole-device result.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::resource::v1::{AllocationResult, ResourceClaim};

use super::PrepareError;
use crate::{
    cdi,
    checkpoint::{Checkpoint, ClaimEntry, DeviceEntry, PrepareState},
    inventory::Inventory,
    plugin::{ClaimRef, HeldRegister, PreparedClaim, PreparedDevice},
    slices::integer_quantity,
};

/// One allocation result of this driver, checked against this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedDevice {
    pub device: String,
    pub sysfs_name: String,
    pub pool: String,
    /// Base request name (`main` for `main/sub`).
    pub request_name: String,
    pub admin_access: bool,
    pub share_id: Option<String>,
    /// Bytes of the device's memory this result consumes (consumable capacity), as the
    /// scheduler recorded it in `consumedCapacity`.
    pub consumed_memory: Option<u64>,
}

/// What preparing a claim takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// One per allocation result of this driver, in allocation order.
    pub devices: Vec<PlannedDevice>,
    /// Opaque parameter keys given for this driver, which it does not define.
    pub ignored_parameters: Vec<String>,
    /// Devices of which other claims hold shares already: their register is set, and a share of
    /// this claim leaves it alone.
    pub shared_elsewhere: BTreeSet<String>,
}

impl Plan {
    /// Sysfs names of the registers this prepare writes: each non-admin device once, except
    /// shared devices whose register an earlier share set.
    pub fn register_writes(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.devices
            .iter()
            .filter(|d| self.writes_register(d) && seen.insert(d.sysfs_name.as_str()))
            .map(|d| d.sysfs_name.as_str())
            .collect()
    }

    fn writes_register(&self, d: &PlannedDevice) -> bool {
        let joins_a_share = d.share_id.is_some() && self.shared_elsewhere.contains(&d.device);
        !d.admin_access && !joins_a_share
    }
}

/// The Go helper's checks on a fetched claim: same UID as the kubelet asked for, allocated.
pub fn check_claim<'a>(
    claim: &ClaimRef,
    found: &'a ResourceClaim,
) -> Result<&'a AllocationResult, PrepareError> {
    let uid = found.metadata.uid.as_deref().unwrap_or_default();
    if uid != claim.uid {
        return Err(PrepareError::ClaimReplaced {
            claim: claim.to_string(),
            found: uid.to_string(),
        });
    }
    found
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .ok_or_else(|| PrepareError::NotAllocated {
            claim: claim.to_string(),
        })
}

/// Checks this driver's allocation results against the node and the claims already prepared.
pub fn plan_devices(
    claim: &ClaimRef,
    allocation: &AllocationResult,
    driver: &str,
    node: &str,
    inventory: &Inventory,
    prepared: &Checkpoint,
) -> Result<Plan, PrepareError> {
    let claim_name = claim.to_string();
    let devices = allocation.devices.as_ref();
    let mut plan = Plan::default();

    for (index, config) in devices
        .and_then(|d| d.config.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(opaque) = &config.opaque else {
            return Err(PrepareError::UnsupportedConfig {
                claim: claim_name,
                index,
            });
        };
        if opaque.driver != driver {
            continue;
        }
        match &opaque.parameters.0 {
            serde_json::Value::Object(map) => plan.ignored_parameters.extend(map.keys().cloned()),
            serde_json::Value::Null => {}
            other => {
                return Err(PrepareError::InvalidConfig {
                    claim: claim_name,
                    index,
                    found: json_kind(other).to_string(),
                });
            }
        }
    }

    plan.shared_elsewhere = shared_elsewhere(prepared, &claim.uid);
    let memory_capacity = format!("{driver}/memory");
    let node_prefix = format!("{node}/");
    let results = devices
        .and_then(|d| d.results.as_ref())
        .into_iter()
        .flatten();
    for result in results.filter(|r| r.driver == driver) {
        if !result.pool.starts_with(&node_prefix) {
            return Err(PrepareError::OtherNode {
                claim: claim_name,
                request: result.request.clone(),
                device: result.device.clone(),
                pool: result.pool.clone(),
                node: node.to_string(),
            });
        }
        let Some(device) = inventory.get(&result.device) else {
            return Err(PrepareError::UnknownDevice {
                claim: claim_name,
                request: result.request.clone(),
                device: result.device.clone(),
                node: node.to_string(),
            });
        };
        let actual = device.pool(node);
        if actual != result.pool {
            return Err(PrepareError::PoolMismatch {
                claim: claim_name,
                device: result.device.clone(),
                pool: result.pool.clone(),
                actual,
            });
        }
        let admin_access = result.admin_access.unwrap_or(false);
        let shared = result.share_id.is_some();
        if !admin_access && let Some(holder) = holder_of(prepared, &device.name, &claim.uid, shared)
        {
            return Err(PrepareError::AlreadyAllocated {
                claim: claim_name,
                device: device.name.clone(),
                holder,
            });
        }
        plan.devices.push(PlannedDevice {
            device: device.name.clone(),
            sysfs_name: device.sysfs_name.clone(),
            pool: result.pool.clone(),
            request_name: base_request(&result.request).to_string(),
            admin_access,
            share_id: result.share_id.clone(),
            consumed_memory: consumed_memory(
                claim,
                result.consumed_capacity.as_ref(),
                &memory_capacity,
                &device.name,
            )?,
        });
    }
    Ok(plan)
}

/// Bytes of `<driver>/memory` in a result's `consumedCapacity`, when it has that entry.
fn consumed_memory(
    claim: &ClaimRef,
    consumed: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    capacity: &str,
    device: &str,
) -> Result<Option<u64>, PrepareError> {
    let Some(q) = consumed.and_then(|c| c.get(capacity)) else {
        return Ok(None);
    };
    integer_quantity(&q.0)
        .and_then(|n| u64::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| PrepareError::ConsumedCapacity {
            claim: claim.to_string(),
            device: device.to_string(),
            quantity: q.0.clone(),
        })
}

/// Devices of which claims other than `uid` hold shares.
pub(super) fn shared_elsewhere(prepared: &Checkpoint, uid: &str) -> BTreeSet<String> {
    prepared
        .claims
        .values()
        .filter(|e| e.uid != uid)
        .flat_map(|e| e.devices.iter())
        .filter(|d| d.share_id.is_some() && !d.admin_access)
        .map(|d| d.device.clone())
        .collect()
}

/// The claim (other than `uid`) holding `device` without admin access, as `ns/name (uid …)`;
/// for a share (`shared`), only a claim holding the whole device counts.
fn holder_of(prepared: &Checkpoint, device: &str, uid: &str, shared: bool) -> Option<String> {
    prepared
        .claims
        .values()
        .filter(|e| e.uid != uid)
        .find(|e| {
            e.devices
                .iter()
                .any(|d| d.device == device && !d.admin_access && !(shared && d.share_id.is_some()))
        })
        .map(entry_claim)
}

/// `main` for a `main/sub` request reference.
fn base_request(request: &str) -> &str {
    request.split_once('/').map_or(request, |(main, _)| main)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The `PrepareStarted` record of `plan`; `previous` holds the register values read for
/// `plan.register_writes()`.
pub(super) fn new_entry(
    claim: &ClaimRef,
    plan: &Plan,
    previous: &HashMap<String, u32>,
    driver: &str,
    now: &str,
) -> ClaimEntry {
    let mut recorded = BTreeSet::new();
    let devices: Vec<DeviceEntry> = plan
        .devices
        .iter()
        .map(|d| {
            // Only the first ordinary result of a device writes its register (for a share: the
            // first share on the device).
            let writes = plan.writes_register(d) && recorded.insert(d.sysfs_name.clone());
            DeviceEntry {
                device: d.device.clone(),
                sysfs_name: d.sysfs_name.clone(),
                pool: d.pool.clone(),
                request_names: vec![d.request_name.clone()],
                admin_access: d.admin_access,
                share_id: d.share_id.clone(),
                consumed_memory: d.consumed_memory,
                register_previous: if writes {
                    previous.get(&d.sysfs_name).copied()
                } else {
                    None
                },
            }
        })
        .collect();
    let mut entry = ClaimEntry {
        uid: claim.uid.clone(),
        namespace: claim.namespace.clone(),
        name: claim.name.clone(),
        state: PrepareState::PrepareStarted,
        devices,
        cdi_device_ids: Vec::new(),
        prepared_at: now.to_string(),
    };
    entry.cdi_device_ids = unique_devices(&entry)
        .map(|d| cdi::qualified_device_id(driver, &claim.uid, &d.device))
        .collect();
    entry
}

/// The entry's devices, each DRA device once, in allocation order.
pub(super) fn unique_devices(entry: &ClaimEntry) -> impl Iterator<Item = &DeviceEntry> {
    let mut seen = BTreeSet::new();
    entry
        .devices
        .iter()
        .filter(move |d| seen.insert(d.device.as_str()))
}

/// The kubelet's answer for a prepared claim: one device per allocation result.
pub(super) fn prepared_devices(driver: &str, entry: &ClaimEntry) -> Vec<PreparedDevice> {
    entry
        .devices
        .iter()
        .map(|d| PreparedDevice {
            request_names: d.request_names.clone(),
            pool_name: d.pool.clone(),
            device_name: d.device.clone(),
            cdi_device_ids: vec![cdi::qualified_device_id(driver, &entry.uid, &d.device)],
            share_id: d.share_id.clone(),
        })
        .collect()
}

/// Completed claims for `MockAccelNode.status`, sorted by namespace and name.
pub(super) fn prepared_status(cp: &Checkpoint) -> Vec<PreparedClaim> {
    let mut out: Vec<PreparedClaim> = cp
        .claims
        .values()
        .filter(|e| e.state == PrepareState::PrepareCompleted)
        .map(|e| PreparedClaim {
            uid: e.uid.clone(),
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            devices: unique_devices(e).map(|d| d.device.clone()).collect(),
            cdi_device_ids: e.cdi_device_ids.clone(),
            prepared_at: e.prepared_at.clone(),
            registers: e
                .devices
                .iter()
                .filter(|d| d.register_previous.is_some())
                .map(|d| HeldRegister {
                    device: d.device.clone(),
                    sysfs_name: d.sysfs_name.clone(),
                    pool: d.pool.clone(),
                })
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
    out
}

/// Device → the claim holding it (`namespace/name`); the shares of a device list their claims
/// sorted and comma-separated.
pub(super) fn allocated_map(cp: &Checkpoint) -> HashMap<String, String> {
    let mut holders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in cp.claims.values() {
        for d in e.devices.iter().filter(|d| !d.admin_access) {
            holders
                .entry(d.device.clone())
                .or_default()
                .insert(e.claim_key());
        }
    }
    holders
        .into_iter()
        .map(|(device, claims)| (device, claims.into_iter().collect::<Vec<_>>().join(",")))
        .collect()
}

/// `namespace/name (uid …)` of a checkpoint entry, as error messages name claims.
pub(super) fn entry_claim(entry: &ClaimEntry) -> String {
    format!("{}/{} (uid {})", entry.namespace, entry.name, entry.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        claims::{DRIVER, NODE, admin, allocated, cref, result},
        devices::pf,
    };

    #[test]
    fn plan_records_base_requests_admin_access_and_one_register_write_per_device() {
        let devices = vec![
            pf("mock0").numa(Some(0)).build(),
            pf("mock1").numa(Some(1)).build(),
        ];
        let inventory = Inventory::new(devices);
        let claim = allocated(
            "u",
            "c",
            vec![
                result("main/sub", "mock0", "node1/numa0"),
                result("again", "mock0", "node1/numa0"),
                admin(result("watch", "mock1", "node1/numa1")),
            ],
        );
        let c = cref("u", "c");
        let allocation = check_claim(&c, &claim).unwrap();
        let plan = plan_devices(
            &c,
            allocation,
            DRIVER,
            NODE,
            &inventory,
            &Checkpoint::default(),
        )
        .unwrap();
        let requests: Vec<_> = plan
            .devices
            .iter()
            .map(|d| d.request_name.as_str())
            .collect();
        assert_eq!(requests, vec!["main", "again", "watch"]);
        assert_eq!(plan.register_writes(), vec!["mock0"]);

        let previous = HashMap::from([("mock0".to_string(), 3)]);
        let entry = new_entry(&c, &plan, &previous, DRIVER, "t");
        let regs: Vec<_> = entry.devices.iter().map(|d| d.register_previous).collect();
        assert_eq!(regs, vec![Some(3), None, None]);
        assert_eq!(
            entry.cdi_device_ids,
            vec![
                "mock-accel.example.com/accel=u-mock0",
                "mock-accel.example.com/accel=u-mock1"
            ]
        );
        let answer = prepared_devices(DRIVER, &entry);
        assert_eq!(answer.len(), 3, "one device per allocation result");
        assert_eq!(answer[1].cdi_device_ids, answer[0].cdi_device_ids);
    }

    #[test]
    fn numa_none_devices_live_in_the_numa_none_pool() {
        let inventory = Inventory::new(vec![pf("mock5").numa(None).build()]);
        let c = cref("u", "c");
        let claim = allocated("u", "c", vec![result("r", "mock5", "node1/numa-none")]);
        let plan = plan_devices(
            &c,
            check_claim(&c, &claim).unwrap(),
            DRIVER,
            NODE,
            &inventory,
            &Checkpoint::default(),
        )
        .unwrap();
        assert_eq!(plan.devices[0].pool, "node1/numa-none");
    }
}
