//! Ephemerals to big rooms are rate-limited per stream: one token bucket per big stream, on
//! the node that accepts the stream's ephemerals (its shard's leader).
//!
//! An ephemeral to a room of 300,000 members is written to every listening session; a few
//! clients typing in a loop would otherwise make every edge relay thousands of frames a second
//! to everyone. Small rooms are not limited (their ephemerals reach few sessions).
//!
//! The buckets live in memory only. Ephemerals are not stored or replicated, and neither is
//! their budget: after a leader change the new leader starts every stream with a full burst,
//! which at worst lets one extra burst through per failover.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use chorus_streams::validate::EphemeralLimits;
use chorus_types::StreamKey;

/// Map size at which admitting next drops the buckets that have refilled completely (a full
/// bucket is the same as none). Amortised like the hub's sweep: the threshold doubles with
/// what remains.
const SWEEP_FLOOR: usize = 1024;

/// One big stream's budget.
#[derive(Debug)]
struct Bucket {
    /// Ephemerals the stream may still send now, fractional between refills.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

/// The buckets, behind one lock.
struct Buckets {
    /// Big streams that sent an ephemeral lately.
    by_stream: HashMap<StreamKey, Bucket>,
    /// Map size at which the next admit sweeps; see [`SWEEP_FLOOR`].
    sweep_at: usize,
}

/// The per-stream token buckets of this node.
pub(crate) struct EphemeralLimiter {
    limits: EphemeralLimits,
    /// A short critical section per ephemeral to a big stream, never held across an `.await`.
    buckets: Mutex<Buckets>,
}

/// A refused ephemeral: how long until the stream's bucket holds one again, in ms.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RetryAfterMs(pub(crate) u64);

impl EphemeralLimiter {
    pub(crate) fn new(limits: EphemeralLimits) -> Self {
        EphemeralLimiter {
            limits,
            buckets: Mutex::new(Buckets { by_stream: HashMap::new(), sweep_at: SWEEP_FLOOR }),
        }
    }

    fn rate(&self) -> f64 {
        f64::from(self.limits.big_room_per_second)
    }

    fn burst(&self) -> f64 {
        f64::from(self.limits.big_room_burst)
    }

    /// Takes one token from `key`'s bucket when the stream is big; `Err` when there is none.
    pub(crate) fn admit(
        &self,
        key: &StreamKey,
        participant_count: u64,
        now: Instant,
    ) -> Result<(), RetryAfterMs> {
        if !self.limits.is_big(participant_count) {
            return Ok(());
        }
        let (rate, burst) = (self.rate(), self.burst());
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        self.sweep(&mut buckets, now);
        let bucket =
            buckets.by_stream.entry(key.clone()).or_insert(Bucket { tokens: burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        // Rounded up: retrying after exactly this long finds a whole token.
        let wait_ms = ((1.0 - bucket.tokens) / rate * 1000.0).ceil();
        // At most 1000 ms (rate ≥ 1), so the cast cannot truncate.
        Err(RetryAfterMs((wait_ms as u64).max(1)))
    }

    /// Drops buckets that are full again by `now`, once the map has grown past the threshold.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        if buckets.by_stream.len() < buckets.sweep_at {
            return;
        }
        let (rate, burst) = (self.rate(), self.burst());
        buckets.by_stream.retain(|_, b| {
            let refilled = b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate;
            refilled < burst
        });
        buckets.sweep_at = (buckets.by_stream.len() * 2).max(SWEEP_FLOOR);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().map(|b| b.by_stream.len()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use chorus_types::{PublisherId, StreamName};

    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::new(PublisherId::new("alice").unwrap(), StreamName::new(name).unwrap())
    }

    fn limiter() -> EphemeralLimiter {
        EphemeralLimiter::new(EphemeralLimits {
            big_room_participants: 1000,
            big_room_per_second: 20,
            big_room_burst: 40,
        })
    }

    /// A big stream gets its burst, then one ephemeral per 1/rate seconds, with the wait until
    /// the next token as the retry hint.
    #[test]
    fn big_stream_gets_burst_then_rate() {
        let l = limiter();
        let t0 = Instant::now();
        for _ in 0..40 {
            assert_eq!(l.admit(&key("big"), 1001, t0), Ok(()));
        }
        assert_eq!(l.admit(&key("big"), 1001, t0), Err(RetryAfterMs(50)));
        let later = t0 + Duration::from_millis(30);
        assert_eq!(l.admit(&key("big"), 1001, later), Err(RetryAfterMs(20)));
        let refilled = t0 + Duration::from_millis(50);
        assert_eq!(l.admit(&key("big"), 1001, refilled), Ok(()));
        assert!(l.admit(&key("big"), 1001, refilled).is_err());
        // Another big stream has its own bucket.
        assert_eq!(l.admit(&key("other"), 5000, refilled), Ok(()));
    }

    /// At or below the threshold nothing is limited or tracked.
    #[test]
    fn small_streams_are_not_limited() {
        let l = limiter();
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(l.admit(&key("small"), 1000, now), Ok(()));
        }
        assert_eq!(l.tracked(), 0);
    }

    /// Idle big streams do not accumulate: a full bucket is dropped by the next sweep.
    #[test]
    fn full_buckets_are_swept() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..SWEEP_FLOOR {
            l.admit(&key(&format!("room/{i}")), 2000, t0).unwrap();
        }
        assert_eq!(l.tracked(), SWEEP_FLOOR);
        let later = t0 + Duration::from_secs(3);
        l.admit(&key("fresh"), 2000, later).unwrap();
        assert_eq!(l.tracked(), 1, "only the stream that just sent is left");
    }
}
