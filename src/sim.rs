//! `mock-accel-dra sim`: creates and changes a simulated sysfs tree.
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SimCommand {
    /// Create a tree.
    Create {
        #[arg(long)]
        root: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {}

pub fn run(_cmd: &SimCommand) -> Result<(), SimError> {
    Ok(())
}
