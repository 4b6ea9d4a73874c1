//! Whether an existing slice already says what a desired one says (so that an unchanged node
//! costs no writes), and which existing slices are no longer desired.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::resource::v1::{
    Counter, CounterSet, Device as ApiDevice, DeviceCounterConsumption, ResourceSlice,
    ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference};

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

/// Pool content equality on what we set; server-side extras are ignored.
pub(super) fn spec_matches(a: &ResourceSliceSpec, b: &ResourceSliceSpec) -> bool {
    let devices = |s: &ResourceSliceSpec| s.devices.clone().unwrap_or_default();
    let (da, db) = (devices(a), devices(b));
    a.driver == b.driver
        && a.node_name == b.node_name
        && a.pool == b.pool
        && a.node_selector.is_none()
        && a.all_nodes.is_none_or(|x| !x)
        && a.per_device_node_selection.is_none_or(|x| !x)
        && counter_sets_match(
            a.shared_counters.as_deref().unwrap_or_default(),
            b.shared_counters.as_deref().unwrap_or_default(),
        )
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
        && a.allow_multiple_allocations.unwrap_or(false)
            == b.allow_multiple_allocations.unwrap_or(false)
        && a.binding_conditions.as_deref().unwrap_or_default()
            == b.binding_conditions.as_deref().unwrap_or_default()
        && a.binding_failure_conditions.as_deref().unwrap_or_default()
            == b.binding_failure_conditions.as_deref().unwrap_or_default()
        && consumption_matches(
            a.consumes_counters.as_deref().unwrap_or_default(),
            b.consumes_counters.as_deref().unwrap_or_default(),
        )
        && super::taints::taints_match(
            a.taints.as_deref().unwrap_or_default(),
            b.taints.as_deref().unwrap_or_default(),
        )
}

fn counter_sets_match(a: &[CounterSet], b: &[CounterSet]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && counters_match(&x.counters, &y.counters))
}

fn consumption_matches(a: &[DeviceCounterConsumption], b: &[DeviceCounterConsumption]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.counter_set == y.counter_set && counters_match(&x.counters, &y.counters)
        })
}

fn counters_match(a: &BTreeMap<String, Counter>, b: &BTreeMap<String, Counter>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && quantities_equal(&va.value, &vb.value))
}

fn quantities_equal(a: &Quantity, b: &Quantity) -> bool {
    match (integer_quantity(&a.0), integer_quantity(&b.0)) {
        (Some(x), Some(y)) => x == y,
        _ => a.0 == b.0,
    }
}

/// Value of a non-negative integer quantity with an optional SI or binary suffix (the forms
/// [`memory_quantity`] and the API server produce for byte counts); `None` for anything else.
pub fn integer_quantity(s: &str) -> Option<u128> {
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
