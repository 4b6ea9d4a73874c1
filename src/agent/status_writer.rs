//! Applies the node agent's share of `MockAccelNode.status`: creates the node's object
//! (owned by the Node) on the first write, then server-side applies the status computed by
//! [`super::status::agent_status`] whenever the inputs change or a heartbeat is due, retrying
//! failed writes with the shared [`Backoff`].
//!
//! Writes are coalesced: at most one apply is in flight, the changes that arrive meanwhile are
//! one pending write of the latest state (the inputs are `watch` channels, which keep only the
//! latest value), and two writes are at least the minimum interval apart. Under any rate of
//! prepares a node thus costs at most one status write per minimum interval, and the status
//! still converges to the truth: the write after the interval carries everything that changed.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    discovery::Discovered,
    health::NodeHealth,
    metrics::AgentMetrics,
    status::{AgentReport, agent_status},
};
use crate::{
    backoff::Backoff,
    crd::{AGENT_FIELD_MANAGER, Condition, MockAccelNode, MockAccelNodeSpec},
    fixture::faults::FaultHits,
    plugin::{PreparedClaim, registration::RegistrationState},
    telemetry::Readiness,
};

/// First retry delay after a failed write; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Applies the agent's share of `MockAccelNode.status`.
pub struct StatusWriter {
    api: Api<MockAccelNode>,
    nodes: Api<Node>,
    node: String,
    heartbeat: Duration,
    min_interval: Duration,
    metrics: AgentMetrics,
    ready: Readiness,
}

/// What the writer follows of the fixture: the node's spec and what the agent derives from it.
pub struct FixtureInputs {
    /// The node's `MockAccelNode.spec` (`None` until read).
    pub spec: watch::Receiver<Option<MockAccelNodeSpec>>,
    /// Hits per injected-fault entry (the preparer's).
    pub fault_hits: watch::Receiver<FaultHits>,
    /// Every device's derived health (`super::health`).
    pub health: watch::Receiver<NodeHealth>,
}

impl StatusWriter {
    /// A writer for `node`'s object that re-applies an unchanged status every `heartbeat`,
    /// writes changes at most once per `min_interval` (coalesced), and sets `ready` to whether
    /// the kubelet confirmed the plugin after each successful apply.
    pub fn new(
        client: Client,
        node: String,
        heartbeat: Duration,
        min_interval: Duration,
        metrics: AgentMetrics,
        ready: Readiness,
    ) -> Self {
        StatusWriter {
            api: Api::all(client.clone()),
            nodes: Api::all(client),
            node,
            heartbeat,
            min_interval,
            metrics,
            ready,
        }
    }

    /// Runs until `shutdown` or until one of the inputs is closed.
    pub async fn run(
        self,
        mut discovered: watch::Receiver<Discovered>,
        mut prepared: watch::Receiver<Vec<PreparedClaim>>,
        mut registration: watch::Receiver<RegistrationState>,
        fixture: FixtureInputs,
        shutdown: CancellationToken,
    ) {
        let FixtureInputs {
            mut spec,
            mut fault_hits,
            mut health,
        } = fixture;
        let mut created = false;
        let mut conditions: Option<Vec<Condition>> = None;
        let mut last: Option<AgentReport> = None;
        let mut last_write = tokio::time::Instant::now();
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let mut retry_in = None;
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
                    spec: spec.borrow_and_update().clone(),
                    fault_hits: fault_hits.borrow_and_update().clone(),
                    health: health.borrow_and_update().clone(),
                }
            };
            self.metrics.observe_devices(&report);
            let changed = last.as_ref() != Some(&report);
            // The first write is never held back; a change waits out the minimum interval since
            // the last write, then goes out with whatever else changed meanwhile.
            let held = last.is_some() && last_write.elapsed() < self.min_interval;
            let due = (changed || last_write.elapsed() >= self.heartbeat) && !held;
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
                        self.metrics.status_written(true);
                        self.ready.set(report.plugin_registered);
                        last = Some(report);
                        last_write = tokio::time::Instant::now();
                        backoff.reset();
                        retry_in = None;
                    }
                    Err(e) => {
                        self.metrics.status_written(false);
                        let delay = backoff.next_delay();
                        tracing::warn!(node = %self.node, error = %e, retry_in = ?delay,
                            "writing MockAccelNode status failed");
                        created = false;
                        retry_in = Some(delay);
                    }
                }
            } else if changed {
                self.metrics.status_coalesced();
            }
            let retrying = retry_in.is_some();
            // Held back: changes that arrive before the interval ends join the pending write.
            let pending = !due && changed;
            let wait = match retry_in.take() {
                Some(delay) => delay,
                None if pending => self.min_interval.saturating_sub(last_write.elapsed()),
                None => self.heartbeat.saturating_sub(last_write.elapsed()),
            };
            let listen = !retrying && !pending;
            // While backing off, a change must not cut the wait short: the next attempt reads
            // the latest of everything anyway, and a failing API server gets its pause.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {},
                r = discovered.changed(), if listen => if r.is_err() { return },
                r = prepared.changed(), if listen => if r.is_err() { return },
                r = registration.changed(), if listen => if r.is_err() { return },
                r = spec.changed(), if listen => if r.is_err() { return },
                r = fault_hits.changed(), if listen => if r.is_err() { return },
                r = health.changed(), if listen => if r.is_err() { return },
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
            "spec": MockAccelNodeSpec { node_name: self.node.clone(), ..Default::default() },
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
            Timestamp::now(),
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
    //! The writer against the shared mocked API server, on tokio's paused clock: every request
    //! is asserted in order, and the times between them are the writer's own timers.

    use std::sync::Arc;

    use http::Method;
    use prometheus_client::{encoding::text::encode, registry::Registry};
    use serde_json::{Value, json};
    use tokio::{task::JoinHandle, time::Instant};

    use super::*;
    use crate::{
        inventory::Inventory,
        test_support::{
            api::{ApiServer, Call, mock_client},
            devices,
        },
    };

    const NODE: &str = "node1";
    const NODE_UID: &str = "node-uid-1";
    const OBJECT: &str = "/apis/mock-accel.example.com/v1alpha1/mockaccelnodes/node1";
    const HEARTBEAT: Duration = Duration::from_secs(10);
    const MIN_INTERVAL: Duration = Duration::from_secs(1);

    /// The writer's inputs and outputs, with the writer running.
    struct Agent {
        discovered: watch::Sender<Discovered>,
        registration: watch::Sender<RegistrationState>,
        prepared: watch::Sender<Vec<PreparedClaim>>,
        _spec: watch::Sender<Option<crate::crd::MockAccelNodeSpec>>,
        _fault_hits: watch::Sender<FaultHits>,
        _health: watch::Sender<NodeHealth>,
        ready: Readiness,
        registry: Registry,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    fn discovered(n: usize) -> Discovered {
        let devices = (0..n)
            .map(|i| devices::pf(&format!("mock{i}")).numa(Some(0)).build())
            .collect();
        Discovered {
            inventory: Arc::new(Inventory::new(devices)),
            warnings: Vec::new(),
        }
    }

    fn start(devices: usize, registered: bool) -> (Agent, ApiServer) {
        let (client, api) = mock_client();
        let mut registry = Registry::default();
        let metrics = AgentMetrics::register(&mut registry);
        let ready = Readiness::default();
        let (discovered_tx, discovered_rx) = watch::channel(discovered(devices));
        let (prepared_tx, prepared_rx) = watch::channel(Vec::new());
        let (registration_tx, registration_rx) = watch::channel(RegistrationState {
            registered,
            error: String::new(),
        });
        let (spec_tx, spec_rx) = watch::channel(None);
        let (fault_hits_tx, fault_hits_rx) = watch::channel(FaultHits::default());
        let (health_tx, health_rx) = watch::channel(NodeHealth::default());
        let shutdown = CancellationToken::new();
        let writer = StatusWriter::new(
            client,
            NODE.into(),
            HEARTBEAT,
            MIN_INTERVAL,
            metrics,
            ready.clone(),
        );
        let task = tokio::spawn(writer.run(
            discovered_rx,
            prepared_rx,
            registration_rx,
            FixtureInputs {
                spec: spec_rx,
                fault_hits: fault_hits_rx,
                health: health_rx,
            },
            shutdown.clone(),
        ));
        let agent = Agent {
            discovered: discovered_tx,
            registration: registration_tx,
            prepared: prepared_tx,
            _spec: spec_tx,
            _fault_hits: fault_hits_tx,
            _health: health_tx,
            ready,
            registry,
            shutdown,
            task,
        };
        (agent, api)
    }

    impl Agent {
        async fn stop(self, api: ApiServer) {
            self.shutdown.cancel();
            self.task.await.expect("the writer ends cleanly");
            api.done().await;
        }

        fn metrics(&self) -> String {
            let mut text = String::new();
            encode(&mut text, &self.registry).expect("encodable metrics");
            text
        }
    }

    /// Every apply is a forced server-side apply by the agent's field manager.
    fn assert_agent_apply(call: &Call) {
        assert_eq!(
            call.param("fieldManager").as_deref(),
            Some(AGENT_FIELD_MANAGER)
        );
        assert_eq!(call.param("force").as_deref(), Some("true"));
        assert_eq!(call.body["kind"], "MockAccelNode");
    }

    fn object(status: Value) -> Value {
        json!({
            "apiVersion": "mock-accel.example.com/v1alpha1", "kind": "MockAccelNode",
            "metadata": { "name": NODE, "uid": "man-uid-1", "resourceVersion": "5" },
            "spec": { "nodeName": NODE },
            "status": status,
        })
    }

    async fn get_node(api: &mut ApiServer) {
        let call = api
            .expect(Method::GET, &format!("/api/v1/nodes/{NODE}"))
            .await;
        call.ok(&json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": NODE, "uid": NODE_UID },
        }));
    }

    /// The object's creation: named after the node, owned (and garbage-collected) by it.
    async fn apply_object(api: &mut ApiServer) {
        let call = api.expect(Method::PATCH, OBJECT).await;
        assert_agent_apply(&call);
        let owner = &call.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                &owner["kind"],
                &owner["name"],
                &owner["uid"],
                &owner["controller"]
            ),
            (&json!("Node"), &json!(NODE), &json!(NODE_UID), &json!(true))
        );
        assert_eq!(call.body["spec"]["nodeName"], NODE);
        call.ok(&object(json!({})));
    }

    /// The status read that seeds the condition cache; answers `conditions`.
    async fn get_status(api: &mut ApiServer, conditions: Value) {
        let call = api.expect(Method::GET, &format!("{OBJECT}/status")).await;
        call.ok(&object(json!({ "conditions": conditions })));
    }

    /// A status apply; answers as the API server would and returns the applied status.
    async fn apply_status(api: &mut ApiServer) -> Value {
        let call = api.expect(Method::PATCH, &format!("{OBJECT}/status")).await;
        assert_agent_apply(&call);
        let status = call.body["status"].clone();
        assert!(
            status["pools"].is_null(),
            "pools belong to the controller: {status}"
        );
        call.ok(&object(status.clone()));
        status
    }

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or_else(|| panic!("no condition {type_} in {status}"))
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_write_creates_the_object_then_applies_the_status() {
        let (agent, mut api) = start(2, true);
        get_node(&mut api).await;
        apply_object(&mut api).await;
        let earlier = json!([{
            "type": "DevicesDiscovered", "status": "True", "reason": "Discovered",
            "message": "2 devices found", "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]);
        get_status(&mut api, earlier).await;
        let status = apply_status(&mut api).await;
        assert_eq!(status["deviceCount"], 2);
        assert_eq!(status["pfCount"], 2);
        assert_eq!(status["devices"][0]["name"], "mock0");
        assert_eq!(status["agent"]["pluginRegistered"], true);
        let discovered = condition(&status, "DevicesDiscovered");
        assert_eq!(
            discovered["lastTransitionTime"], "2026-01-01T00:00:00Z",
            "an unchanged condition keeps the transition time the server had"
        );
        assert_eq!(condition(&status, "PluginRegistered")["status"], "True");

        // The next request is the heartbeat; by then the agent reported itself ready.
        let heartbeat = api.expect(Method::PATCH, &format!("{OBJECT}/status")).await;
        assert!(
            agent.ready.get(),
            "ready once a status with a registered plugin is written"
        );
        let text = agent.metrics();
        assert!(
            text.contains(r#"status_writes_total{outcome="ok"} 1"#),
            "{text}"
        );
        let status = heartbeat.body["status"].clone();
        heartbeat.ok(&object(status));
        agent.stop(api).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_status_is_reapplied_once_per_heartbeat_in_one_request() {
        let (agent, mut api) = start(1, false);
        get_node(&mut api).await;
        apply_object(&mut api).await;
        get_status(&mut api, json!([])).await;
        apply_status(&mut api).await;
        let written = Instant::now();
        assert!(
            !agent.ready.get(),
            "not ready while the kubelet has not confirmed the plugin"
        );

        // No GET of the node or the status: the conditions the last apply returned are reused.
        let status = apply_status(&mut api).await;
        assert_eq!(written.elapsed(), HEARTBEAT);
        assert_eq!(status["deviceCount"], 1);
        let status = apply_status(&mut api).await;
        assert_eq!(written.elapsed(), 2 * HEARTBEAT);
        assert_eq!(
            condition(&status, "PluginRegistered")["reason"],
            "WaitingForKubelet"
        );
        agent.stop(api).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_is_applied_at_once() {
        let (agent, mut api) = start(1, false);
        get_node(&mut api).await;
        apply_object(&mut api).await;
        get_status(&mut api, json!([])).await;
        apply_status(&mut api).await;
        let written = Instant::now();

        agent.discovered.send_replace(discovered(3));
        let status = apply_status(&mut api).await;
        assert!(written.elapsed() < HEARTBEAT, "{:?}", written.elapsed());
        assert_eq!(status["deviceCount"], 3);

        agent.registration.send_replace(RegistrationState {
            registered: true,
            error: String::new(),
        });
        let status = apply_status(&mut api).await;
        assert!(written.elapsed() < HEARTBEAT, "{:?}", written.elapsed());
        assert_eq!(status["agent"]["pluginRegistered"], true);
        // The heartbeat after it: the writer has handled the answer and reported ready.
        let heartbeat = api.expect(Method::PATCH, &format!("{OBJECT}/status")).await;
        assert!(
            agent.ready.get(),
            "ready after the kubelet confirmed the plugin"
        );
        let status = heartbeat.body["status"].clone();
        heartbeat.ok(&object(status));
        agent.stop(api).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failed_writes_are_retried_with_backoff_from_the_start() {
        let (agent, mut api) = start(1, true);
        let began = Instant::now();
        api.expect(Method::GET, &format!("/api/v1/nodes/{NODE}"))
            .await
            .fail(500, "InternalError");

        // First retry after 500 ms: the object is created again, the status read again.
        get_node(&mut api).await;
        assert_eq!(began.elapsed(), Duration::from_millis(500));
        apply_object(&mut api).await;
        get_status(&mut api, json!([])).await;
        api.expect(Method::PATCH, &format!("{OBJECT}/status"))
            .await
            .fail(503, "ServiceUnavailable");

        // The second failure in a row waits twice as long, then everything is redone.
        let failed = Instant::now();
        get_node(&mut api).await;
        assert_eq!(failed.elapsed(), Duration::from_secs(1));
        apply_object(&mut api).await;
        get_status(&mut api, json!([])).await;
        let status = apply_status(&mut api).await;
        assert_eq!(status["deviceCount"], 1);

        // After a success the backoff starts over and the heartbeat takes its place.
        let written = Instant::now();
        let heartbeat = api.expect(Method::PATCH, &format!("{OBJECT}/status")).await;
        assert_eq!(written.elapsed(), HEARTBEAT);
        let text = agent.metrics();
        assert!(
            text.contains(r#"status_writes_total{outcome="error"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"status_writes_total{outcome="ok"} 1"#),
            "{text}"
        );
        heartbeat.fail(500, "InternalError");
        let failed = Instant::now();
        get_node(&mut api).await;
        assert_eq!(failed.elapsed(), Duration::from_millis(500));
        apply_object(&mut api).await;
        get_status(&mut api, json!([])).await;
        apply_status(&mut api).await;
        agent.stop(api).await;
    }

    fn claims(n: usize) -> Vec<PreparedClaim> {
        (0..n)
            .map(|i| PreparedClaim {
                uid: format!("uid-{i}"),
                namespace: "default".into(),
                name: format!("claim-{i}"),
                devices: vec![format!("mock{}", i % 2)],
                cdi_device_ids: Vec::new(),
                prepared_at: "2026-01-01T00:00:00Z".into(),
                registers: Vec::new(),
            })
            .collect()
    }

    /// The writer's first write: object, condition read, status.
    async fn first_write(api: &mut ApiServer) {
        get_node(api).await;
        apply_object(api).await;
        get_status(api, json!([])).await;
        apply_status(api).await;
    }

    /// Under churn (a prepare or unprepare every 10 ms for 5 s) the writer applies at most one
    /// status per minimum interval, and the last write carries the final prepared set. Without
    /// coalescing it applied one status per change, 500 here.
    #[tokio::test(start_paused = true)]
    async fn churn_costs_one_write_per_interval_and_the_status_converges() {
        let (agent, mut api) = start(2, true);
        first_write(&mut api).await;
        let began = Instant::now();
        let prepared = agent.prepared.clone();
        let churn = tokio::spawn(async move {
            for i in 0..500 {
                prepared.send_replace(claims(i % 7));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            prepared.send_replace(claims(3));
        });
        let mut writes = Vec::new();
        loop {
            let call = api.expect(Method::PATCH, &format!("{OBJECT}/status")).await;
            assert_agent_apply(&call);
            let status = call.body["status"].clone();
            call.ok(&object(status.clone()));
            writes.push((began.elapsed(), status));
            if churn.is_finished()
                && writes
                    .last()
                    .is_some_and(|(_, s)| s["preparedClaimCount"] == 3)
            {
                break;
            }
        }
        churn.await.expect("churn ends");
        let churn_time = Duration::from_secs(5);
        assert!(
            writes.len() <= 6,
            "{} writes in {churn_time:?} of churn: {:?}",
            writes.len(),
            writes.iter().map(|(t, _)| *t).collect::<Vec<_>>()
        );
        for pair in writes.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= MIN_INTERVAL,
                "writes {:?} apart",
                pair[1].0 - pair[0].0
            );
        }
        let (at, last) = writes.last().expect("writes");
        assert!(*at <= churn_time + MIN_INTERVAL, "converged only at {at:?}");
        let names: Vec<&Value> = last["preparedClaims"]
            .as_array()
            .expect("preparedClaims")
            .iter()
            .map(|c| &c["name"])
            .collect();
        assert_eq!(
            names,
            [&json!("claim-0"), &json!("claim-1"), &json!("claim-2")]
        );
        let text = agent.metrics();
        assert!(text.contains("status_writes_deferred_total"), "{text}");
        // Quiet again: the next write is the heartbeat, a full interval after the last write.
        let heartbeat = api.expect(Method::PATCH, &format!("{OBJECT}/status")).await;
        assert_eq!(began.elapsed(), *at + HEARTBEAT);
        heartbeat.ok(&object(json!({})));
        agent.stop(api).await;
    }

    /// A single change after a quiet spell is written at once; one that follows a write within
    /// the minimum interval waits for its end.
    #[tokio::test(start_paused = true)]
    async fn a_change_right_after_a_write_waits_for_the_minimum_interval() {
        let (agent, mut api) = start(1, true);
        first_write(&mut api).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let changed = Instant::now();
        agent.prepared.send_replace(claims(1));
        let status = apply_status(&mut api).await;
        assert_eq!(
            changed.elapsed(),
            Duration::ZERO,
            "a change after a quiet spell goes out at once"
        );
        assert_eq!(status["preparedClaimCount"], 1);
        let written = Instant::now();
        agent.prepared.send_replace(claims(2));
        let status = apply_status(&mut api).await;
        assert_eq!(written.elapsed(), MIN_INTERVAL);
        assert_eq!(status["preparedClaimCount"], 2);
        agent.stop(api).await;
    }

    /// A failing API server gets the writer's backoff even while the inventory keeps changing:
    /// each change used to wake the writer at once, so it retried in a tight loop.
    #[tokio::test(start_paused = true)]
    async fn changes_during_a_backoff_do_not_cut_it_short() {
        let (agent, mut api) = start(1, true);
        let change = |n: usize| agent.discovered.send_replace(discovered(n));
        api.expect(Method::GET, &format!("/api/v1/nodes/{NODE}"))
            .await
            .fail(500, "InternalError");
        let first = Instant::now();
        change(2);
        let second = api
            .expect(Method::GET, &format!("/api/v1/nodes/{NODE}"))
            .await;
        assert!(
            first.elapsed() >= Duration::from_millis(500),
            "retried after {:?} despite a 500 ms backoff",
            first.elapsed()
        );
        second.fail(500, "InternalError");
        let failed = Instant::now();
        change(3);
        change(4);
        let third = api
            .expect(Method::GET, &format!("/api/v1/nodes/{NODE}"))
            .await;
        assert!(
            failed.elapsed() >= Duration::from_secs(1),
            "retried after {:?} despite a 1 s backoff",
            failed.elapsed()
        );
        third.fail(500, "InternalError");
        agent.shutdown.cancel();
        agent.task.await.expect("the writer ends cleanly");
    }
}
