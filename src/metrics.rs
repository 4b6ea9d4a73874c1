//! Metric conventions every role shares. Each role keeps its metrics in one struct of cheap
//! clonable handles (`agent::metrics`, `plugin::metrics`, `controller::metrics`), built the same
//! way: `register(&mut Registry) -> Self` creates the handles and registers them under the
//! prefix the caller gave the registry. Every counter of requests or attempts carries the one
//! [`Outcome`] label defined here, so dashboards query `outcome="ok"` everywhere.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Histogram buckets `start`, `2 × start`, `4 × start`, … (`count` of them): the values of
/// prometheus-client's `exponential_buckets(start, 2.0, count)`, by doubling (exact in floating
/// point) instead of its `powf`. That `powf` was the node agent's only call into libm besides the
/// multi-threaded runtime's (see `agent::runtime`); without both the binary does not link libm,
/// whose mapping was 0.5 MiB of an idle agent's resident memory.
pub fn doubling_buckets(start: f64, count: usize) -> impl Iterator<Item = f64> {
    std::iter::successors(Some(start), |b| Some(b * 2.0)).take(count)
}

/// How one request, scan, write or reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// The API server answered 409; the work is retried at once.
    Conflict,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        }
    }

    /// `Ok` for success, `Error` otherwise.
    pub fn from_ok(ok: bool) -> Self {
        if ok { Outcome::Ok } else { Outcome::Error }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The label set of every counter by outcome: `{outcome="ok|conflict|error"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

impl From<Outcome> for OutcomeLabels {
    fn from(outcome: Outcome) -> Self {
        OutcomeLabels { outcome }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        encoding::text::encode,
        metrics::{counter::Counter, family::Family, histogram::exponential_buckets},
        registry::Registry,
    };

    use super::*;

    #[test]
    fn outcomes_are_lowercase_label_values() {
        let mut registry = Registry::with_prefix("t");
        let family = Family::<OutcomeLabels, Counter>::default();
        registry.register("calls", "Calls", family.clone());
        family.get_or_create(&Outcome::Ok.into()).inc();
        family.get_or_create(&Outcome::from_ok(false).into()).inc();
        family.get_or_create(&Outcome::Conflict.into()).inc();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"t_calls_total{outcome="ok"} 1"#,
            r#"t_calls_total{outcome="error"} 1"#,
            r#"t_calls_total{outcome="conflict"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn doubling_buckets_are_the_exponential_buckets_of_factor_two() {
        for (start, count) in [(0.0001, 16), (0.005, 12)] {
            let ours: Vec<f64> = doubling_buckets(start, count).collect();
            let theirs: Vec<f64> = exponential_buckets(start, 2.0, count as u16).collect();
            assert_eq!(ours, theirs);
        }
    }
}
