//! Named fail points after each persistent step of prepare, unprepare and rollback.
//!
//! Compiled in only for tests: the unit tests (`cfg(test)`) and builds with the cargo feature
//! `fail-points`, which only the crate's own dev-dependency turns on (so `cargo test` and the
//! `--all-targets` build of the tests and e2e have it; `cargo build --release` does not, and a
//! release binary carries no hook at all: no flag or environment variable can make it fail on
//! purpose). With the feature, the real process reads [`ENV`] once: a comma-separated list of
//! `point=abort` (the process aborts there, as a kill -9 would: no rollback, no cleanup) or
//! `point=error` (the step fails once with an I/O error), which `tests/agent_crash.rs` uses to
//! kill the real binary at every step. In unit tests, a test arms a point for one plugin directory (each test has its own, so tests running in
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

/// Every point, for the environment variable's check.
#[cfg(any(test, feature = "fail-points"))]
pub const ALL: [&str; 8] = [
    PREPARE_STEPS[0],
    PREPARE_STEPS[1],
    PREPARE_STEPS[2],
    PREPARE_STEPS[3],
    UNPREPARE_STEPS[0],
    UNPREPARE_STEPS[1],
    UNPREPARE_STEPS[2],
    ROLLBACK_RELEASED,
];

/// The environment variable that arms points in a process built with the `fail-points` feature.
#[cfg(any(test, feature = "fail-points"))]
pub const ENV: &str = "MOCK_ACCEL_FAIL_POINTS";

/// Passes the fail point `name` of the preparer working in `plugin_dir`.
#[cfg(not(any(test, feature = "fail-points")))]
#[inline(always)]
pub fn hit(_plugin_dir: &std::path::Path, _name: &'static str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(any(test, feature = "fail-points"))]
pub use self::armed::hit;
#[cfg(test)]
pub use self::armed::{Action, arm, parse};

#[cfg(any(test, feature = "fail-points"))]
mod armed {
    use std::{
        path::{Path, PathBuf},
        sync::{Mutex, Once},
    };

    use super::{ALL, ENV};

    /// What an armed point does when passed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Action {
        /// Stop the call there, as the process dying would (unit tests: a panic on the
        /// blocking task, which runs no rollback).
        #[cfg_attr(not(test), allow(dead_code))]
        Crash,
        /// Abort the whole process (the environment variable's `abort`).
        Abort,
        /// Return an I/O error, once.
        Fail,
    }

    /// Armed points: (plugin dir, point, action); an empty plugin dir matches every preparer
    /// (points armed through the environment).
    static ARMED: Mutex<Vec<(PathBuf, &'static str, Action)>> = Mutex::new(Vec::new());
    static FROM_ENV: Once = Once::new();

    /// Parses the environment variable's value: `point=abort|error`, comma-separated.
    pub fn parse(value: &str) -> Result<Vec<(&'static str, Action)>, String> {
        let mut out = Vec::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (point, action) = item
                .split_once('=')
                .ok_or_else(|| format!("{ENV}: {item:?} is not point=abort or point=error"))?;
            let point = ALL.iter().copied().find(|p| *p == point).ok_or_else(|| {
                format!(
                    "{ENV}: unknown fail point {point:?} (known: {})",
                    ALL.join(", ")
                )
            })?;
            let action = match action {
                "abort" => Action::Abort,
                "error" => Action::Fail,
                other => {
                    return Err(format!(
                        "{ENV}: unknown action {other:?} for {point} (abort or error)"
                    ));
                }
            };
            out.push((point, action));
        }
        Ok(out)
    }

    /// Arms the points of the environment variable, once per process. A malformed value
    /// aborts: a test that names a point wrongly must not pass because nothing fired.
    fn arm_from_env() {
        FROM_ENV.call_once(|| {
            let Ok(value) = std::env::var(ENV) else {
                return;
            };
            match parse(&value) {
                Ok(points) => {
                    let mut armed = lock();
                    for (point, action) in points {
                        armed.push((PathBuf::new(), point, action));
                    }
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::abort();
                }
            }
        });
    }

    /// Arms `name` for the preparer working in `plugin_dir`; a point fires once.
    #[cfg(test)]
    pub fn arm(plugin_dir: &Path, name: &'static str, action: Action) {
        lock().push((plugin_dir.to_path_buf(), name, action));
    }

    fn lock() -> std::sync::MutexGuard<'static, Vec<(PathBuf, &'static str, Action)>> {
        ARMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn hit(plugin_dir: &Path, name: &'static str) -> std::io::Result<()> {
        arm_from_env();
        let fired = {
            let mut armed = lock();
            let at = armed.iter().position(|(dir, n, _)| {
                (dir == plugin_dir || dir.as_os_str().is_empty()) && *n == name
            });
            at.map(|i| armed.remove(i).2)
        };
        match fired {
            None => Ok(()),
            Some(Action::Crash) => panic!("fail point {name}: crash"),
            Some(Action::Abort) => {
                eprintln!("fail point {name}: abort");
                std::process::abort()
            }
            Some(Action::Fail) => Err(std::io::Error::other(format!("fail point {name}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_value_names_known_points_and_actions() {
        assert_eq!(
            parse("prepare/cdi=error, rollback/released=abort").unwrap(),
            [
                ("prepare/cdi", Action::Fail),
                ("rollback/released", Action::Abort)
            ]
        );
        assert_eq!(parse("").unwrap(), []);
        for (bad, needle) in [
            ("prepare/cdi", "is not point=abort"),
            (
                "prepare/nothing=abort",
                "unknown fail point \"prepare/nothing\"",
            ),
            ("prepare/cdi=explode", "unknown action \"explode\""),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(needle) && err.contains(ENV), "{bad}: {err}");
        }
    }
}
