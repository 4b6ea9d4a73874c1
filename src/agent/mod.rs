//! `mock-accel-dra node-agent`: discovers the node's devices, embeds the kubelet plugin and
//! keeps the node's `MockAccelNode.status` current.
//!
//! Three loops share one cancellation token: discovery (`discovery`), the plugin servers
//! (`plugin::server`) in front of the prepare state machine, and the status writer
//! (`status_writer`), which applies the agent's share of the status (computed in `status`)
//! only when it changed or a heartbeat is due. `spec_watch` follows the node's
//! `MockAccelNode.spec`, the fixture fields the status reports on. The agent's metrics are in `metrics`; this
//! module only wires the parts together.

pub mod claim_status;
pub mod discovery;
pub mod metrics;
pub mod spec_watch;
pub mod status;
pub mod status_writer;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::{
    metrics::{AgentMetrics, METRICS_PREFIX},
    status_writer::StatusWriter,
};
use crate::{
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
}

/// Runs the node agent until SIGTERM or Ctrl-C.
pub async fn run(args: NodeAgentArgs) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signal(shutdown.clone());
    // Request-response calls are bounded by every timeout; the one watch (the node's own
    // MockAccelNode spec) uses the watch client, whose reads are not cut by the read timeout.
    let clients = crate::kube_client::clients(args.api.timeouts(), None).await?;
    let client = clients.requests;

    let first = discovery::scan_once(&args.sysfs_root).map_err(|source| Error::Sysfs {
        root: args.sysfs_root.clone(),
        source,
    })?;
    tracing::info!(node = %args.node_name, devices = first.inventory.devices.len(),
        skipped = first.warnings.len(), root = %args.sysfs_root.display(), "initial scan");
    for w in &first.warnings {
        tracing::warn!(warning = %w, "device skipped");
    }
    let (inv_tx, inv_rx) = watch::channel(first.inventory.clone());
    let (disc_tx, disc_rx) = watch::channel(first);

    let mut registry = Registry::with_prefix(METRICS_PREFIX);
    let metrics = AgentMetrics::register(&mut registry);
    let prepare_metrics = PrepareMetrics::register(&mut registry);
    let preparer = Arc::new(
        Preparer::start(
            PreparerConfig {
                driver_name: args.driver_name.clone(),
                node_name: args.node_name.clone(),
                sysfs_root: args.sysfs_root.clone(),
                dev_root: args.dev_root.clone(),
                cdi_dir: args.cdi_dir.clone(),
                plugin_dir: args.plugin_dir.clone(),
            },
            inv_rx,
            KubeClaimSource::new(client.clone()),
            prepare_metrics,
        )
        .await?,
    );

    let ready = Readiness::default();
    let http =
        HttpServer::start(args.metrics_addr, registry, ready.clone(), shutdown.clone()).await?;

    // Health (KEP-4680): every present device is reported healthy and refreshed periodically,
    // so kubelets with ResourceHealthStatus show it in the pod status.
    let health = HealthSource {
        node_name: args.node_name.clone(),
        inventory: inv_tx.subscribe(),
    };
    let plugin = server::serve_with_health(
        PluginConfig {
            driver_name: args.driver_name.clone(),
            registry_dir: args.registry_dir.clone(),
            plugin_dir: args.plugin_dir.clone(),
        },
        preparer.clone(),
        Some(health),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(registration = %plugin.registration_socket().display(),
        dra = %plugin.dra_socket().display(), "kubelet plugin listening");

    let claim_inventory = inv_tx.subscribe();
    let scan_metrics = metrics.clone();
    let discovery = tokio::spawn(discovery::run(
        args.sysfs_root.clone(),
        args.resync_interval,
        disc_tx,
        inv_tx,
        move |ok| scan_metrics.scanned(ok),
        shutdown.clone(),
    ));

    // KEP-4817: each prepared claim's status.devices, kept in step with the prepared set.
    let claim_status = tokio::spawn(claim_status::run(
        claim_status::KubeClaimStatusApi::new(client.clone()),
        args.driver_name.clone(),
        args.node_name.clone(),
        preparer.subscribe(),
        claim_inventory,
        shutdown.clone(),
    ));

    let (spec_tx, spec_rx) = watch::channel(None);
    let spec = tokio::spawn(spec_watch::run(
        clients.watch,
        args.node_name.clone(),
        spec_tx,
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
        spec_rx,
        shutdown.clone(),
    ));

    // Any part ending on its own is fatal: stop the rest and report it.
    let plugin_result = plugin.join().await;
    shutdown.cancel();
    let _ = discovery.await;
    let _ = status.await;
    let _ = claim_status.await;
    let _ = spec.await;
    http.stopped().await;
    plugin_result?;
    tracing::info!("node agent stopped; sockets removed");
    Ok(())
}
