//! Why a claim could not be prepared or unprepared: the one error type of the prepare state
//! machine, whose messages the kubelet shows in the pod's events.

use std::path::PathBuf;

use crate::{cdi::CdiError, checkpoint::CheckpointError, sysfs::SysfsError};

/// Why a claim could not be prepared or unprepared. The message is what the kubelet shows in
/// the pod's events, so it names the claim and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("claim {claim}: reading the ResourceClaim failed: {reason}")]
    Fetch { claim: String, reason: String },
    #[error("claim {claim}: the ResourceClaim does not exist (deleted before the pod started)")]
    ClaimNotFound { claim: String },
    #[error(
        "claim {claim}: the ResourceClaim now has uid {found}: the claim got replaced; the kubelet retries with the new claim"
    )]
    ClaimReplaced { claim: String, found: String },
    #[error(
        "claim {claim}: not allocated (status.allocation is empty); the scheduler has not allocated it yet"
    )]
    NotAllocated { claim: String },
    #[error(
        "claim {claim}: request {request} was allocated device {device} in pool {pool}, which belongs to another node (this is node {node})"
    )]
    OtherNode {
        claim: String,
        request: String,
        device: String,
        pool: String,
        node: String,
    },
    #[error(
        "claim {claim}: request {request} was allocated device {device}, which is not present on node {node} (removed since the allocation?); delete the pod so that the claim is allocated again"
    )]
    UnknownDevice {
        claim: String,
        request: String,
        device: String,
        node: String,
    },
    #[error(
        "claim {claim}: device {device} was allocated from pool {pool}, but it is published in pool {actual}; the allocation is stale, delete the pod so that the claim is allocated again"
    )]
    PoolMismatch {
        claim: String,
        device: String,
        pool: String,
        actual: String,
    },
    #[error(
        "claim {claim}: device {device} is already prepared for claim {holder}; refusing to hand it out twice (unprepare the other claim first)"
    )]
    AlreadyAllocated {
        claim: String,
        device: String,
        holder: String,
    },
    #[error(
        "claim {claim}: device {device} was allocated a consumed capacity of {quantity:?}, which is not a whole number of bytes; the scheduler's allocation cannot be honoured, delete the pod so that the claim is allocated again"
    )]
    ConsumedCapacity {
        claim: String,
        device: String,
        quantity: String,
    },
    #[error(
        "claim {claim}: allocation config #{index} has no opaque configuration; this driver understands only opaque parameters"
    )]
    UnsupportedConfig { claim: String, index: usize },
    #[error(
        "claim {claim}: opaque parameters of config #{index} must be a JSON object, got {found}"
    )]
    InvalidConfig {
        claim: String,
        index: usize,
        found: String,
    },
    #[error("claim {claim}: {source}")]
    Checkpoint {
        claim: String,
        source: CheckpointError,
    },
    #[error("claim {claim}: status register: {source}")]
    Register { claim: String, source: SysfsError },
    #[error("claim {claim}: CDI spec: {source}")]
    Cdi { claim: String, source: CdiError },
    #[error("claim {claim}: releasing devices failed: {}", errors.join("; "))]
    Release { claim: String, errors: Vec<String> },
    #[error("{cause}; rolling back also failed ({rollback}), it is retried on the next call")]
    RollbackFailed {
        cause: Box<PrepareError>,
        rollback: String,
    },
    #[error(
        "{path}: {source} ({})",
        crate::atomic_file::remedy(
            source,
            "is the plugin data directory writable by the node agent?"
        )
    )]
    Setup {
        path: PathBuf,
        source: std::io::Error,
    },
}
