//! What a client process measures during one rate step, sent to the parent as one JSON line and
//! merged there over all client processes.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in µs, up to two minutes.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 120_000_000, 3)?)
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct StepReport {
    /// Sessions still open at the end of the step.
    pub open_sessions: u64,
    /// Bench messages (content `t=…`) received during the step.
    pub delivered: u64,
    /// Other messages of the stream (e.g. `Streams/joined`) received during the step.
    pub other: u64,
    /// Ordinals (sequence numbers for NATS) skipped: a message arrived after a gap.
    pub gaps: u64,
    /// Messages at or below the last ordinal the session had (duplicated or out of order).
    pub backwards: u64,
    /// `resync` events (the edge found the session's queue full); the session listens again
    /// from its last ordinal, so a resync costs latency, not messages.
    pub resyncs: u64,
    /// Error replies, `-ERR` lines, unparseable frames.
    pub errors: u64,
    /// Sessions the server closed (or that failed) during the step.
    pub closed: u64,
    /// Sessions whose last message is older than the publisher's last, after the drain.
    pub behind_sessions: u64,
    /// Messages those sessions are missing at the end.
    pub behind_messages: u64,
    /// Unix µs of the first and last bench message received (0 when none).
    pub first_us: u64,
    pub last_us: u64,
    /// The latency histogram as (µs, count) pairs.
    pub latency: Vec<(u64, u64)>,
}

impl StepReport {
    pub fn merge(&mut self, other: &StepReport) {
        self.open_sessions += other.open_sessions;
        self.delivered += other.delivered;
        self.other += other.other;
        self.gaps += other.gaps;
        self.backwards += other.backwards;
        self.resyncs += other.resyncs;
        self.errors += other.errors;
        self.closed += other.closed;
        self.behind_sessions += other.behind_sessions;
        self.behind_messages += other.behind_messages;
        if other.first_us != 0 && (self.first_us == 0 || other.first_us < self.first_us) {
            self.first_us = other.first_us;
        }
        self.last_us = self.last_us.max(other.last_us);
        self.latency.extend_from_slice(&other.latency);
    }

    pub fn histogram(&self) -> anyhow::Result<Histogram<u64>> {
        let mut h = new_histogram()?;
        for &(value, count) in &self.latency {
            h.record_n(value, count)?;
        }
        Ok(h)
    }
}

/// The (µs, count) pairs of a histogram's recorded values.
pub fn histogram_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}
