//! Following the checkpoint when another node-agent process writes it.
//!
//! During a rolling update two agents serve one node and the kubelet may call either; each call
//! reads the checkpoint from disk under the file lock, so decisions never rest on a stale view.
//! What each agent *publishes* (its `preparedClaims` for the MockAccelNode status, the claims'
//! `status.devices`, the allocation map) would otherwise only change on its own calls: the agent
//! that is not called would keep writing an old list into the status at every heartbeat. Each
//! agent therefore re-reads the checkpoint whenever the file is replaced (inotify on the plugin
//! directory) and, as a safety net, every [`REFRESH_INTERVAL`], and publishes what it found.
//!
//! Most events are the agent's own writes (three per prepare+unprepare), which it has published
//! already: a re-read would take the in-process guard, a blocking-pool hop and a checksum for
//! nothing, while the kubelet's next call waits. The watcher's thread therefore compares the
//! file with the content this process last stored and signals only when they differ.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

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
        let stored = Arc::clone(&self.core.stored);
        let _watcher = match watch_checkpoint(&self.core.checkpoint_path(), stored, tx) {
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

/// Watches the checkpoint's directory (the file is replaced by a rename or an exchange, so a
/// watch on the file itself would follow the old version) and signals events that name the checkpoint, unless
/// the file holds what this process last stored (`stored`). The comparison reads the file on
/// the watcher's own thread, never on a runtime thread.
fn watch_checkpoint(
    path: &std::path::Path,
    stored: Arc<Mutex<Vec<u8>>>,
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<RecommendedWatcher> {
    let file = path.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && names_a_new_version(&ev.kind)
            && ev.paths.contains(&file)
            && !holds_own_write(&file, &stored)
        {
            let _ = tx.send(());
        }
    })?;
    let dir = path.parent().unwrap_or(path);
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether an event of this kind can mean a new version of the file. Not reads, not the `Both`
/// event of a rename inside the directory (the `To` event of the same rename, which names the
/// file too, follows it), and not a `From`: the exchange that replaces the file moves the
/// previous version away *from* its name as it moves the new one *to* it. Each read costs a
/// file open on a core the kubelet's next call may be waiting for. A checkpoint only moved away
/// (no process of this project does that while agents run) is seen at the next periodic
/// re-read.
fn names_a_new_version(kind: &notify::EventKind) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    !matches!(
        kind,
        notify::EventKind::Access(_)
            | notify::EventKind::Modify(ModifyKind::Name(RenameMode::Both | RenameMode::From))
    )
}

/// Whether `file` holds exactly the content this process last stored: then there is nothing new
/// to publish. An unreadable or missing file is news (another process may have removed it).
fn holds_own_write(file: &std::path::Path, stored: &Mutex<Vec<u8>>) -> bool {
    let Ok(content) = std::fs::read(file) else {
        return false;
    };
    let stored = stored
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    !stored.is_empty() && *stored == content
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic_file::temp_path as atomic_file_spare;

    /// A replace of the checkpoint, as `store` makes it (a rename the first time, an exchange
    /// after), gives exactly one event that counts; so does a rename over it by another writer.
    #[test]
    fn a_replace_is_one_event() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("checkpoint.json");

        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                tx.send(ev).unwrap();
            }
        })
        .unwrap();
        watcher
            .watch(dir.path(), RecursiveMode::NonRecursive)
            .unwrap();
        let counted = || {
            std::thread::sleep(Duration::from_millis(200));
            rx.try_iter()
                .filter(|ev| names_a_new_version(&ev.kind) && ev.paths.contains(&file))
                .count()
        };
        checkpoint::store_encoded(&file, b"v2").unwrap();
        assert!(
            !atomic_file_spare(&file).exists(),
            "the first store renamed"
        );
        assert_eq!(counted(), 1, "the first store");
        checkpoint::store_encoded(&file, b"v3").unwrap();
        assert!(
            atomic_file_spare(&file).exists(),
            "the second store exchanged"
        );
        assert_eq!(counted(), 1, "an exchange");
        let other = dir.path().join("other-writer.tmp");
        std::fs::write(&other, b"v4").unwrap();
        std::fs::rename(&other, &file).unwrap();
        assert_eq!(counted(), 1, "a rename by another writer");
        drop(watcher);
    }

    #[test]
    fn only_a_file_holding_the_last_own_write_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("checkpoint.json");
        let stored = Mutex::new(Vec::new());
        std::fs::write(&file, b"v1").unwrap();
        assert!(!holds_own_write(&file, &stored), "nothing stored yet");
        *stored.lock().unwrap() = b"v1".to_vec();
        assert!(holds_own_write(&file, &stored));
        std::fs::write(&file, b"v2 by another agent").unwrap();
        assert!(!holds_own_write(&file, &stored));
        std::fs::remove_file(&file).unwrap();
        assert!(!holds_own_write(&file, &stored));
    }
}
