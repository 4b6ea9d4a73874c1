//! The prepare/unprepare state machine behind the DRA gRPC services.
//!
//! Prepare, per claim: GET the ResourceClaim, check its UID and allocation, take the results
//! of this driver, check every device against this node's inventory and against the claims
//! already prepared, record `PrepareStarted` in the checkpoint, write `1` to each status
//! register, write the claim's CDI spec, record `PrepareCompleted`. A failure after the first
//! side effect rolls back what this call did (registers back to their previous value, spec
//! removed, entry dropped). Unprepare: write `0` to the registers prepare wrote, remove the
//! spec, drop the entry; a claim that is not prepared is a success.
//!
//! Decisions where the contract leaves a choice:
//! - A claim without results for this driver gets an empty device list and no checkpoint
//!   entry, as the Go example driver does (the kubelet only calls a driver for claims that
//!   have its results, so this is a caller's mistake, not worth a failure).
//! - Opaque configuration for this driver must be a JSON object; this driver defines no
//!   parameters yet, so the keys are logged and ignored. Configuration that is not opaque (a
//!   kind newer than this driver) fails the claim, as the Go helper does.
//! - Admin-access results do not touch the register and never conflict; two ordinary results
//!   of different claims on one device do, unless both are shares (a `shareID`, consumable
//!   capacity): shares of one PF coexist, the first sets the register and the last one
//!   unprepared clears it, and each claim's CDI spec carries the memory it was granted.
//!
//! Every call is serialized twice: an async mutex within the process and an exclusive lock on
//! `<plugin dir>/serialize.lock` across processes (two node-agent pods during a rolling
//! update). The checkpoint is read from disk at the start of every call, so either pod may be
//! called.
//!
//! The ResourceClaims of a prepare are fetched before either lock is taken, [`FETCH_CONCURRENCY`]
//! at a time, each within [`FETCH_TIMEOUT`]: a hung API request fails its own claim and never holds up the calls of
//! other pods. Everything after the fetch (the file lock, checkpoint, sysfs and CDI I/O, and
//! publishing the result) runs as one blocking task on tokio's blocking pool, so a slow disk
//! delays only the call that touches it, never the health stream, heartbeats or
//! registration. A blocking task runs to its end even when the kubelet's deadline drops the
//! gRPC call, and it owns the in-process guard: a call cancelled at any point leaves either
//! nothing done or the whole batch done and published, never a checkpoint that disagrees with
//! the allocation map and `preparedClaims`.
//!
//! The decisions are pure functions in [`plan`]; the `Core` methods here perform the I/O;
//! [`PrepareError`] (in `error`) is the one error type; the metrics live in
//! [`super::metrics`].

pub mod boot;
mod checkpoint_watch;
mod error;
mod fail_points;
mod faults;
mod plan;
pub mod stale;

use std::{
    collections::HashMap,
    fs::{File, OpenOptions, TryLockError},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::resource::v1::ResourceClaim;
use tokio::sync::{OwnedMutexGuard, watch};

use self::plan::{
    allocated_map, entry_claim, new_entry, prepared_devices, prepared_status, shared_elsewhere,
    unique_devices,
};
pub use self::{
    error::PrepareError,
    faults::{FAULT_HITS_FILE, SPEC_WAIT},
    plan::{Plan, PlannedDevice, check_claim, plan_devices},
};
use super::{
    ClaimHandler, ClaimRef, ClaimSource, PrepareResults, PreparedClaim, PreparedDevice,
    UnprepareResults, metrics::PrepareMetrics,
};
use crate::{
    cdi,
    checkpoint::{self, Checkpoint, CheckpointError, ClaimEntry, PrepareState},
    clock::now_rfc3339,
    crd::MockAccelNodeSpec,
    fixture::{FaultOperation, faults::FaultHits},
    health::REGISTER_PREPARED,
    inventory::Inventory,
    sysfs::{self, SysfsError},
};

/// Lock file in the plugin data directory that serializes prepare and unprepare across
/// processes.
pub const LOCK_FILE: &str = "serialize.lock";

/// How long prepare waits for one ResourceClaim GET. The kubelet gives a whole batch about
/// 45 s; a claim whose GET hangs longer fails alone, with a message that says so, and the
/// kubelet retries it.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How many ResourceClaim GETs of one call run at once: a request naming thousands of claims
/// must not open thousands of API requests together.
pub const FETCH_CONCURRENCY: usize = 16;

/// Register value unprepare writes.
const REGISTER_RELEASED: u32 = 0;

/// Where the preparer reads and writes. Every path is a flag of the node agent.
#[derive(Clone, Debug)]
pub struct PreparerConfig {
    /// `--driver-name`: filters allocation results and names the CDI kind.
    pub driver_name: String,
    /// This node: pools of other nodes are refused.
    pub node_name: String,
    /// Root of the sysfs tree (holds `class/mock-accel`).
    pub sysfs_root: PathBuf,
    /// Where the character devices are (`/dev`).
    pub dev_root: PathBuf,
    /// Where CDI specs are written (`/var/run/cdi`).
    pub cdi_dir: PathBuf,
    /// The plugin's private data directory: checkpoint and lock file.
    pub plugin_dir: PathBuf,
    /// Kernel devices, or a simulated tree (`--simulate`): where CDI specs mount the devices
    /// in the container, and whether `/dev/<name>` is the host's node or `/dev/null`.
    pub layout: cdi::ContainerLayout,
}

/// What a rollback or an unprepare writes back into the registers prepare changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    /// Undo an unfinished prepare: the value read before it.
    Restore,
    /// Unprepare a claim: `0`.
    Clear,
}

/// The kubelet plugin's claim handler: prepares and unprepares claims on this node.
///
/// Wiring: `PrepareMetrics::register(&mut registry)`, then `Preparer::new(config,
/// inventory_rx, claims, metrics)` with `claims` a [`super::claims::KubeClaimSource`] (or a
/// map in tests); hand it to the gRPC servers as their [`ClaimHandler`], and watch
/// [`Preparer::subscribe`] to write `status.preparedClaims`.
pub struct Preparer<S: ClaimSource> {
    core: Arc<Core>,
    claims: S,
    /// Serializes calls within the process (the file lock does it across processes). Owned
    /// guards move into the blocking task, so a cancelled call keeps it until its I/O ends.
    serial: Arc<tokio::sync::Mutex<()>>,
    /// The node's `MockAccelNode.spec`, whose `faults` every call consults first (see
    /// `faults`); a spec without faults unless [`Preparer::with_fixture`] wires the agent's.
    fixture: watch::Receiver<Option<MockAccelNodeSpec>>,
    /// Until when a call waits for an unknown spec (see `faults::SPEC_WAIT`).
    spec_deadline: tokio::time::Instant,
}

/// The part of the preparer that the blocking tasks own: everything but the claim source.
struct Core {
    config: PreparerConfig,
    inventory: watch::Receiver<Arc<Inventory>>,
    metrics: PrepareMetrics,
    prepared: watch::Sender<Vec<PreparedClaim>>,
    /// DRA device name → `namespace/name` of the claim holding it.
    allocated: Mutex<HashMap<String, String>>,
    /// Hits per injected-fault entry, as last stored in the plugin directory.
    fault_hits: watch::Sender<FaultHits>,
    /// The checkpoint content this process last stored, recorded before the rename: the
    /// checkpoint watch skips the file events of its own writes (see `checkpoint_watch`).
    stored: Arc<Mutex<Vec<u8>>>,
}

/// A claim of a prepare call with the outcome of its GET, taken before the locks.
struct Fetched {
    claim: ClaimRef,
    found: Result<ResourceClaim, PrepareError>,
    start: Instant,
}

impl<S: ClaimSource> Preparer<S> {
    /// Creates the plugin and CDI directories if needed, then recovers from an interrupted
    /// run: prepares still `PrepareStarted` in the checkpoint are rolled back, and spec files
    /// of this driver that no checkpoint entry accounts for are removed.
    ///
    /// `inventory` is the node's current devices (the agent updates it); prepare checks
    /// allocations against it and builds CDI specs from it, so the agent should publish its
    /// first scan before the kubelet can call. A corrupt checkpoint does not fail construction:
    /// prepare then fails closed with a message naming the file, unprepare proceeds. Blocks
    /// while another process holds the lock file (it does only during a call): async callers
    /// use [`Preparer::start`].
    pub fn new(
        config: PreparerConfig,
        inventory: watch::Receiver<Arc<Inventory>>,
        claims: S,
        metrics: PrepareMetrics,
    ) -> Result<Self, PrepareError> {
        for dir in [&config.plugin_dir, &config.cdi_dir] {
            std::fs::create_dir_all(dir).map_err(|source| PrepareError::Setup {
                path: dir.clone(),
                source,
            })?;
        }
        let (prepared, _) = watch::channel(Vec::new());
        let core = Core {
            config,
            inventory,
            metrics,
            prepared,
            allocated: Mutex::new(HashMap::new()),
            fault_hits: watch::channel(FaultHits::default()).0,
            stored: Arc::default(),
        };
        let lock = core.lock_plugin_dir()?;
        core.forget_earlier_boot();
        core.recover();
        match core.load_hits() {
            Ok(hits) => {
                core.fault_hits.send_replace(hits);
            }
            // Calls that meet a fault fail with this message until the file is fixed.
            Err(e) => tracing::error!(error = %e, "cannot read the injected-fault hit counts"),
        }
        drop(lock);
        Ok(Preparer {
            core: Arc::new(core),
            claims,
            serial: Arc::new(tokio::sync::Mutex::new(())),
            fixture: watch::channel(Some(MockAccelNodeSpec::default())).1,
            spec_deadline: tokio::time::Instant::now(),
        })
    }

    /// [`Preparer::new`] on tokio's blocking pool: the lock file and the recovery's file I/O
    /// never stall a runtime thread (another pod may hold the lock during a rolling update).
    pub async fn start(
        config: PreparerConfig,
        inventory: watch::Receiver<Arc<Inventory>>,
        claims: S,
        metrics: PrepareMetrics,
    ) -> Result<Self, PrepareError> {
        let path = config.plugin_dir.clone();
        tokio::task::spawn_blocking(move || Self::new(config, inventory, claims, metrics))
            .await
            .map_err(|join| PrepareError::Setup {
                path,
                source: std::io::Error::other(join),
            })?
    }

    /// Prepared claims, for `MockAccelNode.status.preparedClaims`; changes on every prepare
    /// and unprepare that changes the set.
    pub fn subscribe(&self) -> watch::Receiver<Vec<PreparedClaim>> {
        self.core.prepared.subscribe()
    }

    /// DRA device name → `namespace/name` of the claim it is prepared for (admin-access
    /// claims, which share devices, are not listed).
    pub fn allocated_devices(&self) -> HashMap<String, String> {
        self.core
            .allocated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Runs `work` on the blocking pool while no prepare or unprepare of this process runs,
    /// with what is prepared at that moment. For work that must agree with the prepared set:
    /// writing `sriov_numvfs` must never remove a prepared device (no prepare can start between
    /// the check and the change), and registers read then are not being set or reset
    /// meanwhile. `Err` when the task panicked.
    pub async fn while_no_prepare<T: Send + 'static>(
        &self,
        work: impl FnOnce(Held) -> T + Send + 'static,
    ) -> Result<T, String> {
        self.locked(
            move |core| {
                let devices = core
                    .allocated
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
                let claims = core.prepared.borrow().clone();
                Ok(work(Held { claims, devices }))
            },
            Err,
        )
        .await
    }

    /// GETs one claim within [`FETCH_TIMEOUT`].
    async fn fetch(&self, claim: ClaimRef) -> Fetched {
        let start = Instant::now();
        let found = match tokio::time::timeout(
            FETCH_TIMEOUT,
            self.claims.get(&claim.namespace, &claim.name),
        )
        .await
        {
            Err(_) => Err(PrepareError::Fetch {
                claim: claim.to_string(),
                reason: format!(
                    "no answer from the API server within {} s; the kubelet retries",
                    FETCH_TIMEOUT.as_secs()
                ),
            }),
            Ok(Err(reason)) => Err(PrepareError::Fetch {
                claim: claim.to_string(),
                reason,
            }),
            Ok(Ok(None)) => Err(PrepareError::ClaimNotFound {
                claim: claim.to_string(),
            }),
            Ok(Ok(Some(found))) => Ok(found),
        };
        Fetched {
            claim,
            found,
            start,
        }
    }

    /// Runs `work` on the blocking pool with the in-process guard; the task finishes (and
    /// publishes) even if the caller is dropped. `fail` builds the answer when the task
    /// itself panicked.
    async fn locked<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Core) -> T + Send + 'static,
        fail: impl FnOnce(String) -> T,
    ) -> T {
        let guard: OwnedMutexGuard<()> = Arc::clone(&self.serial).lock_owned().await;
        let core = Arc::clone(&self.core);
        let task = tokio::task::spawn_blocking(move || {
            let result = work(&core);
            drop(guard);
            result
        });
        match task.await {
            Ok(result) => result,
            Err(join) => fail(format!("internal error in the node agent: {join}")),
        }
    }
}

impl Core {
    fn checkpoint_path(&self) -> PathBuf {
        checkpoint::checkpoint_path(&self.config.plugin_dir)
    }

    fn lock_path(&self) -> PathBuf {
        self.config.plugin_dir.join(LOCK_FILE)
    }

    /// Stores `cp`, recording its content first for the checkpoint watch.
    fn store(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let bytes = checkpoint::encode(cp);
        self.stored
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone_from(&bytes);
        checkpoint::store_encoded(&self.checkpoint_path(), &bytes)
    }

    /// Sets the checkpoint aside when it was written in an earlier boot (see [`boot`]).
    fn forget_earlier_boot(&self) {
        let Some(current) = boot::kernel_boot_id() else {
            tracing::warn!(
                "the kernel does not tell its boot id; a checkpoint of an earlier boot is kept"
            );
            return;
        };
        match boot::forget_earlier_boot(&self.config.plugin_dir, &self.checkpoint_path(), &current)
        {
            Ok(boot::BootCheck::Kept) => {}
            Ok(boot::BootCheck::SetAside(aside)) => tracing::info!(
                set_aside = ?aside,
                "the node rebooted since the last start: the checkpoint's registers and CDI specs are gone, starting empty (the kubelet prepares its claims again)"
            ),
            Err(e) => tracing::error!(
                dir = %self.config.plugin_dir.display(), error = %e,
                "cannot compare the boot id recorded in the plugin directory with this boot's; the checkpoint is kept"
            ),
        }
    }

    fn recover(&self) {
        let mut cp = match checkpoint::load(&self.checkpoint_path()) {
            Ok(cp) => cp,
            Err(e) => {
                tracing::error!(error = %e, "cannot recover prepared claims");
                return;
            }
        };
        let interrupted: Vec<String> = cp
            .claims
            .values()
            .filter(|e| e.state == PrepareState::PrepareStarted)
            .map(|e| e.uid.clone())
            .collect();
        for uid in interrupted {
            match self.roll_back(&mut cp, &uid) {
                Ok(()) => tracing::info!(claim_uid = %uid, "rolled back an interrupted prepare"),
                Err(e) => {
                    tracing::error!(claim_uid = %uid, error = %e, "rolling back an interrupted prepare failed")
                }
            }
        }
        self.remove_stray_specs(&cp);
        self.publish(&cp);
    }

    /// Spec files of this driver without a checkpoint entry come from a run that lost its
    /// record (a crash between removing a spec's entry and the spec, or a checkpoint moved
    /// aside); left alone, they would make stale devices resolvable.
    fn remove_stray_specs(&self, cp: &Checkpoint) {
        let Ok(entries) = std::fs::read_dir(&self.config.cdi_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(uid) =
                cdi::claim_uid_of_spec_file(&self.config.driver_name, &file_name.to_string_lossy())
            else {
                continue;
            };
            if cp.claims.contains_key(&uid) {
                continue;
            }
            match cdi::remove_spec(&self.config.cdi_dir, &self.config.driver_name, &uid) {
                Ok(_) => {
                    tracing::info!(claim_uid = %uid, "removed a CDI spec no prepared claim accounts for")
                }
                Err(e) => tracing::warn!(error = %e, "cannot remove a stray CDI spec"),
            }
        }
    }

    fn publish(&self, cp: &Checkpoint) {
        let status = prepared_status(cp);
        self.metrics.prepared_claims.set(status.len() as i64);
        *self
            .allocated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = allocated_map(cp);
        self.prepared.send_if_modified(|current| {
            let changed = *current != status;
            if changed {
                *current = status;
            }
            changed
        });
    }

    /// Takes the cross-process lock, waiting while another process holds it (runs on the
    /// blocking pool). Closing the returned file releases the lock.
    fn lock_plugin_dir(&self) -> Result<File, PrepareError> {
        let path = self.lock_path();
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(source)) => return Err(PrepareError::Setup { path, source }),
        }
        tracing::info!(path = %path.display(), "waiting for another node agent to finish its call");
        file.lock()
            .map(|()| file)
            .map_err(|source| PrepareError::Setup { path, source })
    }

    /// A prepare call after its GETs: lock, checkpoint, every claim, publish.
    fn prepare_batch(&self, fetched: Vec<Fetched>) -> PrepareResults {
        let loaded = match self.lock_plugin_dir() {
            Ok(lock) => checkpoint::load(&self.checkpoint_path())
                .map(|cp| (lock, cp))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let (_lock, mut cp) = match loaded {
            Ok(ok) => ok,
            Err(message) => {
                // Fail closed: without the record, a device could be handed out twice.
                tracing::error!(error = %message, "refusing to prepare");
                return fetched
                    .into_iter()
                    .map(|f| {
                        self.metrics.prepared(false, f.start);
                        (f.claim.uid, Err(message.clone()))
                    })
                    .collect();
            }
        };
        let inventory = self.inventory.borrow().clone();
        let mut results = PrepareResults::new();
        for Fetched {
            claim,
            found,
            start,
        } in fetched
        {
            let outcome =
                found.and_then(|found| self.prepare_claim(&mut cp, &inventory, &claim, &found));
            self.metrics.prepared(outcome.is_ok(), start);
            match &outcome {
                Ok(devices) => tracing::info!(claim = %claim, devices = devices.len(), "prepared"),
                Err(e) => tracing::warn!(claim = %claim, error = %e, "prepare failed"),
            }
            results.insert(claim.uid, outcome.map_err(|e| e.to_string()));
        }
        self.publish(&cp);
        results
    }

    /// An unprepare call: lock, checkpoint, every claim, publish.
    fn unprepare_batch(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let lock = self.lock_plugin_dir();
        let loaded = match &lock {
            Ok(_) => Ok(checkpoint::load(&self.checkpoint_path())),
            Err(e) => Err(e.to_string()),
        };
        let mut results = UnprepareResults::new();
        let mut published = None;
        for claim in claims {
            let start = Instant::now();
            let outcome = match &loaded {
                Err(message) => Err(message.clone()),
                Ok(Ok(cp)) => {
                    let cp = published.get_or_insert_with(|| cp.clone());
                    self.unprepare_claim(cp, &claim).map_err(|e| e.to_string())
                }
                Ok(Err(e)) if e.is_unusable_content() => self
                    .unprepare_without_checkpoint(&claim, e)
                    .map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(format!("claim {claim}: {e}")),
            };
            self.metrics.unprepared(outcome.is_ok(), start);
            match &outcome {
                Ok(()) => tracing::info!(claim = %claim, "unprepared"),
                Err(e) => tracing::warn!(claim = %claim, error = %e, "unprepare failed"),
            }
            results.insert(claim.uid, outcome);
        }
        if let Some(cp) = &published {
            self.publish(cp);
        }
        drop(lock);
        results
    }

    fn prepare_claim(
        &self,
        cp: &mut Checkpoint,
        inventory: &Inventory,
        claim: &ClaimRef,
        found: &ResourceClaim,
    ) -> Result<Vec<PreparedDevice>, PrepareError> {
        let driver = &self.config.driver_name;
        let allocation = check_claim(claim, found)?;

        match cp.claims.get(&claim.uid) {
            Some(entry) if entry.state == PrepareState::PrepareCompleted => {
                let entry = entry.clone();
                // After a reboot the CDI directory (a tmpfs) is empty while the checkpoint
                // survives: the runtime needs the spec again.
                if !cdi::spec_exists(&self.config.cdi_dir, driver, &claim.uid) {
                    self.write_spec(&entry, inventory)?;
                    tracing::info!(claim = %claim, "re-created a missing CDI spec");
                }
                return Ok(prepared_devices(driver, &entry));
            }
            // An interrupted prepare whose rollback failed earlier: finish the rollback first.
            Some(_) => self.roll_back(cp, &claim.uid)?,
            None => {}
        }

        let plan = plan_devices(
            claim,
            allocation,
            driver,
            &self.config.node_name,
            inventory,
            cp,
        )?;
        for key in &plan.ignored_parameters {
            tracing::info!(claim = %claim, parameter = %key, "ignoring an opaque parameter this driver does not define");
        }
        if plan.devices.is_empty() {
            return Ok(Vec::new());
        }

        let mut previous = HashMap::new();
        for sysfs_name in plan.register_writes() {
            let value =
                sysfs::read_status(&self.config.sysfs_root, sysfs_name).map_err(|source| {
                    PrepareError::Register {
                        claim: claim.to_string(),
                        source,
                    }
                })?;
            previous.insert(sysfs_name.to_string(), value);
        }
        let mut entry = new_entry(claim, &plan, &previous, driver, &now_rfc3339());

        // Record the intent before the first side effect: a crash from here on is rolled back
        // at the next start.
        cp.claims.insert(claim.uid.clone(), entry.clone());
        if let Err(source) = self.store(cp) {
            cp.claims.remove(&claim.uid);
            return Err(PrepareError::Checkpoint {
                claim: claim.to_string(),
                source,
            });
        }
        let applied = self
            .fail_point(fail_points::PREPARE_STEPS[0])
            .and_then(|()| self.apply(&entry, inventory));
        if let Err(cause) = applied {
            return Err(self.undo(cp, &claim.uid, cause));
        }
        entry.state = PrepareState::PrepareCompleted;
        cp.claims.insert(claim.uid.clone(), entry.clone());
        if let Err(source) = self.store(cp) {
            let cause = PrepareError::Checkpoint {
                claim: claim.to_string(),
                source,
            };
            return Err(self.undo(cp, &claim.uid, cause));
        }
        if let Err(cause) = self.fail_point(fail_points::PREPARE_STEPS[3]) {
            return Err(self.undo(cp, &claim.uid, cause));
        }
        Ok(prepared_devices(driver, &entry))
    }

    /// The side effects of a recorded prepare: registers, then the CDI spec.
    fn apply(&self, entry: &ClaimEntry, inventory: &Inventory) -> Result<(), PrepareError> {
        for d in entry
            .devices
            .iter()
            .filter(|d| d.register_previous.is_some())
        {
            sysfs::write_status(&self.config.sysfs_root, &d.sysfs_name, REGISTER_PREPARED)
                .map_err(|source| PrepareError::Register {
                    claim: entry_claim(entry),
                    source,
                })?;
        }
        self.fail_point(fail_points::PREPARE_STEPS[1])?;
        self.write_spec(entry, inventory)?;
        self.fail_point(fail_points::PREPARE_STEPS[2])
    }

    /// Passes a named fail point (armed only in unit tests, see `fail_points`).
    fn fail_point(&self, name: &'static str) -> Result<(), PrepareError> {
        fail_points::hit(&self.config.plugin_dir, name).map_err(|source| PrepareError::Setup {
            path: self.config.plugin_dir.clone(),
            source,
        })
    }

    fn write_spec(&self, entry: &ClaimEntry, inventory: &Inventory) -> Result<(), PrepareError> {
        let claim = entry_claim(entry);
        let mut devices = Vec::new();
        for d in unique_devices(entry) {
            // A claim may hold several shares of one device: it was granted their sum.
            let memory = entry
                .devices
                .iter()
                .filter(|e| e.device == d.device)
                .filter_map(|e| e.consumed_memory)
                .reduce(u64::saturating_add);
            let Some(found) = inventory.get(&d.device) else {
                return Err(PrepareError::UnknownDevice {
                    claim,
                    request: d.request_names.join(","),
                    device: d.device.clone(),
                    node: self.config.node_name.clone(),
                });
            };
            devices.push(cdi::SpecDevice {
                name: found.name.clone(),
                sysfs_name: found.sysfs_name.clone(),
                uuid: found.uuid.clone(),
                pci_address: found.pci_address.clone(),
                dev_node: self.dev_node(&found.sysfs_name),
                memory,
            });
        }
        let cdi_error = |source| PrepareError::Cdi {
            claim: entry_claim(entry),
            source,
        };
        let spec = cdi::claim_spec(
            &self.config.driver_name,
            &entry.uid,
            &self.config.sysfs_root,
            self.config.layout,
            &devices,
        )
        .map_err(cdi_error)?;
        cdi::write_spec(
            &self.config.cdi_dir,
            &self.config.driver_name,
            &entry.uid,
            &spec,
        )
        .map_err(cdi_error)?;
        Ok(())
    }

    /// The host's character device for `sysfs_name`, when it exists; for a simulated device,
    /// which has none, the host's `/dev/null` (see [`cdi::SIMULATED_DEV_NODE`]).
    fn dev_node(&self, sysfs_name: &str) -> Option<cdi::DevNode> {
        if self.config.layout == cdi::ContainerLayout::Simulated {
            return Some(cdi::DevNode {
                host_path: PathBuf::from(cdi::SIMULATED_DEV_NODE),
                numbers: None,
            });
        }
        let host_path = sysfs::dev_node_path(&self.config.dev_root, sysfs_name);
        host_path.exists().then(|| cdi::DevNode {
            numbers: sysfs::read_dev_numbers(&self.config.sysfs_root, sysfs_name),
            host_path,
        })
    }

    /// Rolls back after `cause`; the error to report is `cause`, plus the rollback's failure.
    fn undo(&self, cp: &mut Checkpoint, uid: &str, cause: PrepareError) -> PrepareError {
        if let Some(entry) = cp.claims.get_mut(uid) {
            entry.state = PrepareState::PrepareStarted;
        }
        match self.roll_back(cp, uid) {
            Ok(()) => cause,
            Err(rollback) => PrepareError::RollbackFailed {
                cause: Box::new(cause),
                rollback: rollback.to_string(),
            },
        }
    }

    /// Undoes an unfinished prepare and drops its entry. On failure the entry stays, so that
    /// the next call (or start) tries again.
    fn roll_back(&self, cp: &mut Checkpoint, uid: &str) -> Result<(), PrepareError> {
        let Some(entry) = cp.claims.get(uid).cloned() else {
            return Ok(());
        };
        self.release(&entry, Release::Restore, &Default::default())?;
        self.fail_point(fail_points::ROLLBACK_RELEASED)?;
        cp.claims.remove(uid);
        self.store(cp).map_err(|source| PrepareError::Checkpoint {
            claim: entry_claim(&entry),
            source,
        })
    }

    /// Registers back (only those prepare wrote; for shares, the register of a device no
    /// other claim in `shared_elsewhere` still shares), then the spec. A device that disappeared
    /// from sysfs has nothing left to restore.
    fn release(
        &self,
        entry: &ClaimEntry,
        how: Release,
        shared_elsewhere: &std::collections::BTreeSet<String>,
    ) -> Result<(), PrepareError> {
        let mut errors = Vec::new();
        let mut cleared = std::collections::BTreeSet::new();
        for d in &entry.devices {
            let value = match (how, d.register_previous) {
                (Release::Restore, Some(previous)) => previous,
                // The last share of a device clears its register, whichever share set it.
                (Release::Clear, _)
                    if d.share_id.is_some()
                        && !d.admin_access
                        && !shared_elsewhere.contains(&d.device)
                        && cleared.insert(d.sysfs_name.as_str()) =>
                {
                    REGISTER_RELEASED
                }
                (Release::Clear, Some(_)) if d.share_id.is_none() => REGISTER_RELEASED,
                _ => continue,
            };
            match sysfs::write_status(&self.config.sysfs_root, &d.sysfs_name, value) {
                Ok(()) => {}
                Err(SysfsError::Io { source, path })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tracing::warn!(path = %path.display(), "device is gone; nothing to release");
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if how == Release::Clear
            && let Err(e) = self.fail_point(fail_points::UNPREPARE_STEPS[0])
        {
            errors.push(e.to_string());
        }
        if let Err(e) = cdi::remove_spec(&self.config.cdi_dir, &self.config.driver_name, &entry.uid)
        {
            errors.push(e.to_string());
        }
        if how == Release::Clear
            && let Err(e) = self.fail_point(fail_points::UNPREPARE_STEPS[1])
        {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PrepareError::Release {
                claim: entry_claim(entry),
                errors,
            })
        }
    }

    fn unprepare_claim(&self, cp: &mut Checkpoint, claim: &ClaimRef) -> Result<(), PrepareError> {
        let Some(entry) = cp.claims.get(&claim.uid).cloned() else {
            // Not prepared here (or already unprepared): success. A spec under this UID can
            // only be a leftover of a lost record.
            cdi::remove_spec(&self.config.cdi_dir, &self.config.driver_name, &claim.uid).map_err(
                |source| PrepareError::Cdi {
                    claim: claim.to_string(),
                    source,
                },
            )?;
            return Ok(());
        };
        let shared = shared_elsewhere(cp, &claim.uid);
        self.release(&entry, Release::Clear, &shared)?;
        cp.claims.remove(&claim.uid);
        self.store(cp).map_err(|source| PrepareError::Checkpoint {
            claim: claim.to_string(),
            source,
        })?;
        self.fail_point(fail_points::UNPREPARE_STEPS[2])
    }

    /// With an unreadable checkpoint, unprepare still removes what it can find by the claim
    /// UID alone (the CDI spec), so that pods can be torn down; registers are left as they are.
    fn unprepare_without_checkpoint(
        &self,
        claim: &ClaimRef,
        why: &CheckpointError,
    ) -> Result<(), PrepareError> {
        tracing::warn!(claim = %claim, error = %why, "unprepare without a usable checkpoint: removing the CDI spec only");
        cdi::remove_spec(&self.config.cdi_dir, &self.config.driver_name, &claim.uid)
            .map(|_| ())
            .map_err(|source| PrepareError::Cdi {
                claim: claim.to_string(),
                source,
            })
    }
}

impl<S: ClaimSource> ClaimHandler for Preparer<S> {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        // Every GET before the locks: no network call while other calls wait.
        let fetched: Vec<Fetched> = futures::stream::iter(claims)
            .map(|c| self.fetch(c))
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
        // Injected faults before anything is touched; a delay sleeps holding no lock.
        let driver = &self.core.config.driver_name;
        let consulted = fetched
            .iter()
            .map(|f| {
                let devices = f.found.as_ref().map(|c| faults::claim_devices(c, driver));
                (f.claim.uid.clone(), Some(devices.unwrap_or_default()))
            })
            .collect();
        let failed = self.meet_faults(FaultOperation::Prepare, consulted).await;
        let (rest, mut results) = take_failed(
            fetched,
            |f| &f.claim.uid,
            &failed,
            |f| self.core.metrics.prepared(false, f.start),
        );
        if !rest.is_empty() {
            let uids = rest.iter().map(|f| f.claim.uid.clone()).collect();
            results.extend(self.locked_batch(rest, uids, Core::prepare_batch).await);
        }
        results
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        // Unprepare names no devices: the checkpoint says which devices a claim holds.
        let consulted = claims.iter().map(|c| (c.uid.clone(), None)).collect();
        let failed = self.meet_faults(FaultOperation::Unprepare, consulted).await;
        let (rest, mut results) = take_failed(
            claims,
            |c| &c.uid,
            &failed,
            |_| self.core.metrics.unprepared(false, Instant::now()),
        );
        if !rest.is_empty() {
            let uids = rest.iter().map(|c| c.uid.clone()).collect();
            results.extend(self.locked_batch(rest, uids, Core::unprepare_batch).await);
        }
        results
    }
}

impl<S: ClaimSource> Preparer<S> {
    /// `batch` of `items` (claims `uids`) under the locks; every claim gets the panic's message
    /// if the task panicked.
    async fn locked_batch<T: Send + 'static, R: Send + 'static>(
        &self,
        items: Vec<T>,
        uids: Vec<String>,
        batch: fn(&Core, Vec<T>) -> Answers<R>,
    ) -> Answers<R> {
        self.locked(
            move |core| batch(core, items),
            |message| {
                uids.into_iter()
                    .map(|u| (u, Err(message.clone())))
                    .collect()
            },
        )
        .await
    }
}

/// What this process has prepared, as [`Preparer::while_no_prepare`] hands it over.
#[derive(Clone, Debug)]
pub struct Held {
    /// The prepared claims, as last published.
    pub claims: Vec<PreparedClaim>,
    /// DRA device name → `namespace/name` of the claim it is prepared for (admin-access
    /// claims, which share devices, are not listed).
    pub devices: HashMap<String, String>,
}

/// Per-claim answers of a call, keyed by claim UID.
type Answers<R> = HashMap<String, Result<R, String>>;

/// Splits off the claims an injected fault failed (answered with its message, `on_fail` called
/// for each) from those that proceed.
fn take_failed<T, R>(
    items: Vec<T>,
    uid: impl Fn(&T) -> &String,
    failed: &HashMap<String, String>,
    mut on_fail: impl FnMut(&T),
) -> (Vec<T>, Answers<R>) {
    let mut answered = HashMap::new();
    let mut rest = Vec::with_capacity(items.len());
    for item in items {
        match failed.get(uid(&item)) {
            Some(message) => {
                on_fail(&item);
                answered.insert(uid(&item).clone(), Err(message.clone()));
            }
            None => rest.push(item),
        }
    }
    (rest, answered)
}

fn open_lock_file(path: &Path) -> Result<File, PrepareError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| PrepareError::Setup {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::resource::v1::ResourceClaim;
    use prometheus_client::registry::Registry;
    use tempfile::TempDir;

    use super::*;
    use crate::{
        checkpoint::DeviceEntry,
        inventory::{Device, DeviceType},
        test_support::{
            claims::{
                ClaimMap, DRIVER, NODE, NS, admin, allocated, claim_meta, cref, foreign, opaque,
                result, share, with_config,
            },
            devices,
        },
    };

    // ---- fixtures: a node ----

    /// Device `n` of the test node: 2 GiB at `0000:11:00.<n>`, register last read as 1.
    fn device(sysfs: &str, device_type: DeviceType, numa: Option<u32>, n: u8) -> Device {
        devices::pf(sysfs)
            .device_type(device_type)
            .uuid(format!("4e4f4445-312d-4e55-4d41-30000000000{n}"))
            .memory(2 << 30)
            .pci_address(format!("0000:11:00.{n}"))
            .numa(numa)
            .status(1)
            .build()
    }

    /// A temp dir with a sysfs tree (status and dev attributes), a /dev with nodes for some
    /// devices, a CDI dir and a plugin dir. Devices: mock0 (PF, NUMA 0, has /dev node),
    /// mock0_vf0 (VF, NUMA 0, has /dev node), mock1 (PF, NUMA 1, no /dev node).
    struct TestNode {
        _tmp: TempDir,
        config: PreparerConfig,
        inventory: watch::Sender<Arc<Inventory>>,
        source: ClaimMap,
        registry: Registry,
    }

    impl TestNode {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let config = PreparerConfig {
                driver_name: DRIVER.into(),
                node_name: NODE.into(),
                sysfs_root: tmp.path().join("sys"),
                dev_root: tmp.path().join("dev"),
                cdi_dir: tmp.path().join("run/cdi"),
                plugin_dir: tmp.path().join("plugins/mock-accel.example.com"),
                layout: Default::default(),
            };
            let devices = vec![
                device("mock0", DeviceType::Pf, Some(0), 0),
                device("mock0_vf0", DeviceType::Vf, Some(0), 1),
                device("mock1", DeviceType::Pf, Some(1), 2),
            ];
            std::fs::create_dir_all(&config.dev_root).unwrap();
            for (i, d) in devices.iter().enumerate() {
                let dir = config
                    .sysfs_root
                    .join("class/mock-accel")
                    .join(&d.sysfs_name);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("status"), "0x00000005\n").unwrap();
                std::fs::write(dir.join("dev"), format!("240:{i}\n")).unwrap();
                if d.sysfs_name != "mock1" {
                    std::fs::write(config.dev_root.join(&d.sysfs_name), "").unwrap();
                }
            }
            let (inventory, _) = watch::channel(Arc::new(Inventory::new(devices)));
            TestNode {
                _tmp: tmp,
                config,
                inventory,
                source: ClaimMap::default(),
                registry: Registry::default(),
            }
        }

        fn preparer(&mut self) -> Preparer<ClaimMap> {
            let source = self.source.clone();
            self.preparer_with(source)
        }

        fn preparer_with<S: ClaimSource>(&mut self, source: S) -> Preparer<S> {
            let metrics = PrepareMetrics::register(&mut self.registry);
            Preparer::new(
                self.config.clone(),
                self.inventory.subscribe(),
                source,
                metrics,
            )
            .unwrap()
        }

        /// Holds the lock file as another node-agent process would.
        fn hold_lock(&self) -> File {
            std::fs::create_dir_all(&self.config.plugin_dir).unwrap();
            let other = open_lock_file(&self.config.plugin_dir.join(LOCK_FILE)).unwrap();
            other.lock().unwrap();
            other
        }

        /// The checkpoint, the published `preparedClaims` and the allocation map agree.
        fn assert_consistent<S: ClaimSource>(&self, p: &Preparer<S>) {
            let mut on_disk: Vec<String> = self.checkpoint().claims.into_keys().collect();
            on_disk.sort();
            let mut published: Vec<String> = p
                .subscribe()
                .borrow()
                .iter()
                .map(|c| c.uid.clone())
                .collect();
            published.sort();
            assert_eq!(on_disk, published, "checkpoint vs preparedClaims");
            let mut holders: Vec<String> = p.allocated_devices().into_values().collect();
            holders.sort();
            holders.dedup();
            let names: Vec<String> = self
                .checkpoint()
                .claims
                .values()
                .filter(|e| e.devices.iter().any(|d| !d.admin_access))
                .map(|e| format!("{}/{}", e.namespace, e.name))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(holders, names, "checkpoint vs allocation map");
        }

        fn register(&self, sysfs: &str) -> u32 {
            sysfs::read_status(&self.config.sysfs_root, sysfs).unwrap()
        }

        fn set_register(&self, sysfs: &str, value: u32) {
            sysfs::write_status(&self.config.sysfs_root, sysfs, value).unwrap();
        }

        fn spec(&self, uid: &str) -> Option<cdi::Spec> {
            let bytes = std::fs::read(cdi::spec_path(&self.config.cdi_dir, DRIVER, uid)).ok()?;
            Some(serde_json::from_slice(&bytes).unwrap())
        }

        fn checkpoint(&self) -> Checkpoint {
            checkpoint::load(&checkpoint::checkpoint_path(&self.config.plugin_dir)).unwrap()
        }

        fn cdi_files(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.config.cdi_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        fn metrics_text(&self) -> String {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
            out
        }
    }

    async fn prepare_one(
        p: &Preparer<ClaimMap>,
        c: ClaimRef,
    ) -> Result<Vec<PreparedDevice>, String> {
        let uid = c.uid.clone();
        let mut results = p.prepare(vec![c]).await;
        assert_eq!(results.len(), 1);
        results.remove(&uid).unwrap()
    }

    async fn unprepare_one(p: &Preparer<ClaimMap>, c: ClaimRef) -> Result<(), String> {
        let uid = c.uid.clone();
        let mut results = p.unprepare(vec![c]).await;
        assert_eq!(results.len(), 1);
        results.remove(&uid).unwrap()
    }

    /// Loads a written spec through the reference CDI crate, as a runtime would.
    fn assert_valid_cdi(spec: &cdi::Spec) {
        use container_device_interface as reference;
        let raw: reference::specs::config::Spec =
            serde_json::from_value(serde_json::to_value(spec).unwrap()).unwrap();
        let min = reference::version::minimum_required_version(&raw).unwrap();
        assert_eq!(min.to_string(), spec.cdi_version);
        reference::spec::new_spec(&raw, &PathBuf::from("/var/run/cdi/x.json"), 0).unwrap();
    }

    // ---- the state machine ----

    #[tokio::test]
    async fn single_device_claim_round_trip() {
        let mut node = TestNode::new();
        let p = node.preparer();
        let mut status = p.subscribe();
        let uid = "a0000000-0000-4000-8000-000000000001";
        node.source.put(allocated(
            uid,
            "c1",
            vec![result("vf", "mock0-vf0", "node1/numa0")],
        ));

        let devices = prepare_one(&p, cref(uid, "c1")).await.unwrap();
        assert_eq!(
            devices,
            vec![PreparedDevice {
                request_names: vec!["vf".into()],
                pool_name: "node1/numa0".into(),
                device_name: "mock0-vf0".into(),
                cdi_device_ids: vec![format!("mock-accel.example.com/accel={uid}-mock0-vf0")],
                share_id: None,
            }]
        );
        assert_eq!(node.register("mock0_vf0"), 1);
        assert_eq!(node.register("mock0"), 5, "other devices untouched");

        let spec = node.spec(uid).unwrap();
        assert_valid_cdi(&spec);
        assert_eq!(spec.devices[0].name, format!("{uid}-mock0-vf0"));
        let nodes = &spec.devices[0].container_edits.device_nodes;
        assert_eq!(nodes[0].path, "/dev/mock0_vf0");
        assert_eq!((nodes[0].major, nodes[0].minor), (Some(240), Some(1)));
        assert_eq!(
            nodes[0].host_path.as_deref(),
            Some(node.config.dev_root.join("mock0_vf0").to_str().unwrap())
        );

        let entry = &node.checkpoint().claims[uid];
        assert_eq!(entry.state, PrepareState::PrepareCompleted);
        assert_eq!(entry.devices[0].register_previous, Some(5));

        assert!(status.has_changed().unwrap());
        let shown = status.borrow_and_update().clone();
        assert_eq!(shown.len(), 1);
        assert_eq!((shown[0].uid.as_str(), shown[0].name.as_str()), (uid, "c1"));
        assert_eq!(shown[0].devices, vec!["mock0-vf0"]);
        assert_eq!(shown[0].cdi_device_ids, devices[0].cdi_device_ids);
        assert_eq!(
            p.allocated_devices(),
            HashMap::from([("mock0-vf0".into(), "default/c1".into())])
        );

        unprepare_one(&p, cref(uid, "c1")).await.unwrap();
        assert_eq!(node.register("mock0_vf0"), 0);
        assert!(node.spec(uid).is_none());
        assert!(node.checkpoint().claims.is_empty());
        assert!(status.borrow_and_update().is_empty());
        assert!(p.allocated_devices().is_empty());

        let text = node.metrics_text();
        assert!(
            text.contains(r#"prepare_requests_total{outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"unprepare_requests_total{outcome="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains("prepare_duration_seconds_count 1"), "{text}");
        assert!(text.contains("prepared_claims 0"), "{text}");
    }

    #[tokio::test]
    async fn multi_device_claim_reports_base_request_names() {
        let mut node = TestNode::new();
        let p = node.preparer();
        let uid = "1b000000-0000-4000-8000-000000000002";
        node.source.put(allocated(
            uid,
            "multi",
            vec![
                result("pf", "mock0", "node1/numa0"),
                result("vfs/small", "mock0-vf0", "node1/numa0"),
                result("far", "mock1", "node1/numa1"),
            ],
        ));
        let devices = prepare_one(&p, cref(uid, "multi")).await.unwrap();
        let summary: Vec<_> = devices
            .iter()
            .map(|d| {
                (
                    d.request_names[0].as_str(),
                    d.device_name.as_str(),
                    d.pool_name.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("pf", "mock0", "node1/numa0"),
                ("vfs", "mock0-vf0", "node1/numa0"),
                ("far", "mock1", "node1/numa1")
            ]
        );
        for sysfs in ["mock0", "mock0_vf0", "mock1"] {
            assert_eq!(node.register(sysfs), 1, "{sysfs}");
        }
        let spec = node.spec(uid).unwrap();
        assert_valid_cdi(&spec);
        // A UID starting with a digit and host paths on device nodes: 0.5.0.
        assert_eq!(spec.cdi_version, "0.5.0");
        assert_eq!(spec.devices.len(), 3);
        assert_eq!(
            spec.container_edits.env,
            vec![
                "MOCK_ACCEL_DEVICES=mock0,mock0_vf0,mock1",
                "MOCK_ACCEL_SYSFS_DIR=/sys/class/mock-accel"
            ]
        );
        assert!(
            spec.devices[2].container_edits.device_nodes.is_empty(),
            "mock1 has no /dev node"
        );

        unprepare_one(&p, cref(uid, "multi")).await.unwrap();
        for sysfs in ["mock0", "mock0_vf0", "mock1"] {
            assert_eq!(node.register(sysfs), 0, "{sysfs}");
        }
        assert!(node.cdi_files().is_empty());
    }

    #[tokio::test]
    async fn repeated_prepare_returns_the_same_answer_without_side_effects() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "u1",
            "c1",
            vec![result("r", "mock0", "node1/numa0")],
        ));
        let first = prepare_one(&p, cref("u1", "c1")).await.unwrap();
        let spec = node.spec("u1").unwrap();
        let recorded = node.checkpoint();
        // Someone else touches the register: a repeated prepare must not write it again.
        node.set_register("mock0", 42);

        let second = prepare_one(&p, cref("u1", "c1")).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(node.register("mock0"), 42);
        assert_eq!(node.spec("u1").unwrap(), spec);
        assert_eq!(node.checkpoint(), recorded);
        assert_eq!(node.source.gets(), 2, "the claim is fetched every time");

        // The same claim twice in one request: both entries answered, the same devices.
        let results = p.prepare(vec![cref("u1", "c1"), cref("u1", "c1")]).await;
        assert_eq!(results["u1"].as_ref().unwrap(), &first);
    }

    #[tokio::test]
    async fn results_of_other_drivers_are_ignored() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "only-foreign",
            "f",
            vec![foreign(result("gpu", "gpu-0", "node1/gpus"))],
        ));
        node.source.put(allocated(
            "mixed",
            "m",
            vec![
                foreign(result("gpu", "gpu-0", "node1/gpus")),
                result("acc", "mock1", "node1/numa1"),
            ],
        ));

        assert_eq!(
            prepare_one(&p, cref("only-foreign", "f")).await.unwrap(),
            vec![]
        );
        assert!(node.spec("only-foreign").is_none());
        assert!(!node.checkpoint().claims.contains_key("only-foreign"));

        let devices = prepare_one(&p, cref("mixed", "m")).await.unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].device_name, "mock1");
        assert_eq!(node.spec("mixed").unwrap().devices.len(), 1);
    }

    /// A refused claim leaves no trace: register, CDI dir and checkpoint as before.
    async fn assert_refused(node: &TestNode, p: &Preparer<ClaimMap>, c: ClaimRef, needle: &str) {
        let before = node.checkpoint();
        let err = prepare_one(p, c.clone()).await.unwrap_err();
        assert!(err.contains(needle), "{err}");
        assert!(err.contains(&c.name), "the error names the claim: {err}");
        assert_eq!(node.checkpoint(), before);
        assert!(node.spec(&c.uid).is_none());
    }

    #[tokio::test]
    async fn unknown_devices_and_other_nodes_are_refused() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "u-unknown",
            "unknown",
            vec![
                result("a", "mock0", "node1/numa0"),
                result("b", "mock7", "node1/numa0"),
            ],
        ));
        node.source.put(allocated(
            "u-other",
            "other",
            vec![result("a", "mock0", "node2/numa0")],
        ));
        node.source.put(allocated(
            "u-pool",
            "pool",
            vec![result("a", "mock0", "node1/numa1")],
        ));

        assert_refused(
            &node,
            &p,
            cref("u-unknown", "unknown"),
            "mock7, which is not present on node node1",
        )
        .await;
        assert_refused(
            &node,
            &p,
            cref("u-other", "other"),
            "belongs to another node",
        )
        .await;
        assert_refused(
            &node,
            &p,
            cref("u-pool", "pool"),
            "published in pool node1/numa0",
        )
        .await;
        assert_eq!(node.register("mock0"), 5);
        assert!(node.cdi_files().is_empty());
        let text = node.metrics_text();
        assert!(
            text.contains(r#"prepare_requests_total{outcome="error"} 3"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn claim_lookup_failures() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "new-uid",
            "replaced",
            vec![result("a", "mock0", "node1/numa0")],
        ));
        node.source.put(ResourceClaim {
            metadata: claim_meta("u-pending", "pending"),
            ..Default::default()
        });

        assert_refused(&node, &p, cref("old-uid", "replaced"), "claim got replaced").await;
        assert_refused(&node, &p, cref("u-pending", "pending"), "not allocated").await;
        assert_refused(&node, &p, cref("u-gone", "gone"), "does not exist").await;
    }

    #[tokio::test]
    async fn a_device_is_not_handed_out_twice_except_for_admin_access() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "u-a",
            "a",
            vec![result("r", "mock0", "node1/numa0")],
        ));
        node.source.put(allocated(
            "u-b",
            "b",
            vec![result("r", "mock0", "node1/numa0")],
        ));
        node.source.put(allocated(
            "u-admin",
            "admin",
            vec![admin(result("r", "mock0", "node1/numa0"))],
        ));
        node.source.put(allocated(
            "u-admin2",
            "admin2",
            vec![admin(result("r", "mock1", "node1/numa1"))],
        ));
        node.source.put(allocated(
            "u-after",
            "after",
            vec![result("r", "mock1", "node1/numa1")],
        ));

        prepare_one(&p, cref("u-a", "a")).await.unwrap();
        let err = prepare_one(&p, cref("u-b", "b")).await.unwrap_err();
        assert!(
            err.contains("already prepared for claim default/a (uid u-a)"),
            "{err}"
        );

        // Admin access shares the device and leaves the register alone.
        node.set_register("mock0", 9);
        let devices = prepare_one(&p, cref("u-admin", "admin")).await.unwrap();
        assert_eq!(devices[0].device_name, "mock0");
        assert_eq!(node.register("mock0"), 9);
        assert_valid_cdi(&node.spec("u-admin").unwrap());
        assert_eq!(
            node.checkpoint().claims["u-admin"].devices[0].register_previous,
            None
        );
        // ... and does not block an ordinary allocation either.
        prepare_one(&p, cref("u-admin2", "admin2")).await.unwrap();
        prepare_one(&p, cref("u-after", "after")).await.unwrap();
        assert_eq!(
            p.allocated_devices(),
            HashMap::from([
                ("mock0".into(), "default/a".into()),
                ("mock1".into(), "default/after".into())
            ])
        );

        unprepare_one(&p, cref("u-admin", "admin")).await.unwrap();
        assert_eq!(
            node.register("mock0"),
            9,
            "admin unprepare does not touch the register"
        );
        unprepare_one(&p, cref("u-a", "a")).await.unwrap();
        assert_eq!(node.register("mock0"), 0);
        // Now free.
        prepare_one(&p, cref("u-b", "b")).await.unwrap();
    }

    #[tokio::test]
    async fn shares_of_one_device_coexist_the_first_sets_the_register_and_the_last_clears_it() {
        let mut node = TestNode::new();
        let p = node.preparer();
        let shared = |uid: &str, name: &str, id: &str| {
            allocated(
                uid,
                name,
                vec![share(result("r", "mock0", "node1/numa0"), id, "8Gi")],
            )
        };
        node.source.put(shared("u-a", "a", "s-a"));
        node.source.put(shared("u-b", "b", "s-b"));
        node.source.put(allocated(
            "u-whole",
            "whole",
            vec![result("r", "mock0", "node1/numa0")],
        ));

        let devices = prepare_one(&p, cref("u-a", "a")).await.unwrap();
        assert_eq!(devices[0].share_id.as_deref(), Some("s-a"));
        assert_eq!(
            node.register("mock0"),
            1,
            "the first share sets the register"
        );
        node.set_register("mock0", 7);
        prepare_one(&p, cref("u-b", "b")).await.unwrap();
        assert_eq!(node.register("mock0"), 7, "a second share leaves it alone");

        // Each claim's spec carries its own grant; the checkpoint keeps the shares apart.
        for uid in ["u-a", "u-b"] {
            let spec = node.spec(uid).unwrap();
            assert_valid_cdi(&spec);
            assert!(
                spec.devices[0]
                    .container_edits
                    .env
                    .contains(&"MOCK_ACCEL_MEMORY=8589934592".to_string()),
                "{uid}: {:?}",
                spec.devices[0].container_edits.env
            );
        }
        let cp = node.checkpoint();
        let entry = |uid: &str| cp.claims[uid].devices[0].clone();
        assert_eq!(
            (entry("u-a").share_id, entry("u-a").consumed_memory),
            (Some("s-a".into()), Some(8 << 30))
        );
        assert_eq!(entry("u-a").register_previous, Some(5));
        assert_eq!(entry("u-b").share_id.as_deref(), Some("s-b"));
        assert_eq!(entry("u-b").register_previous, None);

        // A whole-device result never joins shares.
        let err = prepare_one(&p, cref("u-whole", "whole")).await.unwrap_err();
        assert!(err.contains("already prepared for claim"), "{err}");

        // The first share leaves: the register stays set for the other one.
        unprepare_one(&p, cref("u-a", "a")).await.unwrap();
        assert_eq!(node.register("mock0"), 7);
        // The last share leaves: cleared, though another share set it.
        unprepare_one(&p, cref("u-b", "b")).await.unwrap();
        assert_eq!(node.register("mock0"), 0);
        assert!(node.checkpoint().claims.is_empty());
        node.assert_consistent(&p);
    }

    #[tokio::test]
    async fn a_share_waits_for_a_whole_device_to_be_released() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "u-whole",
            "whole",
            vec![result("r", "mock0", "node1/numa0")],
        ));
        node.source.put(allocated(
            "u-s",
            "s",
            vec![share(result("r", "mock0", "node1/numa0"), "s1", "1Gi")],
        ));
        prepare_one(&p, cref("u-whole", "whole")).await.unwrap();
        let err = prepare_one(&p, cref("u-s", "s")).await.unwrap_err();
        assert!(err.contains("default/whole"), "{err}");
        unprepare_one(&p, cref("u-whole", "whole")).await.unwrap();
        prepare_one(&p, cref("u-s", "s")).await.unwrap();
        assert_eq!(node.register("mock0"), 1);
    }

    #[tokio::test]
    async fn a_consumed_capacity_that_is_not_whole_bytes_is_refused() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "u-odd",
            "odd",
            vec![share(result("r", "mock0", "node1/numa0"), "s1", "1.5")],
        ));
        assert_refused(
            &node,
            &p,
            cref("u-odd", "odd"),
            "not a whole number of bytes",
        )
        .await;
    }

    #[tokio::test]
    async fn opaque_config_for_this_driver_must_be_an_object_and_is_ignored() {
        let mut node = TestNode::new();
        let p = node.preparer();
        let r = || vec![result("r", "mock1", "node1/numa1")];
        node.source.put(with_config(
            "u-ok",
            "ok",
            r(),
            vec![
                opaque(DRIVER, serde_json::json!({"mode": "fast"})),
                opaque(
                    "gpu.example.com",
                    serde_json::json!("anything goes for others"),
                ),
            ],
        ));
        node.source.put(with_config(
            "u-bad",
            "bad",
            r(),
            vec![opaque(DRIVER, serde_json::json!([1]))],
        ));
        let mut not_opaque = opaque(DRIVER, serde_json::json!({}));
        not_opaque.opaque = None;
        node.source
            .put(with_config("u-kind", "kind", r(), vec![not_opaque]));

        assert_refused(
            &node,
            &p,
            cref("u-bad", "bad"),
            "must be a JSON object, got an array",
        )
        .await;
        assert_refused(&node, &p, cref("u-kind", "kind"), "no opaque configuration").await;
        prepare_one(&p, cref("u-ok", "ok")).await.unwrap();
    }

    #[tokio::test]
    async fn unprepare_of_an_unknown_claim_succeeds() {
        let mut node = TestNode::new();
        let p = node.preparer();
        unprepare_one(&p, cref("never", "seen")).await.unwrap();
        let results = p.unprepare(vec![cref("x", "x"), cref("y", "y")]).await;
        assert!(results.values().all(Result::is_ok));
        assert_eq!(results.len(), 2);
    }

    #[tokio::test]
    async fn a_failure_after_the_register_write_rolls_back() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "u-fail",
            "fail",
            vec![
                result("a", "mock0", "node1/numa0"),
                result("b", "mock1", "node1/numa1"),
            ],
        ));
        // The spec's temp file path is taken by a directory: the CDI write fails after both
        // registers were written.
        let spec_path = cdi::spec_path(&node.config.cdi_dir, DRIVER, "u-fail");
        std::fs::create_dir_all(crate::atomic_file::temp_path(&spec_path)).unwrap();

        let err = prepare_one(&p, cref("u-fail", "fail")).await.unwrap_err();
        assert!(err.contains("CDI spec"), "{err}");
        assert_eq!(
            node.register("mock0"),
            5,
            "restored to the value before prepare"
        );
        assert_eq!(node.register("mock1"), 5);
        assert!(node.checkpoint().claims.is_empty());
        assert!(!spec_path.exists());
        assert!(p.allocated_devices().is_empty());

        // Once the obstacle is gone, the kubelet's retry succeeds.
        std::fs::remove_dir(crate::atomic_file::temp_path(&spec_path)).unwrap();
        prepare_one(&p, cref("u-fail", "fail")).await.unwrap();
        assert_eq!(node.register("mock0"), 1);
    }

    #[tokio::test]
    async fn restart_in_the_middle_of_a_prepare_leaks_nothing() {
        let mut node = TestNode::new();
        let uid = "u-mid";
        node.source.put(allocated(
            uid,
            "mid",
            vec![result("a", "mock0", "node1/numa0")],
        ));
        {
            let p = node.preparer();
            prepare_one(&p, cref(uid, "mid")).await.unwrap();
        }
        // Rewind the record to "started": the process died after writing the register and
        // the spec, before recording completion.
        let path = checkpoint::checkpoint_path(&node.config.plugin_dir);
        let mut cp = node.checkpoint();
        cp.claims.get_mut(uid).unwrap().state = PrepareState::PrepareStarted;
        checkpoint::store(&path, &cp).unwrap();
        assert_eq!(node.register("mock0"), 1);

        let p = node.preparer();
        assert_eq!(node.register("mock0"), 5, "register restored");
        assert!(node.spec(uid).is_none(), "spec removed");
        assert!(node.checkpoint().claims.is_empty());
        assert!(p.subscribe().borrow().is_empty());

        // The kubelet retries and gets the claim prepared.
        prepare_one(&p, cref(uid, "mid")).await.unwrap();
        assert_eq!(node.register("mock0"), 1);
        assert_eq!(p.subscribe().borrow().len(), 1);
    }

    #[tokio::test]
    async fn restart_removes_specs_no_entry_accounts_for() {
        let mut node = TestNode::new();
        std::fs::create_dir_all(&node.config.cdi_dir).unwrap();
        let stray = cdi::spec_path(&node.config.cdi_dir, DRIVER, "lost");
        std::fs::write(&stray, "{}").unwrap();
        let other = node.config.cdi_dir.join("gpu.example.com-gpu_x.json");
        std::fs::write(&other, "{}").unwrap();
        node.source.put(allocated(
            "kept",
            "kept",
            vec![result("a", "mock1", "node1/numa1")],
        ));
        {
            let p = node.preparer();
            prepare_one(&p, cref("kept", "kept")).await.unwrap();
        }
        assert!(!stray.exists());
        let _p = node.preparer();
        assert!(
            other.exists(),
            "another driver's spec is not ours to remove"
        );
        assert!(node.spec("kept").is_some());
    }

    #[tokio::test]
    async fn reboot_recreates_the_spec() {
        let mut node = TestNode::new();
        let uid = "u-boot";
        node.source.put(allocated(
            uid,
            "boot",
            vec![result("a", "mock0-vf0", "node1/numa0")],
        ));
        let (first, spec) = {
            let p = node.preparer();
            let first = prepare_one(&p, cref(uid, "boot")).await.unwrap();
            (first, node.spec(uid).unwrap())
        };
        // Reboot: /var/run/cdi is a tmpfs, the registers power on as 1.
        std::fs::remove_dir_all(&node.config.cdi_dir).unwrap();
        node.set_register("mock0_vf0", 1);

        let p = node.preparer();
        assert_eq!(p.subscribe().borrow().len(), 1, "the checkpoint survived");
        let again = prepare_one(&p, cref(uid, "boot")).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(node.spec(uid).unwrap(), spec);

        unprepare_one(&p, cref(uid, "boot")).await.unwrap();
        assert_eq!(node.register("mock0_vf0"), 0);
        assert!(node.spec(uid).is_none());
    }

    #[tokio::test]
    async fn a_checkpoint_of_an_earlier_boot_is_set_aside_at_start() {
        let mut node = TestNode::new();
        let uid = "u-earlier";
        node.source.put(allocated(
            uid,
            "earlier",
            vec![result("a", "mock0-vf0", "node1/numa0")],
        ));
        let first = {
            let p = node.preparer();
            prepare_one(&p, cref(uid, "earlier")).await.unwrap()
        };
        let marker = node.config.plugin_dir.join(boot::BOOT_ID_FILE);
        let this_boot = std::fs::read_to_string(&marker).unwrap();
        assert_eq!(Some(this_boot.trim()), boot::kernel_boot_id().as_deref());

        // A restart in the same boot keeps the record.
        assert_eq!(node.preparer().subscribe().borrow().len(), 1);

        // A reboot: the registers power on again, /var/run/cdi is empty, and the checkpoint
        // (not flushed to disk) may be any version: it is set aside, not trusted.
        std::fs::write(&marker, "an-earlier-boot\n").unwrap();
        std::fs::remove_dir_all(&node.config.cdi_dir).unwrap();
        node.set_register("mock0_vf0", 0);
        let p = node.preparer();
        assert!(
            p.subscribe().borrow().is_empty(),
            "nothing prepared after the reboot"
        );
        let aside = node.config.plugin_dir.join("checkpoint.json.previous-boot");
        assert!(checkpoint::load(&aside).unwrap().claims.contains_key(uid));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), this_boot);

        // The kubelet prepares the claim again: register and spec as the first time.
        let again = prepare_one(&p, cref(uid, "earlier")).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(node.register("mock0_vf0"), 1);
        assert!(node.spec(uid).is_some());
        node.assert_consistent(&p);
    }

    #[tokio::test]
    async fn a_corrupt_checkpoint_fails_prepare_closed_and_lets_unprepare_proceed() {
        let mut node = TestNode::new();
        node.source.put(allocated(
            "u-a",
            "a",
            vec![result("a", "mock0", "node1/numa0")],
        ));
        node.source.put(allocated(
            "u-b",
            "b",
            vec![result("a", "mock1", "node1/numa1")],
        ));
        {
            let p = node.preparer();
            prepare_one(&p, cref("u-a", "a")).await.unwrap();
        }
        let path = checkpoint::checkpoint_path(&node.config.plugin_dir);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&path, &bytes).unwrap();

        let p = node.preparer();
        let results = p.prepare(vec![cref("u-b", "b"), cref("u-a", "a")]).await;
        for uid in ["u-a", "u-b"] {
            let err = results[uid].as_ref().unwrap_err();
            assert!(err.contains("corrupt"), "{err}");
            assert!(
                err.contains(&path.display().to_string()),
                "names the file: {err}"
            );
        }
        assert_eq!(node.register("mock1"), 5, "nothing prepared");
        assert!(node.spec("u-b").is_none());

        unprepare_one(&p, cref("u-a", "a")).await.unwrap();
        assert!(node.spec("u-a").is_none(), "the spec is found by UID alone");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the corrupt file is left for the operator"
        );
        let text = node.metrics_text();
        assert!(
            text.contains(r#"prepare_requests_total{outcome="error"} 2"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unprepare_of_a_removed_device_succeeds() {
        let mut node = TestNode::new();
        let p = node.preparer();
        node.source.put(allocated(
            "u1",
            "c1",
            vec![result("a", "mock1", "node1/numa1")],
        ));
        prepare_one(&p, cref("u1", "c1")).await.unwrap();
        std::fs::remove_dir_all(node.config.sysfs_root.join("class/mock-accel/mock1")).unwrap();
        unprepare_one(&p, cref("u1", "c1")).await.unwrap();
        assert!(node.checkpoint().claims.is_empty());
        assert!(node.spec("u1").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_waits_for_the_lock_held_by_another_process() {
        let mut node = TestNode::new();
        let p = Arc::new(node.preparer());
        node.source.put(allocated(
            "mine",
            "mine",
            vec![result("r", "mock0", "node1/numa0")],
        ));

        // Another pod holds the lock and prepares mock0 for its own claim meanwhile.
        let other = File::options()
            .write(true)
            .open(node.config.plugin_dir.join(LOCK_FILE))
            .unwrap();
        other.lock().unwrap();
        let mut call = tokio::spawn({
            let p = p.clone();
            async move { prepare_one(&p, cref("mine", "mine")).await }
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), &mut call).await;
        assert!(
            waited.is_err(),
            "prepare ran while another process held the lock"
        );
        let mut cp = Checkpoint::default();
        cp.claims.insert(
            "theirs".into(),
            ClaimEntry {
                uid: "theirs".into(),
                namespace: NS.into(),
                name: "theirs".into(),
                state: PrepareState::PrepareCompleted,
                devices: vec![DeviceEntry {
                    device: "mock0".into(),
                    sysfs_name: "mock0".into(),
                    pool: "node1/numa0".into(),
                    request_names: vec!["r".into()],
                    admin_access: false,
                    share_id: None,
                    consumed_memory: None,
                    register_previous: Some(5),
                }],
                cdi_device_ids: vec![],
                prepared_at: "t".into(),
            },
        );
        checkpoint::store(&checkpoint::checkpoint_path(&node.config.plugin_dir), &cp).unwrap();
        drop(other);

        // The call proceeds with the other pod's record, not a stale one.
        let err = call.await.unwrap().unwrap_err();
        assert!(
            err.contains("already prepared for claim default/theirs"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_serialize_through_the_lock_file() {
        // A rolling update: two node-agent pods share the plugin directory and race for the
        // same device with different claims. Exactly one may win.
        let mut node = TestNode::new();
        let a = Arc::new(node.preparer());
        let b = Arc::new(node.preparer());
        for i in 0..20 {
            let (ua, ub) = (format!("a{i}"), format!("b{i}"));
            node.source.put(allocated(
                &ua,
                &ua,
                vec![result("r", "mock0", "node1/numa0")],
            ));
            node.source.put(allocated(
                &ub,
                &ub,
                vec![result("r", "mock0", "node1/numa0")],
            ));
            let (ra, rb) = tokio::join!(
                tokio::spawn({
                    let a = a.clone();
                    let c = cref(&ua, &ua);
                    async move { prepare_one(&a, c).await }
                }),
                tokio::spawn({
                    let b = b.clone();
                    let c = cref(&ub, &ub);
                    async move { prepare_one(&b, c).await }
                }),
            );
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert!(ra.is_ok() != rb.is_ok(), "round {i}: {ra:?} {rb:?}");
            let winner = if ra.is_ok() {
                cref(&ua, &ua)
            } else {
                cref(&ub, &ub)
            };
            unprepare_one(&b, winner).await.unwrap();
            assert!(node.checkpoint().claims.is_empty());
        }
    }

    // ---- faults: hung API requests, cancelled calls, a busy lock at start ----

    /// A claim source whose GET of `hang` never answers, as an API server that accepted the
    /// connection and went silent.
    #[derive(Clone)]
    struct Hanging {
        inner: ClaimMap,
        hang: &'static str,
    }

    impl ClaimSource for Hanging {
        async fn get(&self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, String> {
            if name == self.hang {
                std::future::pending::<()>().await;
            }
            self.inner.get(namespace, name).await
        }
    }

    fn hanging_node(hang: &'static str) -> (TestNode, Preparer<Hanging>) {
        let mut node = TestNode::new();
        for (name, dev, pool) in [("a", "mock0", "node1/numa0"), ("b", "mock1", "node1/numa1")] {
            node.source
                .put(allocated(name, name, vec![result("r", dev, pool)]));
        }
        let source = Hanging {
            inner: node.source.clone(),
            hang,
        };
        let p = node.preparer_with(source);
        (node, p)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_claim_get_holds_no_lock_and_fails_alone_after_its_deadline() {
        let t0 = tokio::time::Instant::now();
        let (node, p) = hanging_node("a");
        let p = Arc::new(p);
        let hung = tokio::spawn({
            let p = p.clone();
            async move { p.prepare(vec![cref("a", "a")]).await }
        });
        tokio::task::yield_now().await;

        // Another pod's claim goes through while the GET of `a` hangs.
        let other = tokio::time::timeout(Duration::from_secs(1), p.prepare(vec![cref("b", "b")]))
            .await
            .expect("a hung GET of another claim blocked this prepare");
        assert!(other["b"].is_ok(), "{other:?}");
        let unprepared =
            tokio::time::timeout(Duration::from_secs(1), p.unprepare(vec![cref("b", "b")]))
                .await
                .expect("a hung GET blocked an unprepare");
        assert!(unprepared["b"].is_ok(), "{unprepared:?}");

        // The hung claim fails on its own deadline, well inside the kubelet's, naming why.
        let hung = hung.await.unwrap();
        assert_eq!(t0.elapsed().as_secs(), FETCH_TIMEOUT.as_secs());
        let err = hung["a"].as_ref().unwrap_err();
        assert!(
            err.contains("claim default/a") && err.contains("no answer"),
            "{err}"
        );
        assert!(node.checkpoint().claims.is_empty());
        node.assert_consistent(&p);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_dropped_by_the_kubelet_leaves_a_consistent_state() {
        // The kubelet's deadline drops the call while the GET of `b` hangs: the record on
        // disk, preparedClaims and the allocation map must still agree.
        let (node, p) = hanging_node("b");
        let dropped = tokio::time::timeout(
            Duration::from_secs(5),
            p.prepare(vec![cref("a", "a"), cref("b", "b")]),
        )
        .await;
        assert!(
            dropped.is_err(),
            "the call was expected to hang: {dropped:?}"
        );
        node.assert_consistent(&p);
        assert_eq!(
            node.register("mock0"),
            5,
            "a register changed by a dropped call"
        );

        // The kubelet's retry of `a` alone works.
        assert!(p.prepare(vec![cref("a", "a")]).await["a"].is_ok());
        node.assert_consistent(&p);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_dropped_during_its_file_io_finishes_and_publishes() {
        let mut node = TestNode::new();
        node.source.put(allocated(
            "a",
            "a",
            vec![result("r", "mock0", "node1/numa0")],
        ));
        let p = Arc::new(node.preparer());
        let mut prepared = p.subscribe();
        // The file I/O stalls (another pod holds the lock) and the kubelet gives up.
        let other = node.hold_lock();
        let call = tokio::spawn({
            let p = p.clone();
            async move { p.prepare(vec![cref("a", "a")]).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        drop(other);

        // The started work ends as a whole and is published; nothing is half-done.
        tokio::time::timeout(Duration::from_secs(5), prepared.changed())
            .await
            .expect("the dropped call never published")
            .unwrap();
        assert_eq!(node.register("mock0"), 1);
        node.assert_consistent(&p);
        // An unprepare right after waits for it and sees it.
        assert!(p.unprepare(vec![cref("a", "a")]).await["a"].is_ok());
        assert_eq!(node.register("mock0"), 0);
        node.assert_consistent(&p);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn start_waits_for_the_lock_without_stalling_the_runtime() {
        let mut node = TestNode::new();
        let other = node.hold_lock();
        let metrics = PrepareMetrics::register(&mut node.registry);
        let starting = tokio::spawn(Preparer::start(
            node.config.clone(),
            node.inventory.subscribe(),
            node.source.clone(),
            metrics,
        ));
        // The single runtime thread keeps serving timers (heartbeats, health) meanwhile.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !starting.is_finished(),
            "start ignored the other process's lock"
        );
        drop(other);
        let p = tokio::time::timeout(Duration::from_secs(5), starting)
            .await
            .expect("start never took the lock")
            .unwrap()
            .unwrap();
        node.assert_consistent(&p);
    }

    // ---- a crash at every step: fail points, restart, the kubelet's retry ----

    use super::fail_points::{self, Action};

    /// After a restart and the kubelet's retries: registers, CDI files, checkpoint entries
    /// and preparedClaims agree with `a` being prepared (or not).
    fn assert_no_leak<S: ClaimSource>(node: &TestNode, p: &Preparer<S>, prepared: bool) {
        node.assert_consistent(p);
        let cp = node.checkpoint();
        if prepared {
            assert_eq!(node.register("mock0"), 1);
            assert_eq!(node.cdi_files().len(), 1, "{:?}", node.cdi_files());
            assert_eq!(cp.claims.len(), 1);
            assert_eq!(cp.claims["a"].state, PrepareState::PrepareCompleted);
        } else {
            assert_eq!(node.register("mock0"), 0);
            assert!(node.cdi_files().is_empty(), "{:?}", node.cdi_files());
            assert!(cp.claims.is_empty(), "{cp:?}");
        }
    }

    fn node_with_claim_a() -> TestNode {
        let node = TestNode::new();
        node.source.put(allocated(
            "a",
            "a",
            vec![result("r", "mock0", "node1/numa0")],
        ));
        node
    }

    #[tokio::test]
    async fn a_crash_at_every_prepare_step_is_recovered_by_restart_and_retry() {
        for step in fail_points::PREPARE_STEPS {
            let mut node = node_with_claim_a();
            node.set_register("mock0", 0);
            let p = node.preparer();
            fail_points::arm(&node.config.plugin_dir, step, Action::Crash);
            let err = prepare_one(&p, cref("a", "a")).await.unwrap_err();
            assert!(err.contains("internal error"), "{step}: {err}");
            // The process dies: nothing of it survives but the files.
            drop(p);
            let p = node.preparer();
            prepare_one(&p, cref("a", "a"))
                .await
                .unwrap_or_else(|e| panic!("{step}: retry failed: {e}"));
            assert_no_leak(&node, &p, true);
            unprepare_one(&p, cref("a", "a")).await.unwrap();
            assert_no_leak(&node, &p, false);
        }
    }

    #[tokio::test]
    async fn a_crash_at_every_unprepare_step_is_recovered_by_restart_and_retry() {
        for step in fail_points::UNPREPARE_STEPS {
            let mut node = node_with_claim_a();
            let p = node.preparer();
            prepare_one(&p, cref("a", "a")).await.unwrap();
            fail_points::arm(&node.config.plugin_dir, step, Action::Crash);
            let err = unprepare_one(&p, cref("a", "a")).await.unwrap_err();
            assert!(err.contains("internal error"), "{step}: {err}");
            drop(p);
            let p = node.preparer();
            unprepare_one(&p, cref("a", "a"))
                .await
                .unwrap_or_else(|e| panic!("{step}: retry failed: {e}"));
            assert_no_leak(&node, &p, false);
            // The device is free again.
            prepare_one(&p, cref("a", "a")).await.unwrap();
            assert_no_leak(&node, &p, true);
        }
    }

    #[tokio::test]
    async fn a_failed_rollback_is_reported_and_resumed_by_the_next_call() {
        let mut node = node_with_claim_a();
        node.set_register("mock0", 0);
        let p = node.preparer();
        // The CDI write fails, and so does the rollback after it.
        fail_points::arm(&node.config.plugin_dir, "prepare/cdi", Action::Fail);
        fail_points::arm(
            &node.config.plugin_dir,
            fail_points::ROLLBACK_RELEASED,
            Action::Fail,
        );
        let err = prepare_one(&p, cref("a", "a")).await.unwrap_err();
        assert!(
            err.contains("fail point prepare/cdi") && err.contains("rolling back also failed"),
            "{err}"
        );
        // The unfinished entry stays for the next call; it is not published as prepared.
        assert_eq!(
            node.checkpoint().claims["a"].state,
            PrepareState::PrepareStarted
        );
        assert!(p.subscribe().borrow().is_empty());
        // The kubelet's retry finishes the rollback, then prepares.
        prepare_one(&p, cref("a", "a")).await.unwrap();
        assert_no_leak(&node, &p, true);
    }

    #[tokio::test]
    async fn a_failed_rollback_is_resumed_at_the_next_start() {
        let mut node = node_with_claim_a();
        node.set_register("mock0", 0);
        let p = node.preparer();
        fail_points::arm(&node.config.plugin_dir, "prepare/registers", Action::Fail);
        fail_points::arm(
            &node.config.plugin_dir,
            fail_points::ROLLBACK_RELEASED,
            Action::Fail,
        );
        let err = prepare_one(&p, cref("a", "a")).await.unwrap_err();
        assert!(err.contains("rolling back also failed"), "{err}");
        drop(p);
        // The start rolls the interrupted prepare back before any call.
        let p = node.preparer();
        assert!(node.checkpoint().claims.is_empty());
        assert_no_leak(&node, &p, false);
        prepare_one(&p, cref("a", "a")).await.unwrap();
        assert_no_leak(&node, &p, true);
    }

    // ---- a full or read-only file system under the plugin and CDI directories ----

    /// A small tmpfs mounted over `dir` for the life of the value (needs root; the e2e and CI
    /// machines run tests as root).
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(dir: &Path) -> Option<Tmpfs> {
            std::fs::create_dir_all(dir).unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
                .arg(dir)
                .status();
            match status {
                Ok(s) if s.success() => Some(Tmpfs(dir.to_path_buf())),
                other => {
                    eprintln!(
                        "SKIPPED: cannot mount a tmpfs on {} ({other:?}); run as root",
                        dir.display()
                    );
                    None
                }
            }
        }

        fn remount(&self, mode: &str) {
            let ok = std::process::Command::new("mount")
                .args(["-o", &format!("remount,{mode}")])
                .arg(&self.0)
                .status()
                .unwrap()
                .success();
            assert!(ok, "remount {mode}");
        }

        /// Fills the file system; returns the filler to delete.
        fn fill(&self) -> PathBuf {
            let filler = self.0.join("filler");
            let _ = std::fs::write(&filler, vec![0u8; 256 << 10]);
            filler
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[tokio::test]
    async fn a_full_or_read_only_file_system_fails_clearly_leaves_nothing_and_recovers() {
        let mut node = node_with_claim_a();
        node.set_register("mock0", 0);
        let (Some(plugin_fs), Some(cdi_fs)) = (
            Tmpfs::mount(&node.config.plugin_dir),
            Tmpfs::mount(&node.config.cdi_dir),
        ) else {
            return;
        };
        let p = node.preparer();
        let before = plugin_fs.names();

        // Full plugin directory: the checkpoint's PrepareStarted record cannot be written.
        let filler = plugin_fs.fill();
        let err = prepare_one(&p, cref("a", "a")).await.unwrap_err();
        assert!(
            err.contains("claim default/a")
                && err.contains("checkpoint")
                && err.contains("file system is full"),
            "{err}"
        );
        assert_no_leak(&node, &p, false);
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(plugin_fs.names(), before, "a temp file stayed behind");

        // Full CDI directory: the spec cannot be written; registers and record roll back.
        let filler = cdi_fs.fill();
        let err = prepare_one(&p, cref("a", "a")).await.unwrap_err();
        assert!(
            err.contains("CDI spec") && err.contains("file system is full"),
            "{err}"
        );
        assert_eq!(cdi_fs.names(), vec!["filler".to_string()]);
        std::fs::remove_file(&filler).unwrap();
        assert_no_leak(&node, &p, false);

        // Read-only plugin directory: refused before anything is touched.
        plugin_fs.remount("ro");
        let err = prepare_one(&p, cref("a", "a")).await.unwrap_err();
        assert!(err.contains("mounted read-only"), "{err}");
        plugin_fs.remount("rw");
        assert_no_leak(&node, &p, false);

        // Space and write access are back: the kubelet's retry succeeds.
        prepare_one(&p, cref("a", "a")).await.unwrap();
        assert_no_leak(&node, &p, true);
        unprepare_one(&p, cref("a", "a")).await.unwrap();
        assert_no_leak(&node, &p, false);
    }

    /// Counts GETs in flight; each takes 10 ms (of the paused clock).
    #[derive(Clone, Default)]
    struct Counting {
        inner: ClaimMap,
        in_flight: Arc<std::sync::atomic::AtomicUsize>,
        most: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl ClaimSource for Counting {
        async fn get(&self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, String> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.in_flight.fetch_sub(1, SeqCst);
            self.inner.get(namespace, name).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_with_thousands_of_claims_gets_an_answer_each_with_bounded_gets() {
        let mut node = node_with_claim_a();
        let source = Counting {
            inner: node.source.clone(),
            ..Default::default()
        };
        let p = node.preparer_with(source.clone());
        let mut claims: Vec<ClaimRef> = (0..3000)
            .map(|i| cref(&format!("gone-{i}"), &format!("gone-{i}")))
            .collect();
        claims.insert(1500, cref("a", "a"));
        let results = p.prepare(claims).await;
        assert_eq!(results.len(), 3001);
        assert!(results["a"].is_ok(), "{:?}", results["a"]);
        let err = results["gone-2999"].as_ref().unwrap_err();
        assert!(
            err.contains("claim default/gone-2999") && err.contains("does not exist"),
            "{err}"
        );
        let most = source.most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most <= FETCH_CONCURRENCY, "{most} GETs at once");
        node.assert_consistent(&p);
    }

    // ---- stale claims: released by the agent itself ----

    use super::stale::{Released, StaleReason};

    /// Claim `a` (mock0) and claim `b` (mock1) prepared; the register of mock0 was 0.
    async fn node_with_a_and_b_prepared() -> (TestNode, Preparer<ClaimMap>) {
        let mut node = node_with_claim_a();
        node.set_register("mock0", 0);
        node.source.put(allocated(
            "b",
            "b",
            vec![result("r", "mock1", "node1/numa1")],
        ));
        let p = node.preparer();
        prepare_one(&p, cref("a", "a")).await.unwrap();
        prepare_one(&p, cref("b", "b")).await.unwrap();
        (node, p)
    }

    #[tokio::test]
    async fn a_deleted_claim_is_released_and_its_device_is_free_again() {
        let (node, p) = node_with_a_and_b_prepared().await;
        node.source.remove(NS, "a");
        let report = p.release_stale().await;
        assert_eq!(report.checked, 2);
        assert_eq!(
            report.released,
            vec![Released {
                claim: "default/a (uid a)".into(),
                devices: vec!["mock0".into()],
                reason: StaleReason::Deleted,
                outcome: Ok(()),
            }]
        );
        assert_eq!(node.register("mock0"), 0, "register cleared");
        assert!(node.spec("a").is_none(), "CDI spec removed");
        assert!(
            node.spec("b").is_some(),
            "the claim still held is untouched"
        );
        assert_eq!(node.register("mock1"), 1);
        assert_eq!(node.checkpoint().claims.keys().collect::<Vec<_>>(), ["b"]);
        node.assert_consistent(&p);

        // The device can be prepared for another claim, and the kubelet's late unprepare of
        // the released claim is a success.
        node.source.put(allocated(
            "c",
            "c",
            vec![result("r", "mock0", "node1/numa0")],
        ));
        prepare_one(&p, cref("c", "c")).await.unwrap();
        unprepare_one(&p, cref("a", "a")).await.unwrap();
        assert_eq!(node.register("mock0"), 1, "c keeps mock0");
        assert_eq!(p.release_stale().await.released, vec![]);
    }

    #[tokio::test]
    async fn a_replaced_or_reallocated_claim_is_released() {
        let (node, p) = node_with_a_and_b_prepared().await;
        node.source.put(allocated(
            "a2",
            "a",
            vec![result("r", "mock0", "node1/numa0")],
        ));
        node.source.put(allocated(
            "b",
            "b",
            vec![result("r", "mock0", "node2/numa0")],
        ));
        let mut reasons: Vec<(String, StaleReason)> = p
            .release_stale()
            .await
            .released
            .into_iter()
            .map(|r| (r.claim, r.reason))
            .collect();
        reasons.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            reasons,
            [
                ("default/a (uid a)".into(), StaleReason::Replaced),
                ("default/b (uid b)".into(), StaleReason::NotAllocatedHere),
            ]
        );
        assert!(node.checkpoint().claims.is_empty());
        assert!(node.cdi_files().is_empty());
        node.assert_consistent(&p);
    }

    #[tokio::test]
    async fn an_unreachable_api_releases_nothing() {
        let (node, p) = node_with_a_and_b_prepared().await;
        node.source.remove(NS, "a");
        node.source.fail_gets(Some("connection refused"));
        let report = p.release_stale().await;
        assert!(report.released.is_empty(), "{report:?}");
        assert_eq!(report.unknown.len(), 2);
        assert!(
            report
                .unknown
                .iter()
                .all(|(_, why)| why == "connection refused"),
            "{report:?}"
        );
        assert_eq!(node.checkpoint().claims.len(), 2);
        assert_eq!(node.register("mock0"), 1);

        // The API answers again: the next pass releases.
        node.source.fail_gets(None);
        assert_eq!(p.release_stale().await.released.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_api_is_dont_know_after_the_deadline() {
        let mut node = node_with_claim_a();
        let p = node.preparer();
        prepare_one(&p, cref("a", "a")).await.unwrap();
        drop(p);
        let p = node.preparer_with(Hanging {
            inner: node.source.clone(),
            hang: "a",
        });
        let report = p.release_stale().await;
        assert!(report.released.is_empty());
        assert!(report.unknown[0].1.contains("no answer"), "{report:?}");
        assert_eq!(node.checkpoint().claims.len(), 1);
    }

    #[tokio::test]
    async fn a_claim_prepared_again_after_the_judgement_is_left_alone() {
        let (node, p) = node_with_a_and_b_prepared().await;
        // Judged stale from an old snapshot, but unprepared and prepared again since: the
        // entry on disk differs from the judged one.
        let mut judged = node.checkpoint().claims["a"].clone();
        judged.prepared_at = "1970-01-01T00:00:00Z".into();
        let released = p
            .locked(
                move |core| core.release_stale(vec![(judged, StaleReason::Deleted)]),
                |_| Vec::new(),
            )
            .await;
        assert!(released.is_empty());
        assert_eq!(node.register("mock0"), 1);
        assert_eq!(node.checkpoint().claims.len(), 2);
    }

    // ---- two agents of one node (rolling update) ----

    #[tokio::test]
    async fn an_agent_publishes_what_another_agent_of_the_node_prepared() {
        let mut node = node_with_claim_a();
        let old = Arc::new(node.preparer());
        let new = node.preparer();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let follower = tokio::spawn(Arc::clone(&old).follow_checkpoint(shutdown.clone()));
        // The follower installs its file watch on its first poll: let it run before the new
        // agent writes, or the write may come before the watch and only the 10 s re-read
        // would see it.
        tokio::task::yield_now().await;
        let mut published = old.subscribe();

        prepare_one(&new, cref("a", "a")).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            published.wait_for(|claims| claims.iter().any(|c| c.uid == "a")),
        )
        .await
        .expect("the old agent follows the new agent's prepare")
        .unwrap();
        node.assert_consistent(&*old);

        unprepare_one(&new, cref("a", "a")).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            published.wait_for(|claims| claims.is_empty()),
        )
        .await
        .expect("the old agent follows the new agent's unprepare")
        .unwrap();
        node.assert_consistent(&*old);
        shutdown.cancel();
        follower.await.unwrap();
    }

    // ---- injected faults (spec.faults) ----

    use crate::fixture::{FaultAction, FaultSpec};

    fn fault(operation: FaultOperation, action: FaultAction, count: i64) -> FaultSpec {
        FaultSpec {
            operation,
            device: None,
            action,
            delay: (action == FaultAction::Delay).then(|| "5s".to_string()),
            count,
            message: (action == FaultAction::Fail).then(|| "injected failure".to_string()),
        }
    }

    /// A spec channel with `faults`, as the agent's spec watch would publish it.
    fn fixture(faults: Vec<FaultSpec>) -> watch::Sender<Option<MockAccelNodeSpec>> {
        watch::Sender::new(Some(MockAccelNodeSpec {
            node_name: NODE.into(),
            faults: Some(faults),
            ..Default::default()
        }))
    }

    fn stored_hits(node: &TestNode) -> Vec<i64> {
        let bytes = std::fs::read(node.config.plugin_dir.join(FAULT_HITS_FILE)).unwrap();
        let hits: FaultHits = serde_json::from_slice(&bytes).unwrap();
        hits.hits.into_values().collect()
    }

    #[tokio::test]
    async fn an_injected_fail_touches_nothing_counts_once_and_the_retry_succeeds() {
        let mut node = TestNode::new();
        let a = "a0000000-0000-4000-8000-00000000000a";
        let b = "b0000000-0000-4000-8000-00000000000b";
        node.source.put(allocated(
            a,
            "a",
            vec![result("vf", "mock0-vf0", "node1/numa0")],
        ));
        node.source.put(allocated(
            b,
            "b",
            vec![result("pf", "mock1", "node1/numa1")],
        ));
        let spec = fixture(vec![FaultSpec {
            device: Some("mock0-vf0".into()),
            ..fault(FaultOperation::Prepare, FaultAction::Fail, 1)
        }]);
        let p = node.preparer().with_fixture(spec.subscribe());

        let results = p.prepare(vec![cref(a, "a"), cref(b, "b")]).await;
        assert_eq!(results[a], Err("injected failure".to_string()));
        assert!(
            results[b].is_ok(),
            "a claim not touching mock0-vf0: {results:?}"
        );
        assert_eq!(node.register("mock0_vf0"), 5, "the failed claim's register");
        assert!(node.spec(a).is_none() && !node.checkpoint().claims.contains_key(a));
        assert_eq!(stored_hits(&node), vec![1]);
        assert_eq!(
            p.subscribe_fault_hits().borrow().hits.values().sum::<i64>(),
            1
        );
        node.assert_consistent(&p);

        // count: 1 is spent: the kubelet's retry prepares the claim.
        assert!(prepare_one(&p, cref(a, "a")).await.is_ok());
        assert_eq!(node.register("mock0_vf0"), 1);
        assert_eq!(stored_hits(&node), vec![1]);
    }

    #[tokio::test]
    async fn fault_counts_survive_a_restart() {
        let mut node = TestNode::new();
        let a = "a0000000-0000-4000-8000-00000000000a";
        node.source.put(allocated(
            a,
            "a",
            vec![result("pf", "mock0", "node1/numa0")],
        ));
        let spec = fixture(vec![FaultSpec {
            device: Some("mock0".into()),
            ..fault(FaultOperation::Unprepare, FaultAction::Fail, 2)
        }]);
        let p = node.preparer().with_fixture(spec.subscribe());
        prepare_one(&p, cref(a, "a")).await.unwrap();
        assert!(unprepare_one(&p, cref(a, "a")).await.is_err());
        assert_eq!(
            node.register("mock0"),
            1,
            "a failed unprepare releases nothing"
        );
        drop(p);

        let p = node.preparer().with_fixture(spec.subscribe());
        assert_eq!(
            p.subscribe_fault_hits().borrow().hits.values().sum::<i64>(),
            1,
            "hits loaded at start"
        );
        assert!(unprepare_one(&p, cref(a, "a")).await.is_err());
        unprepare_one(&p, cref(a, "a")).await.unwrap();
        assert_eq!(node.register("mock0"), 0);
        assert_eq!(stored_hits(&node), vec![2]);
        node.assert_consistent(&p);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_no_lock_while_sleeping_then_prepares() {
        let mut node = TestNode::new();
        let a = "a0000000-0000-4000-8000-00000000000a";
        node.source.put(allocated(
            a,
            "a",
            vec![result("pf", "mock0", "node1/numa0")],
        ));
        let spec = fixture(vec![fault(FaultOperation::Prepare, FaultAction::Delay, 1)]);
        let p = Arc::new(node.preparer().with_fixture(spec.subscribe()));
        let mut hits = p.subscribe_fault_hits();
        let t0 = tokio::time::Instant::now();
        let delayed = tokio::spawn({
            let p = p.clone();
            async move { p.prepare(vec![cref(a, "a")]).await }
        });
        hits.wait_for(|h| !h.hits.is_empty()).await.unwrap();
        // Recorded and now sleeping: another call takes both locks and finishes long before
        // the delay ends, and nothing of the delayed claim is prepared yet.
        unprepare_one(&p, cref("other", "other")).await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(!delayed.is_finished());
        assert_eq!(node.register("mock0"), 5);

        let results = delayed.await.unwrap();
        assert!(results[a].is_ok(), "{results:?}");
        assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(node.register("mock0"), 1);
        // count: 1 is spent: the next call is not delayed.
        let t1 = tokio::time::Instant::now();
        unprepare_one(&p, cref(a, "a")).await.unwrap();
        assert!(prepare_one(&p, cref(a, "a")).await.is_ok());
        assert!(t1.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_call_dropped_by_the_deadline_leaves_nothing_done() {
        let mut node = TestNode::new();
        let a = "a0000000-0000-4000-8000-00000000000a";
        node.source.put(allocated(
            a,
            "a",
            vec![result("pf", "mock0", "node1/numa0")],
        ));
        let spec = fixture(vec![fault(FaultOperation::Prepare, FaultAction::Delay, 0)]);
        let p = node.preparer().with_fixture(spec.subscribe());
        let dropped =
            tokio::time::timeout(Duration::from_secs(1), p.prepare(vec![cref(a, "a")])).await;
        assert!(dropped.is_err());
        assert_eq!(node.register("mock0"), 5);
        assert!(node.checkpoint().claims.is_empty());
        assert_eq!(stored_hits(&node), vec![1], "the dropped call was hit");
        node.assert_consistent(&p);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_wait_for_an_unknown_spec_only_shortly_after_the_start() {
        let mut node = TestNode::new();
        let a = "a0000000-0000-4000-8000-00000000000a";
        node.source.put(allocated(
            a,
            "a",
            vec![result("pf", "mock0", "node1/numa0")],
        ));
        let (_spec, unknown) = watch::channel(None);
        let p = node.preparer().with_fixture(unknown);
        let t0 = tokio::time::Instant::now();
        assert!(prepare_one(&p, cref(a, "a")).await.is_ok());
        assert_eq!(t0.elapsed(), SPEC_WAIT, "the first call waits for the spec");
        let t1 = tokio::time::Instant::now();
        unprepare_one(&p, cref(a, "a")).await.unwrap();
        assert!(prepare_one(&p, cref(a, "a")).await.is_ok());
        assert_eq!(t1.elapsed(), Duration::ZERO, "later calls do not wait");
    }

    #[tokio::test]
    async fn removed_entries_forget_their_hits_and_a_spec_without_faults_costs_nothing() {
        let mut node = TestNode::new();
        let a = "a0000000-0000-4000-8000-00000000000a";
        node.source.put(allocated(
            a,
            "a",
            vec![result("pf", "mock0", "node1/numa0")],
        ));
        let spec = fixture(vec![fault(FaultOperation::Prepare, FaultAction::Fail, 1)]);
        let p = Arc::new(node.preparer().with_fixture(spec.subscribe()));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let pruner = tokio::spawn({
            let (p, shutdown) = (p.clone(), shutdown.clone());
            async move { p.prune_fault_hits(shutdown).await }
        });
        assert!(prepare_one(&p, cref(a, "a")).await.is_err());
        let mut hits = p.subscribe_fault_hits();
        spec.send_modify(|s| s.as_mut().unwrap().faults = None);
        hits.wait_for(|h| h.hits.is_empty()).await.unwrap();
        assert_eq!(stored_hits(&node), Vec::<i64>::new());
        assert!(prepare_one(&p, cref(a, "a")).await.is_ok());
        assert_eq!(stored_hits(&node), Vec::<i64>::new(), "no entry, no hit");
        shutdown.cancel();
        pruner.await.unwrap();
    }
}
