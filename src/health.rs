//! Device health, derived per device from what the node agent sees and what `spec.health`
//! declares. Pure: the agent's health loop (`agent::health`) reads the status registers and
//! publishes the result to `MockAccelNode.status.devices[].health`, the kubelet health stream,
//! and (through the status) the controller's device taints.
//!
//! The rules, strongest first:
//! - **Unhealthy** when `spec.health` declares it; when a device vanished from sysfs while a
//!   prepared claim holds it; when a prepared device's status register no longer reads as
//!   prepared (`1`): someone reset it behind the driver's back.
//! - **Unknown** when the agent cannot read a prepared device's register, or `spec.health`
//!   declares it.
//! - **Healthy** otherwise (a declared `Healthy` changes nothing but the message).
//!
//! A declared entry's `effect` (default `NoSchedule`) is the effect of the device's taint.

use std::collections::HashMap;

use crate::{
    fixture::{HealthEffect, HealthSpec, HealthState},
    inventory::{Health, Inventory},
    plugin::PreparedClaim,
};

/// Value prepare writes into the status register of a device it hands out.
pub const REGISTER_PREPARED: u32 = 1;

/// The node's derived device health, as the agent's health loop publishes it.
pub type NodeHealth = std::sync::Arc<Vec<DeviceHealth>>;

/// What reading one status register gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterRead {
    Value(u32),
    /// The device's directory (or its `status` file) is gone.
    Missing,
    /// Present but unreadable; the reason names the file.
    Unreadable(String),
}

/// The health of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceHealth {
    /// DRA device name.
    pub device: String,
    /// Pool it is (or, for a vanished device, was) published in.
    pub pool: String,
    pub health: Health,
    /// Why, in words a person reading `kubectl describe` understands.
    pub message: String,
    /// Effect of the device taint while not Healthy.
    pub effect: HealthEffect,
    /// False for a prepared device that is no longer in the inventory.
    pub present: bool,
}

/// Everything the derivation looks at.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub node: &'a str,
    pub inventory: &'a Inventory,
    pub prepared: &'a [PreparedClaim],
    /// Register reads of the prepared devices, by sysfs name (see [`registers_to_read`]).
    pub registers: &'a HashMap<String, RegisterRead>,
    /// `spec.health` (empty while the spec is unknown).
    pub declared: &'a [HealthSpec],
}

/// The sysfs names whose registers the derivation needs: those prepared claims hold.
pub fn registers_to_read(prepared: &[PreparedClaim]) -> Vec<String> {
    let mut names: Vec<String> = prepared
        .iter()
        .flat_map(|c| c.registers.iter().map(|r| r.sysfs_name.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// One entry per device of the inventory (in its order), then one per prepared device that is
/// no longer in it.
pub fn derive(obs: &Observed) -> Vec<DeviceHealth> {
    let declared: HashMap<&str, &HealthSpec> = obs
        .declared
        .iter()
        .map(|h| (h.device.as_str(), h))
        .collect();
    let mut out: Vec<DeviceHealth> = obs
        .inventory
        .devices
        .iter()
        .map(|d| {
            let fine = format!("{} is present in sysfs", d.sysfs_name);
            let mut health = judge(obs, &d.name, declared.get(d.name.as_str()).copied(), fine);
            health.pool = d.pool(obs.node);
            health
        })
        .collect();
    for claim in obs.prepared {
        for held in &claim.registers {
            if obs.inventory.get(&held.device).is_some()
                || out.iter().any(|h| h.device == held.device)
            {
                continue;
            }
            let fine = format!("{} is present in sysfs", held.sysfs_name);
            let mut health = judge(
                obs,
                &held.device,
                declared.get(held.device.as_str()).copied(),
                fine,
            );
            health.pool = held.pool.clone();
            health.present = false;
            out.push(health);
        }
    }
    out
}

fn judge(
    obs: &Observed,
    device: &str,
    declared: Option<&HealthSpec>,
    fine: String,
) -> DeviceHealth {
    let present = obs.inventory.get(device).is_some();
    let held = obs.prepared.iter().find_map(|c| {
        c.registers
            .iter()
            .find(|r| r.device == device)
            .map(|r| (format!("{}/{}", c.namespace, c.name), r))
    });
    let mut unhealthy = Vec::new();
    let mut unknown = Vec::new();
    if let Some(h) = declared {
        let said = h.message.clone().unwrap_or_default();
        let line = |state: &str| match said.is_empty() {
            true => format!("declared {state} in spec.health"),
            false => format!("{said} (declared {state} in spec.health)"),
        };
        match h.state {
            HealthState::Unhealthy => unhealthy.push(line("Unhealthy")),
            HealthState::Unknown => unknown.push(line("Unknown")),
            HealthState::Healthy => {}
        }
    }
    if let Some((claim, held)) = held {
        match obs.registers.get(&held.sysfs_name) {
            _ if !present => unhealthy.push(format!(
                "{} vanished from sysfs while prepared for claim {claim}",
                held.sysfs_name
            )),
            Some(RegisterRead::Value(v)) if *v != REGISTER_PREPARED => unhealthy.push(format!(
                "status register of {} reads {v:#x} while prepared for claim {claim} (expected {REGISTER_PREPARED}): reset behind the driver's back",
                held.sysfs_name
            )),
            Some(RegisterRead::Missing) => unhealthy.push(format!(
                "{} vanished from sysfs while prepared for claim {claim}",
                held.sysfs_name
            )),
            Some(RegisterRead::Unreadable(why)) => unknown.push(format!(
                "cannot read the status register of {} (prepared for claim {claim}): {why}",
                held.sysfs_name
            )),
            Some(RegisterRead::Value(_)) | None => {}
        }
    }
    let (health, reasons) = if !unhealthy.is_empty() {
        (Health::Unhealthy, unhealthy)
    } else if !unknown.is_empty() {
        (Health::Unknown, unknown)
    } else {
        let why = declared.and_then(|h| h.message.clone()).unwrap_or(fine);
        (Health::Healthy, vec![why])
    };
    DeviceHealth {
        device: device.to_string(),
        pool: String::new(),
        health,
        message: reasons.join("; "),
        effect: declared
            .and_then(|h| h.effect)
            .unwrap_or(HealthEffect::NoSchedule),
        present,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plugin::HeldRegister, test_support::devices};

    fn inventory() -> Inventory {
        Inventory::new(vec![
            devices::pf("mock0").numa(Some(0)).build(),
            devices::vf("mock0_vf0", "mock0").numa(Some(0)).build(),
            devices::vf("mock0_vf1", "mock0").numa(Some(0)).build(),
        ])
    }

    fn holding(device: &str, sysfs: &str) -> PreparedClaim {
        PreparedClaim {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "c1".into(),
            devices: vec![device.into()],
            registers: vec![HeldRegister {
                device: device.into(),
                sysfs_name: sysfs.into(),
                pool: "node1/numa0".into(),
            }],
            ..Default::default()
        }
    }

    fn declare(device: &str, state: HealthState, effect: Option<HealthEffect>) -> HealthSpec {
        HealthSpec {
            device: device.into(),
            state,
            message: Some("simulated ECC error".into()),
            effect,
        }
    }

    fn derive_with(
        inventory: &Inventory,
        prepared: &[PreparedClaim],
        registers: &[(&str, RegisterRead)],
        declared: &[HealthSpec],
    ) -> Vec<DeviceHealth> {
        let registers = registers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        derive(&Observed {
            node: "node1",
            inventory,
            prepared,
            registers: &registers,
            declared,
        })
    }

    fn states(h: &[DeviceHealth]) -> Vec<(&str, Health)> {
        h.iter().map(|d| (d.device.as_str(), d.health)).collect()
    }

    #[test]
    fn every_present_device_is_healthy_without_a_signal() {
        let h = derive_with(&inventory(), &[], &[], &[]);
        assert_eq!(
            states(&h),
            vec![
                ("mock0", Health::Healthy),
                ("mock0-vf0", Health::Healthy),
                ("mock0-vf1", Health::Healthy)
            ]
        );
        assert_eq!(h[1].pool, "node1/numa0");
        assert!(
            h.iter()
                .all(|d| d.present && d.effect == HealthEffect::NoSchedule)
        );
    }

    #[test]
    fn declared_states_apply_with_their_message_and_effect() {
        let h = derive_with(
            &inventory(),
            &[],
            &[],
            &[
                declare(
                    "mock0-vf1",
                    HealthState::Unhealthy,
                    Some(HealthEffect::NoExecute),
                ),
                declare("mock0-vf0", HealthState::Unknown, None),
                declare("mock0", HealthState::Healthy, None),
            ],
        );
        assert_eq!(
            states(&h),
            vec![
                ("mock0", Health::Healthy),
                ("mock0-vf0", Health::Unknown),
                ("mock0-vf1", Health::Unhealthy)
            ]
        );
        assert_eq!(
            h[2].message,
            "simulated ECC error (declared Unhealthy in spec.health)"
        );
        assert_eq!(h[2].effect, HealthEffect::NoExecute);
        assert_eq!(h[1].effect, HealthEffect::NoSchedule);
    }

    #[test]
    fn a_prepared_register_reset_behind_our_back_is_unhealthy() {
        let held = [holding("mock0-vf0", "mock0_vf0")];
        let ok = derive_with(
            &inventory(),
            &held,
            &[("mock0_vf0", RegisterRead::Value(1))],
            &[],
        );
        assert_eq!(ok[1].health, Health::Healthy);
        let reset = derive_with(
            &inventory(),
            &held,
            &[("mock0_vf0", RegisterRead::Value(0))],
            &[],
        );
        assert_eq!(reset[1].health, Health::Unhealthy);
        assert!(
            reset[1].message.contains("reads 0x0") && reset[1].message.contains("claim ns/c1"),
            "{}",
            reset[1].message
        );
        // An unprepared device's register may read anything.
        let free = derive_with(
            &inventory(),
            &[],
            &[("mock0_vf0", RegisterRead::Value(0))],
            &[],
        );
        assert_eq!(free[1].health, Health::Healthy);
    }

    #[test]
    fn a_prepared_device_that_vanished_is_unhealthy_and_still_listed() {
        let held = [holding("mock0-vf2", "mock0_vf2")];
        let h = derive_with(
            &inventory(),
            &held,
            &[("mock0_vf2", RegisterRead::Missing)],
            &[],
        );
        assert_eq!(h.len(), 4);
        let gone = &h[3];
        assert_eq!(
            (gone.device.as_str(), gone.health, gone.present),
            ("mock0-vf2", Health::Unhealthy, false)
        );
        assert_eq!(gone.pool, "node1/numa0");
        assert!(gone.message.contains("vanished"), "{}", gone.message);
    }

    #[test]
    fn an_unreadable_register_is_unknown_and_unhealthy_wins_over_unknown() {
        let held = [holding("mock0-vf0", "mock0_vf0")];
        let read = [("mock0_vf0", RegisterRead::Unreadable("EIO".into()))];
        let h = derive_with(&inventory(), &held, &read, &[]);
        assert_eq!(h[1].health, Health::Unknown);
        assert!(h[1].message.contains("EIO"));
        let h = derive_with(
            &inventory(),
            &held,
            &read,
            &[declare("mock0-vf0", HealthState::Unhealthy, None)],
        );
        assert_eq!(h[1].health, Health::Unhealthy);
    }
}
