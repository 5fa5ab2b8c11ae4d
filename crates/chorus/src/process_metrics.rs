//! Process metrics: the standard set every Prometheus client exports, under `chorus_process_*`
//! (`chorus_process_cpu_seconds_total`, `chorus_process_resident_memory_bytes`,
//! `chorus_process_open_fds`, …) because DESIGN.md §3 names every metric `chorus_*`; a stock
//! panel needs only the prefix. Every role (`dev`, and the node and edge processes of a
//! cluster) registers them once at start.
//!
//! The `prometheus` crate has such a collector behind its `process` feature, which pulls in
//! `procfs`; these few numbers are read from `/proc/self` directly instead. On other systems
//! the collector exports nothing.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

/// What one `/proc/self/stat` line tells.
#[derive(Debug, PartialEq)]
struct Stat {
    /// User + system CPU time, clock ticks.
    cpu_ticks: u64,
    threads: u64,
    /// Ticks after boot at which the process started.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, after_name) = text.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (state) of proc(5); field n is at n - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The auxiliary vector entries this needs: clock ticks per second and the page size.
fn parse_auxv(bytes: &[u8]) -> (Option<u64>, Option<u64>) {
    const AT_PAGESZ: u64 = 6;
    const AT_CLKTCK: u64 = 17;
    let word = std::mem::size_of::<usize>();
    let read = |chunk: &[u8]| -> u64 {
        let mut buf = [0u8; 8];
        buf[..chunk.len()].copy_from_slice(chunk);
        let value = u64::from_ne_bytes(buf);
        // A 4-byte word read into the low half on a big-endian host sits in the high half.
        if cfg!(target_endian = "big") && word == 4 { value >> 32 } else { value }
    };
    let (mut ticks, mut page) = (None, None);
    for pair in bytes.chunks_exact(2 * word) {
        let (key, value) = (read(&pair[..word]), read(&pair[word..]));
        match key {
            AT_CLKTCK => ticks = Some(value),
            AT_PAGESZ => page = Some(value),
            _ => {}
        }
    }
    (ticks, page)
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of open files from `/proc/self/limits` (`unlimited` → `None`).
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Reads `/proc/self` when Prometheus scrapes.
#[derive(Clone)]
pub struct ProcessCollector {
    cpu_seconds: Counter,
    resident_bytes: IntGauge,
    virtual_bytes: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
    /// From the auxiliary vector once; 100 and 4096 when it cannot be read (the Linux values
    /// on every architecture Chorus targets).
    ticks_per_second: u64,
    page_bytes: u64,
    boot_time: Option<u64>,
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl ProcessCollector {
    // Names and help texts are the literals below; construction fails only on an invalid
    // name, which the unit test `collects_this_process` rules out.
    #[allow(clippy::expect_used)]
    pub fn new() -> ProcessCollector {
        let int = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric name");
        let (ticks, page) =
            std::fs::read("/proc/self/auxv").map(|b| parse_auxv(&b)).unwrap_or((None, None));
        ProcessCollector {
            cpu_seconds: Counter::new(
                "chorus_process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )
            .expect("valid metric name"),
            resident_bytes: int(
                "chorus_process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_bytes: int(
                "chorus_process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: int("chorus_process_open_fds", "Number of open file descriptors."),
            max_fds: int("chorus_process_max_fds", "Maximum number of open file descriptors."),
            threads: int("chorus_process_threads", "Number of OS threads in the process."),
            start_time: Gauge::new(
                "chorus_process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )
            .expect("valid metric name"),
            ticks_per_second: ticks.filter(|t| *t > 0).unwrap_or(100),
            page_bytes: page.filter(|p| *p > 0).unwrap_or(4096),
            boot_time: std::fs::read_to_string("/proc/stat").ok().and_then(|t| parse_boot_time(&t)),
        }
    }

    fn refresh(&self) {
        if let Some(stat) =
            std::fs::read_to_string("/proc/self/stat").ok().and_then(|t| parse_stat(&t))
        {
            let cpu = stat.cpu_ticks as f64 / self.ticks_per_second as f64;
            // A counter only goes up: add what was used since the last scrape.
            let delta = cpu - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
            self.resident_bytes.set(to_i64(stat.resident_pages.saturating_mul(self.page_bytes)));
            self.virtual_bytes.set(to_i64(stat.virtual_bytes));
            self.threads.set(to_i64(stat.threads));
            if let Some(boot) = self.boot_time {
                let start = boot as f64 + stat.start_ticks as f64 / self.ticks_per_second as f64;
                self.start_time.set(start);
            }
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            // The count includes the descriptor `read_dir` itself holds, as every Prometheus
            // client's does.
            self.open_fds.set(to_i64(entries.count() as u64));
        }
        if let Some(max) =
            std::fs::read_to_string("/proc/self/limits").ok().and_then(|t| parse_max_fds(&t))
        {
            self.max_fds.set(to_i64(max));
        }
    }

    fn gauges(&self) -> [&IntGauge; 5] {
        [&self.resident_bytes, &self.virtual_bytes, &self.open_fds, &self.max_fds, &self.threads]
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.cpu_seconds.desc();
        descs.extend(self.start_time.desc());
        for gauge in self.gauges() {
            descs.extend(gauge.desc());
        }
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !cfg!(target_os = "linux") {
            return Vec::new();
        }
        self.refresh();
        let mut families = self.cpu_seconds.collect();
        families.extend(self.start_time.collect());
        for gauge in self.gauges() {
            families.extend(gauge.collect());
        }
        families
    }
}

/// Registers the process collector in the default registry, once per process.
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(error) = prometheus::register(Box::new(ProcessCollector::new())) {
            tracing::warn!(%error, "process metrics not registered");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            Stat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 12345,
                virtual_bytes: 104_857_600,
                resident_pages: 2560
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn limits_boot_time_and_auxv() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_max_fds("Max open files  unlimited unlimited files\n"), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1700000000\n"), Some(1_700_000_000));
        let mut auxv = Vec::new();
        for (key, value) in [(6usize, 4096usize), (17, 100), (0, 0)] {
            auxv.extend(key.to_ne_bytes());
            auxv.extend(value.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&auxv), (Some(100), Some(4096)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn collects_this_process() {
        let collector = ProcessCollector::new();
        let families = collector.collect();
        let value = |name: &str| {
            let family = families.iter().find(|f| f.name() == name).unwrap();
            let metric = &family.get_metric()[0];
            if name.ends_with("_total") {
                metric.get_counter().get_value()
            } else {
                metric.get_gauge().get_value()
            }
        };
        assert!(value("chorus_process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("chorus_process_open_fds") >= 3.0);
        assert!(value("chorus_process_threads") >= 1.0);
        assert!(value("chorus_process_start_time_seconds") > 1_600_000_000.0);
        assert!(value("chorus_process_cpu_seconds_total") >= 0.0);
    }
}
