//! Shared PFs (consumable capacity, KEP-5075): on a node that opts in, each PF is published
//! with `allowMultipleAllocations: true` and a `memory` capacity with a request policy, so that
//! several claims each take a part of one PF's memory and the scheduler keeps the parts within
//! the PF.
//!
//! The mode is a property of the node, chosen by its administrator with the Node label
//! [`crate::names::LABEL_PF_SHARING`]` = `[`PF_SHARING_SHARED`] (as GPU sharing is chosen per
//! node in production clusters): a PF is either handed out whole (class `mock-accel-pf`) or in
//! shares (class `mock-accel-pf-shared`), never both at once, because the two are the same
//! device. A shared PF carries the attribute [`SHARED_ATTRIBUTE`] (`true`), which is how the
//! classes tell the two apart on every Kubernetes version (`device.allowMultipleAllocations` is
//! not known to the CEL of a 1.34 server without the alpha gate).
//!
//! With shared counters ([`super::counters`]) a shared PF still consumes its whole card: the
//! scheduler charges a device that allows multiple allocations once, when its first share is
//! allocated (Kubernetes 1.36 and later), so the card's VFs and its shares exclude each other
//! exactly as the whole PF and its VFs do.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Device as ApiDevice, DeviceAttribute,
    DeviceCapacity,
};

use super::desired::memory_quantity;
use crate::names::LABEL_PF_SHARING;

/// Value of [`LABEL_PF_SHARING`] that turns sharing on for a node's PFs.
pub const PF_SHARING_SHARED: &str = "shared";
/// Bool attribute (in the driver's domain) of a PF published in shares.
pub const SHARED_ATTRIBUTE: &str = "shared";
/// Granularity of a share, and what a request that names no amount gets: 1 GiB.
pub const SHARE_STEP: u64 = 1 << 30;

/// Whether a Node with `labels` asks for shared PFs.
pub fn node_wants_shared_pfs(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(LABEL_PF_SHARING))
        .is_some_and(|v| v == PF_SHARING_SHARED)
}

/// Turns the published PF `device` (with `memory` bytes) into a shared one: multiple
/// allocations, and a request policy on its `<driver>/memory` capacity of default
/// [`SHARE_STEP`], from one step up to the PF's memory in whole steps. A PF with less than one
/// step of memory (a 16 GiB PF that kernel module v0.2.0 reports as 0) cannot be shared and is
/// left exclusive; returns whether the device was changed.
pub fn share_pf(driver: &str, device: &mut ApiDevice, memory: u64) -> bool {
    let steps = memory / SHARE_STEP;
    if steps == 0 {
        return false;
    }
    let step = memory_quantity(SHARE_STEP);
    let policy = CapacityRequestPolicy {
        default: Some(step.clone()),
        valid_range: Some(CapacityRequestPolicyRange {
            min: step.clone(),
            max: Some(memory_quantity(steps * SHARE_STEP)),
            step: Some(step),
        }),
        valid_values: None,
    };
    device.capacity.get_or_insert_default().insert(
        format!("{driver}/memory"),
        DeviceCapacity {
            value: memory_quantity(memory),
            request_policy: Some(policy),
        },
    );
    device.attributes.get_or_insert_default().insert(
        format!("{driver}/{SHARED_ATTRIBUTE}"),
        DeviceAttribute {
            bool: Some(true),
            ..DeviceAttribute::default()
        },
    );
    device.allow_multiple_allocations = Some(true);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRIVER: &str = "mock-accel.example.com";

    #[test]
    fn a_shared_pf_allows_multiple_allocations_in_whole_gib_steps_up_to_its_memory() {
        let mut d = ApiDevice {
            name: "mock0".into(),
            ..ApiDevice::default()
        };
        assert!(share_pf(DRIVER, &mut d, 16 * SHARE_STEP));
        assert_eq!(d.allow_multiple_allocations, Some(true));
        let cap = &d.capacity.as_ref().unwrap()["mock-accel.example.com/memory"];
        assert_eq!(cap.value.0, "16Gi");
        let policy = cap.request_policy.as_ref().unwrap();
        assert_eq!(policy.default.as_ref().unwrap().0, "1Gi");
        let range = policy.valid_range.as_ref().unwrap();
        assert_eq!(
            (
                range.min.0.as_str(),
                range.max.as_ref().unwrap().0.as_str(),
                range.step.as_ref().unwrap().0.as_str()
            ),
            ("1Gi", "16Gi", "1Gi")
        );
        assert_eq!(
            d.attributes.as_ref().unwrap()["mock-accel.example.com/shared"].bool,
            Some(true)
        );
    }

    #[test]
    fn the_range_ends_at_the_last_whole_step_and_a_pf_below_one_step_stays_exclusive() {
        let mut d = ApiDevice::default();
        assert!(share_pf(DRIVER, &mut d, 5 * SHARE_STEP + 512));
        let cap = &d.capacity.as_ref().unwrap()["mock-accel.example.com/memory"];
        let range = cap.request_policy.as_ref().unwrap().valid_range.as_ref();
        assert_eq!(range.unwrap().max.as_ref().unwrap().0, "5Gi");

        let mut zero = ApiDevice::default();
        assert!(!share_pf(DRIVER, &mut zero, 0));
        assert_eq!(zero, ApiDevice::default());
    }

    #[test]
    fn only_the_shared_label_value_turns_sharing_on() {
        let labels = |v: &str| BTreeMap::from([(LABEL_PF_SHARING.to_string(), v.to_string())]);
        assert!(node_wants_shared_pfs(Some(&labels("shared"))));
        assert!(!node_wants_shared_pfs(Some(&labels("exclusive"))));
        assert!(!node_wants_shared_pfs(Some(&BTreeMap::new())));
        assert!(!node_wants_shared_pfs(None));
    }
}
