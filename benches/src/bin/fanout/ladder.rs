//! The rate ladder shared by both systems: per step, publish at a fixed rate for `seconds`, let
//! the deliveries drain, collect every client's report; stop at the first rate whose p99 is over
//! the limit or that lost deliveries.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use chorus_bench::cluster::API_KEY;
use chorus_bench::procs::cpu_seconds_of;
use serde_json::{Value, json};

use crate::client::{PUBLISHER, STREAM, SUBJECT, unix_micros};
use crate::clients::Clients;
use crate::report::StepReport;

pub enum Publisher {
    /// HTTP posts with the API key (the app) to a Chorus API address.
    Chorus { http: reqwest::Client, addr: String },
    /// Core NATS publishes; `next_seq` numbers them for the whole run.
    Nats { client: async_nats::Client, next_seq: u64 },
}

impl Publisher {
    /// Publishes one message stamped with the current time, without waiting for its ack; the
    /// task answers the ordinal (Chorus) or sequence (NATS) it got.
    fn publish(&mut self) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
        let sent_us = unix_micros();
        match self {
            Publisher::Chorus { http, addr } => {
                let url = format!(
                    "http://{addr}/v1/streams/{PUBLISHER}/{}/messages",
                    STREAM.replace('/', "%2F")
                );
                let request = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .timeout(Duration::from_secs(30))
                    .json(&json!({"type": "Bench/msg", "content": format!("t={sent_us}")}));
                tokio::spawn(async move {
                    let response = request.send().await?;
                    let status = response.status();
                    let body: Value = response.json().await?;
                    if !status.is_success() {
                        bail!("post answered {status}: {body}");
                    }
                    body["ordinal"].as_u64().context("post reply without ordinal")
                })
            }
            Publisher::Nats { client, next_seq } => {
                *next_seq += 1;
                let seq = *next_seq;
                let client = client.clone();
                let payload = Bytes::from(format!("t={sent_us} s={seq}"));
                tokio::spawn(async move {
                    client.publish(SUBJECT, payload).await?;
                    client.flush().await?;
                    Ok(seq)
                })
            }
        }
    }
}

/// Processes whose CPU use is shown per step, by role.
pub struct CpuGroups {
    pub groups: Vec<(&'static str, Vec<u32>)>,
}

impl CpuGroups {
    fn sample(&self) -> Vec<f64> {
        self.groups
            .iter()
            .map(|(_, pids)| pids.iter().filter_map(|p| cpu_seconds_of(*p)).sum())
            .collect()
    }
}

/// Jiffies of the whole machine from the `cpu` line of `/proc/stat`.
#[derive(Copy, Clone, Default)]
struct Jiffies {
    total: u64,
    busy: u64,
    /// Interrupt and softirq time: on loopback most of the TCP receive path runs here, and it
    /// is charged to no process.
    irq: u64,
}

fn machine_jiffies() -> Option<Jiffies> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    // user nice system idle iowait irq softirq steal …
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    let irq = values.get(5).copied().unwrap_or(0) + values.get(6).copied().unwrap_or(0);
    Some(Jiffies { total, busy: total - idle, irq })
}

/// Machine CPU busy over `over`, % of all cores.
pub async fn machine_busy_percent(over: Duration) -> f64 {
    let before = machine_jiffies();
    tokio::time::sleep(over).await;
    match (before, machine_jiffies()) {
        (Some(b), Some(a)) if a.total > b.total => {
            (a.busy - b.busy) as f64 / (a.total - b.total) as f64 * 100.0
        }
        _ => 0.0,
    }
}

pub struct StepResult {
    pub rate: f64,
    pub sessions: u64,
    pub sent: u64,
    pub post_errors: u64,
    pub report: StepReport,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Deliveries over the span from the first send to the last receipt (plus one interval).
    pub deliveries_per_s: f64,
    /// CPU per group over the publishing window, % of one core.
    pub cpu: Vec<(&'static str, f64)>,
    /// Machine CPU busy over the publishing window, % of all cores, and the part of it in
    /// interrupts and softirqs.
    pub machine_busy: f64,
    pub machine_irq: f64,
}

impl StepResult {
    pub fn expected(&self) -> u64 {
        (self.sent - self.post_errors) * self.sessions
    }

    /// No message lost, duplicated or reordered, and no session behind at the end.
    pub fn clean(&self) -> bool {
        let r = &self.report;
        r.gaps == 0 && r.backwards == 0 && r.behind_sessions == 0 && r.closed == 0
    }

    pub fn line(&self, system: &str) -> String {
        let r = &self.report;
        let cpu: Vec<String> =
            self.cpu.iter().map(|(name, pct)| format!("{name} {pct:.0}%")).collect();
        format!(
            "{system:<6} rate {:>5}/s  sent {:>4} (errors {})  delivered {}/{}  {:>9.0} deliveries/s  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  gaps {} dup/reorder {} resyncs {} closed {} behind {}  cpu: {} | machine {:.0}% busy (irq+softirq {:.0}%)",
            self.rate,
            self.sent,
            self.post_errors,
            r.delivered,
            self.expected(),
            self.deliveries_per_s,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            r.gaps,
            r.backwards,
            r.resyncs,
            r.closed,
            r.behind_sessions,
            cpu.join(" "),
            self.machine_busy,
            self.machine_irq,
        )
    }
}

pub struct Ladder<'a> {
    pub system: &'static str,
    pub rates: &'a [f64],
    pub seconds: u64,
    pub drain: Duration,
    pub p99_limit_ms: f64,
    pub cpu: CpuGroups,
}

impl Ladder<'_> {
    /// Runs the steps in order, printing each; stops after the first step over the limit.
    pub async fn run(
        &self,
        publisher: &mut Publisher,
        clients: &mut Clients,
    ) -> anyhow::Result<Vec<StepResult>> {
        let mut results = Vec::new();
        for &rate in self.rates {
            let result = self.step(rate, publisher, clients).await?;
            println!("{}", result.line(self.system));
            let over =
                result.p99_ms >= self.p99_limit_ms || result.report.delivered < result.expected();
            results.push(result);
            if over {
                println!(
                    "{}: p99 over {} ms or deliveries missing at {rate}/s; not raising the rate",
                    self.system, self.p99_limit_ms
                );
                break;
            }
        }
        Ok(results)
    }

    async fn step(
        &self,
        rate: f64,
        publisher: &mut Publisher,
        clients: &mut Clients,
    ) -> anyhow::Result<StepResult> {
        clients.reset().await?;
        let sessions = clients.connected as u64;
        let cpu_before = self.cpu.sample();
        let machine_before = machine_jiffies();
        let self_before = cpu_seconds_of(std::process::id()).unwrap_or(0.0);
        let started = Instant::now();
        let started_us = unix_micros();
        let messages = (rate * self.seconds as f64).round().max(1.0) as u64;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut posts = Vec::new();
        for _ in 0..messages {
            tick.tick().await;
            posts.push(publisher.publish());
        }
        // The window is whole seconds even when the last message went out early in it.
        tokio::time::sleep_until((started + Duration::from_secs(self.seconds)).into()).await;
        let window = started.elapsed().as_secs_f64();
        let cpu_after = self.cpu.sample();
        let machine_after = machine_jiffies();
        let self_after = cpu_seconds_of(std::process::id()).unwrap_or(0.0);
        let mut last = 0;
        let mut post_errors = 0;
        let mut first_error = None;
        for post in posts {
            match post.await? {
                Ok(n) => last = last.max(n),
                Err(e) => {
                    post_errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            eprintln!("{}: {post_errors} publishes failed, the first: {e:#}", self.system);
        }
        let expected = (messages - post_errors) * sessions;
        let drain_until = Instant::now() + self.drain;
        while clients.delivered().await? < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let report = clients.report(last).await?;
        let histogram = report.histogram()?;
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        // From the first send to the last receipt, plus the one interval the last message
        // stands for: at zero latency this is `messages / rate`.
        let span_s = report.last_us.saturating_sub(started_us) as f64 / 1e6 + 1.0 / rate;
        let mut cpu: Vec<(&'static str, f64)> = self
            .cpu
            .groups
            .iter()
            .zip(cpu_before.iter().zip(&cpu_after))
            .map(|((name, _), (b, a))| (*name, (a - b) / window * 100.0))
            .collect();
        cpu.push(("bench", (self_after - self_before) / window * 100.0));
        let (machine_busy, machine_irq) = match (machine_before, machine_after) {
            (Some(b), Some(a)) if a.total > b.total => {
                let total = (a.total - b.total) as f64;
                ((a.busy - b.busy) as f64 / total * 100.0, (a.irq - b.irq) as f64 / total * 100.0)
            }
            _ => (0.0, 0.0),
        };
        Ok(StepResult {
            rate,
            sessions,
            sent: messages,
            post_errors,
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            max_ms: histogram.max() as f64 / 1000.0,
            deliveries_per_s: if span_s > 0.0 { report.delivered as f64 / span_s } else { 0.0 },
            report,
            cpu,
            machine_busy,
            machine_irq,
        })
    }
}
