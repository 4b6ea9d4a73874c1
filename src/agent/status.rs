//! The node agent's share of `MockAccelNode.status`, computed from what the agent knows
//! (inventory, prepared claims, registration state). Pure: the caller decides when to apply.

use std::collections::HashMap;

use crate::{
    crd::{
        AgentStatus, CONDITION_DEVICES_DISCOVERED, CONDITION_PLUGIN_REGISTERED, Condition,
        DeviceStatus, MockAccelNodeStatus, PreparedClaimStatus,
    },
    inventory::{DeviceType, Inventory},
};

/// Everything the agent reports, apart from the heartbeat time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport {
    pub inventory: Inventory,
    /// Problems of the last scan (files named), shown in the DevicesDiscovered condition.
    pub scan_warnings: Vec<String>,
    pub prepared: Vec<PreparedClaimStatus>,
    pub plugin_registered: bool,
    pub registration_error: Option<String>,
}

/// Builds the status fields the agent owns. `previous` keeps condition transition times stable.
pub fn agent_status(
    node: &str,
    report: &AgentReport,
    version: &str,
    now: &str,
    previous: Option<&[Condition]>,
) -> MockAccelNodeStatus {
    let held: HashMap<&str, String> = report
        .prepared
        .iter()
        .flat_map(|c| {
            c.devices
                .iter()
                .map(move |d| (d.as_str(), format!("{}/{}", c.namespace, c.name)))
        })
        .collect();
    let devices: Vec<DeviceStatus> = report
        .inventory
        .devices
        .iter()
        .map(|d| DeviceStatus::from_device(d, node, held.get(d.name.as_str()).cloned()))
        .collect();
    let count = |n: usize| Some(i64::try_from(n).unwrap_or(i64::MAX));

    let discovered_msg = if report.scan_warnings.is_empty() {
        format!("{} devices found", devices.len())
    } else {
        format!(
            "{} devices found; {} skipped: {}",
            devices.len(),
            report.scan_warnings.len(),
            truncate(&report.scan_warnings.join("; "), 1024)
        )
    };
    let discovered = Condition::new(
        CONDITION_DEVICES_DISCOVERED,
        !devices.is_empty(),
        if devices.is_empty() {
            "NoDevices"
        } else if report.scan_warnings.is_empty() {
            "Discovered"
        } else {
            "DiscoveredWithWarnings"
        },
        discovered_msg,
        previous,
        now,
    );
    let registered = Condition::new(
        CONDITION_PLUGIN_REGISTERED,
        report.plugin_registered,
        if report.plugin_registered {
            "Registered"
        } else if report.registration_error.is_some() {
            "RegistrationFailed"
        } else {
            "WaitingForKubelet"
        },
        report
            .registration_error
            .clone()
            .unwrap_or_else(|| match report.plugin_registered {
                true => "the kubelet confirmed the plugin registration".to_string(),
                false => "waiting for the kubelet to call GetInfo and NotifyRegistrationStatus"
                    .to_string(),
            }),
        previous,
        now,
    );

    MockAccelNodeStatus {
        device_count: count(devices.len()),
        pf_count: count(report.inventory.count(DeviceType::Pf)),
        vf_count: count(report.inventory.count(DeviceType::Vf)),
        devices: Some(devices),
        prepared_claim_count: count(report.prepared.len()),
        prepared_claims: Some(report.prepared.clone()),
        agent: Some(AgentStatus {
            version: version.to_string(),
            heartbeat: now.to_string(),
            plugin_registered: report.plugin_registered,
        }),
        conditions: Some(vec![discovered, registered]),
        pools: None,
        observed_generation: None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Device;

    fn dev(name: &str, t: DeviceType, numa: Option<u32>) -> Device {
        Device {
            name: name.into(),
            sysfs_name: name.into(),
            device_type: t,
            uuid: "u".into(),
            memory: 1,
            pci_address: "0000:11:00.0".into(),
            pcie_root: None,
            numa_node: numa,
            physfn: None,
            capabilities: 1,
            status: 1,
            fw_version: None,
        }
    }

    fn report() -> AgentReport {
        AgentReport {
            inventory: Inventory::new(vec![
                dev("mock0", DeviceType::Pf, Some(0)),
                dev("mock1", DeviceType::Vf, Some(0)),
                dev("mock2", DeviceType::Vf, None),
            ]),
            scan_warnings: vec![],
            prepared: vec![PreparedClaimStatus {
                uid: "u1".into(),
                namespace: "ns".into(),
                name: "c".into(),
                devices: vec!["mock1".into()],
                cdi_device_ids: vec![],
                prepared_at: "t0".into(),
            }],
            plugin_registered: true,
            registration_error: None,
        }
    }

    #[test]
    fn counts_pools_and_allocations() {
        let s = agent_status("n1", &report(), "0.1.0", "t1", None);
        assert_eq!(s.device_count, Some(3));
        assert_eq!(s.pf_count, Some(1));
        assert_eq!(s.vf_count, Some(2));
        assert_eq!(s.prepared_claim_count, Some(1));
        let devices = s.devices.unwrap();
        assert_eq!(devices[1].allocated_claim.as_deref(), Some("ns/c"));
        assert_eq!(devices[0].allocated_claim, None);
        assert_eq!(devices[2].pool, "n1/numa-none");
        assert!(s.pools.is_none(), "pools belong to the controller");
        assert_eq!(s.agent.unwrap().heartbeat, "t1");
    }

    #[test]
    fn conditions_reflect_registration_and_scan_problems() {
        let mut r = report();
        r.plugin_registered = false;
        r.registration_error = Some("bad version".into());
        r.scan_warnings = vec!["class/mock-accel/mock9/uuid: missing".into()];
        let s = agent_status("n1", &r, "v", "t1", None);
        let reg = s.condition(CONDITION_PLUGIN_REGISTERED).unwrap();
        assert_eq!(
            (reg.status.as_str(), reg.reason.as_str()),
            ("False", "RegistrationFailed")
        );
        assert_eq!(reg.message, "bad version");
        let disc = s.condition(CONDITION_DEVICES_DISCOVERED).unwrap();
        assert_eq!(disc.reason, "DiscoveredWithWarnings");
        assert!(disc.message.contains("mock9/uuid"), "{}", disc.message);
    }

    #[test]
    fn unchanged_report_gives_unchanged_status_apart_from_heartbeat() {
        let a = agent_status("n1", &report(), "v", "t1", None);
        let b = agent_status("n1", &report(), "v", "t2", a.conditions.as_deref());
        assert_eq!(a.conditions, b.conditions);
        assert_eq!(a.devices, b.devices);
    }
}
