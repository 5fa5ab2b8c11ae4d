//! Per-shard Raft gauges (`chorus_raft_shard_*{shard}`), read from each group's openraft
//! metrics watch when Prometheus scrapes.
//!
//! Reading at scrape time costs the commit path nothing (no task wakes per commit) and is
//! never staler than the scrape. The `shard` label is bounded by the shard count S (fixed at
//! cluster init, at most 4096); a node exports the shards it holds.
//!
//! | metric | meaning |
//! |---|---|
//! | `chorus_raft_shard_leader` | the leader's node id as this node knows it, 0 when none |
//! | `chorus_raft_shard_is_leader` | 1 when this node leads the shard |
//! | `chorus_raft_shard_term` | current term |
//! | `chorus_raft_shard_last_log_index` | last index in this node's log |
//! | `chorus_raft_shard_commit_index` | last index known committed |
//! | `chorus_raft_shard_applied_index` | last index applied to the state machine |
//! | `chorus_raft_shard_apply_lag` | committed − applied: entries waiting to be applied |
//! | `chorus_raft_shards_without_leader` | local shards with no known leader (what `/readyz` checks) |
//! | `chorus_raft_hibernating_groups` | local groups with their ticker off: idle leaders, and followers trusting their leader's node liveness ([`crate::grpc::hibernate`]) |
//! | `chorus_raft_peer_calls_total{kind}` | Raft calls sent to peers: `entries` (appends carrying entries), `commit` (empty appends moving the commit index), `heartbeat`, `vote` |
//! | `chorus_raft_peer_batches_total` | `Peer.Batch` round trips those calls travelled in |
//! | `chorus_raft_peer_batch_duration_seconds{lane}` | one `Peer.Batch` round trip as its sender saw it: `entries` (appends carrying entries: includes the peer's fsync) or `control` |
//! | `chorus_raft_peer_append_duration_seconds` | on the receiver: handling one append carrying entries, from decoding to its reply (includes the fsync) |

use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use chorus_storage::metrics::{
    LATENCY_BUCKETS, counter, gauge, histogram, unregistered_gauge, unregistered_gauge_vec,
};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use crate::group::ShardGroup;

static HIBERNATING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "chorus_raft_hibernating_groups",
        "local groups with their raft ticker off (idle leaders; followers trusting node liveness)",
    )
});

/// What a Raft call to a peer carries (the `kind` label of `chorus_raft_peer_calls_total`).
#[derive(Clone, Copy, Debug)]
pub enum CallKind {
    Entries,
    Commit,
    Heartbeat,
    Vote,
}

impl CallKind {
    const ALL: [CallKind; 4] =
        [CallKind::Entries, CallKind::Commit, CallKind::Heartbeat, CallKind::Vote];

    fn label(self) -> &'static str {
        match self {
            CallKind::Entries => "entries",
            CallKind::Commit => "commit",
            CallKind::Heartbeat => "heartbeat",
            CallKind::Vote => "vote",
        }
    }
}

// Constant names and labels: building fails only on a programming error the first test that
// touches the metric catches; registration fails only on a duplicate, ruled out by the static.
// One counter per kind, looked up once: a Raft call then costs one atomic add, not a label
// hash and lock. Every kind is exported from the start, so rates work before the first call.
#[allow(clippy::expect_used)]
static PEER_CALLS: LazyLock<[IntCounter; 4]> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new("chorus_raft_peer_calls_total", "raft calls sent to peers, by what they carry"),
        &["kind"],
    )
    .expect("constant metric options are valid");
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        tracing::warn!(error = %e, "chorus_raft_peer_calls_total not registered");
    }
    CallKind::ALL.map(|kind| c.with_label_values(&[kind.label()]))
});

static PEER_BATCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("chorus_raft_peer_batches_total", "Peer.Batch round trips carrying raft calls")
});

/// Round trips by lane: `[entries, control]`.
#[allow(clippy::expect_used)]
static BATCH_DURATION: LazyLock<[Histogram; 2]> = LazyLock::new(|| {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "chorus_raft_peer_batch_duration_seconds",
            "one Peer.Batch round trip as its sender saw it, by lane",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["lane"],
    )
    .expect("constant metric options are valid");
    if let Err(e) = prometheus::register(Box::new(h.clone())) {
        tracing::warn!(error = %e, "chorus_raft_peer_batch_duration_seconds not registered");
    }
    ["entries", "control"].map(|lane| h.with_label_values(&[lane]))
});

static APPEND_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_raft_peer_append_duration_seconds",
        "handling one received append carrying entries, decode to reply",
        LATENCY_BUCKETS.to_vec(),
    )
});

/// Exports the peer-call metrics at zero before the first call.
pub fn register() {
    LazyLock::force(&PEER_CALLS);
    LazyLock::force(&PEER_BATCHES);
    LazyLock::force(&BATCH_DURATION);
    LazyLock::force(&APPEND_DURATION);
}

/// One `Peer.Batch` round trip of the entries lane (`entries`) or the control lane.
pub fn observe_batch(entries: bool, seconds: f64) {
    BATCH_DURATION[usize::from(!entries)].observe(seconds);
}

/// One received append carrying entries, handled.
pub fn observe_append(seconds: f64) {
    APPEND_DURATION.observe(seconds);
}

/// One Raft call queued for a peer.
pub fn count_call(kind: CallKind) {
    PEER_CALLS[kind as usize].inc();
}

/// One `Peer.Batch` sent.
pub fn count_batch() {
    PEER_BATCHES.inc();
}

/// Set by the hibernation controller each round.
pub fn set_hibernating(groups: usize) {
    HIBERNATING.set(i64::try_from(groups).unwrap_or(i64::MAX));
}

/// The gauges of every shard group of a node.
#[derive(Clone)]
pub struct ShardCollector {
    groups: Vec<ShardGroup>,
    leader: IntGaugeVec,
    is_leader: IntGaugeVec,
    term: IntGaugeVec,
    last_log_index: IntGaugeVec,
    commit_index: IntGaugeVec,
    applied_index: IntGaugeVec,
    apply_lag: IntGaugeVec,
    without_leader: IntGauge,
}

fn shard_gauge(name: &str, help: &str) -> IntGaugeVec {
    unregistered_gauge_vec(name, help, &["shard"])
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl ShardCollector {
    pub fn new(groups: Vec<ShardGroup>) -> ShardCollector {
        ShardCollector {
            groups,
            leader: shard_gauge(
                "chorus_raft_shard_leader",
                "node id of the shard's leader as this node knows it, 0 when none",
            ),
            is_leader: shard_gauge(
                "chorus_raft_shard_is_leader",
                "1 when this node leads the shard",
            ),
            term: shard_gauge("chorus_raft_shard_term", "current raft term of the shard"),
            last_log_index: shard_gauge(
                "chorus_raft_shard_last_log_index",
                "last log index of the shard on this node",
            ),
            commit_index: shard_gauge(
                "chorus_raft_shard_commit_index",
                "last log index of the shard known committed on this node",
            ),
            applied_index: shard_gauge(
                "chorus_raft_shard_applied_index",
                "last log index of the shard applied to the state machine on this node",
            ),
            apply_lag: shard_gauge(
                "chorus_raft_shard_apply_lag",
                "committed entries of the shard not yet applied on this node",
            ),
            without_leader: unregistered_gauge(
                "chorus_raft_shards_without_leader",
                "shards on this node that have no known leader",
            ),
        }
    }

    fn families(&self) -> [&IntGaugeVec; 7] {
        [
            &self.leader,
            &self.is_leader,
            &self.term,
            &self.last_log_index,
            &self.commit_index,
            &self.applied_index,
            &self.apply_lag,
        ]
    }

    fn refresh(&self) {
        let mut without_leader = 0;
        for group in &self.groups {
            let shard = group.shard.0.to_string();
            let labels = [shard.as_str()];
            // Copy what is needed and release the watch at once: openraft writes to it.
            let (id, leader, term, last_log, applied) = {
                let metrics = group.raft.metrics();
                let m = metrics.borrow();
                (
                    m.id,
                    m.current_leader,
                    m.current_term,
                    m.last_log_index.unwrap_or(0),
                    m.last_applied.map_or(0, |log_id| log_id.index),
                )
            };
            // Commit is saved before apply, so committed ≥ applied once both are known; after
            // a restart the log store has not seen a commit yet while applied is recovered.
            let committed = group.committed.load(Ordering::Relaxed).max(applied);
            if leader.is_none() {
                without_leader += 1;
            }
            self.leader.with_label_values(&labels).set(to_i64(leader.unwrap_or(0)));
            self.is_leader.with_label_values(&labels).set(i64::from(leader == Some(id)));
            self.term.with_label_values(&labels).set(to_i64(term));
            self.last_log_index.with_label_values(&labels).set(to_i64(last_log));
            self.commit_index.with_label_values(&labels).set(to_i64(committed));
            self.applied_index.with_label_values(&labels).set(to_i64(applied));
            self.apply_lag.with_label_values(&labels).set(to_i64(committed - applied));
        }
        self.without_leader.set(without_leader);
    }
}

impl Collector for ShardCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = Vec::new();
        for family in self.families() {
            descs.extend(family.desc());
        }
        descs.extend(self.without_leader.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut families = Vec::new();
        for family in self.families() {
            families.extend(family.collect());
        }
        families.extend(self.without_leader.collect());
        families
    }
}
