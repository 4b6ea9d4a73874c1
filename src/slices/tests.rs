//! The desired slices of example nodes, end to end: attributes, pools, splitting,
//! generations, diffing, validation and names.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::resource::v1::{Device as ApiDevice, DeviceAttribute, ResourceSlice},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
};

use super::{
    desired::{int_attr, string_attr},
    diff::integer_quantity,
    validate::is_semver,
    *,
};
use crate::{
    inventory::{Device, DeviceType},
    names::{
        LABEL_MANAGED_BY, LABEL_NODE, LABEL_POOL, MANAGED_BY, is_dns_subdomain, is_label_value,
        is_pool_name, node_label_selector, node_label_value, slice_name,
    },
    test_support::devices,
};

const DRIVER: &str = "mock-accel.example.com";
const GI: u64 = 1 << 30;

fn mk_device(name: &str, numa: Option<u32>, memory: u64) -> Device {
    devices::pf(name)
        .name(name)
        .uuid(format!("00000000-0000-0000-0000-{:012}", name.len()))
        .memory(memory)
        .numa(numa)
        .status(1)
        .fw_version(Some("1.0.0"))
        .build()
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
        partitionable: false,
        taints: &super::taints::NO_TAINTS,
        shared_pfs: false,
        binding_conditions: false,
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
        // A slice carries devices or counter sets, never both (v1 validation).
        if let Some(sets) = &slice.spec.shared_counters {
            assert!(slice.spec.devices.is_none());
            assert!(!sets.is_empty() && sets.len() <= counters::MAX_COUNTER_SETS_PER_SLICE);
            continue;
        }
        let devices = slice.spec.devices.as_ref().unwrap();
        let limit = if devices.iter().any(|d| d.consumes_counters.is_some()) {
            counters::MAX_DEVICES_PER_SLICE_WITH_COUNTERS
        } else {
            MAX_DEVICES_PER_SLICE
        };
        assert!(!devices.is_empty() && devices.len() <= limit);
        for d in devices {
            validate_device(d).unwrap();
            assert!(d.consumes_counters.as_ref().is_none_or(|c| c.len() <= 2));
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

// ---------------------------------------------------------------------------------------------
// Partitionable devices: shared counters per card

fn partitioned(node: &str, devices: &[Device], existing: &[ResourceSlice]) -> DesiredSlices {
    let input = NodeSlicesInput {
        partitionable: true,
        ..input(node, devices)
    };
    desired_slices(&input, existing).unwrap()
}

/// The counter sets of `out` by name.
fn counter_sets(
    out: &DesiredSlices,
) -> BTreeMap<String, k8s_openapi::api::resource::v1::CounterSet> {
    out.slices
        .iter()
        .flat_map(|s| s.spec.shared_counters.iter().flatten())
        .map(|c| (c.name.clone(), c.clone()))
        .collect()
}

/// Whether the devices named in `picked` can be allocated together, as the scheduler checks
/// counters: per set and counter, the sum consumed must not exceed what the set holds.
fn fits(out: &DesiredSlices, picked: &[&str]) -> bool {
    let sets = counter_sets(out);
    let mut used: BTreeMap<(String, String), u128> = BTreeMap::new();
    for name in picked {
        for c in find(out, name).consumes_counters.iter().flatten() {
            for (counter, v) in &c.counters {
                *used
                    .entry((c.counter_set.clone(), counter.clone()))
                    .or_default() += integer_quantity(&v.value.0).unwrap();
            }
        }
    }
    used.iter().all(|((set, counter), n)| {
        let have = &sets[set].counters[counter].value.0;
        *n <= integer_quantity(have).unwrap()
    })
}

#[test]
fn partitionable_pools_get_one_counter_set_per_card_in_a_slice_of_its_own() {
    let out = partitioned("node1", &canonical_node(), &[]);
    assert_valid(&out);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let shapes: Vec<(String, String, i64, usize, Vec<String>)> = out
        .slices
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap(),
                s.spec.pool.name.clone(),
                s.spec.pool.resource_slice_count,
                s.spec.devices.as_ref().map_or(0, Vec::len),
                s.spec
                    .shared_counters
                    .iter()
                    .flatten()
                    .map(|c| c.name.clone())
                    .collect(),
            )
        })
        .collect();
    let name = |pool: &str, i: usize| slice_name("node1", pool, i, DRIVER);
    assert_eq!(
        shapes,
        vec![
            (name("numa0", 0), "node1/numa0".into(), 2, 3, vec![]),
            (
                name("numa0", 1),
                "node1/numa0".into(),
                2,
                0,
                vec!["mock0".into()]
            ),
            (name("numa1", 0), "node1/numa1".into(), 2, 3, vec![]),
            (
                name("numa1", 1),
                "node1/numa1".into(),
                2,
                0,
                vec!["mock3".into()]
            ),
        ]
    );
    // The device slices keep the names they have without counters.
    let plain = compute("node1", &canonical_node(), &[]);
    assert_eq!(plain.slices[0].metadata.name, out.slices[0].metadata.name);

    let sets = counter_sets(&out);
    let q = |set: &str, c: &str| sets[set].counters[c].value.0.clone();
    assert_eq!(
        (q("mock0", "memory"), q("mock0", "functions")),
        ("16Gi".into(), "3".into())
    );
    let pf = find(&out, "mock0").consumes_counters.clone().unwrap();
    assert_eq!(pf.len(), 1);
    assert_eq!(pf[0].counter_set, "mock0");
    assert_eq!(
        pf[0].counters, sets["mock0"].counters,
        "the PF takes its whole card"
    );
    let vf = &find(&out, "mock1").consumes_counters.clone().unwrap()[0];
    assert_eq!(vf.counter_set, "mock0");
    assert_eq!(vf.counters["memory"].value.0, "2Gi");
    assert_eq!(vf.counters["functions"].value.0, "1");
}

#[test]
fn a_pf_and_its_own_vf_never_fit_together_other_combinations_do() {
    let out = partitioned("node1", &canonical_node(), &[]);
    assert!(!fits(&out, &["mock0", "mock1"]), "PF with its own VF");
    assert!(!fits(&out, &["mock3", "mock5"]), "PF with its own VF");
    assert!(fits(&out, &["mock1", "mock2"]), "both VFs of one card");
    assert!(
        fits(&out, &["mock0", "mock4", "mock5"]),
        "a PF with another card's VFs"
    );
    assert!(fits(&out, &["mock0", "mock3"]), "two PFs");
    // A PF whose memory reads as 0 bytes (16 GiB register quirk), VFs larger than the PF:
    // the functions counter still makes them exclusive, and all VFs still fit.
    let mut devices = canonical_node();
    devices[0].memory = 0;
    devices[1].memory = 12 * GI;
    let out = partitioned("node1", &devices, &[]);
    assert!(!fits(&out, &["mock0", "mock1"]));
    assert!(!fits(&out, &["mock0", "mock2"]));
    assert!(fits(&out, &["mock1", "mock2"]));
}

#[test]
fn counters_respect_the_v1_limits_of_slices() {
    // 20 cards of 3 VFs in one pool: 80 devices, 20 counter sets.
    let mut devices = Vec::new();
    for c in 0..20 {
        let pf = format!("card{c:02}");
        devices.push(mk_device(&pf, Some(0), 16 * GI));
        for v in 0..3 {
            devices.push(mk_vf(&format!("{pf}-vf{v}"), &pf, Some(0), 2 * GI));
        }
    }
    let out = partitioned("node1", &devices, &[]);
    assert_valid(&out);
    let sizes: Vec<(usize, usize)> = out
        .slices
        .iter()
        .map(|s| {
            let devices = s.spec.devices.as_ref().map_or(0, Vec::len);
            let sets = s.spec.shared_counters.as_ref().map_or(0, Vec::len);
            assert!(
                devices == 0 || sets == 0,
                "a slice carries devices or counters, not both"
            );
            (devices, sets)
        })
        .collect();
    assert_eq!(sizes, vec![(64, 0), (16, 0), (0, 8), (0, 8), (0, 4)]);
    assert!(
        out.slices
            .iter()
            .all(|s| s.spec.pool.resource_slice_count == 5)
    );
    for s in &out.slices {
        for d in s.spec.devices.iter().flatten() {
            assert_eq!(
                d.consumes_counters.as_ref().map(Vec::len),
                Some(1),
                "{}",
                d.name
            );
        }
    }
    // Without counters the 128-device limit applies as before.
    let plain = compute("node1", &devices, &[]);
    assert_eq!(plain.slices.len(), 1);
}

#[test]
fn a_vf_whose_pf_is_in_another_pool_consumes_nothing() {
    let devices = vec![
        mk_device("mock0", Some(0), 16 * GI),
        mk_vf("mock1", "mock0", Some(1), 2 * GI),
        mk_vf("mock2", "gone", Some(0), 2 * GI),
    ];
    let out = partitioned("node1", &devices, &[]);
    assert_valid(&out);
    assert!(find(&out, "mock1").consumes_counters.is_none());
    assert!(find(&out, "mock2").consumes_counters.is_none());
    assert_eq!(
        find(&out, "mock0").consumes_counters.as_ref().unwrap()[0].counters["functions"]
            .value
            .0,
        "1"
    );
}

#[test]
fn counters_take_part_in_diffing_and_generations() {
    let devices = canonical_node();
    let first = partitioned("node1", &devices, &[]);
    let mut stored = first.slices.clone();
    // The server spells quantities its own way; that is no change.
    for s in &mut stored {
        for c in s.spec.shared_counters.iter_mut().flatten() {
            c.counters.get_mut("memory").unwrap().value = Quantity("17179869184".into());
        }
    }
    let again = partitioned("node1", &devices, &stored);
    assert_eq!(generations(&again), generations(&first));
    assert!(
        again
            .slices
            .iter()
            .zip(&stored)
            .all(|(d, e)| !slice_differs(d, e))
    );

    // Turning counters off (or on) rewrites the pools at a new generation.
    let off = compute("node1", &devices, &stored);
    assert!(off.slices.iter().all(|s| s.spec.pool.generation == 2));
    assert!(slice_differs(&off.slices[0], &stored[0]));
    assert_eq!(
        obsolete_slices(&off.slices, &stored).len(),
        2,
        "the counter slices go"
    );

    // A changed counter is a change.
    let mut changed = stored.clone();
    changed[1].spec.shared_counters.as_mut().unwrap()[0]
        .counters
        .get_mut("functions")
        .unwrap()
        .value = Quantity("2".into());
    assert!(slice_differs(&first.slices[1], &changed[1]));
    let mut consumed = stored.clone();
    consumed[0].spec.devices.as_mut().unwrap()[0].consumes_counters = None;
    assert!(slice_differs(&first.slices[0], &consumed[0]));
}

// Device taints from health

#[test]
fn a_tainted_device_carries_its_taint_and_the_pool_splits_at_64() {
    use k8s_openapi::api::resource::v1::DeviceTaint;
    let devices: Vec<Device> = (0..100)
        .map(|i| devices::pf(&format!("mock{i}")).numa(Some(0)).build())
        .collect();
    let plain = desired_slices(&input("node1", &devices), &[]).unwrap();
    assert_eq!(plain.slices.len(), 1, "100 untainted devices fit one slice");

    let taint = super::taints::health_taint(DRIVER, "Unhealthy", None).unwrap();
    let taints: BTreeMap<String, Vec<DeviceTaint>> =
        BTreeMap::from([("mock7".to_string(), vec![taint.clone()])]);
    let tainted = NodeSlicesInput {
        taints: &taints,
        ..input("node1", &devices)
    };
    let out = desired_slices(&tainted, &plain.slices).unwrap();
    let sizes: Vec<usize> = out
        .slices
        .iter()
        .map(|s| s.spec.devices.as_ref().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![64, 36]);
    let carried: Vec<&str> = out
        .slices
        .iter()
        .flat_map(|s| s.spec.devices.iter().flatten())
        .filter(|d| d.taints.as_ref().is_some_and(|t| t == &vec![taint.clone()]))
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(carried, vec!["mock7"]);
    assert!(
        out.slices[0].spec.pool.generation > plain.slices[0].spec.pool.generation,
        "a new taint is a content change"
    );

    // Back to healthy: the taint goes, the pool is one slice again, with a new generation.
    let healed = desired_slices(&input("node1", &devices), &out.slices).unwrap();
    assert_eq!(healed.slices.len(), 1);
    assert!(
        healed.slices[0]
            .spec
            .devices
            .iter()
            .flatten()
            .all(|d| d.taints.is_none())
    );
    assert!(healed.slices[0].spec.pool.generation > out.slices[0].spec.pool.generation);
    // Unchanged taints are no difference.
    let again = desired_slices(&tainted, &out.slices).unwrap();
    assert!(
        again
            .slices
            .iter()
            .zip(&out.slices)
            .all(|(a, b)| !slice_differs(a, b))
    );
}

// ---------------------------------------------------------------------------------------------
// Shared PFs (consumable capacity)

#[test]
fn a_shared_node_publishes_its_pfs_in_shares_that_still_consume_the_whole_card() {
    let devices = canonical_node();
    let input = NodeSlicesInput {
        partitionable: true,
        shared_pfs: true,
        ..input("node1", &devices)
    };
    let out = desired_slices(&input, &[]).unwrap();
    assert_valid(&out);
    let pf = find(&out, "mock0");
    assert_eq!(pf.allow_multiple_allocations, Some(true));
    let policy = pf.capacity.as_ref().unwrap()["mock-accel.example.com/memory"]
        .request_policy
        .clone()
        .unwrap();
    assert_eq!(policy.default.unwrap().0, "1Gi");
    // The PF and a VF of its card still cannot be allocated together (the scheduler charges
    // the shared PF's counters once, with its first share).
    assert!(!fits(&out, &["mock0", "mock1"]));
    assert!(fits(&out, &["mock1", "mock2"]));
    let vf = find(&out, "mock1");
    assert_eq!(vf.allow_multiple_allocations, None);
    assert!(
        vf.capacity.as_ref().unwrap()["mock-accel.example.com/memory"]
            .request_policy
            .is_none()
    );

    // Turning sharing off changes the pool's content: a new generation.
    let exclusive = partitioned("node1", &canonical_node(), &out.slices);
    assert!(exclusive.slices[0].spec.pool.generation > out.slices[0].spec.pool.generation);
    assert_eq!(find(&exclusive, "mock0").allow_multiple_allocations, None);
}
