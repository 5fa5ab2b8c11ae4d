//! A 3-node Chorus cluster on loopback for a bench run: `chorus node` processes on ephemeral
//! ports with data dirs in a temp dir beside the working directory, the shared secrets, and
//! readiness waiting. Dropping it kills the nodes and removes their data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde_json::json;

use crate::procs::{Proc, free_port};

/// The app's API key of every bench cluster (`CHORUS_API_KEY`).
pub const API_KEY: &str = "chorus_bench_api_key_0123456789abcdef";
/// The HS256 secret that signs user tokens (`CHORUS_JWT_SECRET`); the key is its UTF-8 bytes.
pub const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef";

/// The `chorus` binary: `explicit`, or the one built beside the running bench.
pub fn chorus_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(b) => Ok(b.to_path_buf()),
        None => Ok(std::env::current_exe()?.with_file_name("chorus")),
    }
}

/// A `chorus` command with the bench secrets and quiet logging set.
pub fn chorus_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("CHORUS_JWT_SECRET", JWT_SECRET)
        .env("CHORUS_API_KEY", API_KEY)
        .env("RUST_LOG", std::env::var("CHORUS_BENCH_LOG").unwrap_or_else(|_| "error".into()));
    cmd
}

/// A user JWT for `user`, valid for a day.
pub fn user_token(user: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?)
}

pub struct NodeCluster {
    pub procs: Vec<Proc>,
    /// Each node's HTTP/WebSocket API address (`--listen`).
    pub api: Vec<String>,
    /// Each node's gRPC peer address (`--peer-listen`).
    pub peer: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl NodeCluster {
    /// Starts three nodes with `shards` shards and waits until every one is ready.
    pub async fn start(bin: &Path, shards: u16) -> anyhow::Result<NodeCluster> {
        let dir = tempfile::Builder::new().prefix("chorus-bench").tempdir_in(".")?;
        let api: Vec<String> = (0..3)
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<_, _>>()?;
        let peer: Vec<String> = (0..3)
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<_, _>>()?;
        let peers: Vec<String> =
            peer.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
        let mut procs = Vec::new();
        for i in 0..3 {
            procs.push(Proc::spawn_logged(
                chorus_command(bin)
                    .args(["node", "--id", &(i + 1).to_string(), "--listen", &api[i]])
                    .args(["--peer-listen", &peer[i], "--peers", &peers.join(",")])
                    .args(["--shards", &shards.to_string()])
                    .arg("--data")
                    .arg(dir.path().join(format!("n{}", i + 1))),
                &dir.path().join(format!("n{}.log", i + 1)),
            )?);
        }
        let cluster = NodeCluster { procs, api, peer, dir };
        for a in &cluster.api {
            wait_ready(a, Duration::from_secs(90)).await?;
        }
        Ok(cluster)
    }
}

/// Waits until `http://addr/readyz` answers 2xx.
pub async fn wait_ready(addr: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("chorus at {addr} not ready within {within:?}")
}
