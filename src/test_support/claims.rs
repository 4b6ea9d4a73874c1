//! ResourceClaim fixtures: allocation results, allocated claims, the kubelet's [`ClaimRef`]s
//! and [`ClaimMap`], an in-memory API server for the prepare state machine.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use k8s_openapi::{
    api::resource::v1::{
        AllocationResult, DeviceAllocationConfiguration, DeviceAllocationResult,
        DeviceRequestAllocationResult, OpaqueDeviceConfiguration, ResourceClaim,
        ResourceClaimStatus,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, runtime::RawExtension},
};

use crate::plugin::{ClaimRef, ClaimSource};

/// The default driver name.
pub const DRIVER: &str = crate::inventory::DEFAULT_DRIVER_NAME;
/// The node most fixtures live on.
pub const NODE: &str = "node1";
/// The namespace of the claims built here unless a test names another.
pub const NS: &str = "default";

/// An allocation result of [`DRIVER`] for `request`: `device` from `pool`.
pub fn result(request: &str, device: &str, pool: &str) -> DeviceRequestAllocationResult {
    DeviceRequestAllocationResult {
        driver: DRIVER.into(),
        request: request.into(),
        device: device.into(),
        pool: pool.into(),
        ..Default::default()
    }
}

/// `r` with admin access.
pub fn admin(mut r: DeviceRequestAllocationResult) -> DeviceRequestAllocationResult {
    r.admin_access = Some(true);
    r
}

/// `r` as share `id` of a device that allows multiple allocations, consuming `memory` of its
/// `<driver>/memory` capacity (a quantity such as `8Gi`).
pub fn share(
    mut r: DeviceRequestAllocationResult,
    id: &str,
    memory: &str,
) -> DeviceRequestAllocationResult {
    r.share_id = Some(id.into());
    r.consumed_capacity = Some(std::collections::BTreeMap::from([(
        format!("{DRIVER}/memory"),
        k8s_openapi::apimachinery::pkg::api::resource::Quantity(memory.into()),
    )]));
    r
}

/// `r` allocated by another driver.
pub fn foreign(mut r: DeviceRequestAllocationResult) -> DeviceRequestAllocationResult {
    r.driver = "gpu.example.com".into();
    r
}

/// Metadata of claim `name` in [`NS`] with `uid`.
pub fn claim_meta(uid: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        uid: Some(uid.into()),
        ..Default::default()
    }
}

/// Claim `name` in [`NS`], allocated `results`.
pub fn allocated(
    uid: &str,
    name: &str,
    results: Vec<DeviceRequestAllocationResult>,
) -> ResourceClaim {
    with_config(uid, name, results, Vec::new())
}

/// Claim `name` in `namespace`, allocated `results`.
pub fn allocated_in(
    namespace: &str,
    uid: &str,
    name: &str,
    results: Vec<DeviceRequestAllocationResult>,
) -> ResourceClaim {
    let mut claim = allocated(uid, name, results);
    claim.metadata.namespace = Some(namespace.into());
    claim
}

/// Claim `name` in [`NS`], allocated `results` with allocation `config` (none when empty).
pub fn with_config(
    uid: &str,
    name: &str,
    results: Vec<DeviceRequestAllocationResult>,
    config: Vec<DeviceAllocationConfiguration>,
) -> ResourceClaim {
    ResourceClaim {
        metadata: claim_meta(uid, name),
        spec: Default::default(),
        status: Some(ResourceClaimStatus {
            allocation: Some(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    results: Some(results),
                    config: (!config.is_empty()).then_some(config),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Opaque configuration for `driver` from the claim.
pub fn opaque(driver: &str, parameters: serde_json::Value) -> DeviceAllocationConfiguration {
    DeviceAllocationConfiguration {
        source: "FromClaim".into(),
        requests: None,
        opaque: Some(OpaqueDeviceConfiguration {
            driver: driver.into(),
            parameters: RawExtension(parameters),
        }),
    }
}

/// The kubelet's reference to claim `name` in [`NS`].
pub fn cref(uid: &str, name: &str) -> ClaimRef {
    ClaimRef {
        namespace: NS.into(),
        uid: uid.into(),
        name: name.into(),
    }
}

/// The API server's ResourceClaims as a map keyed by namespace and name; clones share it.
/// Counts GETs, so tests can check that a repeated call did not read again.
#[derive(Clone, Default)]
pub struct ClaimMap(Arc<ClaimMapInner>);

#[derive(Default)]
struct ClaimMapInner {
    claims: Mutex<HashMap<(String, String), ResourceClaim>>,
    gets: AtomicUsize,
    /// When set, every GET fails with this message, as an unreachable API server would.
    failing: Mutex<Option<String>>,
}

impl ClaimMap {
    /// Stores (or replaces) `claim` under its namespace and name.
    pub fn put(&self, claim: ResourceClaim) {
        let key = (
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default(),
        );
        self.lock().insert(key, claim);
    }

    /// Deletes claim `name` in `namespace`.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.lock()
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Makes every following GET fail with `message` (`None`: answer again).
    pub fn fail_gets(&self, message: Option<&str>) {
        *self
            .0
            .failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = message.map(str::to_string);
    }

    /// GETs answered so far.
    pub fn gets(&self) -> usize {
        self.0.gets.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ResourceClaim>> {
        self.0
            .claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClaimSource for ClaimMap {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, String> {
        self.0.gets.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .0
            .failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(message) = failing {
            return Err(message);
        }
        let key = (namespace.to_string(), name.to_string());
        Ok(self.lock().get(&key).cloned())
    }
}
