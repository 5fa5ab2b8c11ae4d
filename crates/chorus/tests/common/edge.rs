//! `chorus edge` processes for tests, in front of a [`Cluster`]: ephemeral port, SIGKILL and
//! restart on the same address.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{API_KEY, Cluster, JWT_SECRET};

pub struct Edge {
    pub addr: String,
    nodes: String,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Edge {
    /// Starts an edge in front of every member of `cluster` and waits until it is ready.
    pub fn start(cluster: &Cluster, extra: &[&str]) -> Edge {
        let nodes = cluster.members.iter().map(|m| m.peer.clone()).collect::<Vec<_>>().join(",");
        let port = super::free_port();
        let mut edge = Edge {
            addr: format!("127.0.0.1:{port}"),
            nodes,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        edge.spawn();
        edge
    }

    /// Starts an edge given only the peer addresses `nodes` (comma-separated).
    pub fn start_with_nodes(nodes: &str, extra: &[&str]) -> Edge {
        let port = super::free_port();
        let mut edge = Edge {
            addr: format!("127.0.0.1:{port}"),
            nodes: nodes.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        edge.spawn();
        edge
    }

    /// Starts the process (again, on the same address) and waits until it is ready.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "edge already runs");
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["edge", "--listen", &self.addr, "--nodes", &self.nodes])
            .args(&self.extra)
            .env("CHORUS_JWT_SECRET", JWT_SECRET)
            .env("CHORUS_API_KEY", API_KEY)
            .env("RUST_LOG", std::env::var("CHORUS_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chorus edge");
        super::wait_for_line(&mut child, "chorus edge ");
        self.child = Some(child);
        self.wait_ready();
    }

    /// SIGKILL: sessions drop without a close frame.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/readyz", self.addr);
        loop {
            if let Ok(200) = super::plain_http_get(&url) {
                return;
            }
            assert!(Instant::now() < deadline, "edge {} not ready in time", self.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
    }
}
