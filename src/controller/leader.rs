//! Leader election on a coordination.k8s.io Lease, so two controller replicas can run and only
//! one writes slices. The leader runs the reconciler; losing the Lease stops it (in-flight
//! reconciles finish), and it starts again when the Lease comes back. On shutdown the Lease is
//! released so the standby takes over without waiting for it to expire.

use std::{future::Future, time::Duration};

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
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

    let failure = follow(&mut leading, &metrics, &shutdown, &cfg.identity, lead).await;

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

/// Runs `lead` whenever `leading` says so, until `shutdown` or until the sender is gone
/// (returned as the failure). Losing the lead cancels the token given to `lead` and waits
/// for it to return before following again.
async fn follow<F, Fut>(
    leading: &mut watch::Receiver<bool>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    identity: &str,
    lead: F,
) -> Option<String>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let ended = || Some("the Lease manager ended".to_string());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            // Only whether the channel closed is kept: a held `Ref` would block the sender.
            closed = async { leading.wait_for(|l| *l).await.is_err() } => if closed {
                return ended();
            },
        }
        tracing::info!(identity, "leading: starting the reconciler");
        metrics.set_leader(true);
        let stop = shutdown.child_token();
        let run = lead(stop.clone());
        tokio::pin!(run);
        let mut failure = None;
        tokio::select! {
            () = &mut run => {}
            closed = async { leading.wait_for(|l| !*l).await.is_err() } => {
                if closed {
                    failure = ended();
                }
                tracing::warn!(identity, "lost the Lease: stopping the reconciler");
                stop.cancel();
                run.await;
            }
        }
        metrics.set_leader(false);
        // Another replica publishes from now on; our count no longer describes the cluster.
        metrics.clear_slices();
        if failure.is_some() || shutdown.is_cancelled() {
            return failure;
        }
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

    /// Drives `follow` with a hand-held leadership channel; each `lead` run reports its start
    /// and waits for its stop token, like the reconciler does.
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<usize>) -> Option<usize> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the leader loop did not react within 5s")
    }

    #[tokio::test]
    async fn leads_only_while_holding_the_lease_and_stops_on_shutdown() {
        use std::sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        };
        let (tx, mut rx) = watch::channel(false);
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let (stopped_tx, mut stopped) = tokio::sync::mpsc::unbounded_channel();
        let runs = Arc::new(AtomicUsize::new(0));
        let metrics = Metrics::unregistered();
        let shutdown = CancellationToken::new();
        let lead = {
            let runs = runs.clone();
            move |stop: CancellationToken| {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                let (started_tx, stopped_tx) = (started_tx.clone(), stopped_tx.clone());
                async move {
                    let _ = started_tx.send(n);
                    stop.cancelled().await;
                    let _ = stopped_tx.send(n);
                }
            }
        };
        let follower = {
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            tokio::spawn(async move { follow(&mut rx, &metrics, &shutdown, "me", lead).await })
        };

        tx.send(true).unwrap();
        assert_eq!(next(&mut started).await, Some(1));
        tx.send(false).unwrap();
        assert_eq!(
            next(&mut stopped).await,
            Some(1),
            "losing the lease stops the run"
        );
        tx.send(true).unwrap();
        assert_eq!(
            next(&mut started).await,
            Some(2),
            "regaining it starts again"
        );
        shutdown.cancel();
        assert_eq!(next(&mut stopped).await, Some(2));
        let ended = tokio::time::timeout(Duration::from_secs(5), follower).await;
        assert_eq!(ended.unwrap().unwrap(), None);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_vanished_lease_manager_is_reported() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        let failure = follow(
            &mut rx,
            &Metrics::unregistered(),
            &CancellationToken::new(),
            "me",
            |_| async {},
        )
        .await;
        assert!(failure.is_some());
    }
}
