//! The reconciler's decisions, free of I/O: from what was read (the MockAccelNode, its Node's
//! UID, the slices that exist, the time) to what must be written (slices to apply and delete,
//! the controller's share of the status, the Events worth telling a person about).
//!
//! Everything here is a plain function of its inputs so the whole policy (liveness, withdrawal,
//! quiet steady state, condition wording, when an Event is due) is unit-tested without a client.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::resource::v1::{DeviceTaint, ResourceSlice},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Resource, ResourceExt};

use crate::{
    crd::{
        CONDITION_READY, CONDITION_SLICES_PUBLISHED, DeviceStatus, MockAccelNode,
        MockAccelNodeStatus, PoolStatus, Reported, condition, truncate_message,
    },
    inventory::Device,
    slices::{self, NodeSlicesInput, SliceError, taints},
};

/// How long a node whose agent is gone waits before the next check, when no watch event
/// arrives first (a returning agent writes a heartbeat, which triggers a reconcile at once).
pub const STALE_RESYNC: Duration = Duration::from_secs(300);
/// Added to the remaining grace time so that the requeue lands after the heartbeat expired.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

pub const REASON_PUBLISHED: &str = "Published";
pub const REASON_AGENT_STALE: &str = "AgentStale";
pub const REASON_INVALID_DEVICES: &str = "InvalidDevices";
pub const REASON_APPLY_FAILED: &str = "ApplyFailed";

/// Whether the node's agent can prepare claims, so that its devices may be offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Fresh heartbeat and registered plugin; the heartbeat expires at `until`.
    Alive { until: Timestamp },
    /// The agent cannot serve claims; `why` says what is missing.
    Stale { why: String },
}

impl Liveness {
    pub fn is_alive(&self) -> bool {
        matches!(self, Liveness::Alive { .. })
    }
}

/// The agent is alive iff it registered its kubelet plugin and its last heartbeat is newer than
/// `now - grace`, where the heartbeat's age counts from no earlier than `view_since`: the time
/// from which this controller could see the API server without interruption (see
/// [`crate::kube_client::ApiView`]). A heartbeat missed while nobody could reach the API server
/// says nothing about the agent, so an outage longer than the grace period withdraws nothing.
pub fn liveness(
    status: Option<&MockAccelNodeStatus>,
    now: Timestamp,
    grace: Duration,
    view_since: Option<Timestamp>,
) -> Liveness {
    let Some(agent) = status.and_then(|s| s.agent.as_ref()) else {
        return Liveness::Stale {
            why: "no node agent has reported yet".to_string(),
        };
    };
    let heartbeat: Timestamp = match agent.heartbeat.parse() {
        Ok(t) => t,
        Err(e) => {
            return Liveness::Stale {
                why: format!(
                    "agent heartbeat {:?} is not an RFC 3339 time: {e}",
                    agent.heartbeat
                ),
            };
        }
    };
    if !agent.plugin_registered {
        return Liveness::Stale {
            why: "the node agent's kubelet plugin is not registered".to_string(),
        };
    }
    let counted_from = view_since.map_or(heartbeat, |v| v.max(heartbeat));
    let until = counted_from.checked_add(grace).unwrap_or(Timestamp::MAX);
    if until <= now {
        let since = if counted_from > heartbeat {
            format!(
                " (counted from {counted_from}, when this controller's view of the API server began)"
            )
        } else {
            String::new()
        };
        return Liveness::Stale {
            why: format!(
                "last agent heartbeat at {heartbeat} is older than the grace period of {}{since}",
                humantime::format_duration(grace)
            ),
        };
    }
    Liveness::Alive { until }
}

/// What was read for one MockAccelNode.
pub struct Observed<'a> {
    pub driver: &'a str,
    pub node: &'a MockAccelNode,
    /// UID of the Node the MockAccelNode describes (the slices' controller owner).
    pub node_uid: &'a str,
    /// This driver's slices of this node as they exist now.
    pub existing: &'a [ResourceSlice],
    pub now: Timestamp,
    pub grace: Duration,
    /// Publish shared counters that make a PF and its own VFs exclusive (decided once at
    /// start-up from what the API server accepts, see [`super::capabilities`]).
    pub partitionable: bool,
    /// Publish device taints for devices that are not Healthy (decided once at start-up: an
    /// API server without `DRADeviceTaints` drops them, see [`super::capabilities`]).
    pub device_taints: bool,
    /// Publish the node's PFs in shares ([`crate::slices::sharing`]): its Node is labelled for
    /// it and the API server serves consumable capacity.
    pub shared_pfs: bool,
    /// Make the node's devices wait for attachment ([`crate::slices::binding`]): its Node is
    /// labelled for it and the API server serves binding conditions.
    pub binding_conditions: bool,
    /// Since when the controller has seen the API server without interruption (`None`: no
    /// such record, heartbeats are judged by their own time alone).
    pub api_view_since: Option<Timestamp>,
}

/// The slice writes one reconcile must make.
#[derive(Clone, Debug)]
pub struct SlicePlan {
    pub liveness: Liveness,
    /// Every slice that should exist (empty when the agent is stale).
    pub desired: Vec<ResourceSlice>,
    /// Summary of the pools `desired` publishes.
    pub pools: Vec<PoolStatus>,
    /// Desired slices that are missing or differ from what exists.
    pub apply: Vec<ResourceSlice>,
    /// Existing slices that are no longer desired.
    pub delete: Vec<ResourceSlice>,
    /// Devices left out of the slices, each message naming the device.
    pub rejected: Vec<Rejected>,
    /// Set when no slice could be computed at all; existing slices are then left alone.
    pub invalid: Option<String>,
    /// When to look again even if nothing changes (heartbeat expiry, or a slow resync).
    pub requeue_after: Duration,
}

/// A device that cannot be published, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub device: String,
    pub reason: String,
}

/// Decides the slice writes: the desired slices while the agent is alive, none once it is
/// stale (withdrawing the node's devices), and only the writes that change something.
pub fn plan_slices(obs: &Observed) -> SlicePlan {
    let node_name = obs.node.name_any();
    let status = obs.node.status.as_ref();
    let liveness = liveness(status, obs.now, obs.grace, obs.api_view_since);
    let requeue_after = match &liveness {
        Liveness::Alive { until } => until
            .duration_since(obs.now)
            .try_into()
            .unwrap_or(Duration::ZERO)
            .saturating_add(EXPIRY_MARGIN),
        Liveness::Stale { .. } => STALE_RESYNC,
    };
    let mut rejected = Vec::new();
    let mut invalid = None;
    let mut pools = Vec::new();
    let desired = if liveness.is_alive() {
        let mut devices: Vec<Device> = Vec::new();
        let mut taints = BTreeMap::new();
        for d in status
            .and_then(|s| s.devices.as_deref())
            .unwrap_or_default()
        {
            match d.to_device() {
                Ok(dev) => {
                    if obs.device_taints
                        && let Some(t) = device_taint(obs.driver, d)
                    {
                        taints.insert(d.name.clone(), vec![t]);
                    }
                    devices.push(dev)
                }
                Err(e) => rejected.push(Rejected {
                    device: d.name.clone(),
                    reason: format!("{e}; not published"),
                }),
            }
        }
        let owner = owner_reference(obs.node);
        let input = NodeSlicesInput {
            driver: obs.driver,
            node_name: &node_name,
            node_uid: Some(obs.node_uid),
            owner: owner.as_ref(),
            devices: &devices,
            partitionable: obs.partitionable,
            taints: &taints,
            shared_pfs: obs.shared_pfs,
            binding_conditions: obs.binding_conditions,
        };
        match slices::desired_slices(&input, obs.existing) {
            Ok(d) => {
                rejected.extend(d.rejected.iter().map(|e| Rejected {
                    device: subject(e),
                    reason: e.to_string(),
                }));
                pools = d.pools().into_iter().map(pool_status).collect();
                d.slices
            }
            Err(e) => {
                invalid = Some(e.to_string());
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let (apply, delete) = if invalid.is_some() {
        (Vec::new(), Vec::new())
    } else {
        let apply = desired
            .iter()
            .filter(|d| {
                obs.existing
                    .iter()
                    .find(|e| e.metadata.name == d.metadata.name)
                    .is_none_or(|e| slices::slice_differs(d, e))
            })
            .cloned()
            .collect();
        let delete = slices::obsolete_slices(&desired, obs.existing)
            .into_iter()
            .cloned()
            .collect();
        (apply, delete)
    };
    SlicePlan {
        liveness,
        desired,
        pools,
        apply,
        delete,
        rejected,
        invalid,
        requeue_after,
    }
}

/// The health taint of a device as its agent reported it (`None` while Healthy).
fn device_taint(driver: &str, d: &DeviceStatus) -> Option<DeviceTaint> {
    let state = match &d.health {
        Reported::Known(h) => format!("{h:?}"),
        Reported::Unknown(s) => s.clone(),
    };
    let effect = match &d.health_effect {
        Some(Reported::Known(e)) => Some(*e),
        _ => None,
    };
    taints::health_taint(driver, &state, effect)
}

/// The MockAccelNode as a (non-controller) owner of its slices, so that `.owns()` maps slice
/// events back to it; the Node is the controller owner.
fn owner_reference(node: &MockAccelNode) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: MockAccelNode::api_version(&()).into_owned(),
        kind: MockAccelNode::kind(&()).into_owned(),
        name: node.metadata.name.clone()?,
        uid: node.metadata.uid.clone()?,
        controller: Some(false),
        block_owner_deletion: None,
    })
}

/// Slices of `driver` whose node has no MockAccelNode (`known` says which nodes have one).
pub fn orphans<'a>(
    driver: &str,
    slices: &'a [ResourceSlice],
    known: impl Fn(&str) -> bool,
) -> Vec<&'a ResourceSlice> {
    slices
        .iter()
        .filter(|s| s.spec.driver == driver)
        .filter(|s| s.spec.node_name.as_deref().is_some_and(|n| !known(n)))
        .collect()
}

/// The device a rejection names, or the pool when a whole pool was left out.
fn subject(e: &SliceError) -> String {
    match (e.device(), e) {
        (Some(device), _) => device.to_string(),
        (None, SliceError::InvalidPool { pool, .. }) => pool.clone(),
        (None, other) => other.to_string(),
    }
}

fn pool_status(p: slices::PoolSummary) -> PoolStatus {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    PoolStatus {
        name: p.name,
        generation: p.generation,
        devices: count(p.devices),
        slices: count(p.slices),
    }
}

/// Result of the slice writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// A write failed; the message names the slice and the API's answer.
    Failed(String),
}

/// The controller's share of the status after the writes: pools, `SlicesPublished`, `Ready`,
/// `observedGeneration`. Transition times are kept from `current` when a condition's status
/// did not change, so an unchanged outcome yields an equal status and no write.
pub fn controller_status(
    node: &MockAccelNode,
    plan: &SlicePlan,
    outcome: &WriteOutcome,
    now: Timestamp,
) -> MockAccelNodeStatus {
    // Whole seconds: the API server stores no more, and a finer time would never compare equal.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let current = node.status.as_ref();
    let previous = current.and_then(|s| s.conditions.as_deref());
    let current_pools = current.and_then(|s| s.pools.clone()).unwrap_or_default();

    let (pools, published, ready) = match (&plan.liveness, outcome, &plan.invalid) {
        (_, WriteOutcome::Failed(err), _) => {
            let msg = format!("writing ResourceSlices failed: {err}");
            (
                current_pools,
                (false, REASON_APPLY_FAILED, msg.clone()),
                (false, REASON_APPLY_FAILED, msg),
            )
        }
        (Liveness::Stale { why }, WriteOutcome::Written, _) => {
            let msg = format!("{why}; the node's devices are withdrawn");
            (
                Vec::new(),
                (false, REASON_AGENT_STALE, msg.clone()),
                (false, REASON_AGENT_STALE, msg),
            )
        }
        (Liveness::Alive { .. }, WriteOutcome::Written, Some(err)) => {
            let msg = format!("no slices could be computed, existing ones left in place: {err}");
            (
                current_pools,
                (false, REASON_INVALID_DEVICES, msg.clone()),
                (false, REASON_INVALID_DEVICES, msg),
            )
        }
        (Liveness::Alive { .. }, WriteOutcome::Written, None) => {
            let pools = plan.pools.clone();
            let summary = summary(&pools);
            let published = if plan.rejected.is_empty() {
                (true, REASON_PUBLISHED, summary.clone())
            } else {
                (
                    false,
                    REASON_INVALID_DEVICES,
                    rejected_message(&summary, &plan.rejected),
                )
            };
            // The node serves the devices that are published even when others were rejected.
            (
                pools,
                published,
                (true, REASON_PUBLISHED, format!("agent alive; {summary}")),
            )
        }
    };
    let condition = |type_: &str, (ok, reason, msg): (bool, &str, String)| {
        condition(type_, ok, reason, truncate_message(msg), previous, now)
    };
    MockAccelNodeStatus {
        pools: Some(pools),
        conditions: Some(vec![
            condition(CONDITION_SLICES_PUBLISHED, published),
            condition(CONDITION_READY, ready),
        ]),
        observed_generation: node.metadata.generation,
        ..Default::default()
    }
}

fn summary(pools: &[PoolStatus]) -> String {
    let devices: i64 = pools.iter().map(|p| p.devices).sum();
    let slices: i64 = pools.iter().map(|p| p.slices).sum();
    format!(
        "{devices} devices published in {} pools ({slices} slices)",
        pools.len()
    )
}

fn rejected_message(summary: &str, rejected: &[Rejected]) -> String {
    let list: Vec<String> = rejected.iter().map(|r| r.reason.clone()).collect();
    format!(
        "{summary}; {} devices rejected: {}",
        rejected.len(),
        list.join("; ")
    )
}

/// True when `desired` carries anything the stored status does not: the write is skipped
/// otherwise. A missing pool list equals an empty one.
pub fn status_differs(
    current: Option<&MockAccelNodeStatus>,
    desired: &MockAccelNodeStatus,
) -> bool {
    let empty = MockAccelNodeStatus::default();
    let current = current.unwrap_or(&empty);
    let pools = |s: &MockAccelNodeStatus| s.pools.clone().unwrap_or_default();
    if pools(current) != pools(desired)
        || current.observed_generation != desired.observed_generation
    {
        return true;
    }
    desired
        .conditions
        .iter()
        .flatten()
        .any(|c| current.condition(&c.type_) != Some(c))
}

/// An Event to publish on the MockAccelNode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventPlan {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// Events for what changed between the stored status and the new one: a pool published (new
/// or with a new generation), a pool withdrawn, devices newly rejected, writes starting to
/// fail. A reconcile that changes nothing emits nothing.
pub fn events(
    current: Option<&MockAccelNodeStatus>,
    desired: &MockAccelNodeStatus,
    plan: &SlicePlan,
) -> Vec<EventPlan> {
    let old_pools = current.and_then(|s| s.pools.clone()).unwrap_or_default();
    let new_pools = desired.pools.clone().unwrap_or_default();
    let mut out = Vec::new();
    for p in &new_pools {
        let before = old_pools.iter().find(|o| o.name == p.name);
        if before.is_none_or(|o| o.generation != p.generation) {
            out.push(EventPlan {
                warning: false,
                reason: "PoolPublished",
                action: "Publish",
                note: format!(
                    "pool {} generation {}: {} devices in {} slices",
                    p.name, p.generation, p.devices, p.slices
                ),
            });
        }
    }
    for o in &old_pools {
        if !new_pools.iter().any(|p| p.name == o.name) {
            let why = match &plan.liveness {
                Liveness::Stale { why } => why.clone(),
                Liveness::Alive { .. } => "no devices left in the pool".to_string(),
            };
            out.push(EventPlan {
                warning: !plan.liveness.is_alive(),
                reason: "PoolWithdrawn",
                action: "Withdraw",
                note: format!("pool {} withdrawn: {why}", o.name),
            });
        }
    }
    let old_published = current.and_then(|s| s.condition(CONDITION_SLICES_PUBLISHED));
    let new_published = desired
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_SLICES_PUBLISHED);
    let unchanged = old_published.is_some_and(|o| {
        new_published.is_some_and(|n| o.reason == n.reason && o.message == n.message)
    });
    if let Some(new) = new_published.filter(|_| !unchanged) {
        let old_message = old_published
            .filter(|o| o.reason == REASON_INVALID_DEVICES)
            .map(|o| o.message.as_str())
            .unwrap_or_default();
        if new.reason == REASON_INVALID_DEVICES {
            for r in &plan.rejected {
                // Only devices the previous condition did not already name.
                if !old_message.contains(&r.reason) {
                    out.push(EventPlan {
                        warning: true,
                        reason: "DeviceRejected",
                        action: "Publish",
                        note: truncate_message(format!(
                            "device {} not published: {}",
                            r.device, r.reason
                        )),
                    });
                }
            }
            if let Some(err) = &plan.invalid {
                out.push(EventPlan {
                    warning: true,
                    reason: "InvalidDevices",
                    action: "Publish",
                    note: truncate_message(format!("no slices could be computed: {err}")),
                });
            }
        }
        if new.reason == REASON_APPLY_FAILED {
            out.push(EventPlan {
                warning: true,
                reason: "ApplyFailed",
                action: "Publish",
                note: new.message.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crd::{AgentStatus, DeviceStatus, MockAccelNodeSpec, Reported},
        inventory::DeviceType,
        test_support::devices,
    };

    const DRIVER: &str = "mock-accel.example.com";

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn mk_device(name: &str, numa: Option<u32>) -> DeviceStatus {
        let device_type = if name.contains("vf") {
            DeviceType::Vf
        } else {
            DeviceType::Pf
        };
        let device = devices::pf(&name.replace('-', "_"))
            .name(name)
            .device_type(device_type)
            .uuid(format!("uuid-{name}"))
            .memory(1 << 30)
            .numa(numa)
            .build();
        DeviceStatus::from_device(&device, "node1", None)
    }

    fn mk_node(devices: Vec<DeviceStatus>, heartbeat: &str, registered: bool) -> MockAccelNode {
        let mut n = MockAccelNode::new(
            "node1",
            MockAccelNodeSpec {
                node_name: "node1".into(),
                ..Default::default()
            },
        );
        n.metadata.uid = Some("man-uid".into());
        n.metadata.generation = Some(1);
        n.status = Some(MockAccelNodeStatus {
            devices: Some(devices),
            agent: Some(AgentStatus {
                version: "0.1.0".into(),
                heartbeat: heartbeat.into(),
                plugin_registered: registered,
            }),
            ..Default::default()
        });
        n
    }

    fn observe<'a>(
        node: &'a MockAccelNode,
        existing: &'a [ResourceSlice],
        now: &str,
    ) -> Observed<'a> {
        Observed {
            driver: DRIVER,
            node,
            node_uid: "node-uid",
            existing,
            now: t(now),
            grace: Duration::from_secs(40),
            partitionable: false,
            device_taints: true,
            shared_pfs: false,
            binding_conditions: false,
            api_view_since: None,
        }
    }

    #[test]
    fn a_device_that_is_not_healthy_is_published_with_its_taint() {
        use crate::{fixture::HealthEffect, inventory::Health};
        let mut devices = two_pools();
        devices[0].health = Health::Unhealthy.into();
        devices[0].health_effect = Some(HealthEffect::NoExecute.into());
        devices[1].health = Health::Unknown.into();
        let node = mk_node(devices, HB, true);
        let taints_of = |plan: &SlicePlan| -> Vec<(String, String, String)> {
            plan.desired
                .iter()
                .flat_map(|s| s.spec.devices.iter().flatten())
                .flat_map(|d| {
                    d.taints.iter().flatten().map(|t| {
                        (
                            d.name.clone(),
                            t.value.clone().unwrap_or_default(),
                            t.effect.clone(),
                        )
                    })
                })
                .collect()
        };
        let plan = plan_slices(&observe(&node, &[], SOON));
        let mut got = taints_of(&plan);
        got.sort();
        let names = [
            node.status.as_ref().unwrap().devices.as_ref().unwrap()[0]
                .name
                .clone(),
            node.status.as_ref().unwrap().devices.as_ref().unwrap()[1]
                .name
                .clone(),
        ];
        let mut want = vec![
            (
                names[0].clone(),
                "Unhealthy".to_string(),
                "NoExecute".to_string(),
            ),
            (
                names[1].clone(),
                "Unknown".to_string(),
                "NoSchedule".to_string(),
            ),
        ];
        want.sort();
        assert_eq!(got, want);
        assert!(
            plan.desired
                .iter()
                .flat_map(|s| s.spec.devices.iter().flatten())
                .flat_map(|d| d.taints.iter().flatten())
                .all(|t| t.key == "mock-accel.example.com/unhealthy")
        );

        // An API server that drops taints gets none (decided at start-up).
        let plan = plan_slices(&Observed {
            device_taints: false,
            ..observe(&node, &[], SOON)
        });
        assert!(taints_of(&plan).is_empty());
    }

    const HB: &str = "2026-01-01T00:00:00Z";
    const SOON: &str = "2026-01-01T00:00:10Z";
    const LATE: &str = "2026-01-01T00:01:00Z";

    fn two_pools() -> Vec<DeviceStatus> {
        vec![mk_device("mock0", Some(0)), mk_device("mock1", Some(1))]
    }

    /// The stored state after a plan was written: slices as the server returns them, status
    /// merged.
    fn written(
        node: &MockAccelNode,
        plan: &SlicePlan,
        now: &str,
    ) -> (MockAccelNode, Vec<ResourceSlice>) {
        let status = controller_status(node, plan, &WriteOutcome::Written, t(now));
        let mut node = node.clone();
        let s = node.status.get_or_insert_with(Default::default);
        s.pools = status.pools;
        s.conditions = status.conditions;
        s.observed_generation = status.observed_generation;
        let slices = plan
            .desired
            .iter()
            .cloned()
            .map(|mut s| {
                s.metadata.uid = Some(format!(
                    "uid-{}",
                    s.metadata.name.clone().unwrap_or_default()
                ));
                s.metadata.resource_version = Some("7".into());
                s
            })
            .collect();
        (node, slices)
    }

    #[test]
    fn liveness_needs_a_fresh_heartbeat_and_a_registered_plugin() {
        let grace = Duration::from_secs(40);
        let alive = mk_node(vec![], HB, true);
        assert_eq!(
            liveness(alive.status.as_ref(), t(SOON), grace, None),
            Liveness::Alive {
                until: t("2026-01-01T00:00:40Z")
            }
        );
        assert!(!liveness(alive.status.as_ref(), t(LATE), grace, None).is_alive());
        let unregistered = mk_node(vec![], HB, false);
        let Liveness::Stale { why } = liveness(unregistered.status.as_ref(), t(SOON), grace, None)
        else {
            panic!("an unregistered plugin must count as stale");
        };
        assert!(why.contains("not registered"), "{why}");
        let garbage = mk_node(vec![], "yesterday", true);
        let Liveness::Stale { why } = liveness(garbage.status.as_ref(), t(SOON), grace, None)
        else {
            panic!("an unreadable heartbeat must count as stale");
        };
        assert!(why.contains("yesterday"), "{why}");
        assert!(!liveness(None, t(SOON), grace, None).is_alive());
    }

    /// An API server outage of 60 s (longer than the 40 s grace period) that ended 1 s ago:
    /// the agent could not write a heartbeat, so its old one must not withdraw its devices.
    #[test]
    fn heartbeats_are_judged_from_when_the_controllers_view_of_the_api_resumed() {
        let grace = Duration::from_secs(40);
        let node = mk_node(two_pools(), HB, true);
        let resumed = t("2026-01-01T00:01:00Z");
        let now = t("2026-01-01T00:01:01Z");
        assert!(
            !liveness(node.status.as_ref(), now, grace, None).is_alive(),
            "by its own time alone the heartbeat is stale"
        );
        assert_eq!(
            liveness(node.status.as_ref(), now, grace, Some(resumed)),
            Liveness::Alive {
                until: t("2026-01-01T00:01:40Z")
            }
        );
        // The agent gets one grace period from the resumption, not more.
        let Liveness::Stale { why } = liveness(
            node.status.as_ref(),
            t("2026-01-01T00:01:41Z"),
            grace,
            Some(resumed),
        ) else {
            panic!("an agent silent for a whole grace period after the outage is stale");
        };
        assert!(why.contains("view of the API server began"), "{why}");
        // A view older than the heartbeat changes nothing.
        assert_eq!(
            liveness(
                node.status.as_ref(),
                t(SOON),
                grace,
                Some(t("2025-12-31T00:00:00Z"))
            ),
            liveness(node.status.as_ref(), t(SOON), grace, None)
        );
        // Still no slices for an agent whose plugin is not registered.
        let unregistered = mk_node(two_pools(), HB, false);
        assert!(!liveness(unregistered.status.as_ref(), now, grace, Some(resumed)).is_alive());
    }

    #[test]
    fn no_slice_is_withdrawn_right_after_an_outage_and_the_requeue_follows_the_view() {
        let node = mk_node(two_pools(), HB, true);
        let (node, existing) = written(&node, &plan_slices(&observe(&node, &[], SOON)), SOON);
        let mut obs = observe(&node, &existing, "2026-01-01T00:01:01Z");
        obs.api_view_since = Some(t("2026-01-01T00:01:00Z"));
        let plan = plan_slices(&obs);
        assert!(plan.liveness.is_alive());
        assert!(plan.delete.is_empty(), "{:?}", plan.delete);
        assert!(plan.apply.is_empty(), "steady state writes nothing");
        // Alive until 00:01:40; look again just after.
        assert_eq!(plan.requeue_after, Duration::from_secs(40));
    }

    #[test]
    fn fresh_node_applies_every_slice_and_requeues_at_heartbeat_expiry() {
        let node = mk_node(two_pools(), HB, true);
        let plan = plan_slices(&observe(&node, &[], SOON));
        assert_eq!(plan.apply.len(), 2);
        assert!(plan.delete.is_empty());
        assert!(plan.rejected.is_empty());
        // Heartbeat at 0s, grace 40s, now 10s: look again just after 40s.
        assert_eq!(plan.requeue_after, Duration::from_secs(31));
        for s in &plan.apply {
            let owners = s.metadata.owner_references.clone().unwrap_or_default();
            assert!(
                owners
                    .iter()
                    .any(|o| o.kind == "Node" && o.uid == "node-uid" && o.controller == Some(true))
            );
            assert!(owners.iter().any(|o| o.kind == "MockAccelNode"
                && o.uid == "man-uid"
                && o.controller == Some(false)));
        }
        let status = controller_status(&node, &plan, &WriteOutcome::Written, t(SOON));
        let pools = status.pools.clone().unwrap();
        assert_eq!(
            pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["node1/numa0", "node1/numa1"]
        );
        assert!(
            pools
                .iter()
                .all(|p| p.devices == 1 && p.slices == 1 && p.generation == 1)
        );
        let published = status.condition(CONDITION_SLICES_PUBLISHED).unwrap();
        assert_eq!(
            (published.status.as_str(), published.reason.as_str()),
            ("True", REASON_PUBLISHED)
        );
        assert_eq!(published.last_transition_time.0, t(SOON));
        assert_eq!(status.condition(CONDITION_READY).unwrap().status, "True");
        assert_eq!(status.observed_generation, Some(1));
        assert!(status_differs(node.status.as_ref(), &status));
        let ev = events(node.status.as_ref(), &status, &plan);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| e.reason == "PoolPublished" && !e.warning));
    }

    #[test]
    fn steady_state_plans_no_write_and_no_event() {
        let node = mk_node(two_pools(), HB, true);
        let plan = plan_slices(&observe(&node, &[], SOON));
        let (node, existing) = written(&node, &plan, SOON);
        let later = "2026-01-01T00:00:20Z";
        let plan = plan_slices(&observe(&node, &existing, later));
        assert!(plan.apply.is_empty(), "{:?}", plan.apply);
        assert!(plan.delete.is_empty());
        let status = controller_status(&node, &plan, &WriteOutcome::Written, t(later));
        assert!(!status_differs(node.status.as_ref(), &status), "{status:?}");
        assert!(events(node.status.as_ref(), &status, &plan).is_empty());
    }

    #[test]
    fn added_device_reapplies_its_pool_with_a_new_generation() {
        let node = mk_node(two_pools(), HB, true);
        let plan = plan_slices(&observe(&node, &[], SOON));
        let (mut node, existing) = written(&node, &plan, SOON);
        node.status
            .as_mut()
            .unwrap()
            .devices
            .as_mut()
            .unwrap()
            .push(mk_device("mock2", Some(0)));
        let plan = plan_slices(&observe(&node, &existing, SOON));
        assert_eq!(plan.apply.len(), 1);
        assert_eq!(plan.apply[0].spec.pool.name, "node1/numa0");
        assert_eq!(plan.apply[0].spec.pool.generation, 2);
        let status = controller_status(&node, &plan, &WriteOutcome::Written, t(SOON));
        let ev = events(node.status.as_ref(), &status, &plan);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(
            ev[0].note.contains("node1/numa0 generation 2"),
            "{}",
            ev[0].note
        );
    }

    #[test]
    fn emptied_pool_is_deleted_and_reported_withdrawn() {
        let node = mk_node(two_pools(), HB, true);
        let plan = plan_slices(&observe(&node, &[], SOON));
        let (mut node, existing) = written(&node, &plan, SOON);
        node.status
            .as_mut()
            .unwrap()
            .devices
            .as_mut()
            .unwrap()
            .retain(|d| d.name == "mock0");
        let plan = plan_slices(&observe(&node, &existing, SOON));
        assert!(plan.apply.is_empty());
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(plan.delete[0].spec.pool.name, "node1/numa1");
        assert!(
            plan.delete[0].metadata.uid.is_some(),
            "deletes need the uid precondition"
        );
        let status = controller_status(&node, &plan, &WriteOutcome::Written, t(SOON));
        assert_eq!(status.pools.as_ref().unwrap().len(), 1);
        let ev = events(node.status.as_ref(), &status, &plan);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reason, "PoolWithdrawn");
        assert!(!ev[0].warning);
    }

    #[test]
    fn stale_agent_withdraws_everything_and_says_why() {
        let node = mk_node(two_pools(), HB, true);
        let plan = plan_slices(&observe(&node, &[], SOON));
        let (node, existing) = written(&node, &plan, SOON);
        let plan = plan_slices(&observe(&node, &existing, LATE));
        assert!(plan.desired.is_empty() && plan.apply.is_empty());
        assert_eq!(plan.delete.len(), 2);
        assert_eq!(plan.requeue_after, STALE_RESYNC);
        let status = controller_status(&node, &plan, &WriteOutcome::Written, t(LATE));
        assert_eq!(status.pools, Some(vec![]));
        let published = status.condition(CONDITION_SLICES_PUBLISHED).unwrap();
        assert_eq!(
            (published.status.as_str(), published.reason.as_str()),
            ("False", REASON_AGENT_STALE)
        );
        assert_eq!(published.last_transition_time.0, t(LATE));
        assert!(
            published.message.contains("grace period of 40s"),
            "{}",
            published.message
        );
        assert_eq!(status.condition(CONDITION_READY).unwrap().status, "False");
        let ev = events(node.status.as_ref(), &status, &plan);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| e.reason == "PoolWithdrawn" && e.warning));

        // Once withdrawn, the next look finds nothing to do.
        let (node, existing) = written(&node, &plan, LATE);
        assert!(existing.is_empty());
        let again = "2026-01-01T00:06:00Z";
        let plan = plan_slices(&observe(&node, &existing, again));
        assert!(plan.apply.is_empty() && plan.delete.is_empty());
        let status = controller_status(&node, &plan, &WriteOutcome::Written, t(again));
        assert!(!status_differs(node.status.as_ref(), &status));
    }

    #[test]
    fn rejected_devices_are_named_once_while_the_rest_publishes() {
        let mut bad = mk_device("mock9", Some(0));
        bad.device_type = Reported::Unknown("gpu".into());
        let mut devices = two_pools();
        devices.push(bad);
        let node = mk_node(devices, HB, true);
        let plan = plan_slices(&observe(&node, &[], SOON));
        assert_eq!(plan.apply.len(), 2);
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].device, "mock9");
        let status = controller_status(&node, &plan, &WriteOutcome::Written, t(SOON));
        let published = status.condition(CONDITION_SLICES_PUBLISHED).unwrap();
        assert_eq!(
            (published.status.as_str(), published.reason.as_str()),
            ("False", REASON_INVALID_DEVICES)
        );
        assert!(
            published.message.contains("mock9") && published.message.contains("gpu"),
            "{}",
            published.message
        );
        assert_eq!(status.condition(CONDITION_READY).unwrap().status, "True");
        let ev = events(node.status.as_ref(), &status, &plan);
        let rejected: Vec<_> = ev.iter().filter(|e| e.reason == "DeviceRejected").collect();
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].warning && rejected[0].note.contains("mock9"));

        let (node, existing) = written(&node, &plan, SOON);
        let plan = plan_slices(&observe(&node, &existing, SOON));
        let status = controller_status(&node, &plan, &WriteOutcome::Written, t(SOON));
        assert!(!status_differs(node.status.as_ref(), &status));
        assert!(events(node.status.as_ref(), &status, &plan).is_empty());
    }

    #[test]
    fn failed_write_keeps_pools_and_warns_once() {
        let node = mk_node(two_pools(), HB, true);
        let plan = plan_slices(&observe(&node, &[], SOON));
        let failed = WriteOutcome::Failed("applying ResourceSlice x: 500".into());
        let status = controller_status(&node, &plan, &failed, t(SOON));
        assert_eq!(status.pools, Some(vec![]));
        let published = status.condition(CONDITION_SLICES_PUBLISHED).unwrap();
        assert_eq!(published.reason, REASON_APPLY_FAILED);
        assert!(published.message.contains("ResourceSlice x"));
        let ev = events(node.status.as_ref(), &status, &plan);
        assert_eq!(
            ev.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["ApplyFailed"]
        );
        let mut node = node.clone();
        node.status.as_mut().unwrap().conditions = status.conditions.clone();
        node.status.as_mut().unwrap().pools = status.pools.clone();
        node.status.as_mut().unwrap().observed_generation = status.observed_generation;
        let again = controller_status(&node, &plan, &failed, t(LATE));
        assert!(!status_differs(node.status.as_ref(), &again));
        assert!(events(node.status.as_ref(), &again, &plan).is_empty());
    }

    #[test]
    fn orphans_are_slices_of_our_driver_on_nodes_without_a_mockaccelnode() {
        let node = mk_node(two_pools(), HB, true);
        let mut slices = plan_slices(&observe(&node, &[], SOON)).desired;
        let mut other_node = slices[0].clone();
        other_node.spec.node_name = Some("gone".into());
        let mut other_driver = other_node.clone();
        other_driver.spec.driver = "other.example.com".into();
        slices.extend([other_node, other_driver]);
        let found = orphans(DRIVER, &slices, |n| n == "node1");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].spec.node_name.as_deref(), Some("gone"));
        assert_eq!(found[0].spec.driver, DRIVER);
    }
}
