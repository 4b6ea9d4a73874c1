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
//! (`/dev/shm`) when there is one. Its Kubernetes API is a small fake served by this process
//! over plain HTTP on 127.0.0.1 (a kubeconfig in `KUBECONFIG` points at it): the Node, the
//! node's MockAccelNode (server-side apply of the object and of its status, status GET) and
//! ResourceClaims allocated one VF of the node; anything else is logged and answered 404.
//! This process then plays the kubelet: registers the plugin and drives NodePrepareResources /
//! NodeUnprepareResources over the DRA socket with the generated v1 client, then stops the
//! agent with SIGTERM and checks that it exits 0 and removes its sockets.
//!
//! `cargo test --all-targets` runs one short pass (debug build) to prove the bench still works.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::{Method, StatusCode, Uri},
    routing::get,
};
use k8s_openapi::{
    api::{
        core::v1::Node,
        resource::v1::{
            AllocationResult, DeviceAllocationResult, DeviceRequestAllocationResult, ResourceClaim,
            ResourceClaimStatus,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use mock_accel_dra::{
    proto::{
        dra_v1::{
            Claim, NodePrepareResourcesRequest, NodeUnprepareResourcesRequest,
            dra_plugin_client::DraPluginClient,
        },
        pluginregistration::{
            InfoRequest, RegistrationStatus, registration_client::RegistrationClient,
        },
    },
    test_support::{socket::connect, stats::percentile},
};
use serde_json::{Value, json};
use tokio::{process::Command, sync::watch};
use tonic::transport::Channel;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The binary under test, built by Cargo with this bench's profile.
const AGENT: &str = env!("CARGO_BIN_EXE_mock-accel-dra");
const DRIVER: &str = "mock-accel.example.com";
const NODE: &str = "bench-node";
const NODE_UID: &str = "6d0c1a52-0000-4000-8000-000000000001";
const NS: &str = "bench";
const CRD_PATH: &str = "/apis/mock-accel.example.com/v1alpha1/mockaccelnodes";
/// How long any cross-process step (start-up, status catching up, exit) may take.
const LIMIT: Duration = Duration::from_secs(30);
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
// The fake Kubernetes API server
// ---------------------------------------------------------------------------------------------

/// What the agent last wrote into its MockAccelNode status, as far as the bench cares.
#[derive(Clone, Debug, Default, PartialEq)]
struct Applied {
    status_applies: usize,
    plugin_registered: bool,
    prepared_claims: i64,
}

#[derive(Default)]
struct ApiState {
    /// The node's MockAccelNode as applied so far (`Null` until the agent creates it).
    object: Mutex<Value>,
    applied: watch::Sender<Applied>,
    node_gets: AtomicUsize,
    claim_gets: AtomicUsize,
    status_gets: AtomicUsize,
    unexpected: AtomicUsize,
}

type Reply = (StatusCode, Json<Value>);

fn not_found(what: &str) -> Reply {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("{what} not found"),
        })),
    )
}

fn to_reply<T: serde::Serialize>(object: &T) -> Reply {
    match serde_json::to_value(object) {
        Ok(value) => (StatusCode::OK, Json(value)),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"kind": "Status", "code": 500, "message": e.to_string()})),
        ),
    }
}

async fn get_node(State(api): State<Arc<ApiState>>, UrlPath(name): UrlPath<String>) -> Reply {
    api.node_gets.fetch_add(1, Ordering::Relaxed);
    if name != NODE {
        return not_found(&format!("nodes {name}"));
    }
    to_reply(&Node {
        metadata: ObjectMeta {
            name: Some(name),
            uid: Some(NODE_UID.into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// A ResourceClaim allocated the VF `mock1` of this node's NUMA 0 pool for request `r0`.
async fn get_claim(
    State(api): State<Arc<ApiState>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Reply {
    api.claim_gets.fetch_add(1, Ordering::Relaxed);
    to_reply(&ResourceClaim {
        metadata: ObjectMeta {
            namespace: Some(namespace),
            uid: Some(uid_of(&name)),
            name: Some(name),
            ..Default::default()
        },
        spec: Default::default(),
        status: Some(ResourceClaimStatus {
            allocation: Some(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    results: Some(vec![DeviceRequestAllocationResult {
                        driver: DRIVER.into(),
                        pool: format!("{NODE}/numa0"),
                        device: "mock1".into(),
                        request: "r0".into(),
                        ..Default::default()
                    }]),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

/// Server-side apply, reduced to what the agent sends: the patch's `metadata` fields, `spec`
/// and `status` replace the stored ones.
fn apply(api: &ApiState, name: &str, body: &[u8]) -> Reply {
    if name != NODE {
        return not_found(&format!("mockaccelnodes {name}"));
    }
    let patch: Value = match serde_json::from_slice(body) {
        Ok(patch) => patch,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"kind": "Status", "code": 400, "message": e.to_string()})),
            );
        }
    };
    let mut object = api
        .object
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if object.is_null() {
        *object = json!({
            "apiVersion": "mock-accel.example.com/v1alpha1", "kind": "MockAccelNode",
            "metadata": {"name": NODE, "uid": "7f1e2d3c-0000-4000-8000-000000000002",
                         "generation": 1, "resourceVersion": "0"},
        });
    }
    if let (Some(stored), Some(given)) = (
        object["metadata"].as_object_mut(),
        patch.get("metadata").and_then(Value::as_object),
    ) {
        for (key, value) in given {
            stored.insert(key.clone(), value.clone());
        }
    }
    for key in ["spec", "status"] {
        if let Some(value) = patch.get(key) {
            object[key] = value.clone();
        }
    }
    let version = object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    object["metadata"]["resourceVersion"] = json!((version + 1).to_string());
    if patch.get("status").is_some() {
        let status = &object["status"];
        api.applied.send_modify(|applied| {
            applied.status_applies += 1;
            applied.plugin_registered = status["agent"]["pluginRegistered"] == json!(true);
            applied.prepared_claims = status["preparedClaimCount"].as_i64().unwrap_or(0);
        });
    }
    (StatusCode::OK, Json(object.clone()))
}

async fn apply_object(
    State(api): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply {
    apply(&api, &name, &body)
}

async fn get_status(State(api): State<Arc<ApiState>>, UrlPath(name): UrlPath<String>) -> Reply {
    api.status_gets.fetch_add(1, Ordering::Relaxed);
    let object = api
        .object
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    if name != NODE || object.is_null() {
        return not_found(&format!("mockaccelnodes {name}"));
    }
    (StatusCode::OK, Json(object))
}

async fn unexpected(State(api): State<Arc<ApiState>>, method: Method, uri: Uri) -> Reply {
    api.unexpected.fetch_add(1, Ordering::Relaxed);
    eprintln!("fake API server: unexpected {method} {uri}, answered 404");
    not_found(&uri.to_string())
}

/// Serves the fake API on an ephemeral port of 127.0.0.1; returns its state and port.
async fn start_api_server() -> BenchResult<(Arc<ApiState>, u16)> {
    let api = Arc::new(ApiState::default());
    let app = Router::new()
        .route("/api/v1/nodes/{name}", get(get_node))
        .route(
            &format!("{CRD_PATH}/{{name}}"),
            axum::routing::patch(apply_object),
        )
        .route(
            &format!("{CRD_PATH}/{{name}}/status"),
            get(get_status).patch(apply_object),
        )
        .route(
            "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}",
            get(get_claim),
        )
        .fallback(unexpected)
        .with_state(Arc::clone(&api));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("fake API server stopped: {e}");
        }
    });
    Ok((api, port))
}

fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: http://127.0.0.1:{port}
users:
- name: bench
  user: {{}}
contexts:
- name: bench
  context:
    cluster: bench
    user: bench
current-context: bench
"
    )
}

/// Waits until the agent's applied status satisfies `done`.
async fn wait_applied(
    api: &ApiState,
    what: &str,
    done: impl Fn(&Applied) -> bool,
) -> BenchResult<()> {
    let mut applied = api.applied.subscribe();
    match tokio::time::timeout(LIMIT, applied.wait_for(|a| done(a))).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(format!(
            "the agent did not write a MockAccelNode status with {what} within {LIMIT:?} \
             (last: {:?})",
            *api.applied.borrow()
        )
        .into()),
    }
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

/// One prepare + unprepare of a fresh 1-device claim; returns the time of both calls.
async fn cycle(client: &mut DraPluginClient<Channel>, name: &str) -> BenchResult<Duration> {
    let uid = uid_of(name);
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

/// Where the agent's files live.
struct Layout {
    sys: PathBuf,
    dev: PathBuf,
    cdi: PathBuf,
    registry: PathBuf,
    plugin: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        Layout {
            sys: dir.join("sys"),
            dev: dir.join("dev"),
            cdi: dir.join("cdi"),
            registry: dir.join("plugins_registry"),
            plugin: dir.join("plugins").join(DRIVER),
            kubeconfig: dir.join("kubeconfig"),
            log: dir.join("agent.log"),
        }
    }

    fn registration_socket(&self) -> PathBuf {
        self.registry.join(format!("{DRIVER}-reg.sock"))
    }

    fn dra_socket(&self) -> PathBuf {
        self.plugin.join("dra.sock")
    }
}

/// The end of the agent's log, for error messages.
fn log_tail(layout: &Layout) -> String {
    let log = std::fs::read_to_string(&layout.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("agent log {} ends with:\n{tail}", layout.log.display())
}

async fn create_sysfs(layout: &Layout) -> BenchResult<()> {
    let output = Command::new(AGENT)
        .arg("sim")
        .arg("create")
        .arg("--root")
        .arg(&layout.sys)
        .arg("--dev-root")
        .arg(&layout.dev)
        .args(["--topology", "canonical"])
        .output()
        .await?;
    if !output.status.success() {
        return Err(format!(
            "{AGENT} sim create failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

fn start_agent(layout: &Layout) -> BenchResult<tokio::process::Child> {
    let log = std::fs::File::create(&layout.log)?;
    let child = Command::new(AGENT)
        .arg("node-agent")
        .args(["--node-name", NODE, "--driver-name", DRIVER])
        .arg("--sysfs-root")
        .arg(&layout.sys)
        .arg("--dev-root")
        .arg(&layout.dev)
        .arg("--cdi-dir")
        .arg(&layout.cdi)
        .arg("--registry-dir")
        .arg(&layout.registry)
        .arg("--plugin-dir")
        .arg(&layout.plugin)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &layout.kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// Polls for the registration socket, as the kubelet's plugin watcher notices it.
async fn wait_for_socket(agent: &mut tokio::process::Child, layout: &Layout) -> BenchResult<()> {
    let socket = layout.registration_socket();
    let deadline = Instant::now() + LIMIT;
    while !socket.exists() {
        if let Some(status) = agent.try_wait()? {
            return Err(format!("the agent exited early ({status}); {}", log_tail(layout)).into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {} after {LIMIT:?}; {}",
                socket.display(),
                log_tail(layout)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// GetInfo and NotifyRegistrationStatus(true), as the kubelet does; returns the DRA endpoint.
async fn register(layout: &Layout) -> BenchResult<PathBuf> {
    let mut registration = RegistrationClient::new(connect(&layout.registration_socket()).await?);
    let info = registration.get_info(InfoRequest {}).await?.into_inner();
    if info.name != DRIVER || !info.supported_versions.iter().any(|v| v == "v1.DRAPlugin") {
        return Err(format!("unexpected plugin info: {info:?}").into());
    }
    registration
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await?;
    Ok(PathBuf::from(info.endpoint))
}

/// Sends SIGTERM (through `kill(1)`: the crate has no signal binding and no `unsafe`).
async fn terminate(pid: u32) -> BenchResult<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    if !status.success() {
        return Err(format!("kill -TERM {pid} failed: {status}").into());
    }
    Ok(())
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
    let layout = Layout::new(dir);
    let (api, port) = start_api_server().await?;
    std::fs::write(&layout.kubeconfig, kubeconfig(port))?;
    create_sysfs(&layout).await?;

    let mut agent = start_agent(&layout)?;
    let pid = agent
        .id()
        .ok_or("the agent exited before its pid was read")?;
    wait_for_socket(&mut agent, &layout).await?;
    let endpoint = register(&layout).await?;
    let mut client = DraPluginClient::new(connect(&endpoint).await?);

    // Idle: registered, initial status written, nothing prepared.
    wait_applied(&api, "pluginRegistered true", |a| a.plugin_registered).await?;
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
            latencies.push(cycle(&mut client, &name).await?);
        }
        cycle_time += cycling.elapsed();
        churn_applies += api.applied.borrow().status_applies - applies_before;
        // Read once the status writer has caught up with the last unprepare (a write of an
        // earlier claim still in flight ends within the settle time).
        wait_applied(&api, "no prepared claims", |a| a.prepared_claims == 0).await?;
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
            log_tail(&layout)
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
    // tmpfs, as on a real node (CDI specs in /var/run), and so that the checkpoint's fsync
    // does not turn the latency into a disk benchmark.
    let shm = Path::new("/dev/shm");
    let (base, place) = if shm.is_dir() {
        (shm.to_path_buf(), "tmpfs")
    } else {
        (std::env::temp_dir(), "the temp dir")
    };
    let dir = tempfile::tempdir_in(base)?;
    run(&plan, dir.path(), place).await
}
