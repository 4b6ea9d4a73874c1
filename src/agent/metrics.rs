//! The node agent's own Prometheus metrics, registered under the prefix `mock_accel` beside the
//! plugin's prepare metrics (`plugin::metrics`): sysfs scans and status applies by outcome, and
//! the node's devices by type and state.

use std::collections::HashSet;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::status::AgentReport;
use crate::{
    inventory::DeviceType,
    metrics::{Outcome, OutcomeLabels},
};

/// Prefix of every metric the node agent exports (its own and the plugin's).
pub const METRICS_PREFIX: &str = "mock_accel";

/// Label set of the device gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    r#type: &'static str,
    state: &'static str,
}

/// Handles to every agent metric.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    scans: Family<OutcomeLabels, Counter>,
    devices: Family<DeviceLabels, Gauge>,
    status_writes: Family<OutcomeLabels, Counter>,
    status_deferred: Counter,
}

impl AgentMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = AgentMetrics {
            scans: Family::default(),
            devices: Family::default(),
            status_writes: Family::default(),
            status_deferred: Counter::default(),
        };
        registry.register("discovery_scans", "sysfs scans by outcome", m.scans.clone());
        registry.register(
            "devices",
            "Devices on this node by type and state (free or prepared)",
            m.devices.clone(),
        );
        registry.register(
            "status_writes",
            "MockAccelNode status applies by outcome",
            m.status_writes.clone(),
        );
        registry.register(
            "status_writes_deferred",
            "Status changes held back by the minimum interval between writes (coalesced into the next write)",
            m.status_deferred.clone(),
        );
        m
    }

    /// Metrics registered nowhere, for tests that do not look at them.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    pub fn scanned(&self, ok: bool) {
        self.scans.get_or_create(&Outcome::from_ok(ok).into()).inc();
    }

    pub fn status_written(&self, ok: bool) {
        self.status_writes
            .get_or_create(&Outcome::from_ok(ok).into())
            .inc();
    }

    /// A changed status waits for the minimum interval between writes.
    pub fn status_coalesced(&self) {
        self.status_deferred.inc();
    }

    /// Sets the device gauge from what the agent is about to report.
    pub fn observe_devices(&self, report: &AgentReport) {
        let held: HashSet<&str> = report
            .prepared
            .iter()
            .flat_map(|c| c.devices.iter().map(String::as_str))
            .collect();
        for t in [DeviceType::Pf, DeviceType::Vf] {
            for state in ["free", "prepared"] {
                let n = report
                    .inventory
                    .devices
                    .iter()
                    .filter(|d| {
                        d.device_type == t
                            && held.contains(d.name.as_str()) == (state == "prepared")
                    })
                    .count();
                self.devices
                    .get_or_create(&DeviceLabels {
                        r#type: t.as_str(),
                        state,
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::{inventory::Inventory, plugin::PreparedClaim, test_support::devices};

    #[test]
    fn device_gauge_counts_free_and_prepared_devices_by_type() {
        let mut registry = Registry::default();
        let metrics = AgentMetrics::register(&mut registry);
        let report = AgentReport {
            inventory: Inventory::new(vec![
                devices::pf("mock0").build(),
                devices::vf("mock0_vf0", "mock0").build(),
                devices::vf("mock0_vf1", "mock0").build(),
            ]),
            scan_warnings: Vec::new(),
            prepared: vec![PreparedClaim {
                devices: vec!["mock0-vf1".into()],
                ..Default::default()
            }],
            plugin_registered: true,
            registration_error: None,
            spec: None,
            fault_hits: Default::default(),
            health: Default::default(),
        };
        metrics.observe_devices(&report);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"devices{type="pf",state="free"} 1"#,
            r#"devices{type="vf",state="free"} 1"#,
            r#"devices{type="vf",state="prepared"} 1"#,
            r#"devices{type="pf",state="prepared"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
