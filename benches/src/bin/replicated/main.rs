//! `replicated`: durable replicated posts, Chorus (3 `chorus node` processes) against NATS
//! JetStream R3 (3 `nats-server` processes, file storage), in the same run on this machine.
//!
//! - W1: acked posts/s and ack latency, 256-byte messages, 1 / 16 / 256 in flight.
//! - W3: posts at a fixed rate while the leader is SIGKILLed: the longest time with no
//!   acknowledged post, then every acknowledged post is looked up: missing and duplicated
//!   counts.
//!
//! ```sh
//! cargo build --workspace --bins
//! $CARGO_TARGET_DIR/debug/replicated            # both systems, all workloads
//! $CARGO_TARGET_DIR/debug/replicated --only chorus --seconds 5
//! ```

mod chorus_side;
mod nats_side;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// The `chorus` binary [default: beside this one].
    #[arg(long)]
    pub chorus: Option<std::path::PathBuf>,
    /// The `nats-server` binary.
    #[arg(long, default_value = "nats-server")]
    pub nats_server: String,
    /// `chorus` or `nats` to run one side only.
    #[arg(long)]
    pub only: Option<String>,
    /// Measured seconds per W1 point (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// W1 in-flight levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub in_flight: Vec<usize>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Chorus shards (Raft groups per node); fixed when the cluster is formed.
    #[arg(long, default_value_t = 64)]
    pub shards: u16,
    /// Chorus streams posted to in W1 (spread over the shards, as chat rooms are).
    #[arg(long, default_value_t = 256)]
    pub streams: usize,
    /// W3 post rate (posts/s) and duration (s); the leader is killed at a third of it.
    #[arg(long, default_value_t = 200)]
    pub w3_rate: u64,
    #[arg(long, default_value_t = 15)]
    pub w3_seconds: u64,
    /// Skip W3.
    #[arg(long)]
    pub no_w3: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run_chorus = args.only.as_deref().is_none_or(|o| o == "chorus");
    let run_nats = args.only.as_deref().is_none_or(|o| o == "nats");
    let mut report = Vec::new();
    if run_chorus {
        report.extend(chorus_side::run(&args).await?);
    }
    if run_nats {
        report.extend(nats_side::run(&args).await?);
    }
    println!();
    println!("== results ({} s per W1 point, {} B messages) ==", args.seconds, args.size);
    for line in report {
        println!("{line}");
    }
    Ok(())
}
