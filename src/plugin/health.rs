//! Device health for the kubelet (`v1alpha1.DRAResourceHealth`, KEP-4680), served on the DRA
//! socket next to `DRAPlugin`.
//!
//! The kubelet opens one long-lived stream and shows what it learns in the pods'
//! `allocatedResourcesStatus`. A device left out of a report, or not reported again within
//! its timeout, becomes `Unknown`, so every report lists every device and is sent again on
//! each inventory change and every [`RESEND_INTERVAL`]. A device is healthy while discovery
//! finds it; a device that disappears drops out of the reports.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::{
    inventory::Inventory,
    proto::dra_health_v1alpha1::{
        DeviceHealth, DeviceIdentifier, HealthStatus, NodeWatchResourcesRequest,
        NodeWatchResourcesResponse, dra_resource_health_server::DraResourceHealth,
    },
};

/// How often an unchanged report is sent again.
pub const RESEND_INTERVAL: Duration = Duration::from_secs(10);

/// How long the kubelet may trust a report: a few missed resends before `Unknown`.
const TRUST_FACTOR: u32 = 3;

/// The devices to report on and the node whose pools they are published in.
#[derive(Clone, Debug)]
pub struct HealthSource {
    pub node_name: String,
    /// The node's current devices, as the agent's discovery publishes them.
    pub inventory: watch::Receiver<Arc<Inventory>>,
}

/// Streams [`health_report`]s to each kubelet that watches.
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
}

/// One full report: every device of `inventory` healthy, identified as its ResourceSlice
/// publishes it.
pub fn health_report(
    inventory: &Inventory,
    node: &str,
    now_unix: i64,
    resend_every: Duration,
) -> NodeWatchResourcesResponse {
    let timeout = (resend_every * TRUST_FACTOR).as_secs().max(1);
    NodeWatchResourcesResponse {
        devices: inventory
            .devices
            .iter()
            .map(|device| DeviceHealth {
                device: Some(DeviceIdentifier {
                    pool_name: device.pool(node),
                    device_name: device.name.clone(),
                }),
                health: HealthStatus::Healthy.into(),
                last_updated_time: now_unix,
                health_check_timeout_seconds: i64::try_from(timeout).unwrap_or(i64::MAX),
                message: format!("{} is present in sysfs", device.sysfs_name),
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
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(stream_reports(
            self.source.clone(),
            self.resend_every,
            self.stop.clone(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends a report now, then on every inventory change and resend tick, until the kubelet
/// hangs up or the server stops.
async fn stream_reports(
    source: HealthSource,
    resend_every: Duration,
    stop: CancellationToken,
    tx: mpsc::Sender<Result<NodeWatchResourcesResponse, Status>>,
) {
    let HealthSource {
        node_name,
        mut inventory,
    } = source;
    let mut inventory_open = true;
    debug!("kubelet started watching device health");
    loop {
        let report = {
            let current = inventory.borrow_and_update();
            health_report(
                &current,
                &node_name,
                jiff::Timestamp::now().as_second(),
                resend_every,
            )
        };
        tokio::select! {
            sent = tx.send(Ok(report)) => if sent.is_err() { break },
            () = stop.cancelled() => break,
        }
        tokio::select! {
            changed = inventory.changed(), if inventory_open => {
                // Without a sender the inventory can no longer change: keep the timer only.
                inventory_open = changed.is_ok();
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
    use tokio_stream::StreamExt;

    use super::*;
    use crate::{inventory::Device, test_support::devices};

    fn device(sysfs_name: &str, numa_node: Option<u32>) -> Device {
        devices::pf(sysfs_name).numa(numa_node).build()
    }

    fn reported(response: &NodeWatchResourcesResponse) -> Vec<(String, String)> {
        response
            .devices
            .iter()
            .map(|d| {
                let id = d.device.clone().unwrap_or_default();
                (id.pool_name, id.device_name)
            })
            .collect()
    }

    #[test]
    fn report_names_devices_as_the_slices_publish_them() {
        let inventory = Inventory::new(vec![device("mock0_vf1", Some(1)), device("mock2", None)]);
        let report = health_report(&inventory, "node-a", 1_700_000_000, Duration::from_secs(10));
        assert_eq!(
            reported(&report),
            [
                ("node-a/numa1".to_string(), "mock0-vf1".to_string()),
                ("node-a/numa-none".to_string(), "mock2".to_string())
            ]
        );
        let first = &report.devices[0];
        assert_eq!(first.health(), HealthStatus::Healthy);
        assert_eq!(first.last_updated_time, 1_700_000_000);
        assert_eq!(first.health_check_timeout_seconds, 30);
        assert!(first.message.contains("mock0_vf1"));
    }

    #[tokio::test]
    async fn stream_follows_the_inventory_and_ends_on_stop() {
        let (inventory_tx, inventory) =
            watch::channel(Arc::new(Inventory::new(vec![device("mock0", Some(0))])));
        let stop = CancellationToken::new();
        let service = HealthService::new(
            HealthSource {
                node_name: "node-a".into(),
                inventory,
            },
            // Longer than the test: every report after the first comes from a change.
            Duration::from_secs(3600),
            stop.clone(),
        );
        let mut stream = service
            .node_watch_resources(Request::new(NodeWatchResourcesRequest {}))
            .await
            .unwrap()
            .into_inner();
        let limit = Duration::from_secs(5);

        let first = tokio::time::timeout(limit, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reported(&first), [("node-a/numa0".into(), "mock0".into())]);

        inventory_tx.send_replace(Arc::new(Inventory::new(vec![
            device("mock0", Some(0)),
            device("mock1", Some(0)),
        ])));
        let second = tokio::time::timeout(limit, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(second.devices.len(), 2);

        // A removed device drops out of the next report.
        inventory_tx.send_replace(Arc::new(Inventory::new(vec![device("mock1", Some(0))])));
        let third = tokio::time::timeout(limit, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reported(&third), [("node-a/numa0".into(), "mock1".into())]);

        stop.cancel();
        assert!(
            tokio::time::timeout(limit, stream.next())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn unchanged_reports_are_resent() {
        let (_inventory_tx, inventory) =
            watch::channel(Arc::new(Inventory::new(vec![device("mock0", Some(0))])));
        let service = HealthService::new(
            HealthSource {
                node_name: "node-a".into(),
                inventory,
            },
            Duration::from_millis(10),
            CancellationToken::new(),
        );
        let mut stream = service
            .node_watch_resources(Request::new(NodeWatchResourcesRequest {}))
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
