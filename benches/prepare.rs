//! Prepare+unprepare latency and throughput of 1-device claims (`make bench`): the kubelet's
//! path over the DRA Unix socket (generated v1 client, real servers, real `Preparer` on a
//! simulated node), and direct calls to the same `Preparer`, measured in the same run and
//! interleaved cycle by cycle, so that their ratio is the cost of the socket and gRPC layer.
//! Aim: p99 under 2 ms in-process.
//!
//! Each cycle prepares and then unprepares a fresh claim (new UID, one VF). Plugin data and
//! CDI directories live on tmpfs (`/dev/shm`) and, in the full run, also on the temp dir's
//! disk, where the checkpoint's file creations and renames cost more (it is not flushed to
//! disk: see `atomic_file`). `cargo test --all-targets` runs one short pass to prove the bench
//! still works.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::resource::v1::{
        AllocationResult, DeviceAllocationResult, DeviceRequestAllocationResult, ResourceClaim,
        ResourceClaimStatus,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use mock_accel_dra::{
    inventory::Inventory,
    plugin::{
        ClaimHandler, ClaimRef, ClaimSource,
        metrics::PrepareMetrics,
        prepare::{Preparer, PreparerConfig},
        server::{PluginConfig, serve},
    },
    proto::{
        dra_v1::{
            Claim, NodePrepareResourcesRequest, NodeUnprepareResourcesRequest,
            dra_plugin_client::DraPluginClient,
        },
        pluginregistration::{InfoRequest, registration_client::RegistrationClient},
    },
    sim::{self, TopologySpec},
    sysfs,
    test_support::{socket::connect, stats::percentile},
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const DRIVER: &str = "mock-accel.example.com";
const NODE: &str = "bench-node";
const NS: &str = "bench";

/// Answers every GET with a claim named like the request, allocated one VF of this node.
struct SyntheticClaims;

impl ClaimSource for SyntheticClaims {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, String> {
        Ok(Some(ResourceClaim {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                uid: Some(uid_of(name)),
                ..Default::default()
            },
            spec: Default::default(),
            status: Some(ResourceClaimStatus {
                allocation: Some(AllocationResult {
                    devices: Some(DeviceAllocationResult {
                        results: Some(vec![DeviceRequestAllocationResult {
                            driver: DRIVER.into(),
                            request: "vf".into(),
                            device: "mock1".into(),
                            pool: format!("{NODE}/numa0"),
                            ..Default::default()
                        }]),
                        config: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }))
    }
}

fn uid_of(name: &str) -> String {
    format!("uid-{name}")
}

/// Durations of one kind of call, in the order measured.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn percentile(&self, q: f64) -> Duration {
        percentile(&self.0, q)
    }

    fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

/// Per-cycle times of prepare, unprepare and both.
#[derive(Default)]
struct Measured {
    prepare: Samples,
    unprepare: Samples,
    cycle: Samples,
}

impl Measured {
    fn record(&mut self, prepare: Duration, unprepare: Duration) {
        self.prepare.0.push(prepare);
        self.unprepare.0.push(unprepare);
        self.cycle.0.push(prepare + unprepare);
    }

    fn print(&self, label: &str) {
        let throughput = self.cycle.0.len() as f64 / self.cycle.total().as_secs_f64();
        println!(
            "  {label:<22} cycle p50={:>9.1?} p99={:>9.1?} | prepare p50={:>9.1?} p99={:>9.1?} \
             | unprepare p50={:>9.1?} p99={:>9.1?} | {throughput:>6.0} claims/s",
            self.cycle.percentile(0.50),
            self.cycle.percentile(0.99),
            self.prepare.percentile(0.50),
            self.prepare.percentile(0.99),
            self.unprepare.percentile(0.50),
            self.unprepare.percentile(0.99),
        );
    }
}

fn claim_ref(name: &str) -> ClaimRef {
    ClaimRef {
        namespace: NS.into(),
        uid: uid_of(name),
        name: name.into(),
    }
}

fn wire_claim(name: &str) -> Claim {
    Claim {
        namespace: NS.into(),
        uid: uid_of(name),
        name: name.into(),
    }
}

async fn direct_cycle(
    preparer: &Preparer<SyntheticClaims>,
    name: &str,
) -> BenchResult<(Duration, Duration)> {
    let start = Instant::now();
    let prepared = preparer.prepare(vec![claim_ref(name)]).await;
    let prepare = start.elapsed();
    if let Some(Err(error)) = prepared.get(&uid_of(name)) {
        return Err(format!("direct prepare of {name} failed: {error}").into());
    }
    let start = Instant::now();
    let unprepared = preparer.unprepare(vec![claim_ref(name)]).await;
    let unprepare = start.elapsed();
    if let Some(Err(error)) = unprepared.get(&uid_of(name)) {
        return Err(format!("direct unprepare of {name} failed: {error}").into());
    }
    Ok((prepare, unprepare))
}

async fn socket_cycle(
    client: &mut DraPluginClient<Channel>,
    name: &str,
) -> BenchResult<(Duration, Duration)> {
    let start = Instant::now();
    let prepared = client
        .node_prepare_resources(NodePrepareResourcesRequest {
            claims: vec![wire_claim(name)],
        })
        .await?
        .into_inner();
    let prepare = start.elapsed();
    let error = prepared.claims.get(&uid_of(name)).map(|a| a.error.as_str());
    if error != Some("") {
        return Err(format!("prepare of {name} over the socket failed: {error:?}").into());
    }
    let start = Instant::now();
    let unprepared = client
        .node_unprepare_resources(NodeUnprepareResourcesRequest {
            claims: vec![wire_claim(name)],
        })
        .await?
        .into_inner();
    let unprepare = start.elapsed();
    let error = unprepared
        .claims
        .get(&uid_of(name))
        .map(|a| a.error.as_str());
    if error != Some("") {
        return Err(format!("unprepare of {name} over the socket failed: {error:?}").into());
    }
    Ok((prepare, unprepare))
}

/// Resident set size of this process, from /proc (Linux only; `None` elsewhere).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn run(label: &str, dir: &Path, warmup: usize, cycles: usize, full: bool) -> BenchResult<()> {
    let sysfs_root = dir.join("sys");
    sim::create(&sysfs_root, None, &TopologySpec::canonical(1))?;
    let scan = sysfs::scan(&sysfs_root)?;
    let (_inventory_tx, inventory) =
        watch::channel(Arc::new(Inventory::new(scan.inventory.devices)));
    let plugin = PluginConfig {
        driver_name: DRIVER.into(),
        registry_dir: dir.join("plugins_registry"),
        plugin_dir: dir.join("plugins").join(DRIVER),
        pod_uid: None,
    };
    let config = PreparerConfig {
        driver_name: DRIVER.into(),
        node_name: NODE.into(),
        sysfs_root,
        dev_root: dir.join("dev"),
        cdi_dir: dir.join("cdi"),
        plugin_dir: plugin.plugin_dir.clone(),
        layout: Default::default(),
    };
    let metrics = PrepareMetrics::register(&mut Registry::default());
    let preparer = Arc::new(Preparer::new(config, inventory, SyntheticClaims, metrics)?);
    let shutdown = CancellationToken::new();
    let handle = serve(plugin, Arc::clone(&preparer), shutdown.clone()).await?;
    let mut client = DraPluginClient::new(connect(handle.dra_socket()).await?);

    let mut socket = Measured::default();
    let mut direct = Measured::default();
    let mut rss_after_warmup = None;
    for i in 0..warmup + cycles {
        if i == warmup {
            rss_after_warmup = rss_kib();
        }
        // Interleaved, so that both paths see the same machine load.
        let (prepare, unprepare) = direct_cycle(&preparer, &format!("direct-{i}")).await?;
        if i >= warmup {
            direct.record(prepare, unprepare);
        }
        let (prepare, unprepare) = socket_cycle(&mut client, &format!("socket-{i}")).await?;
        if i >= warmup {
            socket.record(prepare, unprepare);
        }
    }
    let rss_after_cycles = rss_kib();

    // The floor of any call over a socket: a gRPC round trip that does no work.
    let mut registration = RegistrationClient::new(connect(handle.registration_socket()).await?);
    let mut empty = Samples::default();
    for _ in 0..cycles {
        let start = Instant::now();
        registration.get_info(InfoRequest {}).await?;
        empty.0.push(start.elapsed());
    }

    println!("prepare+unprepare of 1-device claims, data on {label}, {cycles} cycles each");
    socket.print("over the Unix socket");
    direct.print("direct Preparer calls");
    let aim = Duration::from_millis(2);
    let p99 = socket.cycle.percentile(0.99);
    if full {
        println!(
            "  aim: prepare+unprepare p99 under {aim:?} in-process (over the socket): {}",
            if p99 < aim { "met" } else { "MISSED" }
        );
    }
    let ratio =
        |q| socket.cycle.percentile(q).as_secs_f64() / direct.cycle.percentile(q).as_secs_f64();
    println!(
        "  socket overhead: p50 x{:.2} (+{:.1?}), p99 x{:.2}",
        ratio(0.50),
        socket
            .cycle
            .percentile(0.50)
            .saturating_sub(direct.cycle.percentile(0.50)),
        ratio(0.99),
    );
    println!(
        "  empty gRPC round trip (GetInfo): p50={:.1?} p99={:.1?}",
        empty.percentile(0.50),
        empty.percentile(0.99)
    );
    if let (Some(before), Some(after)) = (rss_after_warmup, rss_after_cycles) {
        println!(
            "  bench process RSS: {before} KiB after warm-up, {after} KiB after {} more prepare/unprepare pairs",
            2 * cycles
        );
    }

    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file too, and then one
    // short pass is enough to prove it still works.
    let full = std::env::args().any(|a| a == "--bench");
    let (warmup, cycles) = if full { (100, 2000) } else { (2, 20) };

    let shm = Path::new("/dev/shm");
    let mut places: Vec<(&str, PathBuf)> = Vec::new();
    if shm.is_dir() {
        places.push(("tmpfs", shm.to_path_buf()));
    }
    if full || places.is_empty() {
        places.push(("disk (temp dir)", std::env::temp_dir()));
    }
    for (label, base) in places {
        let dir = tempfile::tempdir_in(&base)?;
        run(label, dir.path(), warmup, cycles, full).await?;
    }
    Ok(())
}
