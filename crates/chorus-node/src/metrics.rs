//! Node metrics (`chorus_node_*`), and the scrape-time collectors a running node registers
//! (per-shard Raft gauges, RocksDB and disk gauges).
//!
//! Labels come from closed sets only: `code` is an [`ErrorCode`] name or `ok`. Never a
//! stream, user or session id.

use std::sync::LazyLock;

use chorus_raft::ShardGroup;
use chorus_raft::metrics::ShardCollector;
use chorus_storage::Db;
use chorus_storage::metrics::{
    LATENCY_BUCKETS, Registered, StorageCollector, counter, gauge, histogram,
};
use chorus_types::ErrorCode;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Opts};

pub static STREAM_ACTORS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("chorus_node_stream_actors", "stream actors running on this node"));

pub static LISTENS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("chorus_node_listens", "active listens served by this node"));

/// Listens that fell behind the live feed and caught up from storage (no message is lost;
/// a rising rate means listeners, or the edges behind them, are too slow).
pub static LISTEN_CATCHUPS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chorus_node_listen_catchups_total",
        "listens that lagged behind the live feed and caught up from storage",
    )
});

/// Operations this node ran on another node because it did not lead the stream's shard
/// (for its own clients, or for edges whose leader map was stale).
pub static FORWARDED_CALLS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chorus_node_forwarded_calls_total",
        "operations forwarded to the node that leads the stream's shard",
    )
});

/// Access-context sources (`<type>*` rules, templates, inheritAccess parents) read from the
/// node that leads their shard, because this node does not (see `access_ctx`). Each node
/// reads one source at most once per `SOURCE_TTL` (1 s) unless a change to it applies here.
pub static ACCESS_SOURCE_READS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chorus_node_access_source_reads_total",
        "access-context sources read from the leader of a shard this node does not lead",
    )
});

/// Access notices this node, leading a shard, delivered to nodes holding no replica of it.
pub static ACCESS_NOTICES_RELAYED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chorus_node_access_notices_relayed_total",
        "access changes relayed to nodes that hold no replica of the changed stream's shard",
    )
});

/// Calls this node forwarded to a shard's leader and, the leader changing while they were
/// unanswered, ran on the new leader as well (reads and posts with a `clientMsgId` only). A
/// planned leader change (SIGTERM, rebalancing) counts too; each copy also counts as
/// forwarded when the new leader is another node.
pub static COPIED_CALLS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chorus_node_copied_calls_total",
        "forwarded calls also sent to a newly elected leader while the old one had not answered",
    )
});

pub static BATCH_COMMANDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_node_batch_commands",
        "commands folded into one raft entry by a stream actor",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
    )
});

/// Raft commit latency as the owner sees it: proposal to committed and applied.
pub static COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_node_commit_duration_seconds",
        "proposal to applied outcome, per raft entry",
        LATENCY_BUCKETS.to_vec(),
    )
});

/// Post latency: the owner accepting a post to its acknowledgement (committed on a quorum and
/// applied), for every outcome.
pub static POST_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_node_post_duration_seconds",
        "post accepted by the owner to acknowledged (committed and applied)",
        LATENCY_BUCKETS.to_vec(),
    )
});

// The `expect` can only fire on an invalid name or label set, the literals right here; the
// unit test `node_metrics_register` evaluates it.
#[allow(clippy::expect_used)]
static POSTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let posts = IntCounterVec::new(
        Opts::new(
            "chorus_node_posts_total",
            "posts answered by this node's stream owners, by result code (ok includes \
             idempotent retries)",
        ),
        &["code"],
    )
    .expect("static metric definition");
    if let Err(error) = prometheus::register(Box::new(posts.clone())) {
        tracing::warn!(%error, "metric registration failed");
    }
    posts
});

/// Ephemerals refused with `rate_limited` because their big stream was over its budget
/// (`[ephemerals]` in the config).
pub static EPHEMERALS_RATE_LIMITED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chorus_node_ephemerals_rate_limited_total",
        "ephemerals to big streams refused with rate_limited (per-stream budget exceeded)",
    )
});

pub static POST_DUPLICATES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chorus_node_post_duplicates_total",
        "posts answered with the first message of their clientMsgId (nothing stored)",
    )
});

/// Creates every metric, with every `code` at zero, so `rate()` and the dashboards see each
/// series from the first scrape rather than from its first event.
pub fn register() {
    for metric in [&STREAM_ACTORS, &LISTENS] {
        LazyLock::force(metric);
    }
    for metric in [&LISTEN_CATCHUPS, &POST_DUPLICATES, &EPHEMERALS_RATE_LIMITED, &FORWARDED_CALLS] {
        LazyLock::force(metric);
    }
    LazyLock::force(&ACCESS_SOURCE_READS);
    LazyLock::force(&ACCESS_NOTICES_RELAYED);
    LazyLock::force(&COPIED_CALLS);
    chorus_raft::metrics::register();
    for metric in [&BATCH_COMMANDS, &COMMIT_SECONDS, &POST_SECONDS] {
        LazyLock::force(metric);
    }
    POSTS.with_label_values(&["ok"]);
    for code in ErrorCode::ALL {
        POSTS.with_label_values(&[code.as_str()]);
    }
    chorus_storage::metrics::register();
}

/// Counts one answered post; `None` is success.
pub fn record_post(failure: Option<ErrorCode>, duplicate: bool, seconds: f64) {
    let code = failure.map(ErrorCode::as_str).unwrap_or("ok");
    POSTS.with_label_values(&[code]).inc();
    if duplicate {
        POST_DUPLICATES.inc();
    }
    POST_SECONDS.observe(seconds);
}

/// Registers the scrape-time collectors of a started node; dropping the result unregisters
/// them (the node does at shutdown, so the database can close).
pub fn register_collectors(groups: &[ShardGroup], db: &Db) -> Vec<Registered> {
    vec![
        Registered::new(ShardCollector::new(groups.to_vec())),
        Registered::new(StorageCollector::new(db.clone())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_metrics_register() {
        register();
        record_post(None, true, 0.001);
        let names: Vec<String> =
            prometheus::gather().iter().map(|family| family.name().to_owned()).collect();
        for expected in [
            "chorus_node_posts_total",
            "chorus_node_post_duplicates_total",
            "chorus_node_post_duration_seconds",
            "chorus_node_commit_duration_seconds",
            "chorus_node_listen_catchups_total",
            "chorus_node_ephemerals_rate_limited_total",
            "chorus_storage_log_fsync_duration_seconds",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
    }
}
