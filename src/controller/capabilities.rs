//! What the API server accepts of the optional DRA shapes this controller can publish, decided
//! once at start-up from the server itself rather than from a version guess.
//!
//! Partitionable devices (shared counters, KEP-4815): the API group `resource.k8s.io/v1` must
//! serve ResourceSlices, and two server-side dry runs must come back intact: a slice holding
//! only a counter set, and a slice whose device consumes a counter set published in another
//! slice of the pool. A server without the `DRAPartitionableDevices` gate silently drops the
//! fields; Kubernetes 1.34 rejects the second slice (it wants counters in the device's own
//! slice). Either way the controller publishes the slices it always did.
//!
//! Consumable capacity (shared PFs, KEP-5075): one dry run of a device with
//! `allowMultipleAllocations` and a capacity request policy; a server without the
//! `DRAConsumableCapacity` gate drops both, and labelled nodes then get whole PFs.
//!
//! Binding conditions (devices that wait for attachment, KEP-5007): one dry run of a device
//! with `bindingConditions`; a server without `DRADeviceBindingConditions` drops them.
//!
//! The decisions are pure ([`decide`], [`decide_for`]); the `probe_*` functions are the I/O
//! edge.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Counter, CounterSet, Device, DeviceCapacity,
    DeviceCounterConsumption, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta};
use kube::{Api, Client, api::PostParams};

use crate::cli::{FeatureMode, Partitionable};

/// Deadline of each probe request.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before `auto` gives up on an API server that does not answer and publishes the
/// slices without counters.
pub const PROBE_ATTEMPTS: u32 = 5;
const PROBE_NODE: &str = "mock-accel-capability-probe";
const PROBE_SET: &str = "probe";

/// What the probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Both dry runs came back with the counter fields intact.
    Accepted,
    /// `resource.k8s.io/v1` does not serve `resourceslices`.
    NotServed,
    /// The server accepted the slice but dropped this field (feature gate off).
    Dropped(&'static str),
    /// The server refused the shape (for example 1.34, which wants counters in the device's
    /// own slice); the message is the server's.
    Rejected(String),
    /// The server could not be asked (timeouts, errors other than a refusal).
    Unknown(String),
}

/// Whether to publish counters, and the one line that says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub enabled: bool,
    pub reason: String,
}

/// An optional shape the controller publishes only when the API server keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Shared counters (`--partitionable`).
    PartitionableDevices,
    /// Devices with multiple allocations and capacity request policies
    /// (`--consumable-capacity`).
    ConsumableCapacity,
    /// Devices with binding conditions (`--binding-conditions`).
    BindingConditions,
    /// Device taints of unhealthy devices: always probed (no flag).
    DeviceTaints,
}

impl Feature {
    fn flag(self) -> &'static str {
        match self {
            Feature::PartitionableDevices => "--partitionable",
            Feature::ConsumableCapacity => "--consumable-capacity",
            Feature::BindingConditions => "--binding-conditions",
            // Never decided by a flag: `decide_for` sees only `auto` for it.
            Feature::DeviceTaints => "device taints",
        }
    }

    fn gate(self) -> &'static str {
        match self {
            Feature::PartitionableDevices => "DRAPartitionableDevices",
            Feature::ConsumableCapacity => "DRAConsumableCapacity",
            Feature::BindingConditions => "DRADeviceBindingConditions",
            Feature::DeviceTaints => "DRADeviceTaints",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Feature::PartitionableDevices => "shared counters",
            Feature::ConsumableCapacity => "a device with allowMultipleAllocations",
            Feature::BindingConditions => "a device with bindingConditions",
            Feature::DeviceTaints => "a device taint",
        }
    }
}

/// Decides `--partitionable` from the flag and (for `auto`) what the probe saw.
pub fn decide(mode: Partitionable, probe: Option<&ProbeOutcome>) -> Decision {
    decide_for(Feature::PartitionableDevices, mode, probe)
}

/// Decides whether `feature` is published, from its flag and (for `auto`) what the probe saw.
pub fn decide_for(feature: Feature, mode: FeatureMode, probe: Option<&ProbeOutcome>) -> Decision {
    let flag = feature.flag();
    let (enabled, reason) = match (mode, probe) {
        (FeatureMode::On, _) => (true, format!("{flag}=on")),
        (FeatureMode::Off, _) => (false, format!("{flag}=off")),
        (FeatureMode::Auto, Some(ProbeOutcome::Accepted)) => (
            true,
            format!(
                "the API server kept {} in a server-side dry run",
                feature.what()
            ),
        ),
        (FeatureMode::Auto, Some(ProbeOutcome::NotServed)) => (
            false,
            "the API server does not serve resourceslices in resource.k8s.io/v1".to_string(),
        ),
        (FeatureMode::Auto, Some(ProbeOutcome::Dropped(field))) => (
            false,
            format!(
                "the API server dropped {field} in a server-side dry run (turn on the {} feature gate)",
                feature.gate()
            ),
        ),
        (FeatureMode::Auto, Some(ProbeOutcome::Rejected(msg))) => (
            false,
            match feature {
                Feature::PartitionableDevices => format!(
                    "the API server rejected counter sets in a slice of their own (Kubernetes 1.35 or later needed): {msg}"
                ),
                Feature::ConsumableCapacity => format!(
                    "the API server rejected a device with allowMultipleAllocations and a capacity request policy: {msg}"
                ),
                Feature::BindingConditions => {
                    format!("the API server rejected a device with bindingConditions: {msg}")
                }
                Feature::DeviceTaints => {
                    format!("the API server rejected a device with a taint: {msg}")
                }
            },
        ),
        (FeatureMode::Auto, Some(ProbeOutcome::Unknown(msg))) => (
            false,
            format!(
                "the API server could not be asked after {PROBE_ATTEMPTS} attempts ({msg}); restart the controller to ask again"
            ),
        ),
        (FeatureMode::Auto, None) => (false, "not probed".to_string()),
    };
    Decision { enabled, reason }
}

/// Asks the API server (discovery, then two server-side dry runs) whether it accepts the
/// counter shapes [`crate::slices::counters`] publishes. Every request has [`PROBE_TIMEOUT`].
pub async fn probe_partitionable(client: &Client, driver: &str) -> ProbeOutcome {
    let (counters, devices) = probe_slices(driver);
    probe(
        client,
        vec![(counters, "sharedCounters"), (devices, "consumesCounters")],
    )
    .await
}

/// Asks the API server (discovery, then one server-side dry run) whether it keeps a device
/// that allows multiple allocations with a capacity request policy, the shape of
/// [`crate::slices::sharing`]. Every request has [`PROBE_TIMEOUT`].
pub async fn probe_consumable_capacity(client: &Client, driver: &str) -> ProbeOutcome {
    probe(
        client,
        vec![(shared_probe_slice(driver), "allowMultipleAllocations")],
    )
    .await
}

/// Asks the API server (discovery, then one server-side dry run) whether it keeps a device's
/// `bindingConditions`, the shape of [`crate::slices::binding`].
pub async fn probe_binding_conditions(client: &Client, driver: &str) -> ProbeOutcome {
    let mut slice = probe_slice(driver, "binding", 1, ResourceSliceSpec::default());
    let mut device = Device {
        name: "probe".into(),
        ..Device::default()
    };
    crate::slices::binding::require_attachment(driver, &mut device);
    slice.spec.devices = Some(vec![device]);
    probe(client, vec![(slice, "bindingConditions")]).await
}

/// Discovery of `resource.k8s.io/v1`, then each dry run in turn; the first that fails or loses
/// its field decides.
async fn probe(client: &Client, dry_runs: Vec<(ResourceSlice, &'static str)>) -> ProbeOutcome {
    let discovery = tokio::time::timeout(
        PROBE_TIMEOUT,
        client.list_api_group_resources("resource.k8s.io/v1"),
    )
    .await;
    match discovery {
        Err(_) => return ProbeOutcome::Unknown("discovery of resource.k8s.io/v1 timed out".into()),
        Ok(Err(kube::Error::Api(s))) if s.is_not_found() => return ProbeOutcome::NotServed,
        Ok(Err(e)) => {
            return ProbeOutcome::Unknown(format!("discovery of resource.k8s.io/v1: {e}"));
        }
        Ok(Ok(list)) if !list.resources.iter().any(|r| r.name == "resourceslices") => {
            return ProbeOutcome::NotServed;
        }
        Ok(Ok(_)) => {}
    }
    let api = Api::<ResourceSlice>::all(client.clone());
    let params = PostParams {
        dry_run: true,
        field_manager: Some(crate::crd::CONTROLLER_FIELD_MANAGER.to_string()),
    };
    for (slice, field) in dry_runs {
        let name = slice.metadata.name.clone().unwrap_or_default();
        match tokio::time::timeout(PROBE_TIMEOUT, api.create(&params, &slice)).await {
            Err(_) => {
                return ProbeOutcome::Unknown(format!("dry run of ResourceSlice {name} timed out"));
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 422 || s.code == 400 => {
                return ProbeOutcome::Rejected(s.message);
            }
            Ok(Err(e)) => {
                return ProbeOutcome::Unknown(format!("dry run of ResourceSlice {name}: {e}"));
            }
            Ok(Ok(back)) => {
                if !kept(&back, field) {
                    return ProbeOutcome::Dropped(field);
                }
            }
        }
    }
    ProbeOutcome::Accepted
}

/// Whether the API server keeps a device taint in a ResourceSlice (`DRADeviceTaints`: GA in
/// 1.37, beta in 1.36, alpha and off by default before), through the same probe as the other
/// features. A server that drops the field would make every reconcile see a difference and
/// write again, so the controller publishes taints only when this says so.
pub async fn probe_device_taints(client: &Client, driver: &str) -> Decision {
    resolve(Feature::DeviceTaints, FeatureMode::Auto, client, driver).await
}

/// A slice with one device carrying the health taint.
pub fn taint_probe_slice(driver: &str) -> ResourceSlice {
    let mut slice = probe_slice(driver, "taints", 1, ResourceSliceSpec::default());
    slice.spec.devices = Some(vec![Device {
        name: "probe".into(),
        taints: crate::slices::taints::health_taint(driver, "Unknown", None).map(|t| vec![t]),
        ..Device::default()
    }]);
    slice
}

/// Runs the probe for `auto` (retrying an unanswered one with a doubling delay) and returns
/// the decision; `on` and `off` ask nothing.
pub async fn resolve_partitionable(mode: Partitionable, client: &Client, driver: &str) -> Decision {
    resolve(Feature::PartitionableDevices, mode, client, driver).await
}

/// [`resolve_partitionable`] for any [`Feature`].
pub async fn resolve(
    feature: Feature,
    mode: FeatureMode,
    client: &Client,
    driver: &str,
) -> Decision {
    if mode != FeatureMode::Auto {
        return decide_for(feature, mode, None);
    }
    let mut delay = Duration::from_secs(1);
    let mut outcome = ProbeOutcome::Unknown("not asked".into());
    for attempt in 1..=PROBE_ATTEMPTS {
        outcome = match feature {
            Feature::PartitionableDevices => probe_partitionable(client, driver).await,
            Feature::ConsumableCapacity => probe_consumable_capacity(client, driver).await,
            Feature::BindingConditions => probe_binding_conditions(client, driver).await,
            Feature::DeviceTaints => {
                probe(client, vec![(taint_probe_slice(driver), "taints")]).await
            }
        };
        let ProbeOutcome::Unknown(msg) = &outcome else {
            break;
        };
        tracing::debug!(attempt, ?feature, error = %msg, "capability probe unanswered, retrying");
        if attempt < PROBE_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    decide_for(feature, mode, Some(&outcome))
}

fn kept(slice: &ResourceSlice, field: &str) -> bool {
    match field {
        "sharedCounters" => slice
            .spec
            .shared_counters
            .as_ref()
            .is_some_and(|s| !s.is_empty()),
        "bindingConditions" => slice.spec.devices.iter().flatten().any(|d| {
            d.binding_conditions.as_ref().is_some_and(|c| !c.is_empty())
                && d.binding_failure_conditions
                    .as_ref()
                    .is_some_and(|c| !c.is_empty())
        }),
        "taints" => slice
            .spec
            .devices
            .iter()
            .flatten()
            .any(|d| d.taints.as_ref().is_some_and(|t| !t.is_empty())),
        "allowMultipleAllocations" => slice.spec.devices.iter().flatten().any(|d| {
            d.allow_multiple_allocations == Some(true)
                && d.capacity
                    .iter()
                    .flatten()
                    .any(|(_, c)| c.request_policy.is_some())
        }),
        _ => slice
            .spec
            .devices
            .iter()
            .flatten()
            .any(|d| d.consumes_counters.as_ref().is_some_and(|c| !c.is_empty())),
    }
}

/// A probe slice of [`PROBE_NODE`]'s pool named `<PROBE_NODE>-<suffix>`, in a pool of `count`.
fn probe_slice(driver: &str, suffix: &str, count: i64, spec: ResourceSliceSpec) -> ResourceSlice {
    ResourceSlice {
        metadata: ObjectMeta {
            name: Some(format!("{PROBE_NODE}-{suffix}")),
            ..ObjectMeta::default()
        },
        spec: ResourceSliceSpec {
            driver: driver.to_string(),
            node_name: Some(PROBE_NODE.to_string()),
            pool: ResourcePool {
                name: PROBE_NODE.to_string(),
                generation: 1,
                resource_slice_count: count,
            },
            ..spec
        },
    }
}

/// The two probe slices: one counter set alone, and a device consuming it from another slice
/// of the same pool (the shape Kubernetes 1.35 and later expect).
pub fn probe_slices(driver: &str) -> (ResourceSlice, ResourceSlice) {
    let counters = BTreeMap::from([(
        "functions".to_string(),
        Counter {
            value: Quantity("1".into()),
        },
    )]);
    (
        probe_slice(
            driver,
            "counters",
            2,
            ResourceSliceSpec {
                shared_counters: Some(vec![CounterSet {
                    name: PROBE_SET.into(),
                    counters: counters.clone(),
                }]),
                ..ResourceSliceSpec::default()
            },
        ),
        probe_slice(
            driver,
            "devices",
            2,
            ResourceSliceSpec {
                devices: Some(vec![Device {
                    name: "probe".into(),
                    consumes_counters: Some(vec![DeviceCounterConsumption {
                        counter_set: PROBE_SET.into(),
                        counters,
                    }]),
                    ..Device::default()
                }]),
                ..ResourceSliceSpec::default()
            },
        ),
    )
}

/// The consumable-capacity probe: one device that allows multiple allocations, with a 2Gi
/// capacity shared in 1Gi steps (the policy shape of [`crate::slices::sharing`]).
pub fn shared_probe_slice(driver: &str) -> ResourceSlice {
    let q = |s: &str| Quantity(s.into());
    let capacity = DeviceCapacity {
        value: q("2Gi"),
        request_policy: Some(CapacityRequestPolicy {
            default: Some(q("1Gi")),
            valid_range: Some(CapacityRequestPolicyRange {
                min: q("1Gi"),
                max: Some(q("2Gi")),
                step: Some(q("1Gi")),
            }),
            valid_values: None,
        }),
    };
    probe_slice(
        driver,
        "shared",
        1,
        ResourceSliceSpec {
            devices: Some(vec![Device {
                name: "probe".into(),
                allow_multiple_allocations: Some(true),
                capacity: Some(BTreeMap::from([(format!("{driver}/memory"), capacity)])),
                ..Device::default()
            }]),
            ..ResourceSliceSpec::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::{Value, json};

    use super::*;
    use crate::test_support::api::{ApiServer, mock_client};

    const DRIVER: &str = "mock-accel.example.com";

    async fn discovery(api: &mut ApiServer, resources: &[&str]) {
        let call = api.expect(Method::GET, "/apis/resource.k8s.io/v1").await;
        let list: Vec<Value> = resources
            .iter()
            .map(|r| json!({"name": r, "namespaced": false, "kind": "ResourceSlice", "verbs": ["create"], "singularName": ""}))
            .collect();
        call.ok(&json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "resource.k8s.io/v1", "resources": list}));
    }

    /// The next dry-run create; answered with `f(body)`.
    async fn dry_run(
        api: &mut ApiServer,
        f: impl FnOnce(Value) -> Result<Value, (u16, &'static str)>,
    ) {
        let call = api
            .expect(Method::POST, "/apis/resource.k8s.io/v1/resourceslices")
            .await;
        assert_eq!(call.param("dryRun").as_deref(), Some("All"));
        match f(call.body.clone()) {
            Ok(body) => call.respond(http::StatusCode::CREATED, &body),
            Err((code, reason)) => call.fail(code, reason),
        }
    }

    async fn run(script: impl AsyncFnOnce(&mut ApiServer)) -> ProbeOutcome {
        let (client, mut api) = mock_client();
        let probe = tokio::spawn(async move { probe_partitionable(&client, DRIVER).await });
        script(&mut api).await;
        let outcome = probe.await.unwrap();
        api.done().await;
        outcome
    }

    #[tokio::test]
    async fn a_server_that_keeps_both_shapes_gets_counters() {
        let outcome = run(async |api: &mut ApiServer| {
            discovery(api, &["resourceslices", "resourceclaims"]).await;
            dry_run(api, |b| {
                assert_eq!(b["spec"]["sharedCounters"][0]["name"], "probe");
                assert!(b["spec"].get("devices").is_none());
                Ok(b)
            })
            .await;
            dry_run(api, |b| {
                assert_eq!(
                    b["spec"]["devices"][0]["consumesCounters"][0]["counterSet"],
                    "probe"
                );
                Ok(b)
            })
            .await;
        })
        .await;
        assert_eq!(outcome, ProbeOutcome::Accepted);
        assert!(decide(Partitionable::Auto, Some(&outcome)).enabled);
    }

    #[tokio::test]
    async fn device_taints_are_published_only_if_the_server_keeps_them() {
        for keeps in [true, false] {
            let (client, mut api) = mock_client();
            let probe = tokio::spawn(async move { probe_device_taints(&client, DRIVER).await });
            discovery(&mut api, &["resourceslices"]).await;
            dry_run(&mut api, |mut b| {
                assert_eq!(
                    b["spec"]["devices"][0]["taints"][0]["key"],
                    "mock-accel.example.com/unhealthy"
                );
                if !keeps {
                    b["spec"]["devices"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("taints");
                }
                Ok(b)
            })
            .await;
            let decision = probe.await.unwrap();
            api.done().await;
            assert_eq!(decision.enabled, keeps, "{}", decision.reason);
            if !keeps {
                assert!(
                    decision.reason.contains("DRADeviceTaints"),
                    "{}",
                    decision.reason
                );
            }
        }
    }

    #[tokio::test]
    async fn a_server_that_drops_the_fields_gets_none() {
        let outcome = run(async |api: &mut ApiServer| {
            discovery(api, &["resourceslices"]).await;
            dry_run(api, |mut b| {
                b["spec"].as_object_mut().unwrap().remove("sharedCounters");
                Ok(b)
            })
            .await;
        })
        .await;
        assert_eq!(outcome, ProbeOutcome::Dropped("sharedCounters"));
        let d = decide(Partitionable::Auto, Some(&outcome));
        assert!(!d.enabled);
        assert!(d.reason.contains("DRAPartitionableDevices"), "{}", d.reason);
    }

    #[tokio::test]
    async fn a_server_that_wants_counters_beside_the_devices_gets_none() {
        // Kubernetes 1.34: "must reference a counterSet defined in the ResourceSlice".
        let outcome = run(async |api: &mut ApiServer| {
            discovery(api, &["resourceslices"]).await;
            dry_run(api, Ok).await;
            dry_run(api, |_| Err((422, "Invalid"))).await;
        })
        .await;
        assert!(matches!(outcome, ProbeOutcome::Rejected(_)), "{outcome:?}");
        assert!(!decide(Partitionable::Auto, Some(&outcome)).enabled);
    }

    #[tokio::test]
    async fn a_server_without_resourceslices_in_v1_gets_none() {
        let outcome = run(async |api: &mut ApiServer| {
            discovery(api, &["resourceclaims"]).await;
        })
        .await;
        assert_eq!(outcome, ProbeOutcome::NotServed);
        let outcome = run(async |api: &mut ApiServer| {
            api.expect(Method::GET, "/apis/resource.k8s.io/v1")
                .await
                .fail(404, "NotFound");
        })
        .await;
        assert_eq!(outcome, ProbeOutcome::NotServed);
    }

    #[tokio::test]
    async fn a_forbidden_dry_run_is_unknown_not_a_refusal() {
        let outcome = run(async |api: &mut ApiServer| {
            discovery(api, &["resourceslices"]).await;
            dry_run(api, |_| Err((403, "Forbidden"))).await;
        })
        .await;
        assert!(matches!(outcome, ProbeOutcome::Unknown(_)), "{outcome:?}");
        assert!(!decide(Partitionable::Auto, Some(&outcome)).enabled);
    }

    #[test]
    fn on_and_off_need_no_probe() {
        assert!(decide(Partitionable::On, None).enabled);
        assert!(!decide(Partitionable::Off, Some(&ProbeOutcome::Accepted)).enabled);
    }

    #[tokio::test]
    async fn consumable_capacity_is_on_when_the_dry_run_keeps_multiple_allocations() {
        let (client, mut api) = mock_client();
        let probe = tokio::spawn(async move { probe_consumable_capacity(&client, DRIVER).await });
        discovery(&mut api, &["resourceslices"]).await;
        dry_run(&mut api, |b| {
            let d = &b["spec"]["devices"][0];
            assert_eq!(d["allowMultipleAllocations"], true);
            assert_eq!(
                d["capacity"]["mock-accel.example.com/memory"]["requestPolicy"]["validRange"]["step"],
                "1Gi"
            );
            Ok(b)
        })
        .await;
        let outcome = probe.await.unwrap();
        api.done().await;
        assert_eq!(outcome, ProbeOutcome::Accepted);
        assert!(
            decide_for(
                Feature::ConsumableCapacity,
                FeatureMode::Auto,
                Some(&outcome)
            )
            .enabled
        );
    }

    #[tokio::test]
    async fn consumable_capacity_is_off_when_the_server_drops_the_fields() {
        // Kubernetes 1.34 with its default gates: the fields are dropped, nothing is refused.
        let (client, mut api) = mock_client();
        let probe = tokio::spawn(async move { probe_consumable_capacity(&client, DRIVER).await });
        discovery(&mut api, &["resourceslices"]).await;
        dry_run(&mut api, |mut b| {
            let d = b["spec"]["devices"][0].as_object_mut().unwrap();
            d.remove("allowMultipleAllocations");
            Ok(b)
        })
        .await;
        let outcome = probe.await.unwrap();
        api.done().await;
        assert_eq!(outcome, ProbeOutcome::Dropped("allowMultipleAllocations"));
        let d = decide_for(
            Feature::ConsumableCapacity,
            FeatureMode::Auto,
            Some(&outcome),
        );
        assert!(!d.enabled);
        assert!(d.reason.contains("DRAConsumableCapacity"), "{}", d.reason);
        let off = decide_for(Feature::ConsumableCapacity, FeatureMode::Off, None);
        assert_eq!(
            (off.enabled, off.reason.as_str()),
            (false, "--consumable-capacity=off")
        );
    }

    #[tokio::test]
    async fn binding_conditions_follow_the_dry_run() {
        for keep in [true, false] {
            let (client, mut api) = mock_client();
            let probe =
                tokio::spawn(async move { probe_binding_conditions(&client, DRIVER).await });
            discovery(&mut api, &["resourceslices"]).await;
            dry_run(&mut api, |mut b| {
                let d = b["spec"]["devices"][0].as_object_mut().unwrap();
                assert_eq!(d["bindingConditions"][0], "mock-accel.example.com/Attached");
                if !keep {
                    d.remove("bindingConditions");
                    d.remove("bindingFailureConditions");
                }
                Ok(b)
            })
            .await;
            let outcome = probe.await.unwrap();
            api.done().await;
            let d = decide_for(
                Feature::BindingConditions,
                FeatureMode::Auto,
                Some(&outcome),
            );
            assert_eq!(d.enabled, keep, "{outcome:?}");
            if !keep {
                assert!(
                    d.reason.contains("DRADeviceBindingConditions"),
                    "{}",
                    d.reason
                );
            }
        }
    }
}
