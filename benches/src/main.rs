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

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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

struct Shared {
    hist: Mutex<Histogram<u64>>,
    acked: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

/// What every connection shares.
struct Plan {
    addr: String,
    token: String,
    streams: Vec<String>,
    body: String,
    measure_from: Instant,
    end: Instant,
    shared: Shared,
}

/// One connection keeping `depth` posts in flight until `plan.end`, starting at stream `first`.
async fn connection(plan: Arc<Plan>, first: usize, depth: usize) -> anyhow::Result<()> {
    let (addr, token, streams, body) = (&plan.addr, &plan.token, &plan.streams, &plan.body);
    let (measure_from, end, shared) = (plan.measure_from, plan.end, &plan.shared);
    let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
    req.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    let (mut tx, mut rx) = ws.split();
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let mut next_id = 0u64;
    let mut cursor = first;
    let frame = |id: u64, stream: &str| {
        json!({"id": id, "op": "post", "stream": {"publisherId": "bench", "name": stream}, "type": "Chat/message", "content": body}).to_string()
    };
    for _ in 0..depth {
        tx.send(Message::text(frame(next_id, &streams[cursor % streams.len()]))).await?;
        pending.insert(next_id, Instant::now());
        next_id += 1;
        cursor += 1;
    }
    while !pending.is_empty() {
        let Some(msg) = rx.next().await else { bail!("socket closed") };
        let Message::Text(text) = msg? else { continue };
        let v: Value = serde_json::from_str(&text)?;
        let Some(id) = v["re"].as_u64() else { continue };
        let Some(sent) = pending.remove(&id) else { continue };
        let now = Instant::now();
        if v.get("ok").is_some() {
            if sent >= measure_from && now <= end {
                shared.acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let us = now.duration_since(sent).as_micros() as u64;
                shared.hist.lock().await.record(us.max(1))?;
            }
        } else {
            shared.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if now < end {
            tx.send(Message::text(frame(next_id, &streams[cursor % streams.len()]))).await?;
            pending.insert(next_id, Instant::now());
            next_id += 1;
            cursor += 1;
        }
    }
    Ok(())
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
    let body = "x".repeat(args.size);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(3);
    let end = measure_from + Duration::from_secs(args.seconds);
    let plan = Arc::new(Plan {
        addr: server.addr.clone(),
        token: token.clone(),
        streams,
        body,
        measure_from,
        end,
        shared: Shared {
            hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            acked: 0.into(),
            errors: 0.into(),
        },
    });
    let connections = args.connections.min(args.in_flight).max(1);
    let mut tasks = Vec::new();
    let mut fsync_start = None;
    for c in 0..connections {
        let depth = args.in_flight / connections + usize::from(c < args.in_flight % connections);
        tasks.push(tokio::spawn(connection(plan.clone(), c * 7, depth)));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    fsync_start.get_or_insert(fsyncs(&server.addr).await?);
    tokio::time::sleep_until(end.into()).await;
    let fsync_end = fsyncs(&server.addr).await?;
    for t in tasks {
        t.await??;
    }
    let secs = args.seconds as f64;
    let shared = &plan.shared;
    let hist = shared.hist.lock().await;
    let acked = shared.acked.load(std::sync::atomic::Ordering::Relaxed);
    println!("chorus dev (single node, fsync on every group commit)");
    println!(
        "in_flight={} connections={} streams={} size={}B measured={}s",
        args.in_flight, connections, args.streams, args.size, args.seconds
    );
    println!("acked posts/s: {:.0}", acked as f64 / secs);
    println!(
        "ack latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
    println!("fsyncs/s: {:.0}", (fsync_end - fsync_start.unwrap_or(0.0)) / secs);
    println!("errors: {}", shared.errors.load(std::sync::atomic::Ordering::Relaxed));
    Ok(())
}
