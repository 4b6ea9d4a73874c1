//! `sim watch`: a daemon that gives the simulated files the kernel's reactions to writes while
//! it runs (`status` normalised to `0x%08x`, `sriov_numvfs` creating and removing VFs), driven
//! by inotify with a periodic re-list as the safety net.

use std::{
    collections::HashSet,
    fs,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use super::{
    SimError,
    model::{RW, Role, numvfs_entries},
    tree::{class_names, read_tree_device, set_numvfs, virtfns, write_entries, write_file},
};
use crate::sysfs::{self, CLASS_DIR};

/// How often the daemon re-lists the class directory even without events (a safety net for
/// devices that appeared between listing and watching).
const RESYNC: Duration = Duration::from_secs(2);

/// Applies the kernel's reaction to attribute writes until `stop` is set: `status` is rewritten
/// as `0x%08x` (an invalid write is undone), and a changed `sriov_numvfs` creates or removes VFs
/// (an invalid one is undone). Watches every class device directory with inotify; `on_ready`
/// runs once the initial watches are in place and the tree has been brought in line.
pub fn watch(
    root: &Path,
    dev_root: Option<&Path>,
    stop: &AtomicBool,
    on_ready: impl FnOnce(),
) -> Result<(), SimError> {
    use notify::{
        EventKind, RecursiveMode, Watcher,
        event::{AccessKind, AccessMode, CreateKind, ModifyKind},
    };

    let class = root.join(CLASS_DIR);
    if !class.is_dir() {
        return Err(SimError::Tree {
            path: class,
            problem: "not a directory; create the tree first with `mock-accel-dra sim create`"
                .into(),
        });
    }
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })
    .map_err(|source| SimError::Watch {
        path: class.clone(),
        source,
    })?;
    watcher
        .watch(&class, RecursiveMode::NonRecursive)
        .map_err(|source| SimError::Watch {
            path: class.clone(),
            source,
        })?;

    let mut state = WatchState {
        root,
        dev_root,
        watched: HashSet::new(),
    };
    // Every newly watched device is brought in line right after its watch is placed, so a write
    // that landed before the watch is not missed.
    state.resync(&mut watcher);
    on_ready();

    while !stop.load(Ordering::Relaxed) {
        let event = match rx.recv_timeout(RESYNC) {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => {
                eprintln!("warning: watch error: {e}");
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                state.resync(&mut watcher);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let relevant = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Create(CreateKind::File | CreateKind::Any)
                | EventKind::Modify(ModifyKind::Name(_))
        );
        let mut class_changed = false;
        for path in &event.paths {
            if path.parent() == Some(class.as_path()) {
                class_changed = true;
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) && let Some(name) = path.file_name().and_then(|n| n.to_str())
                {
                    state.forget(&mut watcher, name);
                }
                continue;
            }
            if !relevant {
                continue;
            }
            let (Some(attr), Some(dir)) =
                (path.file_name().and_then(|n| n.to_str()), path.parent())
            else {
                continue;
            };
            if dir.parent() != Some(class.as_path()) {
                continue;
            }
            let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            match attr {
                "status" => state.normalise_status(name),
                "sriov_numvfs" => {
                    state.apply_numvfs(name);
                    class_changed = true;
                }
                _ => {}
            }
        }
        if class_changed {
            state.resync(&mut watcher);
        }
    }
    Ok(())
}

struct WatchState<'a> {
    root: &'a Path,
    dev_root: Option<&'a Path>,
    watched: HashSet<String>,
}

impl WatchState<'_> {
    /// Watches every class device directory not yet watched; forgets vanished ones.
    fn resync(&mut self, watcher: &mut impl notify::Watcher) {
        let Ok(names) = class_names(self.root) else {
            return;
        };
        let present: HashSet<String> = names.into_iter().collect();
        let gone: Vec<String> = self.watched.difference(&present).cloned().collect();
        for name in gone {
            self.forget(watcher, &name);
        }
        for name in present {
            if self.watched.contains(&name) {
                continue;
            }
            let dir = sysfs::device_dir(self.root, &name);
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.reconcile(&name);
                    self.watched.insert(name);
                }
                // A link whose device is still being written or already removed: next resync.
                Err(e) => eprintln!("warning: {}: cannot watch yet: {e}", dir.display()),
            }
        }
    }

    fn forget(&mut self, watcher: &mut impl notify::Watcher, name: &str) {
        if self.watched.remove(name) {
            let _ = watcher.unwatch(&sysfs::device_dir(self.root, name));
        }
    }

    fn reconcile(&mut self, name: &str) {
        self.normalise_status(name);
        if fs::symlink_metadata(sysfs::device_dir(self.root, name).join("sriov_numvfs")).is_ok() {
            self.apply_numvfs(name);
        }
    }

    fn normalise_status(&mut self, name: &str) {
        let path = sysfs::status_path(self.root, name);
        let Ok(text) = fs::read_to_string(&path) else {
            return;
        };
        if text.is_empty() {
            // Truncated by a writer that has not written yet; its close will bring us back.
            return;
        }
        let (value, note) = match sysfs::parse_kernel_u32(&text) {
            Ok(v) => (v, None),
            // The kernel rejects the write and keeps the register; the file already lost the
            // old value, so fall back to the power-on value.
            Err(reason) => (1, Some(reason)),
        };
        let normal = format!("0x{value:08x}\n");
        if text == normal {
            return;
        }
        if let Some(reason) = note {
            eprintln!(
                "warning: {}: write rejected ({reason}); register reset to 0x00000001",
                path.display()
            );
        }
        if let Err(e) = write_file(&path, &normal, RW) {
            eprintln!("warning: {e}");
        }
    }

    fn apply_numvfs(&mut self, name: &str) {
        let path = sysfs::device_dir(self.root, name).join("sriov_numvfs");
        let Ok(text) = fs::read_to_string(&path) else {
            return;
        };
        if text.is_empty() {
            return;
        }
        let Ok(dev) = read_tree_device(self.root, name) else {
            return;
        };
        let (current, total) = match dev.role {
            Role::Pf { total_vfs, .. } => (
                virtfns(self.root, &dev)
                    .map(|v| v.len() as u32)
                    .unwrap_or(0),
                total_vfs,
            ),
            Role::StaticVf => (0, 0),
            Role::VirtFn { .. } => return,
        };
        let restore = |why: String| {
            eprintln!("warning: {}: {why}; kept {current} VFs", path.display());
            if let Err(e) = write_entries(self.root, None, &numvfs_entries(&dev, current, total)) {
                eprintln!("warning: {e}");
            }
        };
        let requested = match sysfs::parse_kernel_u32(&text) {
            Ok(n) => n,
            Err(reason) => return restore(format!("write rejected ({reason})")),
        };
        if requested == current {
            if text != format!("{current}\n") {
                restore("rewritten in the kernel's format".into());
            }
            return;
        }
        match set_numvfs(self.root, self.dev_root, name, requested) {
            Ok(vfs) => eprintln!("{name}: sriov_numvfs {requested}: {} VFs", vfs.len()),
            Err(e) => restore(format!("write rejected ({e})")),
        }
    }
}
