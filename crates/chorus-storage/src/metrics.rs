//! Storage metrics (names `chorus_storage_*`), registered in the default registry.
//!
//! Event metrics (fsyncs, appends, snapshots) are statics updated where the event happens.
//! State that RocksDB or the file system already keeps (SST size, pending compaction, write
//! stalls, free disk) is read when Prometheus scrapes, by [`StorageCollector`]: nothing on the
//! write path pays for it, and the value is never older than the scrape.
//!
//! The one shared piece, [`Registered`], keeps such a scrape-time collector in the default
//! registry for as long as the component it reads from lives.

use std::sync::LazyLock;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec, Opts, histogram_opts};

use crate::db::{Cf, Db};

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

/// A gauge owned by a scrape-time collector (not registered on its own).
#[allow(clippy::expect_used)]
pub fn unregistered_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("constant metric name is valid")
}

/// A gauge family owned by a scrape-time collector (not registered on its own). Its labels
/// must come from closed sets (a column family, a shard id below S).
#[allow(clippy::expect_used)]
pub fn unregistered_gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("constant metric options are valid")
}

pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.024,
];

/// Snapshots take from milliseconds (an empty shard) to minutes (a large one).
const SNAPSHOT_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

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

/// The group-commit batch size: how many shard appends one fsync made durable.
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
        "time to apply one group of committed entries and write it (with the log appends written in the same batch)",
        LATENCY_BUCKETS.to_vec(),
    )
});

pub static SNAPSHOTS_BUILT: LazyLock<IntCounter> =
    LazyLock::new(|| counter("chorus_storage_snapshots_built_total", "shard snapshots built"));

pub static SNAPSHOTS_INSTALLED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("chorus_storage_snapshots_installed_total", "shard snapshots installed")
});

pub static SNAPSHOT_BUILD_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_storage_snapshot_build_duration_seconds",
        "time to export one shard snapshot to a file",
        SNAPSHOT_BUCKETS.to_vec(),
    )
});

pub static SNAPSHOT_INSTALL_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "chorus_storage_snapshot_install_duration_seconds",
        "time to install one received shard snapshot",
        SNAPSHOT_BUCKETS.to_vec(),
    )
});

/// Creates and registers every static, so `/metrics` lists them before their first event
/// (a histogram that has never observed still exports its zero buckets, which alert rules
/// and dashboards rely on).
pub fn register() {
    for metric in [&LOG_FSYNCS, &LOG_APPENDS, &SNAPSHOTS_BUILT, &SNAPSHOTS_INSTALLED] {
        LazyLock::force(metric);
    }
    for metric in [
        &LOG_FSYNC_SECONDS,
        &GROUP_COMMIT_APPENDS,
        &APPLY_SECONDS,
        &SNAPSHOT_BUILD_SECONDS,
        &SNAPSHOT_INSTALL_SECONDS,
    ] {
        LazyLock::force(metric);
    }
}

/// Keeps a scrape-time collector in the default registry while it lives; dropping it
/// unregisters the collector (and with it the handles the collector holds, such as the
/// database, which must close before the process exits).
pub struct Registered {
    /// A clone of the registered collector: `unregister` finds it by its descriptors.
    collector: Option<Box<dyn Collector>>,
}

impl Registered {
    /// Registers `collector`. A clash (two nodes in one test process) is logged and the second
    /// one's metrics are left out rather than failing its start.
    pub fn new<C: Collector + Clone + 'static>(collector: C) -> Registered {
        match prometheus::register(Box::new(collector.clone())) {
            Ok(()) => Registered { collector: Some(Box::new(collector)) },
            Err(error) => {
                tracing::warn!(%error, "scrape-time metrics not registered");
                Registered { collector: None }
            }
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(collector) = self.collector.take()
            && let Err(error) = prometheus::unregister(collector)
        {
            tracing::warn!(%error, "scrape-time metrics not unregistered");
        }
    }
}

/// RocksDB and disk state of one node's database, read at scrape time.
#[derive(Clone)]
pub struct StorageCollector {
    db: Db,
    sst_bytes: IntGaugeVec,
    pending_compaction_bytes: IntGauge,
    memtable_bytes: IntGauge,
    write_stopped: IntGauge,
    delayed_write_rate: IntGauge,
    disk_free_bytes: IntGauge,
    disk_size_bytes: IntGauge,
}

impl StorageCollector {
    pub fn new(db: Db) -> StorageCollector {
        StorageCollector {
            db,
            sst_bytes: unregistered_gauge_vec(
                "chorus_storage_rocksdb_sst_bytes",
                "size of the live SST files of each column family",
                &["cf"],
            ),
            pending_compaction_bytes: unregistered_gauge(
                "chorus_storage_rocksdb_pending_compaction_bytes",
                "bytes RocksDB estimates compaction must rewrite (all column families)",
            ),
            memtable_bytes: unregistered_gauge(
                "chorus_storage_rocksdb_memtable_bytes",
                "size of all memtables (all column families)",
            ),
            write_stopped: unregistered_gauge(
                "chorus_storage_rocksdb_write_stopped",
                "1 while RocksDB stops writes (a write stall), else 0",
            ),
            delayed_write_rate: unregistered_gauge(
                "chorus_storage_rocksdb_delayed_write_rate_bytes",
                "write rate RocksDB slows writers to while it delays them, 0 when not delayed",
            ),
            disk_free_bytes: unregistered_gauge(
                "chorus_storage_disk_free_bytes",
                "bytes available to Chorus on the file system of the data dir",
            ),
            disk_size_bytes: unregistered_gauge(
                "chorus_storage_disk_size_bytes",
                "size of the file system of the data dir",
            ),
        }
    }

    fn gauges(&self) -> [&IntGauge; 6] {
        [
            &self.pending_compaction_bytes,
            &self.memtable_bytes,
            &self.write_stopped,
            &self.delayed_write_rate,
            &self.disk_free_bytes,
            &self.disk_size_bytes,
        ]
    }

    /// Reads every value. A property RocksDB does not answer keeps its last value: a scrape
    /// must not fail because one number is missing.
    fn refresh(&self) {
        let raw = self.db.raw();
        let mut pending = 0;
        let mut memtables = 0;
        for cf in Cf::ALL {
            let Ok(handle) = self.db.cf(cf) else { continue };
            let int = |name: &str| raw.property_int_value_cf(handle, name).ok().flatten();
            if let Some(bytes) = int("rocksdb.total-sst-files-size") {
                self.sst_bytes.with_label_values(&[cf.name()]).set(saturating_i64(bytes));
            }
            pending += int("rocksdb.estimate-pending-compaction-bytes").unwrap_or(0);
            memtables += int("rocksdb.cur-size-all-mem-tables").unwrap_or(0);
        }
        self.pending_compaction_bytes.set(saturating_i64(pending));
        self.memtable_bytes.set(saturating_i64(memtables));
        if let Ok(Some(stopped)) = raw.property_int_value("rocksdb.is-write-stopped") {
            self.write_stopped.set(saturating_i64(stopped));
        }
        if let Ok(Some(rate)) = raw.property_int_value("rocksdb.actual-delayed-write-rate") {
            self.delayed_write_rate.set(saturating_i64(rate));
        }
        match rustix::fs::statvfs(self.db.dir()) {
            Ok(fs) => {
                let block = fs.f_frsize;
                self.disk_free_bytes.set(saturating_i64(fs.f_bavail.saturating_mul(block)));
                self.disk_size_bytes.set(saturating_i64(fs.f_blocks.saturating_mul(block)));
            }
            Err(error) => tracing::debug!(%error, "statvfs of the data dir failed"),
        }
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for StorageCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.sst_bytes.desc();
        for gauge in self.gauges() {
            descs.extend(gauge.desc());
        }
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut families = self.sst_bytes.collect();
        for gauge in self.gauges() {
            families.extend(gauge.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The collector reads real values from a real database and registers and unregisters
    /// cleanly (a second registration after the first is dropped succeeds).
    #[test]
    fn storage_collector_reads_rocksdb_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let collector = StorageCollector::new(db.clone());
        let families = collector.collect();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert!(value("chorus_storage_disk_size_bytes") > 0.0);
        assert!(value("chorus_storage_disk_free_bytes") > 0.0);
        assert_eq!(value("chorus_storage_rocksdb_write_stopped"), 0.0);
        let sst = families.iter().find(|f| f.name() == "chorus_storage_rocksdb_sst_bytes").unwrap();
        assert_eq!(sst.get_metric().len(), Cf::ALL.len(), "one series per column family");

        let first = Registered::new(collector.clone());
        assert!(first.collector.is_some());
        drop(first);
        let second = Registered::new(collector);
        assert!(second.collector.is_some(), "dropping unregisters");
    }
}
