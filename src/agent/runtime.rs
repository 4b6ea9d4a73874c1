//! The node agent's async runtime, the same for `mock-accel-dra node-agent` and
//! `mock-accel-node-agent`: one thread runs all its async work, and file and sysfs I/O runs on
//! tokio's blocking pool.
//!
//! Why one thread: the agent's async work (the kubelet's calls, a few watches, status writes)
//! is light, and every thread costs memory (a stack and, once it allocates, a malloc arena that
//! keeps what it once held), while tokio's default of one worker per core would give the
//! DaemonSet's pod on a 96-core node 96 of them. The multi-threaded scheduler was also the
//! reason the binary linked libm (its load statistics call `pow`). Measured against two
//! workers in the peer bench (BENCHMARKS.md): no loss of latency or throughput.

use std::io;

/// The runtime's settings.
pub fn builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    builder
}

/// The node agent's runtime.
pub fn build() -> io::Result<tokio::runtime::Runtime> {
    builder().build()
}

/// Runs the node agent on its runtime until it stops: what both binaries' `node-agent` does.
pub fn run(args: crate::cli::NodeAgentArgs) -> Result<(), super::Error> {
    build()
        .map_err(super::Error::Runtime)?
        .block_on(super::run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's async work shares one thread, whatever the number of cores; its timers and
    /// I/O are enabled.
    #[test]
    fn the_agent_runs_on_one_thread_with_timers_and_io() {
        let runtime = build().unwrap();
        assert_eq!(runtime.metrics().num_workers(), 1);
        let (main, task) = runtime.block_on(async {
            let main = std::thread::current().id();
            let task = tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                drop(socket);
                std::thread::current().id()
            });
            (main, task.await.unwrap())
        });
        assert_eq!(
            main, task,
            "a spawned task runs on the runtime's one thread"
        );
    }
}
