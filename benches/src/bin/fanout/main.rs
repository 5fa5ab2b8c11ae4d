//! `fanout`: one Chorus stream with many participants and ~100,000 listening WebSocket sessions,
//! a publisher at fixed rates; deliveries/s, end-to-end latency (publisher's send time, carried
//! in the content, to receipt) and memory per session. NATS core pub/sub with 10,000
//! subscribers runs the same ladder in the same run.
//!
//! Everything runs on this machine over loopback. No process may hold more than the hard fd
//! limit (20,000 here), so sessions are spread over several `chorus edge` processes and over
//! client processes (this binary re-executed as the hidden `client` subcommand), each client
//! process binding its own source address 127.0.0.x so that no (source, destination) pair
//! runs out of ephemeral ports.
//!
//! ```sh
//! cargo build --workspace --bins
//! $CARGO_TARGET_DIR/debug/fanout                                   # 100k sessions, 6 edges
//! $CARGO_TARGET_DIR/debug/fanout --sessions 20000 --per-edge 10000 --participants 20000 \
//!     --rates 1,10 --seconds 5                                     # a quick check
//! ```
//!
//! Layout: `chorus_side` and `nats_side` set each system up; `ladder` publishes and measures
//! the rate steps; `clients` drives the client processes that `client` implements; `report` is
//! what they send back.

mod chorus_side;
mod client;
mod clients;
mod ladder;
mod nats_side;
mod report;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::ladder::StepResult;

#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand, Debug)]
enum Internal {
    /// A client process of a run (started by the bench itself).
    #[command(hide = true)]
    Client(client::ClientArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Edges when the `chorus` binary has the `edge` command, else the nodes.
    Auto,
    /// Sessions on `chorus edge` processes.
    Edges,
    /// Sessions on the nodes' own API ports (at most 3 x --per-edge).
    Nodes,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The `chorus` binary [default: beside this one].
    #[arg(long)]
    pub chorus: Option<PathBuf>,
    /// The `nats-server` binary.
    #[arg(long, default_value = "nats-server")]
    pub nats_server: String,
    /// `chorus` or `nats` to run one side only.
    #[arg(long)]
    pub only: Option<String>,
    /// Listening WebSocket sessions (Chorus).
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Participants joined to the stream (users u1..uN; session i is user u(i mod N + 1)).
    #[arg(long, default_value_t = 300_000)]
    pub participants: usize,
    /// Sessions per edge process and per client process. Both hold one fd per session, and
    /// the hard fd limit (20,000 here) caps it near 19,500.
    #[arg(long, default_value_t = 16_700)]
    pub per_edge: usize,
    /// Where sessions connect.
    #[arg(long, value_enum, default_value_t = Via::Auto)]
    pub via: Via,
    /// Shards of the 3-node cluster (few: idle Raft groups cost CPU).
    #[arg(long, default_value_t = 8)]
    pub shards: u16,
    /// Publish rates (messages/s), tried in order until p99 reaches --p99-limit-ms.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub rates: Vec<f64>,
    /// Seconds of publishing per rate.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Longest wait for the last deliveries of a step after its publishing ends.
    #[arg(long, default_value_t = 15)]
    pub drain_seconds: u64,
    /// The latency target: the ladder stops at the first rate whose p99 is at or above it.
    #[arg(long, default_value_t = 1000.0)]
    pub p99_limit_ms: f64,
    /// NATS core subscribers (one TCP connection each).
    #[arg(long, default_value_t = 10_000)]
    pub nats_subscribers: usize,
    /// After the ladder, replace the room's access rows (every session keeps its access) and
    /// publish at 1 msg/s for 5 s: the edges check every listener again before delivering
    /// the next message, and that step's latency shows the pause.
    #[arg(long)]
    pub access_change: bool,
    /// Connections each client process opens at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
}

/// The hard limit on open files of this process (`Max open files` in `/proc/self/limits`).
pub fn hard_fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Internal::Client(client_args)) = cli.command {
        return client::run(client_args);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let clean = runtime.block_on(async {
        tokio::select! {
            result = run(&cli.args) => result,
            result = memory_guard() => result,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        }
    })?;
    // Children are killed and temp dirs removed by the drops inside `run`.
    if !clean {
        eprintln!("fanout: some session saw a gap, a duplicate or fell behind");
        std::process::exit(1);
    }
    Ok(())
}

/// Free memory below which a run stops (every child is killed on the way out) rather than
/// push this shared machine into the OOM killer.
const MEMORY_FLOOR_KIB: u64 = 2 * 1024 * 1024;

/// `MemAvailable` of `/proc/meminfo`, KiB.
fn mem_available_kib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns (an error) only when the machine runs short of memory.
async fn memory_guard() -> anyhow::Result<bool> {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if let Some(available) = mem_available_kib()
            && available < MEMORY_FLOOR_KIB
        {
            anyhow::bail!("stopping: only {} MiB of memory left on the machine", available / 1024);
        }
    }
}

/// Runs both sides and prints the summary; answers whether every delivery was in order.
async fn run(args: &Args) -> anyhow::Result<bool> {
    let limit = hard_fd_limit();
    if let Some(limit) = limit
        && args.per_edge as u64 + 500 > limit
    {
        anyhow::bail!("--per-edge {} leaves no room under the fd limit of {limit}", args.per_edge);
    }
    let run_chorus = args.only.as_deref().is_none_or(|o| o == "chorus");
    let run_nats = args.only.as_deref().is_none_or(|o| o == "nats");
    let mut setup = Vec::new();
    let busy = ladder::machine_busy_percent(std::time::Duration::from_secs(3)).await;
    let line = format!(
        "machine: {busy:.0}% of all cores busy before the run (other work here skews every figure)"
    );
    println!("{line}");
    setup.push(line);
    let mut rows: Vec<(&str, StepResult)> = Vec::new();
    if run_chorus {
        let outcome = chorus_side::run(args).await?;
        setup.extend(outcome.setup);
        rows.extend(outcome.steps.into_iter().map(|s| ("chorus", s)));
    }
    if run_nats {
        let outcome = nats_side::run(args).await?;
        setup.extend(outcome.setup);
        rows.extend(outcome.steps.into_iter().map(|s| ("nats", s)));
    }
    print_summary(args, &setup, &rows);
    Ok(rows.iter().all(|(_, step)| step.clean()))
}

fn print_summary(args: &Args, setup: &[String], rows: &[(&str, StepResult)]) {
    println!();
    println!(
        "== fanout results ({} s per rate, p99 limit {} ms, {} cores) ==",
        args.seconds,
        args.p99_limit_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for line in setup {
        println!("{line}");
    }
    println!();
    println!(
        "| system | sessions | msg/s | delivered / expected | deliveries/s | p50 ms | p99 ms | max ms | gaps | dup/reorder | resyncs | CPU: % of one core per role; machine % of all cores |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (system, step) in rows {
        let r = &step.report;
        let cpu: Vec<String> =
            step.cpu.iter().map(|(name, pct)| format!("{name} {pct:.0}")).collect();
        println!(
            "| {system} | {} | {} | {} / {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {}; machine {:.0}% busy, {:.0}% irq |",
            step.sessions,
            step.rate,
            r.delivered,
            step.expected(),
            step.deliveries_per_s,
            step.p50_ms,
            step.p99_ms,
            step.max_ms,
            r.gaps,
            r.backwards,
            r.resyncs,
            cpu.join(", "),
            step.machine_busy,
            step.machine_irq,
        );
    }
    println!();
    for system in ["chorus", "nats"] {
        let best = rows
            .iter()
            .filter(|(s, step)| {
                *s == system
                    && step.p99_ms < args.p99_limit_ms
                    && step.report.delivered >= step.expected()
            })
            .map(|(_, step)| step.rate)
            .fold(None, |best: Option<f64>, rate| Some(best.map_or(rate, |b| b.max(rate))));
        if rows.iter().any(|(s, _)| *s == system) {
            match best {
                Some(rate) => println!(
                    "{system}: highest rate with p99 < {} ms and every delivery made: {rate} msg/s",
                    args.p99_limit_ms
                ),
                None => println!(
                    "{system}: no rate tried kept p99 under {} ms with every delivery",
                    args.p99_limit_ms
                ),
            }
        }
    }
}
