//! The desired ResourceSlices of one node: a pure function from the node's devices (and the
//! slices that exist now) to the `resource.k8s.io/v1` objects the controller should apply.
//!
//! It performs no I/O: the controller reads the world, calls [`desired_slices`], applies the
//! slices for which [`slice_differs`] says so and deletes the ones [`obsolete_slices`] returns.
//!
//! - [`desired`]: the mapping of a [`crate::inventory::Device`] onto a DRA device (attributes,
//!   capacity), the split of a node into pools and slices, and pool generations;
//! - [`diff`]: whether an existing slice already says what a desired one says, and which
//!   existing slices are obsolete;
//! - [`validate`]: the API validation rules a device must pass to be published;
//! - [`counters`]: the shared counter sets that make a PF and its own VFs exclusive
//!   (partitionable devices), published when the API server accepts them;
//! - [`taints`]: the device taint of a device that is not Healthy;
//! - [`binding`]: binding conditions of devices that must be attached before a pod binds, on
//!   nodes labelled for it;
//! - [`sharing`]: PFs published in shares of their memory (consumable capacity) on nodes
//!   labelled for it;
//! - the names and labels of slices and pools come from [`crate::names`].
//!
//! Rules it follows (see the design's "Names and shapes" and the DRA contract):
//! - one pool per node and NUMA node, named by [`crate::names::pool_name`]; at most
//!   [`MAX_DEVICES_PER_SLICE`] devices per slice, devices sorted by name;
//! - a pool's generation stays put while its content is unchanged and is bumped (highest
//!   existing + 1) when anything in it changes, so consumers never mix old and new slices;
//! - an invalid device is left out and reported in [`DesiredSlices::rejected`]; the rest of the
//!   node is still published.

pub mod binding;
pub mod counters;
pub mod desired;
pub mod diff;
pub mod sharing;
pub mod taints;
#[cfg(test)]
mod tests;
pub mod validate;

pub use self::{
    desired::{
        DesiredSlices, NodeSlicesInput, PoolSummary, api_device, desired_slices, memory_quantity,
    },
    diff::{integer_quantity, obsolete_slices, slice_differs},
    validate::validate_device,
};
use crate::names::{MAX_DRIVER_LEN, MAX_NAME_LEN};

/// API limit on devices per slice without taints, counters or list attributes (with counters
/// see [`counters::MAX_DEVICES_PER_SLICE_WITH_COUNTERS`]).
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// API limit on attributes plus capacities of one device.
pub const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
/// API limit on the length of a string or version attribute value.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 64;
/// Domain of the standard attributes shared across drivers (KEP-6072 and
/// `deviceattribute` in dynamic-resource-allocation).
pub const STANDARD_DOMAIN: &str = "resource.kubernetes.io";

/// Why a node, a pool or a device cannot be published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    #[error(
        "driver name {driver:?} is not a DNS subdomain of at most {MAX_DRIVER_LEN} characters; fix --driver-name"
    )]
    InvalidDriver { driver: String },
    #[error(
        "node name {node:?} is not a DNS subdomain of at most {MAX_NAME_LEN} characters; no slices can be published for it"
    )]
    InvalidNode { node: String },
    #[error(
        "device {device:?} is not published: its name is not a DNS label (lowercase letters, digits and '-', at most 63); rename it in the inventory"
    )]
    DeviceName { device: String },
    #[error(
        "device {device:?} is not published: another device on node {node:?} has the same name; device names must be unique per node"
    )]
    DuplicateDevice { device: String, node: String },
    #[error(
        "device {device:?} is not published: memory of {memory} bytes does not fit a 64-bit signed integer attribute"
    )]
    MemoryTooLarge { device: String, memory: u64 },
    #[error(
        "device {device:?} is not published: it has {count} attributes and capacities, more than the API allows ({MAX_ATTRIBUTES_AND_CAPACITIES})"
    )]
    TooManyAttributes { device: String, count: usize },
    #[error(
        "device {device:?} is not published: attribute or capacity name {name:?} is not a qualified name (C identifier of at most 32 characters, optionally after a DNS subdomain domain and '/')"
    )]
    AttributeName { device: String, name: String },
    #[error("device {device:?} is not published: attribute {name:?} {reason}")]
    AttributeValue {
        device: String,
        name: String,
        reason: String,
    },
    #[error(
        "pool {pool:?} is not published (devices {devices:?}): its name is not at most {MAX_NAME_LEN} characters of DNS subdomains joined by '/'; use a shorter node name"
    )]
    InvalidPool { pool: String, devices: Vec<String> },
}

impl SliceError {
    /// The device this error concerns, when it concerns one device.
    pub fn device(&self) -> Option<&str> {
        match self {
            SliceError::DeviceName { device }
            | SliceError::DuplicateDevice { device, .. }
            | SliceError::MemoryTooLarge { device, .. }
            | SliceError::TooManyAttributes { device, .. }
            | SliceError::AttributeName { device, .. }
            | SliceError::AttributeValue { device, .. } => Some(device),
            SliceError::InvalidDriver { .. }
            | SliceError::InvalidNode { .. }
            | SliceError::InvalidPool { .. } => None,
        }
    }
}
