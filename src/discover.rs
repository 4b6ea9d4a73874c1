//! `mock-accel-dra discover`: prints the devices found under a sysfs root.
use crate::cli::DiscoverArgs;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {}

pub fn run(_args: &DiscoverArgs) -> Result<(), DiscoverError> {
    Ok(())
}
