//! Keeps the node's inventory current: a rescan whenever inotify reports a change in the class
//! directory (devices and VFs come and go as links there), and a periodic
//! full rescan as the safety net (real sysfs raises none for attribute changes; hotplug there
//! arrives as uevents, which the periodic rescan also catches).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    inventory::Inventory,
    sysfs::{self, SysfsError},
};

/// A scan result as the rest of the agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    pub inventory: Arc<Inventory>,
    /// One line per skipped device or file, naming the file and the problem.
    pub warnings: Vec<String>,
}

/// Events closer together than this are folded into one rescan (creating a VF touches dozens
/// of files).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Scans once. `Err` only when the root itself is unusable.
pub fn scan_once(root: &Path) -> Result<Discovered, SysfsError> {
    let scan = sysfs::scan(root)?;
    Ok(Discovered {
        inventory: Arc::new(scan.inventory),
        warnings: scan.warnings.iter().map(ToString::to_string).collect(),
    })
}

/// Watches `root` until `shutdown`, publishing every changed scan on `tx` (and its inventory on
/// `inventory_tx`, which the prepare state machine reads). Each scan reports to `scans` (the
/// caller's metric hook) whether it succeeded. A message on `kicks` asks for a rescan now (a
/// kernel uevent, or the agent's own write to `sriov_numvfs`).
pub async fn run(
    root: PathBuf,
    resync: Duration,
    tx: watch::Sender<Discovered>,
    inventory_tx: watch::Sender<Arc<Inventory>>,
    scans: impl Fn(bool) + Send + 'static,
    mut kicks: mpsc::UnboundedReceiver<()>,
    shutdown: CancellationToken,
) {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
    // The watcher lives as long as this function; dropping it stops the notify thread.
    let _watcher = match start_watcher(&root, ev_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(root = %root.display(), error = %e,
                "cannot watch sysfs with inotify; relying on the periodic rescan only");
            None
        }
    };
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {},
            Some(()) = ev_rx.recv() => {
                // Fold a burst of events into one scan.
                tokio::time::sleep(DEBOUNCE).await;
                while ev_rx.try_recv().is_ok() {}
            }
            Some(()) = kicks.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while kicks.try_recv().is_ok() {}
            }
        }
        let root2 = root.clone();
        let result = tokio::task::spawn_blocking(move || scan_once(&root2)).await;
        match result {
            Ok(Ok(found)) => {
                scans(true);
                for w in &found.warnings {
                    tracing::debug!(warning = %w, "device skipped");
                }
                tx.send_if_modified(|cur| {
                    if *cur == found {
                        false
                    } else {
                        tracing::info!(
                            devices = found.inventory.devices.len(),
                            skipped = found.warnings.len(),
                            "inventory changed"
                        );
                        inventory_tx.send_replace(found.inventory.clone());
                        *cur = found;
                        true
                    }
                });
            }
            Ok(Err(e)) => {
                scans(false);
                tracing::warn!(root = %root.display(), error = %e, "sysfs rescan failed; keeping the last inventory");
            }
            Err(e) => {
                scans(false);
                tracing::warn!(error = %e, "sysfs rescan task failed");
            }
        }
    }
}

fn start_watcher(root: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })?;
    // Hotplug adds and removes links in the class directory. Nothing deeper is watched: real
    // sysfs raises no inotify events for attribute writes, and a recursive watch of
    // /sys/devices would cost thousands of watches for nothing.
    let class = root.join("class/mock-accel");
    if class.is_dir() {
        watcher.watch(&class, RecursiveMode::NonRecursive)?;
    } else {
        watcher.watch(root, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    //! The loop on a simulated tree. Waits are bounded by a deadline on the channel the loop
    //! publishes to, never by a sleep: each test fails if the loop does not publish in time.

    use tokio::task::JoinHandle;

    use super::*;
    use crate::{
        sim::{self, TopologySpec},
        sysfs,
    };

    /// Long enough for a scan on a loaded machine; a passing test takes milliseconds.
    const DEADLINE: Duration = Duration::from_secs(20);

    struct Running {
        discovered: watch::Receiver<Discovered>,
        inventory: watch::Receiver<Arc<Inventory>>,
        scans: mpsc::UnboundedReceiver<bool>,
        kick: mpsc::UnboundedSender<()>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    fn start(root: &Path, resync: Duration) -> Running {
        let first = scan_once(root).expect("a usable root");
        let (inventory_tx, inventory) = watch::channel(first.inventory.clone());
        let (tx, discovered) = watch::channel(first);
        let (scan_tx, scans) = mpsc::unbounded_channel();
        let (kick, kicks) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            root.to_path_buf(),
            resync,
            tx,
            inventory_tx,
            move |ok| {
                let _ = scan_tx.send(ok);
            },
            kicks,
            shutdown.clone(),
        ));
        Running {
            discovered,
            inventory,
            scans,
            kick,
            shutdown,
            task,
        }
    }

    impl Running {
        async fn next_inventory(&mut self) -> Discovered {
            tokio::time::timeout(DEADLINE, self.discovered.changed())
                .await
                .expect("the loop publishes the change in time")
                .expect("the loop is running");
            self.discovered.borrow_and_update().clone()
        }

        /// The outcome of the next scan the loop reports.
        async fn next_scan(&mut self) -> bool {
            tokio::time::timeout(DEADLINE, self.scans.recv())
                .await
                .expect("the loop scans in time")
                .expect("the loop is running")
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(DEADLINE, self.task)
                .await
                .expect("the loop stops on shutdown")
                .expect("the loop ends cleanly");
        }
    }

    fn names(d: &Discovered) -> Vec<&str> {
        d.inventory
            .devices
            .iter()
            .map(|d| d.name.as_str())
            .collect()
    }

    #[tokio::test]
    async fn a_removed_device_is_published_on_the_inotify_event() {
        let dir = tempfile::tempdir().unwrap();
        sim::create(dir.path(), None, &TopologySpec::canonical(1)).unwrap();
        // No periodic rescan within the test: only inotify can bring the change.
        let mut running = start(dir.path(), Duration::from_secs(3600));
        assert!(running.next_scan().await, "the first tick scans at once");
        assert!(
            !running.discovered.has_changed().unwrap(),
            "an unchanged scan publishes nothing"
        );

        sim::remove_device(dir.path(), None, "mock5").unwrap();
        let found = running.next_inventory().await;
        assert_eq!(names(&found), ["mock0", "mock1", "mock2", "mock3", "mock4"]);
        assert_eq!(
            *running.inventory.borrow(),
            found.inventory,
            "the prepare state machine sees the same inventory"
        );
        running.stop().await;
    }

    #[tokio::test]
    async fn a_kick_rescans_at_once() {
        let dir = tempfile::tempdir().unwrap();
        sim::create(dir.path(), None, &TopologySpec::canonical(1)).unwrap();
        // Neither inotify (an attribute write) nor the periodic rescan (an hour) sees this.
        let mut running = start(dir.path(), Duration::from_secs(3600));
        assert!(running.next_scan().await);
        sysfs::write_status(dir.path(), "mock2", 0).unwrap();
        running.kick.send(()).unwrap();
        let found = running.next_inventory().await;
        assert_eq!(found.inventory.get("mock2").unwrap().status, 0);
        running.stop().await;
    }

    #[tokio::test]
    async fn the_periodic_rescan_catches_attribute_changes_and_a_failed_scan_keeps_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys");
        sim::create(&root, None, &TopologySpec::canonical(1)).unwrap();
        let mut running = start(&root, Duration::from_millis(50));
        let before = running.discovered.borrow().clone();
        assert_eq!(before.inventory.get("mock0").unwrap().status, 1);

        // Real sysfs raises no inotify event for an attribute write; the rescan finds it.
        sysfs::write_status(&root, "mock0", 0).unwrap();
        let found = running.next_inventory().await;
        assert_eq!(found.inventory.get("mock0").unwrap().status, 0);

        // The root goes away: scans fail, and the last inventory stays published.
        std::fs::rename(&root, dir.path().join("gone")).unwrap();
        while running.next_scan().await {}
        assert_eq!(*running.discovered.borrow(), found);
        assert_eq!(*running.inventory.borrow(), found.inventory);
        running.stop().await;
    }
}
