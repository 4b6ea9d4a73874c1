//! `mock-accel-dra discover -o json` prints the same bytes for the same tree, and the same
//! warnings, as recorded in `tests/golden/discover/`: the scan may change how it reads a tree
//! (fewer calls, other handles, threads) but never what it reports. The files were recorded by
//! the binary before the scan read each device through its own directory handle; a tree of 512
//! devices (read on several threads) is kept as the SHA-256 of its 80 kB of JSON. The `broken`
//! tree's files were recorded again once the PCI address and pcieRoot came from the class link's
//! target: its removed `bus/pci/devices` link is no longer read, so mock3 keeps its pcieRoot
//! (`pci0000:20`, as its class link says) and that warning is gone; everything else is the same.
//!
//! To record them again after a deliberate change of the output, run the test with
//! `MOCK_ACCEL_BLESS=1` and review the diff.

use std::{fs, path::Path, process::Command};

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_mock-accel-dra");

fn golden_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/discover"
    ))
}

fn sim(root: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .args(["sim", args[0], "--root", root.to_str().unwrap()])
        .args(&args[1..])
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "sim {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the tree named `case` under `root`, as the recorded one was built.
fn build(case: &str, root: &Path) {
    let custom = ["create", "--topology", "custom", "--numa-nodes", "2"];
    match case {
        "canonical" => sim(root, &["create", "--node-index", "2"]),
        "sriov" => {
            sim(root, &["create", "--topology", "sriov"]);
            sim(root, &["set-numvfs", "--device", "mock0", "--count", "2"]);
        }
        "numa-none" => sim(root, &["create", "--topology", "numa-none"]),
        "custom-sriov" => sim(
            root,
            &[
                &custom[..],
                &[
                    "--pfs-per-numa",
                    "3",
                    "--vfs-per-pf",
                    "3",
                    "--sriov",
                    "--pf-memory-zero",
                ],
            ]
            .concat(),
        ),
        "static-512" => sim(
            root,
            &[&custom[..], &["--pfs-per-numa", "32", "--vfs-per-pf", "7"]].concat(),
        ),
        "broken" => {
            sim(root, &["create"]);
            let class = root.join("class/mock-accel");
            fs::write(class.join("mock2/uuid"), "garbage\n").unwrap();
            fs::remove_file(class.join("mock1/fw_version")).unwrap();
            fs::remove_file(root.join("bus/pci/devices/0000:21:00.0")).unwrap();
            fs::write(class.join("mock4/device/device"), "0x0003\n").unwrap();
            fs::write(class.join("mock5/status"), "4660\n").unwrap();
            fs::remove_file(class.join("mock5/numa_node")).unwrap();
        }
        other => panic!("no tree named {other}"),
    }
}

/// stdout as the golden file holds it: the JSON itself, or for `static-512` its SHA-256.
fn golden_stdout(case: &str, stdout: &[u8]) -> (String, Vec<u8>) {
    if case == "static-512" {
        let hex: String = Sha256::digest(stdout)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (
            format!("{case}.json.sha256"),
            format!("{hex}\n").into_bytes(),
        )
    } else {
        (format!("{case}.json"), stdout.to_vec())
    }
}

#[test]
fn discover_prints_the_recorded_json_and_warnings_byte_for_byte() {
    let bless = std::env::var_os("MOCK_ACCEL_BLESS").is_some();
    let mut differ = Vec::new();
    for case in [
        "canonical",
        "sriov",
        "numa-none",
        "custom-sriov",
        "static-512",
        "broken",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(case);
        fs::create_dir(&root).unwrap();
        build(case, &root);
        let out = Command::new(BIN)
            .args(["discover", "--sysfs-root", root.to_str().unwrap()])
            .args(["--output", "json"])
            .output()
            .expect("binary runs");
        assert!(out.status.success(), "{case}: discover failed");
        let stderr = String::from_utf8(out.stderr)
            .unwrap()
            .replace(root.to_str().unwrap(), "<root>");
        let (stdout_file, stdout) = golden_stdout(case, &out.stdout);
        for (file, got) in [
            (stdout_file, stdout),
            (format!("{case}.stderr"), stderr.into_bytes()),
        ] {
            let path = golden_dir().join(&file);
            if bless {
                fs::write(&path, &got).unwrap();
            } else if fs::read(&path).unwrap_or_default() != got {
                differ.push(format!(
                    "{file}: got\n{}",
                    String::from_utf8_lossy(&got[..got.len().min(2000)])
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "discover output differs from tests/golden/discover (MOCK_ACCEL_BLESS=1 records it again):\n{}",
        differ.join("\n")
    );
}
