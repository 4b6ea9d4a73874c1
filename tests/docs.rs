//! Mechanical checks of the documentation and the manifests, so that what a reader copies works:
//!
//! - every YAML file under `config/`, `crds/`, `kustomize/` and `docs/`, and every `yaml` code
//!   block in `README.md` and `docs/*.md`, parses as a stream of Kubernetes objects;
//! - every CEL expression (DeviceClass and claim selectors in those YAMLs, `cel` code blocks in
//!   the markdown) compiles, and every device selector evaluates to a bool, without error, for
//!   every device the driver publishes on the canonical node, a real SR-IOV VF and a device
//!   without NUMA information;
//! - every example in `docs/examples/` follows the conventions the end-to-end suite relies on
//!   (leading comment, `# expect:` line consistent with the YAML, no hard-coded namespace, v1
//!   claim shape) and can be satisfied by the canonical node's devices;
//! - the flag tables of `docs/api-reference.md` list exactly the flags, environment variables
//!   and defaults that `mock-accel-dra <subcommand> --help` prints;
//! - what the prose points at exists: relative links and their anchors, repository files named
//!   in code, the flags of every `mock-accel-dra ...` command shown, the make targets used (and
//!   `make help` lists every target), the original example file names, the one image name
//!   (kustomization = `make image-name` = README), a LICENSE matching the README.
//!
//! Whether the API server accepts each object is checked by the end-to-end suite (server-side
//! dry run on the local cluster), not here.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use kube_cel::{KubeCelExt, cel};
use serde_json::Value as Json;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DRIVER: &str = "mock-accel.example.com";
const STANDARD: &str = "resource.kubernetes.io";

// ---------------------------------------------------------------------------------------------
// Collecting the material
// ---------------------------------------------------------------------------------------------

fn rel(path: &Path) -> String {
    path.strip_prefix(ROOT)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn files_with_extension(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_with_extension(&path, extensions, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
        {
            out.push(path);
        }
    }
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["config", "crds", "kustomize", "docs"] {
        files_with_extension(&Path::new(ROOT).join(dir), &["yaml", "yml"], &mut files);
    }
    files.sort();
    files
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![Path::new(ROOT).join("README.md")];
    files_with_extension(&Path::new(ROOT).join("docs"), &["md"], &mut files);
    files.sort();
    files
}

fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_with_extension(
        &Path::new(ROOT).join("docs/examples"),
        &["yaml"],
        &mut files,
    );
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", rel(path)))
}

/// A fenced code block of a markdown file: its info string (`yaml`, `cel`, ...), its body and
/// the line it starts on.
struct CodeBlock {
    lang: String,
    body: String,
    line: usize,
}

fn code_blocks(markdown: &str) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<CodeBlock> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(CodeBlock {
                    lang: info.trim().to_string(),
                    body: String::new(),
                    line: i + 1,
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unterminated code block");
    blocks
}

/// Every YAML source to check: files, then `yaml` blocks of the markdown, with a label.
fn yaml_sources() -> Vec<(String, String)> {
    let mut sources: Vec<(String, String)> = yaml_files()
        .into_iter()
        .map(|p| (rel(&p), read(&p)))
        .collect();
    for md in markdown_files() {
        for block in code_blocks(&read(&md)) {
            if block.lang == "yaml" {
                sources.push((format!("{}:{}", rel(&md), block.line), block.body));
            }
        }
    }
    sources
}

/// Parses a multi-document YAML stream; empty documents are dropped.
fn parse_stream(text: &str) -> Result<Vec<Json>, String> {
    let docs: Vec<Json> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn objects(label: &str, text: &str) -> Vec<Json> {
    parse_stream(text).unwrap_or_else(|e| panic!("{label}: {e}"))
}

fn kind(obj: &Json) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

fn name(obj: &Json) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn items(v: &Json) -> &[Json] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// `spec.devices` of a ResourceClaim or the claim spec inside a ResourceClaimTemplate.
fn claim_devices(obj: &Json) -> Option<&Json> {
    match kind(obj) {
        "ResourceClaim" => Some(&obj["spec"]["devices"]),
        "ResourceClaimTemplate" => Some(&obj["spec"]["spec"]["devices"]),
        _ => None,
    }
}

/// One request of a claim, flattened: `exactly` or one `firstAvailable` alternative.
struct Request {
    name: String,
    class: String,
    count: u64,
    selectors: Vec<String>,
}

fn cel_selectors(selectors: &Json) -> Vec<String> {
    items(selectors)
        .iter()
        .filter_map(|s| s["cel"]["expression"].as_str().map(str::to_string))
        .collect()
}

fn requests(devices: &Json) -> Vec<Request> {
    let mut out = Vec::new();
    for r in items(&devices["requests"]) {
        let name = r["name"].as_str().unwrap_or_default().to_string();
        let alternatives: Vec<(String, &Json)> = if r["exactly"].is_object() {
            vec![(name.clone(), &r["exactly"])]
        } else {
            items(&r["firstAvailable"])
                .iter()
                .map(|s| {
                    (
                        format!("{name}/{}", s["name"].as_str().unwrap_or_default()),
                        s,
                    )
                })
                .collect()
        };
        for (name, spec) in alternatives {
            out.push(Request {
                name,
                class: spec["deviceClassName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                count: spec["count"].as_u64().unwrap_or(1),
                selectors: cel_selectors(&spec["selectors"]),
            });
        }
    }
    out
}

/// A device selector found somewhere, with where it was found.
struct Selector {
    source: String,
    expression: String,
}

fn device_selectors() -> Vec<Selector> {
    let mut out = Vec::new();
    for (label, text) in yaml_sources() {
        for obj in objects(&label, &text) {
            let found: Vec<(String, String)> = if kind(&obj) == "DeviceClass" {
                cel_selectors(&obj["spec"]["selectors"])
                    .into_iter()
                    .map(|e| (format!("DeviceClass {}", name(&obj)), e))
                    .collect()
            } else if let Some(devices) = claim_devices(&obj) {
                requests(devices)
                    .into_iter()
                    .flat_map(|r| {
                        let at = format!("{} {} request {}", kind(&obj), name(&obj), r.name);
                        r.selectors.into_iter().map(move |e| (at.clone(), e))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            out.extend(found.into_iter().map(|(at, expression)| Selector {
                source: format!("{label}: {at}"),
                expression,
            }));
        }
    }
    for md in markdown_files() {
        for block in code_blocks(&read(&md)) {
            if block.lang == "cel" {
                out.push(Selector {
                    source: format!("{}:{}", rel(&md), block.line),
                    expression: block.body.trim().to_string(),
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The devices selectors are evaluated against, in the shape the scheduler gives CEL
// ---------------------------------------------------------------------------------------------

/// What the driver publishes for one device (design.md, "Names and shapes").
struct Published {
    name: &'static str,
    sysfs_name: &'static str,
    device_type: &'static str,
    pci_address: &'static str,
    pcie_root: &'static str,
    numa_node: Option<i64>,
    memory: &'static str,
    memory_bytes: i64,
    physfn: Option<&'static str>,
    /// A PF of a node labelled `mock-accel.example.com/pf-sharing=shared` (consumable capacity).
    shared: bool,
}

/// A device row: DRA name, sysfs name, type, PCI address, pcieRoot, NUMA node, physfn.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<i64>,
    Option<&'static str>,
);

/// Node 1 of the canonical two-node topology (static-function layout): two NUMA nodes, each
/// with one PF and two VFs.
#[rustfmt::skip]
const CANONICAL_NODE: [Row; 6] = [
    ("mock0", "mock0", "pf", "0000:11:00.0", "pci0000:10", Some(0), None),
    ("mock1", "mock1", "vf", "0000:11:00.1", "pci0000:10", Some(0), Some("mock0")),
    ("mock2", "mock2", "vf", "0000:11:00.2", "pci0000:10", Some(0), Some("mock0")),
    ("mock3", "mock3", "pf", "0000:21:00.0", "pci0000:20", Some(1), None),
    ("mock4", "mock4", "vf", "0000:21:00.1", "pci0000:20", Some(1), Some("mock3")),
    ("mock5", "mock5", "vf", "0000:21:00.2", "pci0000:20", Some(1), Some("mock3")),
];

/// A VF of the real SR-IOV layout, and a PF on a machine without NUMA information (last).
#[rustfmt::skip]
const OTHER_LAYOUTS: [Row; 2] = [
    ("mock0-vf0", "mock0_vf0", "vf", "0000:11:00.1", "pci0000:10", Some(0), Some("mock0")),
    ("mock9", "mock9", "pf", "0000:31:00.0", "pci0000:30", None, None),
];

fn published(row: &Row) -> Published {
    let &(name, sysfs_name, device_type, pci_address, pcie_root, numa_node, physfn) = row;
    let pf = device_type == "pf";
    Published {
        name,
        sysfs_name,
        device_type,
        pci_address,
        pcie_root,
        numa_node,
        memory: if pf { "16Gi" } else { "2Gi" },
        memory_bytes: if pf { 17179869184 } else { 2147483648 },
        physfn,
        shared: false,
    }
}

/// The canonical node labelled for shared PFs: its PFs are published in shares.
fn shared_canonical_node() -> Vec<Published> {
    canonical_node()
        .into_iter()
        .map(|d| Published {
            shared: d.device_type == "pf",
            ..d
        })
        .collect()
}

/// What an example must be satisfiable with.
fn canonical_node() -> Vec<Published> {
    CANONICAL_NODE.iter().map(published).collect()
}

/// Every device selectors are evaluated against.
fn published_devices() -> Vec<Published> {
    CANONICAL_NODE
        .iter()
        .chain(&OTHER_LAYOUTS)
        .map(published)
        .collect()
}

/// Evaluates a constant expression with the Kubernetes functions, e.g. `quantity("2Gi")`,
/// to get values of types whose constructors the CEL crates keep private.
fn constant(expression: &str) -> cel::Value {
    let program = cel::Program::compile(expression).unwrap();
    program
        .execute(&cel::Context::default().with_all())
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
}

fn map(entries: Vec<(&str, cel::Value)>) -> cel::Value {
    let map: HashMap<String, cel::Value> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    map.into()
}

fn string(s: &str) -> cel::Value {
    cel::Value::String(s.to_string().into())
}

/// The `device` variable as the DRA CEL environment builds it: attributes and capacity grouped
/// by domain, versions as semver, capacities as quantities.
fn cel_device(d: &Published) -> cel::Value {
    let mut ours = vec![
        ("uuid", string("4e4f4445-312d-4e55-4d41-302d50460000")),
        ("memory", cel::Value::Int(d.memory_bytes)),
        ("deviceType", string(d.device_type)),
        ("pciAddress", string(d.pci_address)),
        ("capabilities", cel::Value::Int(1)),
        ("sysfsName", string(d.sysfs_name)),
        ("fwVersion", constant(r#"semver("1.0.0")"#)),
    ];
    let mut standard = vec![
        ("pciBusID", string(d.pci_address)),
        ("pcieRoot", string(d.pcie_root)),
    ];
    if let Some(n) = d.numa_node {
        ours.push(("numaNode", cel::Value::Int(n)));
        standard.push(("numaNode", cel::Value::Int(n)));
    }
    if let Some(p) = d.physfn {
        ours.push(("physfn", string(p)));
    }
    if d.shared {
        ours.push(("shared", cel::Value::Bool(true)));
    }
    map(vec![
        ("driver", string(DRIVER)),
        (
            "attributes",
            map(vec![(DRIVER, map(ours)), (STANDARD, map(standard))]),
        ),
        (
            "capacity",
            map(vec![(
                DRIVER,
                map(vec![(
                    "memory",
                    constant(&format!("quantity({:?})", d.memory)),
                )]),
            )]),
        ),
        ("allowMultipleAllocations", cel::Value::Bool(d.shared)),
    ])
}

fn evaluate(expression: &str, device: &Published) -> Result<bool, String> {
    let program =
        cel::Program::compile(expression).map_err(|e| format!("does not compile: {e}"))?;
    let mut ctx = cel::Context::default().with_all();
    ctx.add_variable_from_value("device", cel_device(device));
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("returns {other:?} for {}, not a bool", device.name)),
        Err(e) => Err(format!("fails on {}: {e}", device.name)),
    }
}

/// DeviceClass name → its selectors, from the manifests in `config/`.
fn shipped_device_classes() -> BTreeMap<String, Vec<String>> {
    let mut files = Vec::new();
    files_with_extension(&Path::new(ROOT).join("config"), &["yaml"], &mut files);
    let mut classes = BTreeMap::new();
    for path in files {
        for obj in objects(&rel(&path), &read(&path)) {
            if kind(&obj) == "DeviceClass" {
                classes.insert(
                    name(&obj).to_string(),
                    cel_selectors(&obj["spec"]["selectors"]),
                );
            }
        }
    }
    classes
}

/// Does `device` pass every selector of the class and of the request?
fn selects(class: &[String], request: &[String], device: &Published) -> Result<bool, String> {
    for expression in class.iter().chain(request) {
        if !evaluate(expression, device)? {
            return Ok(false);
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// The `# expect:` convention of the examples (documented in docs/testing-guide.md)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, PartialEq)]
struct Expectation {
    pods_running: Option<u64>,
    devices: BTreeMap<String, u64>,
    same: Vec<String>,
    distinct: Vec<String>,
    /// `node-label=<key>=<value>`: the example needs a node with this label.
    node_label: Option<String>,
    /// `min-kubernetes=<minor>`: older control planes skip the example.
    min_kubernetes: Option<String>,
    /// `value=<attribute>:<value>`: every allocated device has this attribute value.
    values: Vec<(String, String)>,
}

/// The node labels an example may ask for: shared PFs, and devices that wait for attachment.
const SHARED_PF_LABEL: &str = "mock-accel.example.com/pf-sharing=shared";
const ATTACHMENT_LABEL: &str = "mock-accel.example.com/attachment=fabric";

fn parse_expectation(line: &str) -> Result<Expectation, String> {
    let body = line
        .strip_prefix("# expect: ")
        .ok_or_else(|| format!("{line:?} does not start with \"# expect: \""))?;
    let mut e = Expectation::default();
    for pair in body.split(", ") {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        match key {
            "pods-running" => {
                e.pods_running = Some(value.parse().map_err(|_| format!("pods-running={value}"))?)
            }
            "devices" => {
                for part in value.split(',') {
                    let (t, n) = part
                        .split_once(':')
                        .filter(|(t, _)| ["pf", "vf", "any"].contains(t))
                        .ok_or_else(|| {
                            format!("devices entry {part:?} is not pf:N, vf:N or any:N")
                        })?;
                    let n = n.parse().map_err(|_| format!("devices entry {part:?}"))?;
                    if e.devices.insert(t.to_string(), n).is_some() {
                        return Err(format!("devices lists {t} twice"));
                    }
                }
                if e.devices.contains_key("any") && e.devices.len() > 1 {
                    return Err(format!("devices={value}: any:N stands alone"));
                }
            }
            "same" | "distinct" => {
                if !value.contains('/') {
                    return Err(format!(
                        "{key}={value}: not a fully qualified attribute name"
                    ));
                }
                let list = if key == "same" {
                    &mut e.same
                } else {
                    &mut e.distinct
                };
                list.push(value.to_string());
            }
            // Fixture examples: a device name the claims must not get, and the total of
            // `status.faults[].hits` (checked by scenario 11 only).
            "avoids" if !value.is_empty() && !value.contains('/') => {}
            "value" => {
                let (attribute, wanted) = value
                    .split_once(':')
                    .filter(|(a, v)| a.contains('/') && !v.is_empty())
                    .ok_or_else(|| {
                        format!("value={value}: not <fully qualified attribute>:<value>")
                    })?;
                e.values.push((attribute.to_string(), wanted.to_string()));
            }
            // The node agent's condition in the claim's device status (checked by scenario 11).
            "device-status" if value == "Ready" => {}
            "device-status" => return Err(format!("device-status={value}: only Ready")),
            "fault-hits" => {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("fault-hits={value}: not a number"))?;
            }
            "node-label" if value == SHARED_PF_LABEL || value == ATTACHMENT_LABEL => {
                e.node_label = Some(value.to_string())
            }
            "node-label" => {
                return Err(format!(
                    "node-label={value}: only {SHARED_PF_LABEL} or {ATTACHMENT_LABEL}"
                ));
            }
            "min-kubernetes"
                if value
                    .split_once('.')
                    .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok()) =>
            {
                e.min_kubernetes = Some(value.to_string())
            }
            "min-kubernetes" => return Err(format!("min-kubernetes={value}: not <major>.<minor>")),
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    if e.pods_running.is_none() || e.devices.is_empty() {
        return Err("pods-running and devices are required".into());
    }
    Ok(e)
}

/// A fixture example (`# expect: fixture=<node>, devices=pf:N,vf:M`) programs a node: it holds
/// exactly that node's MockAccelNode, whose spec names the node.
fn check_fixture_example(line: &str, docs: &[Json]) -> Result<(), String> {
    let body = line.trim_start_matches("# expect: ");
    let mut node = None;
    let mut devices = false;
    for pair in body.split(", ") {
        match pair.split_once('=') {
            Some(("fixture", n)) if !n.is_empty() => node = Some(n),
            Some(("devices", d)) => {
                devices = d.split(',').all(|p| {
                    p.split_once(':')
                        .is_some_and(|(t, n)| (t == "pf" || t == "vf") && n.parse::<u64>().is_ok())
                })
            }
            _ => return Err(format!("fixture expectation: bad pair {pair:?}")),
        }
    }
    let (Some(node), true) = (node, devices) else {
        return Err(format!(
            "fixture expectation needs fixture=<node> and devices=pf:N,vf:M: {line:?}"
        ));
    };
    match docs {
        [d] if kind(d) == "MockAccelNode" && name(d) == node && d["spec"]["nodeName"] == node => {
            Ok(())
        }
        _ => Err(format!(
            "a fixture example holds exactly the MockAccelNode {node} with spec.nodeName {node}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

fn fail_with(problems: &[String]) {
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn every_yaml_file_and_block_parses_into_kubernetes_objects() {
    let sources = yaml_sources();
    assert!(
        sources.iter().any(|(l, _)| l.starts_with("config/")) && sources.len() > 10,
        "found too few YAML sources: {:?}",
        sources.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let mut problems = Vec::new();
    for (label, text) in &sources {
        let docs = match parse_stream(text) {
            Ok(docs) => docs,
            Err(e) => {
                problems.push(format!("{label}: not valid YAML: {e}"));
                continue;
            }
        };
        if docs.is_empty() {
            problems.push(format!("{label}: no document"));
        }
        for (i, doc) in docs.iter().enumerate() {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            if api_version.is_empty() || kind(doc).is_empty() {
                problems.push(format!("{label}: document {i} has no apiVersion or kind"));
            } else if kind(doc) != "Kustomization" && name(doc).is_empty() {
                problems.push(format!(
                    "{label}: {} (document {i}) has no metadata.name",
                    kind(doc)
                ));
            }
        }
    }
    fail_with(&problems);
}

#[test]
fn the_test_devices_look_like_what_the_driver_publishes() {
    // Guards the fixture the other CEL checks rely on: a wrong fixture would make every
    // selector check meaningless.
    let pf = &published_devices()[0];
    let vf = &published_devices()[1];
    let numa_none = published_devices().pop().unwrap();
    let check = |e: &str, d: &Published| evaluate(e, d).unwrap_or_else(|err| panic!("{e}: {err}"));
    assert!(check(
        r#"device.attributes["mock-accel.example.com"].deviceType == "pf""#,
        pf
    ));
    assert!(check(
        r#"device.capacity["mock-accel.example.com"].memory.compareTo(quantity("2Gi")) >= 0"#,
        vf
    ));
    assert!(!check(
        r#"device.capacity["mock-accel.example.com"].memory.isGreaterThan(quantity("2Gi"))"#,
        vf
    ));
    assert!(check(
        r#"device.attributes["mock-accel.example.com"].physfn == "mock0""#,
        vf
    ));
    assert!(check(
        r#"device.attributes["mock-accel.example.com"].fwVersion.isGreaterThan(semver("0.9.0"))"#,
        vf
    ));
    assert!(!check(
        r#"has(device.attributes["resource.kubernetes.io"].numaNode)"#,
        &numa_none
    ));
    // Reading a missing attribute is an error, as in the scheduler: unguarded selectors fail.
    assert!(
        evaluate(
            r#"device.attributes["resource.kubernetes.io"].numaNode == 0"#,
            &numa_none
        )
        .is_err()
    );
}

#[test]
fn every_device_selector_compiles_and_evaluates_to_a_bool_on_every_published_device() {
    let selectors = device_selectors();
    for wanted in ["docs/examples/", "docs/integration-guide.md", "README.md"] {
        assert!(
            selectors.iter().any(|s| s.source.starts_with(wanted)),
            "no CEL selector found in {wanted}"
        );
    }
    let devices = published_devices();
    let mut problems = Vec::new();
    for s in &selectors {
        for d in &devices {
            if let Err(e) = evaluate(&s.expression, d) {
                problems.push(format!("{}: `{}` {e}", s.source, s.expression));
                break;
            }
        }
    }
    fail_with(&problems);
}

#[test]
fn admission_policy_expressions_compile() {
    let path = Path::new(ROOT).join("config/admission-policy.yaml");
    let mut count = 0;
    let mut problems = Vec::new();
    for obj in objects(&rel(&path), &read(&path)) {
        if kind(&obj) != "ValidatingAdmissionPolicy" {
            continue;
        }
        let spec = &obj["spec"];
        let expressions = items(&spec["matchConditions"])
            .iter()
            .chain(items(&spec["variables"]))
            .map(|c| &c["expression"])
            .chain(
                items(&spec["validations"])
                    .iter()
                    .flat_map(|v| [&v["expression"], &v["messageExpression"]]),
            );
        for e in expressions.filter_map(Json::as_str) {
            count += 1;
            if let Err(err) = cel::Program::compile(e) {
                problems.push(format!("`{e}`: {err}"));
            }
        }
    }
    assert!(
        count >= 3,
        "expected the node-agent policy's expressions, found {count}"
    );
    fail_with(&problems);
}

#[test]
fn examples_follow_the_conventions_and_fit_the_canonical_node() {
    let examples = example_files();
    assert!(
        examples.len() >= 8,
        "expected at least 8 examples, found {}",
        examples.len()
    );
    let classes = shipped_device_classes();
    let (plain_node, shared_node) = (canonical_node(), shared_canonical_node());
    let mut problems = Vec::new();
    for path in &examples {
        let label = rel(path);
        let text = read(path);
        let mut report = |m: String| problems.push(format!("{label}: {m}"));
        if !text.starts_with("# ") {
            report("must start with a comment saying what it shows and what to expect".into());
        }
        let expect_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("# expect:"))
            .collect();
        let expectation = match expect_lines.as_slice() {
            [line] if line.starts_with("# expect: fixture=") => {
                if let Err(e) = check_fixture_example(line, &objects(&label, &text)) {
                    report(e);
                }
                continue;
            }
            [line] => match parse_expectation(line) {
                Ok(e) => e,
                Err(e) => {
                    report(format!("bad expectation line: {e}"));
                    continue;
                }
            },
            other => {
                report(format!(
                    "needs exactly one `# expect:` line, has {}",
                    other.len()
                ));
                continue;
            }
        };
        let node = if expectation.node_label.as_deref() == Some(SHARED_PF_LABEL) {
            &shared_node
        } else {
            &plain_node
        };
        let docs = objects(&label, &text);
        let pods: Vec<&Json> = docs.iter().filter(|d| kind(d) == "Pod").collect();
        if expectation.pods_running != Some(pods.len() as u64) {
            report(format!(
                "pods-running={:?} but the file has {} pods",
                expectation.pods_running,
                pods.len()
            ));
        }
        for d in &docs {
            if d["metadata"].get("namespace").is_some() {
                report(format!("{} {} hard-codes a namespace", kind(d), name(d)));
            }
        }
        // Every claim a pod names is defined in the same file.
        for pod in &pods {
            for c in items(&pod["spec"]["resourceClaims"]) {
                let (want_kind, want) = match c["resourceClaimName"].as_str() {
                    Some(n) => ("ResourceClaim", n),
                    None => (
                        "ResourceClaimTemplate",
                        c["resourceClaimTemplateName"].as_str().unwrap_or(""),
                    ),
                };
                if !docs.iter().any(|d| kind(d) == want_kind && name(d) == want) {
                    report(format!(
                        "pod {} refers to {want_kind} {want:?}, not in the file",
                        name(pod)
                    ));
                }
            }
            for container in items(&pod["spec"]["containers"]) {
                if container["image"] != "registry.k8s.io/pause:3.10" {
                    report(format!(
                        "pod {}: use image registry.k8s.io/pause:3.10",
                        name(pod)
                    ));
                }
            }
        }
        // Each claim's requests: v1 shape, a shipped class, satisfiable on the canonical node,
        // and the device counts of the expectation.
        for claim in docs.iter().filter(|d| claim_devices(d).is_some()) {
            let devices = claim_devices(claim).unwrap_or(&Json::Null);
            for r in items(&devices["requests"]) {
                if r.get("deviceClassName").is_some()
                    || !(r["exactly"].is_object() || r["firstAvailable"].is_array())
                {
                    report(format!(
                        "request {} is not in the v1 shape (requests[].exactly)",
                        r["name"]
                    ));
                }
            }
            let mut counted: BTreeMap<String, u64> = BTreeMap::new();
            for r in requests(devices) {
                let Some(class) = classes.get(&r.class) else {
                    report(format!(
                        "request {} uses DeviceClass {:?}, not shipped in config/",
                        r.name, r.class
                    ));
                    continue;
                };
                let mut matching = Vec::new();
                for d in node {
                    match selects(class, &r.selectors, d) {
                        Ok(true) => matching.push(d),
                        Ok(false) => {}
                        Err(e) => report(format!("request {}: {e}", r.name)),
                    }
                }
                if (matching.len() as u64) < r.count {
                    report(format!(
                        "request {} wants {} devices, the canonical node has {} that match",
                        r.name,
                        r.count,
                        matching.len()
                    ));
                }
                for (attribute, wanted) in &expectation.values {
                    let expression = value_expression(attribute, wanted);
                    for d in &matching {
                        match evaluate(&expression, d) {
                            Ok(true) => {}
                            Ok(false) => report(format!(
                                "expect value={attribute}:{wanted} but request {} matches {}",
                                r.name, d.name
                            )),
                            Err(e) => report(format!("value={attribute}:{wanted}: {e}")),
                        }
                    }
                }
                if expectation.devices.contains_key("any") {
                    *counted.entry("any".into()).or_default() += r.count;
                    continue;
                }
                let types: BTreeSet<&str> = matching.iter().map(|d| d.device_type).collect();
                match types.into_iter().collect::<Vec<_>>().as_slice() {
                    [t] => *counted.entry(t.to_string()).or_default() += r.count,
                    other => report(format!(
                        "request {} matches device types {other:?}; make it one type",
                        r.name
                    )),
                }
            }
            if counted != expectation.devices {
                report(format!(
                    "expect devices={:?} but {} {} requests {counted:?}",
                    expectation.devices,
                    kind(claim),
                    name(claim)
                ));
            }
            let constrained: BTreeSet<&str> = items(&devices["constraints"])
                .iter()
                .filter_map(|c| c["matchAttribute"].as_str())
                .collect();
            for attribute in &expectation.same {
                if !constrained.contains(attribute.as_str()) {
                    report(format!(
                        "expect same={attribute} but no matchAttribute constraint names it"
                    ));
                }
            }
        }
    }
    fail_with(&problems);
}

/// CEL that holds for a device whose `attribute` (`domain/id`) equals `wanted` (a number, or
/// else a string).
fn value_expression(attribute: &str, wanted: &str) -> String {
    let (domain, id) = attribute.split_once('/').unwrap_or(("", attribute));
    let literal = if wanted.parse::<i64>().is_ok() {
        wanted.to_string()
    } else {
        format!("{wanted:?}")
    };
    format!(
        "has(device.attributes[{domain:?}].{id}) && device.attributes[{domain:?}].{id} == {literal}"
    )
}

#[test]
fn expectation_lines_parse_strictly() {
    let e = parse_expectation(
        "# expect: pods-running=2, devices=pf:1,vf:2, same=resource.kubernetes.io/numaNode",
    )
    .unwrap();
    assert_eq!(e.pods_running, Some(2));
    assert_eq!(
        e.devices,
        BTreeMap::from([("pf".into(), 1), ("vf".into(), 2)])
    );
    assert_eq!(e.same, vec!["resource.kubernetes.io/numaNode".to_string()]);
    let any = parse_expectation(
        "# expect: pods-running=1, devices=any:2, value=resource.kubernetes.io/numaNode:1, device-status=Ready",
    )
    .unwrap();
    assert_eq!(any.devices, BTreeMap::from([("any".into(), 2)]));
    assert_eq!(
        any.values,
        vec![(
            "resource.kubernetes.io/numaNode".to_string(),
            "1".to_string()
        )]
    );
    for bad in [
        "# expect: devices=pf:1",
        "# expect: pods-running=1, devices=gpu:1",
        "# expect: pods-running=1, devices=pf:1, same=numaNode",
        "# expect: pods-running=1,devices=pf:1",
        "# expect: pods-running=1, devices=pf:1, color=blue",
        "# expect: pods-running=1, devices=pf:1, node-label=color=blue",
        "# expect: pods-running=1, devices=pf:1, min-kubernetes=1.x",
        "# expect: pods-running=1, devices=any:2,vf:1",
        "# expect: pods-running=1, devices=any:2, value=numaNode:1",
        "# expect: pods-running=1, devices=vf:1, device-status=Broken",
    ] {
        assert!(parse_expectation(bad).is_err(), "{bad} was accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// Flags: docs/api-reference.md against --help
// ---------------------------------------------------------------------------------------------

/// A flag as documented or as printed by `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flag {
    env: Option<String>,
    default: Option<String>,
}

fn help(path: &[String]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mock-accel-dra"))
        .args(path)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mock-accel-dra {path:?} --help failed"
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The lines of a `--help` section (`Options:`, `Commands:`), up to the next blank line.
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

fn between<'a>(text: &'a str, start: &str, end: char) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// Long flag name → env and default, from clap's help text.
fn help_flags(help: &str) -> BTreeMap<String, Flag> {
    let mut entries: Vec<String> = Vec::new();
    for line in section(help, "Options:") {
        let indent = line.len() - line.trim_start().len();
        if indent < 8 && line.trim_start().starts_with('-') {
            entries.push(line.to_string());
        } else if let Some(last) = entries.last_mut() {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    entries
        .iter()
        .filter_map(|e| {
            let long = e.split_whitespace().find(|t| t.starts_with("--"))?;
            let flag = Flag {
                env: between(e, "[env: ", '=').map(str::to_string),
                default: between(e, "[default: ", ']').map(str::to_string),
            };
            Some((long.trim_end_matches(',').to_string(), flag))
        })
        .collect()
}

fn help_subcommands(help: &str) -> Vec<String> {
    section(help, "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every command path of the binary: `[]`, `["controller"]`, `["sim", "create"]`, ...
fn command_tree() -> BTreeMap<Vec<String>, BTreeMap<String, Flag>> {
    let mut tree = BTreeMap::new();
    let mut queue = vec![Vec::new()];
    while let Some(path) = queue.pop() {
        let text = help(&path);
        for sub in help_subcommands(&text) {
            let mut child = path.clone();
            child.push(sub);
            queue.push(child);
        }
        let mut flags = help_flags(&text);
        flags.remove("--help");
        flags.remove("--version");
        tree.insert(path, flags);
    }
    tree
}

fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

fn cell_value(cell: &str) -> Option<String> {
    code_spans(cell).first().map(|s| s.to_string())
}

/// Command path → documented flags, from the tables under headings that name a command
/// (`### \`mock-accel-dra node-agent\``).
fn documented_flags(markdown: &str) -> BTreeMap<Vec<String>, BTreeMap<String, Flag>> {
    let mut documented: BTreeMap<Vec<String>, BTreeMap<String, Flag>> = BTreeMap::new();
    let mut current: Option<Vec<String>> = None;
    let mut in_table = false;
    for line in markdown.lines() {
        if line.starts_with('#') {
            current = code_spans(line)
                .first()
                .and_then(|s| s.strip_prefix("mock-accel-dra"))
                .filter(|rest| rest.is_empty() || rest.starts_with(' '))
                .map(|rest| rest.split_whitespace().map(str::to_string).collect());
            in_table = false;
            continue;
        }
        let Some(path) = &current else { continue };
        if !line.starts_with('|') {
            if in_table {
                current = None; // only the first table under the heading
            }
            continue;
        }
        in_table = true;
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let Some(long) = code_spans(cells[0])
            .into_iter()
            .find(|s| s.starts_with("--"))
        else {
            continue; // header or separator row
        };
        let flag = Flag {
            env: cells.get(1).and_then(|c| cell_value(c)),
            default: cells.get(2).and_then(|c| cell_value(c)),
        };
        let previous = documented
            .entry(path.clone())
            .or_default()
            .insert(long.to_string(), flag);
        assert!(previous.is_none(), "{long} documented twice for {path:?}");
    }
    documented
}

#[test]
fn api_reference_lists_exactly_the_flags_of_help() {
    let reference = read(&Path::new(ROOT).join("docs/api-reference.md"));
    let documented = documented_flags(&reference);
    let tree = command_tree();
    let global = tree.get(&Vec::new()).cloned().unwrap_or_default();
    assert!(
        global.contains_key("--log-level"),
        "help parsing found no global flags"
    );
    let mut problems = Vec::new();
    for (path, flags) in &tree {
        let own: BTreeMap<String, Flag> = if path.is_empty() {
            flags.clone()
        } else {
            flags
                .iter()
                .filter(|(k, _)| !global.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let shown = format!("mock-accel-dra {}", path.join(" "));
        let shown = shown.trim();
        match documented.get(path) {
            None if own.is_empty() => {}
            None => problems.push(format!(
                "`{}` has flags {:?} but no table in docs/api-reference.md",
                shown,
                own.keys()
            )),
            Some(doc) => {
                for (flag, want) in &own {
                    match doc.get(flag) {
                        None => {
                            problems.push(format!("`{}`: {flag} is missing from the table", shown))
                        }
                        Some(got) if got != want => problems.push(format!(
                            "`{}`: {flag} documented as {got:?}, --help says {want:?}",
                            shown
                        )),
                        Some(_) => {}
                    }
                }
                for flag in doc.keys().filter(|f| !own.contains_key(*f)) {
                    problems.push(format!("`{}`: documented {flag} does not exist", shown));
                }
            }
        }
    }
    for path in documented.keys().filter(|p| !tree.contains_key(*p)) {
        problems.push(format!(
            "docs/api-reference.md documents `mock-accel-dra {}`, which --help does not list",
            path.join(" ")
        ));
    }
    fail_with(&problems);
}

// ---------------------------------------------------------------------------------------------
// What the prose points at: links, file names, flags, make targets, example names, the image
// ---------------------------------------------------------------------------------------------

/// Every markdown file a reader may open: the docs, plus the READMEs of `e2e/`.
fn all_markdown() -> Vec<PathBuf> {
    let mut files = markdown_files();
    for extra in ["e2e/README.md", "e2e/fakelet/README.md"] {
        let path = Path::new(ROOT).join(extra);
        if path.is_file() {
            files.push(path);
        }
    }
    files
}

/// A markdown file split into what the checks below look at: prose lines (outside fenced
/// blocks) and the fenced blocks.
struct Markdown {
    label: String,
    prose: Vec<(usize, String)>,
    blocks: Vec<CodeBlock>,
}

fn markdown(path: &Path) -> Markdown {
    let text = read(path);
    let mut prose = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            prose.push((i + 1, line.to_string()));
        }
    }
    Markdown {
        label: rel(path),
        prose,
        blocks: code_blocks(&text),
    }
}

/// The anchor GitHub gives a heading: lowercase, spaces to `-`, other punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(path: &Path) -> BTreeSet<String> {
    markdown(path)
        .prose
        .iter()
        .filter_map(|(_, l)| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

/// `(line, target)` of every inline link `[text](target)` in the prose.
fn links(md: &Markdown) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in &md.prose {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push((*n, rest[..end].to_string()));
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn relative_links_and_anchors_resolve() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in all_markdown() {
        let md = markdown(&path);
        for (n, target) in links(&md) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            if !resolved.exists() {
                problems.push(format!("{}:{n}: link to {target}: no such file", md.label));
                continue;
            }
            if !anchor.is_empty() && !anchors(&resolved).contains(anchor) {
                problems.push(format!(
                    "{}:{n}: link to {target}: {} has no heading with anchor #{anchor}",
                    md.label,
                    rel(&resolved)
                ));
            }
        }
    }
    assert!(checked > 30, "found only {checked} relative links");
    fail_with(&problems);
}

/// Inline code spans of the prose, and the words of `sh` blocks, with their line numbers.
fn code_words(md: &Markdown) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in &md.prose {
        out.extend(code_spans(line).into_iter().map(|s| (*n, s.to_string())));
    }
    for block in md.blocks.iter().filter(|b| b.lang == "sh") {
        for (i, line) in block.body.lines().enumerate() {
            out.push((block.line + 1 + i, line.to_string()));
        }
    }
    out
}

const REPO_DIRS: [&str; 11] = [
    "src/",
    "config/",
    "crds/",
    "docs/",
    "e2e/",
    "tests/",
    "kustomize/",
    "benches/",
    "bench/",
    "proto/",
    ".ci/",
];
const REPO_FILES: [&str; 7] = [
    "Makefile",
    "Dockerfile",
    "LICENSE",
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "README.md",
];

/// Repository paths (from the root) named in code spans and shell blocks; placeholders such as
/// `<node>` and globs are left out.
fn mentioned_paths(md: &Markdown) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, text) in code_words(md) {
        for word in text.split_whitespace() {
            let word = word.trim_matches(|c: char| "\"'`(),;".contains(c));
            let word = word.split(':').next().unwrap_or_default();
            let word = word.trim_matches(|c: char| "\"'`(),;".contains(c));
            if word.contains(['<', '>', '*', '{', '}', '$', '…'])
                || word.contains("...")
                || word.contains('=')
            {
                continue;
            }
            if REPO_DIRS.iter().any(|d| word.starts_with(d)) || REPO_FILES.contains(&word) {
                out.push((n, word.to_string()));
            }
        }
    }
    out
}

#[test]
fn files_the_docs_name_exist() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in all_markdown() {
        let md = markdown(&path);
        for (n, p) in mentioned_paths(&md) {
            checked += 1;
            if !Path::new(ROOT).join(&p).exists() {
                problems.push(format!("{}:{n}: `{p}` does not exist", md.label));
            }
        }
    }
    assert!(checked > 40, "found only {checked} file names in the docs");
    fail_with(&problems);
}

/// `(command path, flag)` for every `mock-accel-dra [subcommand...] --flag` the docs show.
fn documented_invocations(
    text: &str,
    tree: &BTreeMap<Vec<String>, BTreeMap<String, Flag>>,
) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("mock-accel-dra") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "mock-accel-dra".len()..];
        let after = rest.chars().next();
        // The binary, not the image (`mock-accel-dra:dev`), a label or a file name.
        if before.is_some_and(|c| !(c.is_whitespace() || c == '/' || c == '`' || c == '('))
            || after.is_some_and(|c| !c.is_whitespace())
        {
            continue;
        }
        let words: Vec<&str> = rest
            .split_whitespace()
            .take_while(|w| !["|", ";", "&&", "#", "\\"].contains(w) && !w.starts_with('`'))
            .collect();
        let mut path: Vec<String> = Vec::new();
        for w in &words {
            let mut next = path.clone();
            next.push(w.to_string());
            if tree.contains_key(&next) {
                path = next;
            } else {
                break;
            }
        }
        for w in words.iter().filter(|w| w.starts_with("--")) {
            let flag = w.split('=').next().unwrap_or_default();
            let flag = flag.trim_end_matches(|c: char| !c.is_alphanumeric());
            out.push((path.clone(), flag.to_string()));
        }
    }
    out
}

#[test]
fn flags_the_docs_pass_exist() {
    let tree = command_tree();
    let global = tree.get(&Vec::new()).cloned().unwrap_or_default();
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in all_markdown() {
        let md = markdown(&path);
        for (n, text) in code_words(&md) {
            for (command, flag) in documented_invocations(&text, &tree) {
                checked += 1;
                let known = tree.get(&command).is_some_and(|f| f.contains_key(&flag))
                    || global.contains_key(&flag)
                    || flag == "--help"
                    || flag == "--version";
                if !known {
                    problems.push(format!(
                        "{}:{n}: `mock-accel-dra {}` has no flag {flag}",
                        md.label,
                        command.join(" ")
                    ));
                }
            }
        }
    }
    assert!(checked > 10, "found only {checked} documented flags");
    // A flag named alone in the prose (`--agent-grace-period`) must exist on some subcommand,
    // unless the line names another program's command.
    let all_flags: BTreeSet<&String> = tree.values().flat_map(BTreeMap::keys).collect();
    for path in [
        "README.md",
        "docs/api-reference.md",
        "docs/integration-guide.md",
        "docs/extension-guide.md",
    ] {
        let md = markdown(&Path::new(ROOT).join(path));
        for (n, line) in &md.prose {
            for span in code_spans(line) {
                let flag = span.split('=').next().unwrap_or_default();
                let standard = flag == "--help" || flag == "--version";
                if span.starts_with("--")
                    && !span.contains(' ')
                    && !standard
                    && !all_flags.contains(&flag.to_string())
                {
                    problems.push(format!("{path}:{n}: `{span}` is no flag of mock-accel-dra"));
                }
            }
        }
    }
    fail_with(&problems);
}

/// Targets of the Makefile, with whether they have a `## ` help text.
fn make_targets() -> BTreeMap<String, bool> {
    read(&Path::new(ROOT).join("Makefile"))
        .lines()
        .filter(|l| !l.starts_with(['.', '\t', '#', ' ']))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !rest.starts_with('=');
            valid.then(|| (name.to_string(), rest.contains("## ")))
        })
        .collect()
}

#[test]
fn make_targets_the_docs_use_exist_and_make_help_lists_every_target() {
    let targets = make_targets();
    assert!(targets.contains_key("demo") && targets.contains_key("test"));
    let mut problems: Vec<String> = targets
        .iter()
        .filter(|(_, helped)| !**helped)
        .map(|(t, _)| {
            format!("Makefile: target {t} has no `## ` help text, so `make help` omits it")
        })
        .collect();
    for path in all_markdown() {
        let md = markdown(&path);
        for (n, text) in code_words(&md) {
            let words: Vec<&str> = text.split_whitespace().collect();
            for pair in words.windows(2) {
                if pair[0] != "make" {
                    continue;
                }
                let target = pair[1].trim_matches(|c: char| "`\"'();".contains(c));
                if target.starts_with(['-', '<']) || target.contains('=') || target.is_empty() {
                    continue;
                }
                if !targets.contains_key(target) {
                    problems.push(format!("{}:{n}: `make {target}`: no such target", md.label));
                }
            }
        }
    }
    fail_with(&problems);
}

/// The example file names the original mock-device README promises.
const ORIGINAL_EXAMPLES: [&str; 5] = [
    "basic-allocation.yaml",
    "numa-locality.yaml",
    "pcie-locality.yaml",
    "sriov-vf-allocation.yaml",
    "mixed-pf-vf.yaml",
];

#[test]
fn examples_keep_the_original_names_and_are_all_listed() {
    let names: BTreeSet<String> = example_files()
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    let index = read(&Path::new(ROOT).join("docs/examples/README.md"));
    let readme = read(&Path::new(ROOT).join("README.md"));
    let mut problems = Vec::new();
    for original in ORIGINAL_EXAMPLES {
        if !names.contains(original) {
            problems.push(format!(
                "docs/examples/{original} (an original example name) is missing"
            ));
        }
        if !readme.contains(&format!("docs/examples/{original}")) {
            problems.push(format!(
                "README.md does not point at docs/examples/{original}"
            ));
        }
    }
    for name in &names {
        if !index.contains(&format!("]({name})")) {
            problems.push(format!("docs/examples/README.md does not list {name}"));
        }
    }
    fail_with(&problems);
}

#[test]
fn the_image_is_named_in_the_kustomization_only() {
    let kustomization = objects(
        "kustomize/default/kustomization.yaml",
        &read(&Path::new(ROOT).join("kustomize/default/kustomization.yaml")),
    );
    let image = &kustomization[0]["images"][0];
    let expected = format!(
        "{}:{}",
        image["newName"].as_str().unwrap_or_default(),
        image["newTag"].as_str().unwrap_or_default()
    );
    let output = Command::new("make")
        .args(["-s", "--no-print-directory", "image-name"])
        .current_dir(ROOT)
        .output()
        .expect("make is needed to check the Makefile's image name");
    assert!(output.status.success(), "make image-name failed");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), expected);
    let makefile = read(&Path::new(ROOT).join("Makefile"));
    assert!(
        !makefile.contains("mock-accel-dra:"),
        "the Makefile names an image itself; it must read it from the kustomization"
    );
    assert!(
        read(&Path::new(ROOT).join("README.md")).contains(&format!("`{expected}`")),
        "README.md does not name the image {expected}"
    );
}

#[test]
fn the_license_file_matches_the_readme() {
    let readme = read(&Path::new(ROOT).join("README.md"));
    let license = read(&Path::new(ROOT).join("LICENSE"));
    assert!(readme.contains("Apache-2.0"), "README.md names no license");
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE is not the Apache License 2.0 the README states"
    );
}
