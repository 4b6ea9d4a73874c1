//! What the node agent does about `spec.sriov`, decided from plain data. Pure.
//!
//! Per listed PF: nothing when `sriov_numvfs` already reads `numVFs`; else the values to write
//! to `sriov_numvfs`, in order, by the kernel's rule that a PF with VFs takes a new non-zero
//! count only after 0 (`2 → 0 → 4`); or a refusal. Any write to a PF that has VFs removes
//! all of them (the kernel recreates VFs from scratch), so the change is refused while one of
//! its VFs is prepared, and the refusal names the claims. The report ([`SriovReport`]) feeds
//! `status.sriov` and the `SriovReconciled` condition.

use std::collections::{BTreeMap, HashMap};

use crate::{crd::SriovStatus, fixture::SriovSpec};

/// What the agent read about one PF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PfState {
    /// Class device name (`mock0`), whose `sriov_numvfs` is written.
    pub sysfs_name: String,
    /// `sriov_numvfs` as read.
    pub actual: u32,
    /// `sriov_totalvfs`.
    pub total: u32,
    /// DRA names of its VFs present now.
    pub vfs: Vec<String>,
}

/// The decision for one PF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PfAction {
    InSync,
    /// Write these values to `sriov_numvfs`, in this order.
    Write(Vec<u32>),
    /// The change would remove prepared VFs: VF DRA name → `namespace/name` of its claim.
    Refused(BTreeMap<String, String>),
    /// Cannot be done as asked (no such PF, more VFs than it supports); the message says why.
    Impossible(String),
}

/// Decides for one entry of `spec.sriov`. `state` is `None` when the PF is not on the node;
/// `prepared` maps prepared DRA device names to their claims.
pub fn plan_pf(
    entry: &SriovSpec,
    state: Option<&PfState>,
    prepared: &HashMap<String, String>,
) -> PfAction {
    let Some(state) = state else {
        return PfAction::Impossible(format!(
            "{}: no SR-IOV PF of that name on this node",
            entry.pf
        ));
    };
    let Ok(desired) = u32::try_from(entry.num_vfs) else {
        return PfAction::Impossible(format!(
            "{}: numVFs {} is negative",
            entry.pf, entry.num_vfs
        ));
    };
    if desired > state.total {
        return PfAction::Impossible(format!(
            "{}: numVFs {desired} exceeds its sriov_totalvfs {}",
            entry.pf, state.total
        ));
    }
    if desired == state.actual {
        return PfAction::InSync;
    }
    let held: BTreeMap<String, String> = state
        .vfs
        .iter()
        .filter_map(|vf| prepared.get(vf).map(|claim| (vf.clone(), claim.clone())))
        .collect();
    if state.actual > 0 && !held.is_empty() {
        return PfAction::Refused(held);
    }
    if state.actual > 0 && desired > 0 {
        PfAction::Write(vec![0, desired])
    } else {
        PfAction::Write(vec![desired])
    }
}

/// The outcome of one pass over `spec.sriov`, as reported in the status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SriovReport {
    pub pfs: Vec<SriovStatus>,
    /// Refused changes, one line per PF naming the prepared VFs and their claims.
    pub refused: Vec<String>,
    /// Impossible entries and failed writes, one line each.
    pub failed: Vec<String>,
}

impl SriovReport {
    /// `(ok, reason, message)` of the `SriovReconciled` condition.
    pub fn condition(&self) -> (bool, &'static str, String) {
        if !self.failed.is_empty() {
            let mut all = self.failed.clone();
            all.extend(self.refused.iter().cloned());
            return (false, "Failed", all.join("; "));
        }
        if !self.refused.is_empty() {
            return (false, "PreparedVFs", self.refused.join("; "));
        }
        let in_sync = self.pfs.iter().all(|p| p.actual == Some(p.desired));
        if in_sync {
            (
                true,
                "Reconciled",
                format!("{} PFs have their numVFs", self.pfs.len()),
            )
        } else {
            (false, "Pending", "waiting for the VFs to appear".into())
        }
    }
}

/// The refusal line of a PF: which change, and which claims hold which VFs.
pub fn refusal_message(entry: &SriovSpec, actual: u32, held: &BTreeMap<String, String>) -> String {
    let holders: Vec<String> = held
        .iter()
        .map(|(vf, claim)| format!("{vf} (claim {claim})"))
        .collect();
    format!(
        "{}: not changing sriov_numvfs from {actual} to {}: that removes every VF of the PF, and {} prepared; \
         the change is made once the claims are unprepared",
        entry.pf,
        entry.num_vfs,
        holders.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> SriovSpec {
        SriovSpec {
            pf: "mock0".into(),
            num_vfs: n,
        }
    }

    fn state(actual: u32, vfs: &[&str]) -> PfState {
        PfState {
            sysfs_name: "mock0".into(),
            actual,
            total: 4,
            vfs: vfs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn prepared(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(d, c)| (d.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn counts_change_through_zero_between_two_non_zero_values() {
        let none = prepared(&[]);
        let s2 = state(2, &["mock0-vf0", "mock0-vf1"]);
        assert_eq!(plan_pf(&entry(2), Some(&s2), &none), PfAction::InSync);
        assert_eq!(
            plan_pf(&entry(4), Some(&s2), &none),
            PfAction::Write(vec![0, 4])
        );
        assert_eq!(
            plan_pf(&entry(1), Some(&s2), &none),
            PfAction::Write(vec![0, 1])
        );
        assert_eq!(
            plan_pf(&entry(0), Some(&s2), &none),
            PfAction::Write(vec![0])
        );
        assert_eq!(
            plan_pf(&entry(3), Some(&state(0, &[])), &none),
            PfAction::Write(vec![3])
        );
    }

    #[test]
    fn a_change_that_removes_a_prepared_vf_is_refused_naming_the_claims() {
        let s2 = state(2, &["mock0-vf0", "mock0-vf1"]);
        let held = prepared(&[("mock0-vf1", "ns/claim-a"), ("mock1", "ns/other")]);
        // Growing as well as shrinking goes through 0, which removes the prepared VF.
        for n in [0, 1, 4] {
            match plan_pf(&entry(n), Some(&s2), &held) {
                PfAction::Refused(vfs) => {
                    assert_eq!(
                        vfs,
                        BTreeMap::from([("mock0-vf1".into(), "ns/claim-a".into())])
                    );
                    let msg = refusal_message(&entry(n), 2, &vfs);
                    assert!(msg.contains("mock0-vf1 (claim ns/claim-a)"), "{msg}");
                }
                other => panic!("numVFs {n}: {other:?}"),
            }
        }
        // A PF without VFs has nothing to lose; a prepared device elsewhere does not matter.
        assert_eq!(
            plan_pf(&entry(2), Some(&state(0, &[])), &held),
            PfAction::Write(vec![2])
        );
    }

    #[test]
    fn missing_pfs_and_counts_above_totalvfs_are_impossible() {
        let none = prepared(&[]);
        assert!(matches!(
            plan_pf(&entry(2), None, &none),
            PfAction::Impossible(m) if m.contains("no SR-IOV PF")
        ));
        assert!(matches!(
            plan_pf(&entry(5), Some(&state(0, &[])), &none),
            PfAction::Impossible(m) if m.contains("sriov_totalvfs 4")
        ));
    }

    #[test]
    fn the_condition_prefers_failures_then_refusals_then_progress() {
        let pf = |desired, actual| SriovStatus {
            pf: "mock0".into(),
            desired,
            actual,
        };
        let ok = SriovReport {
            pfs: vec![pf(2, Some(2))],
            ..Default::default()
        };
        assert_eq!(ok.condition().1, "Reconciled");
        let pending = SriovReport {
            pfs: vec![pf(2, Some(0))],
            ..Default::default()
        };
        assert_eq!(pending.condition().1, "Pending");
        let refused = SriovReport {
            refused: vec!["mock0: held".into()],
            ..pending.clone()
        };
        assert_eq!(
            refused.condition(),
            (false, "PreparedVFs", "mock0: held".into())
        );
        let failed = SriovReport {
            failed: vec!["mock1: gone".into()],
            ..refused
        };
        assert_eq!(failed.condition().2, "mock1: gone; mock0: held");
    }
}
