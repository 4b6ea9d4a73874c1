//! The one retry policy of the driver: an exponential backoff that doubles from a first delay
//! up to a cap and never gives up (a node agent or a controller has nothing better to do than
//! try again). Built on `backon`; used by the node agent's status writer and the controller's
//! per-node error requeue.
//!
//! No jitter: each process retries one object of its own (the agent its node, the controller
//! each node on its own schedule), so there is no herd to spread, and the delays stay exact for
//! tests and for people reading logs.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays of consecutive failures: `first`, `2 × first`, … up to `max`, then `max` forever.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            max,
        }
    }

    /// The delay after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), Duration::from_secs(10));
        let first: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(
            first,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000].map(ms)
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(500));

        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(300));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300].map(s)
        );
    }
}
