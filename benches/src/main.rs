//! `loadgen`: WebSocket clients posting 256-byte messages to many streams with a fixed number
//! of posts in flight; prints acked posts/s, ack latency percentiles and fsyncs/s.
//!
//! By default it starts its own `chorus dev` (the binary built beside it, a temp data dir, an
//! ephemeral port), so one command measures a fresh server:
//!
//! ```sh
//! cargo build --bin chorus --bin loadgen
//! $CARGO_TARGET_DIR/debug/loadgen --in-flight 256 --streams 256 --seconds 20
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chorus_bench::http_post;
use chorus_bench::stats::Window;
use chorus_bench::ws_post::connection;
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// Edge address (host:port). Without it, a `chorus dev` is started for the run.
    #[arg(long)]
    addr: Option<String>,
    /// Data dir of the server at --addr (for its dev secrets).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The `chorus` binary to start [default: beside this one].
    #[arg(long)]
    chorus: Option<PathBuf>,
    /// Posts in flight in total.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// WebSocket connections (the in-flight posts are spread over them).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Streams posted to (round robin).
    #[arg(long, default_value_t = 256)]
    streams: usize,
    /// Message content size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Post over HTTP (`POST …/messages`, one request in flight per pooled keep-alive
    /// connection) instead of WebSocket frames; `--connections` is then ignored.
    #[arg(long)]
    http: bool,
    /// Measured seconds (after a 3 s warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

struct Server {
    child: Option<Child>,
    addr: String,
    secrets: Value,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_server(args: &Args) -> anyhow::Result<Server> {
    if let Some(addr) = &args.addr {
        let data = args.data.clone().context("--data is needed with --addr")?;
        let secrets =
            serde_json::from_str(&std::fs::read_to_string(data.join("dev-secrets.json"))?)?;
        return Ok(Server { child: None, addr: addr.clone(), secrets, _dir: None });
    }
    let bin = match &args.chorus {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("chorus"),
    };
    let dir = tempfile::Builder::new().prefix("chorus-bench").tempdir_in(".")?;
    let mut child = Command::new(&bin)
        .args(["dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().context("chorus exited")??;
        if let Some(a) = line.strip_prefix("chorus dev listening on http://") {
            break a.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let secrets =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("dev-secrets.json"))?)?;
    Ok(Server { child: Some(child), addr, secrets, _dir: Some(dir) })
}

fn token(secrets: &Value, user: &str) -> anyhow::Result<String> {
    let secret = secrets["jwtSecret"].as_str().context("jwtSecret")?;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

async fn fsyncs(addr: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("chorus_storage_log_fsyncs_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

async fn wait_ready(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("server not ready")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = start_server(&args)?;
    wait_ready(&server.addr).await?;
    let token = token(&server.secrets, "bench")?;
    let client = reqwest::Client::new();
    let streams: Vec<String> = (0..args.streams).map(|i| format!("Bench/room/{i}")).collect();
    for s in &streams {
        let r = client
            .post(format!("http://{}/v1/streams", server.addr))
            .bearer_auth(&token)
            .json(&json!({"type": "Bench/room", "name": s}))
            .send()
            .await?;
        if !(r.status().is_success() || r.status().as_u16() == 409) {
            bail!("creating {s}: {}", r.status());
        }
    }
    let body = Arc::new("x".repeat(args.size));
    let streams = Arc::new(streams);
    let window = Arc::new(Window::new(Duration::from_secs(3), Duration::from_secs(args.seconds))?);
    let connections = if args.http { args.in_flight } else { args.connections };
    let connections = connections.min(args.in_flight).max(1);
    let mut tasks = Vec::new();
    let pool = reqwest::Client::builder().pool_max_idle_per_host(args.in_flight).build()?;
    for c in 0..connections {
        if args.http {
            tasks.push(tokio::spawn(http_post::poster(
                pool.clone(),
                server.addr.clone(),
                token.clone(),
                streams.clone(),
                c * 7,
                body.clone(),
                window.clone(),
            )));
            continue;
        }
        let depth = args.in_flight / connections + usize::from(c < args.in_flight % connections);
        tasks.push(tokio::spawn(connection(
            server.addr.clone(),
            token.clone(),
            streams.clone(),
            c * 7,
            depth,
            body.clone(),
            window.clone(),
        )));
    }
    tokio::time::sleep_until(window.from.into()).await;
    let fsync_start = fsyncs(&server.addr).await?;
    tokio::time::sleep_until(window.end.into()).await;
    let fsync_end = fsyncs(&server.addr).await?;
    for t in tasks {
        t.await??;
    }
    let secs = args.seconds as f64;
    let acked = window.acked();
    let (p50, _) = window.latency_ms(0.50);
    let (p99, _) = window.latency_ms(0.99);
    let (p999, max) = window.latency_ms(0.999);
    let transport = if args.http { "HTTP" } else { "WebSocket" };
    println!("chorus dev (single node, fsync on every group commit), posting over {transport}");
    println!(
        "in_flight={} connections={} streams={} size={}B measured={}s",
        args.in_flight, connections, args.streams, args.size, args.seconds
    );
    println!("acked posts/s: {:.0}", acked as f64 / secs);
    println!("ack latency ms: p50 {p50:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}");
    println!("fsyncs/s: {:.0}", (fsync_end - fsync_start) / secs);
    println!("errors: {}", window.errors.load(std::sync::atomic::Ordering::Relaxed));
    Ok(())
}
