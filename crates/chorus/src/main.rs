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
// of a loaded node's CPU in `perf`, and mimalloc gave 15-25 % more posts/s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc options this binary runs with: return freed pages to the OS at once and commit
/// arena memory as it is used. With mimalloc's defaults an edge held 11.0 KiB per idle
/// session (glibc: 9.1); with these, 9.6. mimalloc reads options only from the environment,
/// as the process starts, and calling its `mi_option_set` would need `unsafe` (forbidden in
/// this workspace), so the process re-executes itself once with them set. An operator's own
/// `MIMALLOC_*` values win.
const ALLOCATOR_ENV: [(&str, &str); 2] =
    [("MIMALLOC_PURGE_DELAY", "0"), ("MIMALLOC_ARENA_EAGER_COMMIT", "0")];
const ALLOCATOR_TUNED: &str = "CHORUS_ALLOCATOR_TUNED";

fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(ALLOCATOR_TUNED).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env(ALLOCATOR_TUNED, "1");
    for (name, value) in ALLOCATOR_ENV {
        if std::env::var_os(name).is_none() {
            cmd.env(name, value);
        }
    }
    // Returns only if the exec failed; the process then goes on with mimalloc's defaults.
    let error = cmd.exec();
    eprintln!("note: could not re-execute with allocator settings ({error}); using defaults");
}

/// `println!` for the output of the command-line commands (`admin`, `token`, `post`, `tail`):
/// a reader that went away (`chorus admin status | head`) ends the command quietly, as it ends
/// other command-line tools, where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => { $crate::say_line(format_args!($($arg)*)) };
}
pub(crate) use say;

pub(crate) fn say_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// A server's start-up lines: a closed standard output (`chorus node … | head -1`) must not
/// stop or panic a server, so a failed write is ignored.
macro_rules! announce {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use announce;

fn main() -> std::process::ExitCode {
    tune_allocator();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line (with its causes), never a backtrace, for configuration mistakes.
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: many errors already quote their
/// source in their own message, which `{:#}` would print again.
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    // RocksDB work runs on the blocking pool; a small pool keeps the 2-core machines we target
    // from thrashing between hundreds of threads that all wait on the same database.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()?;
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Dev(args) => dev::run(args).await,
            cli::Command::Node(args) => node::run(args).await,
            cli::Command::Edge(args) => edge::run(args).await,
            cli::Command::Admin(args) => admin::run(args).await,
            cli::Command::Token(args) => token::run(args),
            cli::Command::Post(args) => client::post(args).await,
            cli::Command::Tail(args) => client::tail(args).await,
        }
    });
    // Tasks still running (a connection's, a retry's) are dropped; the process never waits on
    // one of them after the command is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}
