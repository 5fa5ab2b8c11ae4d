//! Jittered exponential backoff for reconnects and transient-error retries.

use std::time::Duration;

use rand::Rng;

/// How long to wait between attempts: `initial`, doubling per failed attempt, capped at `max`,
/// reset after a success. The defaults are 1 s and 8 s, the Amity SDK's reconnect constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(8) }
    }
}

/// The attempt counter of one retry loop.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    /// Failed attempts since the last success; the exponent.
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Backoff {
        Backoff { policy, failures: 0 }
    }

    /// The nominal delay before the next attempt, without jitter.
    fn nominal(&self) -> Duration {
        // 2^16 × any sane initial delay is past any sane cap; the exponent stops growing there.
        let factor = 1u32 << self.failures.min(16);
        self.policy.initial.saturating_mul(factor).min(self.policy.max)
    }

    /// The delay before the next attempt, and counts this failure.
    ///
    /// "Equal jitter": a uniform draw in `[nominal / 2, nominal]`. Clients that lost the same
    /// server at the same moment spread out instead of reconnecting in lockstep, and the delay
    /// still grows with each failure (full jitter could draw ~0 every time).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal();
        self.failures = self.failures.saturating_add(1);
        let half = nominal / 2;
        let spread_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(rand::rng().random_range(0..=spread_ms));
        half + jitter
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        let nominal_secs = [1, 2, 4, 8, 8, 8];
        for secs in nominal_secs {
            let nominal = Duration::from_secs(secs);
            let delay = backoff.next_delay();
            assert!(delay >= nominal / 2 && delay <= nominal, "{delay:?} for {nominal:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(8));
        }
    }
}
