//! Leader election on a coordination.k8s.io Lease, so two controller replicas can run and only
//! one writes slices. The leader runs the reconciler; losing the Lease stops it (in-flight
//! reconciles finish), and it starts again when the Lease comes back. On shutdown the Lease is
//! released so the standby takes over without waiting for it to expire.

use std::{future::Future, time::Duration};

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::telemetry::Readiness;

/// How long shutdown waits for the Lease release before giving up (the Lease then expires).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease duration {0:?} is too short: use at least 2s (--lease-duration)")]
    Duration(Duration),
    #[error(
        "cannot set up Lease {namespace}/{name}: {source} (check that the namespace exists and RBAC allows leases get, create, patch)"
    )]
    Setup {
        namespace: String,
        name: String,
        source: LeaseManagerError,
    },
    #[error("leader election on Lease {namespace}/{name} stopped: {reason}")]
    Stopped {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// Where and as whom to take part in the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
}

/// Lease duration and renewal grace in whole seconds: the holder renews `grace` seconds before
/// expiry, a third of the duration (at least 1 s), which leaves two renew attempts per term.
pub fn lease_timing(duration: Duration) -> Result<(u64, u64), LeaderError> {
    let secs = duration.as_secs();
    if secs < 2 {
        return Err(LeaderError::Duration(duration));
    }
    Ok((secs, (secs / 3).max(1)))
}

/// Takes part in the election until `shutdown`; runs `lead(stop)` while leading, where `stop`
/// is cancelled when the Lease is lost or on shutdown and `lead` must return soon after.
pub async fn run_elected<F, Fut>(
    client: Client,
    cfg: LeaseConfig,
    ready: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
    lead: F,
) -> Result<(), LeaderError>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let (duration, grace) = lease_timing(cfg.duration)?;
    let setup = |source| LeaderError::Setup {
        namespace: cfg.namespace.clone(),
        name: cfg.name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &cfg.name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await
        .map_err(setup)?;
    let (mut leading, lease_task) = manager.watch().await;
    // A standby is ready: it takes part in the election and can take over.
    ready.set(true);
    tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "waiting for leadership");

    let mut failure = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = leading.wait_for(|l| *l) => if r.is_err() {
                failure = Some("the Lease manager ended".to_string());
                break;
            },
        }
        tracing::info!(identity = %cfg.identity, "leading: starting the reconciler");
        metrics.set_leader(true);
        let stop = shutdown.child_token();
        let run = lead(stop.clone());
        tokio::pin!(run);
        tokio::select! {
            () = &mut run => {}
            r = leading.wait_for(|l| !*l) => {
                if r.is_err() {
                    failure = Some("the Lease manager ended".to_string());
                }
                tracing::warn!(identity = %cfg.identity, "lost the Lease: stopping the reconciler");
                stop.cancel();
                run.await;
            }
        }
        metrics.set_leader(false);
        // Another replica publishes from now on; our count no longer describes the cluster.
        metrics.clear_slices();
        if failure.is_some() || shutdown.is_cancelled() {
            break;
        }
    }

    // Dropping the receiver makes the manager release the Lease and return.
    drop(leading);
    match tokio::time::timeout(RELEASE_TIMEOUT, lease_task).await {
        Ok(Ok(Ok(_))) => tracing::info!(lease = %cfg.name, "Lease released"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(lease = %cfg.name, error = %e, "releasing the Lease failed; it will expire")
        }
        Ok(Err(e)) => tracing::warn!(lease = %cfg.name, error = %e, "Lease manager task failed"),
        Err(_) => {
            tracing::warn!(lease = %cfg.name, "releasing the Lease timed out; it will expire")
        }
    }
    match failure {
        Some(reason) => Err(LeaderError::Stopped {
            namespace: cfg.namespace,
            name: cfg.name,
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_timing_leaves_room_to_renew() {
        assert_eq!(lease_timing(Duration::from_secs(15)).unwrap(), (15, 5));
        assert_eq!(lease_timing(Duration::from_secs(2)).unwrap(), (2, 1));
        assert!(lease_timing(Duration::from_millis(1500)).is_err());
    }
}
