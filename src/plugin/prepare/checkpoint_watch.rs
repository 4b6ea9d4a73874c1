//! Following the checkpoint when another node-agent process writes it.
//!
//! During a rolling update two agents serve one node and the kubelet may call either; each call
//! reads the checkpoint from disk under the file lock, so decisions never rest on a stale view.
//! What each agent *publishes* (its `preparedClaims` for the MockAccelNode status, the claims'
//! `status.devices`, the allocation map) would otherwise only change on its own calls: the agent
//! that is not called would keep writing an old list into the status at every heartbeat. Each
//! agent therefore re-reads the checkpoint whenever the file is replaced (inotify on the plugin
//! directory) and, as a safety net, every [`REFRESH_INTERVAL`], and publishes what it found.

use std::{sync::Arc, time::Duration};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Preparer;
use crate::{checkpoint, plugin::ClaimSource};

/// Re-read interval when no file event arrives.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

impl<S: ClaimSource> Preparer<S> {
    /// Reads the checkpoint and publishes it. Holds the in-process guard, so a publish of this
    /// process's own call is never overtaken by an older read; takes no file lock (the file is
    /// replaced atomically, so a read sees one whole version).
    pub async fn refresh(&self) {
        let guard = Arc::clone(&self.serial).lock_owned().await;
        let core = Arc::clone(&self.core);
        let done = tokio::task::spawn_blocking(move || {
            match checkpoint::load(&core.checkpoint_path()) {
                Ok(cp) => core.publish(&cp),
                Err(e) => tracing::debug!(error = %e, "checkpoint not re-read"),
            }
            drop(guard);
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "checkpoint re-read task failed");
        }
    }

    /// Re-publishes the checkpoint whenever it is replaced, until `shutdown`.
    pub async fn follow_checkpoint(self: Arc<Self>, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watcher = match watch_checkpoint(&self.core.checkpoint_path(), tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, interval = ?REFRESH_INTERVAL,
                    "cannot watch the checkpoint; re-reading it periodically only");
                None
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = rx.recv() => {
                    // One re-read for a burst of events.
                    while rx.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
            self.refresh().await;
        }
    }
}

/// Watches the checkpoint's directory (the file is replaced by a rename, so a watch on the file
/// itself would end with the first write) and signals events that name the checkpoint.
fn watch_checkpoint(
    path: &std::path::Path,
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<RecommendedWatcher> {
    let file = path.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
            && ev.paths.contains(&file)
        {
            let _ = tx.send(());
        }
    })?;
    let dir = path.parent().unwrap_or(path);
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
