//! The node agent's async runtime, the same for `mock-accel-dra node-agent` and
//! `mock-accel-node-agent`: its worker count and the settings of its blocking pool, which decide
//! how many threads (each with its stack and, once it allocates, its own malloc arena) the
//! agent keeps.

use std::{io, num::NonZeroUsize};

/// Worker threads of the node agent's runtime, at most. Its async work (the kubelet's calls,
/// a few watches, status writes) is light and its file and sysfs I/O runs on the blocking pool,
/// while tokio's default of one worker per core would give the DaemonSet's pod on a 96-core
/// node 96 threads, each with its stack and, once it allocates, its own malloc arena.
pub const WORKERS: usize = 2;

/// The runtime's settings on a machine with `cores` cores.
pub fn builder(cores: usize) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(cores.clamp(1, WORKERS)).enable_all();
    builder
}

/// The node agent's runtime on this machine.
pub fn build() -> io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    builder(cores).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_node_gets_two_workers_and_a_one_core_node_one() {
        let workers = |cores| builder(cores).build().unwrap().metrics().num_workers();
        assert_eq!(workers(96), WORKERS);
        assert_eq!(workers(2), 2);
        assert_eq!(workers(1), 1);
    }
}
