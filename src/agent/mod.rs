//! `mock-accel-dra node-agent`: discovers the node's devices, embeds the kubelet plugin and
//! keeps the node's `MockAccelNode.status` current.
//!
//! Three loops share one cancellation token: discovery (`discovery`), the plugin servers
//! (`plugin::server`) in front of the prepare state machine, and the status writer below,
//! which applies the agent's share of the status only when it changed or a heartbeat is due.

pub mod discovery;
pub mod status;

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::NodeAgentArgs,
    crd::{
        AGENT_FIELD_MANAGER, Condition, MockAccelNode, MockAccelNodeSpec, PreparedClaimStatus,
        now_rfc3339,
    },
    inventory::DeviceType,
    plugin::{
        claims::KubeClaimSource,
        health::HealthSource,
        prepare::{PrepareError, PrepareMetrics, Preparer, PreparerConfig},
        registration::RegistrationState,
        server::{self, PluginConfig, PluginError},
    },
    telemetry::{self, Readiness},
};

use self::{
    discovery::Discovered,
    status::{AgentReport, agent_status},
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

/// Label set of the device gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    r#type: String,
    state: String,
}

/// The agent's own metrics (the plugin registers its prepare metrics beside them).
struct AgentMetrics {
    scans: Family<ScanLabels, Counter>,
    devices: Family<DeviceLabels, Gauge>,
    status_writes: Family<ScanLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScanLabels {
    outcome: String,
}

impl AgentMetrics {
    fn register(reg: &mut Registry) -> Self {
        let m = AgentMetrics {
            scans: Family::default(),
            devices: Family::default(),
            status_writes: Family::default(),
        };
        reg.register("discovery_scans", "sysfs scans by outcome", m.scans.clone());
        reg.register(
            "devices",
            "Devices on this node by type and state (free or prepared)",
            m.devices.clone(),
        );
        reg.register(
            "status_writes",
            "MockAccelNode status applies by outcome",
            m.status_writes.clone(),
        );
        m
    }

    fn observe_devices(&self, report: &AgentReport) {
        let held: std::collections::HashSet<&str> = report
            .prepared
            .iter()
            .flat_map(|c| c.devices.iter().map(String::as_str))
            .collect();
        for t in [DeviceType::Pf, DeviceType::Vf] {
            for state in ["free", "prepared"] {
                let n = report
                    .inventory
                    .devices
                    .iter()
                    .filter(|d| {
                        d.device_type == t
                            && held.contains(d.name.as_str()) == (state == "prepared")
                    })
                    .count();
                self.devices
                    .get_or_create(&DeviceLabels {
                        r#type: t.to_string(),
                        state: state.to_string(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Runs the node agent until SIGTERM or Ctrl-C.
pub async fn run(args: NodeAgentArgs) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signal(shutdown.clone());
    // The agent makes request-response calls only (no watches): every one is bounded.
    let client = crate::kube_client::clients(args.api.timeouts(), None)
        .await?
        .requests;

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

    let mut registry = Registry::with_prefix("mock_accel");
    let metrics = Arc::new(AgentMetrics::register(&mut registry));
    let prepare_metrics = PrepareMetrics::register(&mut registry);
    let preparer = Arc::new(Preparer::new(
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
    )?);

    let ready = Readiness::default();
    let (_, http) = telemetry::serve_http(
        args.metrics_addr,
        Arc::new(registry),
        ready.clone(),
        shutdown.clone(),
    )
    .await?;

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

    let scan_metrics = metrics.clone();
    let discovery = tokio::spawn(discovery::run(
        args.sysfs_root.clone(),
        args.resync_interval,
        disc_tx,
        inv_tx,
        move |ok| {
            scan_metrics
                .scans
                .get_or_create(&ScanLabels {
                    outcome: if ok { "ok" } else { "error" }.to_string(),
                })
                .inc();
        },
        shutdown.clone(),
    ));

    let writer = StatusWriter {
        api: Api::all(client.clone()),
        nodes: Api::all(client),
        node: args.node_name.clone(),
        heartbeat: args.heartbeat_interval,
        metrics,
        ready,
    };
    let status = tokio::spawn(writer.run(
        disc_rx,
        preparer.subscribe(),
        plugin.registration_state(),
        shutdown.clone(),
    ));

    // Any part ending on its own is fatal: stop the rest and report it.
    let plugin_result = plugin.join().await;
    shutdown.cancel();
    let _ = discovery.await;
    let _ = status.await;
    if let Ok(Err(e)) = http.await {
        tracing::warn!(error = %e, "HTTP server stopped with an error");
    }
    plugin_result?;
    tracing::info!("node agent stopped; sockets removed");
    Ok(())
}

/// Applies the agent's share of `MockAccelNode.status`.
struct StatusWriter {
    api: Api<MockAccelNode>,
    nodes: Api<Node>,
    node: String,
    heartbeat: Duration,
    metrics: Arc<AgentMetrics>,
    ready: Readiness,
}

impl StatusWriter {
    async fn run(
        self,
        mut discovered: watch::Receiver<Discovered>,
        mut prepared: watch::Receiver<Vec<PreparedClaimStatus>>,
        mut registration: watch::Receiver<RegistrationState>,
        shutdown: CancellationToken,
    ) {
        let mut created = false;
        let mut conditions: Option<Vec<Condition>> = None;
        let mut last: Option<AgentReport> = None;
        let mut last_write = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(500);
        loop {
            let report = {
                let d = discovered.borrow_and_update().clone();
                let reg = registration.borrow_and_update().clone();
                AgentReport {
                    inventory: (*d.inventory).clone(),
                    scan_warnings: d.warnings,
                    prepared: prepared.borrow_and_update().clone(),
                    plugin_registered: reg.registered,
                    registration_error: (!reg.error.is_empty()).then_some(reg.error),
                }
            };
            self.metrics.observe_devices(&report);
            let due = last.as_ref() != Some(&report) || last_write.elapsed() >= self.heartbeat;
            let mut retry = false;
            if due {
                let result = async {
                    if !created {
                        self.ensure_object().await?;
                        created = true;
                    }
                    self.apply_status(&report, &mut conditions).await
                }
                .await;
                match result {
                    Ok(()) => {
                        self.metrics
                            .status_writes
                            .get_or_create(&ScanLabels {
                                outcome: "ok".into(),
                            })
                            .inc();
                        self.ready.set(report.plugin_registered);
                        last = Some(report);
                        last_write = tokio::time::Instant::now();
                        backoff = Duration::from_millis(500);
                    }
                    Err(e) => {
                        self.metrics
                            .status_writes
                            .get_or_create(&ScanLabels {
                                outcome: "error".into(),
                            })
                            .inc();
                        tracing::warn!(node = %self.node, error = %e, retry_in = ?backoff,
                            "writing MockAccelNode status failed");
                        created = false;
                        retry = true;
                    }
                }
            }
            let wait = if retry {
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                w
            } else {
                self.heartbeat.saturating_sub(last_write.elapsed())
            };
            // While backing off, a change must not cut the wait short: the next attempt reads
            // the latest of everything anyway, and a failing API server gets its pause.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {},
                r = discovered.changed(), if !retry => if r.is_err() { return },
                r = prepared.changed(), if !retry => if r.is_err() { return },
                r = registration.changed(), if !retry => if r.is_err() { return },
            }
        }
    }

    /// Creates the node's object (owned by the Node, so it goes when the Node goes).
    async fn ensure_object(&self) -> Result<(), kube::Error> {
        let node = self.nodes.get(&self.node).await?;
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: node.metadata.uid.unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let obj = json!({
            "apiVersion": MockAccelNode::api_version(&()),
            "kind": MockAccelNode::kind(&()),
            "metadata": { "name": self.node, "ownerReferences": [owner] },
            "spec": MockAccelNodeSpec { node_name: self.node.clone() },
        });
        self.api
            .patch(
                &self.node,
                &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await?;
        Ok(())
    }

    /// `conditions` caches the conditions the API server returned for the last apply, so a
    /// heartbeat costs one request; it is read from the server only when unknown (first write,
    /// or after a failure).
    async fn apply_status(
        &self,
        report: &AgentReport,
        conditions: &mut Option<Vec<Condition>>,
    ) -> Result<(), kube::Error> {
        if conditions.is_none() {
            let current = self.api.get_status(&self.node).await?;
            *conditions = Some(
                current
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default(),
            );
        }
        let previous = conditions.take();
        let status = agent_status(
            &self.node,
            report,
            env!("CARGO_PKG_VERSION"),
            &now_rfc3339(),
            previous.as_deref(),
        );
        let patch = json!({
            "apiVersion": MockAccelNode::api_version(&()),
            "kind": MockAccelNode::kind(&()),
            "status": status,
        });
        let applied = self
            .api
            .patch_status(
                &self.node,
                &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await?;
        *conditions = Some(
            applied
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default(),
        );
        tracing::debug!(node = %self.node, devices = report.inventory.devices.len(),
            prepared = report.prepared.len(), registered = report.plugin_registered, "status applied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response, StatusCode};
    use kube::{Client, client::Body};
    use tokio::time::Instant;
    use tower_test::mock;

    type Handle = mock::Handle<Request<Body>, Response<Body>>;

    fn server_error() -> Response<Body> {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500,
        });
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    /// Answers the next request with a 500 and returns when it arrived.
    async fn fail_next(api: &mut Handle) -> Instant {
        let (req, reply) = tokio::time::timeout(Duration::from_secs(60), api.next_request())
            .await
            .expect("the status writer sent no request within 60 s (virtual time)")
            .expect("the status writer stopped");
        assert_eq!(
            req.uri().path(),
            "/api/v1/nodes/n1",
            "first step: read the Node"
        );
        let at = Instant::now();
        reply.send_response(server_error());
        at
    }

    /// A failing API server gets the writer's backoff even while the inventory keeps changing:
    /// each change used to wake the writer at once, so it retried in a tight loop.
    #[tokio::test(start_paused = true)]
    async fn changes_during_a_backoff_do_not_cut_it_short() {
        let (svc, mut api) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let writer = StatusWriter {
            api: Api::all(client.clone()),
            nodes: Api::all(client),
            node: "n1".into(),
            heartbeat: Duration::from_secs(10),
            metrics: Arc::new(AgentMetrics::register(&mut Registry::default())),
            ready: Readiness::default(),
        };
        let (disc_tx, disc_rx) = watch::channel(Discovered::default());
        let (_prep_tx, prep_rx) = watch::channel(Vec::new());
        let (_reg_tx, reg_rx) = watch::channel(RegistrationState::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(writer.run(disc_rx, prep_rx, reg_rx, shutdown.clone()));
        let change = |n: usize| {
            disc_tx.send_modify(|d| d.warnings.push(format!("change {n}")));
        };

        let first = fail_next(&mut api).await;
        change(1);
        let second = fail_next(&mut api).await;
        assert!(
            second - first >= Duration::from_millis(500),
            "retried after {:?} despite a 500 ms backoff",
            second - first
        );
        change(2);
        change(3);
        let third = fail_next(&mut api).await;
        assert!(
            third - second >= Duration::from_secs(1),
            "retried after {:?} despite a 1 s backoff",
            third - second
        );

        shutdown.cancel();
        task.await.unwrap();
    }
}
