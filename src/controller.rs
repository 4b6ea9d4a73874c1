//! `mock-accel-dra controller`: owns the ResourceSlices of every node and NUMA pool.
use crate::cli::ControllerArgs;

#[derive(Debug, thiserror::Error)]
pub enum Error {}

pub async fn run(_args: ControllerArgs) -> Result<(), Error> {
    Ok(())
}
