//! `chorus`: the one binary. `chorus dev` runs a node and an edge in one process; `chorus
//! node` runs a storage node of a cluster and `chorus admin` inspects one; `chorus token` mints a JWT with a data dir's dev secret; `chorus post` and `chorus tail` are small
//! clients in the spirit of the `nats` CLI.
//!
//! This crate is wiring only: configuration, logging, process metrics, secrets and the CLI. Everything else
//! lives in the library crates.

mod admin;
mod cli;
mod client;
mod dev;
mod edge;
mod logging;
mod node;
mod process_metrics;
mod secrets;
mod token;

use clap::Parser;

// mimalloc instead of glibc's malloc: the post path allocates small buffers on several
// threads (JSON, frames, RocksDB batches); glibc's arena locking and consolidation were ~12 %
// of a loaded node's CPU in `perf`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line (with its causes), never a backtrace, for configuration mistakes.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    // RocksDB work runs on the blocking pool; a small pool keeps the 2-core machines we target
    // from thrashing between hundreds of threads that all wait on the same database.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            cli::Command::Dev(args) => dev::run(args).await,
            cli::Command::Node(args) => node::run(args).await,
            cli::Command::Edge(args) => edge::run(args).await,
            cli::Command::Admin(args) => admin::run(args).await,
            cli::Command::Token(args) => token::run(args),
            cli::Command::Post(args) => client::post(args).await,
            cli::Command::Tail(args) => client::tail(args).await,
        }
    })
}
