//! The node agent's share of `MockAccelNode.status`, computed from what the agent knows
//! (inventory, prepared claims, registration state). Pure: the caller decides when to apply.

use std::collections::HashMap;

use jiff::Timestamp;

use crate::{
    clock::rfc3339,
    crd::{
        AgentStatus, CONDITION_DEVICES_DISCOVERED, CONDITION_PLUGIN_REGISTERED,
        CONDITION_SPEC_VALID, Condition, DeviceStatus, MockAccelNodeSpec, MockAccelNodeStatus,
        PreparedClaimStatus, Reported, condition, truncate_message,
    },
    fixture,
    inventory::{DeviceType, Health, Inventory},
    plugin::PreparedClaim,
};

/// Everything the agent reports, apart from the heartbeat time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport {
    pub inventory: Inventory,
    /// Problems of the last scan (files named), shown in the DevicesDiscovered condition.
    pub scan_warnings: Vec<String>,
    pub prepared: Vec<PreparedClaim>,
    pub plugin_registered: bool,
    pub registration_error: Option<String>,
    /// The node's `MockAccelNode.spec` as last seen; `None` until the object was read.
    pub spec: Option<MockAccelNodeSpec>,
}

/// Builds the status fields the agent owns. `previous` keeps condition transition times stable.
pub fn agent_status(
    node: &str,
    report: &AgentReport,
    version: &str,
    now: Timestamp,
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
            truncate_message(report.scan_warnings.join("; "))
        )
    };
    let discovered = condition(
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
    let registered = condition(
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

    let mut conditions = vec![discovered, registered];
    if let Some(spec) = &report.spec {
        conditions.push(spec_valid(node, spec, &report.inventory, previous, now));
    }
    let unhealthy = devices
        .iter()
        .filter(|d| d.health != Reported::Known(Health::Healthy))
        .count();

    MockAccelNodeStatus {
        device_count: count(devices.len()),
        unhealthy_device_count: count(unhealthy),
        pf_count: count(report.inventory.count(DeviceType::Pf)),
        vf_count: count(report.inventory.count(DeviceType::Vf)),
        devices: Some(devices),
        prepared_claim_count: count(report.prepared.len()),
        prepared_claims: Some(report.prepared.iter().map(prepared_claim_status).collect()),
        agent: Some(AgentStatus {
            version: version.to_string(),
            heartbeat: rfc3339(now),
            plugin_registered: report.plugin_registered,
        }),
        conditions: Some(conditions),
        pools: None,
        observed_generation: None,
        sriov: None,
    }
}

/// The `SpecValid` condition: every problem of the spec, or `Valid`.
fn spec_valid(
    node: &str,
    spec: &MockAccelNodeSpec,
    inventory: &Inventory,
    previous: Option<&[Condition]>,
    now: Timestamp,
) -> Condition {
    let problems = fixture::validate(node, spec, inventory);
    let (reason, message) = if problems.is_empty() {
        ("Valid", "spec is valid for this node".to_string())
    } else {
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        (
            "Invalid",
            truncate_message(format!(
                "{} problem(s), fix them in the spec: {}",
                problems.len(),
                listed.join("; ")
            )),
        )
    };
    condition(
        CONDITION_SPEC_VALID,
        problems.is_empty(),
        reason,
        message,
        previous,
        now,
    )
}

/// `status.preparedClaims[]` entry of a claim the plugin prepared.
fn prepared_claim_status(c: &PreparedClaim) -> PreparedClaimStatus {
    PreparedClaimStatus {
        uid: c.uid.clone(),
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        devices: c.devices.clone(),
        cdi_device_ids: c.cdi_device_ids.clone(),
        prepared_at: c.prepared_at.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inventory::Device, test_support::devices};

    const T1: &str = "2026-01-01T00:00:01Z";
    const T2: &str = "2026-01-01T00:00:02Z";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn dev(name: &str, t: DeviceType, numa: Option<u32>) -> Device {
        devices::pf(name).device_type(t).numa(numa).build()
    }

    fn report() -> AgentReport {
        AgentReport {
            inventory: Inventory::new(vec![
                dev("mock0", DeviceType::Pf, Some(0)),
                dev("mock1", DeviceType::Vf, Some(0)),
                dev("mock2", DeviceType::Vf, None),
            ]),
            scan_warnings: vec![],
            prepared: vec![PreparedClaim {
                uid: "u1".into(),
                namespace: "ns".into(),
                name: "c".into(),
                devices: vec!["mock1".into()],
                cdi_device_ids: vec![],
                prepared_at: "t0".into(),
            }],
            plugin_registered: true,
            registration_error: None,
            spec: None,
        }
    }

    #[test]
    fn counts_pools_and_allocations() {
        let s = agent_status("n1", &report(), "0.1.0", ts(T1), None);
        assert_eq!(s.device_count, Some(3));
        assert_eq!(s.pf_count, Some(1));
        assert_eq!(s.vf_count, Some(2));
        assert_eq!(s.prepared_claim_count, Some(1));
        let devices = s.devices.unwrap();
        assert_eq!(devices[1].allocated_claim.as_deref(), Some("ns/c"));
        assert_eq!(devices[0].allocated_claim, None);
        assert_eq!(devices[2].pool, "n1/numa-none");
        assert!(s.pools.is_none(), "pools belong to the controller");
        assert_eq!(s.agent.unwrap().heartbeat, T1);
    }

    #[test]
    fn conditions_reflect_registration_and_scan_problems() {
        let mut r = report();
        r.plugin_registered = false;
        r.registration_error = Some("bad version".into());
        r.scan_warnings = vec!["class/mock-accel/mock9/uuid: missing".into()];
        let s = agent_status("n1", &r, "v", ts(T1), None);
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
    fn spec_valid_lists_the_problems_and_clears_when_fixed() {
        use crate::fixture::{HealthSpec, HealthState};
        let mut r = report();
        let s = agent_status("n1", &r, "v", ts(T1), None);
        assert!(
            s.condition(CONDITION_SPEC_VALID).is_none(),
            "no spec read yet"
        );
        assert_eq!(s.unhealthy_device_count, Some(0));

        let mut spec = MockAccelNodeSpec {
            node_name: "n1".into(),
            health: Some(vec![HealthSpec {
                device: "mock7".into(),
                state: HealthState::Unhealthy,
                message: None,
                effect: None,
            }]),
            ..Default::default()
        };
        r.spec = Some(spec.clone());
        let s = agent_status("n1", &r, "v", ts(T1), None);
        let c = s.condition(CONDITION_SPEC_VALID).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"));
        assert!(
            c.message
                .contains("spec.health[0].device: no device \"mock7\" on this node"),
            "{}",
            c.message
        );

        spec.health.as_mut().unwrap()[0].device = "mock1".into();
        r.spec = Some(spec);
        let s2 = agent_status("n1", &r, "v", ts(T2), s.conditions.as_deref());
        let c = s2.condition(CONDITION_SPEC_VALID).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Valid"));
        assert_eq!(c.last_transition_time.0, ts(T2));
    }

    #[test]
    fn unchanged_report_gives_unchanged_status_apart_from_heartbeat() {
        let a = agent_status("n1", &report(), "v", ts(T1), None);
        let b = agent_status("n1", &report(), "v", ts(T2), a.conditions.as_deref());
        assert_eq!(a.conditions, b.conditions);
        assert_eq!(a.devices, b.devices);
    }
}
