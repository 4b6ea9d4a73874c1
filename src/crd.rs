//! The `MockAccelNode` custom resource: one cluster-scoped object per node, named after the
//! node and owned by it, whose `status` is the meeting point of the two roles.
//!
//! Two writers share the status through server-side apply with distinct field managers:
//! the node agent owns `devices`, the counters, `preparedClaims`, `agent` and the conditions
//! `DevicesDiscovered` and `PluginRegistered`; the controller owns `pools` and the conditions
//! `SlicesPublished` and `Ready`. `conditions` is a list map keyed by `type` so both can apply
//! their own entries without erasing the other's.

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::inventory::{Device, DeviceType};

/// Field manager of the node agent's server-side applies.
pub const AGENT_FIELD_MANAGER: &str = "mock-accel-node-agent";
/// Field manager of the controller's server-side applies.
pub const CONTROLLER_FIELD_MANAGER: &str = "mock-accel-controller";

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_DEVICES_DISCOVERED: &str = "DevicesDiscovered";
pub const CONDITION_PLUGIN_REGISTERED: &str = "PluginRegistered";
pub const CONDITION_SLICES_PUBLISHED: &str = "SlicesPublished";

/// Desired state of a node's accelerators. The object exists to carry `status`; `spec` only
/// names the node so that a reader need not rely on the object name.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "mock-accel.example.com",
    version = "v1alpha1",
    kind = "MockAccelNode",
    plural = "mockaccelnodes",
    singular = "mockaccelnode",
    shortname = "man",
    status = "MockAccelNodeStatus",
    printcolumn = r#"{"name":"Devices","type":"integer","jsonPath":".status.deviceCount"}"#,
    printcolumn = r#"{"name":"PFs","type":"integer","jsonPath":".status.pfCount"}"#,
    printcolumn = r#"{"name":"VFs","type":"integer","jsonPath":".status.vfCount"}"#,
    printcolumn = r#"{"name":"Claims","type":"integer","jsonPath":".status.preparedClaimCount"}"#,
    printcolumn = r#"{"name":"Slices","type":"string","jsonPath":".status.conditions[?(@.type==\"SlicesPublished\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.agent.heartbeat"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MockAccelNodeSpec {
    /// Name of the Node this object describes (equal to the object's name).
    pub node_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MockAccelNodeStatus {
    /// Devices discovered in the node's sysfs (written by the node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pf_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf_count: Option<i64>,
    /// Claims currently prepared on the node (written by the node agent on every change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_claims: Option<Vec<PreparedClaimStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_claim_count: Option<i64>,
    /// Node agent liveness (written by the node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    /// Published pools (written by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<PoolStatus>>,
    /// Conditions: DevicesDiscovered and PluginRegistered (node agent), SlicesPublished and
    /// Ready (controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// Generation of the object the controller last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One device as the node agent last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// DRA device name (DNS label).
    pub name: String,
    /// Class device name under /sys/class/mock-accel.
    pub sysfs_name: String,
    /// `pf` or `vf`.
    #[serde(rename = "type")]
    pub device_type: String,
    pub uuid: String,
    /// PCI address (BDF).
    pub pci_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_root: Option<String>,
    /// Absent when the kernel reports -1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<i64>,
    /// Bytes.
    pub memory: i64,
    pub capabilities: i64,
    /// VFs: DRA name of the parent PF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physfn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_version: Option<String>,
    /// Status register value at the last scan.
    #[serde(default)]
    pub status_register: i64,
    /// Pool the device is published in.
    pub pool: String,
    /// `Healthy` for every discovered device (no health signal is read yet); a device that
    /// disappears leaves the list instead.
    pub health: String,
    /// `namespace/name` of the claim the device is prepared for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_claim: Option<String>,
}

/// Why a `DeviceStatus` cannot be turned back into a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("device {device:?}: unknown type {value:?} (expected pf or vf)")]
    UnknownType { device: String, value: String },
    #[error("device {device:?}: {field} {value} is out of range")]
    OutOfRange {
        device: String,
        field: &'static str,
        value: i64,
    },
}

impl DeviceStatus {
    pub fn from_device(d: &Device, node: &str, allocated_claim: Option<String>) -> Self {
        DeviceStatus {
            name: d.name.clone(),
            sysfs_name: d.sysfs_name.clone(),
            device_type: d.device_type.as_str().to_string(),
            uuid: d.uuid.clone(),
            pci_address: d.pci_address.clone(),
            pcie_root: d.pcie_root.clone(),
            numa_node: d.numa_node.map(i64::from),
            memory: i64::try_from(d.memory).unwrap_or(i64::MAX),
            capabilities: i64::from(d.capabilities),
            physfn: d.physfn.clone(),
            fw_version: d.fw_version.clone(),
            status_register: i64::from(d.status),
            pool: d.pool(node),
            health: "Healthy".to_string(),
            allocated_claim,
        }
    }

    /// The device model the slices are computed from.
    pub fn to_device(&self) -> Result<Device, StatusError> {
        let device_type = match self.device_type.as_str() {
            "pf" => DeviceType::Pf,
            "vf" => DeviceType::Vf,
            other => {
                return Err(StatusError::UnknownType {
                    device: self.name.clone(),
                    value: other.to_string(),
                });
            }
        };
        let range = |field: &'static str, value: i64| StatusError::OutOfRange {
            device: self.name.clone(),
            field,
            value,
        };
        let numa_node = match self.numa_node {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| range("numaNode", n))?),
        };
        Ok(Device {
            name: self.name.clone(),
            sysfs_name: self.sysfs_name.clone(),
            device_type,
            uuid: self.uuid.clone(),
            memory: u64::try_from(self.memory).map_err(|_| range("memory", self.memory))?,
            pci_address: self.pci_address.clone(),
            pcie_root: self.pcie_root.clone(),
            numa_node,
            physfn: self.physfn.clone(),
            capabilities: u32::try_from(self.capabilities)
                .map_err(|_| range("capabilities", self.capabilities))?,
            status: u32::try_from(self.status_register)
                .map_err(|_| range("statusRegister", self.status_register))?,
            fw_version: self.fw_version.clone(),
        })
    }
}

/// A claim prepared on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreparedClaimStatus {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// DRA device names.
    pub devices: Vec<String>,
    /// Fully qualified CDI device ids handed to the kubelet.
    pub cdi_device_ids: Vec<String>,
    /// RFC 3339 time of the prepare.
    pub prepared_at: String,
}

/// Node agent liveness.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub version: String,
    /// RFC 3339 time of the last heartbeat.
    pub heartbeat: String,
    /// True once the kubelet confirmed the plugin registration.
    pub plugin_registered: bool,
}

/// A published pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub name: String,
    pub generation: i64,
    pub devices: i64,
    pub slices: i64,
}

/// A condition in the usual Kubernetes shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    pub last_transition_time: String,
}

impl Condition {
    /// Builds a condition, keeping `last_transition_time` from `previous` when the status did not
    /// change, so that re-applying an unchanged condition writes nothing new.
    pub fn new(
        type_: &str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
        previous: Option<&[Condition]>,
        now: &str,
    ) -> Self {
        let status = if ok { "True" } else { "False" };
        let last_transition_time = previous
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time,
        }
    }
}

impl MockAccelNodeStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
    }
}

/// The current time in the RFC 3339 form (whole seconds, `Z`) used by every time field of the
/// status: heartbeats, condition transitions, prepare times.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(&MockAccelNode::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let generated = crd_yaml().unwrap();
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/mockaccelnodes.mock-accel.example.com.yaml"
        ))
        .expect("crds/mockaccelnodes.mock-accel.example.com.yaml is missing: run `make crd`");
        assert_eq!(
            generated, committed,
            "crds/ is stale: run `make crd` and commit the result"
        );
    }

    #[test]
    fn crd_is_cluster_scoped_with_status_and_list_map_conditions() {
        let crd = MockAccelNode::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        let json = serde_json::to_value(&crd).unwrap();
        let conditions = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
        assert!(json["spec"]["versions"][0]["subresources"]["status"].is_object());
    }

    #[test]
    fn device_status_round_trips() {
        let d = Device {
            name: "mock0-vf0".into(),
            sysfs_name: "mock0_vf0".into(),
            device_type: DeviceType::Vf,
            uuid: "4e4f4445-312d-4e55-4d41-302d56463000".into(),
            memory: 2147483648,
            pci_address: "0000:11:00.1".into(),
            pcie_root: Some("pci0000:10".into()),
            numa_node: Some(0),
            physfn: Some("mock0".into()),
            capabilities: 1,
            status: 1,
            fw_version: Some("1.0.0".into()),
        };
        let s = DeviceStatus::from_device(&d, "node1", None);
        assert_eq!(s.pool, "node1/numa0");
        assert_eq!(s.to_device().unwrap(), d);
        let bad = DeviceStatus {
            device_type: "gpu".into(),
            ..s
        };
        assert!(bad.to_device().unwrap_err().to_string().contains("gpu"));
    }

    #[test]
    fn condition_keeps_transition_time_when_status_is_unchanged() {
        let old = vec![Condition::new("Ready", true, "Ok", "", None, "t1")];
        assert_eq!(
            Condition::new("Ready", true, "Ok", "", Some(&old), "t2").last_transition_time,
            "t1"
        );
        assert_eq!(
            Condition::new("Ready", false, "No", "", Some(&old), "t2").last_transition_time,
            "t2"
        );
    }
}
