//! Devices that must be attached before a pod may bind (binding conditions, KEP-5007), as
//! fabric-attached accelerators are: on a node that opts in, every device publishes
//! `bindingConditions: ["<driver>/Attached"]` and
//! `bindingFailureConditions: ["<driver>/AttachFailed"]`. The scheduler then allocates such a
//! device and waits in its PreBind step until the claim's device status carries one of the two
//! conditions; the controller's attacher ([`crate::controller::attach`]) sets it.
//!
//! A node opts in with the Node label [`crate::names::LABEL_ATTACHMENT`]` = `[`ATTACHMENT_FABRIC`].

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::Device as ApiDevice;

use crate::names::LABEL_ATTACHMENT;

/// Value of [`LABEL_ATTACHMENT`] that makes a node's devices wait for attachment.
pub const ATTACHMENT_FABRIC: &str = "fabric";
/// Condition (in the driver's domain) that lets a pod bind.
pub const ATTACHED: &str = "Attached";
/// Condition (in the driver's domain) that makes the scheduler give the allocation up.
pub const ATTACH_FAILED: &str = "AttachFailed";

/// `<driver>/Attached`.
pub fn attached_condition(driver: &str) -> String {
    format!("{driver}/{ATTACHED}")
}

/// `<driver>/AttachFailed`.
pub fn attach_failed_condition(driver: &str) -> String {
    format!("{driver}/{ATTACH_FAILED}")
}

/// Whether a Node with `labels` asks for attachment before binding.
pub fn node_wants_attachment(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(LABEL_ATTACHMENT))
        .is_some_and(|v| v == ATTACHMENT_FABRIC)
}

/// Makes the published `device` wait for attachment.
pub fn require_attachment(driver: &str, device: &mut ApiDevice) {
    device.binding_conditions = Some(vec![attached_condition(driver)]);
    device.binding_failure_conditions = Some(vec![attach_failed_condition(driver)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attached_device_names_both_conditions_in_the_driver_domain() {
        let mut d = ApiDevice::default();
        require_attachment("mock-accel.example.com", &mut d);
        assert_eq!(
            d.binding_conditions,
            Some(vec!["mock-accel.example.com/Attached".to_string()])
        );
        assert_eq!(
            d.binding_failure_conditions,
            Some(vec!["mock-accel.example.com/AttachFailed".to_string()])
        );
        let labels = |v: &str| BTreeMap::from([(LABEL_ATTACHMENT.to_string(), v.to_string())]);
        assert!(node_wants_attachment(Some(&labels("fabric"))));
        assert!(!node_wants_attachment(Some(&labels("local"))));
        assert!(!node_wants_attachment(None));
    }
}
