//! Makes `sriov_numvfs` of each PF in `spec.sriov` equal its `numVFs`, on a kernel tree (the
//! attribute is written) and on the agent's own simulated tree (the simulator plays the
//! kernel's part) alike, and reports the outcome in `status.sriov` and the `SriovReconciled`
//! condition.
//!
//! Level-triggered: every change of the spec, the inventory or the prepared claims runs one
//! pass (read → [`super::sriov_plan`] → write → report); a failed or unfinished pass is retried
//! after [`RETRY`]. Writes happen while no prepare runs ([`Preparer::while_no_prepare`]), with
//! the prepared set read under the same lock, so a VF can never be prepared between the check
//! and its removal. After writing, discovery rescans at once. A refusal (prepared VFs) is
//! also published as a Warning Event on the node's MockAccelNode, once per distinct refusal.
//!
//! The report is applied with a field manager of its own ([`SRIOV_FIELD_MANAGER`]), so it
//! never races the status writer's share of the status.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    simulate::Simulator,
    sriov_plan::{PfAction, PfState, SriovReport, plan_pf, refusal_message},
};
use crate::{
    crd::{
        CONDITION_SRIOV_RECONCILED, MockAccelNode, MockAccelNodeSpec, SRIOV_FIELD_MANAGER,
        SriovStatus, condition,
    },
    fixture::SriovSpec,
    inventory::{DeviceType, Inventory},
    plugin::{PreparedClaim, claims::KubeClaimSource, prepare::Preparer},
    sysfs,
};

/// Retry interval while the PFs are not all in line (a failed write, a refusal waiting for a
/// claim, VFs a kernel is still creating).
const RETRY: Duration = Duration::from_secs(5);

/// Where `sriov_numvfs` is changed.
#[derive(Clone)]
pub enum Kernel {
    /// Write the attribute under this sysfs root (the kernel module reacts).
    Sysfs(PathBuf),
    /// The agent's own simulated tree.
    Simulated(Arc<Simulator>),
}

impl Kernel {
    fn root(&self) -> &Path {
        match self {
            Kernel::Sysfs(root) => root,
            Kernel::Simulated(sim) => sim.root(),
        }
    }

    /// Writes one value to `pf`'s `sriov_numvfs` (blocking).
    fn write_numvfs(&self, pf: &str, count: u32) -> Result<(), String> {
        match self {
            Kernel::Sysfs(root) => {
                let path = sysfs::device_dir(root, pf).join("sriov_numvfs");
                std::fs::write(&path, format!("{count}\n"))
                    .map_err(|e| format!("writing {count} to {}: {e}", path.display()))
            }
            Kernel::Simulated(sim) => sim
                .set_numvfs(pf, count)
                .map_err(|e| format!("setting sriov_numvfs of simulated {pf} to {count}: {e}")),
        }
    }
}

/// Reads a PF's SR-IOV attributes; `None` when it is not a PF on the node.
fn read_state(root: &Path, inventory: &Inventory, pf: &str) -> Option<PfState> {
    let dev = inventory
        .devices
        .iter()
        .find(|d| d.name == pf && d.device_type == DeviceType::Pf)?;
    let read = |attr: &str| {
        std::fs::read_to_string(sysfs::device_dir(root, &dev.sysfs_name).join(attr))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    };
    Some(PfState {
        sysfs_name: dev.sysfs_name.clone(),
        actual: read("sriov_numvfs").unwrap_or(0),
        // No sriov_totalvfs: the PF is not SR-IOV capable, any count but 0 is impossible.
        total: read("sriov_totalvfs").unwrap_or(0),
        vfs: inventory
            .devices
            .iter()
            .filter(|d| d.physfn.as_deref() == Some(pf))
            .map(|d| d.name.clone())
            .collect(),
    })
}

/// One pass over `entries` (blocking; run while no prepare runs). Returns the report and
/// whether anything was written.
fn reconcile(
    kernel: &Kernel,
    inventory: &Inventory,
    entries: &[SriovSpec],
    prepared: &HashMap<String, String>,
) -> (SriovReport, bool) {
    let mut report = SriovReport::default();
    let mut wrote = false;
    for entry in entries {
        let state = read_state(kernel.root(), inventory, &entry.pf);
        let mut actual = state.as_ref().map(|s| s.actual);
        match plan_pf(entry, state.as_ref(), prepared) {
            PfAction::InSync => {}
            PfAction::Write(values) => {
                let Some(state) = &state else { continue };
                for v in values {
                    if let Err(e) = kernel.write_numvfs(&state.sysfs_name, v) {
                        report.failed.push(format!("{}: {e}", entry.pf));
                        break;
                    }
                    wrote = true;
                    actual = Some(v);
                }
                tracing::info!(pf = %entry.pf, from = state.actual, to = ?actual, "sriov_numvfs written");
            }
            PfAction::Refused(held) => {
                report
                    .refused
                    .push(refusal_message(entry, actual.unwrap_or(0), &held));
            }
            PfAction::Impossible(why) => report.failed.push(why),
        }
        report.pfs.push(SriovStatus {
            pf: entry.pf.clone(),
            desired: entry.num_vfs,
            actual: actual.map(i64::from),
        });
    }
    (report, wrote)
}

/// What was applied last: the per-PF report and the condition's `(ok, reason, message)`.
type Applied = (Vec<SriovStatus>, (bool, &'static str, String));

/// What the loop needs besides its inputs.
pub struct SriovContext {
    pub client: Client,
    pub node: String,
    pub kernel: Kernel,
    pub preparer: Arc<Preparer<KubeClaimSource>>,
    /// Asks discovery for a rescan right after a write.
    pub rescan: mpsc::UnboundedSender<()>,
}

/// Runs until `shutdown`.
pub async fn run(
    ctx: SriovContext,
    mut spec: watch::Receiver<Option<MockAccelNodeSpec>>,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    mut prepared: watch::Receiver<Vec<PreparedClaim>>,
    shutdown: CancellationToken,
) {
    let api: Api<MockAccelNode> = Api::all(ctx.client.clone());
    let mut last_applied: Option<Applied> = None;
    let mut last_event: Option<String> = None;
    loop {
        let entries: Vec<SriovSpec> = spec
            .borrow_and_update()
            .as_ref()
            .and_then(|s| s.sriov.clone())
            .unwrap_or_default();
        let inv = inventory.borrow_and_update().clone();
        prepared.borrow_and_update();
        let mut retry = false;
        // Nothing listed and nothing reported before: nothing to do or to clear.
        if !entries.is_empty() || last_applied.is_some() {
            let kernel = ctx.kernel.clone();
            let list = entries.clone();
            let outcome = ctx
                .preparer
                .while_no_prepare(move |held| reconcile(&kernel, &inv, &list, &held.devices))
                .await;
            match outcome {
                Err(e) => {
                    tracing::warn!(error = %e, "SR-IOV pass failed");
                    retry = true;
                }
                Ok((report, wrote)) => {
                    if wrote {
                        let _ = ctx.rescan.send(());
                    }
                    let cond = report.condition();
                    retry = !cond.0;
                    if let Some(refusal) = (!report.refused.is_empty())
                        .then(|| report.refused.join("; "))
                        .filter(|r| last_event.as_ref() != Some(r))
                    {
                        publish_refusal(&ctx, &refusal).await;
                        last_event = Some(refusal);
                    }
                    if report.refused.is_empty() {
                        last_event = None;
                    }
                    let now = (report.pfs.clone(), cond);
                    if last_applied.as_ref() != Some(&now) {
                        let clear = entries.is_empty();
                        match apply_report(&api, &ctx.node, &now, clear).await {
                            Ok(()) => last_applied = (!clear).then_some(now),
                            Err(e) => {
                                tracing::warn!(node = %ctx.node, error = %e,
                                    "writing status.sriov failed; retrying");
                                retry = true;
                            }
                        }
                    }
                }
            }
        }
        let wait = if retry { RETRY } else { Duration::MAX };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait.min(Duration::from_secs(86_400))) => {},
            r = spec.changed() => if r.is_err() { return },
            r = inventory.changed() => if r.is_err() { return },
            r = prepared.changed() => if r.is_err() { return },
        }
    }
}

/// Applies `status.sriov` and the condition; with `clear`, gives both up (spec.sriov gone).
async fn apply_report(
    api: &Api<MockAccelNode>,
    node: &str,
    (pfs, (ok, reason, message)): &Applied,
    clear: bool,
) -> Result<(), kube::Error> {
    let status = if clear {
        json!({})
    } else {
        let cond = condition(
            CONDITION_SRIOV_RECONCILED,
            *ok,
            reason,
            crate::crd::truncate_message(message.clone()),
            None,
            Timestamp::now(),
        );
        json!({ "sriov": pfs, "conditions": [cond] })
    };
    let patch = json!({
        "apiVersion": MockAccelNode::api_version(&()),
        "kind": MockAccelNode::kind(&()),
        "status": status,
    });
    api.patch_status(
        node,
        &PatchParams::apply(SRIOV_FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// A Warning Event on the node's MockAccelNode naming the claims that hold the VFs.
async fn publish_refusal(ctx: &SriovContext, note: &str) {
    let reporter = Reporter {
        controller: SRIOV_FIELD_MANAGER.into(),
        instance: Some(ctx.node.clone()),
    };
    let regarding = ObjectReference {
        api_version: Some(MockAccelNode::api_version(&()).into_owned()),
        kind: Some(MockAccelNode::kind(&()).into_owned()),
        name: Some(ctx.node.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "SriovChangeRefused".into(),
        note: Some(crate::crd::truncate_message(note.to_string())),
        action: "SetNumVFs".into(),
        secondary: None,
    };
    if let Err(e) = Recorder::new(ctx.client.clone(), reporter)
        .publish(&event, &regarding)
        .await
    {
        tracing::warn!(node = %ctx.node, error = %e, "cannot publish the SR-IOV refusal Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sim::{self, TopologySpec},
        sysfs,
    };

    fn entry(pf: &str, n: i64) -> SriovSpec {
        SriovSpec {
            pf: pf.into(),
            num_vfs: n,
        }
    }

    fn scan(root: &Path) -> Inventory {
        sysfs::scan(root).unwrap().inventory
    }

    #[test]
    fn a_pass_on_a_simulated_tree_creates_replaces_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let simulator = Simulator::new(dir.path().to_path_buf(), 1);
        sim::rebuild(dir.path(), None, &TopologySpec::sriov(1)).unwrap();
        let kernel = Kernel::Simulated(simulator);
        let none = HashMap::new();

        let (report, wrote) = reconcile(&kernel, &scan(dir.path()), &[entry("mock0", 2)], &none);
        assert!(wrote);
        assert_eq!(report.pfs[0].actual, Some(2));
        let inv = scan(dir.path());
        assert!(inv.get("mock0-vf1").is_some());

        // In line: nothing written.
        let (report, wrote) = reconcile(&kernel, &inv, &[entry("mock0", 2)], &none);
        assert!(!wrote);
        assert_eq!(report.condition().1, "Reconciled");

        // A prepared VF: the shrink is refused and both VFs stay.
        let held = HashMap::from([("mock0-vf1".to_string(), "ns/c".to_string())]);
        let (report, wrote) = reconcile(&kernel, &inv, &[entry("mock0", 1)], &held);
        assert!(!wrote);
        assert_eq!(report.pfs[0].actual, Some(2));
        assert!(report.refused[0].contains("mock0-vf1 (claim ns/c)"));
        assert_eq!(scan(dir.path()).devices.len(), 4);

        // Unprepared: 2 → 0 → 1.
        let (report, wrote) = reconcile(&kernel, &inv, &[entry("mock0", 1)], &none);
        assert!(wrote);
        assert_eq!(report.pfs[0].actual, Some(1));
        let inv = scan(dir.path());
        assert!(inv.get("mock0-vf0").is_some() && inv.get("mock0-vf1").is_none());

        // An unknown PF is reported, the others are still served.
        let (report, _) = reconcile(
            &kernel,
            &inv,
            &[entry("mock7", 1), entry("mock1", 1)],
            &none,
        );
        assert!(report.failed[0].contains("mock7"), "{:?}", report.failed);
        assert_eq!(report.pfs[1].actual, Some(1));
    }

    #[test]
    fn on_a_kernel_tree_the_attribute_is_written_through_zero() {
        let dir = tempfile::tempdir().unwrap();
        sim::create(dir.path(), None, &TopologySpec::sriov(1)).unwrap();
        sim::set_numvfs(dir.path(), None, "mock0", 2).unwrap();
        let kernel = Kernel::Sysfs(dir.path().to_path_buf());
        let (report, wrote) = reconcile(
            &kernel,
            &scan(dir.path()),
            &[entry("mock0", 3)],
            &HashMap::new(),
        );
        assert!(wrote);
        // Plain files keep the last value written; the kernel would have seen 0 first.
        let attr = dir.path().join("class/mock-accel/mock0/sriov_numvfs");
        assert_eq!(std::fs::read_to_string(attr).unwrap(), "3\n");
        assert_eq!(report.pfs[0].actual, Some(3));
    }
}
