//! `mock-accel-dra controller`: owns the ResourceSlices of every node and NUMA pool.
//!
//! This module wires the pieces: a kube client, the `/healthz` `/readyz` `/metrics` server,
//! leader election ([`leader`]), and the kube-runtime `Controller` over `MockAccelNode` that
//! also watches the slices it owns and the Nodes. The reconcile pipeline lives in
//! [`reconcile`], its pure decisions in [`plan`], the metrics in [`metrics`]. What triggers a
//! reconcile (not an agent's heartbeat) is decided in [`triggers`]; the reconcile reads Nodes
//! and slices from the watch caches of [`caches`], the slices indexed by node ([`node_index`]).

pub mod attach;
pub mod caches;
pub mod capabilities;
pub mod leader;
pub mod metrics;
pub mod node_index;
pub mod plan;
pub mod reconcile;
#[cfg(test)]
mod scenarios;
pub mod triggers;

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{core::v1::Node, resource::v1::ResourceSlice};
use kube::{
    Api, Client, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Config},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use self::{
    caches::Caches,
    leader::{LeaderError, LeaseConfig},
    metrics::{METRICS_PREFIX, Metrics},
    reconcile::{Context, error_policy, managed_by_selector, reconcile, system_clock},
};
use crate::{
    cli::ControllerArgs,
    crd::MockAccelNode,
    kube_client::{self, ApiView, ClientError, WATCH_TIMEOUT_SECS},
    telemetry::{self, HttpServer, Readiness, TelemetryError},
};

/// Reconciles running at once; each one is a handful of requests for one node.
const CONCURRENCY: u16 = 8;

/// Backoff of the controller's watches after an error: 0.5 s doubling up to 2 s.
///
/// kube-runtime backs off all of a Controller's watches together (one backoff over the merged
/// trigger streams). With its default (up to 30 s plus jitter) a request another watch had
/// already started sits unpolled through the sleep, its connect deadline passes, it fails when
/// polled, which starts the next sleep: after an API server restart the watches never came back
/// (seen in the outage scenario; also stackabletech/trino-operator#936). A sleep well below the
/// connect deadline lets such a request survive it. One controller with three watches retrying
/// every 2 s during an outage costs the API server nothing.
#[derive(Clone, Debug, Default)]
pub struct TriggerBackoff {
    next: Option<std::time::Duration>,
}

impl TriggerBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(500);
    const MAX: std::time::Duration = std::time::Duration::from_secs(2);
}

impl Iterator for TriggerBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let delay = self.next.unwrap_or(Self::FIRST);
        self.next = Some(delay.saturating_mul(2).min(Self::MAX));
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.next = None;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Http(#[from] TelemetryError),
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

pub async fn run(args: ControllerArgs) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signal(shutdown.clone());
    // One view for the whole process: it must outlive leadership terms, since a replica that
    // takes the lead right after an outage has to know the outage happened.
    let api_view = ApiView::new(jiff::Timestamp::now());
    let clients = kube_client::clients(args.api.timeouts(), Some(&api_view)).await?;
    let client = clients.requests.clone();

    let mut registry = Registry::with_prefix(METRICS_PREFIX);
    let metrics = Metrics::register(&mut registry);
    let ready = Readiness::default();
    let http =
        HttpServer::start(args.metrics_addr, registry, ready.clone(), shutdown.clone()).await?;

    let identity = args.identity.clone().unwrap_or_else(hostname);
    // Decided once: a change of the API server's features comes with a restart of it, and the
    // controller's readiness waits for this anyway.
    let partitionable =
        capabilities::resolve_partitionable(args.partitionable, &client, &args.driver_name).await;
    if partitionable.enabled {
        tracing::info!(reason = %partitionable.reason, "partitionable devices: publishing PF/VF shared counters");
    } else {
        tracing::info!(reason = %partitionable.reason, "partitionable devices: skipped, slices carry no shared counters (a PF and its own VFs are not exclusive)");
    }
    let device_taints = capabilities::probe_device_taints(&client, &args.driver_name).await;
    if device_taints.enabled {
        tracing::info!(reason = %device_taints.reason, "device taints: devices that are not Healthy are published tainted");
    } else {
        tracing::warn!(reason = %device_taints.reason, "device taints: skipped, unhealthy devices are published without a taint");
    }
    let consumable = capabilities::resolve(
        capabilities::Feature::ConsumableCapacity,
        args.consumable_capacity,
        &client,
        &args.driver_name,
    )
    .await;
    if consumable.enabled {
        tracing::info!(reason = %consumable.reason, label = crate::names::LABEL_PF_SHARING, "consumable capacity: nodes labelled pf-sharing=shared publish their PFs in shares of their memory");
    } else {
        tracing::info!(reason = %consumable.reason, label = crate::names::LABEL_PF_SHARING, "consumable capacity: skipped, every PF is handed out whole (the pf-sharing node label has no effect)");
    }
    let binding = capabilities::resolve(
        capabilities::Feature::BindingConditions,
        args.binding_conditions,
        &client,
        &args.driver_name,
    )
    .await;
    if binding.enabled {
        tracing::info!(reason = %binding.reason, label = crate::names::LABEL_ATTACHMENT, delay = ?args.attach_delay, "binding conditions: devices of nodes labelled attachment=fabric wait for the attacher before a pod binds");
    } else {
        tracing::info!(reason = %binding.reason, label = crate::names::LABEL_ATTACHMENT, "binding conditions: skipped, no device waits for attachment (the attachment node label has no effect)");
    }
    let attach_delay = binding.enabled.then_some(args.attach_delay);
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            args.driver_name.clone(),
            args.agent_grace_period,
            system_clock(),
            metrics.clone(),
            identity.clone(),
        )
        .with_api_view(api_view)
        .with_partitionable(partitionable.enabled)
        .with_device_taints(device_taints.enabled)
        .with_consumable_capacity(consumable.enabled)
        .with_binding_conditions(binding.enabled),
    );
    tracing::info!(driver = %args.driver_name, grace = ?args.agent_grace_period, leader_elect = args.leader_elect, "starting the controller");

    let result = if args.leader_elect {
        let cfg = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity,
            duration: args.lease_duration,
        };
        leader::run_elected(
            client,
            cfg,
            ready.clone(),
            metrics,
            shutdown.clone(),
            |stop| {
                run_controller(
                    ctx.clone(),
                    clients.watch.clone(),
                    ready.clone(),
                    attach_delay,
                    stop,
                )
            },
        )
        .await
        .map_err(Error::from)
    } else {
        metrics.set_leader(true);
        run_controller(ctx, clients.watch, ready, attach_delay, shutdown.clone()).await;
        Ok(())
    };

    shutdown.cancel();
    http.stopped().await;
    result
}

/// Runs the kube-runtime Controller until `stop` is cancelled; in-flight reconciles finish.
/// Watches use `watch_client` (no read timeout; each watch ends after [`WATCH_TIMEOUT_SECS`]),
/// the reconciler the request client in `ctx`. With `attach_delay`, the attacher
/// ([`attach`]) runs beside it.
async fn run_controller(
    ctx: Arc<Context>,
    watch_client: Client,
    ready: Readiness,
    attach_delay: Option<Duration>,
    stop: CancellationToken,
) {
    let attacher = attach_delay.map(|delay| {
        tokio::spawn(attach::run(
            ctx.client.clone(),
            watch_client.clone(),
            ctx.driver.clone(),
            delay,
            stop.clone(),
        ))
    });
    let client = watch_client;
    let watch_config = || watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    // Nothing here reads the managed fields; the stores keep every object, so leave them out.
    let strip = |meta: &mut kube::api::ObjectMeta| meta.managed_fields = None;

    // Every event updates the stores; only the ones that change what a reconcile would write
    // trigger one (an agent's heartbeat does not, see `triggers`).
    let (store, writer) = reflector::store::<MockAccelNode>();
    let mock_nodes = reflector::reflector(
        writer,
        watcher(
            Api::<MockAccelNode>::all(client.clone()),
            watch_config().any_semantic(),
        )
        .modify(move |n: &mut MockAccelNode| strip(&mut n.metadata)),
    );
    let (node_store, node_writer) = reflector::store();
    let nodes = reflector::reflector(
        node_writer,
        watcher(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            watch_config().any_semantic(),
        )
        .modify(move |n| {
            strip(&mut n.metadata);
            // Nothing reads a Node's annotations (kubelets and CSI drivers write several).
            n.metadata.annotations = None;
        }),
    );
    // The slices go into an index by node instead of a reflector's store (see `node_index`).
    let (slice_index, slice_writer) = caches::slice_index();
    let slices = watcher(
        Api::<ResourceSlice>::all(client.clone()),
        watch_config().labels(&managed_by_selector()),
    )
    .modify(move |s: &mut ResourceSlice| strip(&mut s.metadata))
    .inspect_ok(move |event| slice_writer.apply(event));
    let controller = Controller::for_stream(
        triggers::changed_objects(mock_nodes, triggers::node_trigger_key),
        store.clone(),
    );
    let mapping_store = store.clone();

    // The reconcile reads from the caches once both are synced; until then from the API server.
    let caches = {
        let ctx = ctx.clone();
        let stop = stop.clone();
        let (nodes, slices) = (node_store.clone(), slice_index);
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                (n, s) = futures::future::join(nodes.wait_until_ready(), slices.wait_synced()) => {
                    if n.is_ok() && s.is_ok() {
                        ctx.set_caches(Some(Arc::new(Caches::new(nodes, slices, ctx.driver.clone()))));
                        tracing::debug!("reading Nodes and slices from the watch caches");
                    }
                }
            }
        })
    };

    // Ready once the MockAccelNode cache is synced; then remove slices of objects that were
    // deleted while nobody was leading (the watch will not report those deletions).
    let sync = {
        let ctx = ctx.clone();
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = store.wait_until_ready() => if r.is_ok() {
                    ready.set(true);
                    match reconcile::sweep_orphans(&ctx, &store).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "removed slices of deleted MockAccelNodes"),
                        Err(e) => tracing::warn!(error = %e, "sweeping orphaned slices failed"),
                    }
                },
            }
        })
    };

    let run = controller
        // The slices carry the MockAccelNode as a (non-controller) owner; `owns` maps every
        // owner reference of the right kind, so a slice deleted by someone else (the kubelet
        // wipes them on restart) brings its node back at once.
        .owns_stream(slices.touched_objects())
        // A Node appearing gives the slices their owner UID; only nodes with a MockAccelNode
        // are mapped, so the many Nodes without an agent cost nothing, and only changes of
        // what the reconcile reads (not the kubelet's status updates) count.
        .watches_stream(
            triggers::changed_objects(nodes, |n| triggers::kube_node_trigger_key(&n.metadata)),
            move |n| {
                let r = ObjectRef::<MockAccelNode>::new(&n.name_any());
                mapping_store.get(&r).map(|_| r)
            },
        )
        .trigger_backoff(TriggerBackoff::default())
        .with_config(Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| {
            let ctx = ctx.clone();
            async move {
                match res {
                    Ok((obj, _)) => tracing::trace!(node = %obj.name, "reconciled"),
                    // A MockAccelNode that is gone (deleted, or named as owner by a slice that
                    // outlived it): its slices go too.
                    Err(controller::Error::ObjectNotFound(obj)) => {
                        match reconcile::node_deleted(&ctx, &obj.name).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(node = %obj.name, deleted = n, "MockAccelNode deleted: slices removed"),
                            Err(e) => tracing::warn!(node = %obj.name, error = %e, "removing slices of a deleted MockAccelNode failed"),
                        }
                    }
                    Err(controller::Error::ReconcilerFailed(..)) => {} // logged by error_policy
                    Err(e) => tracing::warn!(error = %e, "controller error"),
                }
            }
        });
    until_stopped(run, &store, &stop).await;
    sync.abort();
    caches.abort();
    // The next term (if any) builds caches of its own; until they are synced it reads the API.
    ctx.set_caches(None);
    if let Some(attacher) = attacher {
        // It stops on the same token; wait so that no write outlives the leadership.
        let _ = attacher.await;
    }
    tracing::info!("reconciler stopped");
}

/// Runs a kube-runtime Controller's stream `run` until it ends.
///
/// kube-runtime holds reconciles until the Controller's cache (`store`) is synced, and when it is
/// stopped before that, it waits for a sync that its stopped watch never brings: a replica told
/// to stop right after it took the lead hung until it was killed (seen when the scale bench
/// stopped a replica 27 ms after it took the lead). No reconcile can have started before the
/// sync, so then `run` is dropped instead of drained.
pub(crate) async fn until_stopped<K>(
    run: impl std::future::Future<Output = ()>,
    store: &kube::runtime::reflector::Store<K>,
    stop: &CancellationToken,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    tokio::pin!(run);
    let unsynced_stop = async {
        stop.cancelled().await;
        if store.wait_until_ready().now_or_never().is_some() {
            // Synced: the graceful shutdown finishes the reconciles in flight.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = &mut run => {}
        () = unsynced_stop => tracing::debug!("stopped before the watch cache synced; no reconcile had run"),
    }
}

/// Identity in the Lease when no `--identity`/`POD_NAME` is given.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mock-accel-controller".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;
    use std::time::Duration;

    #[tokio::test]
    async fn a_controller_stopped_before_its_cache_synced_ends_at_once() {
        let (store, _writer) = kube::runtime::reflector::store::<MockAccelNode>();
        let stop = CancellationToken::new();
        stop.cancel();
        // A run that never ends, as kube-runtime's waits for a sync that cannot come.
        let stopped = tokio::time::timeout(
            Duration::from_secs(5),
            until_stopped(std::future::pending(), &store, &stop),
        );
        assert!(stopped.await.is_ok(), "the stop was not honoured");
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_stopped_after_its_cache_synced_drains_its_run() {
        let (store, mut writer) = kube::runtime::reflector::store::<MockAccelNode>();
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let stop = CancellationToken::new();
        stop.cancel();
        let drained = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let run = {
            let drained = drained.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drained.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        };
        until_stopped(run, &store, &stop).await;
        assert!(drained.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn watch_backoff_stays_well_below_the_connect_deadline_and_resets() {
        let mut b = TriggerBackoff::default();
        let first: Vec<Duration> = b.by_ref().take(5).collect();
        assert_eq!(
            first,
            [500, 1000, 2000, 2000, 2000].map(Duration::from_millis)
        );
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
