//! Device taints from device health (KEP-5055): a device that is not Healthy carries the taint
//! `<driver>/unhealthy=<state>` in its ResourceSlice, so the scheduler avoids it for claims that
//! do not tolerate the taint, and, with effect `NoExecute`, the device-taint eviction controller
//! evicts the pods using it. Back to Healthy, the taint goes. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::DeviceTaint;

use crate::{fixture::HealthEffect, inventory::Health};

/// No device has a taint.
pub static NO_TAINTS: BTreeMap<String, Vec<DeviceTaint>> = BTreeMap::new();

/// Identifier of the health taint's key, under the driver name.
pub const UNHEALTHY: &str = "unhealthy";

/// The taint key: `<driver>/unhealthy`.
pub fn unhealthy_key(driver: &str) -> String {
    format!("{driver}/{UNHEALTHY}")
}

/// The taint of a device in `health` (`None` when Healthy). `state` is the health as the agent
/// wrote it (an unknown word from a newer agent also taints: the device is not known good).
pub fn health_taint(
    driver: &str,
    state: &str,
    effect: Option<HealthEffect>,
) -> Option<DeviceTaint> {
    if state == format!("{:?}", Health::Healthy) {
        return None;
    }
    // A label value: the states are plain words; anything else is cut to what a value allows.
    let value: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    Some(DeviceTaint {
        key: unhealthy_key(driver),
        value: (!value.is_empty()).then_some(value),
        effect: format!("{:?}", effect.unwrap_or(HealthEffect::NoSchedule)),
        time_added: None,
    })
}

/// Whether two taint lists say the same (key, value, effect); `timeAdded` is the API server's.
pub fn taints_match(a: &[DeviceTaint], b: &[DeviceTaint]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.key == y.key && x.value == y.value && x.effect == y.effect)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRIVER: &str = "mock-accel.example.com";

    #[test]
    fn not_healthy_devices_get_the_taint_with_the_declared_effect() {
        assert_eq!(health_taint(DRIVER, "Healthy", None), None);
        let t = health_taint(DRIVER, "Unhealthy", None).unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            (
                "mock-accel.example.com/unhealthy",
                Some("Unhealthy"),
                "NoSchedule"
            )
        );
        let t = health_taint(DRIVER, "Unknown", Some(HealthEffect::NoExecute)).unwrap();
        assert_eq!(
            (t.value.as_deref(), t.effect.as_str()),
            (Some("Unknown"), "NoExecute")
        );
        let odd = health_taint(DRIVER, "on fire!", None).unwrap();
        assert_eq!(odd.value.as_deref(), Some("onfire"));
    }

    #[test]
    fn time_added_is_not_a_difference() {
        let mine = health_taint(DRIVER, "Unhealthy", None).unwrap();
        let mut theirs = mine.clone();
        theirs.time_added = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
        assert!(taints_match(
            std::slice::from_ref(&mine),
            std::slice::from_ref(&theirs)
        ));
        theirs.effect = "NoExecute".into();
        assert!(!taints_match(std::slice::from_ref(&mine), &[theirs]));
        assert!(!taints_match(&[mine], &[]));
    }
}
