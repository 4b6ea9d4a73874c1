//! `node-agent --simulate`: the agent builds and keeps its own simulated device tree under
//! `--sim-root`, shaped by `MockAccelNode.spec.simulation` (the canonical layout when absent),
//! so the driver runs on any node without the kernel module.
//!
//! The tree follows the spec level-triggered: on start and on every change of the spec the
//! desired topology is computed ([`topology`], pure) and the tree brought in line with it
//! ([`crate::sim::rebuild`]), which keeps every device that still exists with its files and
//! status register, so prepared devices stay prepared. An invalid `spec.simulation` leaves the
//! tree as it is (the `SpecValid` condition names the problem). Discovery sees the change
//! through inotify on the class directory, like any hotplug.
//!
//! The simulator plays the kernel's part for the agent's own writes too: `sriov_numvfs` of a
//! simulated PF is changed through [`Simulator::set_numvfs`], under the same lock as the
//! rebuild, so the two never edit the tree at once.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    crd::{MockAccelNode, MockAccelNodeSpec},
    fixture::{
        SimulationSpec,
        validate::{SpecProblem, parse_bytes, simulation_topology},
    },
    sim::{self, RebuildPlan, SimError, TopologySpec},
};

/// Why the simulated tree could not follow the spec.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{0} (the simulated tree stays as it is until spec.simulation is fixed)")]
    Spec(#[from] SpecProblem),
    #[error("simulated tree {root}: {source} (check --sim-root)", root = root.display())]
    Tree { root: PathBuf, source: SimError },
    #[error("the simulated tree's worker thread failed: {0}")]
    Join(String),
}

/// The topology `sim` asks for on the node numbered `node_index` (the UUIDs' `NODE<N>`).
pub fn topology(
    sim: Option<&SimulationSpec>,
    node_index: u32,
) -> Result<TopologySpec, SpecProblem> {
    let default = SimulationSpec::default();
    let sim = sim.unwrap_or(&default);
    let mut t = simulation_topology(sim)?;
    t.node_index = node_index;
    for (field, value, target) in [
        ("pfMemory", &sim.pf_memory, &mut t.pf_memory),
        ("vfMemory", &sim.vf_memory, &mut t.vf_memory),
    ] {
        if let Some(q) = value {
            *target = parse_bytes(q).map_err(|reason| SpecProblem::BadQuantity {
                field: format!("simulation.{field}"),
                value: q.clone(),
                reason,
            })?;
        }
    }
    t.validate()
        .map_err(|e| SpecProblem::Topology(e.to_string()))?;
    Ok(t)
}

/// The agent's simulated tree.
pub struct Simulator {
    root: PathBuf,
    node_index: u32,
    /// Held while the tree is edited (rebuild, `sriov_numvfs`).
    tree: Mutex<()>,
}

impl Simulator {
    pub fn new(root: PathBuf, node_index: u32) -> Arc<Self> {
        Arc::new(Simulator {
            root,
            node_index,
            tree: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Brings the tree in line with `spec.simulation` (blocking file I/O).
    pub fn apply(&self, spec: Option<&MockAccelNodeSpec>) -> Result<RebuildPlan, SimulateError> {
        let topology = topology(spec.and_then(|s| s.simulation.as_ref()), self.node_index)?;
        let _tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
        sim::rebuild(&self.root, None, &topology).map_err(|source| SimulateError::Tree {
            root: self.root.clone(),
            source,
        })
    }

    /// Does what the kernel does when `count` is written to `pf`'s `sriov_numvfs` (blocking).
    pub fn set_numvfs(&self, pf: &str, count: u32) -> Result<(), SimError> {
        let _tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
        sim::set_numvfs(&self.root, None, pf, count).map(|_| ())
    }

    /// [`Simulator::apply`] on the blocking pool, with the outcome logged.
    pub async fn apply_logged(self: &Arc<Self>, spec: Option<MockAccelNodeSpec>) {
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || me.apply(spec.as_ref()))
            .await
            .map_err(|e| SimulateError::Join(e.to_string()))
            .and_then(|r| r);
        match result {
            Ok(plan) if plan.is_empty() => {
                tracing::debug!(root = %self.root.display(), devices = plan.kept.len(),
                    "simulated tree already matches spec.simulation");
            }
            Ok(plan) => {
                let names = |d: &[sim::SimDevice]| {
                    d.iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                tracing::info!(root = %self.root.display(), kept = plan.kept.len(),
                    removed = %names(&plan.remove), added = %names(&plan.add),
                    "simulated tree rebuilt from spec.simulation");
            }
            Err(e) => tracing::warn!(error = %e, "cannot rebuild the simulated tree"),
        }
    }
}

/// The node's spec as it is now, for the first tree before the spec watch has answered;
/// `None` when the object does not exist yet or cannot be read (the canonical layout then,
/// and the watch corrects it).
pub async fn read_spec(client: Client, node: &str) -> Option<MockAccelNodeSpec> {
    let api: Api<MockAccelNode> = Api::all(client);
    match api.get_opt(node).await {
        Ok(obj) => obj.map(|o| o.spec),
        Err(e) => {
            tracing::warn!(node, error = %e,
                "cannot read the node's MockAccelNode; simulating the canonical layout until the spec watch answers");
            None
        }
    }
}

/// Rebuilds the tree whenever the spec changes, until `shutdown`.
pub async fn run(
    simulator: Arc<Simulator>,
    mut spec: watch::Receiver<Option<MockAccelNodeSpec>>,
    shutdown: CancellationToken,
) {
    let mut applied: Option<Option<SimulationSpec>> = None;
    loop {
        let current = spec.borrow_and_update().clone();
        // Only spec.simulation shapes the tree; other fixture fields change nothing here.
        let wanted = current.as_ref().and_then(|s| s.simulation.clone());
        // `None` (object not seen yet) keeps the tree built at start.
        if current.is_some() && applied.as_ref() != Some(&wanted) {
            simulator.apply_logged(current).await;
            applied = Some(wanted);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = spec.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::SimLayout;

    #[test]
    fn no_simulation_spec_is_the_canonical_layout_of_this_node() {
        let t = topology(None, 3).unwrap();
        assert_eq!(t, TopologySpec::canonical(3));
    }

    #[test]
    fn the_spec_sets_sizes_memory_and_layout() {
        let sim = SimulationSpec {
            layout: Some(SimLayout::Sriov),
            numa_nodes: Some(3),
            vfs_per_pf: Some(5),
            pf_memory: Some("32Gi".into()),
            vf_memory: Some("512Mi".into()),
            ..Default::default()
        };
        let t = topology(Some(&sim), 1).unwrap();
        assert!(t.sriov);
        assert_eq!((t.numa_nodes, t.total_vfs, t.vfs_per_pf), (3, 5, 0));
        assert_eq!((t.pf_memory, t.vf_memory), (32 << 30, 512 << 20));
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad_memory = SimulationSpec {
            vf_memory: Some("2GB".into()),
            ..Default::default()
        };
        let err = topology(Some(&bad_memory), 1).unwrap_err().to_string();
        assert!(err.contains("spec.simulation.vfMemory"), "{err}");
        let too_many = SimulationSpec {
            numa_nodes: Some(16),
            ..Default::default()
        };
        let err = topology(Some(&too_many), 1).unwrap_err().to_string();
        assert!(err.contains("numaNodes"), "{err}");
    }

    #[tokio::test]
    async fn the_tree_follows_spec_changes_and_ignores_invalid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let simulator = Simulator::new(dir.path().to_path_buf(), 1);
        // Class links only: a device being rebuilt may be half-read, its link never is.
        let count = || {
            std::fs::read_dir(dir.path().join(crate::sysfs::CLASS_DIR))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let spec = |sim: Option<SimulationSpec>| {
            Some(MockAccelNodeSpec {
                node_name: "node1".into(),
                simulation: sim,
                ..Default::default()
            })
        };
        let (tx, rx) = watch::channel(spec(None));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(simulator.clone(), rx, shutdown.clone()));
        let deadline = std::time::Duration::from_secs(20);
        let wait_for = |n: usize| async move {
            tokio::time::timeout(deadline, async {
                while count() != n {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the tree never held {n} devices (holds {})", count()));
        };
        wait_for(6).await;
        tx.send_replace(spec(Some(SimulationSpec {
            numa_nodes: Some(3),
            ..Default::default()
        })));
        wait_for(9).await;
        // Invalid: nothing changes.
        let invalid = spec(Some(SimulationSpec {
            numa_nodes: Some(99),
            ..Default::default()
        }));
        assert!(matches!(
            simulator.apply(invalid.as_ref()),
            Err(SimulateError::Spec(_))
        ));
        assert_eq!(count(), 9);
        tx.send_replace(invalid);
        tx.send_replace(spec(Some(SimulationSpec {
            vfs_per_pf: Some(0),
            ..Default::default()
        })));
        wait_for(2).await;
        shutdown.cancel();
        task.await.unwrap();
    }
}
