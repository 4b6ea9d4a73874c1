//! The node agent's health loop: reads the status registers of the prepared devices (on
//! tokio's blocking pool), derives every device's health ([`crate::health::derive`]) and
//! publishes it for the status writer (`status.devices[].health`) and the kubelet health
//! stream. It re-derives on every change of its inputs and every [`RECHECK_INTERVAL`]: sysfs
//! raises no inotify events, so a register reset behind the driver's back is found by polling.
//!
//! The prepared set and the registers are read at different moments, so under churn a register
//! can read 0 because the claim was unprepared in between, not because anything reset it. A
//! result that would change the published health is therefore judged again from a consistent
//! view ([`Registers::read_consistent`]: the prepared set and the registers read while no prepare or
//! unprepare of this process runs) before it is published. Steady reads cost no such pass.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    crd::MockAccelNodeSpec,
    health::{self, Observed, RegisterRead},
    inventory::Inventory,
    plugin::{ClaimSource, PreparedClaim, prepare::Preparer},
    sysfs::{self, SysfsError},
};

/// How often the prepared devices' registers are read again without any other change.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

pub use crate::health::NodeHealth;

/// The prepared claims and their registers, read together while no prepare or unprepare runs;
/// `None` when that read could not be made (then the plain read is used).
pub type Consistent = Option<(Vec<PreparedClaim>, HashMap<String, RegisterRead>)>;

/// How the loop reads the status registers: plainly, and together with the prepared set while
/// no prepare or unprepare runs (see the module documentation).
pub trait Registers: Send + Sync + 'static {
    /// The registers `names`, read now.
    fn read(
        &self,
        names: Vec<String>,
    ) -> impl Future<Output = HashMap<String, RegisterRead>> + Send;
    /// The prepared set and its registers, read under the preparer's guard.
    fn read_consistent(&self) -> impl Future<Output = Consistent> + Send;
}

/// Derives health into `tx` until `shutdown` or until an input closes.
pub async fn run<R: Registers>(
    node: String,
    registers: R,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    mut prepared: watch::Receiver<Vec<PreparedClaim>>,
    mut spec: watch::Receiver<Option<MockAccelNodeSpec>>,
    tx: watch::Sender<NodeHealth>,
    shutdown: CancellationToken,
) {
    loop {
        let inv = inventory.borrow_and_update().clone();
        let held = prepared.borrow_and_update().clone();
        let declared = spec
            .borrow_and_update()
            .as_ref()
            .and_then(|s| s.health.clone())
            .unwrap_or_default();
        let read = registers.read(health::registers_to_read(&held)).await;
        let derive = |held: &[PreparedClaim], read: &HashMap<String, RegisterRead>| {
            health::derive(&Observed {
                node: &node,
                inventory: &inv,
                prepared: held,
                registers: read,
                declared: &declared,
            })
        };
        let mut derived = derive(&held, &read);
        if **tx.borrow() != derived
            && let Some((held, read)) = registers.read_consistent().await
        {
            derived = derive(&held, &read);
        }
        tx.send_if_modified(|cur| {
            let changed = **cur != derived;
            if changed {
                for d in derived.iter().filter(|d| {
                    cur.iter()
                        .find(|c| c.device == d.device)
                        .is_none_or(|c| c.health != d.health)
                }) {
                    tracing::info!(device = %d.device, health = ?d.health, message = %d.message,
                        "device health");
                }
                *cur = Arc::new(derived);
            }
            changed
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RECHECK_INTERVAL) => {}
            r = inventory.changed() => if r.is_err() { return },
            r = prepared.changed() => if r.is_err() { return },
            r = spec.changed() => if r.is_err() { return },
        }
    }
}

/// The agent's registers: sysfs below `sysfs_root`, on the blocking pool; the consistent read
/// under the preparer's in-process guard.
pub struct AgentRegisters<S: ClaimSource> {
    pub preparer: Arc<Preparer<S>>,
    pub sysfs_root: PathBuf,
}

impl<S: ClaimSource> Registers for AgentRegisters<S> {
    async fn read(&self, names: Vec<String>) -> HashMap<String, RegisterRead> {
        let root = self.sysfs_root.clone();
        tokio::task::spawn_blocking(move || read_registers(&root, &names))
            .await
            .unwrap_or_default()
    }

    async fn read_consistent(&self) -> Consistent {
        let root = self.sysfs_root.clone();
        let read = self
            .preparer
            .while_no_prepare(move |held| {
                let names = health::registers_to_read(&held.claims);
                let read = read_registers(&root, &names);
                (held.claims, read)
            })
            .await;
        read.inspect_err(|e| tracing::warn!(error = %e, "health: consistent register read failed"))
            .ok()
    }
}

/// Reads the status registers `names` below `root` (blocking).
pub fn read_registers(root: &std::path::Path, names: &[String]) -> HashMap<String, RegisterRead> {
    names
        .iter()
        .map(|name| {
            let read = match sysfs::read_status(root, name) {
                Ok(v) => RegisterRead::Value(v),
                Err(SysfsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    RegisterRead::Missing
                }
                Err(e) => RegisterRead::Unreadable(e.to_string()),
            };
            (name.clone(), read)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixture::{HealthSpec, HealthState},
        inventory::Health,
        plugin::HeldRegister,
        test_support::devices,
    };

    /// A node with one PF, `mock0`, its register reading `status`, held by one prepared claim.
    struct Mock0 {
        tmp: tempfile::TempDir,
        inventory: watch::Receiver<Arc<Inventory>>,
        prepared: watch::Receiver<Vec<PreparedClaim>>,
        _senders: (
            watch::Sender<Arc<Inventory>>,
            watch::Sender<Vec<PreparedClaim>>,
        ),
    }

    impl Mock0 {
        fn new(status: &str) -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("class/mock-accel/mock0");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("status"), status).unwrap();
            let (inv_tx, inventory) = watch::channel(Arc::new(Inventory::new(vec![
                devices::pf("mock0").numa(Some(0)).build(),
            ])));
            let (prep_tx, prepared) = watch::channel(vec![PreparedClaim {
                namespace: "ns".into(),
                name: "c".into(),
                devices: vec!["mock0".into()],
                registers: vec![HeldRegister {
                    device: "mock0".into(),
                    sysfs_name: "mock0".into(),
                    pool: "node1/numa0".into(),
                }],
                ..Default::default()
            }]);
            Mock0 {
                tmp,
                inventory,
                prepared,
                _senders: (inv_tx, prep_tx),
            }
        }

        fn set_status(&self, status: &str) {
            let path = self.tmp.path().join("class/mock-accel/mock0/status");
            std::fs::write(path, status).unwrap();
        }

        /// Registers read from this tree; the consistent read sees the same prepared set,
        /// unless `unprepared_meanwhile` (then it sees nothing prepared).
        fn registers(&self, unprepared_meanwhile: bool) -> DiskRegisters {
            DiskRegisters {
                root: self.tmp.path().into(),
                prepared: self.prepared.clone(),
                unprepared_meanwhile,
            }
        }

        /// Starts the loop on this node; returns its output, its stop token and its task.
        fn start(
            &self,
            unprepared_meanwhile: bool,
            spec: watch::Receiver<Option<MockAccelNodeSpec>>,
        ) -> (
            watch::Receiver<NodeHealth>,
            CancellationToken,
            tokio::task::JoinHandle<()>,
        ) {
            let (tx, rx) = watch::channel(NodeHealth::default());
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run(
                "node1".into(),
                self.registers(unprepared_meanwhile),
                self.inventory.clone(),
                self.prepared.clone(),
                spec,
                tx,
                shutdown.clone(),
            ));
            (rx, shutdown, task)
        }
    }

    struct DiskRegisters {
        root: PathBuf,
        prepared: watch::Receiver<Vec<PreparedClaim>>,
        unprepared_meanwhile: bool,
    }

    impl Registers for DiskRegisters {
        async fn read(&self, names: Vec<String>) -> HashMap<String, RegisterRead> {
            read_registers(&self.root, &names)
        }

        async fn read_consistent(&self) -> Consistent {
            if self.unprepared_meanwhile {
                return Some((Vec::new(), HashMap::new()));
            }
            let held = self.prepared.borrow().clone();
            let names = health::registers_to_read(&held);
            Some((held, read_registers(&self.root, &names)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_register_and_a_declared_state_are_published_and_cleared() {
        let node = Mock0::new("1\n");
        let (spec_tx, spec_rx) = watch::channel(None);
        let (mut rx, shutdown, task) = node.start(false, spec_rx);
        let state = |h: &NodeHealth| h.first().map(|d| d.health);
        rx.wait_for(|h| state(h) == Some(Health::Healthy))
            .await
            .unwrap();

        // Reset behind the driver's back: found by the periodic re-read, no other change.
        node.set_status("0\n");
        rx.wait_for(|h| state(h) == Some(Health::Unhealthy))
            .await
            .unwrap();
        node.set_status("1\n");
        rx.wait_for(|h| state(h) == Some(Health::Healthy))
            .await
            .unwrap();

        spec_tx.send_replace(Some(MockAccelNodeSpec {
            health: Some(vec![HealthSpec {
                device: "mock0".into(),
                state: HealthState::Unknown,
                message: None,
                effect: None,
            }]),
            ..Default::default()
        }));
        rx.wait_for(|h| state(h) == Some(Health::Unknown))
            .await
            .unwrap();
        shutdown.cancel();
        task.await.unwrap();
    }

    /// Under churn the plain read can pair a claim that was just unprepared with its register,
    /// already reset: the published health must come from the consistent view, which shows no
    /// reset of a prepared register.
    #[tokio::test(start_paused = true)]
    async fn a_register_reset_by_an_unprepare_between_the_reads_is_no_health_change() {
        // The unprepare already reset it; the prepared set the loop reads still holds the claim.
        let node = Mock0::new("0\n");
        let (_spec_tx, spec_rx) = watch::channel(None);
        let (mut rx, shutdown, task) = node.start(true, spec_rx);
        rx.changed().await.unwrap();
        for _ in 0..3 {
            let published = rx.borrow_and_update().clone();
            assert_eq!(
                published.first().map(|d| d.health),
                Some(Health::Healthy),
                "{published:?}"
            );
            tokio::time::sleep(RECHECK_INTERVAL).await;
        }
        shutdown.cancel();
        task.await.unwrap();
    }
}
