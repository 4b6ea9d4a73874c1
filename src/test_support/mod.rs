//! Fixtures shared by the unit tests, the integration tests and the benches, so that a new test
//! builds its devices, claims, sockets and API server replies from here instead of copying a
//! block from a neighbouring file.
//!
//! Compiled for this crate's unit tests and, through the `test-support` feature (which the
//! crate's own dev-dependency turns on), for `tests/` and `benches/`; never in a release build.
//!
//! - [`devices`]: a builder for [`crate::inventory::Device`] with plausible defaults.
//! - [`claims`]: ResourceClaims with allocation results, [`crate::plugin::ClaimRef`]s and an
//!   in-memory [`crate::plugin::ClaimSource`].
//! - [`api`]: a mocked Kubernetes API server that answers a client's requests one by one and
//!   asserts what each one was.
//! - [`socket`]: a gRPC channel over a Unix socket, as the kubelet dials the plugin.
//! - [`stats`]: latency percentiles for the benches.
//! - [`agent_process`]: the real node agent as a child process, with a fake API server.

pub mod agent_process;
pub mod api;
pub mod claims;
pub mod devices;
pub mod socket;
pub mod stats;
