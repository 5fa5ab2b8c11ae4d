//! Node metrics (`chorus_node_*`).

use std::sync::LazyLock;

use chorus_storage::metrics::{LATENCY_BUCKETS, gauge, histogram};
use prometheus::{Histogram, IntGauge};

pub static STREAM_ACTORS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("chorus_node_stream_actors", "stream actors running on this node"));

pub static LISTENS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("chorus_node_listens", "active listens served by this node"));

pub static BATCH_COMMANDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_node_batch_commands",
        "commands folded into one raft entry by a stream actor",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
    )
});

pub static COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_node_commit_duration_seconds",
        "proposal to applied outcome, per raft entry",
        LATENCY_BUCKETS.to_vec(),
    )
});
