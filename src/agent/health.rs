//! The node agent's health loop: reads the status registers of the prepared devices (on
//! tokio's blocking pool), derives every device's health ([`crate::health::derive`]) and
//! publishes it for the status writer (`status.devices[].health`) and the kubelet health
//! stream. It re-derives on every change of its inputs and every [`RECHECK_INTERVAL`]: sysfs
//! raises no inotify events, so a register reset behind the driver's back is found by polling.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    crd::MockAccelNodeSpec,
    health::{self, Observed, RegisterRead},
    inventory::Inventory,
    plugin::PreparedClaim,
    sysfs::{self, SysfsError},
};

/// How often the prepared devices' registers are read again without any other change.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

pub use crate::health::NodeHealth;

/// Derives health into `tx` until `shutdown` or until an input closes.
pub async fn run(
    sysfs_root: PathBuf,
    node: String,
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
        let names = health::registers_to_read(&held);
        let root = sysfs_root.clone();
        let registers = tokio::task::spawn_blocking(move || read_registers(&root, &names))
            .await
            .unwrap_or_default();
        let derived = health::derive(&Observed {
            node: &node,
            inventory: &inv,
            prepared: &held,
            registers: &registers,
            declared: &declared,
        });
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

/// Reads each named register; blocking (sysfs reads).
fn read_registers(root: &std::path::Path, names: &[String]) -> HashMap<String, RegisterRead> {
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

    #[tokio::test(start_paused = true)]
    async fn a_reset_register_and_a_declared_state_are_published_and_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("class/mock-accel/mock0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("status"), "1\n").unwrap();
        let (_inv_tx, inv_rx) = watch::channel(Arc::new(Inventory::new(vec![
            devices::pf("mock0").numa(Some(0)).build(),
        ])));
        let (_prep_tx, prep_rx) = watch::channel(vec![PreparedClaim {
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
        let (spec_tx, spec_rx) = watch::channel(None);
        let (tx, mut rx) = watch::channel(NodeHealth::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            tmp.path().into(),
            "node1".into(),
            inv_rx,
            prep_rx,
            spec_rx,
            tx,
            shutdown.clone(),
        ));
        let state = |h: &NodeHealth| h.first().map(|d| d.health);
        rx.wait_for(|h| state(h) == Some(Health::Healthy))
            .await
            .unwrap();

        // Reset behind the driver's back: found by the periodic re-read, no other change.
        std::fs::write(dir.join("status"), "0\n").unwrap();
        rx.wait_for(|h| state(h) == Some(Health::Unhealthy))
            .await
            .unwrap();
        std::fs::write(dir.join("status"), "1\n").unwrap();
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
}
