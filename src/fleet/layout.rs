//! What a fleet consists of, computed without touching the API: the names of its nodes, the
//! devices each one reports (the canonical layout of a node, a PF and two static VFs per card,
//! cards alternating between two NUMA nodes, scaled to any number of devices), the Node, Lease
//! and MockAccelNode objects, the agent status a node agent would write for them, and when each
//! node's heartbeat is due. [`super`] only sends these to the API server.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::{
    agent::status::{AgentReport, agent_status},
    clock::rfc3339,
    crd::{MockAccelNodeSpec, MockAccelNodeStatus},
    inventory::{Device, DeviceType, Inventory},
    names,
    sim::model::{PF_MEMORY, VF_MEMORY},
    sysfs::Bdf,
};

/// Label on every object a fleet creates; its value is the fleet's name (the node name prefix
/// without a trailing `-`). `fleet --delete` selects by it.
pub const LABEL_FLEET: &str = "mock-accel.example.com/fleet";
/// NoSchedule taint on every fleet Node (value: the fleet's name), so that only pods that
/// tolerate it land there: nothing runs on a fleet node.
pub const TAINT_FLEET: &str = "mock-accel.example.com/fleet";
/// Namespace of the kubelets' node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration a kubelet uses (`nodeLeaseDurationSeconds`).
pub const NODE_LEASE_SECONDS: i64 = 40;
/// Static VFs per card, as in the canonical node.
const VFS_PER_CARD: usize = 2;
/// NUMA nodes the cards alternate between, as in the canonical node.
const NUMA_NODES: usize = 2;
/// Cards per PCI domain and NUMA node: root ports `RR+1` to `RR+15` (as `sim` places PFs).
const CARDS_PER_DOMAIN: usize = 15;
/// Largest number of devices per node `fleet` accepts (a 4,096 device node is the largest
/// the discovery bench measures).
pub const MAX_DEVICES_PER_NODE: usize = 4096;

/// A fleet's shape, checked by [`Fleet::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    /// Node name prefix, e.g. `fleet-`.
    pub prefix: String,
    pub nodes: usize,
    pub devices_per_node: usize,
}

/// Arguments that cannot make a fleet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "--prefix {0:?}: the fleet's name (the prefix without a trailing '-') must be a label value: 1-63 of [a-z0-9.-], alphanumeric at both ends"
    )]
    Prefix(String),
    #[error(
        "--prefix {prefix:?}: node name {example:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
    )]
    NodeName { prefix: String, example: String },
    #[error("--devices-per-node {0} must be between 1 and {MAX_DEVICES_PER_NODE}")]
    Devices(usize),
}

impl Fleet {
    pub fn new(prefix: &str, nodes: usize, devices_per_node: usize) -> Result<Self, LayoutError> {
        let fleet = Fleet {
            prefix: prefix.to_string(),
            nodes,
            devices_per_node,
        };
        let name = fleet.name();
        if name.is_empty() || !names::is_label_value(&name) {
            return Err(LayoutError::Prefix(prefix.to_string()));
        }
        let example = fleet.node_name(nodes.saturating_sub(1));
        if !names::is_dns_subdomain(&example, 253) || example.chars().any(|c| c.is_uppercase()) {
            return Err(LayoutError::NodeName {
                prefix: prefix.to_string(),
                example,
            });
        }
        if !(1..=MAX_DEVICES_PER_NODE).contains(&devices_per_node) {
            return Err(LayoutError::Devices(devices_per_node));
        }
        Ok(fleet)
    }

    /// The fleet's name: the label value of its objects.
    pub fn name(&self) -> String {
        fleet_name(&self.prefix)
    }

    /// Label selector of everything the fleet made.
    pub fn selector(&self) -> String {
        selector(&self.prefix)
    }

    /// Name of node `i` (0-based): the prefix and a number zero-padded to the width of the
    /// largest, so that names sort in creation order.
    pub fn node_name(&self, i: usize) -> String {
        let width = self.nodes.saturating_sub(1).to_string().len().max(4);
        format!("{}{i:0width$}", self.prefix)
    }

    /// The Node object: labelled and tainted as a fleet node, with the capacity (`pods`
    /// included: the scheduler's resource fit needs it) and the Ready condition of a kubelet's.
    pub fn node(&self, name: &str, now: Timestamp) -> Value {
        let t = rfc3339(now);
        let resources = json!({ "cpu": "8", "memory": "32Gi", "pods": "110" });
        let cond = |type_: &str, status: &str, reason: &str, message: &str| {
            json!({ "type": type_, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": t, "lastTransitionTime": t })
        };
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": self.node_labels(name) },
            "spec": { "taints": self.taints() },
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "phase": "Running",
                "conditions": [
                    cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "fleet node"),
                    cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "fleet node"),
                    cond("PIDPressure", "False", "KubeletHasSufficientPID", "fleet node"),
                    cond("Ready", "True", "KubeletReady", "mock-accel-dra fleet keeps this node's Lease fresh"),
                ],
                "addresses": [{ "type": "InternalIP", "address": "127.0.0.1" }],
                "nodeInfo": {
                    "kubeletVersion": "v0.0.0-mock-accel-fleet",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "mock-accel-fleet://0",
                    "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                    "osImage": "", "kubeProxyVersion": "",
                },
            },
        })
    }

    fn node_labels(&self, name: &str) -> Value {
        json!({
            LABEL_FLEET: self.name(),
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        })
    }

    /// The Node's taints: the fleet's own only. The API server adds `not-ready` to every new
    /// Node; setting this list removes it, as a kubelet's Ready status would.
    pub fn taints(&self) -> Value {
        json!([{ "key": TAINT_FLEET, "value": self.name(), "effect": "NoSchedule" }])
    }

    /// The node's Lease in `kube-node-lease`, owned by its Node, renewed at `now`.
    pub fn lease(&self, name: &str, node_uid: &str, now: Timestamp) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": NODE_LEASE_NAMESPACE,
                "labels": { LABEL_FLEET: self.name() },
                "ownerReferences": [owner(name, node_uid)],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": NODE_LEASE_SECONDS,
                "renewTime": micro_time(now),
            },
        })
    }

    /// The renewal of a node's Lease (a merge patch).
    pub fn lease_renewal(now: Timestamp) -> Value {
        json!({ "spec": { "renewTime": micro_time(now) } })
    }

    /// The MockAccelNode object as a node agent creates it: named after the node, owned by the
    /// Node (so it goes with it), with the fleet label.
    pub fn mock_accel_node(&self, name: &str, node_uid: &str) -> Value {
        json!({
            "apiVersion": "mock-accel.example.com/v1alpha1",
            "kind": "MockAccelNode",
            "metadata": {
                "name": name,
                "labels": { LABEL_FLEET: self.name() },
                "ownerReferences": [owner(name, node_uid)],
            },
            "spec": MockAccelNodeSpec { node_name: name.to_string(), ..Default::default() },
        })
    }

    /// What a node agent would report for node `i`: its devices, no prepared claims, a
    /// registered plugin, the spec as created.
    pub fn report(&self, i: usize) -> AgentReport {
        AgentReport {
            inventory: Inventory::new(devices(i, self.devices_per_node)),
            scan_warnings: Vec::new(),
            prepared: Vec::new(),
            plugin_registered: true,
            registration_error: None,
            spec: Some(MockAccelNodeSpec {
                node_name: self.node_name(i),
                ..Default::default()
            }),
            // No injected faults; every device healthy (absent from the health map).
            fault_hits: Default::default(),
            health: Default::default(),
        }
    }

    /// The agent's share of node `i`'s status at `now`, exactly as the node agent computes
    /// it; `since` is when the fleet started, the transition time of every condition.
    pub fn status(
        &self,
        i: usize,
        report: &AgentReport,
        since: Timestamp,
        now: Timestamp,
    ) -> MockAccelNodeStatus {
        let name = self.node_name(i);
        let first = agent_status(&name, report, env!("CARGO_PKG_VERSION"), since, None);
        agent_status(
            &name,
            report,
            env!("CARGO_PKG_VERSION"),
            now,
            first.conditions.as_deref(),
        )
    }
}

/// The fleet name of a prefix.
pub fn fleet_name(prefix: &str) -> String {
    prefix.trim_end_matches('-').to_string()
}

/// Label selector of everything the fleet of `prefix` made.
pub fn selector(prefix: &str) -> String {
    format!("{LABEL_FLEET}={}", fleet_name(prefix))
}

fn owner(node: &str, uid: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": true })
}

/// `MicroTime` as the API server stores it (the Lease's renew time).
fn micro_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The devices of fleet node `node` (0-based): `count` functions in cards of a PF and two
/// static VFs (the last card may be short), cards alternating between NUMA 0 and 1, each card
/// on its own bus below its NUMA node's root complex as in the simulated trees, numbered
/// `mock0`, `mock1`, ... in PCI order. UUIDs are unique across the fleet.
pub fn devices(node: usize, count: usize) -> Vec<Device> {
    let card_size = 1 + VFS_PER_CARD;
    let mut out: Vec<Device> = (0..count)
        .map(|k| {
            let card = k / card_size;
            let function = k % card_size;
            let numa = card % NUMA_NODES;
            let on_numa = card / NUMA_NODES;
            let domain = u16::try_from(on_numa / CARDS_PER_DOMAIN).unwrap_or(u16::MAX);
            let root_bus = 0x10 * (numa as u8 + 1);
            let bus = root_bus + 1 + (on_numa % CARDS_PER_DOMAIN) as u8;
            let bdf = Bdf::new(domain, bus, 0, function as u8);
            let pf = function == 0;
            Device {
                name: String::new(),
                sysfs_name: String::new(),
                device_type: if pf { DeviceType::Pf } else { DeviceType::Vf },
                uuid: format!("f1ee7000-0000-4000-8000-{:06x}{k:06x}", node & 0xff_ffff),
                memory: if pf { PF_MEMORY } else { VF_MEMORY },
                pci_address: bdf.to_string(),
                pcie_root: Some(format!("pci{domain:04x}:{root_bus:02x}")),
                numa_node: Some(numa as u32),
                physfn: None,
                capabilities: 1,
                status: 1,
                fw_version: None,
            }
        })
        .collect();
    // Minors follow PCI order, as the kernel probes.
    out.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
    for (minor, d) in out.iter_mut().enumerate() {
        d.sysfs_name = format!("mock{minor}");
        d.name = d.sysfs_name.clone();
    }
    out
}

/// When node `i` of `n` beats in round `round`: the rounds are `interval` apart and the nodes
/// spread evenly over each, so the API server sees a steady rate rather than a burst per round.
pub fn beat_offset(interval: Duration, n: usize, round: u64, i: usize) -> Duration {
    let n = n.max(1) as u128;
    let step = interval.as_nanos() / n;
    let nanos = interval.as_nanos() * u128::from(round) + step * i as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices;

    fn fleet(n: usize, m: usize) -> Fleet {
        Fleet::new("fleet-", n, m).expect("a valid fleet")
    }

    #[test]
    fn six_devices_are_the_canonical_node() {
        let d = devices(0, 6);
        let summary: Vec<(&str, DeviceType, Option<u32>, &str)> = d
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.device_type,
                    d.numa_node,
                    d.pci_address.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("mock0", DeviceType::Pf, Some(0), "0000:11:00.0"),
                ("mock1", DeviceType::Vf, Some(0), "0000:11:00.1"),
                ("mock2", DeviceType::Vf, Some(0), "0000:11:00.2"),
                ("mock3", DeviceType::Pf, Some(1), "0000:21:00.0"),
                ("mock4", DeviceType::Vf, Some(1), "0000:21:00.1"),
                ("mock5", DeviceType::Vf, Some(1), "0000:21:00.2"),
            ]
        );
        assert_eq!(d[0].pcie_root.as_deref(), Some("pci0000:10"));
        assert_eq!(d[0].memory, PF_MEMORY);
        assert_eq!(d[1].memory, VF_MEMORY);
    }

    #[test]
    fn any_count_fills_cards_and_keeps_names_and_uuids_unique() {
        for m in [1, 4, 64, 100] {
            let d = devices(7, m);
            assert_eq!(d.len(), m);
            let mut names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
            names.dedup();
            assert_eq!(names.len(), m);
            let mut addrs: Vec<&str> = d.iter().map(|d| d.pci_address.as_str()).collect();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), m, "PCI addresses are unique for {m} devices");
            assert_eq!(
                d.iter().filter(|d| d.device_type == DeviceType::Pf).count(),
                m.div_ceil(3)
            );
        }
        // 64 devices: 22 cards, 11 per NUMA node.
        let d = devices(0, 64);
        assert_eq!(d.iter().filter(|d| d.numa_node == Some(0)).count(), 33);
        let other = devices(8, 64);
        assert!(d.iter().zip(&other).all(|(a, b)| a.uuid != b.uuid));
        // More cards than root ports spill into the next PCI domain.
        let big = devices(0, 4096);
        assert!(big.iter().any(|d| d.pci_address.starts_with("0001:")));
        assert_eq!(big.len(), 4096);
    }

    #[test]
    fn every_device_is_one_the_controller_publishes() {
        let f = fleet(3, 64);
        let report = f.report(2);
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let status = f.status(2, &report, now, now);
        let devices: Vec<Device> = status
            .devices
            .iter()
            .flatten()
            .map(|d| d.to_device().expect("a device the controller reads"))
            .collect();
        assert_eq!(devices.len(), 64);
        let desired = slices::desired::desired_slices(
            &slices::desired::NodeSlicesInput {
                driver: "mock-accel.example.com",
                node_name: "fleet-0002",
                node_uid: Some("uid"),
                owner: None,
                devices: &devices,
                partitionable: true,
                taints: &slices::taints::NO_TAINTS,
                shared_pfs: false,
                binding_conditions: false,
            },
            &[],
        )
        .expect("slices for a fleet node");
        assert!(desired.rejected.is_empty(), "{:?}", desired.rejected);
        let published: usize = desired.pools().iter().map(|p| p.devices).sum();
        assert_eq!(published, 64);
    }

    #[test]
    fn the_status_is_the_agents_with_stable_transition_times() {
        let f = fleet(2, 6);
        let report = f.report(1);
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let later: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let status = f.status(1, &report, since, later);
        let agent = status.agent.as_ref().expect("agent status");
        assert_eq!(agent.heartbeat, "2026-01-01T00:05:00Z");
        assert!(agent.plugin_registered);
        assert_eq!(status.device_count, Some(6));
        assert_eq!(status.prepared_claim_count, Some(0));
        let conditions = status.conditions.expect("conditions");
        assert!(
            conditions
                .iter()
                .all(|c| c.status == "True" && c.last_transition_time.0 == since),
            "{conditions:?}"
        );
        let devices = status.devices.expect("devices");
        assert_eq!(devices[3].pool, "fleet-0001/numa1");
        assert!(status.pools.is_none(), "pools belong to the controller");
    }

    #[test]
    fn objects_carry_the_fleet_label_owner_and_taint() {
        let f = fleet(12_000, 6);
        assert_eq!(f.node_name(7), "fleet-00007");
        assert_eq!(fleet(10, 6).node_name(7), "fleet-0007");
        assert_eq!(f.selector(), "mock-accel.example.com/fleet=fleet");
        let now: Timestamp = "2026-01-01T00:00:00.5Z".parse().unwrap();
        let node = f.node("fleet-00007", now);
        assert_eq!(node["metadata"]["labels"][LABEL_FLEET], "fleet");
        assert_eq!(
            node["metadata"]["labels"]["kubernetes.io/hostname"],
            "fleet-00007"
        );
        assert_eq!(node["spec"]["taints"][0]["key"], TAINT_FLEET);
        assert_eq!(node["spec"]["taints"][0]["effect"], "NoSchedule");
        assert_eq!(node["status"]["allocatable"]["pods"], "110");
        let lease = f.lease("fleet-00007", "uid-7", now);
        assert_eq!(lease["metadata"]["namespace"], NODE_LEASE_NAMESPACE);
        assert_eq!(lease["metadata"]["ownerReferences"][0]["uid"], "uid-7");
        assert_eq!(lease["spec"]["renewTime"], "2026-01-01T00:00:00.500000Z");
        let man = f.mock_accel_node("fleet-00007", "uid-7");
        assert_eq!(man["spec"]["nodeName"], "fleet-00007");
        assert_eq!(man["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(man["metadata"]["labels"][LABEL_FLEET], "fleet");
    }

    #[test]
    fn bad_arguments_are_refused_with_the_flag_named() {
        let err = Fleet::new("-", 1, 6).unwrap_err();
        assert!(err.to_string().contains("--prefix"), "{err}");
        assert!(matches!(
            Fleet::new("Fleet-", 1, 6),
            Err(LayoutError::NodeName { .. })
        ));
        assert_eq!(Fleet::new("f-", 1, 0), Err(LayoutError::Devices(0)));
        assert_eq!(Fleet::new("f-", 1, 4097), Err(LayoutError::Devices(4097)));
        assert!(Fleet::new("load.test-", 3, 64).is_ok());
    }

    #[test]
    fn beats_spread_evenly_over_each_round() {
        let i = Duration::from_secs(10);
        assert_eq!(beat_offset(i, 4, 0, 0), Duration::ZERO);
        assert_eq!(beat_offset(i, 4, 0, 1), Duration::from_millis(2500));
        assert_eq!(beat_offset(i, 4, 0, 3), Duration::from_millis(7500));
        assert_eq!(beat_offset(i, 4, 2, 1), Duration::from_millis(22_500));
        assert_eq!(beat_offset(i, 0, 1, 0), i);
    }
}
