//! Reconcile scenarios against the shared mocked API server ([`crate::test_support::api`]):
//! each test calls [`reconcile`] directly with a [`Context`] around a mocked client and a pinned
//! clock, while a verifier task answers every request in turn and asserts its method, path,
//! query and body. A request the scenario does not expect fails the test; so does a missing
//! one, and the verifier checks at the end that nothing else was sent. The steps of a reconcile
//! (list slices, apply one, write the status, …) are methods on the server below.

use std::{sync::Arc, time::Duration};

use http::Method;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::{
    Client, ResourceExt,
    api::{ObjectMeta, PartialObjectMeta},
    runtime::{controller::Action, reflector, watcher},
};
use serde_json::json;

use super::{
    caches::{Caches, slice_index},
    metrics::Metrics,
    node_index::IndexWriter,
    plan::{self, Observed, WriteOutcome},
    reconcile::{Context, ReconcileError, error_policy, reconcile},
};
use crate::{
    crd::{
        AgentStatus, CONTROLLER_FIELD_MANAGER, DeviceStatus, MockAccelNode, MockAccelNodeSpec,
        MockAccelNodeStatus, Reported,
    },
    test_support::{
        api::{ApiServer, Call, mock_client},
        devices,
    },
};

const DRIVER: &str = "mock-accel.example.com";
const NODE: &str = "node1";
const NODE_UID: &str = "node-uid-1";
const GRACE: Duration = Duration::from_secs(40);
const HEARTBEAT: &str = "2026-01-01T00:00:00Z";
/// 10 s after the heartbeat: the agent is alive.
const FRESH: &str = "2026-01-01T00:00:10Z";
/// 60 s after the heartbeat: past the 40 s grace period.
const LATE: &str = "2026-01-01T00:01:00Z";
/// Upper bound for one scenario; nothing here waits on real time.
const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Fixtures

fn mk_device(name: &str, numa: Option<u32>) -> DeviceStatus {
    let sysfs_name = name.replace('-', "_");
    let device = if name.contains("vf") {
        devices::vf(&sysfs_name, "mock0")
    } else {
        devices::pf(&sysfs_name)
    };
    let device = device
        .name(name)
        .uuid(format!("00000000-0000-0000-0000-{:0>12}", name.len()))
        .numa(numa)
        .fw_version(Some("1.0.0"))
        .build();
    DeviceStatus::from_device(&device, NODE, None)
}

/// A node whose agent last reported at [`HEARTBEAT`], with one device on NUMA node 0 and one on
/// NUMA node 1 (two pools).
fn mk_node() -> MockAccelNode {
    let mut n = MockAccelNode::new(
        NODE,
        MockAccelNodeSpec {
            node_name: NODE.into(),
            ..Default::default()
        },
    );
    n.metadata.uid = Some("man-uid-1".into());
    n.metadata.generation = Some(1);
    n.metadata.resource_version = Some("100".into());
    n.status = Some(MockAccelNodeStatus {
        devices: Some(vec![
            mk_device("mock0", Some(0)),
            mk_device("mock1", Some(1)),
        ]),
        agent: Some(AgentStatus {
            version: "0.1.0".into(),
            heartbeat: HEARTBEAT.into(),
            plugin_registered: true,
        }),
        ..Default::default()
    });
    n
}

fn devices_mut(n: &mut MockAccelNode) -> &mut Vec<DeviceStatus> {
    n.status
        .as_mut()
        .and_then(|s| s.devices.as_mut())
        .expect("fixture has devices")
}

fn t(s: &str) -> Timestamp {
    s.parse().expect("fixture time")
}

/// The cluster after a successful publish of `node` at `now`: the slices as the API server
/// stores them (with uid and resourceVersion) and the node with the controller's status.
fn published(node: &MockAccelNode, now: &str) -> (MockAccelNode, Vec<ResourceSlice>) {
    let plan = plan::plan_slices(&Observed {
        driver: DRIVER,
        node,
        node_uid: NODE_UID,
        existing: &[],
        now: t(now),
        grace: GRACE,
        partitionable: false,
        device_taints: true,
        shared_pfs: false,
        binding_conditions: false,
        api_view_since: None,
    });
    let status = plan::controller_status(node, &plan, &WriteOutcome::Written, t(now));
    let mut node = node.clone();
    let s = node.status.get_or_insert_with(Default::default);
    s.pools = status.pools;
    s.conditions = status.conditions;
    s.observed_generation = status.observed_generation;
    let slices = plan.desired.into_iter().map(stored).collect();
    (node, slices)
}

/// A slice as read back from the API server.
fn stored(mut s: ResourceSlice) -> ResourceSlice {
    let name = s.name_any();
    s.metadata.uid = Some(format!("uid-{name}"));
    s.metadata.resource_version = Some("7".into());
    s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(
        HEARTBEAT,
    )));
    s
}

fn pool_of<'a>(slices: &'a [ResourceSlice], pool: &str) -> &'a ResourceSlice {
    slices
        .iter()
        .find(|s| s.spec.pool.name == pool)
        .unwrap_or_else(|| panic!("no slice of pool {pool}"))
}

fn context(client: Client, now: &str) -> Arc<Context> {
    let now = t(now);
    Arc::new(Context::new(
        client,
        DRIVER.into(),
        GRACE,
        Arc::new(move || now),
        Metrics::unregistered(),
        "test-replica".into(),
    ))
}

// ---------------------------------------------------------------------------------------------
// The mocked API server, as the reconciler uses it

fn mock_api(now: &str) -> (Arc<Context>, ApiServer) {
    let (client, api) = mock_client();
    (context(client, now), api)
}

/// The requests a reconcile sends, as scenario steps on the shared mocked API server.
impl ApiServer {
    async fn get_node(&mut self) {
        let call = self
            .expect(Method::GET, &format!("/api/v1/nodes/{NODE}"))
            .await;
        call.ok(&json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": NODE, "uid": NODE_UID, "resourceVersion": "1" },
        }));
    }

    /// The fresh read of the MockAccelNode that precedes a withdrawal; answers `node`.
    async fn get_mock_node(&mut self, node: &MockAccelNode) {
        let call = self
            .expect(
                Method::GET,
                &format!("/apis/mock-accel.example.com/v1alpha1/mockaccelnodes/{NODE}"),
            )
            .await;
        call.ok(&serde_json::to_value(node).expect("serializable"));
    }

    async fn get_node_missing(&mut self) {
        let call = self
            .expect(Method::GET, &format!("/api/v1/nodes/{NODE}"))
            .await;
        call.fail(404, "NotFound");
    }

    /// Lists the node's slices and answers `existing`.
    async fn list_slices(&mut self, existing: &[ResourceSlice]) {
        let call = self
            .expect(Method::GET, "/apis/resource.k8s.io/v1/resourceslices")
            .await;
        assert_eq!(
            call.param("labelSelector").as_deref(),
            Some(
                "app.kubernetes.io/managed-by=mock-accel-controller,mock-accel.example.com/node=node1"
            )
        );
        assert_eq!(
            call.param("fieldSelector").as_deref(),
            Some(format!("spec.nodeName=node1,spec.driver={DRIVER}").as_str())
        );
        call.ok(&json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
            "metadata": { "resourceVersion": "8" },
            "items": existing,
        }));
    }

    /// A server-side apply of one slice; returns the applied body.
    async fn apply_slice(&mut self) -> ResourceSlice {
        let call = self.next().await;
        assert_eq!(
            call.method,
            Method::PATCH,
            "expected a slice apply, got {} {}",
            call.method,
            call.path
        );
        let name = call
            .path
            .strip_prefix("/apis/resource.k8s.io/v1/resourceslices/")
            .unwrap_or_else(|| panic!("expected a slice apply, got PATCH {}", call.path))
            .to_string();
        assert_eq!(
            call.param("fieldManager").as_deref(),
            Some(CONTROLLER_FIELD_MANAGER)
        );
        assert_eq!(call.param("force").as_deref(), Some("true"));
        let slice: ResourceSlice =
            serde_json::from_value(call.body.clone()).expect("a ResourceSlice body");
        assert_eq!(slice.name_any(), name, "body and path name the same slice");
        assert!(slice.metadata.resource_version.is_none() && slice.metadata.uid.is_none());
        let answer = serde_json::to_value(stored(slice.clone())).expect("serializable");
        call.ok(&answer);
        slice
    }

    /// A delete of `slice`, guarded by its uid.
    async fn delete_slice(&mut self, slice: &ResourceSlice) -> Call {
        let call = self
            .expect(
                Method::DELETE,
                &format!(
                    "/apis/resource.k8s.io/v1/resourceslices/{}",
                    slice.name_any()
                ),
            )
            .await;
        assert_eq!(
            call.body["preconditions"]["uid"].as_str(),
            slice.metadata.uid.as_deref(),
            "deletes carry the uid precondition: {}",
            call.body
        );
        call
    }

    async fn deleted(&mut self, slice: &ResourceSlice) {
        let call = self.delete_slice(slice).await;
        call.ok(&serde_json::to_value(slice).expect("serializable"));
    }

    /// The status apply; returns the applied status.
    async fn apply_status(&mut self) -> MockAccelNodeStatus {
        let call = self
            .expect(
                Method::PATCH,
                &format!("/apis/mock-accel.example.com/v1alpha1/mockaccelnodes/{NODE}/status"),
            )
            .await;
        assert_eq!(
            call.param("fieldManager").as_deref(),
            Some(CONTROLLER_FIELD_MANAGER)
        );
        assert_eq!(call.param("force").as_deref(), Some("true"));
        assert_eq!(call.body["kind"], "MockAccelNode");
        assert_eq!(call.body["metadata"]["name"], NODE);
        let status: MockAccelNodeStatus =
            serde_json::from_value(call.body["status"].clone()).expect("a status body");
        // The controller sends only the fields it owns; the agent's stay with the agent.
        assert!(
            status.devices.is_none() && status.agent.is_none() && status.prepared_claims.is_none()
        );
        let mut answer = mk_node();
        answer.status = Some(status.clone());
        call.ok(&serde_json::to_value(answer).expect("serializable"));
        status
    }

    /// An Event on the MockAccelNode; returns (type, reason, note).
    async fn event(&mut self) -> (String, String, String) {
        let call = self
            .expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/default/events",
            )
            .await;
        assert_eq!(call.body["regarding"]["kind"], "MockAccelNode");
        assert_eq!(call.body["regarding"]["name"], NODE);
        assert_eq!(call.body["reportingController"], CONTROLLER_FIELD_MANAGER);
        let out = (
            call.body["type"].as_str().unwrap_or_default().to_string(),
            call.body["reason"].as_str().unwrap_or_default().to_string(),
            call.body["note"].as_str().unwrap_or_default().to_string(),
        );
        let body = call.body.clone();
        call.ok(&body);
        out
    }
}

/// What one reconcile did.
struct Ran<T> {
    result: Result<Action, ReconcileError>,
    /// The error policy's answer when the reconcile failed.
    retry: Option<Action>,
    /// What the scenario returned.
    seen: T,
}

/// Runs one reconcile of `node` at `now` against `scenario`, which answers every request and
/// ends with [`ApiServer::done`].
async fn run<T, F, Fut>(node: MockAccelNode, now: &str, scenario: F) -> Ran<T>
where
    T: Send + 'static,
    F: FnOnce(ApiServer) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let (ctx, api) = mock_api(now);
    run_on(ctx, api, node, scenario).await
}

/// [`run`] with a context of the caller's (e.g. one reading from watch caches).
async fn run_on<T, F, Fut>(
    ctx: Arc<Context>,
    api: ApiServer,
    node: MockAccelNode,
    scenario: F,
) -> Ran<T>
where
    T: Send + 'static,
    F: FnOnce(ApiServer) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let verifier = tokio::spawn(scenario(api));
    let node = Arc::new(node);
    let result = tokio::time::timeout(TIMEOUT, reconcile(node.clone(), ctx.clone()))
        .await
        .expect("reconcile timed out: it waits for a request the scenario does not answer");
    let retry = result
        .as_ref()
        .err()
        .map(|e| error_policy(node.clone(), e, ctx.clone()));
    // Dropping the last client closes the mock service, which lets `done` see the end.
    drop(ctx);
    let seen = tokio::time::timeout(TIMEOUT, verifier)
        .await
        .expect("the scenario timed out waiting for a request the reconciler never sent")
        .expect("scenario assertions");
    Ran {
        result,
        retry,
        seen,
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[tokio::test]
async fn create_publishes_one_slice_per_pool_then_the_status() {
    let ran = run(mk_node(), FRESH, |mut api| async move {
        api.get_node().await;
        api.list_slices(&[]).await;
        let mut applied = vec![api.apply_slice().await, api.apply_slice().await];
        let status = api.apply_status().await;
        let events = vec![api.event().await, api.event().await];
        api.done().await;
        applied.sort_by(|a, b| a.spec.pool.name.cmp(&b.spec.pool.name));
        (applied, status, events)
    })
    .await;
    let action = ran.result.expect("reconcile succeeds");
    // Heartbeat at 0 s, grace 40 s, now 10 s: look again right after the heartbeat expires.
    assert_eq!(action, Action::requeue(Duration::from_secs(31)));

    let (applied, status, events) = ran.seen;
    let pools: Vec<_> = applied.iter().map(|s| s.spec.pool.name.as_str()).collect();
    assert_eq!(pools, ["node1/numa0", "node1/numa1"]);
    for (slice, device) in applied.iter().zip(["mock0", "mock1"]) {
        assert_eq!(slice.spec.driver, DRIVER);
        assert_eq!(slice.spec.node_name.as_deref(), Some(NODE));
        assert_eq!(slice.spec.pool.generation, 1);
        assert_eq!(slice.spec.pool.resource_slice_count, 1);
        let names: Vec<_> = slice
            .spec
            .devices
            .iter()
            .flatten()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, [device]);
        let owners = slice.metadata.owner_references.clone().unwrap_or_default();
        assert!(owners.iter().any(|o| o.kind == "Node"
            && o.name == NODE
            && o.uid == NODE_UID
            && o.controller == Some(true)));
        assert!(owners.iter().any(|o| o.kind == "MockAccelNode"
            && o.uid == "man-uid-1"
            && o.controller != Some(true)));
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("mock-accel-controller")
        );
    }

    let summary: Vec<_> = status
        .pools
        .iter()
        .flatten()
        .map(|p| (p.name.as_str(), p.generation, p.devices, p.slices))
        .collect();
    assert_eq!(
        summary,
        [("node1/numa0", 1, 1, 1), ("node1/numa1", 1, 1, 1)]
    );
    let published = status
        .condition("SlicesPublished")
        .expect("SlicesPublished");
    assert_eq!(
        (published.status.as_str(), published.reason.as_str()),
        ("True", "Published")
    );
    assert_eq!(
        status.condition("Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(status.observed_generation, Some(1));

    for ((type_, reason, note), pool) in events.iter().zip(["node1/numa0", "node1/numa1"]) {
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Normal", "PoolPublished")
        );
        assert!(note.contains(pool), "{note}");
    }
}

#[tokio::test]
async fn steady_state_reads_and_writes_nothing() {
    let (node, existing) = published(&mk_node(), FRESH);
    let ran = run(node, "2026-01-01T00:00:20Z", |mut api| async move {
        api.get_node().await;
        api.list_slices(&existing).await;
        api.done().await;
    })
    .await;
    let action = ran.result.expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(21)));
}

#[tokio::test]
async fn added_device_reapplies_its_pool_with_a_bumped_generation() {
    let (mut node, existing) = published(&mk_node(), FRESH);
    devices_mut(&mut node).push(mk_device("mock0-vf0", Some(0)));
    let ran = run(node, FRESH, |mut api| async move {
        api.get_node().await;
        api.list_slices(&existing).await;
        let slice = api.apply_slice().await;
        let status = api.apply_status().await;
        let event = api.event().await;
        api.done().await;
        (slice, status, event)
    })
    .await;
    ran.result.expect("reconcile succeeds");
    let (slice, status, (_, reason, note)) = ran.seen;
    assert_eq!(slice.spec.pool.name, "node1/numa0");
    assert_eq!(slice.spec.pool.generation, 2);
    let names: Vec<_> = slice
        .spec
        .devices
        .iter()
        .flatten()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["mock0", "mock0-vf0"]);
    let numa0 = status
        .pools
        .iter()
        .flatten()
        .find(|p| p.name == "node1/numa0")
        .expect("pool");
    assert_eq!((numa0.generation, numa0.devices), (2, 2));
    assert_eq!(reason, "PoolPublished");
    assert!(note.contains("generation 2"), "{note}");
}

#[tokio::test]
async fn removed_device_empties_its_pool_and_deletes_the_slice() {
    let (mut node, existing) = published(&mk_node(), FRESH);
    devices_mut(&mut node).retain(|d| d.name != "mock1");
    let numa1 = pool_of(&existing, "node1/numa1").clone();
    let ran = run(node, FRESH, |mut api| async move {
        api.get_node().await;
        api.list_slices(&existing).await;
        api.deleted(&numa1).await;
        let status = api.apply_status().await;
        let event = api.event().await;
        api.done().await;
        (status, event)
    })
    .await;
    ran.result.expect("reconcile succeeds");
    let (status, (type_, reason, note)) = ran.seen;
    let pools: Vec<_> = status
        .pools
        .iter()
        .flatten()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(pools, ["node1/numa0"]);
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Normal", "PoolWithdrawn")
    );
    assert!(note.contains("node1/numa1"), "{note}");
}

#[tokio::test]
async fn slice_deleted_by_someone_else_is_applied_again_quietly() {
    let (node, existing) = published(&mk_node(), FRESH);
    let remaining = vec![pool_of(&existing, "node1/numa0").clone()];
    let ran = run(node, FRESH, |mut api| async move {
        api.get_node().await;
        api.list_slices(&remaining).await;
        let slice = api.apply_slice().await;
        // Same content and generation as before the wipe: the status is unchanged and
        // nothing is worth an Event.
        api.done().await;
        slice
    })
    .await;
    ran.result.expect("reconcile succeeds");
    assert_eq!(ran.seen.spec.pool.name, "node1/numa1");
    assert_eq!(ran.seen.spec.pool.generation, 1);
}

#[tokio::test]
async fn stale_agent_withdraws_the_slices_and_says_why() {
    let (node, existing) = published(&mk_node(), FRESH);
    let stored = node.clone();
    let ran = run(node, LATE, |mut api| async move {
        api.get_node().await;
        api.list_slices(&existing).await;
        api.get_mock_node(&stored).await;
        for s in &existing {
            api.deleted(s).await;
        }
        let status = api.apply_status().await;
        let events = vec![api.event().await, api.event().await];
        api.done().await;
        (status, events)
    })
    .await;
    let action = ran.result.expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(plan::STALE_RESYNC));
    let (status, events) = ran.seen;
    assert_eq!(status.pools, Some(vec![]));
    let published = status
        .condition("SlicesPublished")
        .expect("SlicesPublished");
    assert_eq!(
        (published.status.as_str(), published.reason.as_str()),
        ("False", "AgentStale")
    );
    assert_eq!(published.last_transition_time.0, t(LATE));
    let ready = status.condition("Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AgentStale")
    );
    assert!(
        events
            .iter()
            .all(|(t, r, _)| t == "Warning" && r == "PoolWithdrawn"),
        "{events:?}"
    );
}

/// The watch cache holds a heartbeat past the grace period (the watch was down after an API
/// server outage), the API server a fresh one: nothing is withdrawn and nothing written.
#[tokio::test]
async fn a_stale_watch_cache_withdraws_nothing_the_api_server_shows_alive() {
    let (cached, existing) = published(&mk_node(), FRESH);
    let mut current = cached.clone();
    if let Some(agent) = current.status.as_mut().and_then(|s| s.agent.as_mut()) {
        agent.heartbeat = "2026-01-01T00:00:50Z".into();
    }
    let ran = run(cached, LATE, |mut api| async move {
        api.get_node().await;
        api.list_slices(&existing).await;
        api.get_mock_node(&current).await;
        api.done().await;
    })
    .await;
    // Alive until 00:01:30 by the fresh heartbeat: look again just after.
    assert_eq!(
        ran.result.expect("reconcile succeeds"),
        Action::requeue(Duration::from_secs(31))
    );
}

#[tokio::test]
async fn unregistered_plugin_counts_as_stale() {
    let (mut node, existing) = published(&mk_node(), FRESH);
    if let Some(agent) = node.status.as_mut().and_then(|s| s.agent.as_mut()) {
        agent.plugin_registered = false;
    }
    let stored = node.clone();
    let ran = run(node, FRESH, |mut api| async move {
        api.get_node().await;
        api.list_slices(&existing).await;
        api.get_mock_node(&stored).await;
        for s in &existing {
            api.deleted(s).await;
        }
        let status = api.apply_status().await;
        api.event().await;
        api.event().await;
        api.done().await;
        status
    })
    .await;
    ran.result.expect("reconcile succeeds");
    let published = ran
        .seen
        .condition("SlicesPublished")
        .cloned()
        .expect("SlicesPublished");
    assert_eq!(published.reason, "AgentStale");
    assert!(
        published.message.contains("not registered"),
        "{}",
        published.message
    );
}

#[tokio::test]
async fn missing_node_withdraws_the_slices_and_writes_nothing_else() {
    let (node, existing) = published(&mk_node(), FRESH);
    let ran = run(node, FRESH, |mut api| async move {
        api.get_node_missing().await;
        api.list_slices(&existing).await;
        for s in &existing {
            api.deleted(s).await;
        }
        api.done().await;
    })
    .await;
    assert_eq!(
        ran.result.expect("reconcile succeeds"),
        Action::await_change()
    );
}

#[tokio::test]
async fn conflict_is_retried_soon_without_touching_the_status() {
    let (mut node, existing) = published(&mk_node(), FRESH);
    devices_mut(&mut node).retain(|d| d.name != "mock1");
    let numa1 = pool_of(&existing, "node1/numa1").clone();
    let ran = run(node, FRESH, |mut api| async move {
        api.get_node().await;
        api.list_slices(&existing).await;
        // The slice was replaced since the list: the uid precondition fails.
        api.delete_slice(&numa1).await.fail(409, "Conflict");
        api.done().await;
    })
    .await;
    let err = ran.result.expect_err("a conflict fails the reconcile");
    assert!(err.is_conflict());
    assert!(err.to_string().contains(NODE), "{err}");
    assert_eq!(ran.retry, Some(Action::requeue(Duration::from_secs(1))));
}

#[tokio::test]
async fn failed_apply_is_reported_in_the_status_and_retried_with_backoff() {
    let ran = run(mk_node(), FRESH, |mut api| async move {
        api.get_node().await;
        api.list_slices(&[]).await;
        let call = api.next().await;
        assert_eq!(call.method, Method::PATCH);
        call.fail(500, "InternalError");
        let status = api.apply_status().await;
        let event = api.event().await;
        api.done().await;
        (status, event)
    })
    .await;
    let err = ran
        .result
        .expect_err("the failed apply fails the reconcile");
    assert!(!err.is_conflict());
    assert!(err.to_string().contains(NODE), "{err}");
    assert_eq!(ran.retry, Some(Action::requeue(Duration::from_secs(1))));
    let (status, (type_, reason, note)) = ran.seen;
    let published = status
        .condition("SlicesPublished")
        .expect("SlicesPublished");
    assert_eq!(
        (published.status.as_str(), published.reason.as_str()),
        ("False", "ApplyFailed")
    );
    assert!(
        published.message.contains("mocked InternalError"),
        "{}",
        published.message
    );
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "ApplyFailed")
    );
    assert!(note.contains("ResourceSlice"), "{note}");
}

#[tokio::test]
async fn rejected_device_is_named_in_the_condition_and_an_event() {
    let mut node = mk_node();
    let mut bad = mk_device("mock7", Some(0));
    bad.device_type = Reported::Unknown("gpu".into());
    devices_mut(&mut node).push(bad);
    let ran = run(node, FRESH, |mut api| async move {
        api.get_node().await;
        api.list_slices(&[]).await;
        api.apply_slice().await;
        api.apply_slice().await;
        let status = api.apply_status().await;
        let mut events = Vec::new();
        for _ in 0..3 {
            events.push(api.event().await);
        }
        api.done().await;
        (status, events)
    })
    .await;
    ran.result.expect("a rejected device is no error");
    let (status, events) = ran.seen;
    let published = status
        .condition("SlicesPublished")
        .expect("SlicesPublished");
    assert_eq!(published.reason, "InvalidDevices");
    assert!(published.message.contains("mock7"), "{}", published.message);
    let rejected: Vec<_> = events
        .iter()
        .filter(|(_, r, _)| r == "DeviceRejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{events:?}");
    assert_eq!(rejected[0].0, "Warning");
    assert!(rejected[0].2.contains("mock7"), "{}", rejected[0].2);
}

#[tokio::test]
async fn sweep_deletes_only_slices_of_nodes_without_a_mockaccelnode() {
    use kube::runtime::{reflector, watcher};

    let (_, mut slices) = published(&mk_node(), FRESH);
    let mut orphan = slices[0].clone();
    orphan.metadata.name = Some("gone-numa0-000-mock-accel.example.com".into());
    orphan.metadata.uid = Some("uid-orphan".into());
    orphan.spec.node_name = Some("gone".into());
    slices.push(orphan.clone());

    let (store, mut writer) = reflector::store::<MockAccelNode>();
    writer.apply_watcher_event(&watcher::Event::Apply(mk_node()));
    let (ctx, mut api) = mock_api(FRESH);
    let verifier = tokio::spawn(async move {
        let call = api
            .expect(Method::GET, "/apis/resource.k8s.io/v1/resourceslices")
            .await;
        assert_eq!(
            call.param("labelSelector").as_deref(),
            Some("app.kubernetes.io/managed-by=mock-accel-controller")
        );
        assert_eq!(
            call.param("fieldSelector").as_deref(),
            Some("spec.driver=mock-accel.example.com")
        );
        call.ok(&json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
            "metadata": { "resourceVersion": "9" }, "items": slices,
        }));
        api.deleted(&orphan).await;
        api.done().await;
    });
    let deleted = tokio::time::timeout(TIMEOUT, super::reconcile::sweep_orphans(&ctx, &store))
        .await
        .expect("sweep timed out")
        .expect("sweep succeeds");
    assert_eq!(deleted, 1);
    drop(ctx);
    tokio::time::timeout(TIMEOUT, verifier)
        .await
        .expect("scenario timed out")
        .expect("scenario assertions");
}

// ---------------------------------------------------------------------------------------------
// With the watch caches of a synced term

/// A context reading from caches that hold the Node and `slices`; the writer adds to the slices.
fn cached_context(
    now: &str,
    slices: &[ResourceSlice],
) -> (Arc<Context>, ApiServer, IndexWriter<ResourceSlice>) {
    let (ctx, api) = mock_api(now);
    let (nodes, mut node_writer) = reflector::store::<PartialObjectMeta<Node>>();
    node_writer.apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta::<Node> {
        types: None,
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            uid: Some(NODE_UID.into()),
            ..Default::default()
        },
        _phantom: Default::default(),
    }));
    let (store, writer) = slice_index();
    for s in slices {
        writer.apply(&watcher::Event::Apply(s.clone()));
    }
    ctx.set_caches(Some(Arc::new(Caches::new(nodes, store, DRIVER.into()))));
    (ctx, api, writer)
}

#[tokio::test]
async fn with_synced_caches_a_steady_reconcile_sends_no_request() {
    let (node, existing) = published(&mk_node(), FRESH);
    let (ctx, api, _writer) = cached_context("2026-01-01T00:00:20Z", &existing);
    let ran = run_on(ctx, api, node, |api| api.done()).await;
    assert_eq!(
        ran.result.expect("reconcile succeeds"),
        Action::requeue(Duration::from_secs(21))
    );
}

#[tokio::test]
async fn a_reconcile_reads_only_its_own_nodes_slices_from_the_cache() {
    let (node, existing) = published(&mk_node(), FRESH);
    // 300 other nodes with slices like this one's, of this driver and with the same labels.
    let mut cached = existing.clone();
    for i in 0..300 {
        let other = format!("node-other-{i}");
        cached.extend(existing.iter().map(|s| {
            let mut s = s.clone();
            s.metadata.name = Some(format!("{other}-{}", s.name_any()));
            s.spec.node_name = Some(other.clone());
            s
        }));
    }
    let (ctx, api, _writer) = cached_context("2026-01-01T00:00:20Z", &cached);
    let caches = ctx.caches().expect("caches are set");
    let ran = run_on(ctx, api, node, |api| api.done()).await;
    ran.result.expect("reconcile succeeds");
    assert_eq!(
        caches.slices_visited(),
        existing.len() as u64,
        "the reconcile looked at other nodes' slices"
    );
}

#[tokio::test]
async fn after_a_write_the_slices_are_listed_until_the_cache_shows_it() {
    let (mut node, mut existing) = published(&mk_node(), FRESH);
    // Older than what the apply answers (resourceVersion 7).
    for s in &mut existing {
        s.metadata.resource_version = Some("6".into());
    }
    devices_mut(&mut node).push(mk_device("mock0-vf0", Some(0)));
    let (ctx, api, writer) = cached_context(FRESH, &existing);
    let caches = ctx.caches();
    // The write: no read before it.
    let ran = run_on(ctx, api, node.clone(), |mut api| async move {
        let slice = api.apply_slice().await;
        let status = api.apply_status().await;
        api.event().await;
        api.done().await;
        (slice, status)
    })
    .await;
    ran.result.expect("reconcile succeeds");
    let (slice, status) = ran.seen;
    let written = stored(slice);
    let s = node.status.as_mut().expect("fixture has a status");
    s.pools = status.pools;
    s.conditions = status.conditions;

    // The cache still shows the pool's old slice: the next reconcile lists, and finds the write
    // done (nothing is written twice).
    let mut listed = existing.clone();
    listed.retain(|s| s.name_any() != written.name_any());
    listed.push(written.clone());
    let (next, api) = mock_api(FRESH);
    next.set_caches(caches.clone());
    let ran = run_on(next, api, node.clone(), |mut api| async move {
        api.list_slices(&listed).await;
        api.done().await;
    })
    .await;
    ran.result.expect("reconcile succeeds");

    // Once the watch delivered it, the cache is trusted again.
    writer.apply(&watcher::Event::Apply(written));
    let (next, api) = mock_api(FRESH);
    next.set_caches(caches.clone());
    let ran = run_on(next, api, node, |api| api.done()).await;
    ran.result.expect("reconcile succeeds");
}
