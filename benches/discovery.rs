//! Discovery time for 6, 256 and 4096 simulated devices (`make bench`). Prints the best and
//! median of 20 warm scans of a tree built by the simulator (the aim for 4096 devices is under
//! 60 ms), the median CPU time of a scan (all its threads; on a shared machine it moves less
//! than the wall time), and the system calls one scan makes per device, counted by
//! `strace -c -f` on a child run of this bench that scans once, minus a child that does
//! everything but the scan, in total and by call. For the largest tree it also times the scan on
//! one thread, to show what the second core adds.

use std::{
    collections::BTreeMap,
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

/// System calls of one child run under `strace -c -f`, by call and as `total`; `None` when
/// strace is missing or fails (it needs ptrace, which some containers forbid).
fn counted_calls(tree: &Path, scan: bool) -> Option<BTreeMap<String, u64>> {
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
    // Rows `<% time> <seconds> <usecs/call> <calls> [<errors>] <syscall>`, the last one
    // `... total`; the header and the rules do not parse.
    let text = std::fs::read_to_string(out.path()).ok()?;
    let calls: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let calls = cols.get(3)?.parse().ok()?;
            Some((cols.last()?.to_string(), calls))
        })
        .collect();
    calls.contains_key("total").then_some(calls)
}

/// Calls per device of a scan: the scanning child's count minus the idle child's, as
/// `<total> (<call> <n>, ...)` for the calls that make up at least 0.05 per device.
fn per_device(
    with: &BTreeMap<String, u64>,
    without: &BTreeMap<String, u64>,
    found: usize,
) -> String {
    let per = |name: &str| {
        with.get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(without.get(name).copied().unwrap_or(0)) as f64
            / found.max(1) as f64
    };
    let by_call: Vec<String> = with
        .keys()
        .filter(|name| *name != "total")
        .map(|name| (name, per(name)))
        .filter(|(_, n)| *n >= 0.05)
        .map(|(name, n)| format!("{name} {n:.1}"))
        .collect();
    format!("{:.1} ({})", per("total"), by_call.join(", "))
}

/// CPU time of this process so far, all threads (the scan's readers included).
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The wall and CPU times of timed scans, each sorted, and the number of devices found.
struct Timings {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
    found: usize,
}

/// `runs` timed scans on at most `threads` threads.
fn timed_scans(
    root: &Path,
    runs: usize,
    threads: usize,
) -> Result<Timings, Box<dyn std::error::Error>> {
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut cpu: Vec<Duration> = Vec::with_capacity(runs);
    let mut found = 0;
    for _ in 0..runs {
        let (start, cpu_start) = (Instant::now(), process_cpu());
        let scan = sysfs::scan_on_threads(root, threads)?;
        times.push(start.elapsed());
        cpu.push(process_cpu().saturating_sub(cpu_start));
        found = scan.inventory.devices.len();
        assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);
    }
    times.sort();
    cpu.sort();
    Ok(Timings {
        wall: times,
        cpu,
        found,
    })
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
        // Warm: the first scan brings the tree into the dentry and page caches, untimed.
        sysfs::scan(dir.path())?;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let Timings {
            wall: times,
            cpu,
            found,
        } = timed_scans(dir.path(), runs, cores)?;
        let calls = if full {
            match (
                counted_calls(dir.path(), true),
                counted_calls(dir.path(), false),
            ) {
                (Some(with), Some(without)) => per_device(&with, &without, found),
                _ => "n/a (strace missing or not permitted)".to_string(),
            }
        } else {
            "not counted".to_string()
        };
        println!(
            "discovery {label:<30} devices={found:<5} best={:>9.2?} median={:>9.2?} cpu/scan(median)={:>9.2?} syscalls/device={calls} (tree built in {built:.2?})",
            times[0],
            times[runs / 2],
            cpu[runs / 2]
        );
        if found >= 4096 {
            let one = timed_scans(dir.path(), runs, 1)?;
            println!(
                "  one thread (the default uses {cores}): best={:>9.2?} median={:>9.2?} cpu/scan(median)={:>9.2?}",
                one.wall[0],
                one.wall[runs / 2],
                one.cpu[runs / 2]
            );
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
