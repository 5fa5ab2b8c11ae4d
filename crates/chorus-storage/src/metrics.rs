//! Storage metrics (names `chorus_storage_*`), registered in the default registry.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter, histogram_opts};

// Metric names and options are constants; building them fails only on an invalid name, a
// programming error caught by the first test that touches the metric. Registration fails only
// on a duplicate name, which the `LazyLock` statics rule out, so it is logged, not fatal.
#[allow(clippy::expect_used)]
pub fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("constant metric name is valid");
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        tracing::warn!(metric = name, error = %e, "metric not registered");
    }
    c
}

#[allow(clippy::expect_used)]
pub fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(histogram_opts!(name, help, buckets))
        .expect("constant metric options are valid");
    if let Err(e) = prometheus::register(Box::new(h.clone())) {
        tracing::warn!(metric = name, error = %e, "metric not registered");
    }
    h
}

#[allow(clippy::expect_used)]
pub fn gauge(name: &str, help: &str) -> prometheus::IntGauge {
    let g = prometheus::IntGauge::new(name, help).expect("constant metric name is valid");
    if let Err(e) = prometheus::register(Box::new(g.clone())) {
        tracing::warn!(metric = name, error = %e, "metric not registered");
    }
    g
}

pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.024,
];

/// fsyncs of the Raft log (one per group commit).
pub static LOG_FSYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("chorus_storage_log_fsyncs_total", "fsyncs of the raft log (one per group commit)")
});

/// Log appends (one per shard append call) made durable.
pub static LOG_APPENDS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("chorus_storage_log_appends_total", "raft log append calls made durable")
});

pub static LOG_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_storage_log_fsync_duration_seconds",
        "time of one raft log fsync",
        LATENCY_BUCKETS.to_vec(),
    )
});

pub static GROUP_COMMIT_APPENDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_storage_group_commit_appends",
        "shard appends covered by one fsync",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
    )
});

pub static APPLY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_storage_apply_duration_seconds",
        "time to apply one batch of committed entries",
        LATENCY_BUCKETS.to_vec(),
    )
});

pub static SNAPSHOTS_BUILT: LazyLock<IntCounter> =
    LazyLock::new(|| counter("chorus_storage_snapshots_built_total", "shard snapshots built"));

pub static SNAPSHOTS_INSTALLED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("chorus_storage_snapshots_installed_total", "shard snapshots installed")
});
