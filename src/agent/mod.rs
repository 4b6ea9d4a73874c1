//! `mock-accel-dra node-agent`: discovery, MockAccelNode status and the kubelet plugin.
pub mod discovery;
pub mod status;

use crate::cli::NodeAgentArgs;

#[derive(Debug, thiserror::Error)]
pub enum Error {}

pub async fn run(_args: NodeAgentArgs) -> Result<(), Error> {
    Ok(())
}
