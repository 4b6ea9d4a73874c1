//! Device status in the ResourceClaims this node prepared (KEP-4817, `status.devices`).
//!
//! For each prepared claim the agent publishes, per device of ours, a `Ready` condition and
//! `data` with what a consumer cannot read from the slice alone without a lookup: uuid, PCI
//! address, NUMA node and, for a VF, its PF. The entries are removed again when the claim is
//! unprepared. This runs beside the kubelet's calls, not inside them: it follows the preparer's
//! set of prepared claims (level-triggered, the same set `MockAccelNode.status.preparedClaims`
//! shows), so a slow or failing API server never delays a prepare, and a failed write is
//! retried until it lands. After a round of writes the next round waits for the node's
//! status interval (`--status-min-interval`): under churn, changes that arrive meanwhile are
//! coalesced into the next round, so the API server gets a bounded number of writes from a node
//! whatever its prepare rate (each is a server-side apply, which costs the API server far more
//! than the kubelet's GET of a claim). A lone prepare after a quiet spell is written at once.
//!
//! Writes are server-side applies of the status subresource with this agent's field manager, so
//! they own only our driver's entries. Since Kubernetes 1.36 the API server also requires the
//! per-driver permission `associated-node:patch` on `resourceclaims/driver` (granted by name in
//! `config/rbac-node-agent.yaml`).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{inventory::Inventory, plugin::PreparedClaim};

/// Field manager of the claim status writes.
pub const FIELD_MANAGER: &str = "mock-accel-node-agent";
/// The condition set on each prepared device.
pub const READY: &str = "Ready";
/// How long a failed write waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What one claim's `status.devices` should hold from this driver.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimDevices {
    pub namespace: String,
    pub name: String,
    /// One entry per device, in `AllocatedDeviceStatus` JSON shape.
    pub entries: Vec<Value>,
}

/// The entries for one prepared claim. A device that left the inventory since it was prepared
/// gets no entry: its pool can no longer be named, and an entry must name the allocated pool.
pub fn desired_devices(
    claim: &PreparedClaim,
    inventory: &Inventory,
    driver: &str,
    node: &str,
) -> ClaimDevices {
    let entries = claim
        .devices
        .iter()
        .map(|name| {
            let found = inventory.devices.iter().find(|d| &d.name == name);
            let mut data = serde_json::Map::new();
            let pool = match found {
                Some(d) => {
                    data.insert("uuid".into(), json!(d.uuid));
                    data.insert("pciAddress".into(), json!(d.pci_address));
                    if let Some(numa) = d.numa_node {
                        data.insert("numaNode".into(), json!(numa));
                    }
                    if let Some(pf) = &d.physfn {
                        data.insert("physfn".into(), json!(pf));
                    }
                    d.pool(node)
                }
                None => String::new(),
            };
            json!({
                "driver": driver,
                "pool": pool,
                "device": name,
                "conditions": [{
                    "type": READY,
                    "status": "True",
                    "reason": "Prepared",
                    "message": format!("prepared on node {node}: status register set, CDI spec written"),
                    "lastTransitionTime": claim.prepared_at,
                }],
                "data": Value::Object(data),
            })
        })
        // An entry without a pool would be rejected, and would fail the whole write.
        .filter(|e| e["pool"].as_str().is_some_and(|p| !p.is_empty()))
        .collect();
    ClaimDevices {
        namespace: claim.namespace.clone(),
        name: claim.name.clone(),
        entries,
    }
}

/// The server-side apply body for one claim's status; empty `entries` removes ours.
pub fn apply_body(claim: &ClaimDevices) -> Value {
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": claim.name, "namespace": claim.namespace},
        "status": {"devices": claim.entries},
    })
}

/// One write to make.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish these entries for claim `uid`.
    Apply { uid: String, claim: ClaimDevices },
    /// Remove our entries from claim `uid`, which is no longer prepared.
    Clear { uid: String, claim: ClaimDevices },
}

/// What must be written to go from `written` (by claim UID) to `desired`.
pub fn plan(
    written: &BTreeMap<String, ClaimDevices>,
    desired: &BTreeMap<String, ClaimDevices>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for (uid, want) in desired {
        if written.get(uid) != Some(want) {
            actions.push(Action::Apply {
                uid: uid.clone(),
                claim: want.clone(),
            });
        }
    }
    for (uid, had) in written {
        if !desired.contains_key(uid) {
            actions.push(Action::Clear {
                uid: uid.clone(),
                claim: ClaimDevices {
                    entries: Vec::new(),
                    ..had.clone()
                },
            });
        }
    }
    actions
}

/// How a write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// The claim no longer exists: nothing left to write.
    Gone,
    Failed(String),
}

/// Where the writes go: the API server in production, a recorder in tests.
pub trait ClaimStatusApi: Send + Sync + 'static {
    fn apply(&self, claim: &ClaimDevices) -> impl Future<Output = WriteOutcome> + Send;
}

/// Server-side apply on `resourceclaims/<name>/status`.
pub struct KubeClaimStatusApi {
    client: Client,
}

impl KubeClaimStatusApi {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl ClaimStatusApi for KubeClaimStatusApi {
    async fn apply(&self, claim: &ClaimDevices) -> WriteOutcome {
        let api = Api::<ResourceClaim>::namespaced(self.client.clone(), &claim.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&claim.name, &params, &Patch::Apply(apply_body(claim)))
            .await
        {
            Ok(_) => WriteOutcome::Written,
            Err(kube::Error::Api(status)) if status.code == 404 => WriteOutcome::Gone,
            Err(e) => WriteOutcome::Failed(e.to_string()),
        }
    }
}

/// Where the claim status writes go and how the agent paces them.
pub struct Writer<A> {
    pub api: A,
    pub driver: String,
    pub node: String,
    /// Shortest time from one round of writes to the next.
    pub min_interval: Duration,
}

/// Follows the prepared claims and the inventory until `stop`, keeping claim statuses in step.
pub async fn run<A: ClaimStatusApi>(
    writer: Writer<A>,
    mut prepared: watch::Receiver<Vec<PreparedClaim>>,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    stop: CancellationToken,
) {
    let Writer {
        api,
        driver,
        node,
        min_interval,
    } = writer;
    let mut written: BTreeMap<String, ClaimDevices> = BTreeMap::new();
    let mut failing: BTreeSet<String> = BTreeSet::new();
    let mut last_round: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = last_round {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = tokio::time::sleep_until(at + min_interval) => {}
            }
        }
        let desired: BTreeMap<String, ClaimDevices> = {
            let claims = prepared.borrow_and_update().clone();
            let inv = inventory.borrow_and_update().clone();
            claims
                .iter()
                .map(|c| (c.uid.clone(), desired_devices(c, &inv, &driver, &node)))
                .collect()
        };
        failing.clear();
        let actions = plan(&written, &desired);
        if !actions.is_empty() {
            last_round = Some(tokio::time::Instant::now());
        }
        for action in actions {
            let (uid, claim, clearing) = match action {
                Action::Apply { uid, claim } => (uid, claim, false),
                Action::Clear { uid, claim } => (uid, claim, true),
            };
            match api.apply(&claim).await {
                WriteOutcome::Written | WriteOutcome::Gone if clearing => {
                    written.remove(&uid);
                }
                WriteOutcome::Written | WriteOutcome::Gone => {
                    written.insert(uid, claim);
                }
                WriteOutcome::Failed(error) => {
                    tracing::warn!(claim = %format!("{}/{}", claim.namespace, claim.name), %uid,
                        %error, retry_in = ?RETRY_AFTER,
                        "cannot write the claim's device status; the node agent needs patch on resourceclaims/status and associated-node:patch on resourceclaims/driver");
                    failing.insert(uid);
                }
            }
        }
        let retry = async {
            if failing.is_empty() {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(RETRY_AFTER).await
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = prepared.changed() => if changed.is_err() { return },
            changed = inventory.changed() => if changed.is_err() { return },
            _ = retry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::test_support::devices::{pf, vf};

    fn inventory() -> Inventory {
        Inventory {
            devices: vec![
                pf("mock0").uuid("uuid-mock0").build(),
                vf("mock0_vf0", "mock0").pci_address("0000:11:00.1").build(),
                pf("mock9").numa(None).build(),
            ],
        }
    }

    fn prepared(uid: &str, devices: &[&str]) -> PreparedClaim {
        PreparedClaim {
            uid: uid.into(),
            namespace: "ns".into(),
            name: format!("claim-{uid}"),
            devices: devices.iter().map(|d| d.to_string()).collect(),
            cdi_device_ids: vec![],
            prepared_at: "2026-11-30T07:00:00Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_carry_ready_and_the_device_data() {
        let got = desired_devices(
            &prepared("u1", &["mock0", "mock0-vf0", "mock9"]),
            &inventory(),
            "mock-accel.example.com",
            "node1",
        );
        assert_eq!(
            (got.namespace.as_str(), got.name.as_str()),
            ("ns", "claim-u1")
        );
        assert_eq!(got.entries.len(), 3);
        let pf = &got.entries[0];
        assert_eq!(pf["driver"], "mock-accel.example.com");
        assert_eq!(pf["pool"], "node1/numa0");
        assert_eq!(pf["device"], "mock0");
        assert_eq!(pf["conditions"][0]["type"], "Ready");
        assert_eq!(pf["conditions"][0]["status"], "True");
        assert_eq!(
            pf["conditions"][0]["lastTransitionTime"],
            "2026-11-30T07:00:00Z"
        );
        assert_eq!(
            pf["data"],
            json!({"uuid": "uuid-mock0", "pciAddress": "0000:11:00.0", "numaNode": 0})
        );
        assert_eq!(got.entries[1]["device"], "mock0-vf0");
        assert_eq!(got.entries[1]["data"]["physfn"], "mock0");
        assert_eq!(got.entries[1]["data"]["pciAddress"], "0000:11:00.1");
        // No NUMA node: no numaNode in the data, and the numa-none pool.
        assert_eq!(got.entries[2]["pool"], "node1/numa-none");
        assert!(got.entries[2]["data"].get("numaNode").is_none());
    }

    #[test]
    fn a_device_gone_from_the_inventory_gets_no_entry() {
        let got = desired_devices(&prepared("u1", &["mock0", "gone"]), &inventory(), "d", "n");
        let names: Vec<_> = got.entries.iter().map(|e| e["device"].clone()).collect();
        assert_eq!(names, [json!("mock0")]);
    }

    #[test]
    fn the_plan_applies_new_and_changed_claims_and_clears_released_ones() {
        let inv = inventory();
        let c = |uid: &str, devs: &[&str]| desired_devices(&prepared(uid, devs), &inv, "d", "n");
        let written = BTreeMap::from([
            ("same".to_string(), c("same", &["mock0"])),
            ("changed".to_string(), c("changed", &["mock0"])),
            ("released".to_string(), c("released", &["mock0-vf0"])),
        ]);
        let desired = BTreeMap::from([
            ("same".to_string(), c("same", &["mock0"])),
            ("changed".to_string(), c("changed", &["mock0", "mock9"])),
            ("new".to_string(), c("new", &["mock9"])),
        ]);
        let actions = plan(&written, &desired);
        assert_eq!(actions.len(), 3, "{actions:?}");
        assert!(actions.contains(&Action::Apply {
            uid: "changed".into(),
            claim: desired["changed"].clone()
        }));
        assert!(actions.contains(&Action::Apply {
            uid: "new".into(),
            claim: desired["new"].clone()
        }));
        let Some(Action::Clear { uid, claim }) =
            actions.iter().find(|a| matches!(a, Action::Clear { .. }))
        else {
            panic!("no clear in {actions:?}");
        };
        assert_eq!(uid, "released");
        assert_eq!(claim.name, "claim-released");
        assert!(claim.entries.is_empty());
        assert_eq!(apply_body(claim)["status"]["devices"], json!([]));
    }

    /// Records every write; fails the first `failures` of them.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<ClaimDevices>>>,
        failures: Arc<Mutex<usize>>,
    }

    impl Recorder {
        fn writes(&self) -> Vec<ClaimDevices> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl ClaimStatusApi for Recorder {
        async fn apply(&self, claim: &ClaimDevices) -> WriteOutcome {
            self.writes.lock().unwrap().push(claim.clone());
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return WriteOutcome::Failed("apiserver unavailable".into());
            }
            WriteOutcome::Written
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_follow_prepare_and_unprepare_and_failures_are_retried() {
        let api = Recorder::default();
        *api.failures.lock().unwrap() = 1;
        let writer = start(&api);
        let prep_tx = &writer.prepared;
        let settle = || tokio::time::sleep(Duration::from_millis(10));

        settle().await;
        assert!(api.writes().is_empty(), "nothing prepared, nothing written");

        prep_tx.send(vec![prepared("u1", &["mock0"])]).unwrap();
        settle().await;
        assert_eq!(api.writes().len(), 1, "first write, which fails");
        tokio::time::sleep(RETRY_AFTER).await;
        settle().await;
        let w = api.writes();
        assert_eq!(w.len(), 2, "retried after {RETRY_AFTER:?}");
        assert_eq!(w[1].entries.len(), 1);

        // Nothing changes: no more writes.
        tokio::time::sleep(RETRY_AFTER * 3).await;
        assert_eq!(api.writes().len(), 2);

        prep_tx.send(vec![]).unwrap();
        settle().await;
        let w = api.writes();
        assert_eq!(w.len(), 3);
        assert_eq!(w[2].name, "claim-u1");
        assert!(w[2].entries.is_empty(), "unprepare clears our entries");

        writer.stop().await;
    }

    const INTERVAL: Duration = Duration::from_secs(1);

    /// A writer started on `api` with nothing prepared and `inventory()`.
    struct Started {
        prepared: watch::Sender<Vec<PreparedClaim>>,
        /// Kept: the writer stops when the inventory's sender is gone.
        _inventory: watch::Sender<Arc<Inventory>>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Started {
        async fn stop(self) {
            self.stop.cancel();
            self.task.await.unwrap();
        }
    }

    fn start(api: &Recorder) -> Started {
        let (prepared, prep_rx) = watch::channel(vec![]);
        let (inventory_tx, inv_rx) = watch::channel(Arc::new(inventory()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(writer(api), prep_rx, inv_rx, stop.clone()));
        Started {
            prepared,
            _inventory: inventory_tx,
            stop,
            task,
        }
    }

    fn writer(api: &Recorder) -> Writer<Recorder> {
        Writer {
            api: api.clone(),
            driver: "d".into(),
            node: "n".into(),
            min_interval: INTERVAL,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn churn_is_coalesced_into_one_round_per_interval_and_ends_in_the_last_state() {
        let api = Recorder::default();
        let writer = start(&api);
        let prep_tx = &writer.prepared;

        // A lone prepare is written at once.
        prep_tx.send(vec![prepared("u1", &["mock0"])]).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(api.writes().len(), 1, "the first change is not delayed");

        // 3 s of a prepare and an unprepare every 5 ms (1,200 changes), then one more prepare.
        for _ in 0..600 {
            prep_tx.send(vec![]).unwrap();
            tokio::time::sleep(Duration::from_micros(2500)).await;
            prep_tx.send(vec![prepared("u1", &["mock0"])]).unwrap();
            tokio::time::sleep(Duration::from_micros(2500)).await;
        }
        prep_tx.send(vec![prepared("u2", &["mock9"])]).unwrap();
        let during = api.writes().len();
        assert!(
            (2..=5).contains(&during),
            "one round per {INTERVAL:?} over 3 s of churn, got {during} writes"
        );
        tokio::time::sleep(INTERVAL * 2).await;
        let w = api.writes();
        let last_of = |uid: &str| {
            w.iter()
                .rev()
                .find(|c| c.name == format!("claim-{uid}"))
                .cloned()
        };
        assert!(
            last_of("u1").is_some_and(|c| c.entries.is_empty()),
            "u1 ended unprepared and its entries are cleared: {w:?}"
        );
        assert!(last_of("u2").is_some_and(|c| c.entries.len() == 1), "{w:?}");
        assert!(
            w.len() <= during + 2,
            "the last state costs one more round: {w:?}"
        );

        writer.stop().await;
    }
}
