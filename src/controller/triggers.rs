//! What makes the controller reconcile a node: the changes of a MockAccelNode, and of a Node,
//! that can change what the reconcile writes. A heartbeat alone is not one of them.
//!
//! An agent's heartbeat rewrites `status.agent.heartbeat` every interval (10 s by default), and
//! each write reaches the controller as a watch event. Reconciling at each one cost a reconcile
//! and two reads (the Node and the node's slices) per node and heartbeat, which at a few
//! thousand nodes asked for more reconciles than the controller completes (BENCHMARKS.md, "The
//! controller at scale"). The heartbeat matters to the controller only at two moments: when it
//! expires (the reconcile that found the agent alive requeued the node for that moment, see
//! [`super::plan::plan_slices`]) and when it comes back after the controller withdrew the
//! node's devices. So the trigger key of a MockAccelNode ([`node_trigger_key`]) leaves the
//! heartbeat out while the controller's `Ready` condition says the agent is serving, and keeps
//! it in otherwise: a returning agent's first beat reconciles at once.
//!
//! Every event still updates the reflector's store, so a reconcile (at the expiry, or for any
//! other reason) always judges the newest heartbeat. [`changed_objects`] is the stream filter,
//! placed after the reflector; deletions always pass.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use futures::{Stream, StreamExt, future};
use kube::{Resource, ResourceExt, api::ObjectMeta, runtime::watcher};

use super::plan::REASON_AGENT_STALE;
use crate::crd::{CONDITION_READY, MockAccelNode};

/// The trigger key of a MockAccelNode: a hash of everything a reconcile reads from it, with the
/// heartbeat time left out while the controller's `Ready` condition is `True` (or anything but
/// an agent found stale). Bookkeeping fields (`resourceVersion`, `managedFields`) are left out
/// too: they change with every write.
pub fn node_trigger_key(node: &MockAccelNode) -> u64 {
    let mut node = node.clone();
    node.metadata.resource_version = None;
    node.metadata.managed_fields = None;
    let agent_stale_or_unknown = match node
        .status
        .as_ref()
        .and_then(|s| s.condition(CONDITION_READY))
    {
        None => true,
        Some(ready) => ready.status != "True" && ready.reason == REASON_AGENT_STALE,
    };
    if !agent_stale_or_unknown
        && let Some(agent) = node.status.as_mut().and_then(|s| s.agent.as_mut())
    {
        agent.heartbeat.clear();
    }
    // Serialising a plain struct is deterministic (field order, sorted maps); should it ever
    // fail, every event of that object counts as a change, which is the old behaviour.
    let bytes = serde_json::to_vec(&node).unwrap_or_else(|_| {
        node.metadata
            .resource_version
            .clone()
            .unwrap_or_default()
            .into_bytes()
    });
    hash_of(&bytes)
}

/// The trigger key of a Node: what a reconcile reads from it (its UID, for the slices' owner,
/// and its labels, which opt the node into shared PFs or attachment). Status updates of the
/// kubelet leave it unchanged.
pub fn kube_node_trigger_key(meta: &ObjectMeta) -> u64 {
    hash_of(&(&meta.uid, &meta.labels, &meta.deletion_timestamp.is_some()))
}

fn hash_of<T: Hash + ?Sized>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// The objects of a reflected watch stream whose key changed since the object's last event
/// (added, or changed in what `key` covers), and every deleted object. Errors pass unchanged
/// (the controller backs off on them). Keys are held per name and uid; a deleted object's key
/// goes with it.
pub fn changed_objects<K, S>(
    events: S,
    key: impl Fn(&K) -> u64 + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let mut seen: HashMap<(String, Option<String>), u64> = HashMap::new();
    events.filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                let k = key(&obj);
                let id = (obj.name_any(), obj.uid());
                (seen.insert(id, k) != Some(k)).then_some(Ok(obj))
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&(obj.name_any(), obj.uid()));
                Some(Ok(obj))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        future::ready(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AgentStatus, MockAccelNodeSpec, MockAccelNodeStatus, condition};
    use futures::stream;
    use jiff::Timestamp;

    fn node(heartbeat: &str, ready: Option<(bool, &str)>) -> MockAccelNode {
        let mut n = MockAccelNode::new(
            "node1",
            MockAccelNodeSpec {
                node_name: "node1".into(),
                ..Default::default()
            },
        );
        n.metadata.uid = Some("uid-1".into());
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        n.status = Some(MockAccelNodeStatus {
            agent: Some(AgentStatus {
                version: "0.1.0".into(),
                heartbeat: heartbeat.into(),
                plugin_registered: true,
            }),
            conditions: ready
                .map(|(ok, reason)| vec![condition(CONDITION_READY, ok, reason, "", None, now)]),
            ..Default::default()
        });
        n
    }

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-01T00:00:10Z";

    #[test]
    fn a_heartbeat_of_a_serving_agent_is_no_change() {
        let serving = Some((true, "Published"));
        let mut later = node(T1, serving);
        later.metadata.resource_version = Some("2".into());
        assert_eq!(
            node_trigger_key(&node(T0, serving)),
            node_trigger_key(&later)
        );
    }

    #[test]
    fn a_heartbeat_counts_while_the_agent_is_stale_or_not_yet_judged() {
        for ready in [None, Some((false, REASON_AGENT_STALE))] {
            assert_ne!(
                node_trigger_key(&node(T0, ready)),
                node_trigger_key(&node(T1, ready)),
                "{ready:?}"
            );
        }
        // Not ready for a reason the heartbeat cannot change: the expiry requeue suffices.
        let invalid = Some((false, "InvalidDevices"));
        assert_eq!(
            node_trigger_key(&node(T0, invalid)),
            node_trigger_key(&node(T1, invalid))
        );
    }

    #[test]
    fn anything_else_the_agent_or_controller_writes_is_a_change() {
        let serving = Some((true, "Published"));
        let base = node(T0, serving);
        let mut unregistered = base.clone();
        unregistered
            .status
            .as_mut()
            .unwrap()
            .agent
            .as_mut()
            .unwrap()
            .plugin_registered = false;
        let mut devices = base.clone();
        devices.status.as_mut().unwrap().device_count = Some(3);
        let mut labelled = base.clone();
        labelled.labels_mut().insert("a".into(), "b".into());
        let stale = node(T0, Some((false, REASON_AGENT_STALE)));
        for other in [unregistered, devices, labelled, stale] {
            assert_ne!(node_trigger_key(&base), node_trigger_key(&other));
        }
    }

    #[test]
    fn a_kube_node_changes_only_with_its_uid_labels_or_deletion() {
        let mut meta = ObjectMeta {
            uid: Some("u".into()),
            resource_version: Some("1".into()),
            ..Default::default()
        };
        let key = kube_node_trigger_key(&meta);
        meta.resource_version = Some("2".into());
        meta.annotations = Some([("node.alpha.kubernetes.io/ttl".into(), "0".into())].into());
        assert_eq!(
            kube_node_trigger_key(&meta),
            key,
            "a status update of the kubelet"
        );
        meta.labels = Some([("mock-accel.example.com/attachment".into(), "fabric".into())].into());
        assert_ne!(kube_node_trigger_key(&meta), key);
    }

    #[tokio::test]
    async fn only_changed_added_and_deleted_objects_pass() {
        let serving = Some((true, "Published"));
        let mut other = node(T0, serving);
        other.metadata.name = Some("node2".into());
        other.metadata.uid = Some("uid-2".into());
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(node(T0, serving))),
            Ok(watcher::Event::InitApply(other.clone())),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(node(T1, serving))), // a heartbeat: filtered
            Ok(watcher::Event::Apply(node(
                T1,
                Some((false, REASON_AGENT_STALE)),
            ))),
            Ok(watcher::Event::Delete(other.clone())),
            Ok(watcher::Event::Apply(other.clone())), // re-created: new again
            // A relist after a reconnect: unchanged objects stay quiet.
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(other)),
            Ok(watcher::Event::InitDone),
        ];
        let passed: Vec<(String, bool)> = changed_objects(stream::iter(events), node_trigger_key)
            .map(|r| {
                let n = r.unwrap();
                let stale = n
                    .status
                    .as_ref()
                    .unwrap()
                    .condition(CONDITION_READY)
                    .unwrap()
                    .status
                    == "False";
                (n.name_any(), stale)
            })
            .collect()
            .await;
        assert_eq!(
            passed,
            [
                ("node1".to_string(), false),
                ("node2".to_string(), false),
                ("node1".to_string(), true),
                ("node2".to_string(), false),
                ("node2".to_string(), false),
            ]
        );
    }

    /// The whole design on tokio's paused clock: the real trigger filter and the real plan
    /// (liveness, requeue at the heartbeat's expiry, the controller's status) drive a
    /// kube-runtime Controller, with an agent beating every 10 s and a 40 s grace period. The
    /// "API server" is one object both sides write, each write a watch event.
    mod on_the_paused_clock {
        use super::*;
        use crate::controller::plan::{self, Observed, WriteOutcome};
        use futures::channel::mpsc;
        use kube::runtime::{Controller, controller::Action, reflector};
        use std::{
            sync::{Arc, Mutex},
            time::Duration,
        };
        use tokio::time::Instant;

        const GRACE: Duration = Duration::from_secs(40);
        const BEAT: Duration = Duration::from_secs(10);

        type Events = mpsc::UnboundedSender<Result<watcher::Event<MockAccelNode>, watcher::Error>>;

        struct World {
            start: Instant,
            base: Timestamp,
            stored: Mutex<MockAccelNode>,
            version: Mutex<u64>,
            events: Events,
            /// Seconds since the start at which a reconcile ran.
            reconciles: Mutex<Vec<u64>>,
        }

        impl World {
            fn now(&self) -> Timestamp {
                let since = jiff::SignedDuration::try_from(self.start.elapsed()).unwrap();
                self.base.checked_add(since).unwrap()
            }

            /// One write to the stored object, and its watch event.
            fn write(&self, change: impl FnOnce(&mut MockAccelNode)) {
                let mut stored = self.stored.lock().unwrap();
                change(&mut stored);
                let mut v = self.version.lock().unwrap();
                *v += 1;
                stored.metadata.resource_version = Some(v.to_string());
                self.events
                    .unbounded_send(Ok(watcher::Event::Apply(stored.clone())))
                    .unwrap();
            }

            fn beat(&self) {
                let now = self.now().to_string();
                self.write(|n| n.status.as_mut().unwrap().agent.as_mut().unwrap().heartbeat = now);
            }

            fn ready(&self) -> String {
                let n = self.stored.lock().unwrap();
                let c = n
                    .status
                    .as_ref()
                    .unwrap()
                    .condition(CONDITION_READY)
                    .cloned();
                c.map(|c| format!("{}/{}", c.status, c.reason))
                    .unwrap_or_default()
            }

            fn reconciles_between(&self, from: u64, to: u64) -> Vec<u64> {
                let r = self.reconciles.lock().unwrap();
                r.iter()
                    .copied()
                    .filter(|t| (from..to).contains(t))
                    .collect()
            }
        }

        /// The controller's side: plan from the stored object as the cache holds it, write the
        /// status when it changed, requeue as the plan says.
        async fn reconcile(
            node: Arc<MockAccelNode>,
            world: Arc<World>,
        ) -> Result<Action, std::convert::Infallible> {
            world
                .reconciles
                .lock()
                .unwrap()
                .push(world.start.elapsed().as_secs());
            let now = world.now();
            let plan = plan::plan_slices(&Observed {
                driver: "mock-accel.example.com",
                node: &node,
                node_uid: "node-uid",
                existing: &[],
                now,
                grace: GRACE,
                partitionable: false,
                device_taints: false,
                shared_pfs: false,
                binding_conditions: false,
                api_view_since: None,
            });
            let status = plan::controller_status(&node, &plan, &WriteOutcome::Written, now);
            if plan::status_differs(node.status.as_ref(), &status) {
                world.write(|n| {
                    let s = n.status.as_mut().unwrap();
                    s.conditions = status.conditions;
                    s.pools = status.pools;
                });
            }
            Ok(Action::requeue(plan.requeue_after))
        }

        #[tokio::test(start_paused = true)]
        async fn a_node_costs_a_reconcile_per_grace_period_and_a_returning_agent_one_at_once() {
            let (tx, rx) = mpsc::unbounded();
            let world = Arc::new(World {
                start: Instant::now(),
                base: T0.parse().unwrap(),
                stored: Mutex::new(node(T0, None)),
                version: Mutex::new(1),
                events: tx,
                reconciles: Mutex::default(),
            });
            let (store, writer) = reflector::store();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let controller = tokio::spawn(
                Controller::for_stream(
                    changed_objects(reflector::reflector(writer, rx), node_trigger_key),
                    store,
                )
                .graceful_shutdown_on(async move {
                    let _ = stop_rx.await;
                })
                .run(reconcile, |_, _, _| Action::await_change(), world.clone())
                .for_each(|_| async {}),
            );

            // The initial list, then ten minutes of an agent beating every 10 s: 60 heartbeats.
            let listed = world.stored.lock().unwrap().clone();
            for event in [
                watcher::Event::Init,
                watcher::Event::InitApply(listed),
                watcher::Event::InitDone,
            ] {
                world.events.unbounded_send(Ok(event)).unwrap();
            }
            world.beat();
            for _ in 0..60 {
                tokio::time::sleep(BEAT).await;
                world.beat();
            }
            assert_eq!(world.ready(), "True/Published");
            let steady = world.reconciles_between(0, 601);
            // The first reconcile, the one its own status write triggers, then one per
            // expiry: at most one per (grace - heartbeat) = 30 s, never one per heartbeat.
            assert!(
                steady.len() <= 2 + 600 / 30,
                "{} reconciles for 60 heartbeats: {steady:?}",
                steady.len()
            );
            assert!(
                steady.len() >= 600 / 40,
                "too few to notice an expiry: {steady:?}"
            );

            // The agent stops: its heartbeat expires 40 s after the last one, and the requeue
            // for that moment withdraws the node.
            tokio::time::sleep(Duration::from_secs(50)).await;
            assert_eq!(world.ready(), format!("False/{REASON_AGENT_STALE}"));
            assert!(
                world
                    .reconciles_between(600, 650)
                    .iter()
                    .any(|t| (640..=642).contains(t)),
                "{:?}",
                world.reconciles_between(600, 650)
            );

            // It comes back at 700 s: its first heartbeat reconciles at once, not at a requeue.
            tokio::time::sleep(Duration::from_secs(50)).await;
            world.beat();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(world.ready(), "True/Published");
            assert_eq!(world.reconciles_between(651, 700), Vec::<u64>::new());

            stop_tx.send(()).unwrap();
            controller.await.unwrap();
        }
    }
}
