//! `mock-accel-dra node-agent`: discovers the node's devices, embeds the kubelet plugin and
//! keeps the node's `MockAccelNode.status` current.
//!
//! Three loops share one cancellation token: discovery (`discovery`), the plugin servers
//! (`plugin::server`) in front of the prepare state machine, and the status writer
//! (`status_writer`), which applies the agent's share of the status (computed in `status`)
//! only when it changed or a heartbeat is due. `spec_watch` follows the node's
//! `MockAccelNode.spec`, the fixture fields the status reports on. With `--simulate`,
//! `simulate` builds the device tree itself and follows `spec.simulation`; `sriov` makes each
//! listed PF's `sriov_numvfs` equal `spec.sriov[].numVFs` (decisions in `sriov_plan`). The
//! `uevents` turns kernel uevents of the class into rescans; `stale_claims` releases prepared
//! claims the API no longer holds for this node. The agent's metrics are in `metrics`; this
//! module only wires the parts together.

pub mod claim_status;
pub mod discovery;
pub mod health;
pub mod metrics;
pub mod runtime;
pub mod simulate;
pub mod spec_watch;
pub mod sriov;
pub mod sriov_plan;
pub mod stale_claims;
pub mod status;
pub mod status_writer;
pub mod uevents;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::{
    metrics::{AgentMetrics, METRICS_PREFIX},
    status_writer::StatusWriter,
};
use crate::{
    cdi::ContainerLayout,
    cli::NodeAgentArgs,
    plugin::{
        claims::KubeClaimSource,
        health::HealthSource,
        metrics::PrepareMetrics,
        prepare::{PrepareError, Preparer, PreparerConfig},
        server::{self, PluginConfig, PluginError},
    },
    telemetry::{self, HttpServer, Readiness},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] crate::kube_client::ClientError),
    #[error(
        "cannot read Node {node}: {source} (check --node-name and the agent's RBAC: nodes get)"
    )]
    Node { node: String, source: kube::Error },
    #[error("sysfs root {root} is unusable: {source} (check --sysfs-root)")]
    Sysfs {
        root: std::path::PathBuf,
        source: crate::sysfs::SysfsError,
    },
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error("kubelet plugin: {0}")]
    Plugin(#[from] PluginError),
    #[error("prepare state: {0}")]
    Prepare(#[from] PrepareError),
    #[error("cannot start the async runtime: {0} (the process may be out of threads or memory)")]
    Runtime(std::io::Error),
}

/// Runs the node agent until SIGTERM or Ctrl-C.
pub async fn run(args: NodeAgentArgs) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signal(shutdown.clone());
    // Request-response calls are bounded by every timeout; the one watch (the node's own
    // MockAccelNode spec) uses the watch client, whose reads are not cut by the read timeout.
    let clients = crate::kube_client::clients(args.api.timeouts(), None).await?;
    let client = clients.requests;

    // With --simulate the agent scans the tree it builds itself; that tree must exist before
    // the first scan, so it is built from the spec as it is now (the watch follows changes).
    let (sysfs_root, simulator) = if args.simulate {
        let simulator = simulate::Simulator::new(args.sim_root.clone(), args.sim_node_index);
        let spec = simulate::read_spec(client.clone(), &args.node_name).await;
        simulator.apply_logged(spec).await;
        (args.sim_root.clone(), Some(simulator))
    } else {
        (args.sysfs_root.clone(), None)
    };
    let first = discovery::scan_once(&sysfs_root).map_err(|source| Error::Sysfs {
        root: sysfs_root.clone(),
        source,
    })?;
    tracing::info!(node = %args.node_name, devices = first.inventory.devices.len(),
        skipped = first.warnings.len(), root = %sysfs_root.display(), simulated = args.simulate,
        "initial scan");
    for w in &first.warnings {
        tracing::warn!(warning = %w, "device skipped");
    }
    let (inv_tx, inv_rx) = watch::channel(first.inventory.clone());
    let (disc_tx, disc_rx) = watch::channel(first);

    // The node's own MockAccelNode.spec (the fixture fields), followed by `spec_watch` below.
    let (spec_tx, spec_rx) = watch::channel(None);
    let mut registry = Registry::with_prefix(METRICS_PREFIX);
    let metrics = AgentMetrics::register(&mut registry);
    let prepare_metrics = PrepareMetrics::register(&mut registry);
    let stale_metrics = stale_claims::StaleClaimMetrics::register(&mut registry);
    let preparer = Arc::new(
        Preparer::start(
            PreparerConfig {
                driver_name: args.driver_name.clone(),
                node_name: args.node_name.clone(),
                sysfs_root: sysfs_root.clone(),
                dev_root: args.dev_root.clone(),
                cdi_dir: args.cdi_dir.clone(),
                plugin_dir: args.plugin_dir.clone(),
                layout: if args.simulate {
                    ContainerLayout::Simulated
                } else {
                    ContainerLayout::Kernel
                },
            },
            inv_rx,
            KubeClaimSource::new(client.clone()),
            prepare_metrics,
        )
        .await?
        .with_fixture(spec_rx.clone()),
    );
    let pruner = {
        let preparer = preparer.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { preparer.prune_fault_hits(shutdown).await })
    };

    let ready = Readiness::default();
    let http =
        HttpServer::start(args.metrics_addr, registry, ready.clone(), shutdown.clone()).await?;

    // Health (KEP-4680): derived per device by the health loop (started below), reported to
    // the kubelet (pods' allocatedResourcesStatus) and into the status (device taints).
    let (health_tx, health_rx) = watch::channel(crate::health::NodeHealth::default());
    let health = HealthSource {
        health: health_rx.clone(),
    };
    let plugin = server::serve_with_health(
        PluginConfig {
            driver_name: args.driver_name.clone(),
            registry_dir: args.registry_dir.clone(),
            plugin_dir: args.plugin_dir.clone(),
            // An empty value (an unset downward-API variable) means no rolling-update names.
            pod_uid: args.pod_uid.clone().filter(|uid| !uid.is_empty()),
        },
        preparer.clone(),
        Some(health),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(registration = %plugin.registration_socket().display(),
        dra = %plugin.dra_socket().display(), "kubelet plugin listening");

    let claim_inventory = inv_tx.subscribe();
    let health_loop = tokio::spawn(health::run(
        args.node_name.clone(),
        health::AgentRegisters {
            preparer: Arc::clone(&preparer),
            sysfs_root: args.sysfs_root.clone(),
        },
        inv_tx.subscribe(),
        preparer.subscribe(),
        spec_rx.clone(),
        health_tx,
        shutdown.clone(),
    ));
    let scan_metrics = metrics.clone();
    // Rescans on demand: after the agent's own sriov_numvfs writes, and on kernel uevents.
    let (rescan, rescans) = tokio::sync::mpsc::unbounded_channel();
    let sriov_inventory = inv_tx.subscribe();
    let discovery = tokio::spawn(discovery::run(
        sysfs_root.clone(),
        args.resync_interval,
        disc_tx,
        inv_tx,
        move |ok| scan_metrics.scanned(ok),
        rescans,
        shutdown.clone(),
    ));

    // KEP-4817: each prepared claim's status.devices, kept in step with the prepared set.
    let claim_status = tokio::spawn(claim_status::run(
        claim_status::Writer {
            api: claim_status::KubeClaimStatusApi::new(client.clone()),
            driver: args.driver_name.clone(),
            node: args.node_name.clone(),
            min_interval: args.status_min_interval,
        },
        preparer.subscribe(),
        claim_inventory,
        shutdown.clone(),
    ));

    // Another agent of this node (a rolling update) may prepare and unprepare too: publish
    // what the checkpoint says whenever it changes.
    let follower = tokio::spawn(Arc::clone(&preparer).follow_checkpoint(shutdown.clone()));

    // Claims the kubelet will never unprepare (deleted or re-allocated while the agent was
    // down): released at start and every --stale-claim-interval.
    let stale_preparer = preparer.clone();
    let stale = tokio::spawn(stale_claims::run(
        move || {
            let p = stale_preparer.clone();
            async move { p.release_stale().await }
        },
        args.stale_claim_interval,
        stale_claims::KubeStaleEvents::new(client.clone(), args.node_name.clone()),
        stale_metrics,
        shutdown.clone(),
    ));

    let spec = tokio::spawn(spec_watch::run(
        clients.watch,
        args.node_name.clone(),
        spec_tx,
        shutdown.clone(),
    ));

    // Hotplug of the kernel module's devices: a rescan on each of its uevents.
    match uevents::UeventSocket::open()
        .and_then(|socket| uevents::spawn_listener(socket, rescan.clone(), shutdown.clone()))
    {
        Ok(_) => tracing::info!("listening for mock-accel uevents"),
        Err(e) => tracing::warn!(error = %e,
            "cannot listen for kernel uevents; hotplug is seen by inotify and the periodic rescan only"),
    }

    let simulation = simulator
        .clone()
        .map(|simulator| tokio::spawn(simulate::run(simulator, spec_rx.clone(), shutdown.clone())));

    let sriov = tokio::spawn(sriov::run(
        sriov::SriovContext {
            client: client.clone(),
            node: args.node_name.clone(),
            kernel: match &simulator {
                Some(sim) => sriov::Kernel::Simulated(sim.clone()),
                None => sriov::Kernel::Sysfs(sysfs_root.clone()),
            },
            preparer: preparer.clone(),
            rescan: rescan.clone(),
        },
        spec_rx.clone(),
        sriov_inventory,
        preparer.subscribe(),
        shutdown.clone(),
    ));

    let writer = StatusWriter::new(
        client,
        args.node_name.clone(),
        args.heartbeat_interval,
        args.status_min_interval,
        metrics,
        ready,
    );
    let status = tokio::spawn(writer.run(
        disc_rx,
        preparer.subscribe(),
        plugin.registration_state(),
        status_writer::FixtureInputs {
            spec: spec_rx,
            fault_hits: preparer.subscribe_fault_hits(),
            health: health_rx,
        },
        shutdown.clone(),
    ));

    // Any part ending on its own is fatal: stop the rest and report it.
    let plugin_result = plugin.join().await;
    shutdown.cancel();
    let _ = discovery.await;
    let _ = status.await;
    let _ = claim_status.await;
    let _ = spec.await;
    let _ = stale.await;
    let _ = follower.await;
    let _ = sriov.await;
    if let Some(simulation) = simulation {
        let _ = simulation.await;
    }
    let _ = pruner.await;
    let _ = health_loop.await;
    http.stopped().await;
    plugin_result?;
    tracing::info!("node agent stopped; sockets removed");
    Ok(())
}
