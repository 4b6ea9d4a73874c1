//! The kubelet plugin: registration and DRA gRPC servers on Unix sockets (`server`,
//! `registration`, `dra`, `health`; the sockets' names in `socket_names`) in front of the prepare/unprepare state machine
//! (`prepare`), its metrics (`metrics`) and the production claim source (`claims`).
//!
//! The types here are the seam between the wire and the logic: the gRPC adapters turn v1 and
//! v1beta1 messages into [`ClaimRef`]s, call a [`ClaimHandler`], and turn its answers back.

use std::{collections::HashMap, future::Future};

use k8s_openapi::api::resource::v1::ResourceClaim;

pub mod claims;
pub mod dra;
pub mod h2_authority;
pub mod health;
pub mod metrics;
pub mod prepare;
pub mod registration;
pub mod server;
pub mod socket_names;

/// A claim as the kubelet names it in NodePrepareResources / NodeUnprepareResources.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    pub namespace: String,
    pub uid: String,
    pub name: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} (uid {})", self.namespace, self.name, self.uid)
    }
}

/// One device of a prepared claim, as returned to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedDevice {
    /// Base request names (a `main/sub` request reports `main`).
    pub request_names: Vec<String>,
    pub pool_name: String,
    pub device_name: String,
    /// Fully qualified `vendor/class=name` CDI ids.
    pub cdi_device_ids: Vec<String>,
    pub share_id: Option<String>,
}

/// A claim prepared on this node, as the prepare state machine publishes it (the node agent
/// writes these into `MockAccelNode.status.preparedClaims`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreparedClaim {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// DRA device names, each once.
    pub devices: Vec<String>,
    /// Fully qualified CDI device ids handed to the kubelet.
    pub cdi_device_ids: Vec<String>,
    /// RFC 3339 time of the prepare.
    pub prepared_at: String,
    /// The devices whose status register prepare wrote (admin-access results leave theirs
    /// alone), for health: such a register must keep reading as prepared.
    pub registers: Vec<HeldRegister>,
}

/// A device whose status register a prepared claim holds at `1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldRegister {
    /// DRA device name.
    pub device: String,
    pub sysfs_name: String,
    pub pool: String,
}

/// Per-claim outcome, keyed by claim UID. An `Err` carries the message the kubelet shows.
pub type PrepareResults = HashMap<String, Result<Vec<PreparedDevice>, String>>;
pub type UnprepareResults = HashMap<String, Result<(), String>>;

/// What the gRPC layer needs from the logic behind it. Every claim passed in must get an entry.
pub trait ClaimHandler: Send + Sync + 'static {
    fn prepare(&self, claims: Vec<ClaimRef>) -> impl Future<Output = PrepareResults> + Send;
    fn unprepare(&self, claims: Vec<ClaimRef>) -> impl Future<Output = UnprepareResults> + Send;
}

/// Where prepare reads ResourceClaims from: the API server in production, a map in tests.
pub trait ClaimSource: Send + Sync + 'static {
    /// `Ok(None)` when the claim does not exist.
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ResourceClaim>, String>> + Send;
}
