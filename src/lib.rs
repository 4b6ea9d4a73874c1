//! mock-accel DRA driver: discovery of mock-accel PCIe functions in sysfs, ResourceSlice
//! publishing, and a kubelet plugin that prepares claims through the status register and CDI.
//!
//! Lower floors (`inventory`, `sysfs` parsing, `slices`, `cdi`, `checkpoint`) are pure; the
//! roles on the top floors (`agent`, `controller`, `plugin::server`) wire them to the world.
#![forbid(unsafe_code)]

pub mod agent;
pub mod atomic_file;
pub mod backoff;
pub mod cdi;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod controller;
pub mod crd;
pub mod discover;
pub mod fixture;
pub mod fleet;
pub mod health;
pub mod inventory;
pub mod kube_client;
pub mod metrics;
pub mod names;
pub mod plugin;
#[cfg(test)]
mod properties;
pub mod proto;
pub mod sim;
pub mod slices;
pub mod sysfs;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
