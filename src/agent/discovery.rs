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
/// caller's metric hook) whether it succeeded.
pub async fn run(
    root: PathBuf,
    resync: Duration,
    tx: watch::Sender<Discovered>,
    inventory_tx: watch::Sender<Arc<Inventory>>,
    scans: impl Fn(bool) + Send + 'static,
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
