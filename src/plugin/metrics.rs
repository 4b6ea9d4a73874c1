//! The kubelet plugin's Prometheus metrics: prepare and unprepare requests by outcome, their
//! latency, and the number of claims prepared on the node. Registered beside the agent's own
//! metrics under the agent's prefix.

use std::time::Instant;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::metrics::{Outcome, OutcomeLabels, doubling_buckets};

/// Prepare and unprepare metrics, one observation per claim.
#[derive(Clone, Debug)]
pub struct PrepareMetrics {
    pub prepare_requests: Family<OutcomeLabels, Counter>,
    pub unprepare_requests: Family<OutcomeLabels, Counter>,
    pub prepare_duration: Histogram,
    pub unprepare_duration: Histogram,
    pub prepared_claims: Gauge,
}

impl PrepareMetrics {
    /// Creates the metrics and registers them into `registry` (whose prefix the caller sets).
    pub fn register(registry: &mut Registry) -> Self {
        // 100 µs .. ~3.3 s: a prepare is a few file writes, plus an API GET.
        let buckets = || Histogram::new(doubling_buckets(0.0001, 16));
        let m = PrepareMetrics {
            prepare_requests: Family::default(),
            unprepare_requests: Family::default(),
            prepare_duration: buckets(),
            unprepare_duration: buckets(),
            prepared_claims: Gauge::default(),
        };
        registry.register(
            "prepare_requests",
            "Claims prepared, by outcome",
            m.prepare_requests.clone(),
        );
        registry.register(
            "unprepare_requests",
            "Claims unprepared, by outcome",
            m.unprepare_requests.clone(),
        );
        registry.register_with_unit(
            "prepare_duration",
            "Time to prepare one claim",
            Unit::Seconds,
            m.prepare_duration.clone(),
        );
        registry.register_with_unit(
            "unprepare_duration",
            "Time to unprepare one claim",
            Unit::Seconds,
            m.unprepare_duration.clone(),
        );
        registry.register(
            "prepared_claims",
            "Claims currently prepared on this node",
            m.prepared_claims.clone(),
        );
        m
    }

    /// One prepare of one claim, which started at `start`.
    pub fn prepared(&self, ok: bool, start: Instant) {
        Self::observe(&self.prepare_requests, &self.prepare_duration, ok, start);
    }

    /// One unprepare of one claim, which started at `start`.
    pub fn unprepared(&self, ok: bool, start: Instant) {
        Self::observe(
            &self.unprepare_requests,
            &self.unprepare_duration,
            ok,
            start,
        );
    }

    fn observe(
        family: &Family<OutcomeLabels, Counter>,
        histogram: &Histogram,
        ok: bool,
        start: Instant,
    ) {
        family.get_or_create(&Outcome::from_ok(ok).into()).inc();
        histogram.observe(start.elapsed().as_secs_f64());
    }
}
