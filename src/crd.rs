//! The `MockAccelNode` custom resource: one cluster-scoped object per node, named after the
//! node and owned by it, whose `status` is the meeting point of the two roles.
//!
//! Two writers share the status through server-side apply with distinct field managers:
//! the node agent owns `devices`, the counters, `preparedClaims`, `agent` and the conditions
//! `DevicesDiscovered` and `PluginRegistered`; the controller owns `pools` and the conditions
//! `SlicesPublished` and `Ready`. The agent also reports `SpecValid`: whether the fixture
//! fields of `spec` (module [`crate::fixture`]) are valid for the node; and, under a field
//! manager of its own ([`SRIOV_FIELD_MANAGER`]), `sriov` and `SriovReconciled`.
//! `conditions` is a list map keyed by `type` so each can apply its own entries without
//! erasing the others'.

use jiff::Timestamp;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    fixture::{FaultSpec, HealthSpec, SimulationSpec, SriovSpec},
    inventory::{Device, DeviceType, Health},
};

/// Field manager of the node agent's server-side applies.
pub const AGENT_FIELD_MANAGER: &str = "mock-accel-node-agent";
/// Field manager of the controller's server-side applies.
pub const CONTROLLER_FIELD_MANAGER: &str = "mock-accel-controller";

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_DEVICES_DISCOVERED: &str = "DevicesDiscovered";
pub const CONDITION_PLUGIN_REGISTERED: &str = "PluginRegistered";
pub const CONDITION_SLICES_PUBLISHED: &str = "SlicesPublished";
/// Node agent: whether `spec` is valid for this node (reason `Valid` or `Invalid`, the message
/// lists every problem).
pub const CONDITION_SPEC_VALID: &str = "SpecValid";
/// Node agent: whether every PF of `spec.sriov` has its `numVFs` (reasons `Reconciled`,
/// `PreparedVFs` when a change would remove prepared VFs, `Failed`).
pub const CONDITION_SRIOV_RECONCILED: &str = "SriovReconciled";
/// Field manager of the node agent's SR-IOV report (`status.sriov` and its condition).
pub const SRIOV_FIELD_MANAGER: &str = "mock-accel-node-agent-sriov";

/// Desired state of a node's accelerators: the programmable test fixture. Users (cluster
/// admins) write `spec`; the node agent only creates the object with `nodeName` and never
/// changes `spec` afterwards (enforced by config/admission-policy.yaml).
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema,
)]
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
    printcolumn = r#"{"name":"Unhealthy","type":"integer","jsonPath":".status.unhealthyDeviceCount"}"#,
    printcolumn = r#"{"name":"Spec","type":"string","jsonPath":".status.conditions[?(@.type==\"SpecValid\")].reason"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.agent.heartbeat"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MockAccelNodeSpec {
    /// Name of the Node this object describes (equal to the object's name).
    pub node_name: String,
    /// Simulated topology, for node agents started with `--simulate`; ignored otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<SimulationSpec>,
    /// Desired VF count per SR-IOV PF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<Vec<SriovSpec>>,
    /// Declared device health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<HealthSpec>>,
    /// Injected kubelet plugin failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Vec<FaultSpec>>,
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
    /// Devices whose health is not `Healthy` (written by the node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_device_count: Option<i64>,
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
    #[schemars(with = "Option<Vec<ConditionSchema>>")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// SR-IOV: desired and actual VF count of each PF listed in `spec.sriov` (node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<Vec<SriovStatus>>,
    /// Generation of the object the controller last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Desired and actual VF count of one PF of `spec.sriov`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SriovStatus {
    /// DRA device name of the PF.
    pub pf: String,
    /// `spec.sriov[].numVFs`.
    pub desired: i64,
    /// The PF's `sriov_numvfs` as last read; absent when the PF is not on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<i64>,
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
    #[schemars(with = "String")]
    pub device_type: Reported<DeviceType>,
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
    #[schemars(with = "String")]
    pub health: Reported<Health>,
    /// `namespace/name` of the claim the device is prepared for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_claim: Option<String>,
}

/// A value of an enumerated status field as a node agent wrote it: one this version knows, or
/// the raw string of one it does not (a newer or a broken agent). Unknown values are kept, not
/// refused, so that one odd device never makes a whole `MockAccelNode` unreadable; the
/// controller names them when it leaves the device out. Serializes as the plain string.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Reported<T> {
    Known(T),
    Unknown(String),
}

impl<T> From<T> for Reported<T> {
    fn from(value: T) -> Self {
        Reported::Known(value)
    }
}

/// An empty unknown value, as an absent string field reads.
impl<T> Default for Reported<T> {
    fn default() -> Self {
        Reported::Unknown(String::new())
    }
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
            device_type: d.device_type.into(),
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
            health: Health::Healthy.into(),
            allocated_claim,
        }
    }

    /// The device model the slices are computed from.
    pub fn to_device(&self) -> Result<Device, StatusError> {
        let device_type = match &self.device_type {
            Reported::Known(t) => *t,
            Reported::Unknown(other) => {
                return Err(StatusError::UnknownType {
                    device: self.name.clone(),
                    value: other.clone(),
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

// The wire shape of a condition, for the CRD schema only: the status holds k8s-openapi's
// `Condition`, whose own schema would tighten the published one (`message` required, `format:
// date-time`, `observedGeneration`); the objects are the same JSON either way.
/// A condition in the usual Kubernetes shape.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Condition")]
#[allow(dead_code)] // never built: only its schema is used
struct ConditionSchema {
    #[serde(rename = "type")]
    type_: String,
    /// `True`, `False` or `Unknown`.
    status: String,
    reason: String,
    #[serde(default)]
    message: String,
    /// RFC 3339 time of the last change of `status`.
    last_transition_time: String,
}

/// Builds a condition, keeping `last_transition_time` from `previous` when the status did not
/// change, so that re-applying an unchanged condition writes nothing new. `now` should be in
/// whole seconds, as the API server stores it.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    previous: Option<&[Condition]>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        last_transition_time,
        observed_generation: None,
    }
}

/// Longest condition message either writer sets; the API accepts 32 KiB, people read far less.
pub const MESSAGE_MAX: usize = 1024;

/// `s` cut to at most [`MESSAGE_MAX`] bytes on a character boundary, ending in `...` when cut.
pub fn truncate_message(mut s: String) -> String {
    if s.len() > MESSAGE_MAX {
        let mut end = MESSAGE_MAX - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

impl MockAccelNodeStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
    }
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(&MockAccelNode::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::devices;

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
        let d = devices::vf("mock0_vf0", "mock0")
            .uuid("4e4f4445-312d-4e55-4d41-302d56463000")
            .memory(2147483648)
            .pci_address("0000:11:00.1")
            .numa(Some(0))
            .status(1)
            .fw_version(Some("1.0.0"))
            .build();
        let s = DeviceStatus::from_device(&d, "node1", None);
        assert_eq!(s.pool, "node1/numa0");
        assert_eq!(s.to_device().unwrap(), d);
        let bad = DeviceStatus {
            device_type: Reported::Unknown("gpu".into()),
            ..s
        };
        assert!(bad.to_device().unwrap_err().to_string().contains("gpu"));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = truncate_message("é".repeat(MESSAGE_MAX));
        assert!(s.len() <= MESSAGE_MAX && s.ends_with("..."));
        assert_eq!(truncate_message("short".into()), "short");
    }

    #[test]
    fn device_status_wire_format_is_unchanged() {
        let d = devices::vf("mock0_vf0", "mock0").build();
        let json = serde_json::to_value(DeviceStatus::from_device(&d, "node1", None)).unwrap();
        assert_eq!(json["type"], "vf");
        assert_eq!(json["health"], "Healthy");
        let mut s: DeviceStatus = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(s.device_type, Reported::Known(DeviceType::Vf));
        assert_eq!(s.health, Reported::Known(Health::Healthy));

        let mut odd = json;
        odd["type"] = "gpu".into();
        odd["health"] = "Unhealthy".into();
        s = serde_json::from_value(odd.clone()).unwrap();
        assert_eq!(s.device_type, Reported::Unknown("gpu".into()));
        assert_eq!(s.health, Reported::Known(Health::Unhealthy));
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            odd,
            "unknown values round-trip"
        );
    }

    #[test]
    fn condition_keeps_transition_time_when_status_is_unchanged() {
        let t1: Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        let t2: Timestamp = "2026-01-01T00:00:02Z".parse().unwrap();
        let old = vec![condition("Ready", true, "Ok", "", None, t1)];
        assert_eq!(
            condition("Ready", true, "Ok", "", Some(&old), t2).last_transition_time,
            Time(t1)
        );
        assert_eq!(
            condition("Ready", false, "No", "", Some(&old), t2).last_transition_time,
            Time(t2)
        );
    }

    #[test]
    fn conditions_keep_their_json_shape() {
        let t1: Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        let json = serde_json::to_value(condition("Ready", true, "Ok", "fine", None, t1)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "Ready", "status": "True", "reason": "Ok", "message": "fine",
                "lastTransitionTime": "2026-01-01T00:00:01Z",
            })
        );
        // Objects written before, with no message, still read.
        let old = serde_json::json!({
            "type": "Ready", "status": "False", "reason": "No",
            "lastTransitionTime": "2026-01-01T00:00:01Z",
        });
        let c: Condition = serde_json::from_value(old).unwrap();
        assert_eq!((c.message.as_str(), c.last_transition_time), ("", Time(t1)));
    }
}
