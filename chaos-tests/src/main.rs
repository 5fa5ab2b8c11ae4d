//! `chorus-chaos`: starts a 3-node Chorus cluster and `chorus edge`s behind proxies it
//! controls, runs clients (on nodes and edges) that record a history, injects a seeded schedule
//! of faults, heals, and checks that nothing acknowledged was lost, duplicated or reordered on
//! any replica and that every listener saw a gap-free, duplicate-free prefix.

mod api;
mod check;
mod cluster;
mod faults;
mod history;
mod proxy;
mod rng;
mod run;
mod workload;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "Kill, pause and partition a real Chorus cluster and check the history")]
pub struct Args {
    /// Seed of the fault schedule and the clients (random when absent; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of faults in the schedule.
    #[arg(long, default_value_t = 24)]
    pub faults: usize,
    /// Longest a fault is held before it is healed.
    #[arg(long, default_value_t = 4000)]
    pub max_fault_ms: u64,
    /// Longest quiet gap between two faults (the shortest is 300 ms).
    #[arg(long, default_value_t = 1500)]
    pub max_gap_ms: u64,
    /// The `chorus` binary (default: the main workspace's debug build).
    #[arg(long)]
    pub chorus: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    #[arg(long, default_value_t = 4)]
    pub listeners: usize,
    /// `chorus edge` processes beside the nodes (0: none, and no `kill-edge` faults).
    #[arg(long, default_value_t = 2)]
    pub edges: usize,
    #[arg(long, default_value_t = 8)]
    pub shards: u16,
    /// After the faults, delete every node's data: a fault Chorus does not protect against,
    /// to show the checker reports the loss. (Deleting only a majority's data loses
    /// acknowledged posts or not depending on which node wins the next elections, so it
    /// cannot prove the checker deterministically.)
    #[arg(long)]
    pub wipe_all: bool,
    /// `kill node` faults stop the node with SIGTERM (a rolling restart) instead of SIGKILL.
    #[arg(long)]
    pub sigterm: bool,
    /// Succeed only when the checker finds a violation (for the checker's own test).
    #[arg(long)]
    pub expect_violation: bool,
    /// Keep the run directory (node data, logs, history) even when the run passes.
    #[arg(long)]
    pub keep: bool,
}

fn default_chorus() -> PathBuf {
    let target = std::env::var_os("CHORUS_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/chorus-target")
    });
    target.join("debug/chorus")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let chorus = args.chorus.clone().unwrap_or_else(default_chorus);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // On SIGINT/SIGTERM the run future is dropped, and with it the cluster, whose Drop kills
    // every node (continuing stopped ones first): no orphaned `chorus node` survives us.
    let violations = tokio::select! {
        v = run::run(&args, seed, &chorus) => v?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("seed {seed}: interrupted"),
        _ = term.recv() => anyhow::bail!("seed {seed}: terminated"),
    };
    let failed = violations > 0;
    if failed == args.expect_violation {
        Ok(())
    } else if args.expect_violation {
        anyhow::bail!("seed {seed}: a violation was expected and none was found")
    } else {
        anyhow::bail!("seed {seed}: {violations} violation(s); rerun with --seed {seed}")
    }
}
