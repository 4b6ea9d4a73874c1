//! The preparer's side of injected failures (`MockAccelNode.spec.faults`, decided in
//! [`crate::fixture::faults`]): before a prepare or unprepare touches anything, each claim of
//! the call is matched against the entries, the hits are stored in
//! `<plugin dir>/fault-hits.json` (under the same locks as the checkpoint, so two agent
//! processes count as one), and only then does the call act: a failed claim gets the entry's
//! message and nothing else happens to it; a delayed call sleeps without holding any lock, then
//! proceeds as usual. A delay longer than the kubelet's deadline makes the kubelet give up the
//! call (its future is dropped while sleeping, before anything was done) and retry it; the hit
//! still counts.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use k8s_openapi::api::resource::v1::ResourceClaim;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Core, Preparer};
use crate::{
    atomic_file, checkpoint,
    crd::MockAccelNodeSpec,
    fixture::{
        FaultOperation, FaultSpec,
        faults::{self, Effect, FaultHits},
    },
    plugin::ClaimSource,
};

/// File in the plugin data directory with the hits per fault entry.
pub const FAULT_HITS_FILE: &str = "fault-hits.json";

/// How long after the agent started a call waits for the node's spec, so that a call arriving
/// before the spec watch's first answer still meets the faults (counts stay exact). Later calls
/// never wait: an API server that cannot be read must not slow every prepare down.
pub const SPEC_WAIT: Duration = Duration::from_secs(5);

/// What consulting the faults decided for a call: the claims that fail (uid → message) and how
/// long the rest waits first.
pub(super) struct Decision {
    pub failed: HashMap<String, String>,
    pub delay: Duration,
}

impl<S: ClaimSource> Preparer<S> {
    /// Makes prepare and unprepare consult `spec.faults` of the node's `MockAccelNode`, as the
    /// agent's spec watch publishes it (`None` until the object was read).
    pub fn with_fixture(mut self, spec: watch::Receiver<Option<MockAccelNodeSpec>>) -> Self {
        self.fixture = spec;
        self.spec_deadline = tokio::time::Instant::now() + SPEC_WAIT;
        self
    }

    /// Hits per fault entry, for `MockAccelNode.status.faults`; changes with every hit and
    /// every prune.
    pub fn subscribe_fault_hits(&self) -> watch::Receiver<FaultHits> {
        self.core.fault_hits.subscribe()
    }

    /// Forgets the hits of entries removed from `spec.faults` whenever the spec changes, so
    /// that an entry added back starts again at 0. Runs until `shutdown`.
    pub async fn prune_fault_hits(&self, shutdown: CancellationToken) {
        let mut spec = self.fixture.clone();
        loop {
            let faults = spec
                .borrow_and_update()
                .as_ref()
                .map(|s| s.faults.clone().unwrap_or_default());
            if let Some(faults) = faults {
                self.locked(move |core| core.prune_hits(&faults), |_| ())
                    .await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = spec.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The current `spec.faults`, waiting for the spec to be known until [`SPEC_WAIT`] after
    /// the start.
    async fn current_faults(&self) -> Option<Vec<FaultSpec>> {
        let mut rx = self.fixture.clone();
        let known = tokio::time::timeout_at(self.spec_deadline, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok());
        if !known {
            tracing::warn!(
                "the node's MockAccelNode spec is not known yet; this call does not consult spec.faults"
            );
        }
        let spec = rx.borrow();
        spec.as_ref().map(|s| s.faults.clone().unwrap_or_default())
    }

    /// Consults the faults for `claims` (uid and, for prepare, the devices of this driver;
    /// unprepare looks them up in the checkpoint), records the hits, then sleeps the longest
    /// delay. Returns the claims that must fail with their messages.
    pub(super) async fn meet_faults(
        &self,
        operation: FaultOperation,
        claims: Vec<(String, Option<Vec<String>>)>,
    ) -> HashMap<String, String> {
        let Some(faults) = self.current_faults().await.filter(|f| !f.is_empty()) else {
            return HashMap::new();
        };
        let uids: Vec<String> = claims.iter().map(|(u, _)| u.clone()).collect();
        let decision = self
            .locked(
                move |core| core.record_faults(operation, &faults, claims),
                Err,
            )
            .await;
        match decision {
            Ok(Decision { failed, delay }) => {
                if !delay.is_zero() {
                    tracing::info!(operation = ?operation, delay = ?delay, "injected delay (spec.faults)");
                    tokio::time::sleep(delay).await;
                }
                failed
            }
            // Without a durable count the next call could not tell whether this one was hit:
            // fail closed, the kubelet retries.
            Err(message) => uids.into_iter().map(|u| (u, message.clone())).collect(),
        }
    }
}

/// Device names of this driver's allocation results in `claim`.
pub(super) fn claim_devices(claim: &ResourceClaim, driver: &str) -> Vec<String> {
    claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.as_ref())
        .into_iter()
        .flatten()
        .filter(|r| r.driver == driver)
        .map(|r| r.device.clone())
        .collect()
}

impl Core {
    fn fault_hits_path(&self) -> PathBuf {
        self.config.plugin_dir.join(FAULT_HITS_FILE)
    }

    /// The stored hits; a missing file is no hits, an unreadable one is an error naming it.
    pub(super) fn load_hits(&self) -> Result<FaultHits, String> {
        let path = self.fault_hits_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "fault hit counts in {} are unreadable: {e} (delete the file to reset the counts)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FaultHits::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn store_hits(&self, hits: &FaultHits) -> Result<(), String> {
        let path = self.fault_hits_path();
        let bytes = serde_json::to_vec_pretty(hits).map_err(|e| e.to_string())?;
        atomic_file::write_atomically(&path, &bytes, atomic_file::Durability::PowerLoss).map_err(
            |e| {
                format!(
                    "cannot record injected-fault hits in {}: {e} ({})",
                    path.display(),
                    atomic_file::remedy(&e, "check the plugin directory's permissions")
                )
            },
        )?;
        self.fault_hits.send_replace(hits.clone());
        Ok(())
    }

    /// Under the locks: reads the hits from disk (another agent process may have counted),
    /// consults every claim, stores the hits before anything acts on them.
    fn record_faults(
        &self,
        operation: FaultOperation,
        faults: &[FaultSpec],
        claims: Vec<(String, Option<Vec<String>>)>,
    ) -> Result<Decision, String> {
        let _lock = self.lock_plugin_dir().map_err(|e| e.to_string())?;
        let mut hits = self.load_hits()?;
        let before = hits.clone();
        faults::prune(faults, &mut hits);
        let prepared = claims
            .iter()
            .any(|(_, d)| d.is_none())
            .then(|| checkpoint::load(&self.checkpoint_path()).ok())
            .flatten();
        let mut decision = Decision {
            failed: HashMap::new(),
            delay: Duration::ZERO,
        };
        for (uid, devices) in claims {
            let devices = devices.unwrap_or_else(|| {
                prepared
                    .as_ref()
                    .and_then(|cp| cp.claims.get(&uid))
                    .map(|e| e.devices.iter().map(|d| d.device.clone()).collect())
                    .unwrap_or_default()
            });
            let Effect { delay, fail } = faults::consult(faults, &mut hits, operation, &devices);
            decision.delay = decision.delay.max(delay);
            if let Some(message) = fail {
                tracing::info!(claim_uid = %uid, operation = ?operation, message = %message,
                    "injected failure (spec.faults)");
                decision.failed.insert(uid, message);
            }
        }
        if hits != before {
            self.store_hits(&hits)?;
        }
        Ok(decision)
    }

    /// Under the locks: drops the hits of entries no longer in `faults`.
    fn prune_hits(&self, faults: &[FaultSpec]) {
        let pruned = self
            .lock_plugin_dir()
            .map_err(|e| e.to_string())
            .and_then(|_lock| {
                let mut hits = self.load_hits()?;
                if faults::prune(faults, &mut hits) {
                    self.store_hits(&hits)?;
                }
                Ok(())
            });
        if let Err(e) = pruned {
            tracing::warn!(error = %e, "cannot forget the hits of removed fault entries");
        }
    }
}
