//! The controller's Prometheus metrics, registered under the prefix `mock_accel_controller`.
//!
//! Kept in one struct of cheap clonable handles so that the reconcile pipeline, the leader
//! loop and the HTTP server all record into the same registry; the `outcome` label is the one
//! every role uses ([`crate::metrics::Outcome`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::metrics::{Outcome, OutcomeLabels, doubling_buckets};

/// Prefix of every metric the controller exports.
pub const METRICS_PREFIX: &str = "mock_accel_controller";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: &'static str,
    verb: &'static str,
}

/// Handles to every controller metric.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<OutcomeLabels, Counter>,
    reconcile_duration: Histogram,
    slices_published: Gauge,
    api_writes: Family<WriteLabels, Counter>,
    is_leader: Gauge,
    /// Slices published per node; the gauge is their sum, so a node that is reconciled again
    /// replaces its own share instead of adding to it.
    per_node: Arc<Mutex<HashMap<String, i64>>>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(doubling_buckets(0.005, 12)),
            slices_published: Gauge::default(),
            api_writes: Family::default(),
            is_leader: Gauge::default(),
            per_node: Arc::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles of MockAccelNodes by outcome (ok, conflict, error)",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one MockAccelNode reconcile",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "slices_published",
            "ResourceSlices currently published by this controller, all nodes together",
            m.slices_published.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the API server by object kind and verb",
            m.api_writes.clone(),
        );
        registry.register(
            "is_leader",
            "1 while this replica holds the leader Lease and runs the reconciler",
            m.is_leader.clone(),
        );
        m
    }

    /// Metrics registered nowhere, for tests that do not look at them.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    pub fn reconciled(&self, outcome: Outcome, took: Duration) {
        self.reconciles.get_or_create(&outcome.into()).inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn api_write(&self, kind: &'static str, verb: &'static str) {
        self.api_writes
            .get_or_create(&WriteLabels { kind, verb })
            .inc();
    }

    /// Records how many slices `node` has published now (0 once withdrawn or deleted).
    pub fn set_node_slices(&self, node: &str, slices: usize) {
        let slices = i64::try_from(slices).unwrap_or(i64::MAX);
        let Ok(mut per_node) = self.per_node.lock() else {
            return;
        };
        let before = if slices == 0 {
            per_node.remove(node)
        } else {
            per_node.insert(node.to_string(), slices)
        };
        // The node's share replaced in the total; a sum over every node at each reconcile
        // would cost O(nodes) per reconcile.
        self.slices_published
            .inc_by(slices - before.unwrap_or_default());
    }

    /// Forgets every node's count, e.g. when this replica stops leading and another one
    /// takes over the publishing.
    pub fn clear_slices(&self) {
        if let Ok(mut per_node) = self.per_node.lock() {
            per_node.clear();
        }
        self.slices_published.set(0);
    }

    pub fn set_leader(&self, leading: bool) {
        self.is_leader.set(i64::from(leading));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn exports_every_metric_under_the_prefix() {
        let mut registry = Registry::with_prefix(METRICS_PREFIX);
        let m = Metrics::register(&mut registry);
        m.reconciled(Outcome::Ok, Duration::from_millis(3));
        m.reconciled(Outcome::Conflict, Duration::from_millis(3));
        m.api_write("ResourceSlice", "apply");
        m.api_write("ResourceSlice", "apply");
        m.set_leader(true);
        let text = render(&registry);
        for line in [
            "mock_accel_controller_reconciles_total{outcome=\"ok\"} 1",
            "mock_accel_controller_reconciles_total{outcome=\"conflict\"} 1",
            "mock_accel_controller_reconcile_duration_seconds_count 2",
            "mock_accel_controller_api_writes_total{kind=\"ResourceSlice\",verb=\"apply\"} 2",
            "mock_accel_controller_is_leader 1",
            "mock_accel_controller_slices_published 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn slices_gauge_is_the_sum_over_nodes_and_replaces_a_nodes_share() {
        let mut registry = Registry::with_prefix(METRICS_PREFIX);
        let m = Metrics::register(&mut registry);
        m.set_node_slices("a", 2);
        m.set_node_slices("b", 3);
        m.set_node_slices("a", 1);
        assert!(render(&registry).contains("mock_accel_controller_slices_published 4"));
        m.set_node_slices("b", 0);
        assert!(render(&registry).contains("mock_accel_controller_slices_published 1"));
        m.clear_slices();
        assert!(render(&registry).contains("mock_accel_controller_slices_published 0"));
    }
}
