//! `mock-accel-dra sim` and `mock-accel-dra discover` through the binary, as a person or the
//! end-to-end harness runs them.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mock-accel-dra");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("binary runs")
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn root_arg(root: &Path) -> &str {
    root.to_str().unwrap()
}

fn sim(root: &Path, args: &[&str]) -> Output {
    let mut all = vec!["sim", args[0], "--root", root_arg(root)];
    all.extend_from_slice(&args[1..]);
    ok(&all)
}

fn discover_json(root: &Path) -> (Vec<Value>, String) {
    let out = ok(&[
        "discover",
        "--sysfs-root",
        root_arg(root),
        "--output",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON only");
    (
        v.as_array().unwrap().clone(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn by_name<'a>(devs: &'a [Value], name: &str) -> &'a Value {
    devs.iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {devs:?}"))
}

#[test]
fn canonical_tree_discovers_as_json_with_exact_keys() {
    let dir = tempfile::tempdir().unwrap();
    sim(
        dir.path(),
        &["create", "--topology", "canonical", "--node-index", "2"],
    );
    let (devs, stderr) = discover_json(dir.path());
    assert_eq!(stderr, "");
    let names: Vec<&str> = devs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["mock0", "mock1", "mock2", "mock3", "mock4", "mock5"]
    );
    let mut keys: Vec<&String> = devs[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "capabilities",
            "deviceType",
            "memory",
            "name",
            "numaNode",
            "pciAddress",
            "pcieRoot",
            "physfn",
            "status",
            "sysfsName",
            "uuid"
        ]
    );
    let m0 = by_name(&devs, "mock0");
    assert_eq!(m0["deviceType"], "pf");
    assert_eq!(m0["memory"], 17_179_869_184u64);
    assert_eq!(m0["physfn"], Value::Null);
    assert_eq!(m0["numaNode"], 0);
    assert_eq!(m0["capabilities"], 1);
    assert_eq!(m0["status"], 1);
    assert_eq!(m0["uuid"], "4e4f4445-322d-4e55-4d41-302d50460000");
    let m4 = by_name(&devs, "mock4");
    assert_eq!(m4["deviceType"], "vf");
    assert_eq!(m4["physfn"], "mock3");
    assert_eq!(m4["pciAddress"], "0000:21:00.1");
    assert_eq!(m4["pcieRoot"], "pci0000:20");
    assert_eq!(m4["memory"], 2_147_483_648u64);
}

#[test]
fn table_is_the_default_output() {
    let dir = tempfile::tempdir().unwrap();
    sim(dir.path(), &["create", "--topology", "numa-none"]);
    let out = ok(&["discover", "--sysfs-root", root_arg(dir.path())]);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME", "SYSFS", "TYPE", "NUMA", "PCI", "ROOT", "MEMORY", "PARENT", "UUID", "STATUS"
        ]
    );
    assert_eq!(lines.len(), 7);
    assert_eq!(
        lines[2],
        [
            "mock1",
            "mock1",
            "vf",
            "-",
            "0000:11:00.1",
            "pci0000:10",
            "2Gi",
            "mock0",
            "4e4f4445-312d-4e55-4d41-302d56463000",
            "0x00000001"
        ]
    );
    assert_eq!(lines[1][6], "16Gi");
}

#[test]
fn sriov_numvfs_adds_and_removes_vfs_and_rejects_too_many() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let dev = dir.path().join("dev");
    let dev_arg = dev.to_str().unwrap();
    sim(
        root,
        &["create", "--topology", "sriov", "--dev-root", dev_arg],
    );
    sim(
        root,
        &[
            "set-numvfs",
            "--dev-root",
            dev_arg,
            "--device",
            "mock1",
            "--count",
            "3",
        ],
    );
    let (devs, stderr) = discover_json(root);
    assert_eq!(stderr, "");
    assert_eq!(devs.len(), 5);
    let vf = by_name(&devs, "mock1-vf2");
    assert_eq!(vf["sysfsName"], "mock1_vf2");
    assert_eq!(vf["physfn"], "mock1");
    assert_eq!(vf["pciAddress"], "0000:21:00.3");
    assert_eq!(vf["numaNode"], 1);
    assert!(dev.join("mock1_vf2").is_file());
    assert_eq!(
        fs::read_to_string(root.join("class/mock-accel/mock1/sriov_numvfs")).unwrap(),
        "3\n"
    );

    let out = run(&[
        "sim",
        "set-numvfs",
        "--root",
        root_arg(root),
        "--device",
        "mock1",
        "--count",
        "5",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EINVAL") && err.contains("0..=4"), "{err}");

    sim(
        root,
        &[
            "set-numvfs",
            "--dev-root",
            dev_arg,
            "--device",
            "mock1",
            "--count",
            "0",
        ],
    );
    let (devs, _) = discover_json(root);
    assert_eq!(devs.len(), 2);
    assert!(!dev.join("mock1_vf2").exists());
    assert!(!root.join("bus/pci/devices/0000:21:00.1").exists());
}

#[test]
fn broken_device_is_a_warning_on_stderr_and_the_rest_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sim(root, &["create"]);
    fs::write(root.join("class/mock-accel/mock2/uuid"), "garbage\n").unwrap();
    let (devs, stderr) = discover_json(root);
    assert_eq!(devs.len(), 5);
    assert!(devs.iter().all(|d| d["name"] != "mock2"));
    let line = stderr.lines().next().unwrap();
    assert!(line.starts_with("warning: "), "{stderr}");
    assert!(
        line.contains("class/mock-accel/mock2/uuid: cannot parse"),
        "{stderr}"
    );
}

#[test]
fn unusable_root_fails_and_missing_module_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "discover",
        "--sysfs-root",
        root_arg(&dir.path().join("nope")),
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    let (devs, stderr) = discover_json(dir.path());
    assert!(devs.is_empty());
    assert!(stderr.contains("module is not loaded"), "{stderr}");

    // Zero devices: the class directory exists and is empty, no warning.
    let empty = tempfile::tempdir().unwrap();
    sim(
        empty.path(),
        &["create", "--topology", "custom", "--pfs-per-numa", "0"],
    );
    assert!(empty.path().join("class/mock-accel").is_dir());
    let (devs, stderr) = discover_json(empty.path());
    assert!(devs.is_empty() && stderr.is_empty(), "{stderr}");
}

#[test]
fn hotplug_add_remove_and_status_writes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sim(root, &["create"]);
    sim(
        root,
        &["add-device", "--bdf", "0000:31:00.0", "--numa-node", "1"],
    );
    sim(
        root,
        &[
            "add-device",
            "--bdf",
            "0000:31:00.1",
            "--type",
            "vf",
            "--numa-node",
            "1",
        ],
    );
    let (devs, stderr) = discover_json(root);
    assert_eq!(stderr, "");
    assert_eq!(devs.len(), 8);
    let pf = by_name(&devs, "mock6");
    assert_eq!(pf["pcieRoot"], "pci0000:30");
    assert_eq!(pf["deviceType"], "pf");
    assert_eq!(by_name(&devs, "mock7")["physfn"], "mock6");

    // A second add at a taken address fails.
    let out = run(&[
        "sim",
        "add-device",
        "--root",
        root_arg(root),
        "--bdf",
        "0000:31:00.0",
    ]);
    assert!(!out.status.success());

    sim(root, &["remove-device", "--device", "mock1"]);
    let (devs, _) = discover_json(root);
    assert_eq!(devs.len(), 7);
    assert!(!root.join("bus/pci/devices/0000:11:00.1").exists());
    assert!(
        !root
            .join("devices/pci0000:10/0000:10:00.0/0000:11:00.1")
            .exists()
    );

    sim(
        root,
        &["set-status", "--device", "mock0", "--value", "4660"],
    );
    assert_eq!(
        fs::read_to_string(root.join("class/mock-accel/mock0/status")).unwrap(),
        "0x00001234\n"
    );
    let out = run(&[
        "sim",
        "set-status",
        "--root",
        root_arg(root),
        "--device",
        "mock0",
        "--value",
        "busy",
    ]);
    assert!(!out.status.success());
    let out = run(&[
        "sim",
        "remove-device",
        "--root",
        root_arg(root),
        "--device",
        "mock1",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no device \"mock1\""));
}

#[test]
fn custom_tree_of_4096_devices_discovers_completely() {
    // ~200k files: use memory-backed storage when the machine has it, a busy disk is slow.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let root = dir.path();
    sim(
        root,
        &[
            "create",
            "--topology",
            "custom",
            "--numa-nodes",
            "2",
            "--pfs-per-numa",
            "256",
            "--vfs-per-pf",
            "7",
        ],
    );
    let (devs, stderr) = discover_json(root);
    assert_eq!(stderr, "");
    assert_eq!(devs.len(), 4096);
    let vfs = devs.iter().filter(|d| d["deviceType"] == "vf").count();
    assert_eq!(vfs, 512 * 7);
    assert!(
        devs.iter()
            .filter(|d| d["deviceType"] == "vf")
            .all(|d| d["physfn"].is_string())
    );
    let last = by_name(&devs, "mock4095");
    assert_eq!(last["pciAddress"], "0000:28:1f.7");
    assert_eq!(last["pcieRoot"], "pci0000:20");
    assert_eq!(last["physfn"], "mock4088");
}

/// Kills the watch daemon this test started when the test ends, pass or fail.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn watch_daemon_applies_numvfs_and_normalises_status_writes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sim(root, &["create", "--topology", "sriov"]);
    let mut child = Command::new(BIN)
        .args(["sim", "watch", "--root", root_arg(root)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _daemon = Daemon(child);
    assert!(ready.starts_with("watching "), "{ready}");

    let class = root.join("class/mock-accel");
    fs::write(class.join("mock0/sriov_numvfs"), "2\n").unwrap();
    wait_for("mock0_vf1", || class.join("mock0_vf1/uuid").exists());
    assert_eq!(
        fs::read_link(class.join("mock0_vf1/device")).unwrap(),
        Path::new("../../../0000:11:00.2")
    );

    fs::write(class.join("mock0_vf1/status"), "4660\n").unwrap();
    let status = class.join("mock0_vf1/status");
    wait_for("normalised status", || {
        fs::read_to_string(&status).unwrap() == "0x00001234\n"
    });

    // Above sriov_totalvfs: the kernel answers EINVAL and the count stays.
    fs::write(class.join("mock0/sriov_numvfs"), "9\n").unwrap();
    wait_for("restored count", || {
        fs::read_to_string(class.join("mock0/sriov_numvfs")).unwrap() == "2\n"
    });
    assert!(class.join("mock0_vf1").exists());

    fs::write(class.join("mock0/sriov_numvfs"), "0").unwrap();
    // The daemon removes the VFs one after the other: wait for the last one, not the first.
    wait_for("VFs removed", || {
        !class.join("mock0_vf0").exists() && !class.join("mock0_vf1").exists()
    });
    let (devs, _) = discover_json(root);
    assert_eq!(devs.len(), 2);
}
