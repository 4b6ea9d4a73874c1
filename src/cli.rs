//! Command-line interface of the one `mock-accel-dra` binary: every subcommand and every flag,
//! with the defaults the manifests, the end-to-end harness and the docs rely on. Each flag that
//! a deployment sets also reads an environment variable of the same meaning.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{inventory::DEFAULT_DRIVER_NAME, telemetry::LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "mock-accel-dra",
    version,
    about = "Kubernetes DRA driver for mock-accel PCIe accelerators"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The logging flags of every subcommand, of both binaries.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax (e.g. `info`, `mock_accel_dra=debug`).
    #[arg(long, global = true, default_value = "info", env = "LOG_LEVEL")]
    pub log_level: String,
}

/// Command line of `mock-accel-node-agent`, the node agent alone in a smaller binary: the same
/// arguments as `mock-accel-dra` with its `node-agent` subcommand, so that a DaemonSet's
/// `args` work with either binary.
#[derive(Parser, Debug)]
#[command(
    name = "mock-accel-node-agent",
    version,
    about = "The node agent of the mock-accel DRA driver (`mock-accel-dra node-agent` alone)"
)]
pub struct NodeAgentCli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: NodeAgentCommand,
}

/// The one subcommand of `mock-accel-node-agent`.
#[derive(Subcommand, Debug)]
pub enum NodeAgentCommand {
    /// Run the per-node agent: discovery, MockAccelNode status, and the kubelet plugin.
    NodeAgent(NodeAgentArgs),
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the cluster-wide controller that owns the ResourceSlices.
    Controller(ControllerArgs),
    /// Run the per-node agent: discovery, MockAccelNode status, and the kubelet plugin.
    NodeAgent(NodeAgentArgs),
    /// Print the devices found under a sysfs root.
    Discover(DiscoverArgs),
    /// Create and change a simulated sysfs tree.
    Sim(SimArgs),
    /// Print the MockAccelNode CustomResourceDefinition YAML.
    Crd,
    /// Simulate many accelerator nodes (Nodes, Leases, MockAccelNodes with agent status) from
    /// one process, for load tests; `--delete` removes them.
    Fleet(FleetArgs),
}

/// Parses durations such as `30s`, `2m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 500ms, 30s, 2m)"))
}

/// Deadlines of every request to the API server (both long-running roles).
#[derive(Args, Debug, Clone)]
pub struct ApiClientArgs {
    /// Deadline for connecting to the API server (TCP and TLS handshake).
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "API_CONNECT_TIMEOUT")]
    pub api_connect_timeout: Duration,
    /// Deadline for the next bytes of an API response (watches excepted: they end on their own
    /// every minute). At most the heartbeat interval, so a hung write costs about one heartbeat.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "API_READ_TIMEOUT")]
    pub api_read_timeout: Duration,
    /// Deadline for writing a request to the API server.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "API_WRITE_TIMEOUT")]
    pub api_write_timeout: Duration,
}

impl ApiClientArgs {
    pub fn timeouts(&self) -> crate::kube_client::Timeouts {
        crate::kube_client::Timeouts {
            connect: self.api_connect_timeout,
            read: self.api_read_timeout,
            write: self.api_write_timeout,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// DRA driver name: `spec.driver` of the slices and the domain of their attributes and
    /// capacity. The shipped DeviceClasses, examples and claims select `mock-accel.example.com`
    /// by name: change them with it.
    #[arg(long, default_value = DEFAULT_DRIVER_NAME, env = "DRIVER_NAME")]
    pub driver_name: String,
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080", env = "METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// How long a node agent may go without a heartbeat (or with its plugin unregistered)
    /// before its node's slices are withdrawn.
    #[arg(long, default_value = "40s", value_parser = parse_duration, env = "AGENT_GRACE_PERIOD")]
    pub agent_grace_period: Duration,
    /// Take part in leader election on a Lease (turn off only when running one replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "mock-accel-controller", env = "LEASE_NAME")]
    pub lease_name: String,
    /// Namespace of the Lease.
    #[arg(long, default_value = "mock-device", env = "POD_NAMESPACE")]
    pub lease_namespace: String,
    /// Identity of this replica in the Lease (defaults to the pod name, else the hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration; a new leader takes over at most this long after the old one vanished.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "LEASE_DURATION")]
    pub lease_duration: Duration,
    /// Publish each card (a PF and its VFs) as shared counters so that a PF and its own VFs
    /// exclude each other: `auto` when the API server accepts them (checked at start-up by a
    /// server-side dry run), `on` always, `off` never.
    #[arg(long, value_enum, default_value_t = Partitionable::Auto, env = "PARTITIONABLE")]
    pub partitionable: Partitionable,
    /// Let nodes labelled `mock-accel.example.com/pf-sharing=shared` publish their PFs in
    /// shares of their memory (consumable capacity): `auto` when the API server keeps
    /// `allowMultipleAllocations` and a capacity request policy (checked at start-up by a
    /// server-side dry run), `on` always, `off` never (labelled nodes then get whole PFs).
    #[arg(long, value_enum, default_value_t = FeatureMode::Auto, env = "CONSUMABLE_CAPACITY")]
    pub consumable_capacity: FeatureMode,
    /// Let nodes labelled `mock-accel.example.com/attachment=fabric` publish devices that wait
    /// for attachment before a pod binds (binding conditions), and run the attacher that sets
    /// the conditions: `auto` when the API server keeps `bindingConditions` (one server-side
    /// dry run at start-up), `on` always, `off` never.
    #[arg(long, value_enum, default_value_t = FeatureMode::Auto, env = "BINDING_CONDITIONS")]
    pub binding_conditions: FeatureMode,
    /// How long after a claim's allocation the attacher reports its devices attached (or,
    /// when the claim's `mock-accel.example.com/attach-fail` annotation names the node, failed;
    /// never on the nodes its `mock-accel.example.com/attach-never` annotation names).
    #[arg(long, default_value = "3s", value_parser = parse_duration, env = "ATTACH_DELAY")]
    pub attach_delay: Duration,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

/// An optional API feature the controller publishes: `auto` asks the API server, `on` and
/// `off` decide without asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FeatureMode {
    Auto,
    On,
    Off,
}

/// `--partitionable` of the controller.
pub type Partitionable = FeatureMode;

#[derive(Args, Debug, Clone)]
pub struct NodeAgentArgs {
    /// DRA driver name: registered with the kubelet; names the sockets and the CDI kind; selects
    /// this driver's allocation results. Must equal the controller's `--driver-name`.
    #[arg(long, default_value = DEFAULT_DRIVER_NAME, env = "DRIVER_NAME")]
    pub driver_name: String,
    /// Name of the Node this agent runs on.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Root of the sysfs tree to scan (the directory that holds `class/mock-accel`).
    #[arg(long, default_value = "/sys", env = "SYSFS_ROOT")]
    pub sysfs_root: PathBuf,
    /// Root of the device-node tree (`/dev/<sysfs name>` is looked up here).
    #[arg(long, default_value = "/dev", env = "DEV_ROOT")]
    pub dev_root: PathBuf,
    /// Directory for the per-claim CDI spec files (tmpfs on real hosts).
    #[arg(long, default_value = "/var/run/cdi", env = "CDI_DIR")]
    pub cdi_dir: PathBuf,
    /// Directory the kubelet watches for plugin registration sockets.
    #[arg(
        long,
        default_value = "/var/lib/kubelet/plugins_registry",
        env = "REGISTRY_DIR"
    )]
    pub registry_dir: PathBuf,
    /// The plugin's private data directory: holds dra.sock and the checkpoint.
    #[arg(
        long,
        default_value = "/var/lib/kubelet/plugins/mock-accel.example.com",
        env = "PLUGIN_DIR"
    )]
    pub plugin_dir: PathBuf,
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8081", env = "METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Full rescan interval, the safety net under inotify (real sysfs raises no inotify events).
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "RESYNC_INTERVAL")]
    pub resync_interval: Duration,
    /// Interval of the heartbeat written into MockAccelNode.status.agent.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Duration,
    /// UID of the node agent's pod (downward API `metadata.uid`): when set, the registration
    /// and DRA sockets carry it in their names, so that the old and the new pod of a rolling
    /// update serve side by side.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// Interval of the stale-claim check (also run at start): prepared claims the API no
    /// longer holds for this node (deleted, re-created with another UID, allocated elsewhere)
    /// are unprepared by the agent itself.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "STALE_CLAIM_INTERVAL")]
    pub stale_claim_interval: Duration,
    /// Build and keep a simulated device tree under --sim-root (from the node's
    /// MockAccelNode spec.simulation, the canonical layout by default) instead of reading the
    /// kernel module's devices under --sysfs-root.
    #[arg(long, env = "SIMULATE")]
    pub simulate: bool,
    /// With --simulate: the simulated tree (its `class/mock-accel`). Must be the same path on
    /// the host and in the agent's container: CDI specs name it as the host path of mounts.
    #[arg(long, default_value = "/var/run/mock-accel/sim", env = "SIM_ROOT")]
    pub sim_root: PathBuf,
    /// With --simulate: the node number in the simulated UUIDs (`NODE<N>-NUMA0-PF`), 1-9.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9), env = "SIM_NODE_INDEX")]
    pub sim_node_index: u32,
    /// Shortest time between two MockAccelNode status writes, and between two rounds of
    /// writes of the prepared claims' `status.devices`: changes (prepares, unprepares,
    /// rescans) that arrive sooner are coalesced into one write at the end of it, so a node's
    /// status writes per second stay bounded whatever the prepare rate. The first change after
    /// a quiet spell is written at once. 0 writes every change.
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "STATUS_MIN_INTERVAL")]
    pub status_min_interval: Duration,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Number of simulated nodes to create and keep fresh (required unless --delete).
    #[arg(long, required_unless_present = "delete")]
    pub nodes: Option<usize>,
    /// Devices per node: cards of a PF and two static VFs alternating between NUMA 0 and 1 (6
    /// is the canonical node).
    #[arg(long, default_value_t = 6)]
    pub devices_per_node: usize,
    /// Interval of each node's heartbeat (its MockAccelNode agent status and its node Lease);
    /// must stay below the controller's --agent-grace-period.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Node name prefix; the nodes are `<prefix>0000`, `<prefix>0001`, ... and the fleet's name
    /// (label value of everything it creates) is the prefix without a trailing `-`.
    #[arg(long, default_value = "fleet-")]
    pub prefix: String,
    /// Requests in flight at once, while creating and while beating.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Delete the fleet of --prefix (its Nodes, Leases and MockAccelNodes, by label) and wait
    /// until its slices are withdrawn, instead of creating one.
    #[arg(long, conflicts_with_all = ["nodes"])]
    pub delete: bool,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DiscoverArgs {
    /// Root of the sysfs tree to scan.
    #[arg(long, default_value = "/sys", env = "SYSFS_ROOT")]
    pub sysfs_root: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    #[command(subcommand)]
    pub command: SimCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SimCommand {
    /// Create a tree under --root (which must not already hold mock-accel devices).
    Create(CreateArgs),
    /// Write the class attribute sriov_numvfs of a PF: 0 removes its VFs, N>0 replaces them
    /// with N real SR-IOV VFs mock<P>_vf<I>.
    SetNumvfs(SetNumvfsArgs),
    /// Hot-add a PF or static VF at a PCI address.
    AddDevice(AddDeviceArgs),
    /// Hot-remove a device with its PCI function directory and links (a PF's VFs go with it).
    RemoveDevice(RemoveDeviceArgs),
    /// Write the status register; the file then reads back as 0x%08x like the kernel's.
    SetStatus(SetStatusArgs),
    /// Run until killed, applying the kernel's reaction to writes: sriov_numvfs writes create
    /// and remove VFs, status writes are normalised to 0x%08x (invalid ones are undone).
    Watch(WatchArgs),
}

/// Preset topologies (sysfs contract §9 and §3). The explanations live on `--topology`: doc
/// comments on the variants would switch clap's `--help` to its spaced long layout.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    // One node of the two-node cluster: per NUMA node a PF and two static VFs (mock0..mock5).
    Canonical,
    // PFs only (11:00.0 and 21:00.0) with SR-IOV; VFs appear when sriov_numvfs is written.
    Sriov,
    // The canonical layout on a machine without NUMA information (numa_node -1).
    NumaNone,
    // Sizes from --numa-nodes, --pfs-per-numa and --vfs-per-pf (static VFs, or --sriov).
    Custom,
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Root of the simulated sysfs tree (plays the role of /sys).
    #[arg(long)]
    pub root: PathBuf,
    /// Also create `<dev-root>/<name>` stand-ins for the character devices (mode 0600).
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// canonical: PF + 2 static VFs per NUMA node (mock0..mock5); sriov: 2 PFs, VFs via
    /// sriov_numvfs; numa-none: canonical with numa_node -1; custom: sizes from the flags below.
    #[arg(long, value_enum, default_value_t = Topology::Canonical)]
    pub topology: Topology,
    /// Which cluster node the UUIDs belong to (`NODE<N>-NUMA0-PF` ...).
    #[arg(long, default_value_t = 1)]
    pub node_index: u32,
    /// Custom: NUMA nodes (1-15).
    #[arg(long)]
    pub numa_nodes: Option<u32>,
    /// Custom: PFs per NUMA node.
    #[arg(long)]
    pub pfs_per_numa: Option<u32>,
    /// Custom: VFs per PF (0-7).
    #[arg(long)]
    pub vfs_per_pf: Option<u32>,
    /// Custom: make the VFs real SR-IOV VFs (mock<P>_vf<I> with physfn links) instead of static
    /// functions.
    #[arg(long)]
    pub sriov: bool,
    /// sriov_totalvfs of each PF (default 4 for sriov, 2 for canonical, else the VFs per PF).
    #[arg(long)]
    pub total_vfs: Option<u32>,
    /// PFs report memory_size 0, as the real kernel does for 16 GiB PFs (contract §2).
    #[arg(long)]
    pub pf_memory_zero: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SetNumvfsArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Directory of the character device stand-ins, kept in step with the tree.
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// Class name of the PF (e.g. mock0).
    #[arg(long)]
    pub device: String,
    /// Number of VFs (0 removes them; at most sriov_totalvfs).
    #[arg(long)]
    pub count: u32,
}

/// PF or static VF, for `sim add-device`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionKind {
    Pf,
    Vf,
}

#[derive(Args, Debug, Clone)]
pub struct AddDeviceArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Directory of the character device stand-ins, kept in step with the tree.
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// PCI address of the new function, e.g. 0000:31:00.0.
    #[arg(long)]
    pub bdf: String,
    /// NUMA node, or -1 for none.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub numa_node: i32,
    /// PF (PCI device 0x0001) or static VF (0x0002).
    #[arg(long = "type", value_enum, default_value_t = FunctionKind::Pf)]
    pub kind: FunctionKind,
    /// Class name; default mock<lowest free minor>, as the kernel names it.
    #[arg(long)]
    pub name: Option<String>,
    /// The device server's `-u` string (first 16 bytes become the UUID).
    #[arg(long)]
    pub uuid_string: Option<String>,
    /// memory_size in bytes (default 16 GiB for a PF, 2 GiB for a VF).
    #[arg(long)]
    pub memory: Option<u64>,
    /// PF: sriov_totalvfs (0-7).
    #[arg(long, default_value_t = 4)]
    pub total_vfs: u32,
}

#[derive(Args, Debug, Clone)]
pub struct RemoveDeviceArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Directory of the character device stand-ins, kept in step with the tree.
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// Class name of the device (e.g. mock3, mock0_vf1).
    #[arg(long)]
    pub device: String,
}

#[derive(Args, Debug, Clone)]
pub struct SetStatusArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Class name of the device (e.g. mock3, mock0_vf1).
    #[arg(long)]
    pub device: String,
    /// Decimal, 0x hex or 0-prefixed octal, as the kernel's kstrtou32 accepts.
    #[arg(long)]
    pub value: String,
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Root of the simulated sysfs tree.
    #[arg(long)]
    pub root: PathBuf,
    /// Directory of the character device stand-ins, kept in step with the tree.
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
}
