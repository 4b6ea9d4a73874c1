//! The node agent's stale-claim loop: at start and every `--stale-claim-interval` it has the
//! preparer compare its checkpoint with the API ([`crate::plugin::prepare::Preparer::release_stale`],
//! which holds the decision and the release) and reports every claim it released with a log
//! line, a Prometheus counter (`stale_claims_released`, by reason) and an Event on the node's
//! MockAccelNode.

use std::{future::Future, time::Duration};

use kube::{
    Api, Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio_util::sync::CancellationToken;

use crate::{
    crd::MockAccelNode,
    plugin::prepare::stale::{Released, StaleReport},
};

/// Event reason of a released stale claim.
pub const REASON_RELEASED: &str = "StaleClaimReleased";
/// Event reason of a stale claim whose release failed (retried next pass).
pub const REASON_RELEASE_FAILED: &str = "StaleClaimReleaseFailed";
/// Reporting controller of the agent's Events.
pub const REPORTER: &str = "mock-accel-node-agent";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// `stale_claims_released{reason}`: claims the agent released itself.
#[derive(Clone, Debug)]
pub struct StaleClaimMetrics {
    released: Family<ReasonLabels, Counter>,
}

impl StaleClaimMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = StaleClaimMetrics {
            released: Family::default(),
        };
        registry.register(
            "stale_claims_released",
            "Prepared claims the node agent unprepared itself because the API no longer holds \
             them for this node, by reason (deleted, replaced, not_allocated_here)",
            m.released.clone(),
        );
        m
    }
}

/// Where the loop reports a released claim: an Event on the MockAccelNode in production.
pub trait StaleEvents: Send + Sync + 'static {
    fn publish(&self, released: &Released) -> impl Future<Output = ()> + Send;
}

/// Publishes Events on the node's MockAccelNode (RBAC: `events` `create`, `mockaccelnodes` `get`).
pub struct KubeStaleEvents {
    client: Client,
    node: String,
}

impl KubeStaleEvents {
    pub fn new(client: Client, node: String) -> Self {
        KubeStaleEvents { client, node }
    }
}

impl StaleEvents for KubeStaleEvents {
    async fn publish(&self, released: &Released) {
        // The object's UID makes the Event show up in `kubectl describe mockaccelnode`.
        let object = match Api::<MockAccelNode>::all(self.client.clone())
            .get_opt(&self.node)
            .await
        {
            Ok(Some(obj)) => obj.object_ref(&()),
            Ok(None) => {
                tracing::warn!(node = %self.node, "no MockAccelNode to publish a stale-claim Event on");
                return;
            }
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "cannot read the MockAccelNode for a stale-claim Event");
                return;
            }
        };
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: REPORTER.into(),
                instance: Some(self.node.clone()),
            },
        );
        let event = event_for(released);
        if let Err(e) = recorder.publish(&event, &object).await {
            tracing::warn!(node = %self.node, reason = event.reason, error = %e, "cannot publish Event");
        }
    }
}

/// The Event for one released (or failed) claim.
pub fn event_for(released: &Released) -> Event {
    let (type_, reason, note) = match &released.outcome {
        Ok(()) => (
            EventType::Normal,
            REASON_RELEASED,
            format!(
                "claim {} released: {}; devices {} are free again",
                released.claim,
                released.reason.describe(),
                released.devices.join(", ")
            ),
        ),
        Err(e) => (
            EventType::Warning,
            REASON_RELEASE_FAILED,
            format!(
                "claim {} is stale ({}) but releasing it failed: {e}; retried at the next pass",
                released.claim,
                released.reason.describe()
            ),
        ),
    };
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "ReleaseStaleClaim".into(),
        secondary: None,
    }
}

/// Runs `pass` now and then every `interval` until `shutdown`, reporting what it released.
pub async fn run<P, F, E>(
    mut pass: P,
    interval: Duration,
    events: E,
    metrics: StaleClaimMetrics,
    shutdown: CancellationToken,
) where
    P: FnMut() -> F + Send,
    F: Future<Output = StaleReport> + Send,
    E: StaleEvents,
{
    loop {
        let report = tokio::select! {
            () = shutdown.cancelled() => return,
            report = pass() => report,
        };
        report_pass(&report, &events, &metrics).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn report_pass(report: &StaleReport, events: &impl StaleEvents, metrics: &StaleClaimMetrics) {
    if let Some(e) = &report.error {
        tracing::warn!(error = %e, "stale-claim check skipped: the checkpoint is unusable");
    }
    for (claim, why) in &report.unknown {
        tracing::info!(claim = %claim, reason = %why, "stale-claim check: no answer from the API; the claim is kept");
    }
    for released in &report.released {
        match &released.outcome {
            Ok(()) => {
                metrics
                    .released
                    .get_or_create(&ReasonLabels {
                        reason: released.reason.as_str(),
                    })
                    .inc();
                tracing::info!(claim = %released.claim, reason = released.reason.describe(),
                    devices = ?released.devices, "released a stale claim");
            }
            Err(e) => {
                tracing::warn!(claim = %released.claim, reason = released.reason.describe(),
                    error = %e, "releasing a stale claim failed; retried at the next pass")
            }
        }
        events.publish(released).await;
    }
    tracing::debug!(
        checked = report.checked,
        released = report.released.len(),
        "stale-claim check done"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::plugin::prepare::stale::StaleReason;

    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<Event>>>);

    impl StaleEvents for Recorded {
        async fn publish(&self, released: &Released) {
            self.0.lock().unwrap().push(event_for(released));
        }
    }

    fn released(outcome: Result<(), String>) -> Released {
        Released {
            claim: "default/a (uid a)".into(),
            devices: vec!["mock0".into()],
            reason: StaleReason::Deleted,
            outcome,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn checks_at_start_then_every_interval_and_reports_each_release() {
        let passes = Arc::new(AtomicUsize::new(0));
        let events = Recorded::default();
        let mut registry = Registry::default();
        let metrics = StaleClaimMetrics::register(&mut registry);
        let shutdown = CancellationToken::new();
        let counter = passes.clone();
        let task = tokio::spawn(run(
            move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    StaleReport {
                        checked: 1,
                        released: match n {
                            0 => vec![released(Ok(()))],
                            1 => vec![released(Err("disk full".into()))],
                            _ => vec![],
                        },
                        ..Default::default()
                    }
                }
            },
            Duration::from_secs(60),
            events.clone(),
            metrics,
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1, "a pass at start");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 2, "then one per interval");
        shutdown.cancel();
        task.await.unwrap();

        let recorded = std::mem::take(&mut *events.0.lock().unwrap());
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0].reason, REASON_RELEASED);
        assert_eq!(recorded[0].type_, EventType::Normal);
        let note = recorded[0].note.clone().unwrap();
        assert!(
            note.contains("default/a")
                && note.contains("no longer exists")
                && note.contains("mock0"),
            "{note}"
        );
        assert_eq!(recorded[1].reason, REASON_RELEASE_FAILED);
        assert!(recorded[1].note.clone().unwrap().contains("disk full"));

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"stale_claims_released_total{reason="deleted"} 1"#),
            "{text}"
        );
    }
}
