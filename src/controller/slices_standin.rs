//! Temporary stand-in for `crate::slices` with the same API, until the real desired-slice
//! computation lands on main. Removed by the merge that brings `src/slices.rs`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::resource::v1::{Device as DraDevice, DeviceAttribute, ResourcePool, ResourceSlice, ResourceSliceSpec},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use crate::inventory::{Device, is_dns_label};

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "mock-accel-controller";
pub const NODE_LABEL: &str = "mock-accel.example.com/node";

pub struct NodeSlicesInput<'a> {
    pub driver: &'a str,
    pub node_name: &'a str,
    pub node_uid: Option<&'a str>,
    pub owner: Option<&'a OwnerReference>,
    pub devices: &'a [Device],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    #[error("device {device:?}: name is not a DNS label")]
    InvalidDeviceName { device: String },
}

pub struct DesiredSlices {
    pub slices: Vec<ResourceSlice>,
    pub rejected: Vec<SliceError>,
}

pub fn desired_slices(input: &NodeSlicesInput, existing: &[ResourceSlice]) -> Result<DesiredSlices, SliceError> {
    let mut rejected = Vec::new();
    let mut pools: BTreeMap<String, Vec<DraDevice>> = BTreeMap::new();
    for d in input.devices {
        if !is_dns_label(&d.name) {
            rejected.push(SliceError::InvalidDeviceName { device: d.name.clone() });
            continue;
        }
        let mut attributes = BTreeMap::new();
        attributes.insert(
            format!("{}/uuid", input.driver),
            DeviceAttribute {
                string: Some(d.uuid.clone()),
                ..Default::default()
            },
        );
        pools.entry(d.pool(input.node_name)).or_default().push(DraDevice {
            name: d.name.clone(),
            attributes: Some(attributes),
            ..Default::default()
        });
    }
    let mut owners = Vec::new();
    if let Some(uid) = input.node_uid {
        owners.push(OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: input.node_name.into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        });
    }
    owners.extend(input.owner.cloned());
    let slices = pools
        .into_iter()
        .map(|(pool, devices)| {
            let old = existing.iter().filter(|s| s.spec.pool.name == pool);
            let max_gen = old.clone().map(|s| s.spec.pool.generation).max().unwrap_or(0);
            let same = old.clone().any(|s| s.spec.devices.as_ref() == Some(&devices));
            let generation = if same { max_gen } else { max_gen + 1 };
            let suffix = pool.rsplit('/').next().unwrap_or_default().to_string();
            ResourceSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{suffix}-{}", input.node_name, input.driver.replace('.', "-"))),
                    labels: Some(BTreeMap::from([
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                        (NODE_LABEL.to_string(), input.node_name.to_string()),
                    ])),
                    owner_references: Some(owners.clone()),
                    ..Default::default()
                },
                spec: ResourceSliceSpec {
                    driver: input.driver.into(),
                    node_name: Some(input.node_name.into()),
                    pool: ResourcePool {
                        name: pool,
                        generation,
                        resource_slice_count: 1,
                    },
                    devices: Some(devices),
                    ..Default::default()
                },
            }
        })
        .collect();
    Ok(DesiredSlices { slices, rejected })
}

pub fn slice_differs(desired: &ResourceSlice, existing: &ResourceSlice) -> bool {
    desired.spec != existing.spec
        || desired.metadata.labels != existing.metadata.labels
        || desired.metadata.owner_references != existing.metadata.owner_references
}

pub fn obsolete_slices<'a>(desired: &[ResourceSlice], existing: &'a [ResourceSlice]) -> Vec<&'a ResourceSlice> {
    existing
        .iter()
        .filter(|e| !desired.iter().any(|d| d.metadata.name == e.metadata.name))
        .collect()
}

/// The device a rejection concerns.
pub fn rejected_device(e: &SliceError) -> &str {
    match e {
        SliceError::InvalidDeviceName { device } => device,
    }
}
