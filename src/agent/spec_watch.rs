//! Follows the `spec` of the node's own `MockAccelNode`: a watch on that one object (field
//! selector on its name), turned into a [`watch`] channel that always holds the latest spec,
//! or `None` while the object does not exist. The loops that act on the fixture fields read
//! the channel, so they are level-triggered: a missed event is healed by the next one or by
//! the watch's own relist.

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    crd::{MockAccelNode, MockAccelNodeSpec},
    kube_client::WATCH_TIMEOUT_SECS,
};

/// Publishes the spec of `node`'s object into `tx` until `shutdown`; `client` must be a watch
/// client (no read timeout, see [`crate::kube_client::ClientSet::watch`]). Watch errors are logged
/// and retried with kube's default backoff; the last known spec stays in the channel meanwhile.
pub async fn run(
    client: Client,
    node: String,
    tx: watch::Sender<Option<MockAccelNodeSpec>>,
    shutdown: CancellationToken,
) {
    let api: Api<MockAccelNode> = Api::all(client);
    // Each watch request ends after WATCH_TIMEOUT_SECS, as the controller's do, so a watch the
    // API server silently dropped is noticed.
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={node}"))
        .timeout(WATCH_TIMEOUT_SECS);
    let mut events = watcher(api, config).default_backoff().boxed();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj))) => {
                tx.send_if_modified(|cur| replace(cur, Some(obj.spec)));
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                tx.send_if_modified(|cur| replace(cur, None));
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            Some(Err(e)) => {
                tracing::warn!(node = %node, error = %e,
                    "watching the node's MockAccelNode spec failed; retrying");
            }
        }
    }
}

/// Stores `new` in `cur`; true when it differs, so unchanged specs wake nobody.
fn replace(cur: &mut Option<MockAccelNodeSpec>, new: Option<MockAccelNodeSpec>) -> bool {
    if *cur == new {
        return false;
    }
    *cur = new;
    true
}
