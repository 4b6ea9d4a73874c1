//! Entry point of `mock-accel-node-agent`: the node agent alone, for the DaemonSet.
//!
//! Most of a node agent's memory is its mapped binary: the kernel maps the page cache in large
//! folios, so the resident text follows the size of the text, not the code that runs. Linked
//! without the controller, the fleet, the simulator's and the CRD's commands (and the YAML
//! writer only `crd` uses), the binary is smaller and so is every node's agent. It takes the
//! same arguments as `mock-accel-dra` (`node-agent` and its flags), and runs the same code.

use clap::Parser;
use mock_accel_dra::{
    agent,
    cli::{NodeAgentCli, NodeAgentCommand},
    kube_client, telemetry,
};

fn main() -> anyhow::Result<()> {
    let cli = NodeAgentCli::parse();
    kube_client::install_crypto_provider();
    telemetry::init_logging(cli.log.log_format, &cli.log.log_level)?;
    let NodeAgentCommand::NodeAgent(args) = cli.command;
    Ok(agent::runtime::run(args)?)
}
