//! The attacher: the component that attaches devices with binding conditions
//! ([`crate::slices::binding`]) after the scheduler allocated them, as a fabric manager would.
//!
//! It follows every ResourceClaim. For a claim allocated devices of ours whose allocation
//! result carries `<driver>/Attached` in `bindingConditions`, it waits until `--attach-delay`
//! has passed since the allocation (`status.allocation.allocationTimestamp`), then writes the
//! claim's device status: condition `<driver>/Attached` `True`, or `<driver>/AttachFailed`
//! `True` for devices on a node that the claim's annotation [`ANNOTATION_ATTACH_FAIL`] names
//! (comma-separated node names, `*` for every node). The scheduler, waiting in PreBind, then
//! binds the pod, or gives the allocation up and schedules the pod again. Devices on a node that
//! the annotation [`ANNOTATION_ATTACH_NEVER`] names get neither condition: they stay unattached
//! until the scheduler's binding timeout (its `bindingTimeout`, counted from the
//! `allocationTimestamp`) gives the allocation up, which is how the timeout is tested.
//!
//! Writes are server-side applies of the status subresource with [`FIELD_MANAGER`], which owns
//! only the attach conditions; the node agent's `Ready` condition and data on the same entries
//! belong to its own field manager. The decision is pure ([`plan_attach`]); [`run`] is the I/O
//! edge, run by the leading replica only.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{kube_client::WATCH_TIMEOUT_SECS, slices::binding};

/// Claim annotation that makes attaching fail on the nodes it names (`node1,node2` or `*`).
pub const ANNOTATION_ATTACH_FAIL: &str = "mock-accel.example.com/attach-fail";
/// Claim annotation that makes the attacher leave devices on the nodes it names unattached
/// (no condition at all), so that only the scheduler's binding timeout ends the wait. Same
/// syntax as [`ANNOTATION_ATTACH_FAIL`]; where both name a node, this one wins.
pub const ANNOTATION_ATTACH_NEVER: &str = "mock-accel.example.com/attach-never";
/// Field manager of the attacher's status writes.
pub const FIELD_MANAGER: &str = "mock-accel-attacher";
/// Delay before a failed write is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// What to do about one claim.
#[derive(Clone, Debug, PartialEq)]
pub enum Attach {
    /// Nothing of ours waits for attachment (or it has been reported).
    Nothing,
    /// Look again after this long: the attach delay has not passed.
    After(Duration),
    /// Apply this status body; `failed` lists the devices reported as failed.
    Report { body: Value, failed: Vec<String> },
    /// Leave these devices unattached, as the claim's [`ANNOTATION_ATTACH_NEVER`] asks.
    Withheld(Vec<String>),
}

/// Whether a node-list annotation value (`node1,node2` or `*`) names the node of `pool`
/// (pools of this driver are `<node>/...`).
fn names_pool_node(value: &str, pool: &str) -> bool {
    let node = pool.split('/').next().unwrap_or_default();
    value
        .split(',')
        .map(str::trim)
        .any(|n| n == "*" || (!n.is_empty() && n == node))
}

/// Decides what the attacher does about `claim` at `now`.
pub fn plan_attach(claim: &ResourceClaim, driver: &str, now: Timestamp, delay: Duration) -> Attach {
    let Some(allocation) = claim.status.as_ref().and_then(|s| s.allocation.as_ref()) else {
        return Attach::Nothing;
    };
    let attached = binding::attached_condition(driver);
    let failed_type = binding::attach_failed_condition(driver);
    let annotation = |name: &str| {
        claim
            .annotations()
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    };
    let never_on = annotation(ANNOTATION_ATTACH_NEVER);
    let (withheld, waiting): (Vec<_>, Vec<_>) = allocation
        .devices
        .iter()
        .flat_map(|d| d.results.iter().flatten())
        .filter(|r| {
            r.driver == driver
                && r.binding_conditions
                    .as_ref()
                    .is_some_and(|c| c.contains(&attached))
        })
        .partition(|r| names_pool_node(never_on, &r.pool));
    if waiting.is_empty() {
        return if withheld.is_empty() {
            Attach::Nothing
        } else {
            Attach::Withheld(withheld.iter().map(|r| r.device.clone()).collect())
        };
    }
    let statuses = claim
        .status
        .as_ref()
        .and_then(|s| s.devices.as_deref())
        .unwrap_or_default();
    let reported = waiting.iter().all(|r| {
        statuses.iter().any(|s| {
            s.driver == r.driver
                && s.pool == r.pool
                && s.device == r.device
                && s.share_id == r.share_id
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == attached || c.type_ == failed_type)
        })
    });
    if reported {
        return Attach::Nothing;
    }
    // Without a timestamp (a server that does not set it) the delay cannot be measured, and
    // the devices are attached at once.
    let due = allocation.allocation_timestamp.as_ref().map_or(now, |t| {
        t.0.checked_add(jiff::SignedDuration::try_from(delay).unwrap_or_default())
            .unwrap_or(t.0)
    });
    if now < due {
        let wait = Duration::try_from(due.duration_since(now)).unwrap_or(Duration::ZERO);
        return Attach::After(wait);
    }
    let fail_on = annotation(ANNOTATION_ATTACH_FAIL);
    let fails = |pool: &str| names_pool_node(fail_on, pool);
    let mut failed = Vec::new();
    let entries: Vec<Value> = waiting
        .iter()
        .map(|r| {
            let node = r.pool.split('/').next().unwrap_or_default();
            let (ctype, reason, message) = if fails(&r.pool) {
                failed.push(r.device.clone());
                (
                    &failed_type,
                    "AttachFailed",
                    format!(
                        "attaching {} to node {node} failed: the claim's {ANNOTATION_ATTACH_FAIL} annotation names this node",
                        r.device
                    ),
                )
            } else {
                (
                    &attached,
                    "Attached",
                    format!("{} attached to node {node}", r.device),
                )
            };
            let mut entry = json!({
                "driver": r.driver,
                "pool": r.pool,
                "device": r.device,
                "conditions": [{
                    "type": ctype,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now.to_string(),
                }],
            });
            if let Some(share) = &r.share_id {
                entry["shareID"] = json!(share);
            }
            entry
        })
        .collect();
    Attach::Report {
        body: json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": claim.name_any(), "namespace": claim.namespace()},
            "status": {"devices": entries},
        }),
        failed,
    }
}

/// A failed status write of one claim.
#[derive(Debug, thiserror::Error)]
#[error(
    "claim {claim}: writing the attach conditions failed: {source} (check the controller's RBAC: resourceclaims/status patch and resourceclaims/driver arbitrary-node:patch)"
)]
pub struct AttachError {
    claim: String,
    source: kube::Error,
}

struct AttachContext {
    client: Client,
    driver: String,
    delay: Duration,
}

async fn reconcile(
    claim: Arc<ResourceClaim>,
    ctx: Arc<AttachContext>,
) -> Result<Action, AttachError> {
    let key = format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    );
    match plan_attach(&claim, &ctx.driver, Timestamp::now(), ctx.delay) {
        Attach::Nothing => Ok(Action::await_change()),
        Attach::Withheld(devices) => {
            tracing::info!(claim = %key, ?devices, "not attaching, as the claim's {ANNOTATION_ATTACH_NEVER} annotation asks: the scheduler's binding timeout ends the wait");
            Ok(Action::await_change())
        }
        Attach::After(wait) => Ok(Action::requeue(wait)),
        Attach::Report { body, failed } => {
            let api = Api::<ResourceClaim>::namespaced(
                ctx.client.clone(),
                &claim.namespace().unwrap_or_default(),
            );
            api.patch_status(
                &claim.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|source| AttachError {
                claim: key.clone(),
                source,
            })?;
            if failed.is_empty() {
                tracing::info!(claim = %key, "devices attached");
            } else {
                tracing::info!(claim = %key, ?failed, "attaching failed as the claim's annotation asks");
            }
            Ok(Action::await_change())
        }
    }
}

fn error_policy(_: Arc<ResourceClaim>, err: &AttachError, _: Arc<AttachContext>) -> Action {
    tracing::warn!(error = %err, retry_in = ?RETRY_AFTER, "attach failed");
    Action::requeue(RETRY_AFTER)
}

/// Runs the attacher until `stop` is cancelled: watches with `watch_client`, writes with
/// `client`.
pub async fn run(
    client: Client,
    watch_client: Client,
    driver: String,
    delay: Duration,
    stop: CancellationToken,
) {
    let ctx = Arc::new(AttachContext {
        client,
        driver,
        delay,
    });
    let controller = Controller::new(
        Api::<ResourceClaim>::all(watch_client),
        watcher::Config::default()
            .timeout(WATCH_TIMEOUT_SECS)
            .any_semantic(),
    );
    let store = controller.store();
    let run = controller
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    super::until_stopped(run, &store, &stop).await;
    tracing::info!("attacher stopped");
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, ResourceClaimStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::test_support::claims::{DRIVER, allocated, result, share};

    const DELAY: Duration = Duration::from_secs(3);

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A claim allocated `mock0` on node1 (waiting for attachment) at 12:00:00.
    fn waiting_claim() -> ResourceClaim {
        let mut r = result("r", "mock0", "node1/numa0");
        binding_conditions(&mut r);
        let mut other = result("r2", "mock1", "node1/numa0");
        other.driver = "gpu.example.com".into();
        binding_conditions(&mut other);
        let mut claim = allocated("u", "c", vec![r, other]);
        let alloc = claim.status.as_mut().unwrap().allocation.as_mut().unwrap();
        alloc.allocation_timestamp = Some(Time(t("2026-11-30T12:00:00Z")));
        claim
    }

    fn binding_conditions(r: &mut k8s_openapi::api::resource::v1::DeviceRequestAllocationResult) {
        r.binding_conditions = Some(vec![binding::attached_condition(DRIVER)]);
        r.binding_failure_conditions = Some(vec![binding::attach_failed_condition(DRIVER)]);
    }

    #[test]
    fn a_device_is_attached_once_the_delay_has_passed() {
        let claim = waiting_claim();
        assert_eq!(
            plan_attach(&claim, DRIVER, t("2026-11-30T12:00:01Z"), DELAY),
            Attach::After(Duration::from_secs(2))
        );
        let Attach::Report { body, failed } =
            plan_attach(&claim, DRIVER, t("2026-11-30T12:00:03Z"), DELAY)
        else {
            panic!("no report after the delay");
        };
        assert!(failed.is_empty());
        let entries = body["status"]["devices"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "only our driver's device: {entries:?}");
        assert_eq!(entries[0]["device"], "mock0");
        assert_eq!(entries[0]["pool"], "node1/numa0");
        let cond = &entries[0]["conditions"][0];
        assert_eq!(cond["type"], "mock-accel.example.com/Attached");
        assert_eq!(cond["status"], "True");
        assert_eq!(body["metadata"]["name"], "c");
    }

    #[test]
    fn the_annotation_fails_the_attach_on_the_nodes_it_names() {
        for (value, fails) in [
            ("node1", true),
            ("node2, node1", true),
            ("*", true),
            ("node2", false),
            ("", false),
        ] {
            let mut claim = waiting_claim();
            claim
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(ANNOTATION_ATTACH_FAIL.into(), value.into());
            let Attach::Report { body, failed } =
                plan_attach(&claim, DRIVER, t("2026-11-30T12:00:05Z"), DELAY)
            else {
                panic!("no report");
            };
            let ctype = body["status"]["devices"][0]["conditions"][0]["type"].clone();
            assert_eq!(!failed.is_empty(), fails, "{value:?}");
            let want = if fails {
                "mock-accel.example.com/AttachFailed"
            } else {
                "mock-accel.example.com/Attached"
            };
            assert_eq!(ctype, want, "{value:?}");
        }
    }

    #[test]
    fn the_never_annotation_leaves_the_devices_on_the_nodes_it_names_unattached() {
        for (never, fail, want) in [
            ("node1", "", "withheld"),
            ("*", "", "withheld"),
            ("node2,node1", "node1", "withheld"),
            ("node2", "", "mock-accel.example.com/Attached"),
            ("node2", "node1", "mock-accel.example.com/AttachFailed"),
            ("", "", "mock-accel.example.com/Attached"),
        ] {
            let mut claim = waiting_claim();
            let annotations = claim.metadata.annotations.get_or_insert_default();
            annotations.insert(ANNOTATION_ATTACH_NEVER.into(), never.into());
            annotations.insert(ANNOTATION_ATTACH_FAIL.into(), fail.into());
            // Long after the delay: the delay is not what holds the attach back.
            let got = match plan_attach(&claim, DRIVER, t("2026-11-30T12:10:00Z"), DELAY) {
                Attach::Withheld(devices) => {
                    assert_eq!(devices, ["mock0"], "{never:?}");
                    "withheld".to_string()
                }
                Attach::Report { body, .. } => {
                    body["status"]["devices"][0]["conditions"][0]["type"]
                        .as_str()
                        .unwrap()
                        .to_string()
                }
                other => panic!("{never:?}: {other:?}"),
            };
            assert_eq!(got, want, "never={never:?} fail={fail:?}");
        }
    }

    #[test]
    fn reported_unwaiting_and_unallocated_claims_need_nothing() {
        let mut claim = waiting_claim();
        claim.status.as_mut().unwrap().devices = Some(vec![AllocatedDeviceStatus {
            driver: DRIVER.into(),
            pool: "node1/numa0".into(),
            device: "mock0".into(),
            conditions: Some(vec![Condition {
                type_: binding::attached_condition(DRIVER),
                status: "True".into(),
                reason: "Attached".into(),
                message: String::new(),
                last_transition_time: Time(t("2026-11-30T12:00:03Z")),
                observed_generation: None,
            }]),
            ..AllocatedDeviceStatus::default()
        }]);
        let later = t("2026-11-30T12:01:00Z");
        assert_eq!(plan_attach(&claim, DRIVER, later, DELAY), Attach::Nothing);

        let plain = allocated("u", "c", vec![result("r", "mock0", "node1/numa0")]);
        assert_eq!(plan_attach(&plain, DRIVER, later, DELAY), Attach::Nothing);

        let mut pending = waiting_claim();
        pending.status = Some(ResourceClaimStatus::default());
        assert_eq!(plan_attach(&pending, DRIVER, later, DELAY), Attach::Nothing);
    }

    #[test]
    fn a_share_is_reported_under_its_share_id() {
        let mut r = share(result("r", "mock0", "node1/numa0"), "s1", "1Gi");
        binding_conditions(&mut r);
        let claim = allocated("u", "c", vec![r]);
        let Attach::Report { body, .. } =
            plan_attach(&claim, DRIVER, t("2026-11-30T12:00:05Z"), DELAY)
        else {
            panic!("no report");
        };
        assert_eq!(body["status"]["devices"][0]["shareID"], "s1");
    }
}
