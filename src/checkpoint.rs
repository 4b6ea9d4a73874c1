//! The kubelet plugin's record of what it prepared, kept in `<plugin dir>/checkpoint.json` so
//! that a restart, a rolling update or a reboot never leaks a status register, a CDI spec or a
//! claim: unprepare receives only a claim's UID, namespace and name, and must find here which
//! devices to release and how.
//!
//! Each claim goes through two phases: `PrepareStarted` is recorded before the first side
//! effect (with the register values to restore), `PrepareCompleted` after the last. An entry
//! still `PrepareStarted` after a restart is a prepare that was interrupted, to be rolled back.
//!
//! The file is versioned and checksummed: `{"version": 1, "checksum": "sha256:<hex>",
//! "payload": {...}}`, the checksum covering the canonical JSON (object keys sorted, no
//! whitespace) of the payload. Encoding and decoding are pure; `load` and `store` are the thin
//! file edges (atomic replace by a rename, not flushed to disk).
//!
//! The file has to survive a crash of the node agent, not a power loss: what it records (status
//! registers written, CDI specs in `/var/run/cdi`) is gone after a reboot, when the kubelet
//! prepares its pods' claims again, and a checkpoint written in an earlier boot is set aside at
//! start (`plugin::prepare::boot`). An atomic rename without `fsync` gives exactly that (see
//! `atomic_file`); the flushes it saves were most of a prepare's time.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::atomic_file;

/// The format version this driver writes and reads.
pub const CHECKPOINT_VERSION: u64 = 1;

/// File name inside the plugin data directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// Every claim this node has started or finished preparing, by claim UID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimEntry>,
}

/// Where a claim's prepare stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrepareState {
    /// Side effects may have happened; not all of them are known to be done.
    PrepareStarted,
    /// Registers written, CDI spec written: the kubelet got (or will get) the devices.
    PrepareCompleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimEntry {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub state: PrepareState,
    /// One entry per allocation result of this driver, in allocation order.
    pub devices: Vec<DeviceEntry>,
    /// Fully qualified CDI ids handed to the kubelet.
    pub cdi_device_ids: Vec<String>,
    /// RFC 3339 time the prepare started.
    pub prepared_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceEntry {
    /// DRA device name.
    pub device: String,
    pub sysfs_name: String,
    pub pool: String,
    /// Base request names (`main` for `main/sub`).
    pub request_names: Vec<String>,
    #[serde(default)]
    pub admin_access: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// Bytes of the device's memory this share consumes (consumable capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_memory: Option<u64>,
    /// Present when prepare writes this device's status register: the value it read before,
    /// which a rollback restores. Admin-access results (and a repeated device) leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_previous: Option<u32>,
}

impl ClaimEntry {
    /// `namespace/name`, the form `MockAccelNode.status` shows.
    pub fn claim_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why bytes are not a checkpoint this driver can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Corrupt(String),
    #[error("version {0}")]
    UnsupportedVersion(u64),
}

/// A checkpoint file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "checkpoint {path} is corrupt ({reason}); prepare is refused so that no device is handed out twice. \
         Unprepare still works. To recover: stop the pods using this driver's claims on this node, \
         move the file aside and restart the node agent (or restore the file from a backup)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "checkpoint {path} has format version {found}, this driver reads version {CHECKPOINT_VERSION}; \
         prepare is refused. Run a driver release that reads version {found}, or drain the node and move the file aside"
    )]
    UnsupportedVersion { path: PathBuf, found: u64 },
    #[error(
        "checkpoint {path}: {source} ({})",
        crate::atomic_file::remedy(
            source,
            "is the plugin data directory writable by the node agent?"
        )
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CheckpointError {
    /// Corrupt or of an unknown version: the content cannot be trusted, as opposed to a
    /// file that could not be read or written at all.
    pub fn is_unusable_content(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::UnsupportedVersion { .. })
    }
}

/// `<plugin dir>/checkpoint.json`.
pub fn checkpoint_path(plugin_dir: &Path) -> PathBuf {
    plugin_dir.join(CHECKPOINT_FILE)
}

/// The file content for `checkpoint`.
pub fn encode(checkpoint: &Checkpoint) -> Vec<u8> {
    // A tree of strings, numbers, bools and maps: serializing it to a Value cannot fail.
    let payload = serde_json::to_value(checkpoint).unwrap_or(Value::Null);
    let envelope = serde_json::json!({
        "version": CHECKPOINT_VERSION,
        "checksum": checksum(&payload),
        "payload": payload,
    });
    let mut out = canonical_json(&envelope);
    out.push(b'\n');
    out
}

/// Parses file content: the version first (a newer format may change anything else), then the
/// checksum of the payload, then the payload itself.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
    let corrupt = |what: String| DecodeError::Corrupt(what);
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    let version = value
        .get("version")
        .ok_or_else(|| corrupt("no version field".into()))?
        .as_u64()
        .ok_or_else(|| corrupt("version is not a number".into()))?;
    if version != CHECKPOINT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let recorded = value
        .get("checksum")
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt("no checksum field".into()))?;
    let payload = value
        .get("payload")
        .ok_or_else(|| corrupt("no payload field".into()))?;
    let actual = checksum(payload);
    if recorded != actual {
        return Err(corrupt(format!(
            "checksum mismatch: recorded {recorded}, content has {actual}"
        )));
    }
    Checkpoint::deserialize(payload).map_err(|e| corrupt(format!("unexpected payload: {e}")))
}

fn checksum(payload: &Value) -> String {
    let digest = Sha256::digest(canonical_json(payload));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// JSON with object keys sorted at every level and no whitespace, whatever map type
/// `serde_json` was built with, so that the checksum does not depend on key order.
fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Strings, numbers, bools and null always serialize.
    out.extend_from_slice(value.to_string().as_bytes());
}

/// Reads the checkpoint; a missing file is an empty checkpoint (nothing prepared yet).
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    decode(&bytes).map_err(|e| match e {
        DecodeError::Corrupt(reason) => CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason,
        },
        DecodeError::UnsupportedVersion(found) => CheckpointError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
        },
    })
}

/// Replaces the checkpoint atomically (content into the temporary sibling, then an exchange
/// with the file, see [`atomic_file::write_exchanging`]; the module comment says why it is not
/// flushed to disk).
pub fn store(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    store_encoded(path, &encode(checkpoint))
}

/// [`store`] for content already [`encode`]d.
pub fn store_encoded(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    atomic_file::write_exchanging(path, bytes).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let entry = |uid: &str, state| ClaimEntry {
            uid: uid.into(),
            namespace: "default".into(),
            name: format!("claim-{uid}"),
            state,
            devices: vec![
                DeviceEntry {
                    device: "mock0-vf0".into(),
                    sysfs_name: "mock0_vf0".into(),
                    pool: "node1/numa0".into(),
                    request_names: vec!["vf".into()],
                    admin_access: false,
                    share_id: None,
                    consumed_memory: None,
                    register_previous: Some(1),
                },
                DeviceEntry {
                    device: "mock1".into(),
                    sysfs_name: "mock1".into(),
                    pool: "node1/numa1".into(),
                    request_names: vec!["pf".into()],
                    admin_access: true,
                    share_id: Some("s1".into()),
                    consumed_memory: Some(8 << 30),
                    register_previous: None,
                },
            ],
            cdi_device_ids: vec![format!("mock-accel.example.com/accel={uid}-mock0-vf0")],
            prepared_at: "2026-11-27T13:00:00Z".into(),
        };
        let mut cp = Checkpoint::default();
        cp.claims
            .insert("u1".into(), entry("u1", PrepareState::PrepareCompleted));
        cp.claims
            .insert("u2".into(), entry("u2", PrepareState::PrepareStarted));
        cp
    }

    #[test]
    fn round_trips() {
        let cp = sample();
        let bytes = encode(&cp);
        assert_eq!(decode(&bytes).unwrap(), cp);
        assert_eq!(
            decode(&encode(&Checkpoint::default())).unwrap(),
            Checkpoint::default()
        );
    }

    #[test]
    fn encoding_is_versioned_and_stable() {
        let bytes = encode(&sample());
        assert_eq!(bytes, encode(&sample()));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["version"], 1);
        assert!(v["checksum"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(v["payload"]["claims"]["u2"]["state"], "PrepareStarted");
        assert_eq!(
            v["payload"]["claims"]["u1"]["devices"][0]["registerPrevious"],
            1
        );
    }

    #[test]
    fn key_order_does_not_change_the_checksum() {
        let bytes = encode(&sample());
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        // Pretty printing (another layout of the same content) still decodes.
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        assert_eq!(decode(&pretty).unwrap(), sample());
    }

    #[test]
    fn a_changed_value_is_caught_by_the_checksum() {
        let text = String::from_utf8(encode(&sample())).unwrap();
        let tampered = text.replacen("\"registerPrevious\":1", "\"registerPrevious\":7", 1);
        assert_ne!(text, tampered);
        match decode(tampered.as_bytes()) {
            Err(DecodeError::Corrupt(reason)) => assert!(reason.contains("checksum"), "{reason}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[test]
    fn truncation_and_garbage_are_corrupt() {
        let bytes = encode(&sample());
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 3] {
            assert!(
                matches!(decode(&bytes[..cut]), Err(DecodeError::Corrupt(_))),
                "cut at {cut}"
            );
        }
        for junk in [
            &b"null"[..],
            b"[]",
            b"{}",
            b"{\"version\":\"1\"}",
            b"{\"version\":1}",
        ] {
            assert!(
                matches!(decode(junk), Err(DecodeError::Corrupt(_))),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn other_versions_are_refused_before_anything_else() {
        let v = serde_json::json!({"version": 2, "whatever": "new format"});
        assert_eq!(
            decode(v.to_string().as_bytes()),
            Err(DecodeError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn file_edges_name_the_file_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(dir.path());
        assert_eq!(load(&path).unwrap(), Checkpoint::default());

        store(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), sample());

        std::fs::write(&path, b"{\"version\":1,\"checks").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.is_unusable_content());
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("move the file aside"), "{msg}");

        std::fs::write(&path, br#"{"version":9}"#).unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, CheckpointError::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );

        let err = store(&dir.path().join("nope/checkpoint.json"), &sample()).unwrap_err();
        assert!(!err.is_unusable_content());
        assert!(err.to_string().contains("nope/checkpoint.json"), "{err}");
    }
}
