//! Discovery time for 6, 256 and 4096 simulated devices (`make bench`). Prints the best and
//! median of 20 warm scans of a tree built by the simulator (the aim for 4096 devices is under
//! 60 ms), the median CPU time of a scan (all its threads; on a shared machine it moves less
//! than the wall time), and the system calls one scan makes per device, counted by
//! `strace -c -f` on a child run of this bench that scans once, minus a child that does
//! everything but the scan, in total and by call. Beside each scan it times the floor measured
//! in the same run: the same system calls made by a loop that parses nothing, on the scan's
//! threads and on as many processes (each with a descriptor table of its own), so the output
//! shows what the scan adds to the kernel's work and what the threads' shared descriptor table
//! costs. For the largest tree it also times both on one thread, to show what the second core
//! adds.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
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

/// Set on the child that `strace` counts: the tree to scan, and what to do with it once: a
/// [`Child`] by name.
const CHILD_TREE: &str = "MOCK_ACCEL_BENCH_SCAN_TREE";
const CHILD_SCANS: &str = "MOCK_ACCEL_BENCH_SCAN_ONCE";

/// What the counted child does with the tree.
#[derive(Clone, Copy)]
enum Child {
    /// Everything but reading the tree: the calls to subtract.
    Idle,
    Scan,
    Floor,
}

impl Child {
    fn name(self) -> &'static str {
        match self {
            Child::Idle => "0",
            Child::Scan => "1",
            Child::Floor => "floor",
        }
    }
}

/// System calls of one child run under `strace -c -f`, by call and as `total`; `None` when
/// strace is missing or fails (it needs ptrace, which some containers forbid).
fn counted_calls(tree: &Path, child: Child) -> Option<BTreeMap<String, u64>> {
    let out = tempfile::NamedTempFile::new().ok()?;
    let status = Command::new("strace")
        .args(["-f", "-c", "-qq", "-o"])
        .arg(out.path())
        .arg(std::env::current_exe().ok()?)
        .env(CHILD_TREE, tree)
        .env(CHILD_SCANS, child.name())
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

/// The wall and CPU times of timed runs, each sorted, and the number of devices found.
struct Timings {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
    found: usize,
}

impl Timings {
    fn sorted(mut wall: Vec<Duration>, mut cpu: Vec<Duration>, found: usize) -> Self {
        wall.sort();
        cpu.sort();
        Timings { wall, cpu, found }
    }
}

/// `runs` timed calls of `one`, which returns the number of devices it found.
fn timed<E>(runs: usize, mut one: impl FnMut() -> Result<usize, E>) -> Result<Timings, E> {
    let (mut wall, mut cpu) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let mut found = 0;
    for _ in 0..runs {
        let (start, cpu_start) = (Instant::now(), process_cpu());
        found = one()?;
        wall.push(start.elapsed());
        cpu.push(process_cpu().saturating_sub(cpu_start));
    }
    Ok(Timings::sorted(wall, cpu, found))
}

/// `runs` timed scans on at most `threads` threads.
fn timed_scans(root: &Path, runs: usize, threads: usize) -> Result<Timings, sysfs::SysfsError> {
    timed(runs, || {
        let scan = sysfs::scan_on_threads(root, threads)?;
        assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);
        Ok(scan.inventory.devices.len())
    })
}

/// `runs` passes of the floor on at most `threads` threads.
fn timed_floor(root: &Path, runs: usize, threads: usize) -> std::io::Result<Timings> {
    timed(runs, || floor::pass(root, threads))
}

/// The floor of a scan: the system calls [`sysfs::scan`] makes for a tree (list the class
/// directory; per device read its class link, open its directory below a kept handle on the
/// directory of its PCI function's parent, open, read and close its seven files, check for
/// `sriov_totalvfs` and without it probe `physfn`), made by a loop that parses, checks and
/// keeps nothing. What the kernel needs for
/// those calls is what no scan that reads the same files can go below; the ratio of the scan to
/// this loop, measured in the same run, is what the scan adds.
mod floor {
    use std::{
        os::fd::{AsFd, OwnedFd},
        path::Path,
    };

    use mock_accel_dra::sysfs::{
        CLASS_DIR, class_link::parse_class_link, scan::on_reading_threads,
    };
    use rustix::{
        fs::{Access, AtFlags, CWD, Mode, OFlags},
        io::Errno,
    };

    /// The files a scan reads per device of a static tree, relative to its class directory.
    const FILES: [&str; 7] = [
        "uuid",
        "memory_size",
        "capabilities",
        "status",
        "numa_node",
        "fw_version",
        "../../device",
    ];

    fn open_path(dir: impl AsFd, path: impl rustix::path::Arg) -> std::io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            dir,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// The class entries' names, in the scan's order.
    pub fn names(root: &Path) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(root.join(CLASS_DIR))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    }

    /// The sysfs root and its class directory, opened once per pass as the scan opens them.
    pub struct Dirs {
        root: OwnedFd,
        class: OwnedFd,
    }

    impl Dirs {
        pub fn open(root: &Path) -> std::io::Result<Self> {
            let root = open_path(CWD, root)?;
            let class = open_path(&root, CLASS_DIR)?;
            Ok(Dirs { root, class })
        }
    }

    /// The calls for `names`; returns the bytes read, so that nothing is optimised away.
    pub fn read_chunk(dirs: &Dirs, names: &[String]) -> std::io::Result<usize> {
        let Dirs {
            root: root_fd,
            class,
        } = dirs;
        let mut parents: Vec<(String, OwnedFd)> = Vec::new();
        let (mut link, mut buf) = (vec![0u8; 4096], vec![0u8; 4096]);
        let mut bytes = 0;
        for name in names {
            let len = rustix::fs::readlinkat_raw(class, name.as_str(), &mut link[..])?;
            let target = std::str::from_utf8(&link[..len]).map_err(std::io::Error::other)?;
            let parsed = parse_class_link(target).map_err(std::io::Error::other)?;
            let at = match parents
                .iter()
                .position(|(p, _)| p == parsed.function_parent)
            {
                Some(at) => at,
                None => {
                    let fd = open_path(root_fd, parsed.function_parent)?;
                    parents.push((parsed.function_parent.to_string(), fd));
                    parents.len() - 1
                }
            };
            let dir = open_path(&parents[at].1, parsed.below_parent)?;
            for file in FILES {
                let fd = rustix::fs::openat(
                    &dir,
                    file,
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                bytes += rustix::io::read(&fd, &mut buf[..])?;
            }
            // The scan's virtfn check (no name in these trees has the virtfn form).
            let shows_totalvfs = rustix::fs::accessat(
                &dir,
                "sriov_totalvfs",
                Access::EXISTS,
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_ok();
            if !shows_totalvfs {
                match rustix::fs::readlinkat_raw(&dir, "../../physfn", &mut link[..]) {
                    Ok(len) => bytes += len,
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(bytes)
    }

    /// One pass over the tree on `threads` threads, split as the scan splits it; the number of
    /// class entries.
    pub fn pass(root: &Path, threads: usize) -> std::io::Result<usize> {
        let names = names(root)?;
        let dirs = &Dirs::open(root)?;
        on_reading_threads(&names, threads, |chunk| read_chunk(dirs, chunk))
            .into_iter()
            .collect::<std::io::Result<Vec<usize>>>()?;
        Ok(names.len())
    }
}

/// Set on a child that makes the floor's calls for its part of a tree (`<index>/<parts>`), once
/// per line `go` on its standard input, answering each with the CPU nanoseconds it took.
const FLOOR_CHILD_TREE: &str = "MOCK_ACCEL_BENCH_FLOOR_TREE";
const FLOOR_CHILD_PART: &str = "MOCK_ACCEL_BENCH_FLOOR_PART";

fn floor_child(tree: &Path, part: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (index, parts) = part.split_once('/').ok_or("part is <index>/<parts>")?;
    let (index, parts): (usize, usize) = (index.parse()?, parts.parse()?);
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lines() {
        if line? != "go" {
            break;
        }
        let cpu_start = process_cpu();
        let names = floor::names(tree)?;
        let per_part = names.len().div_ceil(parts).max(1);
        let dirs = floor::Dirs::open(tree)?;
        floor::read_chunk(&dirs, names.chunks(per_part).nth(index).unwrap_or(&[]))?;
        writeln!(
            out,
            "{}",
            process_cpu().saturating_sub(cpu_start).as_nanos()
        )?;
        out.flush()?;
    }
    Ok(())
}

/// The floor's calls split across `parts` processes, started once and then run together
/// `runs` times: each process has a descriptor table of its own, where a scan's threads share
/// one. Wall and CPU time (all processes) per run, each sorted.
fn floor_in_processes(root: &Path, parts: usize, runs: usize) -> std::io::Result<Timings> {
    let mut children = (0..parts)
        .map(|index| {
            Command::new(std::env::current_exe()?)
                .env(FLOOR_CHILD_TREE, root)
                .env(FLOOR_CHILD_PART, format!("{index}/{parts}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut pipes = Vec::with_capacity(parts);
    for child in &mut children {
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err(std::io::Error::other("floor child without pipes"));
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(std::io::Error::other(format!("floor child said {line:?}")));
        }
        pipes.push((stdin, stdout));
    }
    let (mut wall, mut cpu) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let start = Instant::now();
        for (stdin, _) in &mut pipes {
            writeln!(stdin, "go")?;
            stdin.flush()?;
        }
        let mut total = Duration::ZERO;
        for (_, stdout) in &mut pipes {
            let mut line = String::new();
            stdout.read_line(&mut line)?;
            let nanos: u64 = line.trim().parse().map_err(|_| {
                std::io::Error::other(format!("floor child failed (said {line:?})"))
            })?;
            total += Duration::from_nanos(nanos);
        }
        wall.push(start.elapsed());
        cpu.push(total);
    }
    drop(pipes);
    for mut child in children {
        child.wait()?;
    }
    Ok(Timings::sorted(wall, cpu, 0))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let (Some(tree), Ok(part)) = (
        std::env::var_os(FLOOR_CHILD_TREE),
        std::env::var(FLOOR_CHILD_PART),
    ) {
        return floor_child(Path::new(&tree), &part);
    }
    if let Some(tree) = std::env::var_os(CHILD_TREE) {
        let tree = Path::new(&tree);
        let what = std::env::var(CHILD_SCANS).unwrap_or_default();
        if what == Child::Scan.name() {
            sysfs::scan(tree)?;
        } else if what == Child::Floor.name() {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            floor::pass(tree, cores)?;
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
        let scans = timed_scans(dir.path(), runs, cores)?;
        let found = scans.found;
        let floor = timed_floor(dir.path(), runs, cores)?;
        // The scan's split: one reader below 64 devices, so the 6-device tree has one of each.
        let parts = sysfs::scan::reading_threads(found, cores);
        let in_processes = floor_in_processes(dir.path(), parts, runs)?;
        let (threads, processes) = if parts == 1 {
            ("thread", "process")
        } else {
            ("threads", "processes")
        };
        // Counted for the floor too, to show that it makes the scan's calls.
        let calls = |child| {
            if !full {
                return "not counted".to_string();
            }
            match (
                counted_calls(dir.path(), child),
                counted_calls(dir.path(), Child::Idle),
            ) {
                (Some(with), Some(without)) => per_device(&with, &without, found),
                _ => "n/a (strace missing or not permitted)".to_string(),
            }
        };
        let (calls, floor_calls) = (calls(Child::Scan), calls(Child::Floor));
        let median = |t: &Timings| t.wall[runs / 2];
        let ratio = |a: &Timings, b: &Timings| median(a).as_secs_f64() / median(b).as_secs_f64();
        let row = |what: &str, t: &Timings| {
            println!(
                "  {what:<54} best={:>9.2?} median={:>9.2?} cpu(median)={:>9.2?}",
                t.wall[0],
                median(t),
                t.cpu[runs / 2]
            );
        };
        println!(
            "discovery {label:<30} devices={found:<5} syscalls/device={calls} (tree built in {built:.2?})"
        );
        println!("  floor's syscalls/device={floor_calls}");
        row(&format!("scan on {parts} {threads}:"), &scans);
        row(
            &format!("floor, the same calls on {parts} {threads}:"),
            &floor,
        );
        row(
            &format!("floor on {parts} {processes} (a descriptor table each):"),
            &in_processes,
        );
        if found >= 4096 {
            let one = timed_scans(dir.path(), runs, 1)?;
            let floor_one = timed_floor(dir.path(), runs, 1)?;
            row("scan on one thread:", &one);
            row("floor on one thread:", &floor_one);
            println!(
                "  scan / floor (median): {:.2} on one thread",
                ratio(&one, &floor_one)
            );
        }
        println!(
            "  scan / floor (median): {:.2} on {parts} {threads}; floor on {parts} {processes} / on {parts} {threads}: {:.2}",
            ratio(&scans, &floor),
            ratio(&in_processes, &floor),
        );
        if found >= 4096 {
            let aim = Duration::from_millis(60);
            let of_aim = |t: &Timings| 100.0 * median(t).as_secs_f64() / aim.as_secs_f64();
            // This machine's speed for this kernel-bound work drifts by more than half within an
            // hour; the floor of the same run says which speed the verdict was reached at.
            println!(
                "  aim: 4096 devices under {aim:?} (median of {runs}): median is {:.0}% of it: {} (the floor on {parts} {threads}: {:.0}%)",
                of_aim(&scans),
                if median(&scans) < aim {
                    "met"
                } else {
                    "MISSED"
                },
                of_aim(&floor),
            );
        }
    }
    Ok(())
}
