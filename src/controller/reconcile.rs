//! One reconcile of one MockAccelNode, as a pipeline: read (the object, its Node, the node's
//! slices) → decide (pure, in [`super::plan`]) → delete obsolete slices → apply changed slices
//! (server-side apply) → write the controller's share of the status when it changed → publish
//! Events for what changed. Also the clean-up of slices whose MockAccelNode is gone.
//!
//! Everything the reconcile needs from the outside comes through [`Context`], including the
//! clock, so the scenario tests drive it against a mocked API server at a chosen time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::{core::v1::Node, resource::v1::ResourceSlice};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;

use super::{
    caches::{Caches, Written},
    metrics::Metrics,
    plan::{self, Observed, SlicePlan, WriteOutcome},
};
use crate::{
    backoff::Backoff,
    crd::{CONTROLLER_FIELD_MANAGER, MockAccelNode},
    kube_client::ApiView,
    metrics::Outcome,
    names::{LABEL_MANAGED_BY, MANAGED_BY, node_label_selector},
    slices::{binding, sharing},
};

/// Selects every slice this controller publishes (the label the slice computation sets).
pub fn managed_by_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY}")
}

/// Retry delay after a 409 from the API server: someone else wrote first, read again soon.
const CONFLICT_RETRY: Duration = Duration::from_secs(1);
/// Error requeue delays per node: 1 s doubling up to 5 min.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The time source; tests pin it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// A failed reconcile step. Each variant names the MockAccelNode (and the object written) so
/// that logs and the error policy say which node is affected.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("MockAccelNode has no name")]
    Unnamed,
    #[error(
        "node {node}: reading {what} failed: {source} (check the API server and the controller's RBAC)"
    )]
    Read {
        node: String,
        what: &'static str,
        source: kube::Error,
    },
    #[error("node {node}: applying ResourceSlice {slice} failed: {source}")]
    Apply {
        node: String,
        slice: String,
        source: kube::Error,
    },
    #[error("node {node}: deleting ResourceSlice {slice} failed: {source}")]
    Delete {
        node: String,
        slice: String,
        source: kube::Error,
    },
    #[error("node {node}: writing MockAccelNode status failed: {source}")]
    Status { node: String, source: kube::Error },
}

impl ReconcileError {
    fn source_error(&self) -> Option<&kube::Error> {
        match self {
            ReconcileError::Unnamed => None,
            ReconcileError::Read { source, .. }
            | ReconcileError::Apply { source, .. }
            | ReconcileError::Delete { source, .. }
            | ReconcileError::Status { source, .. } => Some(source),
        }
    }

    /// A 409 from the API server (a uid precondition failed or a write raced another): retried
    /// through a quick requeue rather than the error backoff.
    pub fn is_conflict(&self) -> bool {
        matches!(self.source_error(), Some(kube::Error::Api(s)) if s.is_conflict())
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub driver: String,
    /// How long an agent may go without a heartbeat before its slices are withdrawn.
    pub grace: Duration,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Publish PF/VF shared counters ([`crate::slices::counters`]); off until decided.
    pub partitionable: bool,
    /// Publish device taints of devices that are not Healthy; off until decided.
    pub device_taints: bool,
    /// The API server serves consumable capacity, so nodes labelled for it get shared PFs
    /// ([`crate::slices::sharing`]); off until decided.
    pub consumable_capacity: bool,
    /// The API server serves binding conditions, so nodes labelled for it get devices that wait
    /// for attachment ([`crate::slices::binding`]); off until decided.
    pub binding_conditions: bool,
    /// This process's view of the API server; heartbeats are judged only over time it saw.
    api_view: Option<ApiView>,
    reporter: Reporter,
    /// The error backoff of each node that failed since its last success. An entry goes with
    /// the next success, or when its MockAccelNode is found deleted.
    failures: Mutex<HashMap<String, Backoff>>,
    /// The watch caches of the current leadership term, once synced ([`super::caches`]);
    /// without them every reconcile reads the Node and the node's slices from the API server.
    caches: Mutex<Option<Arc<Caches>>>,
}

impl Context {
    pub fn new(
        client: Client,
        driver: String,
        grace: Duration,
        clock: Clock,
        metrics: Metrics,
        instance: String,
    ) -> Self {
        Context {
            client,
            driver,
            grace,
            clock,
            metrics,
            partitionable: false,
            device_taints: false,
            consumable_capacity: false,
            binding_conditions: false,
            api_view: None,
            reporter: Reporter {
                controller: CONTROLLER_FIELD_MANAGER.to_string(),
                instance: Some(instance),
            },
            failures: Mutex::default(),
            caches: Mutex::default(),
        }
    }

    /// Reads Nodes and slices from `caches` from now on (`None`: from the API server).
    pub fn set_caches(&self, caches: Option<Arc<Caches>>) {
        if let Ok(mut c) = self.caches.lock() {
            *c = caches;
        }
    }

    /// The synced caches, if any.
    pub fn caches(&self) -> Option<Arc<Caches>> {
        self.caches.lock().ok().and_then(|c| c.clone())
    }

    /// Judges heartbeats from when `view` last resumed (see [`plan::liveness`]).
    pub fn with_api_view(mut self, view: ApiView) -> Self {
        self.api_view = Some(view);
        self
    }

    /// Sets whether PF/VF shared counters are published (see [`super::capabilities`]).
    pub fn with_partitionable(mut self, partitionable: bool) -> Self {
        self.partitionable = partitionable;
        self
    }

    /// Sets whether device taints are published (see [`super::capabilities`]).
    pub fn with_device_taints(mut self, device_taints: bool) -> Self {
        self.device_taints = device_taints;
        self
    }

    /// Sets whether labelled nodes get shared PFs (see [`super::capabilities`]).
    pub fn with_consumable_capacity(mut self, enabled: bool) -> Self {
        self.consumable_capacity = enabled;
        self
    }

    /// Sets whether labelled nodes get devices that wait for attachment.
    pub fn with_binding_conditions(mut self, enabled: bool) -> Self {
        self.binding_conditions = enabled;
        self
    }

    fn slices(&self) -> Api<ResourceSlice> {
        Api::all(self.client.clone())
    }

    /// Delay before retrying `node` after one more failure: 1 s doubling up to 5 min.
    fn next_backoff(&self, node: &str) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return BACKOFF_MAX;
        };
        failures
            .entry(node.to_string())
            .or_insert_with(|| Backoff::new(BACKOFF_FIRST, BACKOFF_MAX))
            .next_delay()
    }

    fn reset_backoff(&self, node: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(node);
        }
    }

    /// Drops the backoff entries of nodes `exists` does not know (deleted while another
    /// replica led, or while the watch was down).
    fn retain_backoff(&self, exists: impl Fn(&str) -> bool) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.retain(|node, _| exists(node));
        }
    }

    /// Nodes with a backoff entry, for tests of the bookkeeping.
    #[cfg(test)]
    fn backoff_nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .failures
            .lock()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        nodes.sort();
        nodes
    }
}

/// Entry point for the kube-runtime Controller: runs the pipeline and records metrics.
pub async fn reconcile(
    node: Arc<MockAccelNode>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_node(&node, &ctx).await;
    let outcome = match &result {
        Ok(_) => {
            ctx.reset_backoff(&node.name_any());
            Outcome::Ok
        }
        Err(e) if e.is_conflict() => Outcome::Conflict,
        Err(_) => Outcome::Error,
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    result
}

/// Requeue policy after a failed reconcile: conflicts are retried at once, other errors with a
/// per-node exponential backoff (reset by the next success).
pub fn error_policy(node: Arc<MockAccelNode>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    if err.is_conflict() {
        tracing::debug!(node = %node.name_any(), error = %err, "conflict, retrying");
        return Action::requeue(CONFLICT_RETRY);
    }
    let delay = ctx.next_backoff(&node.name_any());
    tracing::warn!(node = %node.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_node(node: &MockAccelNode, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = node.metadata.name.clone().ok_or(ReconcileError::Unnamed)?;

    // Read: from the watch caches when they are synced (a reconcile that changes nothing then
    // sends no request), from the API server otherwise.
    let caches = ctx.caches();
    let cached_node = caches.as_ref().and_then(|c| c.node(&name));
    let k8s_node = match cached_node {
        Some(meta) => Some(meta),
        // Not in the cache: confirm with the API server before withdrawing anything (the Node's
        // watch event may simply not have arrived yet).
        None => Api::<Node>::all(ctx.client.clone())
            .get_opt(&name)
            .await
            .map_err(|source| ReconcileError::Read {
                node: name.clone(),
                what: "Node",
                source,
            })?
            .map(|n| n.metadata),
    };
    let wants_shared =
        sharing::node_wants_shared_pfs(k8s_node.as_ref().and_then(|n| n.labels.as_ref()));
    let wants_attachment =
        binding::node_wants_attachment(k8s_node.as_ref().and_then(|n| n.labels.as_ref()));
    let Some(node_uid) = k8s_node.and_then(|n| n.uid) else {
        // Without its Node the devices cannot be used; the Node watch brings us back.
        let removed = withdraw_node(ctx, &name).await?;
        tracing::info!(node = %name, removed, "Node does not exist; its slices are withdrawn");
        return Ok(Action::await_change());
    };
    let existing = match caches.as_ref().and_then(|c| c.node_slices(&name)) {
        Some(cached) => cached,
        None => {
            let listed = list_node_slices(ctx, &name).await?;
            if let Some(c) = &caches {
                c.listed(&name, &listed);
            }
            listed
        }
    };

    // Decide.
    let now = (ctx.clock)();
    let decide = |node: &MockAccelNode| {
        plan::plan_slices(&Observed {
            driver: &ctx.driver,
            node,
            node_uid: &node_uid,
            existing: &existing,
            now,
            grace: ctx.grace,
            api_view_since: ctx.api_view.as_ref().map(|v| v.since(now)),
            partitionable: ctx.partitionable,
            device_taints: ctx.device_taints,
            shared_pfs: wants_shared && ctx.consumable_capacity,
            binding_conditions: wants_attachment && ctx.binding_conditions,
        })
    };
    let mut plan = decide(node);
    // Withdraw only on what the API server holds now, never on the watch cache alone: while
    // the watch is down (after an outage it reconnects with a backoff) the cache keeps old
    // heartbeats of agents that are writing fresh ones.
    let fresh;
    let node = if !plan.liveness.is_alive() && !plan.delete.is_empty() {
        fresh = Api::<MockAccelNode>::all(ctx.client.clone())
            .get_opt(&name)
            .await
            .map_err(|source| ReconcileError::Read {
                node: name.clone(),
                what: "MockAccelNode",
                source,
            })?;
        match &fresh {
            // Gone meanwhile: the withdrawal stands.
            None => node,
            Some(fresh) => {
                plan = decide(fresh);
                fresh
            }
        }
    } else {
        node
    };

    // Write slices: obsolete ones first, so a pool never shows more slices than it counts.
    let mut written = Written::default();
    let result = write_slices(ctx, &name, &plan, &mut written).await;
    if let Some(c) = &caches {
        c.wrote(&name, written);
    }
    let write_error = match result {
        Ok(()) => None,
        Err(e) if e.is_conflict() => return Err(e),
        Err(e) => Some(e),
    };
    let outcome = match &write_error {
        None => WriteOutcome::Written,
        Some(e) => WriteOutcome::Failed(e.to_string()),
    };
    if write_error.is_none() {
        ctx.metrics.set_node_slices(&name, plan.desired.len());
    }

    // Status and Events.
    let status = plan::controller_status(node, &plan, &outcome, now);
    if plan::status_differs(node.status.as_ref(), &status) {
        let patch = json!({
            "apiVersion": MockAccelNode::api_version(&()),
            "kind": MockAccelNode::kind(&()),
            "metadata": { "name": name },
            "status": status,
        });
        Api::<MockAccelNode>::all(ctx.client.clone())
            .patch_status(
                &name,
                &PatchParams::apply(CONTROLLER_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| ReconcileError::Status {
                node: name.clone(),
                source,
            })?;
        ctx.metrics.api_write("MockAccelNode", "apply-status");
    }
    for ev in plan::events(node.status.as_ref(), &status, &plan) {
        publish(ctx, node, ev).await;
    }

    match write_error {
        Some(e) => Err(e),
        None => Ok(Action::requeue(plan.requeue_after)),
    }
}

async fn list_node_slices(ctx: &Context, node: &str) -> Result<Vec<ResourceSlice>, ReconcileError> {
    // `spec.nodeName` is indexed in the API server's watch cache: with it, the list costs the
    // node's own slices; with labels alone it filters every slice of the cluster, so a round of
    // heartbeats cost the API server O(nodes²).
    let lp = ListParams::default()
        .labels(&node_label_selector(node))
        .fields(&format!("spec.nodeName={node},spec.driver={}", ctx.driver));
    let list = ctx
        .slices()
        .list(&lp)
        .await
        .map_err(|source| ReconcileError::Read {
            node: node.to_string(),
            what: "ResourceSlices",
            source,
        })?;
    // The selectors are served by the API server; check again so a misbehaving server or a
    // test double can never make us delete another driver's or node's slices.
    Ok(list
        .items
        .into_iter()
        .filter(|s| s.spec.driver == ctx.driver && s.spec.node_name.as_deref() == Some(node))
        .collect())
}

/// Writes the plan's slices; `written` collects what was written, also when a write fails.
async fn write_slices(
    ctx: &Context,
    node: &str,
    plan: &SlicePlan,
    written: &mut Written,
) -> Result<(), ReconcileError> {
    for s in &plan.delete {
        delete_slice(ctx, node, s).await?;
        written.delete(s);
    }
    let pp = PatchParams::apply(CONTROLLER_FIELD_MANAGER).force();
    for s in &plan.apply {
        let slice = s.name_any();
        let stored = ctx
            .slices()
            .patch(&slice, &pp, &Patch::Apply(s))
            .await
            .map_err(|source| ReconcileError::Apply {
                node: node.to_string(),
                slice: slice.clone(),
                source,
            })?;
        if let Some(rv) = stored.metadata.resource_version {
            written.applied.push((slice.clone(), rv));
        }
        ctx.metrics.api_write("ResourceSlice", "apply");
        tracing::debug!(node, slice, pool = %s.spec.pool.name, generation = s.spec.pool.generation, "applied");
    }
    Ok(())
}

/// Deletes one slice, only if it is still the object that was read (uid precondition).
async fn delete_slice(ctx: &Context, node: &str, s: &ResourceSlice) -> Result<(), ReconcileError> {
    let slice = s.name_any();
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: s.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match ctx.slices().delete(&slice, &dp).await {
        Ok(_) => {
            ctx.metrics.api_write("ResourceSlice", "delete");
            tracing::debug!(node, slice, "deleted");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(source) => Err(ReconcileError::Delete {
            node: node.to_string(),
            slice,
            source,
        }),
    }
}

/// The MockAccelNode `node` is gone: withdraws its slices and forgets its bookkeeping (the
/// backoff entry would otherwise stay for the life of the process). Returns how many slices
/// were deleted.
pub async fn node_deleted(ctx: &Context, node: &str) -> Result<usize, ReconcileError> {
    ctx.reset_backoff(node);
    let removed = withdraw_node(ctx, node).await;
    if let Some(c) = ctx.caches() {
        c.forget(node);
    }
    removed
}

/// Deletes every slice of `node` (its Node or its MockAccelNode is gone). Returns how many
/// were deleted; listing first keeps a node without slices free of writes.
pub async fn withdraw_node(ctx: &Context, node: &str) -> Result<usize, ReconcileError> {
    let existing = list_node_slices(ctx, node).await?;
    let mut written = Written::default();
    for s in &existing {
        delete_slice(ctx, node, s).await?;
        written.delete(s);
    }
    // The next reconcile (the agent or the Node back) must not plan on a cache that still
    // shows these slices.
    if let Some(c) = ctx.caches() {
        c.wrote(node, written);
    }
    ctx.metrics.set_node_slices(node, 0);
    Ok(existing.len())
}

/// Deletes the slices of nodes that have no MockAccelNode in `store`, e.g. objects deleted
/// while no replica was leading. Run once the store is synced.
pub async fn sweep_orphans(
    ctx: &Context,
    store: &Store<MockAccelNode>,
) -> Result<usize, ReconcileError> {
    let lp = ListParams::default()
        .labels(&managed_by_selector())
        .fields(&format!("spec.driver={}", ctx.driver));
    let list = ctx
        .slices()
        .list(&lp)
        .await
        .map_err(|source| ReconcileError::Read {
            node: "*".to_string(),
            what: "ResourceSlices",
            source,
        })?;
    let known = |node: &str| store.get(&ObjectRef::new(node)).is_some();
    ctx.retain_backoff(known);
    let orphans = plan::orphans(&ctx.driver, &list.items, known);
    for s in &orphans {
        delete_slice(ctx, s.spec.node_name.as_deref().unwrap_or_default(), s).await?;
    }
    Ok(orphans.len())
}

/// Publishes one Event on the MockAccelNode; a failure is logged, never fails the reconcile.
///
/// A fresh `Recorder` per Event: a shared one folds Events with the same reason into a series
/// of the first one and keeps its note, which would hide e.g. the new generation of a pool.
/// Events are only planned for changes, so each deserves an object of its own.
async fn publish(ctx: &Context, node: &MockAccelNode, ev: plan::EventPlan) {
    let event = Event {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.to_string(),
        note: Some(ev.note),
        action: ev.action.to_string(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    match recorder.publish(&event, &node.object_ref(&())).await {
        Ok(()) => ctx.metrics.api_write("Event", "create"),
        Err(e) => {
            tracing::warn!(node = %node.name_any(), reason = ev.reason, error = %e, "cannot publish Event")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{controller::metrics::Metrics, crd::MockAccelNodeSpec};
    use http::{Request, Response};
    use kube::{
        client::Body,
        runtime::{reflector, watcher},
    };
    use tower_test::mock;

    fn mock_context() -> (Arc<Context>, mock::Handle<Request<Body>, Response<Body>>) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let ctx = Context::new(
            Client::new(svc, "default"),
            "mock-accel.example.com".into(),
            Duration::from_secs(40),
            system_clock(),
            Metrics::unregistered(),
            "test".into(),
        );
        (Arc::new(ctx), handle)
    }

    fn mk_node(name: &str) -> MockAccelNode {
        MockAccelNode::new(
            name,
            MockAccelNodeSpec {
                node_name: name.into(),
                ..Default::default()
            },
        )
    }

    /// Answers one LIST of ResourceSlices with an empty list.
    async fn no_slices(api: &mut mock::Handle<Request<Body>, Response<Body>>) {
        let (req, reply) = api.next_request().await.expect("a LIST of slices");
        assert_eq!(req.uri().path(), "/apis/resource.k8s.io/v1/resourceslices");
        let body = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
            "metadata": {"resourceVersion": "1"}, "items": []});
        reply.send_response(
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    fn fail(ctx: &Arc<Context>, node: &str) {
        error_policy(
            Arc::new(mk_node(node)),
            &ReconcileError::Unnamed,
            ctx.clone(),
        );
    }

    #[tokio::test]
    async fn a_deleted_node_leaves_no_backoff_entry_behind() {
        let (ctx, mut api) = mock_context();
        fail(&ctx, "gone");
        fail(&ctx, "gone");
        fail(&ctx, "other");
        assert_eq!(ctx.backoff_nodes(), ["gone", "other"]);

        let deleted = {
            let ctx = ctx.clone();
            tokio::spawn(async move { node_deleted(&ctx, "gone").await })
        };
        no_slices(&mut api).await;
        assert_eq!(deleted.await.unwrap().unwrap(), 0);
        assert_eq!(ctx.backoff_nodes(), ["other"]);
        // A new node of the same name starts its backoff afresh.
        assert_eq!(ctx.next_backoff("gone"), BACKOFF_FIRST);
    }

    #[tokio::test]
    async fn the_sweep_drops_backoff_entries_of_nodes_deleted_unseen() {
        let (ctx, mut api) = mock_context();
        let (store, mut writer) = reflector::store::<MockAccelNode>();
        writer.apply_watcher_event(&watcher::Event::InitApply(mk_node("kept")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        fail(&ctx, "kept");
        fail(&ctx, "deleted-while-not-leading");

        let sweep = {
            let ctx = ctx.clone();
            tokio::spawn(async move { sweep_orphans(&ctx, &store).await })
        };
        no_slices(&mut api).await;
        assert_eq!(sweep.await.unwrap().unwrap(), 0);
        assert_eq!(ctx.backoff_nodes(), ["kept"]);
    }
}
