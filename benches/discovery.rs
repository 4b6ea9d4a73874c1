//! Discovery time for 6, 256 and 4096 simulated devices (`make bench`). Prints the best and
//! median of several scans of a tree built by the simulator; the aim for 4096 devices is well
//! under 100 ms.

use std::time::{Duration, Instant};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file too, and then one
    // small pass is enough to prove it still works.
    let full = std::env::args().any(|a| a == "--bench");
    let runs: usize = if full { 15 } else { 1 };
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
        let mut found = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let scan = sysfs::scan(dir.path())?;
            times.push(start.elapsed());
            found = scan.inventory.devices.len();
            assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);
        }
        times.sort();
        println!(
            "discovery {label:<30} devices={found:<5} best={:>9.2?} median={:>9.2?} (tree built in {built:.2?})",
            times[0],
            times[runs / 2]
        );
        if found >= 4096 {
            let aim = Duration::from_millis(100);
            println!(
                "  aim: 4096 devices well under {aim:?}: median is {:.0}% of it: {}",
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
