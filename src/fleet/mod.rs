//! `mock-accel-dra fleet`: many simulated accelerator nodes from one process, for load tests of
//! the controller, the scheduler and meta-drivers. For each node it creates a Node (labelled
//! and tainted so that nothing schedules there by accident, Ready, with a Lease in
//! `kube-node-lease` as a kubelet keeps one) and the MockAccelNode with the status a node agent
//! would write, then keeps both fresh at the heartbeat interval: the controller publishes
//! slices for every node and the scheduler allocates claims there. No kubelet and no node agent
//! run; nothing gets prepared. `fleet --delete` removes everything a fleet made, by label.
//!
//! What the objects hold is computed in [`layout`] (pure); this module sends it, with bounded
//! concurrency, every request under the client's deadlines and every beat under one more.

pub mod layout;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node, resource::v1::ResourceSlice};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::layout::{Fleet, LayoutError, NODE_LEASE_NAMESPACE};
use crate::{
    cli::FleetArgs,
    crd::{AGENT_FIELD_MANAGER, MockAccelNode},
    kube_client::{self, ClientError},
    telemetry,
};

/// How long `--delete` waits for the objects (and the slices the controller withdraws) to go.
const DELETE_WAIT: Duration = Duration::from_secs(120);
/// Failed beats named in the log per round; the rest are counted.
const FAILURES_LOGGED: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("--nodes is required (or --delete to remove a fleet)")]
    NoNodes,
    #[error(
        "creating {what} {name} failed: {source} (check the API server and that the kubeconfig may create Nodes, Leases and MockAccelNodes)"
    )]
    Create {
        what: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error(
        "creating {what} {name} took longer than {deadline:?} (the API server is overloaded: lower --concurrency)"
    )]
    CreateTimeout {
        what: &'static str,
        name: String,
        deadline: Duration,
    },
    #[error(
        "deleting the {what} labelled {selector} failed: {source} (check the API server and the kubeconfig's permissions)"
    )]
    Delete {
        what: &'static str,
        selector: String,
        source: kube::Error,
    },
    #[error(
        "{remaining} after waiting {waited:?} (is kube-controller-manager's garbage collector, or the mock-accel controller, running?)"
    )]
    NotGone { remaining: String, waited: Duration },
}

/// Runs `fleet` until SIGTERM or Ctrl-C (or, with `--delete`, until the fleet is gone).
pub async fn run(args: FleetArgs) -> Result<(), FleetError> {
    let clients = kube_client::clients(args.api.timeouts(), None).await?;
    let client = clients.requests;
    if args.delete {
        return delete(&client, &args.prefix).await;
    }
    let nodes = args.nodes.ok_or(FleetError::NoNodes)?;
    let fleet = Arc::new(Fleet::new(&args.prefix, nodes, args.devices_per_node)?);
    let shutdown = CancellationToken::new();
    telemetry::cancel_on_signal(shutdown.clone());
    let since = Timestamp::now();
    let deadline = args.heartbeat.max(args.api.api_read_timeout);

    let started = Instant::now();
    tracing::info!(nodes, devices_per_node = args.devices_per_node, prefix = %args.prefix,
        concurrency = args.concurrency, "creating the fleet");
    let created = AtomicUsize::new(0);
    let mut uids = vec![String::new(); nodes];
    let mut results = stream::iter(0..nodes)
        .map(|i| {
            let (client, fleet, created) = (&client, &fleet, &created);
            async move {
                let r = create_node(client, fleet, i, since, deadline).await;
                let done = created.fetch_add(1, Ordering::Relaxed) + 1;
                if done % 500 == 0 || done == nodes {
                    tracing::info!(created = done, of = nodes, elapsed = ?started.elapsed(), "nodes created");
                }
                (i, r)
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some((i, r)) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = results.next() => r,
    } {
        uids[i] = r?;
    }
    drop(results);
    tracing::info!(nodes, elapsed = ?started.elapsed(),
        "fleet created; keeping heartbeats fresh until stopped (remove it with `mock-accel-dra fleet --delete`)");

    heartbeats(
        &client,
        &fleet,
        since,
        args.heartbeat,
        args.concurrency.max(1),
        shutdown,
    )
    .await;
    Ok(())
}

/// Creates node `i`'s Node, Lease, MockAccelNode and first status, reusing what exists (a
/// fleet started again over an existing one adopts it). Returns the Node's UID.
async fn create_node(
    client: &Client,
    fleet: &Fleet,
    i: usize,
    since: Timestamp,
    deadline: Duration,
) -> Result<String, FleetError> {
    let name = fleet.node_name(i);
    let step = |what: &'static str, source: kube::Error| FleetError::Create {
        what,
        name: name.clone(),
        source,
    };
    let timed = |what: &'static str| FleetError::CreateTimeout {
        what,
        name: name.clone(),
        deadline,
    };
    let work = async {
        let nodes: Api<Node> = Api::all(client.clone());
        let wanted: Node = serde_json::from_value(fleet.node(&name, since))
            .map_err(|e| step("Node", kube::Error::SerdeError(e)))?;
        let node = match nodes.create(&PostParams::default(), &wanted).await {
            Ok(n) => n,
            Err(e) if is_already_exists(&e) => {
                nodes.get(&name).await.map_err(|e| step("Node", e))?
            }
            Err(e) => return Err(step("Node", e)),
        };
        let uid = node.metadata.uid.clone().unwrap_or_default();
        // The API server adds the not-ready taint to new Nodes; a kubelet's Ready status makes
        // the node lifecycle controller take it off, here the fleet does it.
        let taints = serde_json::to_value(node.spec.as_ref().and_then(|s| s.taints.as_ref()))
            .unwrap_or(Value::Null);
        if taints != fleet.taints() {
            nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "taints": fleet.taints() } })),
                )
                .await
                .map_err(|e| step("Node taints of", e))?;
        }
        let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
        let lease: Lease = serde_json::from_value(fleet.lease(&name, &uid, Timestamp::now()))
            .map_err(|e| step("Lease", kube::Error::SerdeError(e)))?;
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => {}
            Err(e) if is_already_exists(&e) => {}
            Err(e) => return Err(step("Lease", e)),
        }
        let objects: Api<MockAccelNode> = Api::all(client.clone());
        objects
            .patch(
                &name,
                &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
                &Patch::Apply(fleet.mock_accel_node(&name, &uid)),
            )
            .await
            .map_err(|e| step("MockAccelNode", e))?;
        apply_status(&objects, fleet, i, since)
            .await
            .map_err(|e| step("MockAccelNode status of", e))?;
        Ok(uid)
    };
    tokio::time::timeout(deadline * 4, work)
        .await
        .map_err(|_| timed("Node, Lease and MockAccelNode"))?
}

/// The agent's status of node `i`, applied as the node agent applies it (same field manager).
async fn apply_status(
    objects: &Api<MockAccelNode>,
    fleet: &Fleet,
    i: usize,
    since: Timestamp,
) -> Result<(), kube::Error> {
    let name = fleet.node_name(i);
    let status = fleet.status(i, &fleet.report(i), since, Timestamp::now());
    let patch = json!({
        "apiVersion": "mock-accel.example.com/v1alpha1",
        "kind": "MockAccelNode",
        "status": status,
    });
    objects
        .patch_status(
            &name,
            &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    Ok(())
}

/// One beat of node `i`: its agent status and its Lease.
async fn beat(
    client: &Client,
    fleet: &Fleet,
    i: usize,
    since: Timestamp,
) -> Result<(), kube::Error> {
    let objects: Api<MockAccelNode> = Api::all(client.clone());
    apply_status(&objects, fleet, i, since).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    leases
        .patch(
            &fleet.node_name(i),
            &PatchParams::default(),
            &Patch::Merge(Fleet::lease_renewal(Timestamp::now())),
        )
        .await?;
    Ok(())
}

/// Beats every node once per `interval`, spread evenly over it, at most `concurrency` at a
/// time, each within `interval`; logs one line per round. A beat that falls behind its slot
/// still runs (late), so a slow API server lowers the rate instead of piling up requests.
async fn heartbeats(
    client: &Client,
    fleet: &Fleet,
    since: Timestamp,
    interval: Duration,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let start = Instant::now();
    for round in 1u64.. {
        let failed = AtomicUsize::new(0);
        let late = std::sync::Mutex::new(Duration::ZERO);
        let beats = stream::iter(0..fleet.nodes)
            .map(|i| {
                let (failed, late) = (&failed, &late);
                async move {
                    let due = start + layout::beat_offset(interval, fleet.nodes, round, i);
                    tokio::time::sleep_until(due).await;
                    if let Ok(mut l) = late.lock() {
                        *l = (*l).max(due.elapsed());
                    }
                    let outcome =
                        tokio::time::timeout(interval, beat(client, fleet, i, since)).await;
                    let error = match outcome {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {interval:?}"),
                    };
                    if failed.fetch_add(1, Ordering::Relaxed) < FAILURES_LOGGED {
                        tracing::warn!(node = %fleet.node_name(i), %error, "heartbeat failed");
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect::<()>();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            () = beats => {}
        }
        let late = late.lock().map(|l| *l).unwrap_or_default();
        let failed = failed.into_inner();
        if failed > 0 {
            tracing::warn!(round, nodes = fleet.nodes, failed, max_late = ?late, "heartbeat round done with failures");
        } else {
            tracing::info!(round, nodes = fleet.nodes, max_late = ?late, "heartbeat round done");
        }
    }
    tracing::info!(
        "fleet stopped; its objects stay (remove them with `mock-accel-dra fleet --delete`)"
    );
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Deletes the Nodes, Leases and MockAccelNodes labelled as `prefix`'s fleet, then waits until
/// they and the slices the controller published for them are gone.
async fn delete(client: &Client, prefix: &str) -> Result<(), FleetError> {
    let selector = layout::selector(prefix);
    let lp = ListParams::default().labels(&selector);
    let nodes: Api<Node> = Api::all(client.clone());
    let objects: Api<MockAccelNode> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let failed = |what: &'static str| {
        let selector = selector.clone();
        move |source| FleetError::Delete {
            what,
            selector,
            source,
        }
    };
    let names: Vec<String> = nodes
        .list_metadata(&lp)
        .await
        .map_err(failed("Nodes"))?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    tracing::info!(nodes = names.len(), %selector, "deleting the fleet");
    let dp = DeleteParams::background();
    objects
        .delete_collection(&dp, &lp)
        .await
        .map_err(failed("MockAccelNodes"))?;
    leases
        .delete_collection(&dp, &lp)
        .await
        .map_err(failed("Leases"))?;
    nodes
        .delete_collection(&dp, &lp)
        .await
        .map_err(failed("Nodes"))?;

    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let left_nodes = nodes
            .list_metadata(&lp)
            .await
            .map_err(failed("Nodes"))?
            .items
            .len();
        let left_objects = objects
            .list_metadata(&lp)
            .await
            .map_err(failed("MockAccelNodes"))?
            .items
            .len();
        let left_slices = fleet_slices(&slices, &names)
            .await
            .map_err(failed("ResourceSlices of"))?;
        if left_nodes + left_objects + left_slices == 0 {
            tracing::info!(nodes = names.len(), elapsed = ?started.elapsed(), "fleet deleted: its Nodes, Leases, MockAccelNodes and ResourceSlices are gone");
            return Ok(());
        }
        if started.elapsed() >= DELETE_WAIT {
            return Err(FleetError::NotGone {
                remaining: format!(
                    "{left_nodes} Nodes, {left_objects} MockAccelNodes and {left_slices} ResourceSlices of the fleet remain"
                ),
                waited: DELETE_WAIT,
            });
        }
        tracing::info!(
            left_nodes,
            left_objects,
            left_slices,
            "waiting for the fleet to go"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many slices are published for one of `nodes`.
async fn fleet_slices(slices: &Api<ResourceSlice>, nodes: &[String]) -> Result<usize, kube::Error> {
    let names: std::collections::HashSet<&str> = nodes.iter().map(String::as_str).collect();
    Ok(slices
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|s| {
            s.spec
                .node_name
                .as_deref()
                .is_some_and(|n| names.contains(n))
        })
        .count())
}
