//! The DRA gRPC service (`DRAPlugin`) in its v1 and v1beta1 versions, both served by one
//! [`DraService`] in front of a [`ClaimHandler`].
//!
//! The two versions differ only in `Device.share_id` (v1 only), so each version is a thin
//! adapter that converts messages; the request checks and the "every claim gets an answer" rule
//! live once, in [`DraService::prepare_claims`] and [`DraService::unprepare_claims`].
//!
//! A claim that fails is reported in its own `error` field. A gRPC error would make the kubelet
//! discard the answers for every other claim of the batch, so these handlers never return one.

use std::{
    collections::{HashMap, hash_map::Entry},
    future::Future,
    sync::Arc,
};

use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use super::{ClaimHandler, ClaimRef, PrepareResults, PreparedDevice, UnprepareResults};
use crate::proto::{dra_v1, dra_v1beta1};

/// Serves `v1.DRAPlugin` and `v1beta1.DRAPlugin` by calling one [`ClaimHandler`].
pub struct DraService<H> {
    handler: Arc<H>,
}

impl<H> Clone for DraService<H> {
    fn clone(&self) -> Self {
        Self {
            handler: Arc::clone(&self.handler),
        }
    }
}

impl<H: ClaimHandler> DraService<H> {
    pub fn new(handler: Arc<H>) -> Self {
        Self { handler }
    }

    /// Checks the claims of a NodePrepareResources call, hands the valid ones to the handler,
    /// and returns exactly one result per claim UID of the request.
    pub async fn prepare_claims(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let handler = Arc::clone(&self.handler);
        answer_every_claim("prepare", claims, |valid| async move {
            handler.prepare(valid).await
        })
        .await
    }

    /// Same as [`Self::prepare_claims`] for NodeUnprepareResources.
    pub async fn unprepare_claims(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let handler = Arc::clone(&self.handler);
        answer_every_claim("unprepare", claims, |valid| async move {
            handler.unprepare(valid).await
        })
        .await
    }
}

/// The shared request path of both RPCs: check the claims, call the handler once with the
/// valid ones, and give every requested UID an entry (the kubelet retries a claim that has none,
/// but a handler that forgets one is a bug worth a clear message, not a silent retry loop).
async fn answer_every_claim<T, F, Fut>(
    operation: &str,
    claims: Vec<ClaimRef>,
    call: F,
) -> HashMap<String, Result<T, String>>
where
    F: FnOnce(Vec<ClaimRef>) -> Fut,
    Fut: Future<Output = HashMap<String, Result<T, String>>>,
{
    let checked = check_claims(claims);
    // The handler logs the outcome of the claims it sees; only refusals made here are logged.
    let mut answers: HashMap<String, Result<T, String>> = checked
        .rejected
        .into_iter()
        .map(|(uid, error)| {
            warn!(operation, claim_uid = %uid, %error, "claim refused");
            (uid, Err(error))
        })
        .collect();
    if !checked.valid.is_empty() {
        debug!(
            operation,
            claims = checked.valid.len(),
            "calling the claim handler"
        );
        let results = call(checked.valid.clone()).await;
        answers.extend(complete_results(operation, &checked.valid, results));
    }
    answers
}

/// The claims of one request, split into those the handler may see and those refused here.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CheckedClaims {
    /// Distinct, complete claims in request order.
    pub(crate) valid: Vec<ClaimRef>,
    /// `(uid, error)` for claims that name no UID, namespace or name, or whose UID the request
    /// also uses for a different claim.
    pub(crate) rejected: Vec<(String, String)>,
}

/// Refuses incomplete claims and UIDs used for two different claims; collapses exact repeats
/// (the answer is keyed by UID, so a repeat can only get the same answer anyway).
pub(crate) fn check_claims(claims: Vec<ClaimRef>) -> CheckedClaims {
    enum Verdict {
        Valid(ClaimRef),
        Rejected(String),
    }
    let mut order = Vec::new();
    let mut verdicts: HashMap<String, Verdict> = HashMap::new();
    for claim in claims {
        let problem = missing_fields(&claim);
        match verdicts.entry(claim.uid.clone()) {
            Entry::Vacant(slot) => {
                order.push(claim.uid.clone());
                slot.insert(match problem {
                    Some(error) => Verdict::Rejected(error),
                    None => Verdict::Valid(claim),
                });
            }
            Entry::Occupied(mut slot) => {
                let replacement = match (slot.get(), problem) {
                    (Verdict::Rejected(_), _) => None,
                    (Verdict::Valid(_), Some(error)) => Some(error),
                    (Verdict::Valid(first), None) if *first == claim => None,
                    (Verdict::Valid(first), None) => Some(format!(
                        "claim uid {} is used twice in one request, for {}/{} and {}/{}; \
                         a UID names exactly one ResourceClaim",
                        claim.uid, first.namespace, first.name, claim.namespace, claim.name
                    )),
                };
                if let Some(error) = replacement {
                    slot.insert(Verdict::Rejected(error));
                }
            }
        }
    }
    let mut checked = CheckedClaims {
        valid: Vec::new(),
        rejected: Vec::new(),
    };
    for uid in order {
        match verdicts.remove(&uid) {
            Some(Verdict::Valid(claim)) => checked.valid.push(claim),
            Some(Verdict::Rejected(error)) => checked.rejected.push((uid, error)),
            None => {}
        }
    }
    checked
}

/// Names the empty identifying fields of a claim, if any.
fn missing_fields(claim: &ClaimRef) -> Option<String> {
    let missing: Vec<&str> = [
        ("uid", &claim.uid),
        ("namespace", &claim.namespace),
        ("name", &claim.name),
    ]
    .into_iter()
    .filter(|(_, value)| value.is_empty())
    .map(|(field, _)| field)
    .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "invalid claim {claim}: empty {} (the kubelet names every claim by uid, namespace and name)",
        missing.join(", ")
    ))
}

/// Keeps one result per requested claim and fills an error for any the handler left out.
fn complete_results<T>(
    operation: &str,
    requested: &[ClaimRef],
    mut results: HashMap<String, Result<T, String>>,
) -> HashMap<String, Result<T, String>> {
    let mut complete = HashMap::with_capacity(requested.len());
    for claim in requested {
        let result = results.remove(&claim.uid).unwrap_or_else(|| {
            let error = format!(
                "internal error: the driver returned no {operation} result for claim {claim}; \
                 the kubelet will retry, report this if it persists"
            );
            warn!(operation, claim_uid = %claim.uid, %error, "claim without a result");
            Err(error)
        });
        complete.insert(claim.uid.clone(), result);
    }
    if !results.is_empty() {
        let extra: Vec<&String> = results.keys().collect();
        warn!(
            operation,
            ?extra,
            "driver answered for claims that were not requested; ignored"
        );
    }
    debug_assert!(requested.iter().all(|c| complete.contains_key(&c.uid)));
    complete
}

// ---- v1 adapter ------------------------------------------------------------------------------

impl From<dra_v1::Claim> for ClaimRef {
    fn from(claim: dra_v1::Claim) -> Self {
        Self {
            namespace: claim.namespace,
            uid: claim.uid,
            name: claim.name,
        }
    }
}

impl From<PreparedDevice> for dra_v1::Device {
    fn from(device: PreparedDevice) -> Self {
        Self {
            request_names: device.request_names,
            pool_name: device.pool_name,
            device_name: device.device_name,
            cdi_device_ids: device.cdi_device_ids,
            share_id: device.share_id,
        }
    }
}

/// The gRPC trait impl for one API version. Both versions have the same messages apart from
/// `Device` (whose `From<PreparedDevice>` differs), so the impls differ only in the module path;
/// generating them keeps the two adapters from drifting apart.
macro_rules! dra_plugin_adapter {
    ($api:ident) => {
        #[tonic::async_trait]
        impl<H: ClaimHandler> $api::dra_plugin_server::DraPlugin for DraService<H> {
            async fn node_prepare_resources(
                &self,
                request: Request<$api::NodePrepareResourcesRequest>,
            ) -> Result<Response<$api::NodePrepareResourcesResponse>, Status> {
                let claims = request
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(ClaimRef::from)
                    .collect();
                let claims = self
                    .prepare_claims(claims)
                    .await
                    .into_iter()
                    .map(|(uid, result)| {
                        let answer = match result {
                            Ok(devices) => $api::NodePrepareResourceResponse {
                                devices: devices.into_iter().map($api::Device::from).collect(),
                                error: String::new(),
                            },
                            Err(error) => $api::NodePrepareResourceResponse {
                                devices: Vec::new(),
                                error,
                            },
                        };
                        (uid, answer)
                    })
                    .collect();
                Ok(Response::new($api::NodePrepareResourcesResponse { claims }))
            }

            async fn node_unprepare_resources(
                &self,
                request: Request<$api::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<$api::NodeUnprepareResourcesResponse>, Status> {
                let claims = request
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(ClaimRef::from)
                    .collect();
                let claims = self
                    .unprepare_claims(claims)
                    .await
                    .into_iter()
                    .map(|(uid, result)| {
                        let error = result.err().unwrap_or_default();
                        (uid, $api::NodeUnprepareResourceResponse { error })
                    })
                    .collect();
                Ok(Response::new($api::NodeUnprepareResourcesResponse {
                    claims,
                }))
            }
        }
    };
}

dra_plugin_adapter!(dra_v1);

// ---- v1beta1 adapter -------------------------------------------------------------------------

impl From<dra_v1beta1::Claim> for ClaimRef {
    fn from(claim: dra_v1beta1::Claim) -> Self {
        Self {
            namespace: claim.namespace,
            uid: claim.uid,
            name: claim.name,
        }
    }
}

/// v1beta1 has no `share_id`: a kubelet that speaks only v1beta1 predates shared allocations.
impl From<PreparedDevice> for dra_v1beta1::Device {
    fn from(device: PreparedDevice) -> Self {
        Self {
            request_names: device.request_names,
            pool_name: device.pool_name,
            device_name: device.device_name,
            cdi_device_ids: device.cdi_device_ids,
        }
    }
}

dra_plugin_adapter!(dra_v1beta1);

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn claim(uid: &str, namespace: &str, name: &str) -> ClaimRef {
        ClaimRef {
            namespace: namespace.to_string(),
            uid: uid.to_string(),
            name: name.to_string(),
        }
    }

    fn device(name: &str) -> PreparedDevice {
        PreparedDevice {
            request_names: vec!["accel".to_string()],
            pool_name: "node-a/numa0".to_string(),
            device_name: name.to_string(),
            cdi_device_ids: vec![format!("mock-accel.example.com/accel=uid-{name}")],
            share_id: Some("share-1".to_string()),
        }
    }

    /// Records what it was asked and answers from a script; claims without a script entry
    /// get no answer at all, like a buggy handler.
    #[derive(Default)]
    struct ScriptedHandler {
        seen: Mutex<Vec<Vec<ClaimRef>>>,
        prepare: HashMap<String, Result<Vec<PreparedDevice>, String>>,
        unprepare: HashMap<String, Result<(), String>>,
    }

    impl ClaimHandler for ScriptedHandler {
        async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
            let answers = claims
                .iter()
                .filter_map(|c| Some((c.uid.clone(), self.prepare.get(&c.uid)?.clone())))
                .collect();
            self.seen.lock().unwrap().push(claims);
            answers
        }
        async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
            let answers = claims
                .iter()
                .filter_map(|c| Some((c.uid.clone(), self.unprepare.get(&c.uid)?.clone())))
                .collect();
            self.seen.lock().unwrap().push(claims);
            answers
        }
    }

    #[test]
    fn complete_claims_pass_in_request_order() {
        let claims = vec![claim("u2", "ns", "b"), claim("u1", "ns", "a")];
        let checked = check_claims(claims.clone());
        assert_eq!(checked.valid, claims);
        assert!(checked.rejected.is_empty());
    }

    #[test]
    fn empty_fields_are_named_in_the_error() {
        let checked = check_claims(vec![claim("u1", "", "a"), claim("", "ns", "")]);
        assert!(checked.valid.is_empty());
        assert_eq!(checked.rejected.len(), 2);
        assert_eq!(checked.rejected[0].0, "u1");
        assert!(
            checked.rejected[0].1.contains("empty namespace"),
            "{}",
            checked.rejected[0].1
        );
        assert_eq!(checked.rejected[1].0, "");
        assert!(
            checked.rejected[1].1.contains("empty uid, name"),
            "{}",
            checked.rejected[1].1
        );
    }

    #[test]
    fn exact_repeats_collapse_and_conflicting_uids_are_refused() {
        let checked = check_claims(vec![
            claim("u1", "ns", "a"),
            claim("u1", "ns", "a"),
            claim("u2", "ns", "b"),
            claim("u2", "other", "b"),
            claim("u3", "ns", "c"),
            claim("u3", "ns", ""),
        ]);
        assert_eq!(checked.valid, vec![claim("u1", "ns", "a")]);
        let rejected: HashMap<_, _> = checked.rejected.into_iter().collect();
        assert_eq!(rejected.len(), 2);
        assert!(rejected["u2"].contains("used twice"), "{}", rejected["u2"]);
        assert!(rejected["u2"].contains("ns/b") && rejected["u2"].contains("other/b"));
        assert!(rejected["u3"].contains("empty name"), "{}", rejected["u3"]);
    }

    #[tokio::test]
    async fn every_claim_gets_an_entry_even_when_the_handler_forgets_one() {
        let handler = Arc::new(ScriptedHandler {
            prepare: HashMap::from([
                ("ok".to_string(), Ok(vec![device("mock0")])),
                ("bad".to_string(), Err("device mock9 not found".to_string())),
                ("unasked".to_string(), Ok(vec![])),
            ]),
            ..Default::default()
        });
        let service = DraService::new(Arc::clone(&handler));
        let results = service
            .prepare_claims(vec![
                claim("ok", "ns", "a"),
                claim("bad", "ns", "b"),
                claim("forgotten", "ns", "c"),
                claim("invalid", "ns", ""),
            ])
            .await;
        assert_eq!(results.len(), 4);
        assert_eq!(results["ok"], Ok(vec![device("mock0")]));
        assert_eq!(results["bad"], Err("device mock9 not found".to_string()));
        let forgotten = results["forgotten"].as_ref().unwrap_err();
        assert!(
            forgotten.contains("no prepare result for claim ns/c"),
            "{forgotten}"
        );
        assert!(
            results["invalid"]
                .as_ref()
                .unwrap_err()
                .contains("empty name")
        );
        // The invalid claim never reached the handler.
        let seen = handler.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![vec![
                claim("ok", "ns", "a"),
                claim("bad", "ns", "b"),
                claim("forgotten", "ns", "c")
            ]]
        );
    }

    #[tokio::test]
    async fn handler_is_not_called_when_no_claim_is_valid() {
        let handler = Arc::new(ScriptedHandler::default());
        let service = DraService::new(Arc::clone(&handler));
        assert!(service.unprepare_claims(vec![]).await.is_empty());
        let results = service.unprepare_claims(vec![claim("", "ns", "a")]).await;
        assert!(results[""].is_err());
        assert!(handler.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn share_id_reaches_v1_and_is_dropped_in_v1beta1() {
        use dra_v1::dra_plugin_server::DraPlugin as V1;
        use dra_v1beta1::dra_plugin_server::DraPlugin as V1beta1;

        let handler = Arc::new(ScriptedHandler {
            prepare: HashMap::from([("u1".to_string(), Ok(vec![device("mock0")]))]),
            unprepare: HashMap::from([("u1".to_string(), Err("register busy".to_string()))]),
            ..Default::default()
        });
        let service = DraService::new(handler);

        let v1 = V1::node_prepare_resources(
            &service,
            Request::new(dra_v1::NodePrepareResourcesRequest {
                claims: vec![dra_v1::Claim {
                    namespace: "ns".into(),
                    uid: "u1".into(),
                    name: "a".into(),
                }],
            }),
        )
        .await
        .unwrap()
        .into_inner();
        let answer = &v1.claims["u1"];
        assert_eq!(answer.error, "");
        assert_eq!(answer.devices[0].share_id.as_deref(), Some("share-1"));
        assert_eq!(
            answer.devices[0].cdi_device_ids,
            ["mock-accel.example.com/accel=uid-mock0"]
        );

        let beta = V1beta1::node_prepare_resources(
            &service,
            Request::new(dra_v1beta1::NodePrepareResourcesRequest {
                claims: vec![dra_v1beta1::Claim {
                    namespace: "ns".into(),
                    uid: "u1".into(),
                    name: "a".into(),
                }],
            }),
        )
        .await
        .unwrap()
        .into_inner();
        let device = &beta.claims["u1"].devices[0];
        assert_eq!(device.device_name, "mock0");
        assert_eq!(device.pool_name, "node-a/numa0");
        assert_eq!(device.request_names, ["accel"]);

        let unprepared = V1beta1::node_unprepare_resources(
            &service,
            Request::new(dra_v1beta1::NodeUnprepareResourcesRequest {
                claims: vec![dra_v1beta1::Claim {
                    namespace: "ns".into(),
                    uid: "u1".into(),
                    name: "a".into(),
                }],
            }),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(unprepared.claims["u1"].error, "register busy");
    }
}
