//! Device health for the kubelet (`DRAResourceHealth`, KEP-4680) in both versions a kubelet
//! may dial: `v1alpha1` (kubelets 1.34 to 1.36) and `v1` (1.37, which prefers it), served on the
//! DRA socket next to `DRAPlugin`. The two carry the same messages; v1 reports are the v1alpha1
//! ones converted field by field, so both always say the same.
//!
//! The kubelet opens one long-lived stream and shows what it learns in the pods'
//! `allocatedResourcesStatus`. A device left out of a report, or not reported again within
//! its timeout, becomes `Unknown`, so every report lists every device the agent's health loop
//! derived (`crate::health`: present devices, and prepared devices that vanished) and is sent
//! again on each change and every [`RESEND_INTERVAL`].

use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::{
    crd::truncate_message,
    health::{DeviceHealth as Derived, NodeHealth},
    inventory::Health,
    proto::{
        dra_health_v1,
        dra_health_v1alpha1::{
            DeviceHealth, DeviceIdentifier, HealthStatus, NodeWatchResourcesRequest,
            NodeWatchResourcesResponse, dra_resource_health_server::DraResourceHealth,
        },
    },
};

/// How often an unchanged report is sent again.
pub const RESEND_INTERVAL: Duration = Duration::from_secs(10);

/// How long the kubelet may trust a report: a few missed resends before `Unknown`.
const TRUST_FACTOR: u32 = 3;

/// The derived device health to report, as the agent's health loop publishes it.
#[derive(Clone, Debug)]
pub struct HealthSource {
    pub health: watch::Receiver<NodeHealth>,
}

/// Streams [`health_report`]s to each kubelet that watches, on either version.
#[derive(Clone)]
pub struct HealthService {
    source: HealthSource,
    resend_every: Duration,
    /// Ends every stream, so that a graceful server shutdown does not wait for the kubelet.
    stop: CancellationToken,
}

impl HealthService {
    pub fn new(source: HealthSource, resend_every: Duration, stop: CancellationToken) -> Self {
        Self {
            source,
            resend_every,
            stop,
        }
    }

    fn open(&self) -> ReceiverStream<Result<NodeWatchResourcesResponse, Status>> {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(stream_reports(
            self.source.clone(),
            self.resend_every,
            self.stop.clone(),
            tx,
        ));
        ReceiverStream::new(rx)
    }
}

/// One full report: every device with its derived health, identified as its ResourceSlice
/// publishes it.
pub fn health_report(
    health: &[Derived],
    now_unix: i64,
    resend_every: Duration,
) -> NodeWatchResourcesResponse {
    let timeout = (resend_every * TRUST_FACTOR).as_secs().max(1);
    NodeWatchResourcesResponse {
        devices: health
            .iter()
            .map(|d| DeviceHealth {
                device: Some(DeviceIdentifier {
                    pool_name: d.pool.clone(),
                    device_name: d.device.clone(),
                }),
                health: match d.health {
                    Health::Healthy => HealthStatus::Healthy,
                    Health::Unhealthy => HealthStatus::Unhealthy,
                    Health::Unknown => HealthStatus::Unknown,
                }
                .into(),
                last_updated_time: now_unix,
                health_check_timeout_seconds: i64::try_from(timeout).unwrap_or(i64::MAX),
                message: truncate_message(d.message.clone()),
            })
            .collect(),
    }
}

/// The same report in v1's types (the messages are identical field by field).
pub fn to_v1(r: NodeWatchResourcesResponse) -> dra_health_v1::NodeWatchResourcesResponse {
    dra_health_v1::NodeWatchResourcesResponse {
        devices: r
            .devices
            .into_iter()
            .map(|d| dra_health_v1::DeviceHealth {
                device: d.device.map(|id| dra_health_v1::DeviceIdentifier {
                    pool_name: id.pool_name,
                    device_name: id.device_name,
                }),
                health: d.health,
                last_updated_time: d.last_updated_time,
                health_check_timeout_seconds: d.health_check_timeout_seconds,
                message: d.message,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = ReceiverStream<Result<NodeWatchResourcesResponse, Status>>;

    async fn node_watch_resources(
        &self,
        _request: Request<NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        Ok(Response::new(self.open()))
    }
}

/// A stream of v1 reports.
pub type V1Stream =
    Pin<Box<dyn Stream<Item = Result<dra_health_v1::NodeWatchResourcesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl dra_health_v1::dra_resource_health_server::DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = V1Stream;

    async fn node_watch_resources(
        &self,
        _request: Request<dra_health_v1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        Ok(Response::new(Box::pin(self.open().map(|r| r.map(to_v1)))))
    }
}

/// Sends a report now, then on every health change and resend tick, until the kubelet hangs
/// up or the server stops.
async fn stream_reports(
    source: HealthSource,
    resend_every: Duration,
    stop: CancellationToken,
    tx: mpsc::Sender<Result<NodeWatchResourcesResponse, Status>>,
) {
    let HealthSource { mut health } = source;
    let mut health_open = true;
    debug!("kubelet started watching device health");
    loop {
        let report = {
            let current = health.borrow_and_update();
            health_report(&current, jiff::Timestamp::now().as_second(), resend_every)
        };
        tokio::select! {
            sent = tx.send(Ok(report)) => if sent.is_err() { break },
            () = stop.cancelled() => break,
        }
        tokio::select! {
            changed = health.changed(), if health_open => {
                // Without a sender the health can no longer change: keep the timer only.
                health_open = changed.is_ok();
            }
            () = tokio::time::sleep(resend_every) => {}
            () = tx.closed() => break,
            () = stop.cancelled() => break,
        }
    }
    debug!("device health stream ended");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_stream::StreamExt;

    use super::*;
    use crate::fixture::HealthEffect;

    fn derived(device: &str, pool: &str, health: Health) -> Derived {
        Derived {
            device: device.into(),
            pool: pool.into(),
            health,
            message: format!("{device}: {health:?}"),
            effect: HealthEffect::NoSchedule,
            present: true,
        }
    }

    fn reported(response: &NodeWatchResourcesResponse) -> Vec<(String, String, HealthStatus)> {
        response
            .devices
            .iter()
            .map(|d| {
                let id = d.device.clone().unwrap_or_default();
                (id.pool_name, id.device_name, d.health())
            })
            .collect()
    }

    #[test]
    fn report_names_devices_as_the_slices_publish_them_with_their_health() {
        let health = vec![
            derived("mock0-vf1", "node-a/numa1", Health::Unhealthy),
            derived("mock2", "node-a/numa-none", Health::Healthy),
            derived("mock3", "node-a/numa-none", Health::Unknown),
        ];
        let report = health_report(&health, 1_700_000_000, Duration::from_secs(10));
        assert_eq!(
            reported(&report),
            [
                (
                    "node-a/numa1".into(),
                    "mock0-vf1".into(),
                    HealthStatus::Unhealthy
                ),
                (
                    "node-a/numa-none".into(),
                    "mock2".into(),
                    HealthStatus::Healthy
                ),
                (
                    "node-a/numa-none".into(),
                    "mock3".into(),
                    HealthStatus::Unknown
                ),
            ]
        );
        let first = &report.devices[0];
        assert_eq!(first.last_updated_time, 1_700_000_000);
        assert_eq!(first.health_check_timeout_seconds, 30);
        assert_eq!(first.message, "mock0-vf1: Unhealthy");

        let v1 = to_v1(report.clone());
        assert_eq!(v1.devices.len(), 3);
        assert_eq!(
            v1.devices[0].health(),
            dra_health_v1::HealthStatus::Unhealthy
        );
        assert_eq!(v1.devices[0].message, report.devices[0].message);
        assert_eq!(
            v1.devices[2].device.as_ref().unwrap().pool_name,
            "node-a/numa-none"
        );
    }

    #[tokio::test]
    async fn both_versions_follow_the_health_and_end_on_stop() {
        use dra_health_v1::dra_resource_health_server::DraResourceHealth as V1;
        let (health_tx, health) = watch::channel(Arc::new(vec![derived(
            "mock0",
            "node-a/numa0",
            Health::Healthy,
        )]));
        let stop = CancellationToken::new();
        let service = HealthService::new(
            HealthSource { health },
            // Longer than the test: every report after the first comes from a change.
            Duration::from_secs(3600),
            stop.clone(),
        );
        let mut alpha = DraResourceHealth::node_watch_resources(
            &service,
            Request::new(NodeWatchResourcesRequest {}),
        )
        .await
        .unwrap()
        .into_inner();
        let mut v1 = V1::node_watch_resources(
            &service,
            Request::new(dra_health_v1::NodeWatchResourcesRequest {}),
        )
        .await
        .unwrap()
        .into_inner();
        let limit = Duration::from_secs(5);
        let first = tokio::time::timeout(limit, alpha.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.devices[0].health(), HealthStatus::Healthy);
        let first = tokio::time::timeout(limit, v1.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            first.devices[0].health(),
            dra_health_v1::HealthStatus::Healthy
        );

        health_tx.send_replace(Arc::new(vec![derived(
            "mock0",
            "node-a/numa0",
            Health::Unhealthy,
        )]));
        let second = tokio::time::timeout(limit, alpha.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(second.devices[0].health(), HealthStatus::Unhealthy);
        let second = tokio::time::timeout(limit, v1.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            second.devices[0].health(),
            dra_health_v1::HealthStatus::Unhealthy
        );

        stop.cancel();
        assert!(
            tokio::time::timeout(limit, alpha.next())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            tokio::time::timeout(limit, v1.next())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn unchanged_reports_are_resent() {
        let (_health_tx, health) = watch::channel(Arc::new(vec![derived(
            "mock0",
            "node-a/numa0",
            Health::Healthy,
        )]));
        let service = HealthService::new(
            HealthSource { health },
            Duration::from_millis(10),
            CancellationToken::new(),
        );
        let mut stream = DraResourceHealth::node_watch_resources(
            &service,
            Request::new(NodeWatchResourcesRequest {}),
        )
        .await
        .unwrap()
        .into_inner();
        for _ in 0..3 {
            let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
            let report = next.unwrap().unwrap().unwrap();
            assert_eq!(report.devices.len(), 1);
        }
    }
}
