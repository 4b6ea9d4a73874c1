//! Discovery time for 6, 256 and 4096 simulated devices (`make bench`). Prints the best and
//! median of 20 warm scans of a tree built by the simulator (the aim for 4096 devices is under
//! 60 ms), and the system calls one scan makes per device, counted by `strace -c -f` on a child
//! run of this bench that scans once, minus a child that does everything but the scan.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use mock_accel_dra::{
    sim::{self, TopologySpec},
    sysfs,
};

fn spec(numa_nodes: u32, pfs_per_numa: u32, vfs_per_pf: u32) -> TopologySpec {
    TopologySpec {
        numa_nodes,
        pfs_per_numa,
        vfs_per_pf,
        total_vfs: vfs_per_pf,
        ..TopologySpec::canonical(1)
    }
}

/// Set on the child that `strace` counts: the tree to scan, and whether to scan it at all.
const CHILD_TREE: &str = "MOCK_ACCEL_BENCH_SCAN_TREE";
const CHILD_SCANS: &str = "MOCK_ACCEL_BENCH_SCAN_ONCE";

/// System calls of one child run under `strace -c -f`, `None` when strace is missing or fails
/// (it needs ptrace, which some containers forbid).
fn counted_calls(tree: &Path, scan: bool) -> Option<u64> {
    let out = tempfile::NamedTempFile::new().ok()?;
    let status = Command::new("strace")
        .args(["-f", "-c", "-qq", "-o"])
        .arg(out.path())
        .arg(std::env::current_exe().ok()?)
        .env(CHILD_TREE, tree)
        .env(CHILD_SCANS, if scan { "1" } else { "0" })
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    // The summary's last line: `100.00 <seconds> <usecs/call> <calls> [<errors>] total`.
    let text = std::fs::read_to_string(out.path()).ok()?;
    let total = text
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))?;
    total.split_whitespace().nth(3)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(tree) = std::env::var_os(CHILD_TREE) {
        if std::env::var(CHILD_SCANS).as_deref() == Ok("1") {
            sysfs::scan(Path::new(&tree))?;
        }
        return Ok(());
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file too, and then one
    // small pass is enough to prove it still works.
    let full = std::env::args().any(|a| a == "--bench");
    let runs: usize = if full { 20 } else { 1 };
    for (label, spec) in [
        ("6 (canonical)", TopologySpec::canonical(1)),
        ("256 (2 NUMA x 16 PF x 7 VF)", spec(2, 16, 7)),
        ("4096 (2 NUMA x 256 PF x 7 VF)", spec(2, 256, 7)),
    ]
    .into_iter()
    .take(if full { 3 } else { 1 })
    {
        // A memory-backed directory when there is one: building 4096 devices means ~200k files,
        // slow on a busy disk and beside the point of a discovery benchmark.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)?
        } else {
            tempfile::tempdir()?
        };
        let start = Instant::now();
        sim::create(dir.path(), None, &spec)?;
        let built = start.elapsed();
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        // Warm: the first scan brings the tree into the dentry and page caches, untimed.
        let mut found = sysfs::scan(dir.path())?.inventory.devices.len();
        for _ in 0..runs {
            let start = Instant::now();
            let scan = sysfs::scan(dir.path())?;
            times.push(start.elapsed());
            found = scan.inventory.devices.len();
            assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);
        }
        times.sort();
        let per_device = if full {
            match (
                counted_calls(dir.path(), true),
                counted_calls(dir.path(), false),
            ) {
                (Some(with), Some(without)) => format!(
                    "{:.1}",
                    with.saturating_sub(without) as f64 / found.max(1) as f64
                ),
                _ => "n/a (strace missing or not permitted)".to_string(),
            }
        } else {
            "not counted".to_string()
        };
        println!(
            "discovery {label:<30} devices={found:<5} best={:>9.2?} median={:>9.2?} syscalls/device={per_device} (tree built in {built:.2?})",
            times[0],
            times[runs / 2]
        );
        if found >= 4096 {
            let aim = Duration::from_millis(60);
            println!(
                "  aim: 4096 devices under {aim:?} (median of {runs}): median is {:.0}% of it: {}",
                100.0 * times[runs / 2].as_secs_f64() / aim.as_secs_f64(),
                if times[runs / 2] < aim {
                    "met"
                } else {
                    "MISSED"
                }
            );
        }
    }
    Ok(())
}
