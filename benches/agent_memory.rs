//! Resident memory of the real node agent (`make bench`): idle, after 1,000 and after 2,000
//! prepare/unprepare cycles of 1-device claims, and the per-cycle latency the kubelet sees.
//! Aims: idle RSS under 20 MiB, and no growth from the first to the second thousand cycles.
//!
//! Growth is judged on the anonymous pages (RssAnon: heap and stacks), where a leak shows.
//! The file-backed rest of VmRSS is the binary's own code and data, paged in as code first
//! runs (a heartbeat path, a rarer branch) and shared with the page cache; it moves by a few
//! dozen KiB once, not per cycle. Long runs of this bench (40,000 cycles) show RssAnon rising
//! by about 150 KiB over the first 20,000 cycles while the allocator's arenas settle, then flat.
//!
//! The agent is the `mock-accel-dra` binary Cargo builds for this bench (same profile, found
//! through `CARGO_BIN_EXE_mock-accel-dra`), run as a child process exactly as a node runs it:
//! a sysfs tree made by `mock-accel-dra sim create`, and every directory in a temp dir on tmpfs
//! (`/dev/shm`) when there is one. Its Kubernetes API is the small fake of
//! `test_support::agent_process`, served by this process over plain HTTP on 127.0.0.1, with
//! one ResourceClaim per cycle allocated one VF of the node. This process then plays the kubelet: registers the plugin and drives NodePrepareResources /
//! NodeUnprepareResources over the DRA socket with the generated v1 client, then stops the
//! agent with SIGTERM and checks that it exits 0 and removes its sockets.
//!
//! `cargo test --all-targets` runs one short pass (debug build) to prove the bench still works.

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use mock_accel_dra::{
    proto::dra_v1::{
        Claim, NodePrepareResourcesRequest, NodeUnprepareResourcesRequest,
        dra_plugin_client::DraPluginClient,
    },
    test_support::{
        agent_process::{FakeApi, LIMIT, Layout, NODE, start_api_server, terminate},
        claims::{allocated_in, result},
        socket::connect,
        stats::percentile,
    },
};
use tonic::transport::Channel;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The binary under test, built by Cargo with this bench's profile.
const AGENT: &str = env!("CARGO_BIN_EXE_mock-accel-dra");
const NS: &str = "bench";
const IDLE_AIM_KIB: u64 = 20 * 1024;
/// RssAnon moves in pages and the allocator keeps freed memory in its arenas, so two readings
/// of a steady process differ by a little; a leak of 64 bytes or more per cycle exceeds this.
const GROWTH_NOISE_KIB: u64 = 64;

/// The claim UID the fake API server gives the claim `name`; the kubelet side uses the same.
fn uid_of(name: &str) -> String {
    let n: u64 = name
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    format!("0b6e7a10-0000-4000-8000-{n:012}")
}

// ---------------------------------------------------------------------------------------------
// The kubelet side
// ---------------------------------------------------------------------------------------------

fn wire_claim(name: &str) -> Claim {
    Claim {
        namespace: NS.into(),
        uid: uid_of(name),
        name: name.into(),
    }
}

/// One prepare + unprepare of a fresh claim of the VF `mock1` of the node's NUMA 0 pool;
/// returns the time of both calls.
async fn cycle(
    api: &FakeApi,
    client: &mut DraPluginClient<Channel>,
    name: &str,
) -> BenchResult<Duration> {
    let uid = uid_of(name);
    api.put_claim(allocated_in(
        NS,
        &uid,
        name,
        vec![result("r0", "mock1", &format!("{NODE}/numa0"))],
    ));
    let start = Instant::now();
    let prepared = client
        .node_prepare_resources(NodePrepareResourcesRequest {
            claims: vec![wire_claim(name)],
        })
        .await?
        .into_inner();
    let unprepared = client
        .node_unprepare_resources(NodeUnprepareResourcesRequest {
            claims: vec![wire_claim(name)],
        })
        .await?
        .into_inner();
    let elapsed = start.elapsed();
    match prepared.claims.get(&uid) {
        Some(answer) if answer.error.is_empty() && answer.devices.len() == 1 => {}
        other => return Err(format!("prepare of {name} failed: {other:?}").into()),
    }
    match unprepared.claims.get(&uid) {
        Some(answer) if answer.error.is_empty() => {}
        other => return Err(format!("unprepare of {name} failed: {other:?}").into()),
    }
    Ok(elapsed)
}

// ---------------------------------------------------------------------------------------------
// The agent process
// ---------------------------------------------------------------------------------------------

/// The memory lines of /proc/<pid>/status, in KiB.
#[derive(Clone, Copy, Debug)]
struct Memory {
    /// VmRSS: resident pages, the number the aims are about.
    rss: u64,
    /// RssAnon: heap and stacks; a leak shows here.
    anon: u64,
    /// RssFile: pages of the binary and libraries, faulted in as code first runs.
    file: u64,
    /// VmHWM: the peak of VmRSS.
    peak: u64,
    threads: u64,
}

impl Memory {
    fn read(pid: u32) -> BenchResult<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path)?;
        let field = |name: &str| -> BenchResult<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .ok_or_else(|| format!("no {name} in {path}").into())
        };
        Ok(Memory {
            rss: field("VmRSS")?,
            anon: field("RssAnon")?,
            file: field("RssFile")?,
            peak: field("VmHWM")?,
            threads: field("Threads")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The measurement
// ---------------------------------------------------------------------------------------------

struct Plan {
    /// Cycles between two memory readings.
    cycles: usize,
    /// Quiet time before each reading, after the agent's status has caught up.
    settle: Duration,
    full: bool,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

async fn run(plan: &Plan, dir: &Path, place: &str) -> BenchResult<()> {
    let (api, port) = start_api_server().await?;
    let layout = Layout::create(Path::new(AGENT), dir, port).await?;

    let mut agent = layout.start_agent(&[])?;
    let pid = agent
        .id()
        .ok_or("the agent exited before its pid was read")?;
    layout.wait_for_socket(&mut agent).await?;
    let endpoint = layout.register().await?;
    let mut client = DraPluginClient::new(connect(&endpoint).await?);

    // Idle: registered, initial status written, nothing prepared.
    api.wait_applied("pluginRegistered true", |a| a.plugin_registered)
        .await?;
    tokio::time::sleep(plan.settle).await;
    let idle = Memory::read(pid)?;

    let mut latencies = Vec::with_capacity(2 * plan.cycles);
    let mut after = Vec::new();
    // Status applies while cycling, and how long the cycling took: the writes per second a
    // node's churn costs the API server (the status writer coalesces them).
    let mut cycle_time = Duration::ZERO;
    let mut churn_applies = 0;
    for phase in 0..2 {
        let cycling = std::time::Instant::now();
        let applies_before = api.applied.borrow().status_applies;
        for i in 0..plan.cycles {
            let name = format!("claim-{}", phase * plan.cycles + i);
            latencies.push(cycle(&api, &mut client, &name).await?);
        }
        cycle_time += cycling.elapsed();
        churn_applies += api.applied.borrow().status_applies - applies_before;
        // Read once the status writer has caught up with the last unprepare (a write of an
        // earlier claim still in flight ends within the settle time).
        api.wait_applied("no prepared claims", |a| a.prepared_claims == 0)
            .await?;
        tokio::time::sleep(plan.settle).await;
        after.push(Memory::read(pid)?);
    }

    terminate(pid).await?;
    let exit = match tokio::time::timeout(LIMIT, agent.wait()).await {
        Ok(status) => status?,
        Err(_) => return Err(format!("the agent did not stop within {LIMIT:?} of SIGTERM").into()),
    };
    let left: Vec<PathBuf> = [layout.registration_socket(), layout.dra_socket()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();

    latencies.sort();
    let (first, second) = (after[0], after[1]);
    let delta = |f: fn(&Memory) -> u64| f(&second) as i64 - f(&first) as i64;
    let growth = delta(|m| m.anon);
    let aim = |met: bool, text: &str| {
        if plan.full {
            format!("aim: {text}: {}", verdict(met))
        } else {
            String::new()
        }
    };
    println!(
        "node agent memory ({AGENT}, data on {place}, {} prepare/unprepare cycles per reading{})",
        plan.cycles,
        if plan.full {
            ""
        } else {
            "; quick pass, not a measurement"
        }
    );
    println!(
        "  {:<28} {:>9} {:>9} {:>9}",
        "", "VmRSS", "RssAnon", "RssFile"
    );
    let row = |label: &str, m: &Memory, note: String| {
        let line = format!(
            "  {label:<28} {:>9} {:>9} {:>9}   {note}",
            mib(m.rss),
            mib(m.anon),
            mib(m.file)
        );
        println!("{}", line.trim_end());
    };
    row(
        "idle (registered, settled)",
        &idle,
        aim(idle.rss < IDLE_AIM_KIB, "under 20 MiB"),
    );
    row(
        &format!("after {} cycles", plan.cycles),
        &first,
        String::new(),
    );
    row(
        &format!("after {} cycles", 2 * plan.cycles),
        &second,
        String::new(),
    );
    let line = format!(
        "  {:<28} {:>+5} KiB {:>+5} KiB {:>+5} KiB   (RssAnon {:+.0} B/cycle)   {}",
        format!("growth, cycles {}..{}", plan.cycles, 2 * plan.cycles),
        delta(|m| m.rss),
        growth,
        delta(|m| m.file),
        growth as f64 * 1024.0 / plan.cycles as f64,
        aim(
            growth <= GROWTH_NOISE_KIB as i64,
            &format!("no RssAnon growth (within {GROWTH_NOISE_KIB} KiB)")
        )
    );
    println!("{}", line.trim_end());
    println!(
        "  peak VmRSS (VmHWM) {}, threads {}",
        mib(second.peak),
        second.threads
    );
    println!(
        "  prepare+unprepare over the DRA socket: p50={:.1?} p99={:.1?} max={:.1?} \
         (claim GET over HTTP included; the 2 ms aim is for the in-process bench)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!(
        "  API requests: node GETs {}, claim GETs {}, status GETs {}, status applies {}, \
         unexpected {}",
        api.node_gets.load(Ordering::Relaxed),
        api.claim_gets.load(Ordering::Relaxed),
        api.status_gets.load(Ordering::Relaxed),
        api.applied.borrow().status_applies,
        api.unexpected.load(Ordering::Relaxed),
    );
    println!(
        "  status applies while cycling: {churn_applies} in {:.1?} ({:.1}/s at {:.0} cycles/s; \
         --status-min-interval {})",
        cycle_time,
        churn_applies as f64 / cycle_time.as_secs_f64(),
        (2 * plan.cycles) as f64 / cycle_time.as_secs_f64(),
        std::env::var("STATUS_MIN_INTERVAL").unwrap_or_else(|_| "1s (default)".into()),
    );
    println!(
        "  SIGTERM: {exit}; sockets left behind: {}",
        if left.is_empty() {
            "none".to_string()
        } else {
            format!("{left:?}")
        }
    );
    if !exit.success() || !left.is_empty() {
        return Err(format!(
            "the agent did not stop cleanly ({exit}, sockets left: {left:?}); {}",
            layout.log_tail()
        )
        .into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file too, and then one
    // short pass is enough to prove it still works.
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full {
        Plan {
            cycles: 1000,
            settle: Duration::from_secs(2),
            full,
        }
    } else {
        Plan {
            cycles: 20,
            settle: Duration::from_millis(100),
            full,
        }
    };
    // tmpfs, as on a real node (CDI specs in /var/run), and so that the checkpoint's file
    // creations on a busy disk do not turn the latency into a disk benchmark.
    let shm = Path::new("/dev/shm");
    let (base, place) = if shm.is_dir() {
        (shm.to_path_buf(), "tmpfs")
    } else {
        (std::env::temp_dir(), "the temp dir")
    };
    let dir = tempfile::tempdir_in(base)?;
    run(&plan, dir.path(), place).await
}
