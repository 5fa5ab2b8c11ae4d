//! The hidden `client` subcommand: one process holding up to ~17,000 receiving sessions (Chorus
//! WebSockets or NATS core subscriptions) on a current-thread runtime, bound to its own source
//! address so that every (source, destination) pair stays well inside the ephemeral port range.
//!
//! It talks to the parent over stdin/stdout, one line each way:
//!
//! ```text
//! → (at start, unasked)   connected <ok> <failed> <listens retried>
//! ← reset                 → ok                 (zero the step's counters)
//! ← progress              → progress <n>       (bench messages received this step)
//! ← report <last>         → report <json>      (StepReport; <last> = publisher's last ordinal)
//! ← quit                  (exit)
//! ```
//!
//! A session keeps only its connection, a small read buffer and its last ordinal; everything
//! else is per process. Frames are not JSON-parsed: the ordinal and the send time (`t=<unix µs>`
//! at the start of the content) are found by substring search.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chorus_bench::cluster::user_token;
use chorus_bench::ws_lite::{
    self, Source, WsConn, find, number_after, number_after_with, tcp_connect,
};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::report::{StepReport, histogram_pairs, new_histogram};

/// The stream every Chorus session listens to, and the NATS subject every subscriber has.
pub const PUBLISHER: &str = "bench";
pub const STREAM: &str = "Bench/room/1";
pub const SUBJECT: &str = "bench.room";

/// Searchers for the keys looked up in every received frame, built once.
static EV_MESSAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ev\":\"message\""));
static ORDINAL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ordinal\":"));
static SENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\"t="));

/// A session not listening (yet, or any more).
const NOT_LISTENING: u64 = u64::MAX;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Chorus WebSocket sessions listening to the bench stream.
    Ws,
    /// NATS core subscriptions to the bench subject.
    Nats,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Servers to connect to, round robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<SocketAddr>,
    /// Source address of every connection.
    #[arg(long)]
    pub source: Option<IpAddr>,
    #[arg(long)]
    pub connections: usize,
    /// Session i is user `u{(first_user + i) % users + 1}`.
    #[arg(long, default_value_t = 0)]
    pub first_user: usize,
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
}

/// Counters of the current step, shared by every session of the process (one thread: the lock
/// is never contended).
struct Step {
    report: StepReport,
    histogram: Histogram<u64>,
}

struct Shared {
    step: Mutex<Step>,
    /// The last ordinal (sequence for NATS) of each session, `NOT_LISTENING` when closed.
    last: Vec<AtomicU64>,
    open: AtomicUsize,
    /// Listens the server asked to retry while sessions were opening.
    listen_retries: AtomicU64,
}

impl Shared {
    fn with_step(&self, f: impl FnOnce(&mut Step)) {
        if let Ok(mut step) = self.step.lock() {
            f(&mut step);
        }
    }

    /// Records message `ordinal` of session `session`, with its send time when it is a bench
    /// message.
    fn received(&self, session: usize, ordinal: u64, sent_us: Option<u64>) {
        let last = self.last[session].load(Ordering::Relaxed);
        let now_us = unix_micros();
        self.with_step(|step| {
            let r = &mut step.report;
            if ordinal <= last {
                r.backwards += 1;
            } else if ordinal > last + 1 {
                r.gaps += ordinal - last - 1;
            }
            match sent_us {
                Some(sent) => {
                    r.delivered += 1;
                    if r.first_us == 0 {
                        r.first_us = now_us;
                    }
                    r.last_us = now_us;
                    let _ = step.histogram.record(now_us.saturating_sub(sent).max(1));
                }
                None => r.other += 1,
            }
        });
        if ordinal > last {
            self.last[session].store(ordinal, Ordering::Relaxed);
        }
    }

    fn count(&self, f: impl FnOnce(&mut StepReport)) {
        self.with_step(|step| f(&mut step.report));
    }

    fn closed(&self, session: usize) {
        self.last[session].store(NOT_LISTENING, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.count(|r| r.closed += 1);
    }
}

pub fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(client_main(args))
}

async fn client_main(args: ClientArgs) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        step: Mutex::new(Step { report: StepReport::default(), histogram: new_histogram()? }),
        last: (0..args.connections).map(|_| AtomicU64::new(NOT_LISTENING)).collect(),
        open: AtomicUsize::new(0),
        listen_retries: AtomicU64::new(0),
    });
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let ports = Arc::new(Ports { next: AtomicU32::new(Ports::FIRST) });
    let mut opening = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let target = args.targets[i % args.targets.len()];
        let user = format!("u{}", (args.first_user + i) % args.users.max(1) + 1);
        let (shared, gate, failed) = (shared.clone(), gate.clone(), failed.clone());
        let ports = ports.clone();
        let (source, mode) = (args.source, args.mode);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else { return };
            let opened = match mode {
                Mode::Ws => open_ws(source, &ports, target, &user, &shared, i).await,
                Mode::Nats => open_nats(source, &ports, target).await,
            };
            drop(permit);
            match opened {
                Ok(session) => {
                    shared.open.fetch_add(1, Ordering::Relaxed);
                    let _ = ready_tx.send(());
                    session.run(&shared, i).await;
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("fanout client: session {i} to {target} failed: {e:#}");
                    }
                }
            }
        });
        opening.push(ready_rx);
    }
    for ready in opening {
        let _ = ready.await;
    }
    let mut stdout = tokio::io::stdout();
    let connected = shared.open.load(Ordering::Relaxed);
    let failed_count = failed.load(Ordering::Relaxed);
    let retries = shared.listen_retries.load(Ordering::Relaxed);
    stdout
        .write_all(format!("connected {connected} {failed_count} {retries}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    serve_parent(&shared, &mut stdout).await
}

/// Answers the parent's commands until `quit` or end of input.
async fn serve_parent(shared: &Shared, stdout: &mut tokio::io::Stdout) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let reply = match words.next() {
            Some("reset") => {
                let fresh = new_histogram()?;
                shared.with_step(|step| {
                    step.report = StepReport::default();
                    step.histogram = fresh;
                });
                "ok".to_owned()
            }
            Some("progress") => {
                let mut delivered = 0;
                shared.count(|r| delivered = r.delivered);
                format!("progress {delivered}")
            }
            Some("report") => {
                let expected_last: u64 = words.next().context("report <last>")?.parse()?;
                format!("report {}", serde_json::to_string(&report(shared, expected_last))?)
            }
            Some("quit") | None => return Ok(()),
            Some(other) => anyhow::bail!("unknown command {other}"),
        };
        stdout.write_all(reply.as_bytes()).await?;
        stdout.write_all(b"\n").await?;
        stdout.flush().await?;
    }
    Ok(())
}

fn report(shared: &Shared, expected_last: u64) -> StepReport {
    let mut out = StepReport::default();
    shared.with_step(|step| {
        out = step.report.clone();
        out.latency = histogram_pairs(&step.histogram);
    });
    out.open_sessions = shared.open.load(Ordering::Relaxed) as u64;
    for last in &shared.last {
        let last = last.load(Ordering::Relaxed);
        if last != NOT_LISTENING && last < expected_last {
            out.behind_sessions += 1;
            out.behind_messages += expected_last - last;
        }
    }
    out
}

enum Session {
    Ws(WsConn),
    Nats(NatsConn),
}

impl Session {
    async fn run(self, shared: &Shared, i: usize) {
        let result = match self {
            Session::Ws(conn) => run_ws(conn, shared, i).await,
            Session::Nats(conn) => run_nats(conn, shared, i).await,
        };
        if let Err(e) = result {
            shared.count(|r| r.errors += 1);
            eprintln!("fanout client: session {i} ended: {e:#}");
        }
        shared.closed(i);
    }
}

fn listen_frame(id: u64, since: Option<u64>) -> String {
    let since = since.map(|s| format!(",\"since\":{s}")).unwrap_or_default();
    format!(
        "{{\"id\":{id},\"op\":\"listen\",\"stream\":{{\"publisherId\":\"{PUBLISHER}\",\"name\":\"{STREAM}\"}}{since}}}"
    )
}

/// This process's source ports, handed out in turn: the process owns its source address, so
/// it picks ports itself rather than have the kernel search for one on each bind (see
/// [`Source`]).
struct Ports {
    next: AtomicU32,
}

impl Ports {
    const FIRST: u32 = 10_000;

    fn take(&self) -> io::Result<u16> {
        let port = self.next.fetch_add(1, Ordering::Relaxed);
        u16::try_from(port)
            .map_err(|_| io::Error::new(io::ErrorKind::AddrNotAvailable, "source ports used up"))
    }
}

/// Runs `connect` from a fresh source port until it succeeds: a port some other socket holds
/// is skipped at once, other failures (a burst of connects can overflow an accept queue) are
/// retried a few times with a pause.
async fn with_source<T, F, Fut>(ip: Option<IpAddr>, ports: &Ports, mut connect: F) -> io::Result<T>
where
    F: FnMut(Option<Source>) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut failures = 0u64;
    loop {
        let source = match ip {
            Some(ip) => Some(Source { ip, port: Some(ports.take()?) }),
            None => None,
        };
        match connect(source).await {
            Ok(connected) => return Ok(connected),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && source.is_some() => {}
            Err(e) if failures >= 5 => return Err(e),
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200 * failures)).await;
            }
        }
    }
}

/// Connects, upgrades and listens, retrying a listen the server asks to retry (`unavailable`,
/// `not_leader` with `retryAfterMs`, e.g. while a shard elects a leader); the session's last
/// ordinal is the `messageCount` of the listen's `ok`.
async fn open_ws(
    source: Option<IpAddr>,
    ports: &Ports,
    target: SocketAddr,
    user: &str,
    shared: &Shared,
    i: usize,
) -> anyhow::Result<Session> {
    let token = user_token(user)?;
    let path = format!("/v1/ws?token={token}");
    let mut conn = with_source(source, ports, |s| WsConn::connect(s, target, &path)).await?;
    for id in 1..=50 {
        conn.send_text(listen_frame(id, None).as_bytes()).await?;
        let text = conn.next_text().await?.context("closed before the listen reply")?;
        if find(text, b"\"ok\"").is_some() {
            let count = number_after(text, b"\"messageCount\":")
                .context("listen ok without messageCount")?;
            shared.last[i].store(count, Ordering::Relaxed);
            return Ok(Session::Ws(conn));
        }
        let Some(retry_ms) = number_after(text, b"\"retryAfterMs\":") else {
            anyhow::bail!("listen refused: {}", String::from_utf8_lossy(text));
        };
        shared.listen_retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(retry_ms.max(50))).await;
    }
    anyhow::bail!("listen still refused after 50 tries")
}

async fn run_ws(mut conn: WsConn, shared: &Shared, i: usize) -> anyhow::Result<()> {
    let mut next_id = 2;
    loop {
        let Some(text) = conn.next_text().await? else { return Ok(()) };
        if EV_MESSAGE.find(text).is_some() {
            let ordinal = number_after_with(text, &ORDINAL).context("message without ordinal")?;
            let sent = number_after_with(text, &SENT);
            shared.received(i, ordinal, sent);
        } else if find(text, b"\"ev\":\"resync\"").is_some() {
            shared.count(|r| r.resyncs += 1);
            let since = shared.last[i].load(Ordering::Relaxed);
            conn.send_text(listen_frame(next_id, Some(since)).as_bytes()).await?;
            next_id += 1;
        } else if find(text, b"\"error\"").is_some() {
            shared.count(|r| r.errors += 1);
        }
    }
}

/// A NATS core connection subscribed to [`SUBJECT`], speaking the text protocol directly.
pub struct NatsConn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

async fn open_nats(
    source: Option<IpAddr>,
    ports: &Ports,
    target: SocketAddr,
) -> anyhow::Result<Session> {
    let stream = with_source(source, ports, |s| tcp_connect(s, target)).await?;
    let mut conn = NatsConn { stream, buf: vec![0; 2048], start: 0, end: 0 };
    let info = conn.line().await?.context("closed before INFO")?;
    if !info.starts_with(b"INFO") {
        anyhow::bail!("expected INFO, got {}", String::from_utf8_lossy(&info));
    }
    let hello =
        format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {SUBJECT} 1\r\nPING\r\n");
    conn.stream.write_all(hello.as_bytes()).await?;
    // The PONG answers our PING, so the subscription is registered once it arrives.
    loop {
        let line = conn.line().await?.context("closed before PONG")?;
        if line.starts_with(b"PONG") {
            break;
        }
        if line.starts_with(b"-ERR") {
            anyhow::bail!("{}", String::from_utf8_lossy(&line));
        }
    }
    Ok(Session::Nats(conn))
}

impl NatsConn {
    /// The next protocol line without its `\r\n`; `None` at end of stream.
    async fn line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(at) = find(&self.buf[self.start..self.end], b"\r\n") {
                let line = self.buf[self.start..self.start + at].to_vec();
                self.start += at + 2;
                return Ok(Some(line));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<usize> {
        Ok(ws_lite::fill(&mut self.stream, &mut self.buf, &mut self.start, &mut self.end).await?)
    }
}

async fn run_nats(mut conn: NatsConn, shared: &Shared, i: usize) -> anyhow::Result<()> {
    // The publisher numbers messages from 1 for the whole run, and every subscriber is
    // subscribed before the first one.
    shared.last[i].store(0, Ordering::Relaxed);
    loop {
        let data = &conn.buf[conn.start..conn.end];
        let Some(line_end) = find(data, b"\r\n") else {
            if conn.fill().await? == 0 {
                return Ok(());
            }
            continue;
        };
        let line = &data[..line_end];
        if line.starts_with(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len: usize = line
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(|w| w.parse().ok())
                .context("MSG without a length")?;
            if data.len() < line_end + 2 + len + 2 {
                if conn.fill().await? == 0 {
                    return Ok(());
                }
                continue;
            }
            let payload = &data[line_end + 2..line_end + 2 + len];
            let sent = number_after(payload, b"t=");
            let seq = number_after(payload, b" s=").unwrap_or(0);
            conn.start += line_end + 2 + len + 2;
            shared.received(i, seq, sent);
        } else if line.starts_with(b"PING") {
            conn.start += line_end + 2;
            conn.stream.write_all(b"PONG\r\n").await?;
        } else if line.starts_with(b"-ERR") {
            let message = String::from_utf8_lossy(line).into_owned();
            conn.start += line_end + 2;
            shared.count(|r| r.errors += 1);
            eprintln!("fanout client: session {i}: {message}");
        } else {
            // +OK, PONG, INFO: nothing to do.
            conn.start += line_end + 2;
        }
    }
}
