//! Entry point of `mock-accel-dra`: parses the command line and runs one role.

use anyhow::Context;
use clap::Parser;
use mock_accel_dra::{
    agent,
    cli::{Cli, Command},
    controller, crd, discover, fleet, sim, telemetry,
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Two rustls crypto providers end up linked when test-only dependencies unify features;
    // pick ring (kube's default) so TLS never panics on an ambiguous choice.
    let _ = rustls::crypto::ring::default_provider().install_default();
    telemetry::init_logging(cli.log_format, &cli.log_level)?;
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml().context("rendering the CRD")?);
            Ok(())
        }
        Command::Discover(args) => Ok(discover::run(&args)?),
        Command::Sim(args) => Ok(sim::run(&args.command)?),
        Command::Controller(args) => {
            runtime()?.block_on(async { Ok(controller::run(args).await?) })
        }
        Command::NodeAgent(args) => {
            node_agent_runtime()?.block_on(async { Ok(agent::run(args).await?) })
        }
        Command::Fleet(args) => runtime()?.block_on(async { Ok(fleet::run(args).await?) }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Worker threads of the node agent's runtime, at most. Its async work (the kubelet's calls,
/// a few watches, status writes) is light and its file and sysfs I/O runs on the blocking pool,
/// while tokio's default of one worker per core would give the DaemonSet's pod on a 96-core
/// node 96 threads, each with its stack and, once it allocates, its own malloc arena.
const NODE_AGENT_WORKERS: usize = 2;

fn node_agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.min(NODE_AGENT_WORKERS))
        .enable_all()
        .build()
        .context("starting the async runtime")
}
