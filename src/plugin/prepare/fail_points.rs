//! Named fail points after each persistent step of prepare, unprepare and rollback.
//!
//! Compiled in only for unit tests (`cfg(test)`): release and e2e builds carry no hook at
//! all, so no flag or environment variable can make a production agent fail on purpose. A
//! test arms a point for one plugin directory (each test has its own, so tests running in
//! parallel do not see each other's points) with a [`Action`]: `Crash` panics on the blocking
//! task, which stops the call exactly there without running any rollback, as a kill -9 would
//! (the test then drops the preparer, which closes the lock file, and starts a new one on
//! the same directories); `Fail` returns an I/O error once, as a failing disk would.

/// The points, in the order a prepare and an unprepare pass them.
pub const PREPARE_STEPS: [&str; 4] = [
    "prepare/checkpoint-started",
    "prepare/registers",
    "prepare/cdi",
    "prepare/checkpoint-completed",
];
pub const UNPREPARE_STEPS: [&str; 3] = [
    "unprepare/registers",
    "unprepare/cdi",
    "unprepare/checkpoint",
];
/// Rollback, after the registers were restored and the spec removed.
pub const ROLLBACK_RELEASED: &str = "rollback/released";

/// Passes the fail point `name` of the preparer working in `plugin_dir`.
#[cfg(not(test))]
#[inline(always)]
pub fn hit(_plugin_dir: &std::path::Path, _name: &'static str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
pub use self::armed::{Action, arm, hit};

#[cfg(test)]
mod armed {
    use std::{
        path::{Path, PathBuf},
        sync::Mutex,
    };

    /// What an armed point does when passed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Action {
        /// Stop the call there, as the process dying would.
        Crash,
        /// Return an I/O error, once.
        Fail,
    }

    static ARMED: Mutex<Vec<(PathBuf, &'static str, Action)>> = Mutex::new(Vec::new());

    /// Arms `name` for the preparer working in `plugin_dir`; a point fires once.
    pub fn arm(plugin_dir: &Path, name: &'static str, action: Action) {
        lock().push((plugin_dir.to_path_buf(), name, action));
    }

    fn lock() -> std::sync::MutexGuard<'static, Vec<(PathBuf, &'static str, Action)>> {
        ARMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn hit(plugin_dir: &Path, name: &'static str) -> std::io::Result<()> {
        let fired = {
            let mut armed = lock();
            let at = armed
                .iter()
                .position(|(dir, n, _)| dir == plugin_dir && *n == name);
            at.map(|i| armed.remove(i).2)
        };
        match fired {
            None => Ok(()),
            Some(Action::Crash) => panic!("fail point {name}: crash"),
            Some(Action::Fail) => Err(std::io::Error::other(format!("fail point {name}"))),
        }
    }
}
