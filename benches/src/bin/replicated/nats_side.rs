//! The NATS side: a 3-server JetStream cluster on loopback with file storage, one R3 stream,
//! the async-nats client. Acks come from the stream leader once a quorum of servers has the
//! message; NATS does not fsync before acknowledging (file store writes are flushed by the OS,
//! synced on its sync interval), so its acks are weaker than Chorus's (fsync on a quorum).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::Args;
use chorus_bench::procs::{Proc, free_port};
use chorus_bench::stats::{Failover, Window};

struct Cluster {
    procs: Vec<Proc>,
    urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(args: &Args) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("nats-bench").tempdir_in(".")?;
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let route: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let routes: Vec<String> =
            route.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let mut procs = Vec::new();
        for i in 0..3 {
            let store = dir.path().join(format!("n{}", i + 1));
            let conf = dir.path().join(format!("n{}.conf", i + 1));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{n}\nlisten: 127.0.0.1:{c}\njetstream {{\n  store_dir: \"{s}\"\n}}\ncluster {{\n  name: bench\n  listen: 127.0.0.1:{r}\n  routes: [{routes}]\n}}\n",
                    n = i + 1,
                    c = client[i],
                    s = store.display(),
                    r = route[i],
                    routes = routes.join(", ")
                ),
            )?;
            procs.push(
                Proc::spawn(Command::new(&args.nats_server).arg("-c").arg(&conf)).with_context(
                    || format!("starting {} (apt-get install nats-server)", args.nats_server),
                )?,
            );
        }
        let urls = client.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        Ok(Cluster { procs, urls, _dir: dir })
    }

    async fn connect(&self, first: usize) -> anyhow::Result<async_nats::Client> {
        let mut urls = self.urls.clone();
        let n = urls.len();
        urls.rotate_left(first % n);
        let addrs: Vec<async_nats::ServerAddr> =
            urls.iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
        Ok(async_nats::ConnectOptions::new().retry_on_initial_connect().connect(addrs).await?)
    }
}

/// Creates the R3 file-backed stream, waiting for JetStream's meta leader.
async fn make_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> anyhow::Result<stream::Stream> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = js
            .get_or_create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subjects.into()],
                num_replicas: 3,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await;
        match r {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("creating stream {name}: {e}"),
        }
    }
}

async fn w1(cluster: &Cluster, args: &Args, in_flight: usize) -> anyhow::Result<String> {
    let window = Arc::new(Window::new(Duration::from_secs(2), Duration::from_secs(args.seconds))?);
    let body = Bytes::from("x".repeat(args.size));
    let connections = in_flight.div_ceil(16).max(1);
    let mut contexts = Vec::new();
    for c in 0..connections {
        contexts.push(jetstream::new(cluster.connect(c).await?));
    }
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let js = contexts[t % contexts.len()].clone();
        let (window, body) = (window.clone(), body.clone());
        let streams = args.streams.max(1);
        tasks.push(tokio::spawn(async move {
            let mut k = t;
            while Instant::now() < window.end {
                let subject = format!("bench.room.{}", k % streams);
                let sent = Instant::now();
                match js.publish(subject, body.clone()).await {
                    Ok(ack) => match ack.await {
                        Ok(_) => window.record(sent, Instant::now()),
                        Err(_) => window.error(),
                    },
                    Err(_) => window.error(),
                }
                k += 7;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(window.summary(&format!("nats R3 W1 in_flight={in_flight:<3}")))
}

async fn publish_until_acked(
    js: jetstream::Context,
    id: String,
    body: Bytes,
    failover: Arc<Failover>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        if let Ok(ack) = js.publish_with_headers("w3.room", headers, body.clone()).await
            && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), ack).await
        {
            failover.ack(id, Instant::now());
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failover.unknown.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

async fn w3(mut cluster: Cluster, args: &Args) -> anyhow::Result<String> {
    let js = jetstream::new(cluster.connect(0).await?);
    let mut stream = make_stream(&js, "W3", "w3.>").await?;
    let leader = stream
        .info()
        .await?
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .context("W3 stream has no leader")?;
    let victim: usize = leader.trim_start_matches('n').parse::<usize>()?.saturating_sub(1);
    // Publish through a server that survives, as Chorus clients move to a surviving node.
    let survivor = (0..3).find(|i| *i != victim).context("survivor")?;
    let pub_js = jetstream::new(cluster.connect(survivor).await?);
    let failover = Arc::new(Failover::default());
    let body = Bytes::from("x".repeat(args.size));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.w3_seconds);
    let kill_at = start + Duration::from_secs(args.w3_seconds / 3);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.w3_rate.max(1) as f64));
    let mut tasks = Vec::new();
    let mut seq = 0usize;
    let mut killed = false;
    while Instant::now() < end {
        tick.tick().await;
        if !killed && Instant::now() >= kill_at {
            cluster.procs[victim].kill();
            killed = true;
        }
        tasks.push(tokio::spawn(publish_until_acked(
            pub_js.clone(),
            format!("w3-{seq}"),
            body.clone(),
            failover.clone(),
        )));
        seq += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let gap = failover.longest_gap(start + Duration::from_secs(1), end);
    let reader = jetstream::new(cluster.connect(survivor).await?);
    let mut s = reader.get_stream("W3").await?;
    let last = s.info().await?.state.last_sequence;
    let mut stored = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await
            && let Some(id) = m.headers.get("Nats-Msg-Id")
        {
            stored.push(id.as_str().to_owned());
        }
    }
    let (missing, duplicated) = failover.verdict(&stored);
    Ok(format!(
        "nats R3 W3 rate={}/s: sent {seq}, acked {}, unknown {}; longest gap with no ack {:.0} ms (stream leader {leader} SIGKILLed); acked-but-missing {missing}, duplicated {duplicated}",
        args.w3_rate,
        failover.acked_ids().len(),
        failover.unknown.load(std::sync::atomic::Ordering::Relaxed),
        gap.as_secs_f64() * 1000.0,
    ))
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let cluster = Cluster::start(args)?;
    let js = jetstream::new(cluster.connect(0).await?);
    make_stream(&js, "BENCH", "bench.>").await?;
    let idle = chorus_bench::procs::idle_cpu(&cluster.procs, Duration::from_secs(10)).await;
    let line = format!("nats R3 idle CPU per server (1 R3 stream, no traffic): {idle}");
    println!("{line}");
    out.push(line);
    for &n in &args.in_flight {
        let line = w1(&cluster, args, n).await?;
        println!("{line}");
        out.push(line);
    }
    if !args.no_w3 {
        let line = w3(cluster, args).await?;
        println!("{line}");
        out.push(line);
    }
    Ok(out)
}
