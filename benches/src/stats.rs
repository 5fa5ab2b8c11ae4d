//! Latency histograms and the W3 bookkeeping shared by both sides.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Acks counted inside the measured window, with their latencies.
pub struct Window {
    pub from: Instant,
    pub end: Instant,
    hist: Mutex<Histogram<u64>>,
    acked: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    /// Error replies by code, printed after the figures.
    codes: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Window {
    pub fn new(warmup: Duration, measured: Duration) -> anyhow::Result<Window> {
        let from = Instant::now() + warmup;
        Ok(Window {
            from,
            end: from + measured,
            hist: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
            acked: 0.into(),
            errors: 0.into(),
            codes: Mutex::default(),
        })
    }

    pub fn record(&self, sent: Instant, acked: Instant) {
        if sent >= self.from && acked <= self.end {
            self.acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let us = acked.duration_since(sent).as_micros() as u64;
            if let Ok(mut h) = self.hist.lock() {
                let _ = h.record(us.max(1));
            }
        }
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// An error reply with its code (`error.code` of the frame).
    pub fn error_code(&self, code: &str) {
        self.error();
        if let Ok(mut c) = self.codes.lock() {
            *c.entry(code.to_owned()).or_default() += 1;
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Latency at quantile `q` and the maximum, in ms.
    pub fn latency_ms(&self, q: f64) -> (f64, f64) {
        match self.hist.lock() {
            Ok(h) => (h.value_at_quantile(q) as f64 / 1000.0, h.max() as f64 / 1000.0),
            Err(_) => (0.0, 0.0),
        }
    }

    pub fn summary(&self, label: &str) -> String {
        let secs = self.end.duration_since(self.from).as_secs_f64();
        let acked = self.acked.load(std::sync::atomic::Ordering::Relaxed);
        let errors = self.errors.load(std::sync::atomic::Ordering::Relaxed);
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        let codes = match self.codes.lock() {
            Ok(c) if !c.is_empty() => format!(" {:?}", *c),
            _ => String::new(),
        };
        match self.hist.lock() {
            Ok(h) => format!(
                "{label}: {:>7.0} acked/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {errors}{codes}",
                acked as f64 / secs,
                q(&h, 0.5),
                q(&h, 0.99),
                q(&h, 0.999)
            ),
            Err(_) => format!("{label}: histogram poisoned"),
        }
    }
}

/// W3: when each post was acknowledged, for the longest gap.
#[derive(Default)]
pub struct Failover {
    acks: Mutex<Vec<Instant>>,
    /// id → acknowledged
    pub acked: Mutex<HashMap<String, bool>>,
    pub unknown: std::sync::atomic::AtomicU64,
}

impl Failover {
    pub fn ack(&self, id: String, at: Instant) {
        if let Ok(mut a) = self.acks.lock() {
            a.push(at);
        }
        if let Ok(mut m) = self.acked.lock() {
            m.insert(id, true);
        }
    }

    /// The longest time between consecutive acks within `[from, to]`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut acks = self.acks.lock().map(|a| a.clone()).unwrap_or_default();
        acks.retain(|t| *t >= from && *t <= to);
        acks.sort();
        let mut worst = Duration::ZERO;
        let mut prev = from;
        for t in acks {
            worst = worst.max(t.duration_since(prev));
            prev = t;
        }
        worst.max(to.saturating_duration_since(prev))
    }

    pub fn acked_ids(&self) -> Vec<String> {
        self.acked.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// Counts acknowledged ids missing from `stored` and ids stored more than once.
    pub fn verdict(&self, stored: &[String]) -> (usize, usize) {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in stored {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        let missing =
            self.acked_ids().iter().filter(|id| !counts.contains_key(id.as_str())).count();
        let duplicated = counts.values().filter(|c| **c > 1).count();
        (missing, duplicated)
    }
}
