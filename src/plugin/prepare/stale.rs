//! Stale claims: the pure decision whether a claim this node prepared is still held by the API
//! for this node, and the preparer's pass that releases the ones that are not.
//!
//! A claim prepared here is normally unprepared by the kubelet. When the claim was deleted, or
//! deleted and re-created under the same name (another UID), or deallocated and allocated
//! elsewhere while the node agent was down, and the kubelet no longer knows it (its own state
//! was lost), nobody would ever unprepare it: its devices stay marked busy and the scheduler
//! hands them out to claims whose prepare then fails. The node agent therefore compares its
//! checkpoint with the API at start and periodically ([`super::Preparer::release_stale`]).
//!
//! The rule is one-sided on purpose: only an answer from the API server that positively says
//! "not this claim on this node" releases. A failed or timed-out GET means "don't know" and
//! keeps the claim, so an API outage can never free a device a running pod uses.

use futures::StreamExt;
use k8s_openapi::api::resource::v1::ResourceClaim;

use super::{Core, FETCH_CONCURRENCY, FETCH_TIMEOUT, Preparer, plan::entry_claim};
use crate::{
    checkpoint::{self, ClaimEntry, PrepareState},
    plugin::{ClaimRef, ClaimSource},
};

/// What the API server said about a prepared claim's namespace/name.
#[derive(Clone, Debug)]
pub enum ApiView {
    /// The GET answered with this object.
    Found(Box<ResourceClaim>),
    /// The GET answered 404.
    NotFound,
    /// No usable answer (error or deadline): why.
    Unknown(String),
}

/// Why a prepared claim is no longer held for this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StaleReason {
    /// No ResourceClaim of that namespace and name exists.
    Deleted,
    /// A ResourceClaim of that name exists with another UID (deleted and re-created).
    Replaced,
    /// Same UID, but its allocation no longer names any device this node prepared for it
    /// (deallocated, or allocated elsewhere).
    NotAllocatedHere,
}

impl StaleReason {
    /// The metric label and the Event's wording key.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::Deleted => "deleted",
            StaleReason::Replaced => "replaced",
            StaleReason::NotAllocatedHere => "not_allocated_here",
        }
    }

    /// A sentence for logs and Events.
    pub fn describe(self) -> &'static str {
        match self {
            StaleReason::Deleted => "the ResourceClaim no longer exists",
            StaleReason::Replaced => "the ResourceClaim of that name has another UID",
            StaleReason::NotAllocatedHere => {
                "the ResourceClaim is no longer allocated a device of this node"
            }
        }
    }
}

/// The verdict on one checkpoint entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The API still holds the claim for this node (or the entry is not ours to judge).
    Keep,
    /// Release it.
    Stale(StaleReason),
    /// The API did not answer: keep it and ask again next time.
    Unknown(String),
}

/// Judges one entry of the checkpoint against what the API said about its name.
///
/// Only `PrepareCompleted` entries are judged: a `PrepareStarted` entry belongs to a prepare in
/// flight (in another process during a rolling update) or a rollback the next call or start
/// finishes. An allocation still naming one `(pool, device)` of the entry for `driver` keeps
/// the claim, so a claim whose allocation is unchanged is never released.
pub fn judge(entry: &ClaimEntry, view: &ApiView, driver: &str) -> Verdict {
    if entry.state != PrepareState::PrepareCompleted {
        return Verdict::Keep;
    }
    let found = match view {
        ApiView::Unknown(why) => return Verdict::Unknown(why.clone()),
        ApiView::NotFound => return Verdict::Stale(StaleReason::Deleted),
        ApiView::Found(found) => found,
    };
    if found.metadata.uid.as_deref() != Some(entry.uid.as_str()) {
        return Verdict::Stale(StaleReason::Replaced);
    }
    let results = found
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.as_deref())
        .unwrap_or_default();
    let still_ours = results.iter().any(|r| {
        r.driver == driver
            && entry
                .devices
                .iter()
                .any(|d| d.pool == r.pool && d.device == r.device)
    });
    // An entry without devices (nothing to release) is kept: it holds nothing.
    if still_ours || entry.devices.is_empty() {
        Verdict::Keep
    } else {
        Verdict::Stale(StaleReason::NotAllocatedHere)
    }
}

/// One claim a stale-claim pass released (or tried to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// `namespace/name (uid …)`.
    pub claim: String,
    /// DRA device names the claim held.
    pub devices: Vec<String>,
    pub reason: StaleReason,
    /// `Err` with what failed; the entry stays and the next pass tries again.
    pub outcome: Result<(), String>,
}

/// What one stale-claim pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaleReport {
    /// Prepared claims compared with the API.
    pub checked: usize,
    /// Claims the API gave no answer for, with why: kept, asked again next pass.
    pub unknown: Vec<(String, String)>,
    pub released: Vec<Released>,
    /// The checkpoint could not be read: nothing was judged.
    pub error: Option<String>,
}

impl<S: ClaimSource> Preparer<S> {
    /// Compares the checkpoint with the API and unprepares every claim the API positively
    /// says is no longer held for this node (see [`judge`]).
    ///
    /// The GETs run before any lock is taken, each within [`FETCH_TIMEOUT`]; the release then
    /// runs under both locks like an unprepare, on a checkpoint read again, and only for
    /// entries still exactly as judged (a claim re-prepared meanwhile is left alone).
    pub async fn release_stale(&self) -> StaleReport {
        let path = self.core.checkpoint_path();
        let loaded = tokio::task::spawn_blocking(move || checkpoint::load(&path)).await;
        let snapshot = match loaded {
            Ok(Ok(cp)) => cp,
            Ok(Err(e)) => {
                return StaleReport {
                    error: Some(e.to_string()),
                    ..Default::default()
                };
            }
            Err(join) => {
                return StaleReport {
                    error: Some(format!("internal error in the node agent: {join}")),
                    ..Default::default()
                };
            }
        };
        let entries: Vec<ClaimEntry> = snapshot
            .claims
            .into_values()
            .filter(|e| e.state == PrepareState::PrepareCompleted)
            .collect();
        let mut report = StaleReport {
            checked: entries.len(),
            ..Default::default()
        };
        let views: Vec<(ClaimEntry, ApiView)> = futures::stream::iter(entries)
            .map(|entry| async move {
                let view = self.view(&entry).await;
                (entry, view)
            })
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
        let driver = &self.core.config.driver_name;
        let mut stale = Vec::new();
        for (entry, view) in views {
            match judge(&entry, &view, driver) {
                Verdict::Keep => {}
                Verdict::Unknown(why) => report.unknown.push((entry_claim(&entry), why)),
                Verdict::Stale(reason) => stale.push((entry, reason)),
            }
        }
        if stale.is_empty() {
            return report;
        }
        let names: Vec<(String, Vec<String>, StaleReason)> = stale
            .iter()
            .map(|(e, r)| (entry_claim(e), devices_of(e), *r))
            .collect();
        report.released = self
            .locked(
                move |core| core.release_stale(stale),
                |message| {
                    names
                        .into_iter()
                        .map(|(claim, devices, reason)| Released {
                            claim,
                            devices,
                            reason,
                            outcome: Err(message.clone()),
                        })
                        .collect()
                },
            )
            .await;
        report
    }

    /// The API's answer for an entry's namespace/name, within [`FETCH_TIMEOUT`].
    async fn view(&self, entry: &ClaimEntry) -> ApiView {
        match tokio::time::timeout(
            FETCH_TIMEOUT,
            self.claims.get(&entry.namespace, &entry.name),
        )
        .await
        {
            Err(_) => ApiView::Unknown(format!(
                "no answer from the API server within {} s",
                FETCH_TIMEOUT.as_secs()
            )),
            Ok(Err(reason)) => ApiView::Unknown(reason),
            Ok(Ok(None)) => ApiView::NotFound,
            Ok(Ok(Some(found))) => ApiView::Found(Box::new(found)),
        }
    }
}

impl Core {
    /// The locked half of [`Preparer::release_stale`]: unprepares each judged entry that is
    /// still in the checkpoint unchanged, then publishes.
    pub(super) fn release_stale(&self, stale: Vec<(ClaimEntry, StaleReason)>) -> Vec<Released> {
        let loaded = self
            .lock_plugin_dir()
            .map_err(|e| e.to_string())
            .and_then(|lock| {
                checkpoint::load(&self.checkpoint_path())
                    .map(|cp| (lock, cp))
                    .map_err(|e| e.to_string())
            });
        let (_lock, mut cp) = match loaded {
            Ok(ok) => ok,
            Err(message) => {
                return stale
                    .into_iter()
                    .map(|(entry, reason)| Released {
                        claim: entry_claim(&entry),
                        devices: devices_of(&entry),
                        reason,
                        outcome: Err(message.clone()),
                    })
                    .collect();
            }
        };
        let mut released = Vec::new();
        for (entry, reason) in stale {
            if cp.claims.get(&entry.uid) != Some(&entry) {
                continue; // unprepared or prepared again since it was judged
            }
            let claim = ClaimRef {
                namespace: entry.namespace.clone(),
                uid: entry.uid.clone(),
                name: entry.name.clone(),
            };
            let outcome = self
                .unprepare_claim(&mut cp, &claim)
                .map_err(|e| e.to_string());
            released.push(Released {
                claim: claim.to_string(),
                devices: devices_of(&entry),
                reason,
                outcome,
            });
        }
        self.publish(&cp);
        released
    }
}

fn devices_of(entry: &ClaimEntry) -> Vec<String> {
    let mut devices: Vec<String> = entry.devices.iter().map(|d| d.device.clone()).collect();
    devices.dedup();
    devices
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::resource::v1::ResourceClaimStatus;

    use super::*;
    use crate::{
        checkpoint::DeviceEntry,
        test_support::claims::{DRIVER, NS, allocated, foreign, result},
    };

    const UID: &str = "a0000000-0000-4000-8000-000000000001";

    fn entry(state: PrepareState) -> ClaimEntry {
        ClaimEntry {
            uid: UID.into(),
            namespace: NS.into(),
            name: "c1".into(),
            state,
            devices: vec![DeviceEntry {
                device: "mock0".into(),
                sysfs_name: "mock0".into(),
                pool: "node1/numa0".into(),
                request_names: vec!["pf".into()],
                admin_access: false,
                share_id: None,
                consumed_memory: None,
                register_previous: Some(0),
            }],
            cdi_device_ids: vec![],
            prepared_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn completed() -> ClaimEntry {
        entry(PrepareState::PrepareCompleted)
    }

    fn found(claim: ResourceClaim) -> ApiView {
        ApiView::Found(Box::new(claim))
    }

    #[test]
    fn a_claim_still_allocated_here_is_kept() {
        let same = allocated(UID, "c1", vec![result("pf", "mock0", "node1/numa0")]);
        assert_eq!(judge(&completed(), &found(same), DRIVER), Verdict::Keep);
    }

    #[test]
    fn api_errors_mean_dont_know_never_gone() {
        let verdict = judge(&completed(), &ApiView::Unknown("timeout".into()), DRIVER);
        assert_eq!(verdict, Verdict::Unknown("timeout".into()));
    }

    #[test]
    fn a_deleted_claim_is_stale() {
        assert_eq!(
            judge(&completed(), &ApiView::NotFound, DRIVER),
            Verdict::Stale(StaleReason::Deleted)
        );
    }

    #[test]
    fn the_same_name_with_another_uid_is_stale() {
        let other = allocated(
            "b0000000-0000-4000-8000-000000000002",
            "c1",
            vec![result("pf", "mock0", "node1/numa0")],
        );
        assert_eq!(
            judge(&completed(), &found(other), DRIVER),
            Verdict::Stale(StaleReason::Replaced)
        );
    }

    #[test]
    fn a_claim_deallocated_or_allocated_elsewhere_is_stale() {
        let mut deallocated = allocated(UID, "c1", vec![]);
        deallocated.status = Some(ResourceClaimStatus::default());
        let elsewhere = allocated(UID, "c1", vec![result("pf", "mock0", "node2/numa0")]);
        let other_device = allocated(UID, "c1", vec![result("pf", "mock3", "node1/numa1")]);
        let other_driver = allocated(
            UID,
            "c1",
            vec![foreign(result("pf", "mock0", "node1/numa0"))],
        );
        for claim in [deallocated, elsewhere, other_device, other_driver] {
            assert_eq!(
                judge(&completed(), &found(claim.clone()), DRIVER),
                Verdict::Stale(StaleReason::NotAllocatedHere),
                "{claim:?}"
            );
        }
    }

    #[test]
    fn unfinished_prepares_and_empty_entries_are_not_judged() {
        let started = entry(PrepareState::PrepareStarted);
        assert_eq!(judge(&started, &ApiView::NotFound, DRIVER), Verdict::Keep);
        let mut empty = completed();
        empty.devices.clear();
        let same = allocated(UID, "c1", vec![]);
        assert_eq!(judge(&empty, &found(same), DRIVER), Verdict::Keep);
    }

    #[test]
    fn reasons_have_stable_labels() {
        let labels: Vec<_> = [
            StaleReason::Deleted,
            StaleReason::Replaced,
            StaleReason::NotAllocatedHere,
        ]
        .iter()
        .map(|r| r.as_str())
        .collect();
        assert_eq!(labels, ["deleted", "replaced", "not_allocated_here"]);
    }
}
