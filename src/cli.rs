//! Command-line interface of the one `mock-accel-dra` binary: every subcommand and every flag,
//! with the defaults the manifests, the end-to-end harness and the docs rely on. Each flag that
//! a deployment sets also reads an environment variable of the same meaning.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::inventory::DEFAULT_DRIVER_NAME;

#[derive(Parser, Debug)]
#[command(
    name = "mock-accel-dra",
    version,
    about = "Kubernetes DRA driver for mock-accel PCIe accelerators"
)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax (e.g. `info`, `mock_accel_dra=debug`).
    #[arg(long, global = true, default_value = "info", env = "LOG_LEVEL")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
}

/// Parses durations such as `30s`, `2m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 500ms, 30s, 2m)"))
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
}

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
    pub command: crate::sim::SimCommand,
}
