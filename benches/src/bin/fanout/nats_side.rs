//! The NATS side: one `nats-server` (core NATS, no JetStream), every subscriber its own TCP
//! connection speaking the text protocol from a client process, one `async-nats` publisher.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use chorus_bench::procs::{Proc, free_port, rss_kib_of};

use crate::Args;
use crate::client::Mode;
use crate::clients::{Clients, Plan};
use crate::ladder::{CpuGroups, Ladder, Publisher, StepResult};

pub struct Outcome {
    pub setup: Vec<String>,
    pub steps: Vec<StepResult>,
}

pub async fn run(args: &Args) -> anyhow::Result<Outcome> {
    let mut setup = Vec::new();
    let mut say = |line: String| {
        println!("{line}");
        setup.push(line);
    };
    let port = free_port()?;
    let server = Proc::spawn(Command::new(&args.nats_server).args([
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]))
    .with_context(|| format!("starting {} (apt-get install nats-server)", args.nats_server))?;
    let url = format!("nats://127.0.0.1:{port}");
    let publisher_client = connect_with_retry(&url).await?;
    let server_pid = server.pid().context("nats-server pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib_of(server_pid).unwrap_or(0);

    let connect_started = Instant::now();
    let plan = Plan {
        mode: Mode::Nats,
        sessions: args.nats_subscribers,
        per_process: args.per_edge,
        targets: vec![format!("127.0.0.1:{port}").parse()?],
        users: 1,
        connect_concurrency: args.connect_concurrency,
    };
    let mut clients = Clients::start(&plan, Duration::from_secs(600)).await?;
    say(format!(
        "nats:   {} core subscribers ({} failed) from {} client processes in {:.1} s",
        clients.connected,
        clients.failed,
        clients.pids().len(),
        connect_started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_kib_of(server_pid).unwrap_or(0);
    let client_rss: u64 = clients.pids().iter().filter_map(|p| rss_kib_of(*p)).sum();
    let connected = clients.connected.max(1) as f64;
    say(format!(
        "nats:   memory of nats-server: RSS {:.0} MiB before the subscribers, {:.0} MiB with {} \
         idle subscribers: {:.1} KiB per subscriber; client processes {:.1} KiB per subscriber",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        clients.connected,
        rss_after.saturating_sub(rss_before) as f64 / connected,
        client_rss as f64 / connected,
    ));

    let ladder = Ladder {
        system: "nats",
        rates: &args.rates,
        seconds: args.seconds,
        drain: Duration::from_secs(args.drain_seconds),
        p99_limit_ms: args.p99_limit_ms,
        cpu: CpuGroups {
            groups: vec![("nats-server", vec![server_pid]), ("clients", clients.pids())],
        },
    };
    let mut publisher = Publisher::Nats { client: publisher_client, next_seq: 0 };
    let steps = ladder.run(&mut publisher, &mut clients).await?;
    clients.quit().await;
    drop(server);
    Ok(Outcome { setup, steps })
}

async fn connect_with_retry(url: &str) -> anyhow::Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match async_nats::connect(url).await {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("connecting to nats-server"),
        }
    }
}
