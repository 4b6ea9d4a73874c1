//! Entry point of `mock-accel-dra`: parses the command line and runs one role.

use anyhow::Context;
use clap::Parser;
use mock_accel_dra::{
    agent,
    cli::{Cli, Command},
    controller, crd, discover, fleet, kube_client, sim, telemetry,
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kube_client::install_crypto_provider();
    telemetry::init_logging(cli.log.log_format, &cli.log.log_level)?;
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
        Command::NodeAgent(args) => Ok(agent::runtime::run(args)?),
        Command::Fleet(args) => runtime()?.block_on(async { Ok(fleet::run(args).await?) }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
