//! File names of the plugin's two sockets, with and without a rolling update.
//!
//! Without a pod UID the names are fixed: `<driver>-reg.sock` in the kubelet's registry
//! directory and `dra.sock` in the plugin directory. With the pod's UID (downward API,
//! `--pod-uid`), two node-agent pods of one node (a DaemonSet rolling update with `maxSurge`)
//! each bind sockets of their own, which the kubelet's plugin watcher registers as two instances
//! of the driver; it prefers the newest and keeps the other until its registration socket goes
//! away, so calls never find no plugin. The registration socket follows the kubelet plugin
//! library's order of preference, the first whose full path fits in a Unix socket path:
//!
//! 1. `<driver>-<pod UID>-reg.sock`
//! 2. `<driver>-<base64url(SHA-256(pod UID))[:8 bytes]>-reg.sock`
//! 3. `dra-<base64url(SHA-256(driver NUL pod UID))[:16 bytes]>-reg.sock`
//!
//! The DRA socket is `dra-<pod UID>.sock`, or `dra-<base64url(SHA-256(pod UID))[:8 bytes]>.sock`
//! when that does not fit (the registration names its path, so the kubelet needs no convention
//! for it). Pure functions; the pod UID becomes part of a file name, so it is checked first.

use std::path::Path;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::server::MAX_SOCKET_PATH_BYTES;

/// The longest pod UID accepted (Kubernetes UIDs are 36-character UUIDs).
pub const MAX_POD_UID_BYTES: usize = 64;

/// Why a pod UID cannot be part of a socket name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodUidError {
    #[error("--pod-uid is empty; leave it unset to use the fixed socket names")]
    Empty,
    #[error(
        "--pod-uid {uid:?} is {len} bytes long, more than {MAX_POD_UID_BYTES}; pass the pod's metadata.uid"
    )]
    TooLong { uid: String, len: usize },
    #[error(
        "--pod-uid {uid:?} contains {found:?} at byte {at}; a pod UID has only letters, digits and '-' (pass the pod's metadata.uid)"
    )]
    BadCharacter { uid: String, found: char, at: usize },
}

/// Checks that `uid` can be part of a file name: 1 to 64 bytes of ASCII letters, digits and `-`.
pub fn check_pod_uid(uid: &str) -> Result<(), PodUidError> {
    if uid.is_empty() {
        return Err(PodUidError::Empty);
    }
    if uid.len() > MAX_POD_UID_BYTES {
        return Err(PodUidError::TooLong {
            uid: uid.chars().take(MAX_POD_UID_BYTES).collect(),
            len: uid.len(),
        });
    }
    if let Some((at, found)) = uid
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(PodUidError::BadCharacter {
            uid: uid.to_string(),
            found,
            at,
        });
    }
    Ok(())
}

fn digest(data: &[u8], bytes: usize) -> String {
    let sum = Sha256::digest(data);
    URL_SAFE_NO_PAD.encode(&sum[..bytes])
}

fn fits(dir: &Path, name: &str) -> bool {
    dir.join(name).as_os_str().len() <= MAX_SOCKET_PATH_BYTES
}

/// The registration socket's file name in `registry_dir`.
pub fn registration_socket_file(
    registry_dir: &Path,
    driver: &str,
    pod_uid: Option<&str>,
) -> String {
    let Some(uid) = pod_uid else {
        return format!("{driver}-reg.sock");
    };
    let mut driver_uid = Vec::with_capacity(driver.len() + 1 + uid.len());
    driver_uid.extend_from_slice(driver.as_bytes());
    driver_uid.push(0);
    driver_uid.extend_from_slice(uid.as_bytes());
    let candidates = [
        format!("{driver}-{uid}-reg.sock"),
        format!("{driver}-{}-reg.sock", digest(uid.as_bytes(), 8)),
        format!("dra-{}-reg.sock", digest(&driver_uid, 16)),
    ];
    let [first, second, last] = candidates;
    if fits(registry_dir, &first) {
        first
    } else if fits(registry_dir, &second) {
        second
    } else {
        last
    }
}

/// The DRA socket's file name in `plugin_dir`.
pub fn dra_socket_file(plugin_dir: &Path, pod_uid: Option<&str>) -> String {
    let Some(uid) = pod_uid else {
        return super::server::DRA_SOCKET_NAME.to_string();
    };
    let full = format!("dra-{uid}.sock");
    if fits(plugin_dir, &full) {
        full
    } else {
        format!("dra-{}.sock", digest(uid.as_bytes(), 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRIVER: &str = "mock-accel.example.com";
    const UID: &str = "0f6e5d4c-3b2a-4190-8a7b-6c5d4e3f2a10";

    #[test]
    fn without_a_pod_uid_the_names_are_fixed() {
        let dir = Path::new("/var/lib/kubelet/plugins_registry");
        assert_eq!(
            registration_socket_file(dir, DRIVER, None),
            "mock-accel.example.com-reg.sock"
        );
        assert_eq!(dra_socket_file(dir, None), "dra.sock");
    }

    #[test]
    fn the_pod_uid_is_in_the_names_when_they_fit() {
        let registry = Path::new("/var/lib/kubelet/plugins_registry");
        let plugin = Path::new("/var/lib/kubelet/plugins/mock-accel.example.com");
        assert_eq!(
            registration_socket_file(registry, DRIVER, Some(UID)),
            format!("{DRIVER}-{UID}-reg.sock")
        );
        assert_eq!(
            dra_socket_file(plugin, Some(UID)),
            format!("dra-{UID}.sock")
        );
    }

    #[test]
    fn long_directories_get_hashed_names_that_fit_and_differ_per_pod() {
        let other = "1f6e5d4c-3b2a-4190-8a7b-6c5d4e3f2a10";
        for len in [50, 60, 70] {
            let dir = format!("/{}", "d".repeat(len - 1));
            let dir = Path::new(&dir);
            let a = registration_socket_file(dir, DRIVER, Some(UID));
            let b = registration_socket_file(dir, DRIVER, Some(other));
            assert_ne!(a, b);
            assert!(fits(dir, &a), "{len}: {a}");
            assert!(a.ends_with("-reg.sock") && !a.contains(UID), "{a}");
            let d = dra_socket_file(dir, Some(UID));
            assert!(fits(dir, &d) && d.starts_with("dra-"), "{d}");
            assert_ne!(d, dra_socket_file(dir, Some(other)));
        }
        // The three forms, in order, as the directory grows.
        // 50 bytes: the UID form does not fit, the 8-byte hash does.
        let mid = format!("/tmp/{}/plugins_registry", "m".repeat(28));
        let name = registration_socket_file(Path::new(&mid), DRIVER, Some(UID));
        assert!(
            name.starts_with(&format!("{DRIVER}-")) && name.len() == DRIVER.len() + 1 + 11 + 9,
            "{name}"
        );
        // 68 bytes: only the `dra-` form fits.
        let long = format!("/tmp/{}/plugins_registry", "l".repeat(46));
        let name = registration_socket_file(Path::new(&long), DRIVER, Some(UID));
        assert!(
            name.starts_with("dra-") && name.len() == 4 + 22 + 9,
            "{name}"
        );
    }

    #[test]
    fn pod_uids_that_cannot_be_file_names_are_refused_with_the_reason() {
        assert_eq!(check_pod_uid(UID), Ok(()));
        assert_eq!(check_pod_uid(""), Err(PodUidError::Empty));
        let err = check_pod_uid("../../etc").unwrap_err();
        assert!(err.to_string().contains("'.' at byte 0"), "{err}");
        let err = check_pod_uid(&"a".repeat(65)).unwrap_err();
        assert!(err.to_string().contains("65 bytes"), "{err}");
        let err = check_pod_uid("abc/def").unwrap_err();
        assert!(err.to_string().contains("'/' at byte 3"), "{err}");
    }
}
