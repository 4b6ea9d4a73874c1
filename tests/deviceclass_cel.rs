//! The shipped DeviceClasses (`config/deviceclasses.yaml`) evaluated with the Kubernetes CEL
//! libraries against the devices the controller publishes, so that a class that selects the
//! wrong devices, or errors on a device, fails here rather than in a scheduler.
//!
//! The `device` variable is built the way dynamic-resource-allocation's `cel` package builds it
//! for a ResourceSlice device (`DeviceMatches`):
//! - `device.driver`: the slice's driver;
//! - `device.attributes[domain][id]`: each attribute name is split at its first `/` into domain
//!   and id (a name without `/` belongs to the driver's domain); ints, bools and strings are
//!   plain CEL values, a `version` is a Semver object;
//! - `device.capacity[domain][id]`: each capacity value is a Quantity object;
//! - a domain the device does not have reads as an empty map (Go wraps both maps in a map with
//!   a default); an unknown id inside a domain is a "no such key" error, as in Go;
//! - `device.allowMultipleAllocations`: false (we never set it).
//!
//! Semver and Quantity objects come from kube-cel's own `semver()` and `quantity()` functions:
//! its object types are private, so each value is produced by evaluating `quantity(s)` or
//! `semver(s)` with `s` bound to the published string. That yields exactly the objects the
//! expressions' `compareTo(quantity("2Gi"))` operates on, parsed by the same code. `semver()`
//! without its second argument parses strictly, like the Go `semver.Parse` the API uses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::resource::v1::{
    Device as ApiDevice, DeviceAttribute, DeviceCapacity, DeviceClass,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_cel::KubeCelExt;
use kube_cel::cel::{Context, Program, Value};
use mock_accel_dra::inventory::{Device, DeviceType};
use mock_accel_dra::slices::{NodeSlicesInput, desired_slices};
use mock_accel_dra::test_support::devices;

const DRIVER: &str = "mock-accel.example.com";
const GI: u64 = 1 << 30;

/// A published device as the CEL environment sees it.
struct CelDevice {
    name: String,
    driver: String,
    attributes: BTreeMap<String, DeviceAttribute>,
    capacity: BTreeMap<String, DeviceCapacity>,
}

impl CelDevice {
    fn from_api(driver: &str, d: &ApiDevice) -> Self {
        CelDevice {
            name: d.name.clone(),
            driver: driver.to_string(),
            attributes: d.attributes.clone().unwrap_or_default(),
            capacity: d.capacity.clone().unwrap_or_default(),
        }
    }

    /// The `device` variable. `domains` are the domains an expression indexes; those the device
    /// lacks become empty maps, which is what Go's defaulting map returns for them.
    fn to_value(&self, domains: &BTreeSet<String>) -> Value {
        let split = |name: &str| match name.split_once('/') {
            Some((domain, id)) => (domain.to_string(), id.to_string()),
            None => (self.driver.clone(), name.to_string()),
        };
        let mut attributes: HashMap<String, HashMap<String, Value>> = HashMap::new();
        for (name, attr) in &self.attributes {
            let (domain, id) = split(name);
            attributes
                .entry(domain)
                .or_default()
                .insert(id, attribute_value(name, attr));
        }
        let mut capacity: HashMap<String, HashMap<String, Value>> = HashMap::new();
        for (name, cap) in &self.capacity {
            let (domain, id) = split(name);
            capacity
                .entry(domain)
                .or_default()
                .insert(id, construct("quantity", &cap.value.0));
        }
        for domain in domains {
            attributes.entry(domain.clone()).or_default();
            capacity.entry(domain.clone()).or_default();
        }
        let device: HashMap<String, Value> = HashMap::from([
            ("driver".to_string(), string(&self.driver)),
            ("attributes".to_string(), nested(attributes)),
            ("capacity".to_string(), nested(capacity)),
            ("allowMultipleAllocations".to_string(), Value::Bool(false)),
        ]);
        device.into()
    }
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

fn nested(m: HashMap<String, HashMap<String, Value>>) -> Value {
    m.into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect::<HashMap<String, Value>>()
        .into()
}

fn attribute_value(name: &str, attr: &DeviceAttribute) -> Value {
    match attr {
        DeviceAttribute { int: Some(i), .. } => Value::Int(*i),
        DeviceAttribute { bool: Some(b), .. } => Value::Bool(*b),
        DeviceAttribute {
            string: Some(s), ..
        } => string(s),
        DeviceAttribute {
            version: Some(v), ..
        } => construct("semver", v),
        _ => panic!("attribute {name} has no value"),
    }
}

/// A Quantity or Semver object, made by kube-cel's own constructor function.
fn construct(function: &str, s: &str) -> Value {
    let mut ctx = Context::default().with_all();
    ctx.add_variable_from_value("s", string(s));
    Program::compile(&format!("{function}(s)"))
        .unwrap()
        .execute(&ctx)
        .unwrap_or_else(|e| panic!("{function}({s:?}): {e}"))
}

/// One DeviceClass selector, compiled.
struct Selector {
    class: String,
    expression: String,
    program: Program,
    domains: BTreeSet<String>,
}

impl Selector {
    fn new(class: &str, expression: &str) -> Self {
        let program = Program::compile(expression)
            .unwrap_or_else(|e| panic!("class {class}: {expression}: {e}"));
        Selector {
            class: class.to_string(),
            expression: expression.to_string(),
            program,
            domains: indexed_domains(expression),
        }
    }

    /// The selector's verdict, or the evaluation error the scheduler would report.
    fn matches(&self, device: &CelDevice) -> Result<bool, String> {
        let mut ctx = Context::default().with_all();
        ctx.add_variable_from_value("device", device.to_value(&self.domains));
        match self.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("not a bool: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Domains an expression looks up as `attributes["<domain>"]` or `capacity["<domain>"]`.
fn indexed_domains(expression: &str) -> BTreeSet<String> {
    let mut domains = BTreeSet::new();
    for marker in ["attributes[\"", "capacity[\""] {
        for (at, _) in expression.match_indices(marker) {
            let rest = &expression[at + marker.len()..];
            if let Some(end) = rest.find('"') {
                domains.insert(rest[..end].to_string());
            }
        }
    }
    domains
}

fn classes() -> BTreeMap<String, Selector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/deviceclasses.yaml");
    let yaml = std::fs::read_to_string(path).unwrap();
    let classes: Vec<DeviceClass> = serde_saphyr::from_multiple(&yaml).unwrap();
    classes
        .into_iter()
        .map(|class| {
            let name = class.metadata.name.clone().unwrap();
            let selectors = class.spec.selectors.unwrap_or_default();
            assert_eq!(selectors.len(), 1, "class {name}: one selector expected");
            let expression = selectors[0].cel.as_ref().unwrap().expression.clone();
            (name.clone(), Selector::new(&name, &expression))
        })
        .collect()
}

fn mk_device(name: &str, numa: Option<u32>, memory: u64) -> Device {
    devices::pf(name)
        .uuid("4d4f434b-2d30-3030-302d-303030310000")
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

/// The canonical static-function node: two PFs of 16 GiB, each with two 2 GiB VFs, one PF per
/// NUMA node.
fn canonical_node() -> Vec<Device> {
    vec![
        mk_device("mock0", Some(0), 16 * GI),
        mk_vf("mock1", "mock0", Some(0), 2 * GI),
        mk_vf("mock2", "mock0", Some(0), 2 * GI),
        mk_device("mock3", Some(1), 16 * GI),
        mk_vf("mock4", "mock3", Some(1), 2 * GI),
        mk_vf("mock5", "mock3", Some(1), 2 * GI),
    ]
}

/// A PF with real SR-IOV VFs (`mock0_vf0` → device `mock0-vf0`), one of them with only 1 GiB;
/// the PF's memory register read as 0.
fn sriov_node() -> Vec<Device> {
    let vf = |i: u32, memory| {
        let mut d = mk_vf(&format!("mock0-vf{i}"), "mock0", Some(0), memory);
        d.sysfs_name = format!("mock0_vf{i}");
        d
    };
    vec![mk_device("mock0", Some(0), 0), vf(0, 2 * GI), vf(1, GI)]
}

/// A node whose firmware gives no NUMA information (`numa_node` = -1).
fn numa_none_node() -> Vec<Device> {
    vec![
        mk_device("mock0", None, 16 * GI),
        mk_vf("mock1", "mock0", None, 2 * GI),
    ]
}

/// The devices the controller publishes for `devices` on `node`.
fn published(node: &str, devices: &[Device]) -> Vec<CelDevice> {
    published_as(node, devices, false)
}

/// [`published`], on a node labelled for shared PFs when `shared_pfs`.
fn published_as(node: &str, devices: &[Device], shared_pfs: bool) -> Vec<CelDevice> {
    let input = NodeSlicesInput {
        driver: DRIVER,
        node_name: node,
        node_uid: Some("uid"),
        owner: None,
        devices,
        partitionable: false,
        taints: &mock_accel_dra::slices::taints::NO_TAINTS,
        shared_pfs,
        binding_conditions: false,
    };
    let out = desired_slices(&input, &[]).unwrap();
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    out.slices
        .iter()
        .flat_map(|s| {
            s.spec
                .devices
                .iter()
                .flatten()
                .map(move |d| CelDevice::from_api(&s.spec.driver, d))
        })
        .collect()
}

/// Names of the devices `class` selects; any evaluation error fails the test.
fn selected(selector: &Selector, devices: &[CelDevice]) -> Vec<String> {
    devices
        .iter()
        .filter(|d| {
            selector.matches(d).unwrap_or_else(|e| {
                panic!(
                    "class {} on device {}: {e}\n{}",
                    selector.class, d.name, selector.expression
                )
            })
        })
        .map(|d| d.name.clone())
        .collect()
}

/// A device of another driver, with attributes and capacity under its own domain that would
/// match our classes if the driver were ignored.
fn foreign_device() -> CelDevice {
    let other = "gpu.example.com";
    let attr = |s: &str| DeviceAttribute {
        string: Some(s.to_string()),
        ..Default::default()
    };
    CelDevice {
        name: "gpu0".to_string(),
        driver: other.to_string(),
        attributes: BTreeMap::from([
            (format!("{other}/deviceType"), attr("vf")),
            (
                "resource.kubernetes.io/pciBusID".to_string(),
                attr("0000:31:00.0"),
            ),
            (
                "resource.kubernetes.io/numaNode".to_string(),
                DeviceAttribute {
                    int: Some(0),
                    ..Default::default()
                },
            ),
        ]),
        capacity: BTreeMap::from([(
            format!("{other}/memory"),
            DeviceCapacity {
                value: Quantity("80Gi".to_string()),
                ..Default::default()
            },
        )]),
    }
}

const GUARD: &str = "device.driver == \"mock-accel.example.com\" && ";
/// The class named after the driver is the guard alone.
const DRIVER_CLASS: &str = "mock-accel.example.com";
/// The NUMA attribute every NUMA rule reads: the standard one, shared with other drivers.
const STANDARD_NUMA_HAS: &str = "has(device.attributes[\"resource.kubernetes.io\"].numaNode) && ";

#[test]
fn the_shipped_classes_are_the_expected_ones_and_guarded() {
    let classes = classes();
    let names: Vec<&str> = classes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "mock-accel-numa0",
            "mock-accel-pf",
            "mock-accel-pf-shared",
            "mock-accel-vf",
            "mock-accel-vf-2gb",
            DRIVER_CLASS,
        ]
    );
    assert_eq!(
        classes[DRIVER_CLASS].expression,
        GUARD.trim_end_matches(" && ")
    );
    for s in classes.values().filter(|s| s.class != DRIVER_CLASS) {
        assert!(
            s.expression.starts_with(GUARD),
            "class {} does not start with the driver guard: {}",
            s.class,
            s.expression
        );
    }
}

#[test]
fn classes_select_the_intended_devices_of_the_canonical_node() {
    let classes = classes();
    let devices = published("node1", &canonical_node());
    let sel = |class: &str| selected(&classes[class], &devices);
    assert_eq!(sel("mock-accel-pf"), ["mock0", "mock3"]);
    assert_eq!(sel("mock-accel-pf-shared"), Vec::<String>::new());
    assert_eq!(sel("mock-accel-vf"), ["mock1", "mock2", "mock4", "mock5"]);
    assert_eq!(
        sel("mock-accel-vf-2gb"),
        ["mock1", "mock2", "mock4", "mock5"]
    );
    assert_eq!(sel("mock-accel-numa0"), ["mock0", "mock1", "mock2"]);
    assert_eq!(
        sel(DRIVER_CLASS),
        ["mock0", "mock1", "mock2", "mock3", "mock4", "mock5"]
    );
}

#[test]
fn on_a_shared_node_the_pfs_move_from_the_pf_class_to_the_shared_class() {
    let classes = classes();
    let devices = published_as("node1", &canonical_node(), true);
    let sel = |class: &str| selected(&classes[class], &devices);
    assert_eq!(sel("mock-accel-pf"), Vec::<String>::new());
    assert_eq!(sel("mock-accel-pf-shared"), ["mock0", "mock3"]);
    assert_eq!(sel("mock-accel-vf"), ["mock1", "mock2", "mock4", "mock5"]);
    // A PF whose memory reads 0 cannot be shared: it stays a whole PF.
    let devices = published_as("node2", &sriov_node(), true);
    assert_eq!(selected(&classes["mock-accel-pf"], &devices), ["mock0"]);
    assert_eq!(
        selected(&classes["mock-accel-pf-shared"], &devices),
        Vec::<String>::new()
    );
}

#[test]
fn classes_select_the_intended_devices_of_an_sriov_node() {
    let classes = classes();
    let devices = published("node2", &sriov_node());
    let sel = |class: &str| selected(&classes[class], &devices);
    // The PF with memory 0 is still a PF.
    assert_eq!(sel("mock-accel-pf"), ["mock0"]);
    assert_eq!(sel("mock-accel-vf"), ["mock0-vf0", "mock0-vf1"]);
    // mock0-vf1 has 1 GiB: a VF, but too small.
    assert_eq!(sel("mock-accel-vf-2gb"), ["mock0-vf0"]);
    assert_eq!(sel("mock-accel-numa0"), ["mock0", "mock0-vf0", "mock0-vf1"]);
}

#[test]
fn numa0_selects_nothing_on_a_node_without_numa_information() {
    let classes = classes();
    let devices = published("node3", &numa_none_node());
    assert_eq!(
        selected(&classes["mock-accel-numa0"], &devices),
        Vec::<String>::new()
    );
    assert_eq!(selected(&classes["mock-accel-pf"], &devices), ["mock0"]);
    assert_eq!(selected(&classes["mock-accel-vf-2gb"], &devices), ["mock1"]);
    // The driver's class still selects every function; only NUMA rules skip these devices.
    assert_eq!(
        selected(&classes[DRIVER_CLASS], &devices).len(),
        devices.len()
    );
}

#[test]
fn the_numa0_guard_is_what_keeps_numa_none_devices_from_erroring() {
    let classes = classes();
    let devices = published("node3", &numa_none_node());
    let unguarded = classes["mock-accel-numa0"]
        .expression
        .replace(STANDARD_NUMA_HAS, "");
    assert_ne!(unguarded, classes["mock-accel-numa0"].expression);
    let unguarded = Selector::new("numa0-without-has", &unguarded);
    assert!(unguarded.matches(&devices[0]).is_err());
}

#[test]
fn a_device_of_another_driver_is_rejected_by_every_class_without_error() {
    let foreign = foreign_device();
    for s in classes().values() {
        assert_eq!(s.matches(&foreign), Ok(false), "class {}", s.class);
        if s.class == DRIVER_CLASS {
            continue; // the guard alone: nothing left to check without it
        }
        // Without the guard, the classes that read our attributes directly error on it, and
        // numa0, which reads the standard attribute, would select it: the guard is load-bearing.
        // pf-shared reads its attribute behind has(), so it stays false even without it.
        let unguarded = Selector::new(&s.class, s.expression.trim_start_matches(GUARD));
        let verdict = unguarded.matches(&foreign);
        if s.class == "mock-accel-numa0" {
            assert_eq!(verdict, Ok(true));
        } else if s.class == "mock-accel-pf-shared" {
            assert_eq!(verdict, Ok(false));
        } else {
            assert!(
                verdict.is_err(),
                "class {} without its guard: {verdict:?}",
                s.class
            );
        }
    }
}

#[test]
fn attribute_values_reach_cel_with_their_dra_types() {
    // Checks the environment itself, so the class tests above rest on faithful values.
    let devices = published("node1", &canonical_node());
    let mock1 = devices.iter().find(|d| d.name == "mock1").unwrap();
    let check = |expression: &str| {
        Selector::new("probe", expression)
            .matches(mock1)
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    };
    assert!(check(
        r#"device.attributes["mock-accel.example.com"].fwVersion.compareTo(semver("1.0.0")) == 0"#
    ));
    assert!(check(
        r#"device.attributes["mock-accel.example.com"].memory == 2147483648"#
    ));
    assert!(check(
        r#"device.capacity["mock-accel.example.com"].memory.isGreaterThan(quantity("2047Mi"))"#
    ));
    assert!(check(
        r#"device.attributes["mock-accel.example.com"].physfn == "mock0""#
    ));
    assert!(check(
        r#"device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:10""#
    ));
    assert!(check(
        r#"(device.attributes["mock-accel.example.com"].capabilities / 1) % 2 == 1"#
    ));
    assert!(!check(r#"has(device.attributes["example.org"].x)"#));
}
