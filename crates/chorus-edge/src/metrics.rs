//! The edge's Prometheus metrics, registered into the default registry (served by `/metrics`).
//!
//! Every label value comes from a closed set: the transport, an [`OpName`] and an
//! [`ErrorCode`] name (or `ok`). Never a stream, user or session id.

use std::sync::LazyLock;
use std::time::Instant;

use chorus_types::ErrorCode;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::ops::OpName;

/// Where a request came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Http,
    Ws,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
        }
    }
}

/// Registers a collector, logging instead of failing: a metric that cannot be registered
/// (a name clash with another crate) must not take the edge down.
fn registered<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    if let Err(error) = prometheus::register(Box::new(collector.clone())) {
        tracing::warn!(%error, "metric registration failed");
    }
    collector
}

// The `expect`s below can only fire on an invalid metric name or label set, which are the
// literals right here; the unit test `metrics_register` evaluates every one of them.
#[allow(clippy::expect_used)]
static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "chorus_edge_requests_total",
        "Client requests handled by the edge, by transport, operation and result code.",
    );
    registered(
        IntCounterVec::new(opts, &["transport", "op", "code"]).expect("static metric definition"),
    )
});

/// Request latency from the edge's point of view: request parsed to reply ready. For a post
/// that is accept to ack (committed on a quorum and applied), including the hop to the owner.
#[allow(clippy::expect_used)]
static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "chorus_edge_request_duration_seconds",
        "Client request latency at the edge, by transport and operation.",
    )
    .buckets(vec![
        0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
        5.0, 10.0,
    ]);
    registered(HistogramVec::new(opts, &["transport", "op"]).expect("static metric definition"))
});

#[allow(clippy::expect_used)]
pub(crate) static DELIVERIES: LazyLock<IntCounter> = LazyLock::new(|| {
    registered(
        IntCounter::new(
            "chorus_edge_deliveries_total",
            "Committed messages queued to WebSocket sessions (fan-out: one per message per \
             listening session).",
        )
        .expect("static metric definition"),
    )
});

#[allow(clippy::expect_used)]
pub(crate) static SESSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    registered(
        IntGauge::new("chorus_edge_sessions", "Open WebSocket sessions.")
            .expect("static metric definition"),
    )
});

#[allow(clippy::expect_used)]
pub(crate) static LISTENS: LazyLock<IntGauge> = LazyLock::new(|| {
    registered(
        IntGauge::new("chorus_edge_listens", "Active listens over all WebSocket sessions.")
            .expect("static metric definition"),
    )
});

#[allow(clippy::expect_used)]
pub(crate) static RESYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    registered(
        IntCounter::new(
            "chorus_edge_resyncs_total",
            "Resync events sent to sessions (a listen ended because the session fell behind).",
        )
        .expect("static metric definition"),
    )
});

#[allow(clippy::expect_used)]
pub(crate) static EPHEMERALS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    registered(
        IntCounter::new(
            "chorus_edge_ephemerals_dropped_total",
            "Ephemerals not delivered because the session's outbound queue was full.",
        )
        .expect("static metric definition"),
    )
});

#[allow(clippy::expect_used)]
pub(crate) static FEEDS: LazyLock<IntGauge> = LazyLock::new(|| {
    registered(
        IntGauge::new(
            "chorus_edge_feeds",
            "Streams this edge follows at their owner (one upstream listen per stream, shared \
             by every local session listening to it).",
        )
        .expect("static metric definition"),
    )
});

#[allow(clippy::expect_used)]
pub(crate) static LISTENS_SHUT_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    registered(
        IntCounter::new(
            "chorus_edge_listens_shut_out_total",
            "Listening principals detached from a stream (told to resync) because a change of \
             the stream's access took their read access away.",
        )
        .expect("static metric definition"),
    )
});

#[allow(clippy::expect_used)]
pub(crate) static FEED_REOPENS: LazyLock<IntCounter> = LazyLock::new(|| {
    registered(
        IntCounter::new(
            "chorus_edge_feed_reopens_total",
            "Upstream listens opened again after the owner connection broke or the owner fell \
             behind (each resumes from the last ordinal the edge has).",
        )
        .expect("static metric definition"),
    )
});

/// Creates and registers every metric, so `/metrics` lists them before their first use.
pub(crate) fn register() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
    LazyLock::force(&DELIVERIES);
    LazyLock::force(&SESSIONS);
    LazyLock::force(&LISTENS);
    LazyLock::force(&RESYNCS);
    LazyLock::force(&EPHEMERALS_DROPPED);
    LazyLock::force(&FEEDS);
    LazyLock::force(&FEED_REOPENS);
    LazyLock::force(&LISTENS_SHUT_OUT);
}

/// Counts one finished request; `None` is success.
pub(crate) fn record_request(transport: Transport, op: OpName, failure: Option<ErrorCode>) {
    let code = failure.map(ErrorCode::as_str).unwrap_or("ok");
    REQUESTS.with_label_values(&[transport.as_str(), op.as_str(), code]).inc();
}

/// Counts one finished request that started at `started`, with its latency.
pub(crate) fn record_timed_request(
    transport: Transport,
    op: OpName,
    failure: Option<ErrorCode>,
    started: Instant,
) {
    record_request(transport, op, failure);
    REQUEST_SECONDS
        .with_label_values(&[transport.as_str(), op.as_str()])
        .observe(started.elapsed().as_secs_f64());
}

/// Holds a gauge up for as long as it lives, so every exit path (abort included) gives it back.
pub(crate) struct GaugeGuard(&'static IntGauge);

impl GaugeGuard {
    pub(crate) fn hold(gauge: &'static IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register() {
        register();
        record_request(Transport::Ws, OpName::Ping, None);
        record_request(Transport::Http, OpName::Fetch, Some(ErrorCode::NotFound));
        let names: Vec<String> =
            prometheus::gather().iter().map(|family| family.name().to_owned()).collect();
        for expected in [
            "chorus_edge_requests_total",
            "chorus_edge_deliveries_total",
            "chorus_edge_sessions",
            "chorus_edge_listens",
            "chorus_edge_resyncs_total",
            "chorus_edge_ephemerals_dropped_total",
            "chorus_edge_feeds",
            "chorus_edge_feed_reopens_total",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
    }

    #[test]
    fn gauge_guard_gives_back() {
        let before = LISTENS.get();
        {
            let _guard = GaugeGuard::hold(&LISTENS);
            assert_eq!(LISTENS.get(), before + 1);
        }
        assert_eq!(LISTENS.get(), before);
    }
}
