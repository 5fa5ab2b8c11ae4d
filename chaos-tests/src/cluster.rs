//! Three `chorus node` processes whose peer traffic all goes through [`Proxy`]s: node i
//! reaches node j at the proxy of link i→j, so each direction of each pair can fail alone.
//! Beside them, `chorus edge` processes, each reaching each node through a proxy of its own
//! (link edge e→node j), so that partitioning a node cuts it off from the edges too.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chorus_proto::pb;
use chorus_proto::pb::admin_client::AdminClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::proxy::{LinkState, Proxy};

pub const JWT_SECRET: &str = "chaos-test-secret-0123456789abcdef";
pub const API_KEY: &str = "chorus_chaos_test_api_key_0123456789";
pub const NODES: usize = 3;

const RAFT_CONFIG: &str = "version = 1\n[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\n\
election_max_ms = 600\nsnapshot_every_logs = 100\n";

pub struct Node {
    pub id: u64,
    pub api: String,
    pub peer: String,
    pub data: PathBuf,
    child: Option<Child>,
    pub paused: bool,
}

/// A `chorus edge`: client HTTP/WS in front of the nodes, no state of its own.
pub struct Edge {
    pub api: String,
    child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// `links[i][j]`: the proxy node i dials to reach node j (`None` on the diagonal).
    pub links: Vec<Vec<Option<Proxy>>>,
    pub edges: Vec<Edge>,
    /// `edge_links[e][j]`: the proxy edge e dials to reach node j's peer (gRPC) address.
    pub edge_links: Vec<Vec<Proxy>>,
    binary: PathBuf,
    dir: PathBuf,
    shards: u16,
    /// `kill node` faults stop the node with SIGTERM, as a rolling restart does, instead of
    /// SIGKILL (`--sigterm`).
    pub sigterm: bool,
}

/// A port for a child process to listen on, bound again each time the child restarts.
///
/// Not one the OS hands out for port 0: that comes from the ephemeral range, from which every
/// outgoing connection (the proxies', the clients', the nodes' own) also takes its local port,
/// so one of them could take it before the child binds, or while a killed node is down (seen
/// in CI: "node 2 did not start"). Ports below the ephemeral range (32768 on Linux) are never
/// taken that way; which one is spread by process id and a counter, and checked free.
fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7_919);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + seed.wrapping_add(n.wrapping_mul(97)) % SPAN)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Longest a node stopping on SIGTERM is waited for.
const STOP_WAIT: Duration = Duration::from_secs(30);

impl Cluster {
    pub async fn start(binary: &Path, dir: &Path, shards: u16, edges: usize) -> Result<Cluster> {
        std::fs::write(dir.join("chorus.toml"), RAFT_CONFIG)?;
        let mut nodes = Vec::new();
        for id in 1..=NODES as u64 {
            nodes.push(Node {
                id,
                api: format!("127.0.0.1:{}", free_port()?),
                peer: format!("127.0.0.1:{}", free_port()?),
                data: dir.join(format!("node{id}")),
                child: None,
                paused: false,
            });
        }
        let mut links = Vec::new();
        for i in 0..NODES {
            let mut row = Vec::new();
            for (j, target) in nodes.iter().enumerate() {
                row.push(if i == j {
                    None
                } else {
                    Some(Proxy::start(target.peer.clone()).await?)
                });
            }
            links.push(row);
        }
        let mut edge_links = Vec::new();
        let mut edge_list = Vec::new();
        for _ in 0..edges {
            let mut row = Vec::new();
            for target in &nodes {
                row.push(Proxy::start(target.peer.clone()).await?);
            }
            edge_links.push(row);
            edge_list.push(Edge { api: format!("127.0.0.1:{}", free_port()?), child: None });
        }
        let mut cluster = Cluster {
            nodes,
            links,
            edges: edge_list,
            edge_links,
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            shards,
            sigterm: false,
        };
        for i in 0..NODES {
            cluster.spawn(i).await?;
        }
        for i in 0..NODES {
            cluster.wait_ready(i, Duration::from_secs(60)).await?;
        }
        for e in 0..edges {
            cluster.spawn_edge(e).await?;
        }
        for e in 0..edges {
            cluster.wait_edge_ready(e, Duration::from_secs(60)).await?;
        }
        Ok(cluster)
    }

    /// Edge e's `--nodes`: its proxy to every node, starting with node `e % NODES` (an edge
    /// sends everything to the node that answered last, so the edges start on different nodes).
    fn edge_nodes_arg(&self, e: usize) -> String {
        let n = self.edge_links[e].len();
        (0..n).map(|k| self.edge_links[e][(e + k) % n].addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// Starts edge `e`'s process (again, on the same address) and waits until it listens.
    pub async fn spawn_edge(&mut self, e: usize) -> Result<()> {
        let nodes = self.edge_nodes_arg(e);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("edge{}.log", e + 1)))?;
        let edge = &mut self.edges[e];
        if edge.child.is_some() {
            bail!("edge {} already runs", e + 1);
        }
        let mut child = chorus_command(&self.binary, log)
            .args(["edge", "--listen", &edge.api, "--nodes", &nodes])
            .spawn()
            .with_context(|| format!("start {} edge", self.binary.display()))?;
        if !serving(&mut child, "chorus edge ").await? {
            bail!("edge {} did not start (see edge{}.log)", e + 1, e + 1);
        }
        edge.child = Some(child);
        Ok(())
    }

    /// SIGKILL an edge: its sessions' sockets drop without a close frame.
    pub async fn kill_edge(&mut self, e: usize) -> Result<()> {
        if let Some(mut c) = self.edges[e].child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    pub fn edge_is_up(&self, e: usize) -> bool {
        self.edges[e].child.is_some()
    }

    pub fn edge_url(&self, e: usize) -> String {
        format!("http://{}", self.edges[e].api)
    }

    /// Waits until edge `e` answers `/readyz` with 200 (a node answers ready through it).
    pub async fn wait_edge_ready(&self, e: usize, bound: Duration) -> Result<()> {
        wait_ready_at(&self.edge_url(e), bound)
            .await
            .with_context(|| format!("edge {} not ready within {bound:?}", e + 1))
    }

    /// Cuts (or heals) every edge's link to node `n`.
    pub fn set_edges_to(&self, n: usize, state: LinkState) {
        for row in &self.edge_links {
            row[n].set(state);
        }
    }

    /// Node i's `--peers`: itself at its own address, every other node at i's proxy to it.
    fn peers_arg(&self, i: usize) -> String {
        let mut parts = Vec::new();
        for (j, n) in self.nodes.iter().enumerate() {
            let addr = match &self.links[i][j] {
                Some(p) => p.addr.clone(),
                None => n.peer.clone(),
            };
            parts.push(format!("{}={addr}", n.id));
        }
        parts.join(",")
    }

    /// Starts node `i`'s process (again) and waits until it serves.
    pub async fn spawn(&mut self, i: usize) -> Result<()> {
        let peers = self.peers_arg(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{}.log", self.nodes[i].id)))?;
        let n = &mut self.nodes[i];
        if n.child.is_some() {
            bail!("node {} already runs", n.id);
        }
        let mut child = chorus_command(&self.binary, log)
            .args(["node", "--id", &n.id.to_string(), "--listen", &n.api])
            .args(["--peer-listen", &n.peer, "--peers", &peers])
            .args(["--shards", &self.shards.to_string()])
            .arg("--data")
            .arg(&n.data)
            .arg("--config")
            .arg(self.dir.join("chorus.toml"))
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        // The banner line means both listeners are bound.
        if !serving(&mut child, "chorus node ").await? {
            bail!("node {} did not start (see node{}.log)", n.id, n.id);
        }
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush. With `sigterm`, SIGTERM and a wait for the node to
    /// exit (SIGKILL after `STOP_WAIT`).
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        self.resume(i)?;
        if self.sigterm && self.is_up(i) {
            self.signal(i, "-TERM")?;
            if let Some(mut c) = self.nodes[i].child.take() {
                match tokio::time::timeout(STOP_WAIT, c.wait()).await {
                    Ok(status) => {
                        status?;
                    }
                    Err(_) => {
                        eprintln!("node {} still running {STOP_WAIT:?} after SIGTERM", i + 1);
                        c.kill().await?;
                    }
                }
            }
            return Ok(());
        }
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let Some(pid) = self.nodes[i].child.as_ref().and_then(Child::id) else { return Ok(()) };
        // `kill(1)` rather than libc: the crate forbids unsafe code.
        let status = std::process::Command::new("kill").arg(sig).arg(pid.to_string()).status()?;
        if !status.success() {
            bail!("kill {sig} {pid} failed");
        }
        Ok(())
    }

    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.signal(i, "-STOP")?;
        self.nodes[i].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].paused {
            self.signal(i, "-CONT")?;
            self.nodes[i].paused = false;
        }
        Ok(())
    }

    /// Sets both directed links between `a` and `b` (`state` as seen from `a` dialling `b`;
    /// the reverse link gets forward/backward swapped, so "a's bytes to b" is one setting).
    pub fn set_pair(&self, a: usize, b: usize, state: LinkState) {
        if let Some(p) = &self.links[a][b] {
            p.set(state);
        }
        if let Some(p) = &self.links[b][a] {
            p.set(LinkState { cut: state.cut, forward: state.backward, backward: state.forward });
        }
    }

    pub fn heal_links(&self) {
        for row in &self.links {
            for p in row.iter().flatten() {
                p.set(LinkState::HEALTHY);
            }
        }
        for p in self.edge_links.iter().flatten() {
            p.set(LinkState::HEALTHY);
        }
    }

    pub fn api_url(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].api)
    }

    /// Waits until node `i` answers `/readyz` with 200 (every shard has a leader).
    pub async fn wait_ready(&self, i: usize, bound: Duration) -> Result<()> {
        wait_ready_at(&self.api_url(i), bound)
            .await
            .with_context(|| format!("node {} not ready within {bound:?}", self.nodes[i].id))
    }

    async fn admin(&self, i: usize) -> Result<AdminClient<tonic::transport::Channel>> {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", self.nodes[i].peer))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        // A long run's streams outgrow tonic's 4 MiB default in one LocalMessages reply.
        Ok(AdminClient::new(ep.connect().await?).max_decoding_message_size(512 << 20))
    }

    pub async fn status(&self, i: usize) -> Result<pb::StatusReply> {
        Ok(self.admin(i).await?.status(pb::StatusRequest {}).await?.into_inner())
    }

    /// Node `i`'s own copy of a stream (no leader involved): (messageCount, messages).
    pub async fn local_messages(
        &self,
        i: usize,
        publisher: &str,
        name: &str,
    ) -> Result<(u64, Vec<serde_json::Value>)> {
        let reply = self
            .admin(i)
            .await?
            .local_messages(pb::LocalMessagesRequest {
                publisher_id: publisher.into(),
                name: name.into(),
            })
            .await?
            .into_inner();
        let mut messages = Vec::new();
        for m in &reply.messages {
            messages.push(serde_json::from_slice(m)?);
        }
        Ok((reply.message_count, messages))
    }

    /// Deletes node `i`'s data dir while it is down: the fault Chorus does not claim to survive
    /// when done to every node (used to prove the checker reports losses).
    pub fn wipe(&mut self, i: usize) -> Result<()> {
        if self.is_up(i) {
            bail!("wipe of a running node");
        }
        std::fs::remove_dir_all(&self.nodes[i].data)?;
        Ok(())
    }
}

/// Waits until `base` answers `/readyz` with 200.
async fn wait_ready_at(base: &str, bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let url = format!("{base}/readyz");
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status().as_u16() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{base}/readyz not 200 within {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for edge in &mut self.edges {
            if let Some(c) = edge.child.as_mut() {
                let _ = c.start_kill();
            }
        }
        for i in 0..self.nodes.len() {
            // A stopped process must be continued before it can die and be reaped cleanly.
            let _ = self.resume(i);
            if let Some(c) = self.nodes[i].child.as_mut() {
                let _ = c.start_kill();
            }
        }
    }
}

/// The `chorus` binary with the cluster's secrets, its log level, stdout piped (for the
/// banner) and stderr to `log`; killed when dropped.
fn chorus_command(binary: &Path, log: std::fs::File) -> Command {
    let mut command = Command::new(binary);
    command
        .env("CHORUS_JWT_SECRET", JWT_SECRET)
        .env("CHORUS_API_KEY", API_KEY)
        .env("RUST_LOG", std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    command
}

/// Waits (30 s at most) for the line starting with `banner` that a process prints once it
/// serves, then keeps draining its stdout so it never blocks on a full pipe.
async fn serving(child: &mut Child, banner: &str) -> Result<bool> {
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with(banner) {
                return true;
            }
        }
        false
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(seen == Ok(true))
}
